//! Extractors whose rejections are our error envelope: JSON bodies, query strings, path
//! parameters, `If-Match`, and the caller's identity.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::client_ip::ClientInfo;
use super::error::ApiError;
use crate::app::AppState;
use crate::auth::{Caller, Principal};

/// A JSON request body. Accepts `application/json` (or a `+json` type) or no content type;
/// malformed JSON is `bad_request`, an oversized body `payload_too_large`.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(CONTENT_TYPE) {
            let ct = content_type.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send JSON with Content-Type: application/json",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body; the error names the problem and where it is, not the data.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON value",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => "malformed JSON",
            Category::Data => "unexpected JSON",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large("the request body is too large")
    } else {
        ApiError::bad_request("the request body could not be read")
    }
}

/// A query string parsed into `T` (unknown parameters are errors where `T` says so).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
    }
}

/// Path parameters.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// `If-Match: <version>` (quotes and a weak `W/` prefix are accepted).
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value.to_str().unwrap_or("").trim();
        let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        text.parse::<i64>()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| ApiError::bad_request("If-Match must be a document `_version`"))
    }
}

/// The caller, from `Authorization: Bearer …` or `X-Ferrobase-Key`.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        principal(&parts.headers, app).await.map(Auth)
    }
}

/// The caller with its request context (address, method), for paths that run rules.
pub struct CallerAuth(pub Caller);

impl FromRequestParts<AppState> for CallerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = principal(&parts.headers, app).await?;
        let client = ClientInfo::from_request_parts(parts, app).await?;
        Ok(CallerAuth(Caller {
            principal,
            ip: Some(client.ip),
            method: method_name(&parts.method),
            depth: 0,
        }))
    }
}

/// The method as a static name from a fixed set (rules compare it with string literals;
/// metrics use it as a label, which a client-chosen method must not extend): any method
/// outside the standard seven is `OTHER`. No route takes `OPTIONS` (CORS answers
/// preflights), so rules never see it.
pub(crate) fn method_name(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// An admin or the service key; users get 403, anonymous callers 401.
pub struct AdminAuth(pub Principal);

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match principal(&parts.headers, app).await? {
            p if p.is_privileged() => Ok(AdminAuth(p)),
            Principal::Anonymous => Err(ApiError::unauthenticated(
                "the admin API needs an admin token or the service key",
            )),
            _ => Err(ApiError::forbidden(
                "the admin API is for admins and the service key",
            )),
        }
    }
}

async fn principal(headers: &HeaderMap, app: &AppState) -> Result<Principal, ApiError> {
    if let Some(key) = headers.get("x-ferrobase-key") {
        let key = key.to_str().unwrap_or("");
        return if app.service_key.matches(key) {
            Ok(Principal::Service)
        } else {
            Err(ApiError::unauthenticated("invalid service key"))
        };
    }
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(Principal::Anonymous);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(ApiError::unauthenticated(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
    };
    if token.is_empty() {
        return Err(ApiError::unauthenticated("the bearer token is empty"));
    }
    // A JWT has three dot-separated parts; anything else can only be the service key.
    if token.bytes().filter(|b| *b == b'.').count() != 2 {
        return if app.service_key.matches(token) {
            Ok(Principal::Service)
        } else {
            Err(ApiError::unauthenticated("invalid token"))
        };
    }
    Ok(app.auth.authenticate(token).await?)
}

/// A page size: `default` when absent, 400 outside 1..=`max` (never silently clamped, so a
/// client learns the bound instead of getting fewer items than it asked for).
pub fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!("`limit` is 1 to {max}"))),
    }
}
