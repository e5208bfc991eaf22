//! Sort keys (`"-score,title"`) and opaque keyset cursors.
//!
//! Every sort ends with `_id` ascending (added when absent), so the order is total and a
//! cursor — the sort values of the last row of a page — identifies a position that stays
//! correct when documents are inserted concurrently.

use std::cmp::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::path::shorten;
use super::value::cmp_values;
use super::{Field, Fields, QueryError, SystemField, limits};

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: Field,
    pub desc: bool,
}

/// Parses `"-score,title"`; the result always ends with `_id`.
pub fn parse_sort(spec: Option<&str>) -> Result<Vec<SortKey>, QueryError> {
    let mut keys: Vec<SortKey> = Vec::new();
    for part in spec.unwrap_or("").split(',').map(str::trim) {
        if part.is_empty() {
            continue;
        }
        let (desc, path) = match part.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, part.strip_prefix('+').unwrap_or(part)),
        };
        let field = Field::parse(path)?;
        if keys.iter().any(|k| k.field == field) {
            return Err(QueryError::new(format!(
                "sort names `{}` twice",
                shorten(path)
            )));
        }
        keys.push(SortKey { field, desc });
        if keys.len() > limits::MAX_SORT_KEYS {
            return Err(QueryError::new(format!(
                "sort has more than {} keys",
                limits::MAX_SORT_KEYS
            )));
        }
    }
    if !keys
        .iter()
        .any(|k| k.field == Field::System(SystemField::Id))
    {
        keys.push(SortKey {
            field: Field::System(SystemField::Id),
            desc: false,
        });
    }
    Ok(keys)
}

/// Compares two documents by the sort keys.
pub fn compare<D: Fields + ?Sized>(keys: &[SortKey], a: &D, b: &D) -> Ordering {
    for key in keys {
        let va = key.field.lookup(a);
        let vb = key.field.lookup(b);
        let mut ord = cmp_values(va.as_deref(), vb.as_deref());
        if key.desc {
            ord = ord.reverse();
        }
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// A position in a sorted result: the sort values of the last row seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub values: Vec<Value>,
}

#[derive(Serialize, Deserialize)]
struct CursorWire {
    /// Fingerprint of the sort the cursor belongs to.
    s: String,
    v: Vec<Value>,
}

const MAX_CURSOR_LEN: usize = 16 * 1024;

impl Cursor {
    /// The cursor positioned at `doc`.
    pub fn at<D: Fields + ?Sized>(keys: &[SortKey], doc: &D) -> Cursor {
        Cursor {
            values: keys
                .iter()
                .map(|k| {
                    k.field
                        .lookup(doc)
                        .map(|v| v.into_owned())
                        .unwrap_or(Value::Null)
                })
                .collect(),
        }
    }

    pub fn encode(&self, keys: &[SortKey]) -> String {
        let wire = CursorWire {
            s: fingerprint(keys),
            v: self.values.clone(),
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
    }

    /// Decodes a cursor made by [`Cursor::encode`] for the same sort.
    pub fn decode(text: &str, keys: &[SortKey]) -> Result<Cursor, QueryError> {
        let bad =
            || QueryError::new("invalid cursor (it belongs to another query, or was altered)");
        if text.len() > MAX_CURSOR_LEN {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let wire: CursorWire = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if wire.s != fingerprint(keys) || wire.v.len() != keys.len() {
            return Err(bad());
        }
        for (key, value) in keys.iter().zip(&wire.v) {
            if !system_value_fits(&key.field, value) {
                return Err(bad());
            }
        }
        Ok(Cursor { values: wire.v })
    }
}

/// A cursor value for a system field must have that field's type.
fn system_value_fits(field: &Field, value: &Value) -> bool {
    match field {
        Field::System(SystemField::Version) => value.is_i64(),
        Field::System(SystemField::Owner) => value.is_string() || value.is_null(),
        Field::System(_) => value.is_string(),
        Field::User(_) => true,
    }
}

fn fingerprint(keys: &[SortKey]) -> String {
    let spec: Vec<String> = keys
        .iter()
        .map(|k| format!("{}{}", if k.desc { "-" } else { "" }, k.field))
        .collect();
    hex::encode(&Sha256::digest(spec.join(",").as_bytes())[..6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sort_always_ends_with_id() {
        let keys = parse_sort(Some("-score, title")).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].desc);
        assert_eq!(keys[2].field, Field::System(SystemField::Id));
        assert_eq!(parse_sort(None).unwrap().len(), 1);
        assert_eq!(parse_sort(Some("-_id")).unwrap().len(), 1);
    }

    #[test]
    fn sort_refuses_bad_keys() {
        assert!(parse_sort(Some("a,a")).is_err());
        assert!(parse_sort(Some("a') OR 1=1")).is_err());
        assert!(parse_sort(Some("a,b,c,d,e,f,g,h,i")).is_err());
    }

    #[test]
    fn cursor_round_trips_and_rejects_tampering() {
        let keys = parse_sort(Some("-score")).unwrap();
        let cursor = Cursor {
            values: vec![json!(5), json!("abc")],
        };
        let text = cursor.encode(&keys);
        assert_eq!(Cursor::decode(&text, &keys).unwrap(), cursor);
        let other = parse_sort(Some("score")).unwrap();
        assert!(Cursor::decode(&text, &other).is_err());
        assert!(Cursor::decode("not-a-cursor", &keys).is_err());
        assert!(Cursor::decode("", &keys).is_err());
    }
}
