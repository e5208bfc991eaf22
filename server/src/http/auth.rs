//! `/v1/auth`: sign-up, sign-in, sessions, the current user, email flows, WeChat, OAuth;
//! and `/.well-known/jwks.json`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client_ip::ClientInfo;
use super::error::{ApiError, ErrorBody};
use super::extract::{Auth, Json, PathParams, QueryParams};
use crate::app::AppState;
use crate::auth::RequestCtx;

fn ctx(client: ClientInfo) -> RequestCtx {
    RequestCtx {
        ip: client.ip,
        user_agent: client.user_agent,
    }
}

/// Session responses must never be cached anywhere.
fn session(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupBody {
    pub email: String,
    pub password: String,
    /// Profile data, a JSON object.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// POST /v1/auth/signup — create a user and sign in.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupBody,
    responses((status = 201, description = "`{access_token, refresh_token, token_type, expires_in, user}`", body = Object),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn signup(
    State(app): State<AppState>,
    client: ClientInfo,
    Json(body): Json<SignupBody>,
) -> Result<Response, ApiError> {
    let s = app
        .auth
        .signup(&body.email, &body.password, body.data, &ctx(client))
        .await?;
    Ok(session(StatusCode::CREATED, s.to_json()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// POST /v1/auth/login — sign in with email and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "a session", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(app): State<AppState>,
    client: ClientInfo,
    Json(body): Json<Credentials>,
) -> Result<Response, ApiError> {
    let s = app
        .auth
        .login(&body.email, &body.password, &ctx(client))
        .await?;
    Ok(session(StatusCode::OK, s.to_json()))
}

/// POST /v1/auth/anonymous — create an anonymous user and sign in.
#[utoipa::path(post, path = "/v1/auth/anonymous", tag = "auth",
    responses((status = 201, description = "a session", body = Object), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn anonymous(
    State(app): State<AppState>,
    client: ClientInfo,
) -> Result<Response, ApiError> {
    let s = app.auth.anonymous(&ctx(client)).await?;
    Ok(session(StatusCode::CREATED, s.to_json()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

/// POST /v1/auth/refresh — spend the refresh token for a new session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, description = "a session", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn refresh(
    State(app): State<AppState>,
    client: ClientInfo,
    Json(body): Json<RefreshBody>,
) -> Result<Response, ApiError> {
    let s = app.auth.refresh(&body.refresh_token, &ctx(client)).await?;
    Ok(session(StatusCode::OK, s))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutBody {
    pub refresh_token: Option<String>,
    /// End every session of the user.
    #[serde(default)]
    pub all: bool,
}

/// POST /v1/auth/logout — end this session (or the one of `refresh_token`, or `all`).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = Option<LogoutBody>,
    responses((status = 204, description = "signed out"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn logout(
    State(app): State<AppState>,
    Auth(principal): Auth,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body: LogoutBody = if body.iter().all(u8::is_ascii_whitespace) {
        LogoutBody::default()
    } else {
        super::extract::parse_json(&body)?
    };
    app.auth
        .logout(&principal, body.refresh_token.as_deref(), body.all)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /v1/auth/user — the signed-in user.
#[utoipa::path(get, path = "/v1/auth/user", tag = "auth",
    responses((status = 200, description = "`{id, email, email_verified, anonymous, role, data, created_at}`", body = Object),
              (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_user(
    State(app): State<AppState>,
    Auth(principal): Auth,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        app.auth.current_user(&principal).await?.to_json(),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatchBody {
    pub email: Option<String>,
    pub password: Option<String>,
    /// Required to change the email or password of an account that has a password.
    pub current_password: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// PATCH /v1/auth/user — change email, password or data.
#[utoipa::path(patch, path = "/v1/auth/user", tag = "auth", request_body = UserPatchBody,
    responses((status = 200, description = "the user", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(app): State<AppState>,
    Auth(principal): Auth,
    Json(body): Json<UserPatchBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let user = app
        .auth
        .update_user(
            &principal,
            body.email.as_deref(),
            body.password.as_deref(),
            body.current_password.as_deref(),
            body.data,
        )
        .await?;
    Ok(axum::Json(user.to_json()))
}

/// POST /v1/auth/link — give an anonymous user an email and password (same id and data).
#[utoipa::path(post, path = "/v1/auth/link", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "a new session", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn link(
    State(app): State<AppState>,
    Auth(principal): Auth,
    client: ClientInfo,
    Json(body): Json<Credentials>,
) -> Result<Response, ApiError> {
    let s = app
        .auth
        .link(&principal, &body.email, &body.password, &ctx(client))
        .await?;
    Ok(session(StatusCode::OK, s.to_json()))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    pub email: Option<String>,
}

/// POST /v1/auth/verify/request — mail a verification token (to the signed-in user, or to
/// `email`; the answer does not say whether the account exists).
#[utoipa::path(post, path = "/v1/auth/verify/request", tag = "auth", request_body = EmailBody,
    responses((status = 202, description = "accepted", body = Object), (status = 400, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn verify_request(
    State(app): State<AppState>,
    Auth(principal): Auth,
    client: ClientInfo,
    body: axum::body::Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let body: EmailBody = if body.iter().all(u8::is_ascii_whitespace) {
        EmailBody::default()
    } else {
        super::extract::parse_json(&body)?
    };
    app.auth
        .request_verification(&principal, body.email.as_deref(), &ctx(client))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": true })),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub token: String,
}

/// POST /v1/auth/verify — confirm an email address with the mailed token.
#[utoipa::path(post, path = "/v1/auth/verify", tag = "auth", request_body = TokenBody,
    responses((status = 200, description = "the user", body = Object), (status = 400, body = ErrorBody)))]
pub async fn verify(
    State(app): State<AppState>,
    Json(body): Json<TokenBody>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        app.auth.verify_email(&body.token).await?.to_json(),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequestBody {
    pub email: String,
}

/// POST /v1/auth/reset/request — mail a password-reset token (same answer whether or not
/// the account exists).
#[utoipa::path(post, path = "/v1/auth/reset/request", tag = "auth", request_body = ResetRequestBody,
    responses((status = 202, description = "accepted", body = Object), (status = 400, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn reset_request(
    State(app): State<AppState>,
    client: ClientInfo,
    Json(body): Json<ResetRequestBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    app.auth.request_reset(&body.email, &ctx(client))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": true })),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    pub token: String,
    pub password: String,
}

/// POST /v1/auth/reset — set a new password with the mailed token; ends every session.
#[utoipa::path(post, path = "/v1/auth/reset", tag = "auth", request_body = ResetBody,
    responses((status = 204, description = "done"), (status = 400, body = ErrorBody)))]
pub async fn reset(
    State(app): State<AppState>,
    Json(body): Json<ResetBody>,
) -> Result<StatusCode, ApiError> {
    app.auth.reset_password(&body.token, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeChatBody {
    /// The code from `wx.login()`.
    pub code: String,
}

/// POST /v1/auth/wechat — sign in from a WeChat mini-program.
#[utoipa::path(post, path = "/v1/auth/wechat", tag = "auth", request_body = WeChatBody,
    responses((status = 200, description = "a session", body = Object), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn wechat(
    State(app): State<AppState>,
    client: ClientInfo,
    Json(body): Json<WeChatBody>,
) -> Result<Response, ApiError> {
    let s = app.auth.wechat(&body.code, &ctx(client)).await?;
    Ok(session(StatusCode::OK, s.to_json()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OAuthStartParams {
    /// Where to send the browser afterwards (must be listed in `auth.redirect_urls`).
    pub redirect_to: Option<String>,
}

/// GET /v1/auth/oauth/{provider} — start signing in with a provider (302).
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}", tag = "auth",
    params(("provider" = String, Path), OAuthStartParams),
    responses((status = 302, description = "to the provider"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn oauth_start(
    State(app): State<AppState>,
    PathParams(provider): PathParams<String>,
    QueryParams(params): QueryParams<OAuthStartParams>,
) -> Result<Response, ApiError> {
    let location = app
        .auth
        .oauth_start(&provider, params.redirect_to.as_deref())
        .await?;
    redirect(&location)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OAuthCallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
}

/// GET /v1/auth/oauth/{provider}/callback — the provider sends the browser back here.
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path), OAuthCallbackParams),
    responses((status = 200, description = "a session (no `redirect_to` was given)", body = Object),
              (status = 302, description = "to `redirect_to`, the session in the fragment"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn oauth_callback(
    State(app): State<AppState>,
    PathParams(provider): PathParams<String>,
    QueryParams(params): QueryParams<OAuthCallbackParams>,
    client: ClientInfo,
) -> Result<Response, ApiError> {
    let (s, redirect_to) = app
        .auth
        .oauth_callback(
            &provider,
            params.code.as_deref(),
            params.state.as_deref(),
            params.error.as_deref(),
            &ctx(client),
        )
        .await?;
    match redirect_to {
        Some(to) => redirect(&format!(
            "{to}#{}",
            crate::auth::oauth::session_fragment(&s)
        )),
        None => Ok(session(StatusCode::OK, s.to_json())),
    }
}

fn redirect(location: &str) -> Result<Response, ApiError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(location)
            .map_err(|_| ApiError::internal("BUG: redirect location not a header"))?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((StatusCode::FOUND, headers).into_response())
}

/// GET /.well-known/jwks.json — the keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "a JWK set", body = Object)))]
pub async fn jwks(State(app): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(app.auth.jwks()),
    )
        .into_response()
}
