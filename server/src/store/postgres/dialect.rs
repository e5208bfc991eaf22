//! The Postgres dialect of the query compiler: user fields are `jsonb` paths on `data`,
//! keyed by `(fb_rank, fb_num, fb_text COLLATE "C")` — functions from the migrations — so
//! strings compare by bytes as on SQLite, whatever the database's collation.

use serde_json::Value;

use crate::query::{Filter, JsonType, canonical_text, rank};
use crate::store::query::{Binder, Dialect, KeyColumn, Param, group_by_rank, op_sql};

pub(crate) struct Postgres;

/// `data->'a'->'b'` — segments are validated by `query::Field` (no quotes can occur).
pub(crate) fn path_expr(path: &[String]) -> String {
    let mut expr = String::from("data");
    for segment in path {
        expr.push_str("->'");
        expr.push_str(segment);
        expr.push('\'');
    }
    expr
}

pub(crate) fn rank_expr(x: &str) -> String {
    format!("fb_rank({x})")
}
fn num_expr(x: &str) -> String {
    format!("fb_num({x})")
}
fn text_expr(x: &str) -> String {
    format!("(fb_text({x}) COLLATE \"C\")")
}

fn number_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        _ => None,
    }
}

impl Postgres {
    /// Type-strict equality through the key columns, so a declared index applies.
    fn eq(&self, x: &str, value: &Value, b: &mut Binder) -> String {
        let r = rank(Some(value));
        match r {
            0 => format!("{} = 0", rank_expr(x)),
            1 | 2 => {
                let p = b.bind(Param::Text(number_text(value).unwrap_or_default()));
                format!(
                    "{} = {r} AND {} = {p}::numeric AND {} = ''",
                    rank_expr(x),
                    num_expr(x),
                    text_expr(x)
                )
            }
            _ => {
                let p = self.text_param(value, b);
                format!(
                    "{} = {r} AND {} = 0 AND {} = {p}",
                    rank_expr(x),
                    num_expr(x),
                    text_expr(x)
                )
            }
        }
    }

    /// A string compares as itself; an array/object as Postgres renders it (both sides alike).
    fn text_param(&self, value: &Value, b: &mut Binder) -> String {
        match value {
            Value::String(s) => b.bind(Param::Text(s.clone())),
            other => format!(
                "fb_text({}::jsonb)",
                b.bind(Param::Text(canonical_text(other)))
            ),
        }
    }
}

impl Dialect for Postgres {
    fn numbered(&self) -> bool {
        true
    }
    fn true_sql(&self) -> &'static str {
        "TRUE"
    }
    fn false_sql(&self) -> &'static str {
        "FALSE"
    }
    fn null_safe_eq(&self) -> &'static str {
        "IS NOT DISTINCT FROM"
    }
    fn int_cast(&self) -> &'static str {
        "::bigint"
    }
    fn text_cast(&self) -> &'static str {
        "::text"
    }

    fn user_key_columns(&self, path: &[String]) -> Vec<KeyColumn> {
        let x = path_expr(path);
        vec![
            KeyColumn {
                expr: rank_expr(&x),
                param_prefix: "fb_rank(",
                param_suffix: "::jsonb)",
            },
            KeyColumn {
                expr: num_expr(&x),
                param_prefix: "fb_num(",
                param_suffix: "::jsonb)",
            },
            KeyColumn {
                expr: text_expr(&x),
                param_prefix: "(fb_text(",
                param_suffix: "::jsonb) COLLATE \"C\")",
            },
        ]
    }

    fn user_key_params(&self, value: &Value) -> Vec<Param> {
        let json = canonical_text(value);
        vec![
            Param::Text(json.clone()),
            Param::Text(json.clone()),
            Param::Text(json),
        ]
    }

    fn user_atom(&self, path: &[String], atom: &Filter, b: &mut Binder) -> String {
        let x = path_expr(path);
        match atom {
            Filter::Eq(_, value) => self.eq(&x, value, b),
            Filter::In(_, values) => {
                let groups = group_by_rank(values);
                if groups.is_empty() {
                    return self.false_sql().to_owned();
                }
                let mut parts = Vec::new();
                for (_, vs) in groups {
                    for v in vs {
                        parts.push(format!("({})", self.eq(&x, v, b)));
                    }
                }
                format!("({})", parts.join(" OR "))
            }
            Filter::Cmp(_, op, value) => match value {
                Value::Number(n) => {
                    let p = b.bind(Param::Text(n.to_string()));
                    format!(
                        "{} = 2 AND {} {} {p}::numeric",
                        rank_expr(&x),
                        num_expr(&x),
                        op_sql(*op)
                    )
                }
                Value::String(s) => {
                    let p = b.bind(Param::Text(s.clone()));
                    format!(
                        "{} = 3 AND {} = 0 AND {} {} {p}",
                        rank_expr(&x),
                        num_expr(&x),
                        text_expr(&x),
                        op_sql(*op)
                    )
                }
                _ => self.false_sql().to_owned(),
            },
            Filter::Exists(_, true) => format!("({x}) IS NOT NULL"),
            Filter::Exists(_, false) => format!("({x}) IS NULL"),
            Filter::Contains(_, value) => match value {
                Value::Array(_) | Value::Object(_) => {
                    let p = b.bind(Param::Text(canonical_text(value)));
                    format!(
                        "CASE WHEN jsonb_typeof({x}) = 'array' THEN EXISTS (SELECT 1 FROM \
                         jsonb_array_elements({x}) AS e(v) WHERE jsonb_typeof(e.v) = jsonb_typeof({p}::jsonb) \
                         AND e.v::text = ({p}::jsonb)::text) ELSE FALSE END"
                    )
                }
                Value::String(s) => {
                    let element = b.bind(Param::Text(canonical_text(&Value::Array(vec![
                        value.clone(),
                    ]))));
                    let needle = b.bind(Param::Text(s.clone()));
                    format!(
                        "CASE jsonb_typeof({x}) WHEN 'array' THEN ({x}) @> {element}::jsonb \
                         WHEN 'string' THEN strpos(({x}) #>> '{{}}', {needle}) > 0 ELSE FALSE END"
                    )
                }
                scalar => {
                    let element = b.bind(Param::Text(canonical_text(&Value::Array(vec![
                        scalar.clone(),
                    ]))));
                    format!(
                        "CASE WHEN jsonb_typeof({x}) = 'array' THEN ({x}) @> {element}::jsonb ELSE FALSE END"
                    )
                }
            },
            Filter::StartsWith(_, prefix) => {
                let p = b.bind(Param::Text(prefix.clone()));
                format!(
                    "{} = 3 AND starts_with(({x}) #>> '{{}}', {p})",
                    rank_expr(&x)
                )
            }
            Filter::Type(_, JsonType::Null) => format!("jsonb_typeof({x}) = 'null'"),
            Filter::Type(_, ty) => format!("{} = {}", rank_expr(&x), ty.rank()),
            Filter::Size(_, n) => {
                let p = b.bind(Param::Int(i64::try_from(*n).unwrap_or(i64::MAX)));
                format!(
                    "(CASE WHEN jsonb_typeof({x}) = 'array' THEN jsonb_array_length({x}) END) = {p}"
                )
            }
            _ => self.false_sql().to_owned(),
        }
    }

    fn str_contains(&self, col: &str, needle: &str, b: &mut Binder) -> String {
        let p = b.bind(Param::Text(needle.to_owned()));
        format!("strpos({col}, {p}) > 0")
    }

    fn str_starts_with(&self, col: &str, prefix: &str, b: &mut Binder) -> String {
        let p = b.bind(Param::Text(prefix.to_owned()));
        format!("starts_with({col}, {p})")
    }
}
