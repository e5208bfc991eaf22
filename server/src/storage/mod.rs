//! Object storage (section 8): buckets with rules, objects streamed to a blob store, their
//! metadata in the database, signed URLs.
//!
//! An upload streams the body into a fresh blob (never held whole in memory), then one
//! database transaction records the object row (replacing any previous one) and appends an
//! `upload` change row; only after that commit is a replaced blob deleted. A crash between
//! the steps leaves a blob no row names, which the sweeper removes after a grace period —
//! never a row without its bytes. Keys never reach the file system: blobs are named by
//! random ids.
//!
//! Access: admins and the service key may do everything; everyone else through the bucket's
//! `read`, `write` and `delete` rules (`object` = `{key, size, content_type, metadata,
//! owner}`). Without a rule for an operation, clients get `403`; a `read` rule that denies
//! answers `404`, like a missing object.

pub mod bucket;
pub mod key;
pub mod sign;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::auth::Caller;
use crate::blobs::{self, Blobs, ByteStream};
use crate::rules::Vars;
use crate::store::storage::ObjectRow;
use crate::store::{NewChange, Store, Tx};
pub use bucket::{Bucket, BucketSpec, Op};
pub use key::ObjectKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bucket `{0}` does not exist")]
    BucketNotFound(String),
    #[error("object not found")]
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
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The upload would take its owner past `storage.user_quota`.
    #[error("this upload would exceed your storage quota of {quota} bytes ({used} in use)")]
    QuotaExceeded { quota: u64, used: u64 },
    #[error("{0}")]
    UnsupportedType(String),
    #[error("the signature is invalid or expired")]
    BadSignature,
    #[error("the database is unavailable")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as S;
        match e {
            S::Unavailable(cause) => Error::Unavailable(cause),
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<blobs::Error> for Error {
    fn from(e: blobs::Error) -> Self {
        match e {
            blobs::Error::TooLarge { limit } => Error::TooLarge(format!(
                "this bucket takes objects of at most {limit} bytes"
            )),
            blobs::Error::Body(cause) => Error::BadRequest(format!("the upload failed: {cause}")),
            blobs::Error::NotFound => Error::Internal("BUG: an object's blob is missing".into()),
            blobs::Error::Io(cause) => Error::Internal(format!("blob store: {cause}")),
        }
    }
}

/// An upload as the HTTP layer hands it over.
pub struct Upload<'a> {
    pub key: ObjectKey,
    pub content_type: String,
    pub metadata: Map<String, Value>,
    /// `Content-Length` when the client sent one.
    pub declared_size: Option<u64>,
    pub body: ByteStream<'a>,
}

/// Who is asking: a caller under rules, or the holder of a valid signed URL.
pub enum Actor<'a> {
    Caller(&'a Caller),
    /// A signed URL; `signer` is the user id it was signed for (owner of uploads).
    Signed {
        signer: Option<String>,
    },
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base of signed URLs.
    pub public_url: String,
    /// Unreferenced blobs younger than this are left alone by the sweeper.
    pub sweep_grace: Duration,
    pub sweep_interval: Duration,
    /// Longest `expires_in` of a signed URL.
    pub max_sign_ttl: Duration,
    /// An upload whose body sends nothing for this long is abandoned.
    pub body_idle_timeout: Duration,
    /// Bytes each user may keep (objects they own, all buckets); `None`: no limit.
    pub user_quota: Option<u64>,
}

pub struct Storage {
    store: Store,
    blobs: Arc<dyn Blobs>,
    buckets: RwLock<HashMap<String, Arc<Bucket>>>,
    signer: sign::Signer,
    settings: Settings,
}

/// The object as the API shows it.
pub fn object_json(row: &ObjectRow) -> Value {
    json!({
        "bucket": row.bucket,
        "key": row.key,
        "size": row.size,
        "content_type": row.content_type,
        "etag": row.etag,
        "metadata": serde_json::from_str::<Value>(&row.metadata).unwrap_or(json!({})),
        "owner": row.owner,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    })
}

/// `object` for rules.
fn object_value(
    key: &str,
    size: Option<u64>,
    content_type: &str,
    metadata: &Value,
    owner: Option<&str>,
) -> Value {
    json!({
        "key": key,
        "size": size,
        "content_type": content_type,
        "metadata": metadata,
        "owner": owner,
    })
}

fn row_value(row: &ObjectRow) -> Value {
    let metadata = serde_json::from_str::<Value>(&row.metadata).unwrap_or(json!({}));
    object_value(
        &row.key,
        u64::try_from(row.size).ok(),
        &row.content_type,
        &metadata,
        row.owner.as_deref(),
    )
}

impl Storage {
    pub async fn open(
        store: Store,
        blobs: Arc<dyn Blobs>,
        settings: Settings,
    ) -> Result<Arc<Storage>, Error> {
        let secret = store
            .init_meta("storage_signing_key", &crate::util::id::random_token(32))
            .await?;
        let storage = Arc::new(Storage {
            store,
            blobs,
            buckets: RwLock::new(HashMap::new()),
            signer: sign::Signer::new(secret.as_bytes()),
            settings,
        });
        storage.reload().await?;
        Ok(storage)
    }

    /// Re-reads the buckets from the database.
    pub async fn reload(&self) -> Result<(), Error> {
        let rows = self.store.storage().list_buckets().await?;
        let mut map = HashMap::new();
        for row in rows {
            let spec: BucketSpec = match serde_json::from_str(&row.spec) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(bucket = %row.name, error = %e, "cannot load bucket");
                    continue;
                }
            };
            match Bucket::compile(row.name.clone(), spec, row.created_at, row.updated_at) {
                Ok(b) => {
                    map.insert(row.name, Arc::new(b));
                }
                Err(e) => tracing::error!(bucket = %row.name, error = %e, "cannot load bucket"),
            }
        }
        if let Ok(mut current) = self.buckets.write() {
            *current = map;
        }
        Ok(())
    }

    /// Reloads whenever another node changes buckets (they share the catalog signal).
    pub fn follow_remote(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let storage = Arc::downgrade(self);
        let mut changes = self.store.subscribe_catalog();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(storage) = storage.upgrade() else {
                    return;
                };
                if let Err(e) = storage.reload().await {
                    tracing::warn!(error = %e, "bucket reload failed");
                }
            }
        })
    }

    pub fn bucket(&self, name: &str) -> Result<Arc<Bucket>, Error> {
        self.buckets
            .read()
            .ok()
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| Error::BucketNotFound(crate::query::shorten_for_message(name)))
    }

    pub fn buckets(&self) -> Vec<Arc<Bucket>> {
        let mut all: Vec<_> = self
            .buckets
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    // ---- buckets (admin) ----

    /// Creates or replaces a bucket; true when created.
    pub async fn put_bucket(&self, name: &str, spec: BucketSpec) -> Result<bool, Error> {
        bucket::check_name(name)?;
        let at = crate::util::time::now();
        Bucket::compile(name.to_owned(), spec.clone(), at.clone(), at.clone())?;
        let text = serde_json::to_string(&spec).map_err(|e| Error::Internal(e.to_string()))?;
        let owned = name.to_owned();
        let created = self
            .store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.storage().put_bucket(&owned, &text, &at).await?) }.boxed()
            }))
            .await?;
        self.changed().await?;
        Ok(created)
    }

    /// Declares a bucket from the config file unless it is already so.
    pub async fn declare_bucket(&self, name: &str, spec: BucketSpec) -> Result<bool, Error> {
        if self.bucket(name).is_ok_and(|b| b.spec == spec) {
            return Ok(false);
        }
        self.put_bucket(name, spec).await.map(|_| true)
    }

    /// Deletes a bucket and its objects (their blobs are swept).
    pub async fn delete_bucket(&self, name: &str) -> Result<(), Error> {
        self.bucket(name)?;
        let owned = name.to_owned();
        self.store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.storage().delete_bucket(&owned).await?) }.boxed()
            }))
            .await?;
        self.changed().await
    }

    async fn changed(&self) -> Result<(), Error> {
        self.reload().await?;
        self.store.notify_catalog().await?;
        Ok(())
    }

    // ---- access ----

    /// Refuses a caller no rule could allow (no rule for the operation).
    fn precheck(&self, actor: &Actor<'_>, bucket: &Bucket, op: Op) -> Result<(), Error> {
        match actor {
            Actor::Signed { .. } => Ok(()),
            Actor::Caller(c) if c.is_privileged() || bucket.rule(op).is_some() => Ok(()),
            Actor::Caller(_) => Err(Error::Forbidden(format!(
                "bucket `{}` has no `{}` rule; only admins and the service key may do this",
                bucket.name,
                op.name()
            ))),
        }
    }

    /// `object` is built only if the rule reads it.
    fn allows(
        &self,
        caller: &Caller,
        bucket: &Bucket,
        op: Op,
        object: impl FnOnce() -> Value,
    ) -> bool {
        if caller.is_privileged() {
            return true;
        }
        bucket.rule(op).is_some_and(|rule| {
            rule.allows(|| Vars {
                object: Some(object()),
                ..Vars::for_caller(caller)
            })
        })
    }

    // ---- objects ----

    /// Stores an upload; returns the object and whether it is new.
    pub async fn put(
        &self,
        actor: Actor<'_>,
        bucket_name: &str,
        upload: Upload<'_>,
    ) -> Result<(ObjectRow, bool), Error> {
        let bucket = self.bucket(bucket_name)?;
        self.precheck(&actor, &bucket, Op::Write)?;
        if !bucket.allows_type(&upload.content_type) {
            return Err(Error::UnsupportedType(format!(
                "bucket `{}` does not take `{}`",
                bucket.name,
                crate::query::shorten_for_message(&bucket::essence(&upload.content_type))
            )));
        }
        let limit = bucket.max_size();
        if upload.declared_size.is_some_and(|n| n > limit) {
            return Err(Error::TooLarge(format!(
                "this bucket takes objects of at most {limit} bytes"
            )));
        }
        let metadata = Value::Object(upload.metadata.clone());
        let owner = match &actor {
            Actor::Caller(c) => c.user_id().map(str::to_owned),
            Actor::Signed { signer } => signer.clone(),
        };
        let key = upload.key.as_str().to_owned();
        if let Actor::Caller(caller) = &actor {
            // Before the bytes: what is known now (the size only if declared).
            let object = || {
                object_value(
                    &key,
                    upload.declared_size,
                    &upload.content_type,
                    &metadata,
                    owner.as_deref(),
                )
            };
            if !self.allows(caller, &bucket, Op::Write, object) {
                return Err(Error::Forbidden(format!(
                    "the `write` rule of bucket `{}` denied this upload",
                    bucket.name
                )));
            }
        }
        // The owner's quota, before the bytes: room left now (the commit checks again).
        let quota = match (&owner, self.settings.user_quota) {
            (Some(user), Some(quota)) => {
                let used = self.store.storage().usage(user, &bucket.name, &key).await?;
                let used = u64::try_from(used).unwrap_or(0);
                let room = quota.saturating_sub(used);
                if upload.declared_size.is_some_and(|n| n > room) {
                    return Err(Error::QuotaExceeded { quota, used });
                }
                Some((quota, used, room))
            }
            _ => None,
        };
        let stream_limit = quota.map_or(limit, |(_, _, room)| room.min(limit));
        let blob = crate::util::id::new_id();
        let body = idle_limited(upload.body, self.settings.body_idle_timeout);
        let stored = match self.blobs.put(&blob, body, stream_limit).await {
            Err(blobs::Error::TooLarge { .. }) if stream_limit < limit => {
                let (quota, used, _) = quota.unwrap_or_default();
                return Err(Error::QuotaExceeded { quota, used });
            }
            stored => stored?,
        };
        let outcome = self
            .commit_upload(
                &actor,
                &bucket,
                &key,
                &blob,
                &stored,
                upload.content_type,
                metadata,
                owner,
            )
            .await;
        match outcome {
            Ok((row, replaced)) => {
                if let Some(old) = &replaced
                    && old.blob != row.blob
                    && let Err(e) = self.blobs.delete(&old.blob).await
                {
                    tracing::warn!(error = %e, "could not delete a replaced blob; the sweeper will");
                }
                Ok((row, replaced.is_none()))
            }
            Err(e) => {
                let _ = self.blobs.delete(&blob).await;
                // The bucket was deleted while the body streamed in (its row is gone, so
                // the object row could not reference it).
                if matches!(e, Error::Internal(_)) {
                    self.reload().await?;
                    self.bucket(bucket_name)?;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_upload(
        &self,
        actor: &Actor<'_>,
        bucket: &Bucket,
        key: &str,
        blob: &str,
        stored: &blobs::Stored,
        content_type: String,
        metadata: Value,
        owner: Option<String>,
    ) -> Result<(ObjectRow, Option<ObjectRow>), Error> {
        if let Actor::Caller(caller) = actor {
            // The authoritative check, with the real size.
            let object = || {
                object_value(
                    key,
                    Some(stored.size),
                    &content_type,
                    &metadata,
                    owner.as_deref(),
                )
            };
            if !self.allows(caller, bucket, Op::Write, object) {
                return Err(Error::Forbidden(format!(
                    "the `write` rule of bucket `{}` denied this upload",
                    bucket.name
                )));
            }
        }
        let stored_size = stored.size;
        let now = crate::util::time::now();
        let row = ObjectRow {
            bucket: bucket.name.clone(),
            key: key.to_owned(),
            blob: blob.to_owned(),
            size: i64::try_from(stored.size).unwrap_or(i64::MAX),
            content_type,
            etag: stored.sha256.clone(),
            metadata: metadata.to_string(),
            owner,
            created_at: now.clone(),
            updated_at: now,
        };
        let actor_id = actor_id(actor);
        let written = row.clone();
        let quota = self.settings.user_quota;
        let replaced = self
            .store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    if let (Some(quota), Some(owner)) = (quota, &written.owner) {
                        // The authoritative check: writes are serialised, so concurrent
                        // uploads by one user cannot together pass the quota.
                        let used = tx
                            .storage()
                            .usage(owner, &written.bucket, &written.key)
                            .await?;
                        let used = u64::try_from(used).unwrap_or(0);
                        if used.saturating_add(stored_size) > quota {
                            return Err(Error::QuotaExceeded { quota, used });
                        }
                    }
                    let replaced = tx.storage().put_object(&written).await?;
                    let mut shown = written.clone();
                    if let Some(old) = &replaced {
                        shown.created_at = old.created_at.clone();
                    }
                    let after = object_json(&shown).to_string();
                    let collection = change_collection(&written.bucket);
                    tx.append_change(&NewChange {
                        collection: &collection,
                        doc_id: &written.key,
                        op: "upload",
                        before: replaced
                            .as_ref()
                            .map(|o| object_json(o).to_string())
                            .as_deref(),
                        after: Some(&after),
                        actor: actor_id.as_deref(),
                        at: &written.updated_at,
                    })
                    .await?;
                    Ok(replaced)
                }
                .boxed()
            }))
            .await?;
        let mut row = row;
        if let Some(old) = &replaced {
            row.created_at = old.created_at.clone();
        }
        Ok((row, replaced))
    }

    /// The object, if `actor` may read it.
    pub async fn head(
        &self,
        actor: Actor<'_>,
        bucket_name: &str,
        key: &ObjectKey,
    ) -> Result<ObjectRow, Error> {
        let bucket = self.bucket(bucket_name)?;
        self.precheck(&actor, &bucket, Op::Read)?;
        let row = self.stored(&bucket, key).await?;
        if let Actor::Caller(caller) = &actor
            && !self.allows(caller, &bucket, Op::Read, || row_value(&row))
        {
            return Err(Error::NotFound);
        }
        Ok(row)
    }

    /// A short-lived direct download URL from the blob store (S3 with
    /// `presign_downloads`), served with these headers.
    pub async fn direct_url(
        &self,
        row: &ObjectRow,
        content_type: &str,
        disposition: &str,
    ) -> Result<Option<String>, Error> {
        Ok(self
            .blobs
            .presign_get(
                &row.blob,
                Duration::from_secs(300),
                content_type,
                disposition,
            )
            .await?)
    }

    async fn stored(&self, bucket: &Bucket, key: &ObjectKey) -> Result<ObjectRow, Error> {
        self.store
            .storage()
            .get_object(&bucket.name, key.as_str())
            .await?
            .ok_or(Error::NotFound)
    }

    /// `len` bytes of an object from `start` (after `head`).
    pub async fn read(
        &self,
        row: &ObjectRow,
        start: u64,
        len: u64,
    ) -> Result<ByteStream<'static>, Error> {
        Ok(self.blobs.get(&row.blob, start, len).await?)
    }

    pub async fn delete(
        &self,
        actor: Actor<'_>,
        bucket_name: &str,
        key: &ObjectKey,
    ) -> Result<(), Error> {
        let bucket = self.bucket(bucket_name)?;
        self.precheck(&actor, &bucket, Op::Delete)?;
        let row = self.stored(&bucket, key).await?;
        if let Actor::Caller(caller) = &actor
            && !self.allows(caller, &bucket, Op::Delete, || row_value(&row))
        {
            return Err(Error::Forbidden(format!(
                "the `delete` rule of bucket `{}` denied this",
                bucket.name
            )));
        }
        let actor_id = actor_id(&actor);
        let (bucket_owned, key_owned, blob) = (
            bucket.name.clone(),
            key.as_str().to_owned(),
            row.blob.clone(),
        );
        let outcome = self
            .store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    // Only the version that was checked is deleted.
                    match tx.storage().get_object(&bucket_owned, &key_owned).await? {
                        None => return Ok(Deleted::Gone),
                        Some(current) if current.blob != blob => return Ok(Deleted::Changed),
                        Some(_) => {}
                    }
                    let Some(old) = tx
                        .storage()
                        .delete_object(&bucket_owned, &key_owned)
                        .await?
                    else {
                        return Ok(Deleted::Gone);
                    };
                    let collection = change_collection(&bucket_owned);
                    let before = object_json(&old).to_string();
                    tx.append_change(&NewChange {
                        collection: &collection,
                        doc_id: &key_owned,
                        op: "delete",
                        before: Some(&before),
                        after: None,
                        actor: actor_id.as_deref(),
                        at: &crate::util::time::now(),
                    })
                    .await?;
                    Ok(Deleted::Row(Box::new(old)))
                }
                .boxed()
            }))
            .await?;
        match outcome {
            Deleted::Row(old) => {
                if let Err(e) = self.blobs.delete(&old.blob).await {
                    tracing::warn!(error = %e, "could not delete a blob; the sweeper will");
                }
                Ok(())
            }
            Deleted::Gone => Err(Error::NotFound),
            Deleted::Changed => Err(Error::Conflict(
                "the object was replaced while it was being deleted; retry".into(),
            )),
        }
    }

    /// A page of objects under `prefix` the caller may read; `cursor` is the last key seen.
    pub async fn list(
        &self,
        caller: &Caller,
        bucket_name: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<ObjectRow>, Option<String>), Error> {
        let bucket = self.bucket(bucket_name)?;
        self.precheck(&Actor::Caller(caller), &bucket, Op::Read)?;
        key::check_prefix(prefix).map_err(Error::BadRequest)?;
        if !(1..=1000).contains(&limit) {
            return Err(Error::BadRequest("`limit` is 1 to 1000".into()));
        }
        let after = cursor.map(decode_cursor).transpose()?;
        let rows = self
            .store
            .storage()
            .list_objects(&bucket.name, prefix, after.as_deref(), limit + 1)
            .await?;
        let more = rows.len() > limit as usize;
        let scanned: Vec<ObjectRow> = rows.into_iter().take(limit as usize).collect();
        let next = if more {
            scanned.last().map(|r| encode_cursor(&r.key))
        } else {
            None
        };
        let visible = scanned
            .into_iter()
            .filter(|r| self.allows(caller, &bucket, Op::Read, || row_value(r)))
            .collect();
        Ok((visible, next))
    }

    // ---- signed URLs ----

    /// A URL for `method` on the object that works without a token until it expires.
    /// Nobody can sign what their rules would not let them do.
    pub async fn sign(
        &self,
        caller: &Caller,
        bucket_name: &str,
        key: &ObjectKey,
        method: &str,
        expires_in: Duration,
    ) -> Result<(String, i64), Error> {
        if expires_in.is_zero() || expires_in > self.settings.max_sign_ttl {
            return Err(Error::BadRequest(format!(
                "`expires_in` is 1 to {} seconds",
                self.settings.max_sign_ttl.as_secs()
            )));
        }
        let bucket = self.bucket(bucket_name)?;
        match method {
            "GET" => {
                self.head(Actor::Caller(caller), bucket_name, key).await?;
            }
            "PUT" => {
                self.precheck(&Actor::Caller(caller), &bucket, Op::Write)?;
                let object = || object_value(key.as_str(), None, "", &json!({}), caller.user_id());
                if !self.allows(caller, &bucket, Op::Write, object) {
                    return Err(Error::Forbidden(format!(
                        "the `write` rule of bucket `{}` denied this",
                        bucket.name
                    )));
                }
            }
            _ => return Err(Error::BadRequest("`method` is GET or PUT".into())),
        }
        let expires =
            crate::util::time::unix_now() + i64::try_from(expires_in.as_secs()).unwrap_or(0);
        let signer = caller.user_id().unwrap_or("");
        let sig = self
            .signer
            .sign(method, &bucket.name, key.as_str(), expires, signer);
        let mut url = url::Url::parse(&self.settings.public_url)
            .map_err(|e| Error::Internal(format!("public_url: {e}")))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| Error::Internal("public_url cannot be a base".into()))?;
            segments
                .pop_if_empty()
                .extend(["v1", "storage", &bucket.name]);
            segments.extend(key.as_str().split('/'));
        }
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("signer", signer)
            .append_pair("sig", &sig);
        Ok((url.to_string(), expires))
    }

    /// Checks a signed URL's parameters; the signer's user id (empty: none).
    pub fn verify(
        &self,
        method: &str,
        bucket: &str,
        key: &ObjectKey,
        expires: i64,
        signer: &str,
        sig: &str,
    ) -> Result<Option<String>, Error> {
        if expires < crate::util::time::unix_now() {
            return Err(Error::BadSignature);
        }
        if !self
            .signer
            .verify(method, bucket, key.as_str(), expires, signer, sig)
        {
            return Err(Error::BadSignature);
        }
        Ok((!signer.is_empty()).then(|| signer.to_owned()))
    }

    // ---- sweeping ----

    /// Removes blobs no object names (older than the grace period) and stale temp files.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let before = SystemTime::now() - self.settings.sweep_grace;
        let mut removed = match self.blobs.sweep_temp(before).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "sweeping interrupted uploads failed");
                0
            }
        };
        for (blob, written) in self.blobs.list().await? {
            if written < before && !self.store.storage().blob_in_use(&blob).await? {
                match self.blobs.delete(&blob).await {
                    Ok(()) => removed += 1,
                    // Removed meanwhile by the overwrite or delete that orphaned it.
                    Err(blobs::Error::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    pub async fn sweep_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "storage sweeper removed orphaned blobs"),
                Err(e) => tracing::warn!(error = %e, "storage sweep failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.sweep_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Ends `body` with an error when it sends nothing for `idle` (a stalled client must not
/// hold an upload, its temp file and its connection forever).
fn idle_limited(body: ByteStream<'_>, idle: Duration) -> ByteStream<'_> {
    Box::pin(futures_util::stream::unfold(
        Some(body),
        move |state| async move {
            let mut body = state?;
            match tokio::time::timeout(idle, futures_util::StreamExt::next(&mut body)).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {}", humantime::format_duration(idle)),
                    )),
                    None,
                )),
            }
        },
    ))
}

enum Deleted {
    Row(Box<ObjectRow>),
    Gone,
    Changed,
}

/// Most bytes of metadata (names and values) on one object.
pub const MAX_METADATA: usize = 8 * 1024;

/// A content type as given (trimmed), checked to be a `type/subtype` of at most 255 bytes.
pub fn check_content_type(text: &str) -> Result<String, Error> {
    let text = text.trim();
    let essence = bucket::essence(text);
    if text.len() > 255 || !essence.contains('/') || text.chars().any(char::is_control) {
        return Err(Error::BadRequest(
            "the content type must be like `image/png`".into(),
        ));
    }
    Ok(text.to_owned())
}

/// Object metadata: string values under lower-case names of letters, digits, `-` and `_`,
/// at most [`MAX_METADATA`] bytes in all.
pub fn check_metadata(metadata: Map<String, Value>) -> Result<Map<String, Value>, Error> {
    let mut total = 0;
    let mut out = Map::new();
    for (name, value) in metadata {
        let name = name.to_ascii_lowercase();
        let Value::String(text) = value else {
            return Err(Error::BadRequest(format!(
                "metadata `{}` must be a string",
                crate::query::shorten_for_message(&name)
            )));
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::BadRequest(
                "metadata names are letters, digits, `-` and `_`".into(),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(Error::BadRequest(
                "metadata values cannot hold control characters".into(),
            ));
        }
        total += name.len() + text.len();
        out.insert(name, Value::String(text));
    }
    if total > MAX_METADATA {
        return Err(Error::BadRequest(format!(
            "metadata is at most {MAX_METADATA} bytes"
        )));
    }
    Ok(out)
}

/// The change log's `collection` for a bucket's objects.
pub fn change_collection(bucket: &str) -> String {
    format!("storage/{bucket}")
}

/// Who a change is attributed to: as for documents, with the trigger depth of writes
/// made by functions (so a trigger chain through a bucket stops like one through a
/// collection).
fn actor_id(actor: &Actor<'_>) -> Option<String> {
    match actor {
        Actor::Caller(c) => c.change_actor(),
        Actor::Signed { signer } => signer.clone(),
    }
}

fn encode_cursor(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(cursor: &str) -> Result<String, Error> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Error::BadRequest("invalid cursor".into()))
}
