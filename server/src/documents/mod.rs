//! The JSON document database: collections, documents, queries, updates and the write
//! pipeline (section 3 of the design).
//!
//! Errors: every function here returns [`Error`]; `http::error` maps each variant to one
//! status and one stable code.

pub mod access;
pub mod catalog;
pub mod collection;
pub mod document;
pub mod hooks;
mod service;
pub mod update;
pub mod validate;

pub use service::{
    BatchOp, BatchResult, Documents, QueryPage, QueryRequest, WriteKind, parse_doc_id, push_json,
    push_json_array,
};

use serde_json::Value;

/// A documents failure, as the client will hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("collection `{0}` does not exist")]
    CollectionNotFound(String),
    #[error("document not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Validation {
        message: String,
        details: Option<Value>,
    },
    #[error("{message}")]
    Conflict {
        message: String,
        details: Option<Value>,
    },
    /// `If-Match` named another version; `current` is `None` when there is no document.
    #[error("the document is at another version")]
    VersionMismatch { current: Option<i64> },
    #[error("{0}")]
    TooLarge(String),
    /// A before-hook rejected the write.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    /// A before-hook ran out of time.
    #[error("{0}")]
    FunctionTimeout(String),
    /// An operation of a batch failed; nothing of the batch was applied.
    #[error("operation {index} of the batch failed: {error}")]
    Batch { index: usize, error: Box<Error> },
    /// The database could not be reached; the cause is kept for the log.
    #[error("the database is unavailable")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as S;
        match e {
            S::NotFound => Error::NotFound,
            S::Conflict { constraint } => Error::Conflict {
                message: "a unique value is already taken".into(),
                details: Some(serde_json::json!({ "constraint": constraint })),
            },
            S::Unavailable(cause) => Error::Unavailable(cause),
            S::Other(msg) => Error::Internal(msg),
        }
    }
}
