//! `/v1/admin`: collections and the change log (admins and the service key only).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use super::error::{ApiError, ErrorBody};
use super::extract::{AdminAuth, Json, PathParams, QueryParams};
use crate::app::AppState;
use crate::documents::collection::{CollectionSpec, IndexSpec, RuleSpec};
use crate::rules::playground::{RuleTest, TestError};

/// A collection to declare.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionInput {
    pub name: String,
    /// CEL rules; a missing one allows only admins and the service key.
    #[serde(default)]
    pub rules: RuleSpec,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
    /// JSON Schema for the user fields.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
}

/// Changes to a collection: only the fields given change; `"schema": null` removes it.
/// `rules` is merged per operation: a rule given as `null` is removed.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CollectionPatch {
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub rules: Option<Map<String, Value>>,
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
        rules: input.rules,
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
    if let Some(rules) = patch.rules {
        spec.rules = merge_rules(&spec.rules, rules)?;
    }
    if let Some(indexes) = patch.indexes {
        spec.indexes = indexes;
    }
    if let Some(schema) = patch.schema {
        spec.schema = schema;
    }
    let collection = app.catalog.update(&name, spec).await?;
    Ok(axum::Json(collection.to_json()))
}

/// Applies a rules patch: each given operation is set, or removed when `null`.
fn merge_rules(current: &RuleSpec, patch: Map<String, Value>) -> Result<RuleSpec, ApiError> {
    let mut merged = serde_json::to_value(current)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    for (op, rule) in patch {
        match rule {
            Value::Null => {
                merged.remove(&op);
            }
            rule => {
                merged.insert(op, rule);
            }
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| {
        ApiError::validation(format!(
            "`rules` maps list, get, create, update and delete to CEL strings: {e}"
        ))
    })
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
    /// Plan the query as this signed-in user would run it, with the collection's `list`
    /// rule applied (`{id, role, claims, …}`, as rules see `auth`).
    #[schema(value_type = Option<Object>)]
    pub auth: Option<Value>,
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
    let principal = match &body.auth {
        None | Some(Value::Null) => principal,
        Some(auth) => crate::auth::Principal::User(
            crate::auth::UserAuth::from_rule_value(auth).map_err(ApiError::bad_request)?,
        ),
    };
    let caller = crate::auth::Caller::internal(principal);
    let request = crate::documents::QueryRequest {
        filter: body.filter.unwrap_or(Value::Null),
        sort: body.sort,
        limit: body.limit,
        ..Default::default()
    };
    let (plan, used) = app
        .documents
        .explain(&caller, &name, request, body.discourage_seqscan)
        .await?;
    Ok(axum::Json(json!({ "plan": plan, "indexes_used": used })))
}

/// POST /v1/admin/rules/test — evaluate a rule against given inputs (the rules playground).
#[utoipa::path(post, path = "/v1/admin/rules/test", tag = "admin",
    request_body = RuleTest,
    responses((status = 200, description = "`{allow, reason}`, and `passed` when `expect` was given", body = Object),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn test_rule(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    Json(test): Json<RuleTest>,
) -> Result<axum::Json<Value>, ApiError> {
    let stored = |collection: &str, op: &str| -> Result<Option<String>, String> {
        let coll = app.catalog.require(collection).map_err(|e| e.to_string())?;
        let op = crate::documents::access::Operation::parse(op)
            .ok_or_else(|| "`operation` is list, get, create, update or delete".to_owned())?;
        Ok(coll.spec.rules.source(op).map(str::to_owned))
    };
    match test.run(&stored) {
        Ok(outcome) => {
            let mut body = json!({
                "allow": outcome.decision.allow,
                "reason": outcome.decision.reason,
            });
            if let Some(passed) = outcome.passed {
                body["passed"] = json!(passed);
            }
            Ok(axum::Json(body))
        }
        Err(TestError::Input(message)) => Err(ApiError::bad_request(message)),
        Err(TestError::Rule(e)) => {
            Err(ApiError::validation(e.message.clone())
                .with_details(json!({ "position": e.position })))
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ChangesParams {
    /// Return changes with a greater seq (default 0).
    pub after: Option<i64>,
    /// At most this many (default 100, max 1000).
    #[param(minimum = 1, maximum = 1000)]
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
    let limit = super::extract::page_limit(params.limit, 100, 1000)?;
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminLoginBody {
    pub email: String,
    pub password: String,
}

/// POST /v1/admin/login — an admin session.
#[utoipa::path(post, path = "/v1/admin/login", tag = "admin", request_body = AdminLoginBody,
    responses((status = 200, description = "`{access_token, refresh_token, token_type, expires_in, admin}`", body = Object),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn admin_login(
    State(app): State<AppState>,
    client: super::client_ip::ClientInfo,
    Json(body): Json<AdminLoginBody>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let ctx = crate::auth::RequestCtx {
        ip: client.ip,
        user_agent: client.user_agent,
    };
    let session = app
        .auth
        .admin_login(&body.email, &body.password, &ctx)
        .await?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(session),
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsersParams {
    /// Users whose email or id starts with this.
    pub search: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1-200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// GET /v1/admin/users — list and search users.
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin", params(UsersParams),
    responses((status = 200, description = "`{items, next_cursor}`", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    QueryParams(params): QueryParams<UsersParams>,
) -> Result<axum::Json<Value>, ApiError> {
    let (users, next) = app
        .auth
        .list_users(
            params.search.as_deref(),
            params.cursor.as_deref(),
            super::extract::page_limit(params.limit, 50, 200)?,
        )
        .await?;
    let items: Vec<Value> = users.iter().map(|u| u.to_admin_json()).collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": next })))
}

/// GET /v1/admin/users/{id} — one user.
#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(app.auth.get_user(&id).await?.to_admin_json()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserAdminPatch {
    pub role: Option<String>,
    /// Custom claims: they appear in the access token and to rules as `auth.claims`.
    #[schema(value_type = Option<Object>)]
    pub claims: Option<Value>,
    /// Disabled users cannot sign in or refresh; their sessions end.
    pub disabled: Option<bool>,
    pub email_verified: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// PATCH /v1/admin/users/{id} — set role, claims, disabled, email_verified or data.
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    request_body = UserAdminPatch,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(id): PathParams<String>,
    Json(body): Json<UserAdminPatch>,
) -> Result<axum::Json<Value>, ApiError> {
    let patch = crate::auth::admin::UserPatch {
        role: body.role,
        claims: body.claims,
        disabled: body.disabled,
        email_verified: body.email_verified,
        data: body.data,
    };
    Ok(axum::Json(
        app.auth.patch_user(&id, patch).await?.to_admin_json(),
    ))
}

/// DELETE /v1/admin/users/{id} — delete a user, their sessions and identities.
#[utoipa::path(delete, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    app.auth.delete_user(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /v1/admin/users/{id}/revoke-sessions — end every session of a user.
#[utoipa::path(post, path = "/v1/admin/users/{id}/revoke-sessions", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, description = "`{revoked: n}`", body = Object), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_user_sessions(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<Value>, ApiError> {
    app.auth.get_user(&id).await?;
    let revoked = app.auth.revoke_sessions(&id).await?;
    Ok(axum::Json(json!({ "revoked": revoked })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MailParams {
    /// 1-500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// GET /v1/admin/mail — the outbox (mail not sent through SMTP), newest first.
#[utoipa::path(get, path = "/v1/admin/mail", tag = "admin", params(MailParams),
    responses((status = 200, description = "`[{to, subject, text, created_at}]`", body = Vec<Object>),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_mail(
    State(app): State<AppState>,
    AdminAuth(_): AdminAuth,
    QueryParams(params): QueryParams<MailParams>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(Value::Array(
        app.auth
            .outbox(super::extract::page_limit(params.limit, 100, 500)?)
            .await?,
    )))
}
