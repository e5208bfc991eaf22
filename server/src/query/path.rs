//! Field paths: a system field (`_id`, `_owner`, …) or a dotted path into the user data.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use super::{Fields, QueryError};

/// The server-owned fields every document has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemField {
    Id,
    Owner,
    CreatedAt,
    UpdatedAt,
    Version,
}

impl SystemField {
    pub const ALL: [SystemField; 5] = [
        SystemField::Id,
        SystemField::Owner,
        SystemField::CreatedAt,
        SystemField::UpdatedAt,
        SystemField::Version,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemField::Id => "_id",
            SystemField::Owner => "_owner",
            SystemField::CreatedAt => "_created_at",
            SystemField::UpdatedAt => "_updated_at",
            SystemField::Version => "_version",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A field a query can filter or sort on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    System(SystemField),
    /// Object keys from the document root, at least one.
    User(Vec<String>),
}

const MAX_SEGMENTS: usize = 16;
const MAX_SEGMENT_LEN: usize = 128;

impl Field {
    /// Parses `title`, `author.name` or `_created_at`.
    pub fn parse(path: &str) -> Result<Self, QueryError> {
        if path.starts_with('_') {
            return SystemField::from_name(path).map(Field::System).ok_or_else(|| {
                QueryError::new(format!(
                    "unknown system field `{}` (system fields are _id, _owner, _created_at, _updated_at, _version)",
                    shorten(path)
                ))
            });
        }
        let segments: Vec<&str> = path.split('.').collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(QueryError::new(format!(
                "field path `{}` is deeper than {MAX_SEGMENTS} levels",
                shorten(path)
            )));
        }
        for segment in &segments {
            if !is_queryable_segment(segment) {
                return Err(QueryError::new(format!(
                    "field path `{}` is not queryable: each segment must be 1-{MAX_SEGMENT_LEN} letters, digits, `_` or `-`, not starting with `_`",
                    shorten(path)
                )));
            }
        }
        Ok(Field::User(
            segments.into_iter().map(String::from).collect(),
        ))
    }

    /// Looks the field up in a document; `None` when missing.
    pub fn lookup<'a, D: Fields + ?Sized>(&self, doc: &'a D) -> Option<Cow<'a, Value>> {
        match self {
            Field::System(f) => Some(Cow::Owned(doc.system(*f))),
            Field::User(segments) => {
                let (first, rest) = segments.split_first()?;
                let mut current = doc.data().get(first)?;
                for segment in rest {
                    current = current.as_object()?.get(segment)?;
                }
                Some(Cow::Borrowed(current))
            }
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::System(s) => f.write_str(s.name()),
            Field::User(segments) => f.write_str(&segments.join(".")),
        }
    }
}

/// A segment that may appear in a query path (and so, literally, in SQL).
pub fn is_queryable_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT_LEN
        && !segment.starts_with('_')
        && segment
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// Clips user text that is echoed in an error message.
pub(crate) fn shorten(s: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_system_paths() {
        assert_eq!(
            Field::parse("author.name").unwrap(),
            Field::User(vec!["author".into(), "name".into()])
        );
        assert_eq!(
            Field::parse("_created_at").unwrap(),
            Field::System(SystemField::CreatedAt)
        );
        assert_eq!(
            Field::parse("größe").unwrap(),
            Field::User(vec!["größe".into()])
        );
    }

    #[test]
    fn refuses_injection_shaped_paths() {
        for bad in [
            "a') OR 1=1--",
            "a\"",
            "a\0b",
            "$.x",
            "'||(select 1)||'",
            "",
            "a..b",
            "a._b",
            "_secret",
            "a b",
            &"a.".repeat(200),
            &"x".repeat(10_000),
        ] {
            assert!(Field::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
