//! `/v1/functions` (invoking cloud code) and `/v1/admin/functions` (deploying, routing,
//! observing it).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ErrorBody};
use super::extract::{
    AdminAuth, CallerAuth, Json, PathParams, QueryParams, body_rejection, parse_json,
};
use crate::app::AppState;
use crate::functions::{self, InvocationView, LogView, Target, VersionView};

impl From<functions::Error> for ApiError {
    fn from(e: functions::Error) -> Self {
        use functions::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "not_found", m),
            E::BadRequest(m) => Self::bad_request(m),
            E::Validation(m) => Self::new(StatusCode::BAD_REQUEST, "validation_failed", m),
            E::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            E::Rejected { status, message } => Self::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "function_error",
                message,
            ),
            E::Failed => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "function_error", message),
            E::Timeout => Self::new(StatusCode::GATEWAY_TIMEOUT, "function_timeout", message),
            E::Busy => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                e.retry_after = Some(1);
                e
            }
            E::Unavailable(cause) => Self::unavailable(cause),
            E::Internal(cause) => Self::internal(cause),
        }
    }
}

/// The call's `req.data`: the JSON body, or null without one.
fn call_data(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Value, ApiError> {
    let bytes = body.map_err(body_rejection)?;
    if bytes.is_empty() {
        Ok(Value::Null)
    } else {
        parse_json(&bytes)
    }
}

/// Query of `POST /v1/functions/{name}`: admins may pick a version or alias to test.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CallTarget {
    /// Run this version (admins and the service key only).
    version: Option<i64>,
    /// Route through this alias instead of `live` (admins and the service key only).
    alias: Option<String>,
}

/// POST /v1/functions/{name} — runs a callable function; the JSON body is `req.data`.
#[utoipa::path(post, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path), CallTarget),
    request_body = Object,
    responses((status = 200, body = Object, description = "`{result}`"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 500, body = ErrorBody),
              (status = 504, body = ErrorBody)),
    security(("bearer" = []), ()))]
pub async fn call_function(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(name): PathParams<String>,
    QueryParams(target): QueryParams<CallTarget>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let target = match (target.version, target.alias) {
        (None, None) => Target::Live,
        _ if !caller.is_privileged() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only admins may pick a version or alias",
            ));
        }
        (Some(v), _) => Target::Version(v),
        (None, Some(a)) => Target::Alias(a),
    };
    let data = call_data(body)?;
    let result = app.functions.call(&caller, &name, data, target).await?;
    Ok(axum::Json(json!({ "result": result })))
}

/// POST /v1/functions/{name}/async — queues an invocation; 202 `{invocation_id}`.
#[utoipa::path(post, path = "/v1/functions/{name}/async", tag = "functions",
    params(("name" = String, Path)),
    request_body = Object,
    responses((status = 202, body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ()))]
pub async fn call_function_async(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(name): PathParams<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let data = call_data(body)?;
    let id = app.functions.call_async(&caller, &name, data).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "invocation_id": id })),
    ))
}

/// GET /v1/functions/invocations/{id} — status, attempts, result or error of a queued
/// invocation (its caller, or an admin).
#[utoipa::path(get, path = "/v1/functions/invocations/{id}", tag = "functions",
    params(("id" = String, Path)),
    responses((status = 200, body = InvocationView), (status = 404, body = ErrorBody)),
    security(("bearer" = []), ()))]
pub async fn get_invocation(
    State(app): State<AppState>,
    CallerAuth(caller): CallerAuth,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<InvocationView>, ApiError> {
    Ok(axum::Json(app.functions.invocation(&caller, &id).await?))
}

/// Body of `POST /v1/admin/functions/versions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployInput {
    /// `{"main.js": "…source…"}`; top-level `.js`/`.mjs` files are entry modules.
    files: std::collections::BTreeMap<String, String>,
    /// Route `live` entirely to the new version (default true).
    #[serde(default)]
    promote: Option<bool>,
}

/// POST /v1/admin/functions/versions — deploys an immutable version.
#[utoipa::path(post, path = "/v1/admin/functions/versions", tag = "admin",
    request_body = DeployInput,
    responses((status = 201, body = Object, description = "`{version, handlers}`"), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn deploy_version(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    Json(input): Json<DeployInput>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let (version, manifest) = app
        .functions
        .deploy(input.files, input.promote.unwrap_or(true), "api")
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "version": version, "handlers": manifest })),
    ))
}

/// GET /v1/admin/functions/versions — every version, oldest first.
#[utoipa::path(get, path = "/v1/admin/functions/versions", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_versions(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
) -> Result<axum::Json<Value>, ApiError> {
    let items: Vec<VersionView> = app.functions.versions().await?;
    Ok(axum::Json(json!({ "items": items })))
}

/// GET /v1/admin/functions/aliases — every alias and its weights.
#[utoipa::path(get, path = "/v1/admin/functions/aliases", tag = "admin",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_aliases(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(app.functions.aliases().await?))
}

/// Body of `PUT /v1/admin/functions/aliases/{alias}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasInput {
    /// `{"3": 90, "4": 10}`: version number → weight.
    #[schema(value_type = Object)]
    weights: Value,
}

/// PUT /v1/admin/functions/aliases/{alias} — routes an alias (rollback = move it back).
#[utoipa::path(put, path = "/v1/admin/functions/aliases/{alias}", tag = "admin",
    params(("alias" = String, Path)),
    request_body = AliasInput,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_alias(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(alias): PathParams<String>,
    Json(input): Json<AliasInput>,
) -> Result<axum::Json<Value>, ApiError> {
    let weights = functions::routes::Weights::from_value(&input.weights)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", m))?;
    app.functions.set_alias(&alias, weights.clone()).await?;
    Ok(axum::Json(
        json!({ "alias": alias, "weights": weights.to_json() }),
    ))
}

/// Query of the dead-letter list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// GET /v1/admin/functions/dead-letters — jobs that ran out of attempts, newest first.
#[utoipa::path(get, path = "/v1/admin/functions/dead-letters", tag = "admin",
    params(LimitQuery),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_dead_letters(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    QueryParams(q): QueryParams<LimitQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let items = app
        .functions
        .dead_letters(super::extract::page_limit(q.limit, 100, 1000)?)
        .await?;
    Ok(axum::Json(json!({ "items": items })))
}

/// POST /v1/admin/functions/dead-letters/{id}/replay — queues a dead letter again.
#[utoipa::path(post, path = "/v1/admin/functions/dead-letters/{id}/replay", tag = "admin",
    params(("id" = String, Path)),
    responses((status = 202, body = Object), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn replay_dead_letter(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(id): PathParams<String>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    app.functions.replay(&id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "invocation_id": id })),
    ))
}

/// Query of the log list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    function: Option<String>,
    invocation: Option<String>,
    /// Lines after this id (for polling).
    after: Option<i64>,
    /// 1-1000, default 200.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// GET /v1/admin/functions/logs — captured log lines, oldest first.
#[utoipa::path(get, path = "/v1/admin/functions/logs", tag = "admin",
    params(LogQuery),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_logs(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    QueryParams(q): QueryParams<LogQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let items: Vec<LogView> = app
        .functions
        .logs(
            q.function.as_deref(),
            q.invocation.as_deref(),
            q.after.unwrap_or(0),
            super::extract::page_limit(q.limit, 200, 1000)?,
        )
        .await?;
    Ok(axum::Json(json!({ "items": items })))
}
