//! The `where` filter: parsing from the MongoDB-like JSON form, and in-memory matching.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::path::shorten;
use super::value::{cmp_numbers, values_equal};
use super::{Field, Fields, QueryError, limits};

/// A comparison operator for ordered comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
        }
    }
}

/// A parsed filter. `$ne` and `$nin` parse to `Not(Eq)` and `Not(In)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    True,
    False,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// Type-strict equality; `null` matches a missing field too.
    Eq(Field, Value),
    /// Ordered comparison with a number or a string.
    Cmp(Field, CmpOp, Value),
    /// Equal to one of the values (each compared as `Eq`).
    In(Field, Vec<Value>),
    /// The field is present (a JSON null counts as present).
    Exists(Field, bool),
    /// An array with an element equal to the value, or a string containing the string.
    Contains(Field, Value),
    /// A string starting with the prefix.
    StartsWith(Field, String),
    /// An array of exactly this many elements.
    Size(Field, u64),
    /// The field holds a value of this JSON type (a missing field has no type).
    Type(Field, JsonType),
}

/// JSON types, for `$type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    Null,
    Boolean,
    Number,
    String,
    Array,
    Object,
}

impl JsonType {
    pub fn parse(name: &str) -> Option<JsonType> {
        Some(match name {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "number" => JsonType::Number,
            "string" => JsonType::String,
            "array" => JsonType::Array,
            "object" => JsonType::Object,
            _ => return None,
        })
    }

    pub fn of(value: &Value) -> JsonType {
        match value {
            Value::Null => JsonType::Null,
            Value::Bool(_) => JsonType::Boolean,
            Value::Number(_) => JsonType::Number,
            Value::String(_) => JsonType::String,
            Value::Array(_) => JsonType::Array,
            Value::Object(_) => JsonType::Object,
        }
    }

    /// The sort rank of values of this type (null shares rank 0 with "missing").
    pub fn rank(self) -> u8 {
        match self {
            JsonType::Null => 0,
            JsonType::Boolean => 1,
            JsonType::Number => 2,
            JsonType::String => 3,
            JsonType::Array => 4,
            JsonType::Object => 5,
        }
    }
}

impl Filter {
    /// Parses a `where` object. `Value::Null` (no filter) is `Filter::True`.
    pub fn parse(value: &Value) -> Result<Filter, QueryError> {
        if value.is_null() {
            return Ok(Filter::True);
        }
        let mut parser = Parser { nodes: 0 };
        parser.filter(value, 0)
    }

    /// Conjunction, flattening trivial cases.
    pub fn and(parts: Vec<Filter>) -> Filter {
        let mut parts: Vec<Filter> = parts.into_iter().filter(|f| *f != Filter::True).collect();
        if parts.contains(&Filter::False) {
            return Filter::False;
        }
        match parts.len() {
            0 => Filter::True,
            1 => parts.pop().unwrap_or(Filter::True),
            _ => Filter::And(parts),
        }
    }

    /// Evaluates the filter against a document.
    pub fn matches<D: Fields + ?Sized>(&self, doc: &D) -> bool {
        match self {
            Filter::True => true,
            Filter::False => false,
            Filter::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Filter::Not(inner) => !inner.matches(doc),
            Filter::Eq(field, v) => eq_matches(field.lookup(doc).as_deref(), v),
            Filter::Cmp(field, op, v) => match field.lookup(doc).as_deref() {
                Some(actual) => cmp_matches(actual, *op, v),
                None => false,
            },
            Filter::In(field, values) => {
                let actual = field.lookup(doc);
                values.iter().any(|v| eq_matches(actual.as_deref(), v))
            }
            Filter::Exists(field, wanted) => field.lookup(doc).is_some() == *wanted,
            Filter::Contains(field, v) => match field.lookup(doc).as_deref() {
                Some(Value::Array(items)) => items.iter().any(|item| values_equal(item, v)),
                Some(Value::String(s)) => v.as_str().is_some_and(|needle| s.contains(needle)),
                _ => false,
            },
            Filter::StartsWith(field, prefix) => match field.lookup(doc).as_deref() {
                Some(Value::String(s)) => s.starts_with(prefix.as_str()),
                _ => false,
            },
            Filter::Size(field, n) => match field.lookup(doc).as_deref() {
                Some(Value::Array(items)) => items.len() as u64 == *n,
                _ => false,
            },
            Filter::Type(field, ty) => field.lookup(doc).is_some_and(|v| JsonType::of(&v) == *ty),
        }
    }

    /// Every field the filter mentions (rules use this to refuse protected fields).
    pub fn fields(&self) -> Vec<&Field> {
        let mut out = Vec::new();
        self.collect_fields(&mut out);
        out
    }

    fn collect_fields<'a>(&'a self, out: &mut Vec<&'a Field>) {
        match self {
            Filter::True | Filter::False => {}
            Filter::And(parts) | Filter::Or(parts) => {
                parts.iter().for_each(|p| p.collect_fields(out));
            }
            Filter::Not(inner) => inner.collect_fields(out),
            Filter::Eq(f, _)
            | Filter::Cmp(f, _, _)
            | Filter::In(f, _)
            | Filter::Exists(f, _)
            | Filter::Contains(f, _)
            | Filter::StartsWith(f, _)
            | Filter::Size(f, _)
            | Filter::Type(f, _) => out.push(f),
        }
    }
}

fn eq_matches(actual: Option<&Value>, expected: &Value) -> bool {
    match (actual, expected) {
        (None, Value::Null) => true,
        (None, _) => false,
        (Some(a), e) => values_equal(a, e),
    }
}

fn cmp_matches(actual: &Value, op: CmpOp, operand: &Value) -> bool {
    let ordering = match (actual, operand) {
        (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b),
        (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
        _ => return false,
    };
    match op {
        CmpOp::Gt => ordering.is_gt(),
        CmpOp::Gte => ordering.is_ge(),
        CmpOp::Lt => ordering.is_lt(),
        CmpOp::Lte => ordering.is_le(),
    }
}

struct Parser {
    nodes: usize,
}

impl Parser {
    fn count(&mut self) -> Result<(), QueryError> {
        self.nodes += 1;
        if self.nodes > limits::MAX_NODES {
            return Err(QueryError::new(format!(
                "filter has more than {} conditions",
                limits::MAX_NODES
            )));
        }
        Ok(())
    }

    fn filter(&mut self, value: &Value, depth: usize) -> Result<Filter, QueryError> {
        if depth > limits::MAX_DEPTH {
            return Err(QueryError::new(format!(
                "filter is nested deeper than {} levels",
                limits::MAX_DEPTH
            )));
        }
        let Value::Object(map) = value else {
            return Err(QueryError::new("a filter must be a JSON object"));
        };
        let mut parts = Vec::with_capacity(map.len());
        for (key, operand) in map {
            self.count()?;
            let part = match key.as_str() {
                "$and" | "$or" => {
                    let items = operand
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| {
                            QueryError::new(format!("`{key}` takes a non-empty array of filters"))
                        })?;
                    let parsed = items
                        .iter()
                        .map(|item| self.filter(item, depth + 1))
                        .collect::<Result<Vec<_>, _>>()?;
                    if key == "$and" {
                        Filter::And(parsed)
                    } else {
                        Filter::Or(parsed)
                    }
                }
                "$not" => Filter::Not(Box::new(self.filter(operand, depth + 1)?)),
                k if k.starts_with('$') => {
                    return Err(QueryError::new(format!(
                        "unknown operator `{}` (logical operators are $and, $or, $not)",
                        shorten(k)
                    )));
                }
                path => {
                    let field = Field::parse(path)?;
                    self.condition(&field, operand, depth)?
                }
            };
            parts.push(part);
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or(Filter::True),
            _ => Filter::And(parts),
        })
    }

    /// The value of `{"field": value}`: an operator object or a bare value (`$eq`).
    fn condition(
        &mut self,
        field: &Field,
        operand: &Value,
        depth: usize,
    ) -> Result<Filter, QueryError> {
        let Some(ops) = operator_object(operand, field)? else {
            return Ok(Filter::Eq(field.clone(), operand.clone()));
        };
        let mut parts = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            self.count()?;
            parts.push(self.operator(field, op, arg, depth)?);
        }
        Ok(match parts.len() {
            1 => parts.pop().unwrap_or(Filter::True),
            _ => Filter::And(parts),
        })
    }

    fn operator(
        &mut self,
        field: &Field,
        op: &str,
        arg: &Value,
        depth: usize,
    ) -> Result<Filter, QueryError> {
        let bad = |expected: &str| QueryError::new(format!("`{op}` on `{field}` takes {expected}"));
        Ok(match op {
            "$eq" => Filter::Eq(field.clone(), arg.clone()),
            "$ne" => Filter::Not(Box::new(Filter::Eq(field.clone(), arg.clone()))),
            "$gt" | "$gte" | "$lt" | "$lte" => {
                if !(arg.is_number() || arg.is_string()) {
                    return Err(bad("a number or a string"));
                }
                let cmp = match op {
                    "$gt" => CmpOp::Gt,
                    "$gte" => CmpOp::Gte,
                    "$lt" => CmpOp::Lt,
                    _ => CmpOp::Lte,
                };
                Filter::Cmp(field.clone(), cmp, arg.clone())
            }
            "$in" | "$nin" => {
                let values = arg.as_array().ok_or_else(|| bad("an array"))?;
                if values.len() > limits::MAX_IN {
                    return Err(QueryError::new(format!(
                        "`{op}` on `{field}` has more than {} values",
                        limits::MAX_IN
                    )));
                }
                let filter = Filter::In(field.clone(), values.clone());
                if op == "$in" {
                    filter
                } else {
                    Filter::Not(Box::new(filter))
                }
            }
            "$exists" => Filter::Exists(
                field.clone(),
                arg.as_bool().ok_or_else(|| bad("true or false"))?,
            ),
            // Any operand: an array element of any type, or a substring when it is a string.
            "$contains" => Filter::Contains(field.clone(), arg.clone()),
            "$startsWith" => Filter::StartsWith(
                field.clone(),
                arg.as_str().ok_or_else(|| bad("a string"))?.to_owned(),
            ),
            "$size" => Filter::Size(
                field.clone(),
                arg.as_u64().ok_or_else(|| bad("a non-negative integer"))?,
            ),
            "$type" => Filter::Type(
                field.clone(),
                arg.as_str()
                    .and_then(JsonType::parse)
                    .ok_or_else(|| bad("one of null, boolean, number, string, array, object"))?,
            ),
            "$not" => {
                if depth + 1 > limits::MAX_DEPTH {
                    return Err(QueryError::new(format!(
                        "filter is nested deeper than {} levels",
                        limits::MAX_DEPTH
                    )));
                }
                if operator_object(arg, field)?.is_none() {
                    return Err(bad("an object of operators"));
                }
                Filter::Not(Box::new(self.condition(field, arg, depth + 1)?))
            }
            other => {
                return Err(QueryError::new(format!(
                    "unknown operator `{}` on `{field}`",
                    shorten(other)
                )));
            }
        })
    }
}

/// `Some(map)` when the value is an object of operators, `None` for a bare value; an object
/// mixing operators and plain keys is an error.
fn operator_object<'a>(
    value: &'a Value,
    field: &Field,
) -> Result<Option<&'a Map<String, Value>>, QueryError> {
    let Value::Object(map) = value else {
        return Ok(None);
    };
    let operators = map.keys().filter(|k| k.starts_with('$')).count();
    if operators == 0 {
        return Ok(None);
    }
    if operators != map.len() {
        return Err(QueryError::new(format!(
            "the condition on `{field}` mixes operators and field names"
        )));
    }
    Ok(Some(map))
}

/// A document given as plain JSON parts, for tests and the rules playground.
pub struct JsonDoc<'a> {
    pub system: Cow<'a, Map<String, Value>>,
    pub data: Cow<'a, Map<String, Value>>,
}

impl Fields for JsonDoc<'_> {
    fn system(&self, field: super::SystemField) -> Value {
        self.system
            .get(field.name())
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn data(&self) -> &Map<String, Value> {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(data: Value) -> JsonDoc<'static> {
        let mut system = Map::new();
        system.insert("_id".into(), json!("d1"));
        system.insert("_version".into(), json!(3));
        system.insert("_owner".into(), Value::Null);
        JsonDoc {
            system: Cow::Owned(system),
            data: Cow::Owned(data.as_object().cloned().unwrap_or_default()),
        }
    }

    fn matches(filter: Value, data: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&doc(data))
    }

    #[test]
    fn equality_is_type_strict_and_null_matches_missing() {
        assert!(matches(json!({"n": 5}), json!({"n": 5})));
        assert!(matches(json!({"n": 5}), json!({"n": 5.0})));
        assert!(!matches(json!({"n": 5}), json!({"n": "5"})));
        assert!(matches(json!({"n": null}), json!({})));
        assert!(matches(json!({"n": null}), json!({"n": null})));
        assert!(!matches(json!({"n": {"$ne": null}}), json!({})));
        assert!(matches(json!({"n": {"$ne": 5}}), json!({})));
        assert!(matches(json!({"_version": 3}), json!({})));
        assert!(!matches(json!({"_version": "3"}), json!({})));
        assert!(matches(json!({"_owner": null}), json!({})));
    }

    #[test]
    fn comparisons_do_not_cross_types() {
        assert!(matches(json!({"n": {"$gt": 4}}), json!({"n": 5})));
        assert!(!matches(json!({"n": {"$gt": 4}}), json!({"n": "9"})));
        assert!(!matches(json!({"n": {"$lt": "z"}}), json!({"n": 1})));
        assert!(matches(
            json!({"s": {"$gte": "B", "$lt": "a"}}),
            json!({"s": "Z"})
        ));
    }

    #[test]
    fn contains_startswith_size_exists() {
        assert!(matches(
            json!({"t": {"$contains": "a"}}),
            json!({"t": ["a", "b"]})
        ));
        assert!(matches(
            json!({"t": {"$contains": "ell"}}),
            json!({"t": "hello"})
        ));
        assert!(!matches(
            json!({"t": {"$contains": 1}}),
            json!({"t": ["1"]})
        ));
        assert!(matches(
            json!({"t": {"$contains": {"x": 1}}}),
            json!({"t": [{"x": 1}]})
        ));
        assert!(matches(
            json!({"s": {"$startsWith": "he"}}),
            json!({"s": "hello"})
        ));
        assert!(matches(json!({"t": {"$size": 2}}), json!({"t": [1, 2]})));
        assert!(matches(
            json!({"a.b": {"$exists": true}}),
            json!({"a": {"b": null}})
        ));
        assert!(!matches(json!({"a.b": {"$exists": true}}), json!({"a": 1})));
    }

    #[test]
    fn logical_operators() {
        let f = json!({"$or": [{"a": 1}, {"b": {"$in": [2, 3]}}], "c": {"$not": {"$eq": 1}}});
        assert!(matches(f.clone(), json!({"a": 1})));
        assert!(matches(f.clone(), json!({"b": 3, "c": 2})));
        assert!(!matches(f, json!({"a": 1, "c": 1})));
        assert!(matches(json!({"$not": {"a": 1}}), json!({"a": 2})));
        assert!(matches(json!({"a": {"$nin": [1, 2]}}), json!({})));
    }

    #[test]
    fn refuses_malformed_filters() {
        for bad in [
            json!([1]),
            json!({"$where": "1"}),
            json!({"a": {"$regex": "x"}}),
            json!({"a": {"$gt": true}}),
            json!({"a": {"$in": 1}}),
            json!({"a": {"$size": -1}}),
            json!({"a": {"$exists": 1}}),
            json!({"a": {"$eq": 1, "b": 2}}),
            json!({"$or": []}),
            json!({"_secret": 1}),
            json!({"a": {"$in": vec![1; 1001]}}),
        ] {
            assert!(Filter::parse(&bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn refuses_deep_and_wide_filters() {
        let mut deep = json!({"a": 1});
        for _ in 0..100 {
            deep = json!({"$and": [deep]});
        }
        assert!(Filter::parse(&deep).is_err());
        let wide: Vec<Value> = (0..300).map(|i| json!({"a": i})).collect();
        assert!(Filter::parse(&json!({"$or": wide})).is_err());
    }
}
