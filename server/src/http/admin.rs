//! `/v1/admin`: collections and the change log (admins and the service key only).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorBody};
use super::extract::{AdminAuth, Json, PathParams, QueryParams};
use crate::app::AppState;
use crate::documents::collection::{CollectionSpec, IndexSpec};

/// A collection to declare.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionInput {
    pub name: String,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
    /// JSON Schema for the user fields.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
}

/// Changes to a collection: only the fields given change; `"schema": null` removes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionPatch {
    #[serde(default)]
    pub indexes: Option<Vec<IndexSpec>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
}

/// Distinguishes a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Value>>, D::Error> {
    Ok(Some(
        Option::<Value>::deserialize(d)?.filter(|v| !v.is_null()),
    ))
}

/// POST /v1/admin/collections — declare a collection.
#[utoipa::path(post, path = "/v1/admin/collections", tag = "admin",
    request_body = CollectionInput,
    responses((status = 201, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_collection(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    Json(input): Json<CollectionInput>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let spec = CollectionSpec {
        indexes: input.indexes,
        schema: input.schema.filter(|s| !s.is_null()),
    };
    let collection = app.catalog.create(&input.name, spec).await?;
    Ok((StatusCode::CREATED, axum::Json(collection.to_json())))
}

/// GET /v1/admin/collections — every collection.
#[utoipa::path(get, path = "/v1/admin/collections", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_collections(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
) -> axum::Json<Value> {
    let items: Vec<Value> = app.catalog.list().iter().map(|c| c.to_json()).collect();
    axum::Json(json!({ "items": items }))
}

/// GET /v1/admin/collections/{name} — one collection.
#[utoipa::path(get, path = "/v1/admin/collections/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_collection(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(app.catalog.require(&name)?.to_json()))
}

/// PATCH /v1/admin/collections/{name} — change indexes or schema.
#[utoipa::path(patch, path = "/v1/admin/collections/{name}", tag = "admin",
    params(("name" = String, Path)),
    request_body = CollectionPatch,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_collection(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
    Json(patch): Json<CollectionPatch>,
) -> Result<axum::Json<Value>, ApiError> {
    let current = app.catalog.require(&name)?;
    let mut spec = current.spec.clone();
    if let Some(indexes) = patch.indexes {
        spec.indexes = indexes;
    }
    if let Some(schema) = patch.schema {
        spec.schema = schema;
    }
    let collection = app.catalog.update(&name, spec).await?;
    Ok(axum::Json(collection.to_json()))
}

/// DELETE /v1/admin/collections/{name} — delete a collection and its documents.
#[utoipa::path(delete, path = "/v1/admin/collections/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_collection(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(name): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    app.catalog.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A query to explain.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    #[serde(rename = "where", default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    pub sort: Option<String>,
    pub limit: Option<u32>,
    /// Postgres: plan as if the table were large (sequential scans discouraged), to see
    /// whether an index can serve the query.
    #[serde(default)]
    pub discourage_seqscan: bool,
}

/// POST /v1/admin/collections/{name}/explain — the database's plan for a query.
#[utoipa::path(post, path = "/v1/admin/collections/{name}/explain", tag = "admin",
    params(("name" = String, Path)),
    request_body = ExplainBody,
    responses((status = 200, description = "`{plan, indexes_used}`", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn explain_query(
    State(app): State<AppState>,
    AdminAuth(principal): AdminAuth,
    PathParams(name): PathParams<String>,
    Json(body): Json<ExplainBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let request = crate::documents::QueryRequest {
        filter: body.filter.unwrap_or(Value::Null),
        sort: body.sort,
        limit: body.limit,
        ..Default::default()
    };
    let (plan, used) = app
        .documents
        .explain(&principal, &name, request, body.discourage_seqscan)
        .await?;
    Ok(axum::Json(json!({ "plan": plan, "indexes_used": used })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Return changes with a greater seq (default 0).
    pub after: Option<i64>,
    /// At most this many (default 100, max 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeItem {
    /// Position in the log, as a string (it may exceed JavaScript's safe integers).
    pub seq: String,
    pub collection: String,
    pub doc_id: String,
    pub op: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    pub actor: Option<String>,
    pub at: String,
}

/// GET /v1/admin/changes — read the change log in order.
#[utoipa::path(get, path = "/v1/admin/changes", tag = "admin",
    params(ChangesParams),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_changes(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    QueryParams(params): QueryParams<ChangesParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("`limit` is 1 to 1000"));
    }
    let rows = app.changes.after(params.after.unwrap_or(0), limit).await?;
    let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let items: Vec<ChangeItem> = rows
        .into_iter()
        .map(|r| ChangeItem {
            seq: r.seq.to_string(),
            collection: r.collection,
            doc_id: r.doc_id,
            op: r.op,
            before: parse(r.before),
            after: parse(r.after),
            actor: r.actor,
            at: r.at,
        })
        .collect();
    let last_seq = *app.changes.subscribe().borrow();
    Ok(axum::Json(
        json!({ "items": items, "last_seq": last_seq.to_string() }),
    ))
}
