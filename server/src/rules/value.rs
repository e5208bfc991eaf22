//! JSON ↔ CEL values.
//!
//! Written by hand rather than through serde: serde hands CEL positive integers as `uint`,
//! and then `doc.count + 1` (uint + int) fails. Here integers that fit are `int`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value as Cel;
use cel::objects::{Key, Map};
use serde_json::{Number, Value as Json};

/// A JSON value as CEL sees it.
pub fn to_cel(value: &Json) -> Cel {
    match value {
        Json::Null => Cel::Null,
        Json::Bool(b) => Cel::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cel::Int(i),
            (None, Some(u)) => Cel::UInt(u),
            _ => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Cel::String(Arc::new(s.clone())),
        Json::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let entries: HashMap<Key, Cel> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Cel::Map(Map {
                map: Arc::new(entries),
            })
        }
    }
}

/// A CEL value as JSON, when it has a JSON form (timestamps, durations and bytes do not).
pub fn to_json(value: &Cel) -> Option<Json> {
    Some(match value {
        Cel::Null => Json::Null,
        Cel::Bool(b) => Json::Bool(*b),
        Cel::Int(i) => Json::from(*i),
        Cel::UInt(u) => Json::from(*u),
        Cel::Float(f) => Json::Number(Number::from_f64(*f)?),
        Cel::String(s) => Json::String(s.as_ref().clone()),
        Cel::List(items) => Json::Array(items.iter().map(to_json).collect::<Option<_>>()?),
        Cel::Map(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let Key::String(k) = k else { return None };
                out.insert(k.as_ref().clone(), to_json(v)?);
            }
            Json::Object(out)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_are_ints_and_round_trip() {
        assert_eq!(to_cel(&json!(5)), Cel::Int(5));
        assert_eq!(to_cel(&json!(u64::MAX)), Cel::UInt(u64::MAX));
        assert_eq!(to_cel(&json!(2.5)), Cel::Float(2.5));
        let v = json!({"a": [1, "x", null, {"b": true}]});
        assert_eq!(to_json(&to_cel(&v)), Some(v));
    }
}
