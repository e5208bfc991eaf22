//! The query language of section 6: field paths, the `where` filter AST, sort keys and keyset
//! cursors, and the in-memory semantics of all of them.
//!
//! This module is a leaf: it knows JSON and nothing else. The store compiles the same AST to
//! SQL (`store::query`), realtime and rules evaluate it in memory with [`Filter::matches`], and a
//! behaviour suite checks that both agree. The semantics, in one place:
//!
//! - Comparisons are type-strict: numbers compare with numbers, strings with strings, and
//!   there are no cross-type matches. `{"f": null}` matches a missing field or a JSON null.
//! - Every JSON value has a *rank* (missing/null 0, boolean 1, number 2, string 3, array 4,
//!   object 5); sorting orders by rank, then by value within the rank (false < true, numbers
//!   numerically, strings by their UTF-8 bytes, arrays/objects by canonical JSON text).
//! - Paths are dotted object keys (`author.name`); they never index into arrays. Path segments
//!   are letters, digits, `_` and `-`; anything else is refused, so a path can be written into
//!   SQL as a literal (expression indexes need literals) without any escaping question.

mod filter;
mod path;
mod sort;
mod value;

pub use filter::{CmpOp, Filter, JsonDoc, JsonType};
pub use path::{Field, SystemField, is_queryable_segment};
pub use sort::{Cursor, SortKey, compare, parse_sort};
pub use value::{canonical_text, cmp_values, rank, values_equal};

use serde_json::{Map, Value};

/// Clips user text that is echoed in an error message.
pub fn shorten_for_message(s: &str) -> String {
    path::shorten(s).into_owned()
}

/// Why a query could not be parsed. The message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

impl QueryError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// A document as the query language sees it: system fields plus user data.
pub trait Fields {
    /// The value of a system field (`_owner` may be `Value::Null`).
    fn system(&self, field: SystemField) -> Value;
    /// The user fields.
    fn data(&self) -> &Map<String, Value>;
}

/// Limits that keep a query cheap to parse and to run (HOSTILE RULE-07).
pub mod limits {
    /// Deepest nesting of `$and`/`$or`/`$not`.
    pub const MAX_DEPTH: usize = 16;
    /// Most conditions in one filter, counting every operator.
    pub const MAX_NODES: usize = 256;
    /// Most values in one `$in`/`$nin`.
    pub const MAX_IN: usize = 1000;
    /// Most sort keys.
    pub const MAX_SORT_KEYS: usize = 8;
    /// Default and largest page size.
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 1000;
    /// Largest `offset` (consoles page by offset; clients should use cursors).
    pub const MAX_OFFSET: u64 = 100_000;
}
