//! Lowering `list` rules to query filters, so that a client's query is AND-ed with the rule
//! in SQL and sees exactly the documents the rule allows (PocketBase's semantics), with
//! correct counts and cursors.
//!
//! At save time a rule becomes a [`Plan`]: document-free parts are kept as CEL expressions
//! (evaluated per request, with `auth` and `request`), and the parts that read `doc` must be
//! comparisons of a document field with such an expression, `in`, `has()`, `startsWith()`,
//! `contains()`, or a boolean field, combined by `&&`, `||`, `!` and `?:`. Anything else is
//! refused with a message pointing at it.
//!
//! Per request the plan becomes two filters: `T`, "the rule evaluates to true", and `F`, "it
//! evaluates to false" — both false where CEL would fail (a missing field, a type mismatch).
//! `!x` is `(F(x), T(x))`; `a && b` is `(T(a) ∧ T(b), F(a) ∨ F(b))` because `false` absorbs
//! an error; `a || b` likewise. The query uses `T`, so a document is listed exactly when the
//! rule evaluated against it in memory would allow it (a property test checks this).

use cel::common::ast::{CallExpr, Expr, SourceInfo};
use cel::{Context, IdedExpr};
use serde_json::Value;

use super::RuleError;
use super::value::to_json;
use crate::query::{CmpOp, Field, Filter, JsonType};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "_==_" => Op::Eq,
            "_!=_" => Op::Ne,
            "_<_" => Op::Lt,
            "_<=_" => Op::Le,
            "_>_" => Op::Gt,
            "_>=_" => Op::Ge,
            _ => return None,
        })
    }

    /// The operator with its operands swapped: `5 < x` is `x > 5`.
    fn flipped(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            other => other,
        }
    }

    /// Holds for `a OP b`.
    fn holds(self, ord: std::cmp::Ordering) -> bool {
        match self {
            Op::Eq => ord.is_eq(),
            Op::Ne => ord.is_ne(),
            Op::Lt => ord.is_lt(),
            Op::Le => ord.is_le(),
            Op::Gt => ord.is_gt(),
            Op::Ge => ord.is_ge(),
        }
    }

    fn cmp(self) -> Option<CmpOp> {
        Some(match self {
            Op::Lt => CmpOp::Lt,
            Op::Le => CmpOp::Lte,
            Op::Gt => CmpOp::Gt,
            Op::Ge => CmpOp::Gte,
            _ => return None,
        })
    }

    /// The ordering operator that holds exactly when this one does not (same type).
    fn negated(self) -> Op {
        match self {
            Op::Lt => Op::Ge,
            Op::Le => Op::Gt,
            Op::Gt => Op::Le,
            Op::Ge => Op::Lt,
            Op::Eq => Op::Ne,
            Op::Ne => Op::Eq,
        }
    }
}

/// A `list` rule, ready to become a filter per request.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A part that does not read the document: evaluated per request.
    Value(IdedExpr),
    And(Box<Plan>, Box<Plan>),
    Or(Box<Plan>, Box<Plan>),
    Not(Box<Plan>),
    Cond(IdedExpr, Box<Plan>, Box<Plan>),
    /// `doc.f OP other`.
    Compare {
        field: Field,
        op: Op,
        other: IdedExpr,
    },
    /// `doc.f in other`.
    InList {
        field: Field,
        list: IdedExpr,
    },
    /// `item in doc.f` (a list element or a map key).
    Member {
        item: IdedExpr,
        field: Field,
    },
    /// `doc.f.startsWith(arg)`.
    StartsWith {
        field: Field,
        arg: IdedExpr,
    },
    /// `doc.f.contains(arg)` (strings).
    Contains {
        field: Field,
        arg: IdedExpr,
    },
    /// `has(doc.f)`.
    Has(Field),
    /// `doc.f` used as a boolean.
    Truthy(Field),
}

// ---- building the plan (at save time) ----

struct Builder<'a> {
    source: &'a SourceInfo,
}

pub(super) fn plan(expr: &IdedExpr, source: &SourceInfo) -> Result<Plan, RuleError> {
    Builder { source }.plan(expr)
}

/// Whether the expression reads `doc` (or `new`, which list rules do not have).
fn reads_document(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Ident(name) => name == "doc" || name == "new",
        Expr::Select(s) => reads_document(&s.operand),
        Expr::Call(c) => {
            c.target.as_deref().is_some_and(reads_document) || c.args.iter().any(reads_document)
        }
        Expr::List(l) => l.elements.iter().any(reads_document),
        Expr::Map(m) => m.entries.iter().any(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                reads_document(&me.key) || reads_document(&me.value)
            }
            cel::common::ast::EntryExpr::StructField(f) => reads_document(&f.value),
        }),
        Expr::Comprehension(c) => {
            reads_document(&c.iter_range)
                || reads_document(&c.accu_init)
                || reads_document(&c.loop_cond)
                || reads_document(&c.loop_step)
                || reads_document(&c.result)
        }
        _ => false,
    }
}

impl Builder<'_> {
    fn err(&self, e: &IdedExpr, message: &str) -> RuleError {
        RuleError::at(
            format!(
                "{message}; a list rule must have an SQL form: compare document fields with values, \
                 or use in, has(), startsWith(), contains(), &&, ||, ! and ?:"
            ),
            self.source.offset_for(e.id).map(|(start, _)| start),
        )
    }

    /// `doc.a.b` as a field, or `None` if the expression is not a plain document path.
    fn field(&self, e: &IdedExpr) -> Option<Result<Field, RuleError>> {
        self.field_with(e, Vec::new())
    }

    /// The path of `e` (a plain document path, or `doc` itself) followed by `last`.
    fn field_with(&self, e: &IdedExpr, last: Vec<String>) -> Option<Result<Field, RuleError>> {
        let mut segments = last;
        let mut current = e;
        loop {
            match &current.expr {
                Expr::Select(s) if !s.test => {
                    segments.push(s.field.clone());
                    current = &s.operand;
                }
                Expr::Ident(name) if name == "doc" => break,
                Expr::Ident(name) if name == "new" => {
                    return Some(Err(self.err(e, "`new` does not exist in list rules")));
                }
                _ => return None,
            }
        }
        if segments.is_empty() {
            return Some(Err(
                self.err(e, "`doc` itself cannot be used, only its fields")
            ));
        }
        segments.reverse();
        Some(Field::parse(&segments.join(".")).map_err(|_| {
            self.err(
                e,
                &format!(
                    "the field `{}` cannot be used in a list rule",
                    segments.join(".")
                ),
            )
        }))
    }

    fn plan(&self, e: &IdedExpr) -> Result<Plan, RuleError> {
        if !reads_document(e) {
            return Ok(Plan::Value(e.clone()));
        }
        match &e.expr {
            Expr::Call(call) => self.call(e, call),
            Expr::Select(s) if s.test => match self.field_with(&s.operand, vec![s.field.clone()]) {
                Some(field) => Ok(Plan::Has(field?)),
                None => Err(self.err(e, "has() must name a document field")),
            },
            Expr::Select(_) => match self.field(e) {
                Some(field) => Ok(Plan::Truthy(field?)),
                None => Err(self.err(e, "this part reads the document in a way SQL cannot")),
            },
            _ => Err(self.err(e, "this part reads the document in a way SQL cannot")),
        }
    }

    fn call(&self, e: &IdedExpr, call: &CallExpr) -> Result<Plan, RuleError> {
        let args = &call.args;
        match (call.func_name.as_str(), call.target.as_deref(), args.len()) {
            ("_&&_", None, 2) => Ok(Plan::And(
                Box::new(self.plan(&args[0])?),
                Box::new(self.plan(&args[1])?),
            )),
            ("_||_", None, 2) => Ok(Plan::Or(
                Box::new(self.plan(&args[0])?),
                Box::new(self.plan(&args[1])?),
            )),
            ("!_", None, 1) => Ok(Plan::Not(Box::new(self.plan(&args[0])?))),
            ("_?_:_", None, 3) => {
                if reads_document(&args[0]) {
                    return Err(
                        self.err(&args[0], "the condition of `?:` may not read the document")
                    );
                }
                Ok(Plan::Cond(
                    args[0].clone(),
                    Box::new(self.plan(&args[1])?),
                    Box::new(self.plan(&args[2])?),
                ))
            }
            (name, None, 2) if Op::parse(name).is_some() => {
                let op = Op::parse(name).unwrap_or(Op::Eq);
                match (self.field(&args[0]), self.field(&args[1])) {
                    (Some(field), None) if !reads_document(&args[1]) => Ok(Plan::Compare {
                        field: field?,
                        op,
                        other: args[1].clone(),
                    }),
                    (None, Some(field)) if !reads_document(&args[0]) => Ok(Plan::Compare {
                        field: field?,
                        op: op.flipped(),
                        other: args[0].clone(),
                    }),
                    _ => Err(self.err(e, "a comparison must have a document field on one side and a value on the other")),
                }
            }
            ("@in", None, 2) => match (self.field(&args[0]), self.field(&args[1])) {
                (Some(field), None) if !reads_document(&args[1]) => Ok(Plan::InList {
                    field: field?,
                    list: args[1].clone(),
                }),
                (None, Some(field)) if !reads_document(&args[0]) => Ok(Plan::Member {
                    item: args[0].clone(),
                    field: field?,
                }),
                _ => Err(self.err(e, "`in` must relate a document field and a value")),
            },
            ("startsWith" | "contains", Some(target), 1) if !reads_document(&args[0]) => {
                match self.field(target) {
                    Some(field) => {
                        let field = field?;
                        Ok(if call.func_name == "startsWith" {
                            Plan::StartsWith {
                                field,
                                arg: args[0].clone(),
                            }
                        } else {
                            Plan::Contains {
                                field,
                                arg: args[0].clone(),
                            }
                        })
                    }
                    None => Err(self.err(
                        e,
                        "startsWith()/contains() must be called on a document field",
                    )),
                }
            }
            (name, _, _) => Err(self.err(e, &format!("`{name}` on document fields"))),
        }
    }
}

// ---- instantiating the plan (per request) ----

fn and(a: Filter, b: Filter) -> Filter {
    Filter::and(vec![a, b])
}

fn or(a: Filter, b: Filter) -> Filter {
    match (a, b) {
        (Filter::True, _) | (_, Filter::True) => Filter::True,
        (Filter::False, x) | (x, Filter::False) => x,
        (a, b) => Filter::Or(vec![a, b]),
    }
}

fn not(a: Filter) -> Filter {
    match a {
        Filter::True => Filter::False,
        Filter::False => Filter::True,
        other => Filter::Not(Box::new(other)),
    }
}

const NEITHER: (Filter, Filter) = (Filter::False, Filter::False);

/// The field exists (system fields always do).
fn exists(field: &Field) -> Filter {
    match field {
        Field::System(_) => Filter::True,
        f => Filter::Exists(f.clone(), true),
    }
}

fn is(field: &Field, ty: JsonType) -> Filter {
    Filter::Type(field.clone(), ty)
}

impl Plan {
    /// The filter `T`: documents for which the rule evaluates to true.
    pub fn filter(&self, ctx: &Context<'_, '_>) -> Filter {
        self.instantiate(ctx).0
    }

    fn instantiate(&self, ctx: &Context<'_, '_>) -> (Filter, Filter) {
        let value = |e: &IdedExpr| ctx.resolve(e).ok();
        match self {
            Plan::Value(e) => match value(e) {
                Some(cel::Value::Bool(true)) => (Filter::True, Filter::False),
                Some(cel::Value::Bool(false)) => (Filter::False, Filter::True),
                _ => NEITHER,
            },
            Plan::And(a, b) => {
                let (ta, fa) = a.instantiate(ctx);
                let (tb, fb) = b.instantiate(ctx);
                (and(ta, tb), or(fa, fb))
            }
            Plan::Or(a, b) => {
                let (ta, fa) = a.instantiate(ctx);
                let (tb, fb) = b.instantiate(ctx);
                (or(ta, tb), and(fa, fb))
            }
            Plan::Not(a) => {
                let (t, f) = a.instantiate(ctx);
                (f, t)
            }
            Plan::Cond(cond, a, b) => match value(cond) {
                Some(cel::Value::Bool(true)) => a.instantiate(ctx),
                Some(cel::Value::Bool(false)) => b.instantiate(ctx),
                _ => NEITHER,
            },
            Plan::Compare { field, op, other } => match value(other) {
                None => NEITHER,
                Some(v) => compare(field, *op, &v),
            },
            Plan::InList { field, list } => match value(list) {
                Some(cel::Value::List(items)) => {
                    let values: Vec<Value> = items.iter().filter_map(to_json).collect();
                    let t = and(exists(field), Filter::In(field.clone(), values.clone()));
                    let f = and(exists(field), not(Filter::In(field.clone(), values)));
                    (t, f)
                }
                Some(cel::Value::Map(map)) => {
                    let keys: Vec<Value> = map
                        .map
                        .keys()
                        .filter_map(|k| match k {
                            cel::objects::Key::String(s) => Some(Value::String(s.as_ref().clone())),
                            _ => None,
                        })
                        .collect();
                    let t = and(exists(field), Filter::In(field.clone(), keys.clone()));
                    let f = and(exists(field), not(Filter::In(field.clone(), keys)));
                    (t, f)
                }
                _ => NEITHER,
            },
            Plan::Member { item, field } => match value(item) {
                None => NEITHER,
                Some(v) => member(field, &v),
            },
            Plan::StartsWith { field, arg } => match value(arg) {
                Some(cel::Value::String(s)) => {
                    let hit = Filter::StartsWith(field.clone(), s.as_ref().clone());
                    (hit.clone(), and(is(field, JsonType::String), not(hit)))
                }
                _ => NEITHER,
            },
            Plan::Contains { field, arg } => match value(arg) {
                Some(cel::Value::String(s)) => {
                    let string = is(field, JsonType::String);
                    let hit = Filter::Contains(field.clone(), Value::String(s.as_ref().clone()));
                    (and(string.clone(), hit.clone()), and(string, not(hit)))
                }
                _ => NEITHER,
            },
            Plan::Has(field) => {
                let t = exists(field);
                let f = match field {
                    Field::System(_) => Filter::False,
                    Field::User(path) if path.len() == 1 => not(t.clone()),
                    Field::User(path) => and(
                        is(
                            &Field::User(path[..path.len() - 1].to_vec()),
                            JsonType::Object,
                        ),
                        not(t.clone()),
                    ),
                };
                (t, f)
            }
            Plan::Truthy(field) => (
                Filter::Eq(field.clone(), Value::Bool(true)),
                Filter::Eq(field.clone(), Value::Bool(false)),
            ),
        }
    }
}

/// `field OP v`, with CEL's semantics: equality across types is false (not an error),
/// ordering across types (or with null, lists, maps) is an error.
fn compare(field: &Field, op: Op, v: &cel::Value) -> (Filter, Filter) {
    let Some(json) = to_json(v) else {
        // A timestamp, duration or bytes: never equal to a JSON value, not ordered with one.
        return match op {
            Op::Eq => (Filter::False, exists(field)),
            Op::Ne => (exists(field), Filter::False),
            _ => NEITHER,
        };
    };
    match (op, &json) {
        (Op::Eq | Op::Ne, _) => {
            let eq = and(exists(field), Filter::Eq(field.clone(), json.clone()));
            let ne = and(exists(field), not(Filter::Eq(field.clone(), json.clone())));
            if op == Op::Eq { (eq, ne) } else { (ne, eq) }
        }
        (_, Value::Number(_) | Value::String(_)) => {
            let (Some(t), Some(f)) = (op.cmp(), op.negated().cmp()) else {
                return NEITHER;
            };
            (
                Filter::Cmp(field.clone(), t, json.clone()),
                Filter::Cmp(field.clone(), f, json),
            )
        }
        (_, Value::Bool(b)) => {
            // Booleans are ordered (false < true): enumerate the two values.
            let mut t = Filter::False;
            let mut f = Filter::False;
            for candidate in [false, true] {
                let eq = Filter::Eq(field.clone(), Value::Bool(candidate));
                if op.holds(candidate.cmp(b)) {
                    t = or(t, eq);
                } else {
                    f = or(f, eq);
                }
            }
            (t, f)
        }
        _ => NEITHER,
    }
}

/// `v in field`: a list element, or a key of a map.
fn member(field: &Field, v: &cel::Value) -> (Filter, Filter) {
    let array = is(field, JsonType::Array);
    let object = is(field, JsonType::Object);
    let in_array = to_json(v).map(|json| Filter::Contains(field.clone(), json));
    let key = match (v, field) {
        (cel::Value::String(s), Field::User(path)) if crate::query::is_queryable_segment(s) => {
            let mut path = path.clone();
            path.push(s.as_ref().clone());
            Some(Filter::Exists(Field::User(path), true))
        }
        _ => None,
    };
    let t = or(
        and(array.clone(), in_array.clone().unwrap_or(Filter::False)),
        and(object.clone(), key.clone().unwrap_or(Filter::False)),
    );
    let f = or(
        and(array, in_array.map(not).unwrap_or(Filter::True)),
        and(object, key.map(not).unwrap_or(Filter::True)),
    );
    (t, f)
}

#[cfg(test)]
mod tests {
    use super::super::{Rule, Vars};
    use crate::query::Filter;
    use serde_json::{Value, json};

    fn filter(rule: &str, auth: Value) -> Filter {
        Rule::compile_list(rule).unwrap().filter(&Vars {
            auth,
            ..Vars::default()
        })
    }

    #[test]
    fn owner_rules_become_filters() {
        let f = filter("auth != null && doc._owner == auth.id", json!({"id": "u1"}));
        assert_eq!(
            f,
            Filter::Eq(
                crate::query::Field::System(crate::query::SystemField::Owner),
                json!("u1")
            )
        );
        assert_eq!(
            filter("auth != null && doc._owner == auth.id", Value::Null),
            Filter::False
        );
        assert_eq!(filter("true", Value::Null), Filter::True);
        let user = |p: &str| crate::query::Field::parse(p).unwrap();
        assert_eq!(
            filter("has(doc.a)", Value::Null),
            Filter::Exists(user("a"), true)
        );
        assert_eq!(
            filter("has(doc.a.b)", Value::Null),
            Filter::Exists(user("a.b"), true)
        );
    }

    #[test]
    fn refuses_rules_without_an_sql_form() {
        for bad in [
            "doc.a == doc.b",
            "size(doc.tags) > 0",
            "doc.tags.exists(t, t == 'x')",
            "doc.title.matches('^a')",
            "doc.n + 1 > 2",
            "doc == null",
            "doc.a ? true : false",
            "new.title == 'x'",
            "doc['weird key'] == 1",
        ] {
            let err = Rule::compile_list(bad).unwrap_err();
            assert!(err.message.contains("SQL"), "{bad}: {}", err.message);
        }
    }
}
