//! Collections: names, rules, declared indexes, JSON Schema, and the compiled form the
//! pipeline uses.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::Error;
use super::access::Operation;
use crate::query::{Field, SortKey};
use crate::rules::{Rule, RuleError, Scope};
use crate::store::{CollectionRow, IndexDef};

/// Most indexes on one collection, and most fields in one index.
const MAX_INDEXES: usize = 16;
const MAX_INDEX_FIELDS: usize = 8;

/// A valid collection name: a letter, then up to 63 letters, digits or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectionName(String);

impl CollectionName {
    pub fn parse(name: &str) -> Result<Self, Error> {
        let mut chars = name.chars();
        let valid = name.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            // `/v1/db/batch` is the batch endpoint.
            && name != "batch";
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::Validation {
                message: "collection names are a letter followed by up to 63 letters, digits or `_` (and not `batch`)".into(),
                details: None,
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An index as declared: `{"fields": ["owner", "-score"], "unique": false}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    /// Field paths; a leading `-` makes that part descending.
    pub fields: Vec<String>,
    #[serde(default)]
    pub unique: bool,
}

/// A collection's rules, as written: CEL expressions; an absent rule denies clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

impl RuleSpec {
    pub fn source(&self, op: Operation) -> Option<&str> {
        match op {
            Operation::List => self.list.as_deref(),
            Operation::Get => self.get.as_deref(),
            Operation::Create => self.create.as_deref(),
            Operation::Update => self.update.as_deref(),
            Operation::Delete => self.delete.as_deref(),
        }
    }

    pub fn is_empty(&self) -> bool {
        Operation::ALL.iter().all(|op| self.source(*op).is_none())
    }
}

/// A collection's rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    list: Option<Rule>,
    get: Option<Rule>,
    create: Option<Rule>,
    update: Option<Rule>,
    delete: Option<Rule>,
}

impl Rules {
    /// Compiles every rule; the first refused one is a `validation_failed` naming it.
    pub fn compile(spec: &RuleSpec) -> Result<Rules, Error> {
        let mut rules = Rules::default();
        for op in Operation::ALL {
            let Some(source) = spec.source(op) else {
                continue;
            };
            let compiled = compile_rule(op, source).map_err(|e| Error::Validation {
                message: format!("rules.{}: {}", op.name(), e.message),
                details: Some(json!({ "rule": op.name(), "position": e.position })),
            })?;
            *rules.slot(op) = Some(compiled);
        }
        Ok(rules)
    }

    /// The rule for an operation; `None` denies clients.
    pub fn get(&self, op: Operation) -> Option<&Rule> {
        match op {
            Operation::List => self.list.as_ref(),
            Operation::Get => self.get.as_ref(),
            Operation::Create => self.create.as_ref(),
            Operation::Update => self.update.as_ref(),
            Operation::Delete => self.delete.as_ref(),
        }
    }

    fn slot(&mut self, op: Operation) -> &mut Option<Rule> {
        match op {
            Operation::List => &mut self.list,
            Operation::Get => &mut self.get,
            Operation::Create => &mut self.create,
            Operation::Update => &mut self.update,
            Operation::Delete => &mut self.delete,
        }
    }
}

/// Compiles one document rule; `list` rules must also have an SQL form.
pub fn compile_rule(op: Operation, source: &str) -> Result<Rule, RuleError> {
    if source.trim().is_empty() {
        return Err(RuleError::at(
            "the rule is empty; write `true` to allow everyone, or leave the rule out to allow only admins",
            None,
        ));
    }
    match op {
        Operation::List => Rule::compile_list(source),
        _ => Rule::compile(source, Scope::Document),
    }
}

/// What is stored about a collection (the catalog row's `spec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    #[serde(default, skip_serializing_if = "RuleSpec::is_empty")]
    pub rules: RuleSpec,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
    #[serde(default)]
    pub schema: Option<Value>,
}

impl CollectionSpec {
    /// Checks everything a declaration says (rules, indexes, schema) without applying it;
    /// returns the indexes to create.
    pub fn check(&self) -> Result<Vec<IndexDef>, Error> {
        Rules::compile(&self.rules)?;
        let indexes = index_defs(&self.indexes)?;
        if let Some(schema) = &self.schema {
            compile_schema(schema)?;
        }
        Ok(indexes)
    }
}

/// A collection ready for use: parsed indexes, compiled schema.
pub struct Collection {
    pub name: String,
    /// Names the table the store keeps the documents in.
    pub table: i64,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: CollectionSpec,
    pub indexes: Vec<IndexDef>,
    pub rules: Rules,
    schema: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("table", &self.table)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Collection {
    /// Builds a collection from its catalog row.
    pub fn compile(row: CollectionRow) -> Result<Collection, Error> {
        let spec: CollectionSpec = serde_json::from_str(&row.spec).map_err(|e| {
            Error::Internal(format!("BUG: stored spec of {} is invalid: {e}", row.name))
        })?;
        let indexes = index_defs(&spec.indexes)?;
        let rules = Rules::compile(&spec.rules)?;
        let schema = spec
            .schema
            .as_ref()
            .map(compile_schema)
            .transpose()?
            .map(Arc::new);
        Ok(Collection {
            name: row.name,
            table: row.id,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            spec,
            indexes,
            rules,
            schema,
        })
    }

    /// The table, as the store needs it for writes.
    pub fn table_ref(&self) -> crate::store::TableRef {
        crate::store::TableRef {
            id: self.table,
            has_unique: self.indexes.iter().any(|i| i.unique),
        }
    }

    /// Validates user data against the collection's JSON Schema, if it has one.
    pub fn check_schema(&self, data: &mut Map<String, Value>) -> Result<(), Error> {
        let Some(validator) = &self.schema else {
            return Ok(());
        };
        let value = Value::Object(std::mem::take(data));
        let errors: Vec<Value> = validator
            .iter_errors(&value)
            .take(10)
            .map(|e| json!({"path": e.instance_path().to_string(), "message": e.masked().to_string()}))
            .collect();
        if let Value::Object(map) = value {
            *data = map;
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation {
                message: "the document does not match the collection's schema".into(),
                details: Some(json!({ "errors": errors })),
            })
        }
    }

    /// The declared index a conflict key names.
    pub fn conflict_fields(&self, key: &str) -> Vec<String> {
        if key == "_id" {
            return vec!["_id".into()];
        }
        self.indexes
            .iter()
            .position(|i| i.key == key)
            .and_then(|pos| self.spec.indexes.get(pos))
            .map(|spec| {
                spec.fields
                    .iter()
                    .map(|f| f.trim_start_matches('-').to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The collection as the admin API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "rules": self.spec.rules,
            "indexes": self.spec.indexes,
            "schema": self.spec.schema,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// Validates declared indexes and gives each a stable key derived from its definition.
pub fn index_defs(specs: &[IndexSpec]) -> Result<Vec<IndexDef>, Error> {
    if specs.len() > MAX_INDEXES {
        return Err(invalid(format!(
            "a collection may have at most {MAX_INDEXES} indexes"
        )));
    }
    let mut defs: Vec<IndexDef> = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.fields.is_empty() || spec.fields.len() > MAX_INDEX_FIELDS {
            return Err(invalid(format!(
                "an index names 1 to {MAX_INDEX_FIELDS} fields"
            )));
        }
        let mut fields = Vec::with_capacity(spec.fields.len());
        for raw in &spec.fields {
            let (desc, path) = match raw.strip_prefix('-') {
                Some(p) => (true, p),
                None => (false, raw.as_str()),
            };
            let field = Field::parse(path).map_err(|e| invalid(format!("index field: {e}")))?;
            if fields.iter().any(|k: &SortKey| k.field == field) {
                return Err(invalid(format!("an index names `{path}` twice")));
            }
            fields.push(SortKey { field, desc });
        }
        let canonical = format!("{}|{}", spec.fields.join(","), spec.unique);
        let key = hex::encode(&Sha256::digest(canonical.as_bytes())[..6]);
        if defs.iter().any(|d| d.key == key) {
            return Err(invalid("the same index is declared twice"));
        }
        defs.push(IndexDef {
            key,
            fields,
            unique: spec.unique,
        });
    }
    Ok(defs)
}

/// Compiles a JSON Schema (no remote references are ever fetched).
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, Error> {
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(invalid("`schema` must be a JSON Schema object"));
    }
    jsonschema::validator_for(schema)
        .map_err(|e| invalid(format!("invalid JSON Schema: {}", e.masked())))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Validation {
        message: message.into(),
        details: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names() {
        assert!(CollectionName::parse("todos").is_ok());
        assert!(CollectionName::parse("userProfiles_2").is_ok());
        for bad in [
            "",
            "_users",
            "1x",
            "a-b",
            "a b",
            "fb docs",
            &"x".repeat(65),
            "../x",
            "a;drop",
        ] {
            assert!(CollectionName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn index_keys_are_stable_and_checked() {
        let spec = IndexSpec {
            fields: vec!["owner".into(), "-score".into()],
            unique: false,
        };
        let a = index_defs(std::slice::from_ref(&spec)).unwrap();
        let b = index_defs(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(a[0].key, b[0].key);
        assert!(a[0].fields[1].desc);
        assert!(
            index_defs(&[IndexSpec {
                fields: vec![],
                unique: false
            }])
            .is_err()
        );
        assert!(
            index_defs(&[IndexSpec {
                fields: vec!["a') --".into()],
                unique: false
            }])
            .is_err()
        );
        assert!(index_defs(&[spec.clone(), spec]).is_err());
    }

    #[test]
    fn schemas_are_compiled_and_enforced() {
        assert!(compile_schema(&json!({"type": "object", "required": ["title"]})).is_ok());
        assert!(compile_schema(&json!({"type": 12})).is_err());
        assert!(compile_schema(&json!("x")).is_err());
    }
}
