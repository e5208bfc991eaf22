//! A document: the server-owned system fields and the user's data.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::Error;
use crate::query::{Fields, SystemField};
use crate::store::DocRow;

/// A document as the API shows it, for a read: its version (the ETag) and its JSON text.
#[derive(Debug)]
pub struct DocumentJson {
    pub version: i64,
    pub json: String,
}

/// A document as a write left it, with its JSON text: what the change log records and the
/// write answers (sent as is, not serialized a second time).
#[derive(Debug, Clone)]
pub struct Saved {
    pub doc: Document,
    pub json: String,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub owner: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
    pub data: Map<String, Value>,
}

impl Document {
    pub fn from_row(row: DocRow) -> Result<Document, Error> {
        let data = match serde_json::from_str::<Value>(&row.data) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(Error::Internal(format!(
                    "BUG: stored document {} is not a JSON object",
                    row.id
                )));
            }
        };
        Ok(Document {
            id: row.id,
            owner: row.owner,
            created_at: row.created_at,
            updated_at: row.updated_at,
            version: row.version,
            data,
        })
    }

    /// The inverse of [`Document::to_json_string`] (the change log stores documents so, and
    /// pages are read so).
    pub fn from_json_str(text: &str) -> Result<Document, Error> {
        let bad = || Error::Internal("BUG: a document's JSON text is malformed".into());
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
            return Err(bad());
        };
        let mut text_field = |name: &str| match map.remove(name) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let id = text_field("_id").ok_or_else(bad)?;
        let owner = text_field("_owner");
        let created_at = text_field("_created_at").unwrap_or_default();
        let updated_at = text_field("_updated_at").unwrap_or_default();
        let version = map
            .remove("_version")
            .and_then(|v| v.as_i64())
            .unwrap_or_default();
        Ok(Document {
            id,
            owner,
            created_at,
            updated_at,
            version,
            data: map,
        })
    }

    /// The row to store, with `data` as canonical JSON text.
    pub fn to_row(&self) -> DocRow {
        DocRow {
            id: self.id.clone(),
            owner: self.owner.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            version: self.version,
            data: serde_json::to_string(&self.data).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    /// The document as the API shows it, as JSON text, straight from its row: the system
    /// fields, then the stored data's text spliced in unparsed (a page of documents is
    /// mostly this copy; parsing each document into a map and serializing it again cost
    /// more than the query). The data is checked to be braced like an object, not parsed:
    /// only the server writes it, from its own serializer (or Postgres from `jsonb`), and
    /// parsing it again to validate it was 16 % of a 50-document list.
    pub fn json_text(row: &DocRow) -> Result<String, Error> {
        row.to_json()
            .ok_or_else(|| crate::store::not_an_object(&row.id).into())
    }

    /// The row to store and the document's JSON text (the same as
    /// [`Document::to_json_string`]), the data serialized once for both.
    pub fn to_row_and_json(&self) -> (DocRow, String) {
        let row = self.to_row();
        let json = row.to_json().unwrap_or_else(|| self.to_json_string());
        (row, json)
    }

    /// The document as the API shows it: system fields first, then the data.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Keeps only the given top-level/dotted fields (and `_id`).
    pub fn project(&self, fields: &[crate::query::Field]) -> Value {
        let mut out = Map::new();
        out.insert("_id".into(), Value::String(self.id.clone()));
        for field in fields {
            match field {
                crate::query::Field::System(sys) => {
                    out.insert(sys.name().into(), self.system(*sys));
                }
                crate::query::Field::User(path) => {
                    if let Some(value) = field.lookup(self) {
                        insert_path(&mut out, path, value.into_owned());
                    }
                }
            }
        }
        Value::Object(out)
    }
}

fn insert_path(out: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = out;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        current = next;
    }
    current.insert(last.clone(), value);
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.data.len() + 5))?;
        map.serialize_entry("_id", &self.id)?;
        map.serialize_entry("_owner", &self.owner)?;
        map.serialize_entry("_created_at", &self.created_at)?;
        map.serialize_entry("_updated_at", &self.updated_at)?;
        map.serialize_entry("_version", &self.version)?;
        for (k, v) in &self.data {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn system_value(
    field: SystemField,
    id: &str,
    owner: &Option<String>,
    created_at: &str,
    updated_at: &str,
    version: i64,
) -> Value {
    match field {
        SystemField::Id => Value::from(id),
        SystemField::Owner => owner.as_deref().map(Value::from).unwrap_or(Value::Null),
        SystemField::CreatedAt => Value::from(created_at),
        SystemField::UpdatedAt => Value::from(updated_at),
        SystemField::Version => Value::from(version),
    }
}

/// A stored row seen through [`Fields`], its data parsed only when a field of it is read
/// (an owner-only rule reads `_owner` alone, and the row's text then goes out unparsed).
pub struct RowFields<'a> {
    row: &'a DocRow,
    data: std::cell::OnceCell<Map<String, Value>>,
}

impl<'a> RowFields<'a> {
    pub fn new(row: &'a DocRow) -> RowFields<'a> {
        RowFields {
            row,
            data: std::cell::OnceCell::new(),
        }
    }
}

impl Fields for RowFields<'_> {
    fn system(&self, field: SystemField) -> Value {
        let r = self.row;
        system_value(
            field,
            &r.id,
            &r.owner,
            &r.created_at,
            &r.updated_at,
            r.version,
        )
    }

    fn data(&self) -> &Map<String, Value> {
        // A row that is not an object reads as empty here; `json_text` reports it.
        self.data
            .get_or_init(|| serde_json::from_str(&self.row.data).unwrap_or_default())
    }
}

impl Fields for Document {
    fn system(&self, field: SystemField) -> Value {
        let d = self;
        system_value(
            field,
            &d.id,
            &d.owner,
            &d.created_at,
            &d.updated_at,
            d.version,
        )
    }

    fn data(&self) -> &Map<String, Value> {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Field;
    use serde_json::json;

    fn doc() -> Document {
        Document {
            id: "d1".into(),
            owner: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            updated_at: "2026-01-01T00:00:00.000Z".into(),
            version: 1,
            data: json!({"b": 1, "a": {"x": 1, "y": 2}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn json_text_is_the_serialized_document() {
        let mut owned = doc();
        owned.owner = Some("u\"1".into());
        let mut empty = doc();
        empty.data = Map::new();
        for d in [doc(), owned, empty] {
            let text = Document::json_text(&d.to_row()).unwrap();
            assert_eq!(text, d.to_json_string());
            let (row, json) = d.to_row_and_json();
            assert_eq!((row, json), (d.to_row(), d.to_json_string()));
        }
        // Postgres hands back JSONB text with spaces: spliced as is, still the same value.
        let mut row = doc().to_row();
        row.data = r#" { "b": 1,  "a": {"x": 1, "y": 2} }"#.into();
        let text = Document::json_text(&row).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            doc().to_json()
        );
        row.data = " {} ".into();
        let text = Document::json_text(&row).unwrap();
        assert!(text.ends_with(r#""_version":1}"#), "{text}");
        // Not braced like an object: refused (the inside is not parsed).
        for bad in ["[1]", "", "{", "}", r#"{"a":1}x"#, "1"] {
            row.data = bad.into();
            assert!(Document::json_text(&row).is_err(), "{bad}");
        }
    }

    #[test]
    fn serializes_system_fields_first() {
        let text = doc().to_json_string();
        assert!(
            text.starts_with(r#"{"_id":"d1","_owner":null,"_created_at""#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""_version":1,"a":{"x":1,"y":2},"b":1}"#),
            "{text}"
        );
    }

    #[test]
    fn projects_fields() {
        let fields = vec![
            Field::parse("a.y").unwrap(),
            Field::parse("_version").unwrap(),
        ];
        assert_eq!(
            doc().project(&fields),
            json!({"_id": "d1", "a": {"y": 2}, "_version": 1})
        );
    }

    #[test]
    fn round_trips_through_a_row() {
        let d = doc();
        assert_eq!(Document::from_row(d.to_row()).unwrap(), d);
        assert_eq!(d.to_row().data, r#"{"a":{"x":1,"y":2},"b":1}"#);
    }
}
