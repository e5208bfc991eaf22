//! Checks made when a rule is saved: every variable and function is known, fields of `auth`
//! and `request` exist, and obvious type errors (comparing a string with a number, a
//! non-boolean rule) are caught. Values from documents are dynamic and checked at runtime.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue, SourceInfo};

use super::{RuleError, Scope};

/// What a checked expression is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    Null,
    List,
    Map,
    Timestamp,
    Duration,
    Type,
    Dyn,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::UInt => "uint",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List => "list",
            Ty::Map => "map",
            Ty::Timestamp => "timestamp",
            Ty::Duration => "duration",
            Ty::Type => "type",
            Ty::Dyn => "dyn",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::UInt | Ty::Double)
    }

    /// Whether `<`/`>` between the two could work.
    fn comparable(self, other: Ty) -> bool {
        self == Ty::Dyn
            || other == Ty::Dyn
            || (self.numeric() && other.numeric())
            || (self == other
                && matches!(
                    self,
                    Ty::String | Ty::Bool | Ty::Timestamp | Ty::Duration | Ty::Bytes
                ))
    }
}

/// Functions of the standard CEL environment.
const FUNCTIONS: &[&str] = &[
    "size",
    "has",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "timestamp",
    "duration",
    "dyn",
    "type",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
    "exists",
    "all",
    "exists_one",
    "map",
    "filter",
    "max",
    "min",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "timestamp",
    "duration",
];

const AUTH_FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::String),
    ("role", Ty::String),
    ("anonymous", Ty::Bool),
    ("email", Ty::Dyn),
    ("email_verified", Ty::Bool),
    ("claims", Ty::Map),
];

const REQUEST_FIELDS: &[(&str, Ty)] = &[
    ("time", Ty::Timestamp),
    ("method", Ty::String),
    ("ip", Ty::Dyn),
];

struct Checker<'a> {
    scope: Scope,
    source: &'a SourceInfo,
    /// Variables bound by comprehensions (macros such as `exists`).
    bound: Vec<String>,
}

pub(super) fn check(program: &cel::Program, scope: Scope) -> Result<(), RuleError> {
    let mut checker = Checker {
        scope,
        source: program.source_info(),
        bound: Vec::new(),
    };
    let ty = checker.expr(program.expression())?;
    if !matches!(ty, Ty::Bool | Ty::Dyn) {
        return Err(RuleError::at(
            format!(
                "a rule must be a boolean expression; this one is a {}",
                ty.name()
            ),
            None,
        ));
    }
    Ok(())
}

impl Checker<'_> {
    fn pos(&self, e: &IdedExpr) -> Option<u32> {
        self.source.offset_for(e.id).map(|(start, _)| start)
    }

    fn err(&self, e: &IdedExpr, message: impl Into<String>) -> RuleError {
        RuleError::at(message, self.pos(e))
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<Ty, RuleError> {
        Ok(match &e.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::UInt,
            },
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    Ty::Dyn
                } else if self.scope.variables().contains(&name.as_str()) {
                    match name.as_str() {
                        "request" => Ty::Map,
                        _ => Ty::Dyn,
                    }
                } else if TYPE_NAMES.contains(&name.as_str()) {
                    Ty::Type
                } else {
                    let known = self.scope.variables().join(", ");
                    return Err(self.err(
                        e,
                        format!("unknown variable `{name}` (rules may use {known})"),
                    ));
                }
            }
            Expr::Select(select) => {
                let operand = &select.operand;
                self.expr(operand)?;
                if select.test {
                    return Ok(Ty::Bool);
                }
                let fields = match &operand.expr {
                    Expr::Ident(name) if name == "auth" && !self.bound.contains(name) => {
                        Some(("auth", AUTH_FIELDS))
                    }
                    Expr::Ident(name) if name == "request" && !self.bound.contains(name) => {
                        Some(("request", REQUEST_FIELDS))
                    }
                    _ => None,
                };
                match fields {
                    Some((var, fields)) => match fields.iter().find(|(f, _)| *f == select.field) {
                        Some((_, ty)) => *ty,
                        None => {
                            let known: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                            return Err(self.err(
                                e,
                                format!(
                                    "{var} has no field `{}` (it has {})",
                                    select.field,
                                    known.join(", ")
                                ),
                            ));
                        }
                    },
                    None => Ty::Dyn,
                }
            }
            Expr::List(list) => {
                for item in &list.elements {
                    self.expr(item)?;
                }
                Ty::List
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(entry) = &entry.expr {
                        self.expr(&entry.key)?;
                        self.expr(&entry.value)?;
                    }
                }
                Ty::Map
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range)?;
                self.expr(&c.accu_init)?;
                let mut added = vec![c.iter_var.clone(), c.accu_var.clone()];
                if let Some(v) = &c.iter_var2 {
                    added.push(v.clone());
                }
                let depth = self.bound.len();
                self.bound.extend(added);
                let result = (|| {
                    self.expr(&c.loop_cond)?;
                    self.expr(&c.loop_step)?;
                    self.expr(&c.result)
                })();
                self.bound.truncate(depth);
                result?;
                Ty::Dyn
            }
            Expr::Call(call) => self.call(e, call)?,
            Expr::Struct(_) => {
                return Err(self.err(e, "message literals are not supported in rules"));
            }
            Expr::Unspecified => Ty::Dyn,
        })
    }

    fn call(&mut self, e: &IdedExpr, call: &cel::common::ast::CallExpr) -> Result<Ty, RuleError> {
        let target = match &call.target {
            Some(t) => Some(self.expr(t)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for arg in &call.args {
            args.push(self.expr(arg)?);
        }
        let name = call.func_name.as_str();
        let boolish = |t: Ty| matches!(t, Ty::Bool | Ty::Dyn);
        Ok(match name {
            "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
                if let Some(bad) = args.iter().find(|t| !boolish(**t)) {
                    return Err(self.err(
                        e,
                        format!("`{}` needs booleans, not a {}", op_text(name), bad.name()),
                    ));
                }
                Ty::Bool
            }
            "_==_" | "_!=_" => Ty::Bool,
            "_<_" | "_<=_" | "_>_" | "_>=_" => {
                if let [a, b] = args[..]
                    && !a.comparable(b)
                {
                    return Err(self.err(
                        e,
                        format!("cannot compare a {} with a {}", a.name(), b.name()),
                    ));
                }
                Ty::Bool
            }
            "@in" => {
                if let [_, container] = args[..]
                    && !matches!(container, Ty::List | Ty::Map | Ty::Dyn)
                {
                    return Err(self.err(
                        e,
                        format!("`in` needs a list or a map, not a {}", container.name()),
                    ));
                }
                Ty::Bool
            }
            "_?_:_" => {
                if let [cond, a, b] = args[..] {
                    if !boolish(cond) {
                        return Err(self.err(
                            e,
                            format!("the condition of `?:` is a {}, not a boolean", cond.name()),
                        ));
                    }
                    if a == b { a } else { Ty::Dyn }
                } else {
                    Ty::Dyn
                }
            }
            "_+_" | "_-_" | "_*_" | "_/_" | "_%_" => {
                if let [a, b] = args[..]
                    && a != Ty::Dyn
                    && b != Ty::Dyn
                    && a != b
                    && !matches!(
                        (a, b),
                        (Ty::Timestamp, Ty::Duration)
                            | (Ty::Duration, Ty::Timestamp)
                            | (Ty::Timestamp, Ty::Timestamp)
                    )
                {
                    return Err(self.err(
                        e,
                        format!(
                            "`{}` between a {} and a {} (convert with int(), double() …)",
                            op_text(name),
                            a.name(),
                            b.name()
                        ),
                    ));
                }
                // The operands have one type (the other is dynamic): so has the result.
                match args[..] {
                    [Ty::Timestamp, Ty::Timestamp] if name == "_-_" => Ty::Duration,
                    [Ty::Timestamp, Ty::Duration] | [Ty::Duration, Ty::Timestamp] => Ty::Timestamp,
                    [a, b] if a == b => a,
                    [Ty::Dyn, b] => b,
                    [a, Ty::Dyn] => a,
                    _ => Ty::Dyn,
                }
            }
            "-_" => Ty::Dyn,
            "_[_]" | "_[?_]" | "_?._" => Ty::Dyn,
            "size" | "int" => Ty::Int,
            "uint" => Ty::UInt,
            "double" => Ty::Double,
            "string" => Ty::String,
            "bool" | "matches" | "contains" | "startsWith" | "endsWith" | "exists" | "all"
            | "exists_one" => {
                if matches!(name, "matches" | "contains" | "startsWith" | "endsWith")
                    && let Some(t) = target
                    && !matches!(t, Ty::String | Ty::Dyn)
                {
                    return Err(self.err(
                        e,
                        format!("`{name}` works on strings, not on a {}", t.name()),
                    ));
                }
                Ty::Bool
            }
            "bytes" => Ty::Bytes,
            "timestamp" => Ty::Timestamp,
            "duration" => Ty::Duration,
            "type" => Ty::Type,
            other if FUNCTIONS.contains(&other) => Ty::Dyn,
            other => return Err(self.err(e, format!("unknown function `{other}`"))),
        })
    }
}

fn op_text(name: &str) -> &str {
    match name {
        "_&&_" => "&&",
        "_||_" => "||",
        "!_" => "!",
        "_+_" => "+",
        "_-_" => "-",
        "_*_" => "*",
        "_/_" => "/",
        "_%_" => "%",
        other => other,
    }
}
