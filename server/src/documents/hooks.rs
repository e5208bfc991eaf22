//! The seam where user code runs inside the write pipeline (PocketBase's idea: hooks are
//! the one way in). `documents` defines it; cloud code implements it; `app.rs` wires them.
//!
//! Only *before* hooks live here: they run synchronously, may change the incoming data or
//! reject the write. *After* effects (triggers, realtime) read the change log instead, so
//! they see exactly what was committed.

use async_trait::async_trait;
use serde_json::Value;

use super::Error;
use super::document::Document;
use super::service::WriteKind;

/// A write about to happen.
#[derive(Debug)]
pub struct BeforeEvent<'a> {
    pub collection: &'a str,
    pub kind: WriteKind,
    /// The document id (absent on create without a proposed id).
    pub id: Option<&'a str>,
    pub auth: &'a crate::auth::Caller,
    /// The incoming document (create/replace) or the update (update); hooks may modify it.
    pub data: Value,
    /// The stored document as it was when the hook ran (`None` on create).
    pub doc: Option<&'a Document>,
}

/// User code that runs before writes.
#[async_trait]
pub trait Hooks: Send + Sync {
    /// Whether a before-hook exists, so the pipeline skips the work when none does.
    fn has_before(&self, collection: &str, kind: WriteKind) -> bool;
    /// Runs the before-hooks; `Err` rejects the write (nothing is written).
    async fn before(&self, event: &mut BeforeEvent<'_>) -> Result<(), Error>;
}

/// No user code.
pub struct NoHooks;

#[async_trait]
impl Hooks for NoHooks {
    fn has_before(&self, _: &str, _: WriteKind) -> bool {
        false
    }
    async fn before(&self, _: &mut BeforeEvent<'_>) -> Result<(), Error> {
        Ok(())
    }
}
