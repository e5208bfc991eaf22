//! What user data may look like: field names, nesting depth, size.
//!
//! Applied to every document written, whoever writes it (REST, batch, admin, cloud code),
//! and to every path an update operator names.

use serde_json::{Map, Value};

use super::Error;
use crate::query::Field;

/// Largest stored document (canonical JSON of the user data).
pub const MAX_DOC_BYTES: usize = 1024 * 1024;
/// Deepest nesting; the document object itself is level 1.
pub const MAX_DEPTH: usize = 32;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME: usize = 256;

/// Names that are refused everywhere because they attack JavaScript consumers
/// (prototype pollution) even though they are valid JSON keys.
const RESERVED: [&str; 2] = ["constructor", "prototype"];

/// Why a field name is not allowed, or `None` when it is.
pub fn field_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("field names must not be empty");
    }
    if name.len() > MAX_FIELD_NAME {
        return Some("field names must be at most 256 bytes");
    }
    if name.starts_with('_') {
        return Some("field names starting with `_` are reserved for system fields");
    }
    if name.starts_with('$') {
        return Some("field names must not start with `$`");
    }
    if name.contains('.') {
        return Some("field names must not contain `.`");
    }
    if name.chars().any(char::is_control) {
        return Some("field names must not contain control characters");
    }
    if RESERVED.contains(&name) {
        return Some("`constructor` and `prototype` are reserved field names");
    }
    None
}

/// Checks every key at every depth, and the depth.
pub fn validate_data(data: &Map<String, Value>) -> Result<(), Error> {
    validate_object(data, 1, &mut Vec::new())
}

fn validate_object(
    map: &Map<String, Value>,
    depth: usize,
    path: &mut Vec<String>,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for (key, value) in map {
        if let Some(problem) = field_name_problem(key) {
            path.push(clip(key));
            let at = path.join(".");
            path.pop();
            return Err(Error::Validation {
                message: format!("invalid field name at `{at}`: {problem}"),
                details: None,
            });
        }
        path.push(clip(key));
        validate_value(value, depth, path)?;
        path.pop();
    }
    Ok(())
}

fn validate_value(value: &Value, depth: usize, path: &mut Vec<String>) -> Result<(), Error> {
    match value {
        Value::Object(map) => validate_object(map, depth + 1, path),
        Value::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep());
            }
            for item in items {
                validate_value(item, depth + 1, path)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn too_deep() -> Error {
    Error::Validation {
        message: format!("documents may be nested at most {MAX_DEPTH} levels deep"),
        details: None,
    }
}

fn clip(key: &str) -> String {
    crate::query::shorten_for_message(key)
}

/// Parses a dotted path an update operator names: each segment a valid field name.
pub fn update_path(path: &str) -> Result<Vec<String>, Error> {
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segments.len() > MAX_DEPTH {
        return Err(too_deep());
    }
    for segment in &segments {
        if let Some(problem) = field_name_problem(segment) {
            return Err(Error::Validation {
                message: format!("invalid field path `{}`: {problem}", clip(path)),
                details: None,
            });
        }
    }
    Ok(segments)
}

/// Checks the size of the serialized data.
pub fn check_size(serialized: &str) -> Result<(), Error> {
    if serialized.len() > MAX_DOC_BYTES {
        return Err(Error::TooLarge(format!(
            "documents are limited to {MAX_DOC_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Parses a `fields` projection list (`title,author.name`).
pub fn projection(spec: &str) -> Result<Vec<Field>, Error> {
    let mut fields = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        fields.push(Field::parse(part).map_err(|e| Error::BadRequest(e.0))?);
        if fields.len() > 64 {
            return Err(Error::BadRequest(
                "`fields` lists more than 64 fields".into(),
            ));
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<(), Error> {
        validate_data(v.as_object().expect("object"))
    }

    #[test]
    fn accepts_ordinary_documents() {
        assert!(
            check(json!({"title": "x", "tags": ["a"], "author": {"name": "n"}, "größe": 1}))
                .is_ok()
        );
    }

    #[test]
    fn refuses_reserved_names_at_any_depth() {
        for bad in [
            json!({"_id": 1}),
            json!({"__proto__": {}}),
            json!({"constructor": 1}),
            json!({"$where": "1"}),
            json!({"a.b": 1}),
            json!({"": 1}),
            json!({"a\u{0}b": 1}),
            json!({"a": {"b": {"c": {"d": {"_bsontype": 1}}}}}),
            json!({"a": [{"prototype": 1}]}),
            json!({"a": [[{"$x": 1}]]}),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn limits_depth() {
        let mut deep = json!(1);
        for _ in 0..32 {
            deep = json!({"a": deep});
        }
        assert!(check(deep.clone()).is_ok());
        assert!(check(json!({"a": deep})).is_err());
        let mut arrays = json!(1);
        for _ in 0..40 {
            arrays = json!([arrays]);
        }
        assert!(check(json!({"a": arrays})).is_err());
    }
}
