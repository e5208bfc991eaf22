//! Where object bytes live. A blob is named by a random id the storage domain chooses — never
//! by an object key — so no key can name a path. Writes go to a temporary name and are
//! committed (renamed) only once complete, so a blob id that exists is whole.
//!
//! - [`local::LocalBlobs`]: files under `<data dir>/storage` (the default).
//! - [`s3::S3Blobs`]: an S3 bucket (AWS or S3-compatible).
//!
//! The storage domain records a blob in the database only after `put` returned, and deletes
//! a replaced blob only after the database commit; the sweeper removes blobs no row names
//! (a crash between the two steps) once they are older than a grace period.

pub mod local;
pub mod s3;

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

/// A body to store, as it arrives.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is larger than the limit (counted while streaming).
    #[error("the object is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client's body failed (disconnect, bad length): nothing is kept.
    #[error("the upload was interrupted: {0}")]
    Body(String),
    #[error("no such blob")]
    NotFound,
    #[error("blob store: {0}")]
    Io(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound
        } else {
            Error::Io(e.to_string())
        }
    }
}

/// What `put` stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

/// A blob store.
#[async_trait]
pub trait Blobs: Send + Sync {
    /// Streams `body` into blob `id` (temporary name first, committed when complete).
    /// More than `limit` bytes: `TooLarge`, and nothing is kept.
    async fn put(&self, id: &str, body: ByteStream<'_>, limit: u64) -> Result<Stored, Error>;
    /// The bytes of `id`, from `start`, `len` of them.
    async fn get(&self, id: &str, start: u64, len: u64) -> Result<ByteStream<'static>, Error>;
    async fn delete(&self, id: &str) -> Result<(), Error>;
    /// Every committed blob and when it was written (for the sweeper).
    async fn list(&self) -> Result<Vec<(String, SystemTime)>, Error>;
    /// Removes temporary files older than `before` (uploads a crash interrupted).
    async fn sweep_temp(&self, before: SystemTime) -> Result<u64, Error>;
    /// A URL the client may download the blob from directly for `ttl`, served with these
    /// headers; `None` when the store does not hand out such URLs.
    async fn presign_get(
        &self,
        _id: &str,
        _ttl: std::time::Duration,
        _content_type: &str,
        _disposition: &str,
    ) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

/// A blob id as the storage domain makes them: lower-case letters and digits only, so it
/// is safe as a file name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
