//! The one place errors become HTTP responses.
//!
//! Which error type to use where: handlers return [`ApiError`]; domain errors convert into
//! it with `?` (the `From` impls below choose the status and the stable code). A 5xx body is
//! always generic — the cause is logged here, once, with the request id, and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::documents;

/// An error response: `{"error": {"code", "message", "details"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
    /// Kept for the log, never sent.
    pub cause: Option<String>,
}

/// The error envelope, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `validation_failed`.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            cause: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// A server fault: the cause goes to the log, the client hears a generic sentence.
    pub fn internal(cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }

    pub fn unavailable(cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the service is temporarily unavailable",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                code = self.code,
                cause = self.cause.as_deref().unwrap_or(&self.message),
                "request failed"
            );
        }
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "details": self.details,
            }
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<documents::Error> for ApiError {
    fn from(e: documents::Error) -> Self {
        use documents::Error as E;
        match e {
            E::CollectionNotFound(name) => Self::new(
                StatusCode::NOT_FOUND,
                "collection_not_found",
                format!("collection `{name}` does not exist"),
            ),
            E::NotFound => Self::not_found("document not found"),
            E::Forbidden(message) => Self::forbidden(message),
            E::BadRequest(message) => Self::bad_request(message),
            E::Validation { message, details } => ApiError {
                details,
                ..Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
            },
            E::Conflict { message, details } => ApiError {
                details,
                ..Self::new(StatusCode::CONFLICT, "conflict", message)
            },
            E::VersionMismatch { current } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                match current {
                    Some(v) => format!("the document is at version {v}"),
                    None => "the document does not exist".to_owned(),
                },
            )
            .with_details(json!({ "current_version": current })),
            E::TooLarge(message) => Self::payload_too_large(message),
            E::Rejected { status, message } => Self::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "function_error",
                message,
            ),
            E::FunctionTimeout(message) => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "function_timeout", message)
            }
            E::Batch { index, error } => {
                let mut inner = ApiError::from(*error);
                let mut details = match inner.details.take() {
                    Some(Value::Object(map)) => map,
                    _ => serde_json::Map::new(),
                };
                details.insert("index".into(), json!(index));
                inner.details = Some(Value::Object(details));
                inner.message = format!("operation {index}: {}", inner.message);
                inner
            }
            E::Unavailable(cause) => Self::unavailable(cause),
            E::Internal(cause) => Self::internal(cause),
        }
    }
}

impl From<crate::auth::Error> for ApiError {
    fn from(e: crate::auth::Error) -> Self {
        use crate::auth::Error as E;
        let message = e.to_string();
        match e {
            E::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
            }
            E::Unauthenticated(m) => Self::unauthenticated(m),
            E::TokenExpired => Self::new(StatusCode::UNAUTHORIZED, "token_expired", message),
            E::InvalidRefreshToken => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_refresh_token", message)
            }
            E::RefreshReused => Self::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_already_used",
                message,
            ),
            E::InvalidToken => Self::new(StatusCode::BAD_REQUEST, "invalid_token", message),
            E::Disabled => Self::new(StatusCode::FORBIDDEN, "account_disabled", message),
            E::Forbidden(m) => Self::forbidden(m),
            E::Validation { message, field } => {
                Self::new(StatusCode::BAD_REQUEST, "validation_failed", message)
                    .with_details(json!({ "field": field }))
            }
            E::BadRequest(m) => Self::bad_request(m),
            E::EmailTaken => Self::new(StatusCode::CONFLICT, "conflict", message)
                .with_details(json!({ "fields": ["email"] })),
            E::RateLimited { retry_after } => ApiError {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            },
            E::WeChat(_) => Self::new(StatusCode::UNAUTHORIZED, "wechat_login_failed", message),
            E::OAuth(_) => Self::new(StatusCode::BAD_REQUEST, "oauth_failed", message),
            E::NotFound(m) => Self::not_found(m),
            E::Unavailable(cause) => Self::unavailable(cause),
            E::Internal(cause) => Self::internal(cause),
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        documents::Error::from(e).into()
    }
}

impl From<crate::storage::Error> for ApiError {
    fn from(e: crate::storage::Error) -> Self {
        use crate::storage::Error as E;
        let message = e.to_string();
        match e {
            E::BucketNotFound(_) => Self::new(StatusCode::NOT_FOUND, "bucket_not_found", message),
            E::NotFound => Self::not_found(message),
            E::Forbidden(m) => Self::forbidden(m),
            E::BadRequest(m) => Self::bad_request(m),
            E::Validation { message, details } => ApiError {
                details,
                ..Self::validation(message)
            },
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            E::TooLarge(m) => Self::payload_too_large(m),
            E::QuotaExceeded { quota, used } => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message)
                    .with_details(json!({ "quota": quota, "used": used }))
            }
            E::UnsupportedType(m) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            E::BadSignature => Self::new(StatusCode::FORBIDDEN, "invalid_signature", message),
            E::Unavailable(cause) => Self::unavailable(cause),
            E::Internal(cause) => Self::internal(cause),
        }
    }
}
