//! Who may do what to a collection's documents: the one place the pipeline asks.
//!
//! Admins and the service key may do everything. Everyone else is governed by the
//! collection's rules; a collection without a rule for an operation is closed to clients
//! (default deny). Two kinds of "no":
//! - no rule for the operation at all: `forbidden` (403), decided before any data is read,
//!   so it says nothing about any document;
//! - a rule that denies a read of one document: `not_found` (404), exactly as if the
//!   document did not exist, so ids cannot be probed.

use serde_json::Value;

use super::Error;
use super::collection::Collection;
use super::document::Document;
use crate::auth::Caller;
use crate::query::{Fields, Filter};
use crate::rules::fast::Doc;
use crate::rules::{Rule, Vars};

/// The operations rules are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    List,
    Create,
    Update,
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::List,
        Operation::Get,
        Operation::Create,
        Operation::Update,
        Operation::Delete,
    ];

    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::List => "list",
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// The access decisions of the write pipeline and the read paths.
#[derive(Debug, Default)]
pub struct Access;

impl Access {
    /// Refuses a caller that no rule could allow, before anything is read.
    pub fn precheck(
        &self,
        caller: &Caller,
        collection: &Collection,
        op: Operation,
    ) -> Result<(), Error> {
        if caller.is_privileged() || collection.rules.get(op).is_some() {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "collection `{}` has no `{}` rule; only admins and the service key may do this",
            collection.name,
            op.name()
        )))
    }

    /// May `caller` read this document? A denial reads as `not_found`.
    pub fn check_get(
        &self,
        caller: &Caller,
        collection: &Collection,
        doc: &impl Fields,
    ) -> Result<(), Error> {
        if caller.is_privileged() {
            return Ok(());
        }
        let rule = self.rule(caller, collection, Operation::Get)?;
        let allow = rule.allows_on(&caller.principal, Doc::Fields(doc), Doc::Absent, || Vars {
            doc: Some(rule.doc_value(doc)),
            ..Vars::for_caller(caller)
        });
        if allow { Ok(()) } else { Err(Error::NotFound) }
    }

    /// Would a list by `caller` include this document? The `list` rule evaluated on one
    /// document (realtime: a collection subscription sees what a list would show).
    pub fn listable(&self, caller: &Caller, collection: &Collection, doc: &Document) -> bool {
        if caller.is_privileged() {
            return true;
        }
        let Some(rule) = collection.rules.get(Operation::List) else {
            return false;
        };
        rule.allows_on(&caller.principal, Doc::Fields(doc), Doc::Absent, || Vars {
            doc: Some(rule.doc_value(doc)),
            ..Vars::for_caller(caller)
        })
    }

    /// The filter a caller's queries are restricted to (AND-ed to theirs).
    pub fn list_filter(&self, caller: &Caller, collection: &Collection) -> Result<Filter, Error> {
        if caller.is_privileged() {
            return Ok(Filter::True);
        }
        let rule = self.rule(caller, collection, Operation::List)?;
        Ok(rule.filter(&Vars::for_caller(caller)))
    }

    /// May `caller` make this write? Evaluated inside the write transaction, on the stored
    /// document as it is at that moment (`before`, the rule's `doc`) and the result
    /// (`after`, the rule's `new`).
    pub fn check_write(
        &self,
        caller: &Caller,
        collection: &Collection,
        op: Operation,
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> Result<(), Error> {
        if caller.is_privileged() {
            return Ok(());
        }
        let rule = self.rule(caller, collection, op)?;
        let allow = rule.allows_on(
            &caller.principal,
            before.map_or(Doc::Null, |d| Doc::Fields(d)),
            after.map_or(Doc::Absent, |d| Doc::Fields(d)),
            || Vars {
                doc: Some(before.map_or(Value::Null, |d| rule.doc_value(d))),
                new: after.map(|d| rule.new_value(d)),
                ..Vars::for_caller(caller)
            },
        );
        if allow {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the `{}` rule of collection `{}` denied this write",
                op.name(),
                collection.name
            )))
        }
    }

    fn rule<'c>(
        &self,
        caller: &Caller,
        collection: &'c Collection,
        op: Operation,
    ) -> Result<&'c Rule, Error> {
        self.precheck(caller, collection, op)?;
        collection
            .rules
            .get(op)
            .ok_or_else(|| Error::Internal("BUG: precheck passed without a rule".into()))
    }
}
