//! Ranks, equality and ordering of JSON values, as the query language defines them.

use std::cmp::Ordering;

use serde_json::{Number, Value};

/// The rank of a value in the sort order: missing or null 0, boolean 1, number 2, string 3,
/// array 4, object 5.
pub fn rank(value: Option<&Value>) -> u8 {
    match value {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(Value::Array(_)) => 4,
        Some(Value::Object(_)) => 5,
    }
}

/// Canonical JSON text: minified, object keys sorted (serde_json's map is ordered). The store
/// writes documents in this form, so text equality of arrays/objects is value equality.
pub fn canonical_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Type-strict equality: same JSON type and same value (numbers numerically).
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => cmp_numbers(x, y) == Ordering::Equal,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
            canonical_text(a) == canonical_text(b)
        }
        _ => false,
    }
}

/// The total order used for sorting (see the module docs of `query`).
pub fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let by_rank = rank(a).cmp(&rank(b));
    if by_rank != Ordering::Equal {
        return by_rank;
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => cmp_numbers(x, y),
        (Some(Value::String(x)), Some(Value::String(y))) => x.as_bytes().cmp(y.as_bytes()),
        (Some(x @ Value::Array(_)), Some(y @ Value::Array(_)))
        | (Some(x @ Value::Object(_)), Some(y @ Value::Object(_))) => {
            canonical_text(x).cmp(&canonical_text(y))
        }
        _ => Ordering::Equal,
    }
}

/// Numbers compare exactly when both are integers, otherwise as doubles (as SQLite does).
pub fn cmp_numbers(a: &Number, b: &Number) -> Ordering {
    match (as_i128(a), as_i128(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let x = a.as_f64().unwrap_or(f64::NAN);
            let y = b.as_f64().unwrap_or(f64::NAN);
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

fn as_i128(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranks_order_types() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-5),
            json!(2.5),
            json!(3),
            json!(""),
            json!("B"),
            json!("a"),
            json!([1]),
            json!({"a": 1}),
        ];
        for pair in ordered.windows(2) {
            assert_eq!(
                cmp_values(Some(&pair[0]), Some(&pair[1])),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(cmp_values(None, Some(&json!(null))), Ordering::Equal);
    }

    #[test]
    fn equality_is_type_strict() {
        assert!(values_equal(&json!(1), &json!(1.0)));
        assert!(!values_equal(&json!(1), &json!("1")));
        assert!(!values_equal(&json!(true), &json!(1)));
        assert!(values_equal(
            &json!({"b": 1, "a": [2]}),
            &json!({"a": [2], "b": 1})
        ));
    }
}
