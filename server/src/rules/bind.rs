//! Which parts of each variable a rule reads, so that evaluating it converts only those to
//! CEL values. Most rules read a few fields (`doc._owner`, `new.title`); converting the
//! whole document on every check would cost more than the evaluation itself.

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr};

/// What of one variable a rule reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// Never mentioned: not bound.
    Unused,
    /// Only `var.field` for these top-level fields: bound as a map of just those.
    Fields(Vec<String>),
    /// Used whole (passed to a function, compared, iterated): bound whole.
    Whole,
}

impl Use {
    fn field(&mut self, name: &str) {
        match self {
            Use::Unused => *self = Use::Fields(vec![name.to_owned()]),
            Use::Fields(fields) if !fields.iter().any(|f| f == name) => {
                fields.push(name.to_owned())
            }
            _ => {}
        }
    }
}

/// How a rule uses `doc`, `new`, `object`, `channel` (`auth` and `request` are small and
/// always bound whole).
#[derive(Debug, Clone)]
pub struct Uses {
    pub doc: Use,
    pub new: Use,
    pub object: Use,
    pub channel: Use,
    pub request: bool,
    pub auth: bool,
}

impl Uses {
    /// The rule reads no variable at all: its verdict is the same for every evaluation.
    pub fn none(&self) -> bool {
        !self.request
            && !self.auth
            && [&self.doc, &self.new, &self.object, &self.channel]
                .iter()
                .all(|u| **u == Use::Unused)
    }
}

pub(super) fn uses(expr: &IdedExpr) -> Uses {
    let mut uses = Uses {
        doc: Use::Unused,
        new: Use::Unused,
        object: Use::Unused,
        channel: Use::Unused,
        request: false,
        auth: false,
    };
    walk(expr, &mut uses);
    uses
}

impl Uses {
    fn slot(&mut self, name: &str) -> Option<&mut Use> {
        match name {
            "doc" => Some(&mut self.doc),
            "new" => Some(&mut self.new),
            "object" => Some(&mut self.object),
            "channel" => Some(&mut self.channel),
            _ => None,
        }
    }
}

fn walk(e: &IdedExpr, uses: &mut Uses) {
    match &e.expr {
        Expr::Select(s) => {
            if let Expr::Ident(name) = &s.operand.expr
                && let Some(slot) = uses.slot(name)
            {
                slot.field(&s.field);
                return;
            }
            walk(&s.operand, uses);
        }
        Expr::Ident(name) => {
            if name == "request" {
                uses.request = true;
            } else if name == "auth" {
                uses.auth = true;
            } else if let Some(slot) = uses.slot(name) {
                *slot = Use::Whole;
            }
        }
        Expr::Call(c) => {
            if let Some(target) = &c.target {
                walk(target, uses);
            }
            c.args.iter().for_each(|a| walk(a, uses));
        }
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, uses)),
        Expr::Map(m) => m.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => {
                walk(&me.key, uses);
                walk(&me.value, uses);
            }
            EntryExpr::StructField(f) => walk(&f.value, uses),
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => {
                walk(&me.key, uses);
                walk(&me.value, uses);
            }
            EntryExpr::StructField(f) => walk(&f.value, uses),
        }),
        Expr::Comprehension(c) => {
            // A comprehension variable named like a rule variable shadows it; treating the
            // name as the variable is conservative (it only binds more).
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(part, uses);
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(rule: &str) -> Uses {
        let program = cel::Program::compile(rule).unwrap();
        uses(program.expression())
    }

    #[test]
    fn finds_the_fields_a_rule_reads() {
        let u = of("auth != null && doc._owner == auth.id && has(doc.x) && new.t.size() < 3");
        assert_eq!(u.doc, Use::Fields(vec!["_owner".into(), "x".into()]));
        assert_eq!(u.new, Use::Fields(vec!["t".into()]));
        assert_eq!(u.object, Use::Unused);
        assert!(!u.request);
        assert_eq!(of("doc == new").doc, Use::Whole);
        assert_eq!(of("size(doc) > 1").doc, Use::Whole);
        assert_eq!(of("doc['a'] == 1").doc, Use::Whole);
        assert_eq!(
            of("doc.tags.exists(t, t == doc.x)").doc,
            Use::Fields(vec!["tags".into(), "x".into()])
        );
        assert_eq!(of("'a' in doc").doc, Use::Whole);
        assert!(of("request.time > timestamp('2020-01-01T00:00:00Z')").request);
    }
}
