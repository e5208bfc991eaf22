//! `/v1/storage`: uploads (raw and multipart), downloads with ranges and validators,
//! listing, signed URLs; `/v1/admin/buckets`: declaring buckets.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ErrorBody};
use super::extract::{AdminAuth, CallerAuth, Json, PathParams, QueryParams};
use crate::app::AppState;
use crate::auth::Caller;
use crate::storage::bucket::{BucketRules, BucketSpec};
use crate::storage::{Actor, ObjectKey, Upload, object_json};
use crate::store::storage::ObjectRow;

/// The object routes: a key may contain `/`, which utoipa's router cannot express, so
/// they are plain axum routes documented through [`StorageDoc`].
pub fn object_routes() -> Router<AppState> {
    use axum::extract::DefaultBodyLimit;
    use axum::handler::Handler as _;
    // Bodies are streamed and limited by the bucket's `max_size`; the sign request is small.
    let sign = sign_url.layer(DefaultBodyLimit::max(64 * 1024));
    Router::new()
        .route("/v1/storage/{bucket}", get(list_objects).post(post_object))
        .route(
            "/v1/storage/{bucket}/{*key}",
            get(get_object)
                .head(get_object)
                .put(put_object)
                .delete(delete_object)
                .post(sign),
        )
        .layer(DefaultBodyLimit::disable())
}

/// The OpenAPI description of the object routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    put_object_doc,
    get_object_doc,
    delete_object_doc,
    list_objects_doc,
    post_object_doc,
    sign_url_doc
))]
pub struct StorageDoc;

#[utoipa::path(put, path = "/v1/storage/{bucket}/{key}", tag = "storage",
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain `/`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bytes, streamed; `X-Meta-*` headers become metadata"),
    responses((status = 201, body = Object), (status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
#[allow(dead_code)]
fn put_object_doc() {}

#[utoipa::path(get, path = "/v1/storage/{bucket}/{key}", tag = "storage",
    description = "Download (`Range`, `If-None-Match`); also `HEAD`.",
    params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 200), (status = 206), (status = 304), (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
#[allow(dead_code)]
fn get_object_doc() {}

#[utoipa::path(delete, path = "/v1/storage/{bucket}/{key}", tag = "storage",
    params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn delete_object_doc() {}

#[utoipa::path(get, path = "/v1/storage/{bucket}", tag = "storage",
    params(("bucket" = String, Path), ListParams),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn list_objects_doc() {}

#[utoipa::path(post, path = "/v1/storage/{bucket}", tag = "storage",
    description = "Browser upload: multipart/form-data with a `file` field and an optional `key` field.",
    params(("bucket" = String, Path)),
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[allow(dead_code)]
fn post_object_doc() {}

#[utoipa::path(post, path = "/v1/storage/{bucket}/sign", tag = "storage",
    params(("bucket" = String, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn sign_url_doc() {}

/// A signed URL's query parameters (other parameters, such as a cache buster, are
/// ignored: downloads are often linked with extra ones).
#[derive(Debug, Default, Deserialize)]
struct SignedParams {
    expires: Option<i64>,
    signer: Option<String>,
    sig: Option<String>,
}

fn parse_key(key: &str) -> Result<ObjectKey, ApiError> {
    ObjectKey::parse(key).map_err(ApiError::bad_request)
}

/// The caller, or the holder of a valid signed URL for `method`.
async fn actor_for(
    app: &AppState,
    request: &mut axum::http::request::Parts,
    method: &str,
    bucket: &str,
    key: &ObjectKey,
) -> Result<ActorOwned, ApiError> {
    use axum::extract::FromRequestParts;
    let QueryParams(params) = QueryParams::<SignedParams>::from_request_parts(request, app).await?;
    if let Some(sig) = &params.sig {
        let expires = params
            .expires
            .ok_or_else(|| ApiError::from(crate::storage::Error::BadSignature))?;
        let signer = app.storage.verify(
            method,
            bucket,
            key,
            expires,
            params.signer.as_deref().unwrap_or(""),
            sig,
        )?;
        return Ok(ActorOwned::Signed(signer));
    }
    let CallerAuth(caller) = CallerAuth::from_request_parts(request, app).await?;
    Ok(ActorOwned::Caller(caller))
}

enum ActorOwned {
    Caller(Caller),
    Signed(Option<String>),
}

impl ActorOwned {
    fn actor(&self) -> Actor<'_> {
        match self {
            ActorOwned::Caller(c) => Actor::Caller(c),
            ActorOwned::Signed(s) => Actor::Signed { signer: s.clone() },
        }
    }
}

/// The most of a refused upload's body read before answering.
const DRAIN_MAX: usize = 1 << 20;

/// Reads and drops what is left of a refused upload's body (at most 1 MiB, for at most a
/// second) before the error is sent; true when the whole body was read. Closing a
/// connection with unread bytes makes the kernel reset it, and a client still sending would
/// often lose the answer (a refusal from the declared size, the quota or a rule, sent
/// before the body was read). A larger rest is left unread: see [`refusal`].
async fn drain(body: &mut axum::body::BodyDataStream) -> bool {
    let mut read = 0;
    tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while read < DRAIN_MAX {
            match body.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                Some(Err(_)) => return false,
                None => return true,
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// [`drain`] for a browser form: the rest of its fields, within the same bounds.
async fn drain_form(form: &mut Multipart) -> bool {
    let mut read = 0;
    tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while read < DRAIN_MAX {
            let mut field = match form.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => return true,
                Err(_) => return false,
            };
            while let Ok(Some(chunk)) = field.chunk().await {
                read += chunk.len();
                if read >= DRAIN_MAX {
                    return false;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// The error response for a refused upload. When part of its body is still unread the
/// server closes the connection after answering, so the answer says `Connection: close`:
/// a keep-alive client (the SDKs) must not send its next request on it.
fn refusal(e: crate::storage::Error, whole_body_read: bool) -> Response {
    let mut response = ApiError::from(e).into_response();
    if !whole_body_read {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn put_object(
    State(app): State<AppState>,
    PathParams((bucket, key)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = parse_key(&key)?;
    let (mut parts, body) = request.into_parts();
    let actor = actor_for(&app, &mut parts, "PUT", &bucket, &key).await?;
    let headers = &parts.headers;
    let declared_size = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body.into_data_stream();
    let upload = Upload {
        key,
        content_type: content_type(headers)?,
        metadata: metadata(headers)?,
        declared_size,
        body: Box::pin((&mut body).map_err(std::io::Error::other)),
    };
    let stored = app.storage.put(actor.actor(), &bucket, upload).await;
    let (row, created) = match stored {
        Ok(stored) => stored,
        Err(e) => {
            let whole = drain(&mut body).await;
            return Ok(refusal(e, whole));
        }
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(object_json(&row))).into_response())
}

/// The upload's content type: as sent (checked to be a `type/subtype`), or octet-stream.
fn content_type(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get(header::CONTENT_TYPE) {
        None => Ok("application/octet-stream".into()),
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Content-Type must be ASCII"))?;
            Ok(crate::storage::check_content_type(text)?)
        }
    }
}

/// `X-Meta-Name: value` headers → `{"name": "value"}`.
fn metadata(headers: &HeaderMap) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (name, value) in headers {
        if let Some(field) = name.as_str().strip_prefix("x-meta-") {
            let value = value
                .to_str()
                .map_err(|_| ApiError::bad_request("X-Meta-* values must be visible ASCII"))?;
            out.insert(field.to_owned(), Value::String(value.to_owned()));
        }
    }
    Ok(crate::storage::check_metadata(out)?)
}

async fn post_object(
    State(app): State<AppState>,
    PathParams(bucket): PathParams<String>,
    CallerAuth(caller): CallerAuth,
    request: Request,
) -> Result<Response, ApiError> {
    let mut form = Multipart::from_request(request, &app).await.map_err(|e| {
        ApiError::bad_request(format!("expected multipart/form-data: {}", e.body_text()))
    })?;
    let mut key: Option<String> = None;
    let mut stored: Option<(ObjectRow, bool)> = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed form: {}", e.body_text())))?
    {
        match field.name() {
            Some("key") => {
                let text = field.text().await.map_err(|e| {
                    ApiError::bad_request(format!("malformed form: {}", e.body_text()))
                })?;
                key = Some(text);
            }
            Some("file") if stored.is_none() => {
                let file_name = field.file_name().map(str::to_owned);
                let chosen = key.clone().or(file_name).ok_or_else(|| {
                    ApiError::bad_request("send a `key` field before `file`, or a file name")
                })?;
                let key = parse_key(&chosen)?;
                let content_type = match field.content_type() {
                    Some(text) => crate::storage::check_content_type(text)?,
                    None => "application/octet-stream".into(),
                };
                let body = Box::pin(field.map_err(std::io::Error::other));
                let upload = Upload {
                    key,
                    content_type,
                    metadata: Map::new(),
                    declared_size: None,
                    body,
                };
                match app
                    .storage
                    .put(Actor::Caller(&caller), &bucket, upload)
                    .await
                {
                    Ok(done) => stored = Some(done),
                    Err(e) => {
                        let whole = drain_form(&mut form).await;
                        return Ok(refusal(e, whole));
                    }
                }
            }
            _ => {}
        }
    }
    let (row, created) =
        stored.ok_or_else(|| ApiError::bad_request("the form has no `file` field"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(object_json(&row))).into_response())
}

async fn get_object(
    State(app): State<AppState>,
    PathParams((bucket, key)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = parse_key(&key)?;
    let (mut parts, _) = request.into_parts();
    let actor = actor_for(&app, &mut parts, "GET", &bucket, &key).await?;
    let row = app.storage.head(actor.actor(), &bucket, &key).await?;
    let size = u64::try_from(row.size).unwrap_or(0);
    let etag = format!("\"{}\"", row.etag);
    let mut headers = HeaderMap::new();
    let (served_type, disposition) = serving(&row.content_type);
    headers.insert(header::CONTENT_TYPE, header_value(&served_type));
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(disposition, key.file_name())),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Some(tags) = parts
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && tags.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        })
    {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let range = match parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(text) => match parse_range(text, size) {
            RangeAsk::Whole => None,
            RangeAsk::Part(start, end) => Some((start, end)),
            RangeAsk::Unsatisfiable => {
                headers.insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                );
                let body = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("the object has {size} bytes"),
                );
                return Ok((headers, body).into_response());
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{size}")),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    headers.insert(header::CONTENT_LENGTH, header_value(&len.to_string()));
    if parts.method == Method::HEAD {
        return Ok((status, headers).into_response());
    }
    if range.is_none() {
        let disposition = content_disposition(disposition, key.file_name());
        if let Some(url) = app
            .storage
            .direct_url(&row, &served_type, &disposition)
            .await?
        {
            return Ok(
                (StatusCode::FOUND, [(header::LOCATION, header_value(&url))]).into_response(),
            );
        }
    }
    let mut stream = app.storage.read(&row, start, len).await?;
    // Hand hyper the first chunk ready, so it goes out with the headers in one write:
    // headers alone followed by a small body chunk would wait out the peer's delayed ACK
    // (Nagle), 40 ms per small download.
    let first = match stream.next().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => return Err(ApiError::internal(format!("reading a blob: {e}"))),
        None => None,
    };
    let body = futures_util::stream::iter(first.map(Ok)).chain(stream);
    Ok((status, headers, Body::from_stream(body)).into_response())
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// Types a browser would run as a page (or script) are served as bytes, as attachments.
fn serving(content_type: &str) -> (String, &'static str) {
    let essence = crate::storage::bucket::essence(content_type);
    const ACTIVE: [&str; 8] = [
        "text/html",
        "image/svg+xml",
        "application/xhtml+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "application/javascript",
        "text/javascript",
    ];
    if ACTIVE.contains(&essence.as_str()) || essence.ends_with("+xml") {
        return ("application/octet-stream".into(), "attachment");
    }
    let inline = matches!(
        essence.as_str(),
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "text/plain"
            | "application/pdf"
    ) || essence.starts_with("audio/")
        || essence.starts_with("video/");
    (
        content_type.to_owned(),
        if inline { "inline" } else { "attachment" },
    )
}

/// `inline|attachment; filename="…"; filename*=UTF-8''…`, safe for any file name.
fn content_disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range. Malformed or multiple ranges are ignored (the whole object is sent,
/// as RFC 9110 allows); a range past the end is unsatisfiable.
fn parse_range(text: &str, size: u64) -> RangeAsk {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix: the last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        if n == 0 || size == 0 {
            return RangeAsk::Unsatisfiable;
        }
        return RangeAsk::Part(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(end) if end >= start => end.min(size.saturating_sub(1)),
            _ => return RangeAsk::Whole,
        }
    };
    if start >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start, end)
}

async fn delete_object(
    State(app): State<AppState>,
    PathParams((bucket, key)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = parse_key(&key)?;
    let (mut parts, _) = request.into_parts();
    let actor = actor_for(&app, &mut parts, "DELETE", &bucket, &key).await?;
    app.storage.delete(actor.actor(), &bucket, &key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Keys starting with this.
    prefix: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

async fn list_objects(
    State(app): State<AppState>,
    PathParams(bucket): PathParams<String>,
    CallerAuth(caller): CallerAuth,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let (rows, next) = app
        .storage
        .list(
            &caller,
            &bucket,
            params.prefix.as_deref().unwrap_or(""),
            params.cursor.as_deref(),
            super::extract::page_limit(params.limit, 100, 1000)?,
        )
        .await?;
    let items: Vec<Value> = rows.iter().map(object_json).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": next })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInput {
    key: String,
    method: String,
    /// Seconds (default 3600).
    expires_in: Option<u64>,
}

/// `POST /v1/storage/{bucket}/sign`. It shares the object route (an object may be named
/// `sign` and is read, written and deleted like any other); other keys take no POST.
async fn sign_url(
    State(app): State<AppState>,
    PathParams((bucket, path)): PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    if path != "sign" {
        use axum::response::IntoResponse;
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method",
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::ALLOW,
            axum::http::HeaderValue::from_static("GET, HEAD, PUT, DELETE"),
        );
        return Ok(response);
    }
    let (mut parts, body) = request.into_parts();
    let CallerAuth(caller) = {
        use axum::extract::FromRequestParts;
        CallerAuth::from_request_parts(&mut parts, &app).await?
    };
    let Json(input) =
        Json::<SignInput>::from_request(Request::from_parts(parts, body), &app).await?;
    let key = parse_key(&input.key)?;
    let ttl = std::time::Duration::from_secs(input.expires_in.unwrap_or(3600));
    let (url, expires) = app
        .storage
        .sign(
            &caller,
            &bucket,
            &key,
            &input.method.to_ascii_uppercase(),
            ttl,
        )
        .await?;
    Ok(axum::Json(
        json!({ "url": url, "method": input.method.to_ascii_uppercase(), "expires_at": expires }),
    )
    .into_response())
}

// ---- admin: buckets ----

/// A bucket declaration.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketInput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub rules: Option<Value>,
    pub max_size: Option<u64>,
    #[serde(default)]
    pub content_types: Vec<String>,
}

fn rules_from(value: Option<Value>) -> Result<BucketRules, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(BucketRules::default()),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| ApiError::validation(format!("rules are {{read, write, delete}}: {e}"))),
    }
}

/// POST /v1/admin/buckets — declare a bucket.
#[utoipa::path(post, path = "/v1/admin/buckets", tag = "admin", request_body = BucketInput,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_bucket(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    Json(input): Json<BucketInput>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    if app.storage.bucket(&input.name).is_ok() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the bucket exists; PATCH it",
        ));
    }
    let spec = BucketSpec {
        rules: rules_from(input.rules)?,
        max_size: input.max_size,
        content_types: input.content_types,
    };
    app.storage.put_bucket(&input.name, spec).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(app.storage.bucket(&input.name)?.to_json()),
    ))
}

/// GET /v1/admin/buckets
#[utoipa::path(get, path = "/v1/admin/buckets", tag = "admin",
    responses((status = 200, body = Object)), security(("bearer" = [])))]
pub async fn list_buckets(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
) -> axum::Json<Value> {
    let items: Vec<Value> = app.storage.buckets().iter().map(|b| b.to_json()).collect();
    axum::Json(json!({ "items": items }))
}

/// GET /v1/admin/buckets/{name}
#[utoipa::path(get, path = "/v1/admin/buckets/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_bucket(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(app.storage.bucket(&name)?.to_json()))
}

/// PATCH /v1/admin/buckets/{name} — replace the fields given.
#[utoipa::path(patch, path = "/v1/admin/buckets/{name}", tag = "admin",
    params(("name" = String, Path)), request_body = Object,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_bucket(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
    Json(patch): Json<Map<String, Value>>,
) -> Result<axum::Json<Value>, ApiError> {
    let mut spec = app.storage.bucket(&name)?.spec.clone();
    for (field, value) in patch {
        match field.as_str() {
            "rules" => spec.rules = rules_from(Some(value))?,
            "max_size" => {
                spec.max_size = serde_json::from_value(value)
                    .map_err(|_| ApiError::validation("max_size is a number of bytes or null"))?
            }
            "content_types" => {
                spec.content_types = serde_json::from_value::<Option<Vec<String>>>(value)
                    .map_err(|_| ApiError::validation("content_types is a list of types"))?
                    .unwrap_or_default()
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown field `{}` (rules, max_size, content_types)",
                    crate::query::shorten_for_message(other)
                )));
            }
        }
    }
    app.storage.put_bucket(&name, spec).await?;
    Ok(axum::Json(app.storage.bucket(&name)?.to_json()))
}

/// DELETE /v1/admin/buckets/{name} — the bucket and its objects.
#[utoipa::path(delete, path = "/v1/admin/buckets/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete_bucket(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    app.storage.delete_bucket(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(matches!(
            parse_range("bytes=0-9", 100),
            RangeAsk::Part(0, 9)
        ));
        assert!(matches!(
            parse_range("bytes=90-", 100),
            RangeAsk::Part(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=-10", 100),
            RangeAsk::Part(90, 99)
        ));
        assert!(matches!(
            parse_range("bytes=50-500", 100),
            RangeAsk::Part(50, 99)
        ));
        assert!(matches!(
            parse_range("bytes=999999999-", 100),
            RangeAsk::Unsatisfiable
        ));
        assert!(matches!(
            parse_range("bytes=-0", 100),
            RangeAsk::Unsatisfiable
        ));
        assert!(matches!(parse_range("bytes=5-2", 100), RangeAsk::Whole));
        assert!(matches!(parse_range("bytes=a-b", 100), RangeAsk::Whole));
        assert!(matches!(parse_range("bytes=0-1,3-4", 100), RangeAsk::Whole));
        assert!(matches!(parse_range("items=0-1", 100), RangeAsk::Whole));
    }

    #[test]
    fn dispositions_are_header_safe() {
        let d = content_disposition("attachment", "a\"b\r\nSet-Cookie: x=1.png");
        assert!(HeaderValue::from_str(&d).is_ok(), "{d}");
        assert!(!d.contains('\r') && !d.contains('\n'));
        assert_eq!(
            serving("text/html; charset=utf-8").0,
            "application/octet-stream"
        );
        assert_eq!(serving("image/svg+xml").1, "attachment");
        assert_eq!(serving("image/png").1, "inline");
    }
}
