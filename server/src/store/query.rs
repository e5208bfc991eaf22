//! Compiles the query AST (`crate::query`) to SQL, for either dialect.
//!
//! Values always travel as bound parameters. The only text written into SQL is field paths,
//! which `query::Field` restricts to letters, digits, `_` and `-` (so a path is a safe literal,
//! as expression indexes require), and table names made from numeric ids.
//!
//! Each field compiles to a tuple of *key columns* — `(rank, value)` on SQLite,
//! `(rank, number, text)` on Postgres — and declared indexes are built on exactly those
//! expressions, so filters and sorts on indexed fields use the index.
//!
//! Three-valued logic: atoms may yield NULL where a field is missing. Under AND/OR a NULL acts
//! as false, which is right; under NOT it is not, so negation is pushed down to the atoms and
//! a negated atom becomes `NOT COALESCE(atom, false)`.

use serde_json::Value;

use super::DocQuery;
use crate::query::{CmpOp, Field, Filter, JsonType, SortKey, SystemField, rank};

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Collects parameters and writes their placeholders.
pub(crate) struct Binder {
    numbered: bool,
    pub params: Vec<Param>,
}

impl Binder {
    pub(crate) fn new(numbered: bool) -> Self {
        Self {
            numbered,
            params: Vec::new(),
        }
    }

    /// Adds a parameter and returns its placeholder (`?` or `$n`).
    pub(crate) fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        if self.numbered {
            format!("${}", self.params.len())
        } else {
            "?".to_owned()
        }
    }
}

/// A key column of a field: its expression, and what wraps a parameter compared with it
/// (a cast, or on Postgres the same key function applied to a JSON parameter).
pub(crate) struct KeyColumn {
    pub expr: String,
    pub param_prefix: &'static str,
    pub param_suffix: &'static str,
}

impl KeyColumn {
    pub(crate) fn plain(expr: impl Into<String>, cast: &'static str) -> Self {
        Self {
            expr: expr.into(),
            param_prefix: "",
            param_suffix: cast,
        }
    }

    fn param(&self, placeholder: &str) -> String {
        format!("{}{placeholder}{}", self.param_prefix, self.param_suffix)
    }
}

/// What differs between SQLite and Postgres.
pub(crate) trait Dialect {
    fn numbered(&self) -> bool;
    fn true_sql(&self) -> &'static str;
    fn false_sql(&self) -> &'static str;
    /// `IS` (SQLite) or `IS NOT DISTINCT FROM` (Postgres).
    fn null_safe_eq(&self) -> &'static str;
    /// The columns a user field sorts by.
    fn user_key_columns(&self, path: &[String]) -> Vec<KeyColumn>;
    /// Parameters matching `user_key_columns` for a value (a cursor position).
    fn user_key_params(&self, value: &Value) -> Vec<Param>;
    /// An atom on a user field (`Eq`, `Cmp`, `In`, `Exists`, `Contains`, `StartsWith`, `Size`).
    fn user_atom(&self, path: &[String], atom: &Filter, b: &mut Binder) -> String;
    /// The text column `col` contains `needle`.
    fn str_contains(&self, col: &str, needle: &str, b: &mut Binder) -> String;
    /// The text column `col` starts with `prefix`.
    fn str_starts_with(&self, col: &str, prefix: &str, b: &mut Binder) -> String;
    /// Casts (suffixes) for system-field parameters.
    fn int_cast(&self) -> &'static str;
    fn text_cast(&self) -> &'static str;
}

/// `SELECT … WHERE … ORDER BY … LIMIT … OFFSET …` for one page.
pub(crate) fn select_page(
    d: &dyn Dialect,
    table: &str,
    data_col: &str,
    q: &DocQuery<'_>,
) -> (String, Vec<Param>) {
    let mut b = Binder::new(d.numbered());
    let mut sql = format!(
        "SELECT id, owner, created_at, updated_at, version, {data_col} FROM {table} WHERE "
    );
    sql.push_str(&where_sql(d, q.filter, &mut b));
    if let Some(after) = q.after {
        sql.push_str(" AND ");
        sql.push_str(&keyset_sql(d, q.sort, after, &mut b));
    }
    sql.push_str(" ORDER BY ");
    sql.push_str(&order_sql(d, q.sort));
    // LIMIT and OFFSET are written as literals: they are integers we produced, and SQLite
    // specialises a plan on a bound LIMIT, recompiling the statement every time the
    // parameter is bound again (which is every execution).
    sql.push_str(&format!(" LIMIT {} OFFSET {}", q.limit, q.offset));
    (sql, b.params)
}

/// `SELECT count(*) … WHERE …`.
pub(crate) fn select_count(d: &dyn Dialect, table: &str, filter: &Filter) -> (String, Vec<Param>) {
    let mut b = Binder::new(d.numbered());
    let sql = format!(
        "SELECT count(*) FROM {table} WHERE {}",
        where_sql(d, filter, &mut b)
    );
    (sql, b.params)
}

/// The filter as a boolean SQL expression.
pub(crate) fn where_sql(d: &dyn Dialect, filter: &Filter, b: &mut Binder) -> String {
    compile(d, filter, false, b)
}

fn compile(d: &dyn Dialect, filter: &Filter, negated: bool, b: &mut Binder) -> String {
    match filter {
        Filter::True => if negated { d.false_sql() } else { d.true_sql() }.to_owned(),
        Filter::False => if negated { d.true_sql() } else { d.false_sql() }.to_owned(),
        Filter::And(parts) | Filter::Or(parts) => {
            if parts.is_empty() {
                return compile(d, &Filter::True, negated, b);
            }
            // De Morgan: a negated AND is an OR of negations, and vice versa.
            let is_and = matches!(filter, Filter::And(_)) != negated;
            let joiner = if is_and { " AND " } else { " OR " };
            let compiled: Vec<String> = parts.iter().map(|p| compile(d, p, negated, b)).collect();
            format!("({})", compiled.join(joiner))
        }
        Filter::Not(inner) => compile(d, inner, !negated, b),
        Filter::Exists(field, wanted) => {
            // Exists is two-valued already; negate by flipping.
            let atom = atom(d, &Filter::Exists(field.clone(), *wanted != negated), b);
            format!("({atom})")
        }
        atom_filter => {
            let sql = atom(d, atom_filter, b);
            if negated {
                format!("NOT COALESCE(({sql}), {})", d.false_sql())
            } else {
                format!("({sql})")
            }
        }
    }
}

fn field_of(atom: &Filter) -> Option<&Field> {
    match atom {
        Filter::Eq(f, _)
        | Filter::Cmp(f, _, _)
        | Filter::In(f, _)
        | Filter::Exists(f, _)
        | Filter::Contains(f, _)
        | Filter::StartsWith(f, _)
        | Filter::Size(f, _)
        | Filter::Type(f, _) => Some(f),
        _ => None,
    }
}

fn atom(d: &dyn Dialect, atom: &Filter, b: &mut Binder) -> String {
    match field_of(atom) {
        Some(Field::User(path)) => d.user_atom(path, atom, b),
        Some(Field::System(sys)) => system_atom(d, *sys, atom, b),
        None => d.false_sql().to_owned(),
    }
}

/// The column of a system field.
pub(crate) fn system_column(field: SystemField) -> &'static str {
    match field {
        SystemField::Id => "id",
        SystemField::Owner => "owner",
        SystemField::CreatedAt => "created_at",
        SystemField::UpdatedAt => "updated_at",
        SystemField::Version => "version",
    }
}

const OWNER_RANK: &str = "(CASE WHEN owner IS NULL THEN 0 ELSE 3 END)";

fn system_atom(d: &dyn Dialect, field: SystemField, atom: &Filter, b: &mut Binder) -> String {
    let col = system_column(field);
    let is_text = field != SystemField::Version;
    let never = d.false_sql().to_owned();
    match atom {
        Filter::Eq(_, value) => system_eq(d, field, value, b),
        Filter::In(_, values) => {
            if values.is_empty() {
                return never;
            }
            let parts: Vec<String> = values.iter().map(|v| system_eq(d, field, v, b)).collect();
            format!("({})", parts.join(" OR "))
        }
        Filter::Cmp(_, op, value) => match (is_text, value) {
            (true, Value::String(s)) => {
                let p = b.bind(Param::Text(s.clone()));
                format!("{col} {} {p}", op.sql())
            }
            (false, Value::Number(n)) => {
                let p = b.bind(number_param(n));
                format!("{col} {} {p}", op.sql())
            }
            _ => never,
        },
        Filter::Exists(_, wanted) => if *wanted { d.true_sql() } else { d.false_sql() }.to_owned(),
        Filter::Type(_, ty) => match (field, ty) {
            (SystemField::Owner, JsonType::Null) => "owner IS NULL".to_owned(),
            (SystemField::Owner, JsonType::String) => "owner IS NOT NULL".to_owned(),
            (SystemField::Version, JsonType::Number) => d.true_sql().to_owned(),
            (
                SystemField::Id | SystemField::CreatedAt | SystemField::UpdatedAt,
                JsonType::String,
            ) => d.true_sql().to_owned(),
            _ => never,
        },
        Filter::Contains(_, Value::String(s)) if is_text => d.str_contains(col, s, b),
        Filter::StartsWith(_, prefix) if is_text => d.str_starts_with(col, prefix, b),
        _ => never,
    }
}

fn system_eq(d: &dyn Dialect, field: SystemField, value: &Value, b: &mut Binder) -> String {
    let col = system_column(field);
    match (field, value) {
        (SystemField::Owner, Value::Null) => "owner IS NULL".to_owned(),
        (SystemField::Version, Value::Number(n)) => {
            format!("version = {}", b.bind(number_param(n)))
        }
        (SystemField::Version, _) => d.false_sql().to_owned(),
        // The rank term is redundant (`owner = ?` implies it) but names the leading key
        // column of an index on `_owner` plus other fields, so the planner can use that
        // index for an owner-scoped query (the usual `doc._owner == auth.id` list rule).
        (SystemField::Owner, Value::String(s)) => format!(
            "({OWNER_RANK} = 3 AND owner = {})",
            b.bind(Param::Text(s.clone()))
        ),
        (_, Value::String(s)) => format!("{col} = {}", b.bind(Param::Text(s.clone()))),
        _ => d.false_sql().to_owned(),
    }
}

/// A JSON number as a parameter (integers exactly, others as doubles).
pub(crate) fn number_param(n: &serde_json::Number) -> Param {
    match n.as_i64() {
        Some(i) => Param::Int(i),
        None => Param::Float(n.as_f64().unwrap_or(0.0)),
    }
}

/// The key columns of any field.
pub(crate) fn key_columns(d: &dyn Dialect, field: &Field) -> Vec<KeyColumn> {
    match field {
        Field::User(path) => d.user_key_columns(path),
        Field::System(SystemField::Owner) => vec![
            KeyColumn::plain(OWNER_RANK, d.int_cast()),
            KeyColumn::plain("owner", d.text_cast()),
        ],
        Field::System(SystemField::Version) => vec![KeyColumn::plain("version", d.int_cast())],
        Field::System(sys) => vec![KeyColumn::plain(system_column(*sys), d.text_cast())],
    }
}

fn key_params(d: &dyn Dialect, field: &Field, value: &Value) -> Vec<Param> {
    match field {
        Field::User(_) => d.user_key_params(value),
        Field::System(SystemField::Owner) => match value {
            Value::String(s) => vec![Param::Int(3), Param::Text(s.clone())],
            _ => vec![Param::Int(0), Param::Null],
        },
        Field::System(SystemField::Version) => vec![match value {
            Value::Number(n) => number_param(n),
            _ => Param::Null,
        }],
        Field::System(_) => vec![match value {
            Value::String(s) => Param::Text(s.clone()),
            _ => Param::Null,
        }],
    }
}

/// `ORDER BY` list for a sort.
pub(crate) fn order_sql(d: &dyn Dialect, sort: &[SortKey]) -> String {
    let mut parts = Vec::new();
    for key in sort {
        let dir = if key.desc { "DESC" } else { "ASC" };
        for col in key_columns(d, &key.field) {
            parts.push(format!("{} {dir}", col.expr));
        }
    }
    parts.join(", ")
}

/// Rows strictly after the cursor position in the sort order.
pub(crate) fn keyset_sql(
    d: &dyn Dialect,
    sort: &[SortKey],
    after: &[Value],
    b: &mut Binder,
) -> String {
    let mut columns: Vec<(KeyColumn, bool, Param)> = Vec::new();
    for (key, value) in sort.iter().zip(after) {
        let cols = key_columns(d, &key.field);
        let params = key_params(d, &key.field, value);
        for (col, param) in cols.into_iter().zip(params) {
            columns.push((col, key.desc, param));
        }
    }
    // (c1 > p1) OR (c1 = p1 AND ((c2 > p2) OR (c2 = p2 AND …)))
    let mut sql = String::new();
    let count = columns.len();
    for (i, (col, desc, param)) in columns.into_iter().enumerate() {
        let op = if desc { "<" } else { ">" };
        let cmp_param = col.param(&b.bind(param.clone()));
        let strict = format!("{} {op} {cmp_param}", col.expr);
        if i + 1 == count {
            sql.push_str(&format!("({strict})"));
        } else {
            let eq_param = col.param(&b.bind(param));
            sql.push_str(&format!(
                "({strict} OR ({} {} {eq_param} AND ",
                col.expr,
                d.null_safe_eq(),
            ));
        }
    }
    for _ in 1..count {
        sql.push_str("))");
    }
    sql
}

/// Expressions of a declared index on `fields`.
pub(crate) fn index_expressions(d: &dyn Dialect, fields: &[SortKey]) -> Vec<String> {
    let mut exprs = Vec::new();
    for key in fields {
        let dir = if key.desc { " DESC" } else { "" };
        for col in key_columns(d, &key.field) {
            exprs.push(format!("{}{dir}", col.expr));
        }
    }
    exprs
}

/// Splits values by rank, for `$in` on a user field.
pub(crate) fn group_by_rank(values: &[Value]) -> Vec<(u8, Vec<&Value>)> {
    let mut groups: Vec<(u8, Vec<&Value>)> = Vec::new();
    for v in values {
        let r = rank(Some(v));
        match groups.iter_mut().find(|(gr, _)| *gr == r) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((r, vec![v])),
        }
    }
    groups
}

/// The comparison operator text.
pub(crate) fn op_sql(op: CmpOp) -> &'static str {
    op.sql()
}
