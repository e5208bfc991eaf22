//! `/v1/db`: documents. Handlers parse and answer; the pipeline lives in `documents`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::extract::{CallerAuth, IfMatch, Json, PathParams, QueryParams};
use crate::app::AppState;
use crate::documents::document::Saved;
use crate::documents::{BatchOp, QueryPage, QueryRequest};

/// A response's headers with the document version's `ETag`, and room for `more`.
fn etag(version: i64, more: usize) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(1 + more);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        headers.insert(header::ETAG, v);
    }
    headers
}

/// A page of documents: its text is assembled from the documents' stored text.
fn page_response(page: &QueryPage) -> Response {
    let mut response = Response::new(axum::body::Body::from(page.to_json()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A write's answer: the document's JSON text as the write recorded it, with its ETag.
fn saved(status: StatusCode, saved: Saved) -> Response {
    json_text(status, saved.doc.version, saved.json)
}

/// `json` with its ETag. The header map has room for the headers the outer layers add
/// too (request id, CORS, security headers): growing it on the way out was 3 % of a GET.
fn json_text(status: StatusCode, version: i64, json: String) -> Response {
    let mut headers = etag(version, 11);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut response = Response::new(axum::body::Body::from(json));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// POST /v1/db/{collection} — create a document.
#[utoipa::path(post, path = "/v1/db/{collection}", tag = "documents",
    params(("collection" = String, Path, description = "collection name")),
    request_body(content = Object, description = "the document; may propose `_id`"),
    responses(
        (status = 201, description = "the stored document", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn create_document(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(collection): PathParams<String>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let doc = app.documents.create(&caller, &collection, body).await?;
    Ok(saved(StatusCode::CREATED, doc))
}

/// Query-string form of a query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Filter, as URL-encoded JSON.
    #[serde(rename = "where")]
    #[param(rename = "where")]
    pub filter: Option<String>,
    /// Sort keys, e.g. `-score,title`.
    pub sort: Option<String>,
    /// Page size, 0-1000 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub offset: Option<u64>,
    /// Projection, e.g. `title,author.name`.
    pub fields: Option<String>,
    /// Also count all matches.
    pub count: Option<bool>,
}

/// GET /v1/db/{collection} — query with URL parameters.
#[utoipa::path(get, path = "/v1/db/{collection}", tag = "documents",
    params(("collection" = String, Path), ListParams),
    responses((status = 200, body = QueryPage), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn list_documents(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(collection): PathParams<String>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let filter = match params.filter.as_deref() {
        None | Some("") => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("`where` is not valid JSON: {e}")))?,
    };
    let page = app
        .documents
        .query(
            &caller,
            &collection,
            QueryRequest {
                filter,
                sort: params.sort,
                limit: params.limit,
                cursor: params.cursor,
                offset: params.offset,
                fields: params.fields,
                count: params.count.unwrap_or(false),
            },
        )
        .await?;
    Ok(page_response(&page))
}

/// A list of names, given as `"a,b"` or `["a", "b"]`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum NameList {
    Text(String),
    List(Vec<String>),
}

impl NameList {
    fn joined(self) -> String {
        match self {
            NameList::Text(t) => t,
            NameList::List(items) => items.join(","),
        }
    }
}

/// Body form of a query.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    #[serde(rename = "where", default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    pub sort: Option<NameList>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub offset: Option<u64>,
    pub fields: Option<NameList>,
    #[serde(default)]
    pub count: bool,
}

/// POST /v1/db/{collection}/query — the same query, as a JSON body.
#[utoipa::path(post, path = "/v1/db/{collection}/query", tag = "documents",
    params(("collection" = String, Path)),
    request_body = QueryBody,
    responses((status = 200, body = QueryPage), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn query_documents(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(collection): PathParams<String>,
    Json(body): Json<QueryBody>,
) -> Result<Response, ApiError> {
    let page = app
        .documents
        .query(
            &caller,
            &collection,
            QueryRequest {
                filter: body.filter.unwrap_or(Value::Null),
                sort: body.sort.map(NameList::joined),
                limit: body.limit,
                cursor: body.cursor,
                offset: body.offset,
                fields: body.fields.map(NameList::joined),
                count: body.count,
            },
        )
        .await?;
    Ok(page_response(&page))
}

/// GET /v1/db/{collection}/{id} — read one document.
#[utoipa::path(get, path = "/v1/db/{collection}/{id}", tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn get_document(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams((collection, id)): PathParams<(String, String)>,
) -> Result<Response, ApiError> {
    let doc = app.documents.get(&caller, &collection, &id).await?;
    Ok(json_text(StatusCode::OK, doc.version, doc.json))
}

/// PATCH /v1/db/{collection}/{id} — merge fields or apply update operators.
#[utoipa::path(patch, path = "/v1/db/{collection}/{id}", tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path),
           ("If-Match" = Option<String>, Header, description = "expected `_version`")),
    request_body(content = Object, description = "fields to merge, or operators ($set, $inc, …)"),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 412, body = ErrorBody),
              (status = 413, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn update_document(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams((collection, id)): PathParams<(String, String)>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let doc = app
        .documents
        .update(&caller, &collection, &id, body, if_match)
        .await?;
    Ok(saved(StatusCode::OK, doc))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReplaceParams {
    /// Create the document if it does not exist.
    #[serde(default)]
    pub upsert: bool,
}

/// PUT /v1/db/{collection}/{id} — replace the data (create with `?upsert=true`).
#[utoipa::path(put, path = "/v1/db/{collection}/{id}", tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path), ReplaceParams,
           ("If-Match" = Option<String>, Header, description = "expected `_version`")),
    request_body(content = Object),
    responses((status = 200, description = "replaced", body = Object),
              (status = 201, description = "created by upsert", body = Object),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 412, body = ErrorBody), (status = 413, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn replace_document(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams((collection, id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<ReplaceParams>,
    IfMatch(if_match): IfMatch,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    let (doc, created) = app
        .documents
        .replace(&caller, &collection, &id, body, if_match, params.upsert)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(saved(status, doc))
}

/// DELETE /v1/db/{collection}/{id} — delete a document.
#[utoipa::path(delete, path = "/v1/db/{collection}/{id}", tag = "documents",
    params(("collection" = String, Path), ("id" = String, Path),
           ("If-Match" = Option<String>, Header, description = "expected `_version`")),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn delete_document(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams((collection, id)): PathParams<(String, String)>,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, ApiError> {
    app.documents
        .delete(&caller, &collection, &id, if_match)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub ops: Vec<BatchOp>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// One entry per operation: the stored document, or `{_id, deleted: true}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
}

/// POST /v1/db/batch — up to 500 operations, all or nothing.
#[utoipa::path(post, path = "/v1/db/batch", tag = "documents",
    request_body = BatchBody,
    responses((status = 200, body = BatchResponse),
              (status = 400, description = "the failing operation's error, with `details.index`", body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn batch(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    Json(body): Json<BatchBody>,
) -> Result<axum::Json<BatchResponse>, ApiError> {
    let results = app.documents.batch(&caller, body.ops).await?;
    Ok(axum::Json(BatchResponse {
        results: results.iter().map(|r| r.to_json()).collect(),
    }))
}
