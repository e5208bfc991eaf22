//! Buckets: their spec (rules, size limit, content types) as declared, and compiled.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Error;
use crate::rules::{Rule, Scope};

/// Default and largest `max_size`: 5 GiB.
pub const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024;

/// Rules of a bucket (CEL with `auth`, `object`, `request`); a missing rule: only admins
/// and the service key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
}

/// A bucket as declared (admin API, `ferrobase.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSpec {
    #[serde(default)]
    pub rules: BucketRules,
    /// Largest object in bytes (default 5 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// Allowed content types: exact (`image/png`) or a family (`image/*`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
}

/// The operations bucket rules are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Delete,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Delete => "delete",
        }
    }
}

/// A bucket ready to use.
#[derive(Debug)]
pub struct Bucket {
    pub name: String,
    pub spec: BucketSpec,
    pub created_at: String,
    pub updated_at: String,
    read: Option<Rule>,
    write: Option<Rule>,
    delete: Option<Rule>,
}

impl Bucket {
    pub fn compile(
        name: String,
        spec: BucketSpec,
        created_at: String,
        updated_at: String,
    ) -> Result<Bucket, Error> {
        let compile = |op: &str, source: &Option<String>| -> Result<Option<Rule>, Error> {
            match source {
                None => Ok(None),
                Some(s) if s.trim().is_empty() => Err(Error::Validation {
                    message: format!(
                        "rules.{op}: a rule cannot be empty; write `true` or leave it out"
                    ),
                    details: None,
                }),
                Some(s) => {
                    Rule::compile(s, Scope::Bucket)
                        .map(Some)
                        .map_err(|e| Error::Validation {
                            message: format!("rules.{op}: {e}"),
                            details: Some(serde_json::json!({"rule": op, "position": e.position})),
                        })
                }
            }
        };
        if spec.max_size == Some(0) || spec.max_size.is_some_and(|m| m > MAX_OBJECT) {
            return Err(Error::Validation {
                message: format!("max_size is 1 to {MAX_OBJECT} bytes"),
                details: None,
            });
        }
        for pattern in &spec.content_types {
            if !valid_type_pattern(pattern) {
                return Err(Error::Validation {
                    message: format!(
                        "content_types: `{}` is not a type like `image/png` or `image/*`",
                        crate::query::shorten_for_message(pattern)
                    ),
                    details: None,
                });
            }
        }
        Ok(Bucket {
            read: compile("read", &spec.rules.read)?,
            write: compile("write", &spec.rules.write)?,
            delete: compile("delete", &spec.rules.delete)?,
            name,
            spec,
            created_at,
            updated_at,
        })
    }

    pub fn rule(&self, op: Op) -> Option<&Rule> {
        match op {
            Op::Read => self.read.as_ref(),
            Op::Write => self.write.as_ref(),
            Op::Delete => self.delete.as_ref(),
        }
    }

    pub fn max_size(&self) -> u64 {
        self.spec.max_size.unwrap_or(MAX_OBJECT)
    }

    /// Whether `content_type` (its essence, lower-cased) is allowed.
    pub fn allows_type(&self, content_type: &str) -> bool {
        if self.spec.content_types.is_empty() {
            return true;
        }
        let essence = essence(content_type);
        self.spec.content_types.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            match p.strip_suffix("/*") {
                Some(family) => essence.split('/').next() == Some(family),
                None => p == essence,
            }
        })
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        v["name"] = Value::String(self.name.clone());
        v["max_size"] = Value::from(self.max_size());
        v["created_at"] = Value::String(self.created_at.clone());
        v["updated_at"] = Value::String(self.updated_at.clone());
        v
    }
}

/// `type/subtype` of a content type, lower-cased, without parameters.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn valid_type_pattern(p: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match p.split_once('/') {
        Some((family, "*")) => token(family),
        Some((family, sub)) => token(family) && token(sub),
        None => false,
    }
}

/// A bucket name: 1–63 of `a-z 0-9 _ -`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Validation {
            message: "a bucket name is 1 to 63 of a-z, 0-9, `_` and `-`, starting with a letter"
                .into(),
            details: None,
        })
    }
}
