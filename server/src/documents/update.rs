//! Updates: a plain object merges top-level fields; an object of operators applies them.
//!
//! Operators: `$set $unset $inc $mul $min $max $push $addToSet $pull`, with dotted paths
//! reaching nested objects (paths never index into arrays). An update is applied to the
//! stored document inside the write transaction, so operators are atomic.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::Error;
use super::validate::{field_name_problem, update_path};
use crate::query::{Field, Filter, cmp_values, values_equal};

/// A parsed update.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Top-level fields to set.
    Merge(Map<String, Value>),
    /// Operators, in the order given.
    Ops(Vec<Op>),
}

/// One operator on one path.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub path: Vec<String>,
    pub kind: OpKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OpKind {
    Set(Value),
    Unset,
    Inc(Number),
    Mul(Number),
    Min(Value),
    Max(Value),
    Push(Vec<Value>),
    AddToSet(Vec<Value>),
    /// Removes equal elements, or elements matching a condition.
    Pull(Pull),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Pull {
    Equal(Value),
    Matching(Filter),
}

const OPERATORS: [&str; 9] = [
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$push",
    "$addToSet",
    "$pull",
];
const MAX_OPS: usize = 256;

fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

impl Update {
    /// Parses a PATCH body.
    pub fn parse(body: Value) -> Result<Update, Error> {
        let Value::Object(map) = body else {
            return Err(bad("the update must be a JSON object"));
        };
        let operators = map.keys().filter(|k| k.starts_with('$')).count();
        if operators == 0 {
            for key in map.keys() {
                if let Some(problem) = field_name_problem(key) {
                    return Err(Error::Validation {
                        message: format!(
                            "invalid field name `{}`: {problem}",
                            crate::query::shorten_for_message(key)
                        ),
                        details: None,
                    });
                }
            }
            return Ok(Update::Merge(map));
        }
        if operators != map.len() {
            return Err(bad(
                "an update mixes operators and plain fields; use $set for the fields",
            ));
        }
        let mut ops = Vec::new();
        for (name, arg) in map {
            if !OPERATORS.contains(&name.as_str()) {
                return Err(bad(format!(
                    "unknown update operator `{}` (known: {})",
                    crate::query::shorten_for_message(&name),
                    OPERATORS.join(" ")
                )));
            }
            let Value::Object(fields) = arg else {
                return Err(bad(format!("`{name}` takes an object of field paths")));
            };
            for (path, value) in fields {
                let path_segments = update_path(&path)?;
                ops.push(Op {
                    kind: parse_kind(&name, &path, value)?,
                    path: path_segments,
                });
                if ops.len() > MAX_OPS {
                    return Err(bad(format!(
                        "an update may hold at most {MAX_OPS} operations"
                    )));
                }
            }
        }
        check_conflicts(&ops)?;
        Ok(Update::Ops(ops))
    }

    /// Applies the update to a copy of the data.
    pub fn apply(&self, data: &Map<String, Value>) -> Result<Map<String, Value>, Error> {
        let mut out = data.clone();
        match self {
            Update::Merge(fields) => {
                for (k, v) in fields {
                    out.insert(k.clone(), v.clone());
                }
            }
            Update::Ops(ops) => {
                for op in ops {
                    apply_op(&mut out, op)?;
                }
            }
        }
        Ok(out)
    }
}

fn parse_kind(op: &str, path: &str, value: Value) -> Result<OpKind, Error> {
    let number = |v: Value| match v {
        Value::Number(n) => Ok(n),
        _ => Err(bad(format!("`{op}` on `{path}` takes a number"))),
    };
    let each = |v: Value| -> Result<Vec<Value>, Error> {
        match v {
            Value::Object(mut m) if m.len() == 1 && m.contains_key("$each") => {
                match m.remove("$each") {
                    Some(Value::Array(items)) => Ok(items),
                    _ => Err(bad(format!("`$each` in `{op}` on `{path}` takes an array"))),
                }
            }
            Value::Object(m) if m.keys().any(|k| k.starts_with('$')) => Err(bad(format!(
                "`{op}` on `{path}` takes a value or {{\"$each\": [...]}}"
            ))),
            other => Ok(vec![other]),
        }
    };
    Ok(match op {
        "$set" => OpKind::Set(value),
        "$unset" => OpKind::Unset,
        "$inc" => OpKind::Inc(number(value)?),
        "$mul" => OpKind::Mul(number(value)?),
        "$min" => OpKind::Min(value),
        "$max" => OpKind::Max(value),
        "$push" => OpKind::Push(each(value)?),
        "$addToSet" => OpKind::AddToSet(each(value)?),
        _ => {
            // $pull: an object of query operators is a condition on each element.
            let is_condition = value
                .as_object()
                .is_some_and(|m| !m.is_empty() && m.keys().all(|k| k.starts_with('$')));
            if is_condition {
                let condition = serde_json::json!({ "v": value });
                let filter = Filter::parse(&condition).map_err(|e| bad(e.0))?;
                OpKind::Pull(Pull::Matching(filter))
            } else {
                OpKind::Pull(Pull::Equal(value))
            }
        }
    })
}

/// Two operators on the same path, or on a path and its parent, are ambiguous.
fn check_conflicts(ops: &[Op]) -> Result<(), Error> {
    for (i, a) in ops.iter().enumerate() {
        for b in &ops[i + 1..] {
            let n = a.path.len().min(b.path.len());
            if a.path[..n] == b.path[..n] {
                return Err(bad(format!(
                    "update paths `{}` and `{}` conflict",
                    a.path.join("."),
                    b.path.join(".")
                )));
            }
        }
    }
    Ok(())
}

/// The parent object of the path's last segment, creating empty objects on the way when
/// `create` is set. `Ok(None)`: a parent is missing and not created.
fn parent<'a>(
    data: &'a mut Map<String, Value>,
    path: &[String],
    create: bool,
) -> Result<Option<&'a mut Map<String, Value>>, Error> {
    let mut current = data;
    let parents = &path[..path.len().saturating_sub(1)];
    for (i, segment) in parents.iter().enumerate() {
        if !current.contains_key(segment) {
            if !create {
                return Ok(None);
            }
            current.insert(segment.clone(), Value::Object(Map::new()));
        }
        match current.get_mut(segment) {
            Some(Value::Object(next)) => current = next,
            _ => {
                return Err(bad(format!(
                    "cannot update `{}`: `{}` is not an object",
                    path.join("."),
                    path[..=i].join(".")
                )));
            }
        }
    }
    Ok(Some(current))
}

fn apply_op(data: &mut Map<String, Value>, op: &Op) -> Result<(), Error> {
    let full = op.path.join(".");
    let Some(last) = op.path.last() else {
        return Err(bad("empty update path"));
    };
    if let OpKind::Unset = op.kind {
        if let Some(parent) = parent(data, &op.path, false)? {
            parent.remove(last);
        }
        return Ok(());
    }
    // $pull on a missing path changes nothing, so it creates no parents either.
    let create = !matches!(op.kind, OpKind::Pull(_));
    let Some(parent) = parent(data, &op.path, create)? else {
        return Ok(());
    };
    let current = parent.get(last);
    let new_value = match &op.kind {
        OpKind::Set(v) => v.clone(),
        OpKind::Unset => return Ok(()),
        OpKind::Inc(n) => match current {
            None => Value::Number(n.clone()),
            Some(Value::Number(c)) => {
                arithmetic(c, n, &full, |a, b| a.checked_add(b), |a, b| a + b)?
            }
            Some(_) => return Err(bad(format!("cannot $inc `{full}`: it is not a number"))),
        },
        OpKind::Mul(n) => match current {
            None => Value::from(0),
            Some(Value::Number(c)) => {
                arithmetic(c, n, &full, |a, b| a.checked_mul(b), |a, b| a * b)?
            }
            Some(_) => return Err(bad(format!("cannot $mul `{full}`: it is not a number"))),
        },
        OpKind::Min(v) | OpKind::Max(v) => {
            let wanted = if matches!(op.kind, OpKind::Min(_)) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            match current {
                Some(c) if cmp_values(Some(v), Some(c)) != wanted => return Ok(()),
                _ => v.clone(),
            }
        }
        OpKind::Push(items) => match current {
            None => Value::Array(items.clone()),
            Some(Value::Array(existing)) => {
                let mut all = existing.clone();
                all.extend(items.iter().cloned());
                Value::Array(all)
            }
            Some(_) => return Err(bad(format!("cannot $push to `{full}`: it is not an array"))),
        },
        OpKind::AddToSet(items) => {
            let mut all = match current {
                None => Vec::new(),
                Some(Value::Array(existing)) => existing.clone(),
                Some(_) => {
                    return Err(bad(format!(
                        "cannot $addToSet to `{full}`: it is not an array"
                    )));
                }
            };
            for item in items {
                if !all.iter().any(|e| values_equal(e, item)) {
                    all.push(item.clone());
                }
            }
            Value::Array(all)
        }
        OpKind::Pull(pull) => match current {
            None => return Ok(()),
            Some(Value::Array(existing)) => Value::Array(
                existing
                    .iter()
                    .filter(|e| !pull_matches(pull, e))
                    .cloned()
                    .collect(),
            ),
            Some(_) => {
                return Err(bad(format!(
                    "cannot $pull from `{full}`: it is not an array"
                )));
            }
        },
    };
    parent.insert(last.clone(), new_value);
    Ok(())
}

fn pull_matches(pull: &Pull, element: &Value) -> bool {
    match pull {
        Pull::Equal(v) => values_equal(v, element),
        Pull::Matching(filter) => {
            let mut data = Map::new();
            data.insert("v".into(), element.clone());
            filter.matches(&ElementDoc(data))
        }
    }
}

/// An array element seen as a document `{v: element}`, for `$pull` conditions.
struct ElementDoc(Map<String, Value>);

impl crate::query::Fields for ElementDoc {
    fn system(&self, _: crate::query::SystemField) -> Value {
        Value::Null
    }
    fn data(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Integer arithmetic when both are integers and it does not overflow, otherwise doubles.
fn arithmetic(
    a: &Number,
    b: &Number,
    path: &str,
    int: impl Fn(i64, i64) -> Option<i64>,
    float: impl Fn(f64, f64) -> f64,
) -> Result<Value, Error> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(r) = int(x, y)
    {
        return Ok(Value::from(r));
    }
    let r = float(a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
    Number::from_f64(r)
        .map(Value::Number)
        .ok_or_else(|| bad(format!("the result for `{path}` is not a finite number")))
}

/// Field paths named by an update, for rules that restrict what may change.
pub fn touched_fields(update: &Update) -> Vec<Field> {
    match update {
        Update::Merge(map) => map.keys().map(|k| Field::User(vec![k.clone()])).collect(),
        Update::Ops(ops) => ops.iter().map(|op| Field::User(op.path.clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(data: Value, update: Value) -> Result<Value, Error> {
        let update = Update::parse(update)?;
        update
            .apply(data.as_object().expect("object"))
            .map(Value::Object)
    }

    #[test]
    fn merges_plain_objects() {
        assert_eq!(
            apply(json!({"a": 1, "b": 2}), json!({"b": 3, "c": null})).unwrap(),
            json!({"a": 1, "b": 3, "c": null})
        );
    }

    #[test]
    fn applies_every_operator() {
        let data =
            json!({"n": 1, "f": 1.5, "tags": ["a", "b", "a"], "s": [1, 5, 7], "o": {"x": 1}});
        let out = apply(
            data,
            json!({
                "$inc": {"n": 2, "new.count": 1},
                "$mul": {"f": 2},
                "$set": {"o.y": true},
                "$unset": {"o.x": "", "missing.path": ""},
                "$push": {"list": {"$each": [1, 2]}},
                "$addToSet": {"tags": {"$each": ["b", "c"]}},
                "$pull": {"s": {"$gte": 5}},
                "$min": {"lo": 3},
                "$max": {"hi": 9}
            }),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "n": 3, "f": 3.0, "new": {"count": 1}, "o": {"y": true}, "list": [1, 2],
                "tags": ["a", "b", "a", "c"], "s": [1], "lo": 3, "hi": 9
            })
        );
        assert_eq!(
            apply(json!({"t": ["a", "b"]}), json!({"$pull": {"t": "a"}})).unwrap(),
            json!({"t": ["b"]})
        );
        assert_eq!(
            apply(json!({"m": 5}), json!({"$min": {"m": 7}})).unwrap(),
            json!({"m": 5})
        );
        assert_eq!(
            apply(json!({"m": 5}), json!({"$max": {"m": 7}})).unwrap(),
            json!({"m": 7})
        );
    }

    #[test]
    fn integer_overflow_falls_back_to_doubles() {
        let out = apply(json!({"n": i64::MAX}), json!({"$inc": {"n": 1}})).unwrap();
        assert!(out["n"].is_f64());
    }

    #[test]
    fn refuses_bad_updates() {
        for (data, update) in [
            (json!({"s": "x"}), json!({"$inc": {"s": 1}})),
            (json!({}), json!({"$inc": {"n": "1"}})),
            (json!({}), json!({"$rename": {"a": "b"}})),
            (json!({}), json!({"$set": {"a": 1}, "b": 2})),
            (json!({}), json!({"$set": {"a": 1, "a.b": 2}})),
            (json!({}), json!({"$set": {"_owner": "x"}})),
            (json!({}), json!({"$set": {"a.__proto__.b": 1}})),
            (json!({"a": 1}), json!({"$set": {"a.b": 1}})),
            (json!({"a": 1}), json!({"$push": {"a": 1}})),
            (json!({}), json!({"$set": 1})),
            (json!({}), json!({"_id": "x"})),
            (json!({}), json!([1])),
        ] {
            assert!(
                apply(data.clone(), update.clone()).is_err(),
                "{update} on {data} should fail"
            );
        }
    }
}
