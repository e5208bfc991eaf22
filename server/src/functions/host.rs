//! The bridge: what JS may ask of the server during one invocation. Every operation takes
//! JSON text (parsed here with serde's depth limit), runs on the async runtime through
//! `Handle::block_on` (the worker thread is not a runtime thread), and is bounded by the
//! invocation's deadline. `ctx.db` and `ctx.storage` run as the caller, so rules apply;
//! `ctx.admin.db` and `ctx.admin.storage` run as the service.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use super::engine::{Bridge, HostError, Level};
use crate::auth::{Caller, Principal};
use crate::documents::{self, BatchOp, Documents, QueryRequest};
use crate::storage::{self, Actor, ObjectKey, Storage, Upload};

/// Largest object a function may write or read through `ctx.storage` (the bytes cross the
/// bridge as text); larger objects go through a signed URL.
pub const MAX_FUNCTION_OBJECT: u64 = 4 << 20;

/// Most log lines one invocation keeps; later lines are counted, not stored.
pub const MAX_LOG_LINES: usize = 200;

/// A captured log line.
#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub message: String,
    pub at: String,
}

/// Lines captured during one invocation, shared with the caller.
#[derive(Debug, Default)]
pub struct Captured {
    pub lines: Vec<Line>,
    pub dropped: usize,
}

/// The bridge for one invocation.
pub struct HostBridge {
    pub documents: Documents,
    pub handle: tokio::runtime::Handle,
    pub caller: Caller,
    pub depth: u8,
    pub deadline: Instant,
    pub logs: Arc<Mutex<Captured>>,
    pub fetch: Option<Arc<super::fetch::Fetcher>>,
    pub storage: Option<Arc<Storage>>,
}

fn host_error(status: u16, code: &str, message: impl Into<String>) -> HostError {
    HostError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

/// A documents error as JS sees it; internal causes are not shown.
pub fn from_documents(e: documents::Error) -> HostError {
    use documents::Error as E;
    let message = e.to_string();
    match e {
        E::CollectionNotFound(_) => host_error(404, "collection_not_found", message),
        E::NotFound => host_error(404, "not_found", message),
        E::Forbidden(_) => host_error(403, "forbidden", message),
        E::BadRequest(_) => host_error(400, "bad_request", message),
        E::Validation { .. } => host_error(400, "validation_failed", message),
        E::Conflict { .. } => host_error(409, "conflict", message),
        E::VersionMismatch { .. } => host_error(412, "version_mismatch", message),
        E::TooLarge(_) => host_error(413, "payload_too_large", message),
        E::Rejected { status, message } => host_error(status, "function_error", message),
        E::FunctionTimeout(_) => host_error(504, "function_timeout", message),
        E::Batch { index, error } => {
            let inner = from_documents(*error);
            HostError {
                message: format!("operation {index}: {}", inner.message),
                ..inner
            }
        }
        E::Unavailable(_) => host_error(503, "unavailable", "the database is unavailable"),
        E::Internal(_) => host_error(500, "internal", "internal error"),
    }
}

/// A storage error as JS sees it (the HTTP API's codes); internal causes are not shown.
pub fn from_storage(e: storage::Error) -> HostError {
    use storage::Error as E;
    let message = e.to_string();
    match e {
        E::BucketNotFound(_) => host_error(404, "bucket_not_found", message),
        E::NotFound => host_error(404, "not_found", message),
        E::Forbidden(m) => host_error(403, "forbidden", m),
        E::BadRequest(m) => host_error(400, "bad_request", m),
        E::Validation { message, .. } => host_error(400, "validation_failed", message),
        E::Conflict(m) => host_error(409, "conflict", m),
        E::TooLarge(m) => host_error(413, "payload_too_large", m),
        E::QuotaExceeded { .. } => host_error(413, "quota_exceeded", message),
        E::UnsupportedType(m) => host_error(415, "unsupported_media_type", m),
        E::BadSignature => host_error(403, "invalid_signature", message),
        E::Unavailable(cause) => {
            tracing::warn!(error = %cause, "storage from a function: database unavailable");
            host_error(503, "unavailable", "the database is unavailable")
        }
        E::Internal(cause) => {
            tracing::error!(error = %cause, "storage from a function failed");
            host_error(500, "internal", "internal error")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageArgs {
    #[serde(rename = "as")]
    run_as: String,
    bucket: String,
    key: Option<String>,
    /// A body given as a JS string: stored as its UTF-8 bytes.
    text: Option<String>,
    /// A body given as bytes: one char (U+0000..U+00FF) per byte.
    binary: Option<String>,
    content_type: Option<String>,
    metadata: Option<serde_json::Map<String, Value>>,
    prefix: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
    method: Option<String>,
    expires_in: Option<u64>,
}

/// The bytes of a body the prelude sent as one char per byte.
fn latin1_bytes(text: &str) -> Result<Vec<u8>, HostError> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| host_error(400, "bad_request", "a binary body holds bytes 0-255"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DbArgs {
    #[serde(rename = "as")]
    run_as: String,
    collection: Option<String>,
    id: Option<String>,
    data: Option<Value>,
    #[serde(rename = "where")]
    filter: Option<Value>,
    sort: Option<String>,
    limit: Option<u32>,
    offset: Option<u64>,
    cursor: Option<String>,
    #[serde(default)]
    count: bool,
    ops: Option<Vec<BatchOp>>,
}

impl HostBridge {
    fn caller_for(&self, run_as: &str) -> Result<Caller, HostError> {
        let mut caller = match run_as {
            "caller" => self.caller.clone(),
            "admin" => Caller::internal(Principal::Service),
            _ => return Err(host_error(400, "bad_request", "`as` is caller or admin")),
        };
        caller.depth = self.depth;
        Ok(caller)
    }

    fn block<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, HostError>>,
    ) -> Result<T, HostError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.handle.block_on(async move {
            match tokio::time::timeout(left, fut).await {
                Ok(r) => r,
                Err(_) => Err(host_error(
                    504,
                    "function_timeout",
                    "the function ran out of time",
                )),
            }
        })
    }

    fn db(&self, op: &str, args: &str) -> Result<Value, HostError> {
        let args: DbArgs = serde_json::from_str(args)
            .map_err(|e| host_error(400, "bad_request", format!("{op}: {e}")))?;
        let caller = self.caller_for(&args.run_as)?;
        let docs = self.documents.clone();
        let need = |v: Option<String>, what: &str| {
            v.ok_or_else(|| host_error(400, "bad_request", format!("{op} needs `{what}`")))
        };
        let collection = args.collection.clone().unwrap_or_default();
        match op {
            "db.get" => {
                let id = need(args.id, "id")?;
                self.block(async move {
                    match docs.get(&caller, &collection, &id).await {
                        Ok(doc) => serde_json::from_str(&doc.json)
                            .map_err(|e| from_documents(documents::Error::Internal(e.to_string()))),
                        Err(documents::Error::NotFound) => Ok(Value::Null),
                        Err(e) => Err(from_documents(e)),
                    }
                })
            }
            "db.query" => {
                let req = QueryRequest {
                    filter: args.filter.unwrap_or(Value::Object(Default::default())),
                    sort: args.sort,
                    limit: args.limit,
                    cursor: args.cursor,
                    offset: args.offset,
                    fields: None,
                    count: args.count,
                };
                self.block(async move {
                    let page = docs
                        .query(&caller, &collection, req)
                        .await
                        .map_err(from_documents)?;
                    page.to_value()
                        .map_err(|_| host_error(500, "internal", "internal error"))
                })
            }
            "db.create" => {
                let data = args.data.unwrap_or(Value::Null);
                self.block(async move {
                    docs.create(&caller, &collection, data)
                        .await
                        .map(|s| s.doc.to_json())
                        .map_err(from_documents)
                })
            }
            "db.replace" => {
                let id = need(args.id, "id")?;
                let data = args.data.unwrap_or(Value::Null);
                self.block(async move {
                    docs.replace(&caller, &collection, &id, data, None, true)
                        .await
                        .map(|(s, _)| s.doc.to_json())
                        .map_err(from_documents)
                })
            }
            "db.update" => {
                let id = need(args.id, "id")?;
                let data = args.data.unwrap_or(Value::Null);
                self.block(async move {
                    docs.update(&caller, &collection, &id, data, None)
                        .await
                        .map(|s| s.doc.to_json())
                        .map_err(from_documents)
                })
            }
            "db.delete" => {
                let id = need(args.id, "id")?;
                self.block(async move {
                    docs.delete(&caller, &collection, &id, None)
                        .await
                        .map(|()| Value::Null)
                        .map_err(from_documents)
                })
            }
            "db.batch" => {
                let ops = args
                    .ops
                    .ok_or_else(|| host_error(400, "bad_request", "db.batch needs `ops`"))?;
                self.block(async move {
                    docs.batch(&caller, ops)
                        .await
                        .map(|results| Value::Array(results.iter().map(|r| r.to_json()).collect()))
                        .map_err(from_documents)
                })
            }
            _ => Err(host_error(
                404,
                "not_found",
                format!("no host operation `{op}`"),
            )),
        }
    }
}

impl HostBridge {
    fn storage(&self, op: &str, args: &str) -> Result<Value, HostError> {
        use base64::Engine;
        let args: StorageArgs = serde_json::from_str(args)
            .map_err(|e| host_error(400, "bad_request", format!("{op}: {e}")))?;
        let caller = self.caller_for(&args.run_as)?;
        let Some(storage) = self.storage.clone() else {
            return Err(host_error(503, "unavailable", "storage is not available"));
        };
        let bucket = args.bucket;
        let key = || {
            let text = args
                .key
                .as_deref()
                .ok_or_else(|| host_error(400, "bad_request", format!("{op} needs a key")))?;
            ObjectKey::parse(text).map_err(|m| host_error(400, "bad_request", m))
        };
        match op {
            "storage.put" => {
                let key = key()?;
                let (bytes, default_type) = match (args.text, args.binary) {
                    (Some(text), None) => (text.into_bytes(), "text/plain; charset=utf-8"),
                    (None, Some(binary)) => (latin1_bytes(&binary)?, "application/octet-stream"),
                    _ => {
                        return Err(host_error(
                            400,
                            "bad_request",
                            "the body is a string, a Uint8Array or an ArrayBuffer",
                        ));
                    }
                };
                if bytes.len() as u64 > MAX_FUNCTION_OBJECT {
                    return Err(too_big());
                }
                let content_type = storage::check_content_type(
                    args.content_type.as_deref().unwrap_or(default_type),
                )
                .map_err(from_storage)?;
                let metadata = storage::check_metadata(args.metadata.unwrap_or_default())
                    .map_err(from_storage)?;
                let size = bytes.len() as u64;
                self.block(async move {
                    let chunk: Result<bytes::Bytes, std::io::Error> = Ok(bytes.into());
                    let upload = Upload {
                        key,
                        content_type,
                        metadata,
                        declared_size: Some(size),
                        body: Box::pin(futures_util::stream::once(async move { chunk })),
                    };
                    let (row, _) = storage
                        .put(Actor::Caller(&caller), &bucket, upload)
                        .await
                        .map_err(from_storage)?;
                    Ok(storage::object_json(&row))
                })
            }
            "storage.head" | "storage.get" => {
                let key = key()?;
                let read = op == "storage.get";
                self.block(async move {
                    let row = match storage.head(Actor::Caller(&caller), &bucket, &key).await {
                        Ok(row) => row,
                        Err(storage::Error::NotFound) => return Ok(Value::Null),
                        Err(e) => return Err(from_storage(e)),
                    };
                    let object = storage::object_json(&row);
                    if !read {
                        return Ok(object);
                    }
                    let size = u64::try_from(row.size).unwrap_or(u64::MAX);
                    if size > MAX_FUNCTION_OBJECT {
                        return Err(too_big());
                    }
                    let mut body = Vec::with_capacity(size as usize);
                    let mut stream = storage.read(&row, 0, size).await.map_err(from_storage)?;
                    use futures_util::StreamExt;
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(|e| {
                            tracing::warn!(error = %e, "reading an object for a function");
                            host_error(500, "internal", "internal error")
                        })?;
                        if (body.len() + chunk.len()) as u64 > MAX_FUNCTION_OBJECT {
                            return Err(too_big());
                        }
                        body.extend_from_slice(&chunk);
                    }
                    let body = base64::engine::general_purpose::STANDARD.encode(body);
                    Ok(serde_json::json!({ "object": object, "body": body }))
                })
            }
            "storage.delete" => {
                let key = key()?;
                self.block(async move {
                    match storage.delete(Actor::Caller(&caller), &bucket, &key).await {
                        Ok(()) => Ok(Value::Bool(true)),
                        Err(storage::Error::NotFound) => Ok(Value::Bool(false)),
                        Err(e) => Err(from_storage(e)),
                    }
                })
            }
            "storage.list" => {
                let prefix = args.prefix.unwrap_or_default();
                let limit = args.limit.unwrap_or(100);
                let cursor = args.cursor;
                self.block(async move {
                    let (rows, next) = storage
                        .list(&caller, &bucket, &prefix, cursor.as_deref(), limit)
                        .await
                        .map_err(from_storage)?;
                    let items: Vec<Value> = rows.iter().map(storage::object_json).collect();
                    Ok(serde_json::json!({ "items": items, "next_cursor": next }))
                })
            }
            "storage.sign" => {
                let key = key()?;
                let method = args
                    .method
                    .unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase();
                let ttl = std::time::Duration::from_secs(args.expires_in.unwrap_or(3600));
                self.block(async move {
                    let (url, expires) = storage
                        .sign(&caller, &bucket, &key, &method, ttl)
                        .await
                        .map_err(from_storage)?;
                    Ok(serde_json::json!({ "url": url, "method": method, "expires_at": expires }))
                })
            }
            _ => Err(host_error(
                404,
                "not_found",
                format!(
                    "no host operation `{}`",
                    crate::query::shorten_for_message(op)
                ),
            )),
        }
    }
}

fn too_big() -> HostError {
    host_error(
        413,
        "payload_too_large",
        format!(
            "functions read and write objects of at most {} MiB; sign a URL for larger ones",
            MAX_FUNCTION_OBJECT >> 20
        ),
    )
}

impl Bridge for HostBridge {
    fn op(&mut self, name: &str, args: &str) -> Result<Value, HostError> {
        if Instant::now() >= self.deadline {
            return Err(host_error(
                504,
                "function_timeout",
                "the function ran out of time",
            ));
        }
        match name {
            n if n.starts_with("db.") => self.db(n, args),
            n if n.starts_with("storage.") => self.storage(n, args),
            "fetch" => match &self.fetch {
                Some(fetcher) => {
                    let fetcher = fetcher.clone();
                    let args = args.to_owned();
                    self.block(async move { fetcher.fetch(&args).await })
                }
                None => Err(host_error(403, "forbidden", "fetch is not enabled")),
            },
            _ => Err(host_error(
                404,
                "not_found",
                format!(
                    "no host operation `{}`",
                    crate::query::shorten_for_message(name)
                ),
            )),
        }
    }

    fn log(&mut self, level: Level, mut message: String) {
        let Ok(mut logs) = self.logs.lock() else {
            return;
        };
        if logs.lines.len() >= MAX_LOG_LINES {
            logs.dropped += 1;
            return;
        }
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        logs.lines.push(Line {
            level,
            message,
            at: crate::util::time::now(),
        });
    }
}
