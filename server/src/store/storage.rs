//! What the store keeps for object storage: buckets and object metadata (the bytes are in
//! the blob store). Writes happen inside the writer's transaction through [`StorageTx`];
//! reads through [`StorageRead`] on the reader pool.

use async_trait::async_trait;

use super::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct BucketRow {
    pub name: String,
    /// JSON the storage domain owns.
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectRow {
    pub bucket: String,
    pub key: String,
    pub blob: String,
    pub size: i64,
    pub content_type: String,
    pub etag: String,
    /// JSON object text.
    pub metadata: String,
    pub owner: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[async_trait]
pub trait StorageRead: Send + Sync {
    async fn list_buckets(&self) -> Result<Vec<BucketRow>>;
    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRow>>;
    /// Objects whose key starts with `prefix`, after `after`, in key order.
    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ObjectRow>>;
    /// Whether any object row names this blob.
    async fn blob_in_use(&self, blob: &str) -> Result<bool>;
    /// Bytes the objects `owner` owns take, leaving out the object at `bucket`/`key`.
    async fn usage(&self, owner: &str, bucket: &str, key: &str) -> Result<i64>;
}

#[async_trait]
pub trait StorageTx: Send {
    /// Creates or replaces a bucket's spec; true when it was created.
    async fn put_bucket(&mut self, name: &str, spec: &str, at: &str) -> Result<bool>;
    /// Deletes a bucket and its object rows; false when there was none.
    async fn delete_bucket(&mut self, name: &str) -> Result<bool>;
    async fn get_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>>;
    /// Inserts or replaces the object row (keeping `created_at` and taking the old row's
    /// place); returns the row it replaced.
    async fn put_object(&mut self, row: &ObjectRow) -> Result<Option<ObjectRow>>;
    /// Deletes the object row; returns it.
    async fn delete_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>>;
    /// As [`StorageRead::usage`], inside the transaction.
    async fn usage(&mut self, owner: &str, bucket: &str, key: &str) -> Result<i64>;
}

/// A user's stored bytes but one object's (`owner`, `bucket`, `key` as `$1`, `$2`, `$3`,
/// which SQLite takes as named parameters bound in order of appearance).
pub(crate) const USAGE_SQL: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM fb_objects \
     WHERE owner = $1 AND NOT (bucket = $2 AND key = $3)";

/// The columns of `fb_objects`, in [`ObjectRow`] order.
pub(crate) const OBJECT_COLUMNS: &str =
    "bucket, key, blob, size, content_type, etag, metadata, owner, created_at, updated_at";
