//! The SQLite dialect of the query compiler: user fields are read with `json_type` /
//! `json_extract` on the `data` column, keyed by `(rank, value)`.

use serde_json::Value;

use crate::query::{Filter, JsonType, canonical_text, rank};
use crate::store::query::{Binder, Dialect, KeyColumn, Param, group_by_rank, number_param, op_sql};

pub(crate) struct Sqlite;

/// `'$."a"."b"'` — segments are validated by `query::Field`, so no quoting issue arises.
fn path_literal(path: &[String]) -> String {
    let mut lit = String::from("'$");
    for segment in path {
        lit.push_str(".\"");
        lit.push_str(segment);
        lit.push('"');
    }
    lit.push('\'');
    lit
}

fn rank_expr(p: &str) -> String {
    format!(
        "(CASE json_type(data, {p}) WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'integer' THEN 2 \
         WHEN 'real' THEN 2 WHEN 'text' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 5 ELSE 0 END)"
    )
}

fn value_expr(p: &str) -> String {
    format!("json_extract(data, {p})")
}

/// The parameter a value compares as against `json_extract` (booleans are 0/1 there,
/// arrays/objects their canonical JSON text).
fn value_param(value: &Value) -> Param {
    match value {
        Value::Null => Param::Null,
        Value::Bool(b) => Param::Int(i64::from(*b)),
        Value::Number(n) => number_param(n),
        Value::String(s) => Param::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => Param::Text(canonical_text(value)),
    }
}

/// The `json_each.type` values an element of this value has.
fn element_type_sql(value: &Value) -> &'static str {
    match value {
        Value::Null => "type = 'null'",
        Value::Bool(true) => "type = 'true'",
        Value::Bool(false) => "type = 'false'",
        Value::Number(_) => "type IN ('integer', 'real')",
        Value::String(_) => "type = 'text'",
        Value::Array(_) => "type = 'array'",
        Value::Object(_) => "type = 'object'",
    }
}

impl Sqlite {
    fn eq(&self, p: &str, value: &Value, b: &mut Binder) -> String {
        let r = rank(Some(value));
        if r == 0 {
            return format!("{} = 0", rank_expr(p));
        }
        let param = b.bind(value_param(value));
        format!("{} = {r} AND {} = {param}", rank_expr(p), value_expr(p))
    }
}

impl Dialect for Sqlite {
    fn numbered(&self) -> bool {
        false
    }
    fn true_sql(&self) -> &'static str {
        "1"
    }
    fn false_sql(&self) -> &'static str {
        "0"
    }
    fn null_safe_eq(&self) -> &'static str {
        "IS"
    }
    fn int_cast(&self) -> &'static str {
        ""
    }
    fn text_cast(&self) -> &'static str {
        ""
    }

    fn user_key_columns(&self, path: &[String]) -> Vec<KeyColumn> {
        let p = path_literal(path);
        vec![
            KeyColumn::plain(rank_expr(&p), ""),
            KeyColumn::plain(value_expr(&p), ""),
        ]
    }

    fn user_key_params(&self, value: &Value) -> Vec<Param> {
        vec![Param::Int(i64::from(rank(Some(value)))), value_param(value)]
    }

    fn user_atom(&self, path: &[String], atom: &Filter, b: &mut Binder) -> String {
        let p = path_literal(path);
        match atom {
            Filter::Eq(_, value) => self.eq(&p, value, b),
            Filter::In(_, values) => {
                let groups = group_by_rank(values);
                if groups.is_empty() {
                    return self.false_sql().to_owned();
                }
                let parts: Vec<String> = groups
                    .into_iter()
                    .map(|(r, vs)| {
                        if r == 0 {
                            return format!("{} = 0", rank_expr(&p));
                        }
                        let params: Vec<String> =
                            vs.into_iter().map(|v| b.bind(value_param(v))).collect();
                        format!(
                            "({} = {r} AND {} IN ({}))",
                            rank_expr(&p),
                            value_expr(&p),
                            params.join(", ")
                        )
                    })
                    .collect();
                format!("({})", parts.join(" OR "))
            }
            Filter::Cmp(_, op, value) => {
                let r = rank(Some(value));
                let param = b.bind(value_param(value));
                format!(
                    "{} = {r} AND {} {} {param}",
                    rank_expr(&p),
                    value_expr(&p),
                    op_sql(*op)
                )
            }
            Filter::Exists(_, true) => format!("json_type(data, {p}) IS NOT NULL"),
            Filter::Exists(_, false) => format!("json_type(data, {p}) IS NULL"),
            Filter::Contains(_, value) => {
                let element = b.bind(value_param(value));
                let in_array = format!(
                    "EXISTS (SELECT 1 FROM json_each(data, {p}) WHERE {} AND value IS {element})",
                    element_type_sql(value)
                );
                if let Value::String(s) = value {
                    let needle = b.bind(Param::Text(s.clone()));
                    format!(
                        "CASE json_type(data, {p}) WHEN 'array' THEN {in_array} \
                         WHEN 'text' THEN instr({}, {needle}) > 0 ELSE 0 END",
                        value_expr(&p)
                    )
                } else {
                    format!("CASE json_type(data, {p}) WHEN 'array' THEN {in_array} ELSE 0 END")
                }
            }
            Filter::StartsWith(_, prefix) => {
                let a = b.bind(Param::Text(prefix.clone()));
                let c = b.bind(Param::Text(prefix.clone()));
                format!(
                    "{} = 3 AND substr({}, 1, length({a})) = {c}",
                    rank_expr(&p),
                    value_expr(&p)
                )
            }
            Filter::Type(_, JsonType::Null) => format!("json_type(data, {p}) = 'null'"),
            Filter::Type(_, ty) => format!("{} = {}", rank_expr(&p), ty.rank()),
            Filter::Size(_, n) => {
                let param = b.bind(Param::Int(i64::try_from(*n).unwrap_or(i64::MAX)));
                format!("json_type(data, {p}) = 'array' AND json_array_length(data, {p}) = {param}")
            }
            _ => self.false_sql().to_owned(),
        }
    }

    fn str_contains(&self, col: &str, needle: &str, b: &mut Binder) -> String {
        let p = b.bind(Param::Text(needle.to_owned()));
        format!("instr({col}, {p}) > 0")
    }

    fn str_starts_with(&self, col: &str, prefix: &str, b: &mut Binder) -> String {
        let a = b.bind(Param::Text(prefix.to_owned()));
        let c = b.bind(Param::Text(prefix.to_owned()));
        format!("substr({col}, 1, length({a})) = {c}")
    }
}
