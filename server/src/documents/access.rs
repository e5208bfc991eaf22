//! Who may do what to a collection's documents: the one place the pipeline asks.
//!
//! Admins and the service key may do everything. Everyone else is governed by the
//! collection's rules; a collection without a rule for an operation is closed to clients
//! (default deny). Two kinds of "no":
//! - no rule for the operation at all: `forbidden` (403), decided before any data is read,
//!   so it says nothing about any document;
//! - a rule that denies a read of one document: `not_found` (404), exactly as if the
//!   document did not exist, so ids cannot be probed.

use super::Error;
use super::collection::Collection;
use super::document::Document;
use crate::auth::Principal;
use crate::query::Filter;

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
    /// Refuses a principal that no rule could allow, before anything is read.
    pub fn precheck(
        &self,
        principal: &Principal,
        collection: &Collection,
        op: Operation,
    ) -> Result<(), Error> {
        if principal.is_privileged() {
            return Ok(());
        }
        Err(Error::Forbidden(format!(
            "collection `{}` has no `{}` rule; only admins and the service key may do this",
            collection.name,
            op.name()
        )))
    }

    /// May `principal` read this document? A denial reads as `not_found`.
    pub fn check_get(
        &self,
        principal: &Principal,
        collection: &Collection,
        _doc: &Document,
    ) -> Result<(), Error> {
        self.precheck(principal, collection, Operation::Get)
    }

    /// The filter a principal's queries are restricted to (AND-ed to theirs).
    pub fn list_filter(
        &self,
        principal: &Principal,
        collection: &Collection,
    ) -> Result<Filter, Error> {
        self.precheck(principal, collection, Operation::List)?;
        Ok(Filter::True)
    }

    /// May `principal` make this write? Evaluated inside the write transaction, on the
    /// stored document as it is at that moment (`before`) and the result (`after`).
    pub fn check_write(
        &self,
        principal: &Principal,
        collection: &Collection,
        op: Operation,
        _before: Option<&Document>,
        _after: Option<&Document>,
    ) -> Result<(), Error> {
        self.precheck(principal, collection, op)
    }
}
