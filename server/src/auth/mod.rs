//! Users, sessions and sign-in (section 5 of the design), and who is calling: every request
//! resolves to a [`Principal`]; the domain decides what that principal may do (rules for
//! users and anonymous callers, everything for admins and the service key).
//!
//! Which error type to use where: functions here return [`Error`]; `http::error` maps each
//! variant to one status and code. Messages never say whether an account exists, except
//! signup's `conflict`.

pub mod admin;
pub mod keys;
pub mod mail;
pub mod oauth;
pub mod password;
pub mod ratelimit;
mod service;
pub mod service_key;
pub mod tokens;
pub mod user;
pub mod wechat;

pub use service::{AUTH_EVENTS, Auth, RequestCtx, Session};
pub use user::User;

/// Creates a console administrator against the configured database (`ferrobase admin create`).
pub async fn create_admin(
    config: &crate::Config,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let store = crate::store::Store::open(&config.store_options()).await?;
    let auth = Auth::new(store.clone(), config.auth.clone()).await?;
    let result = auth.create_admin(email, password).await;
    store.close().await;
    result.map_err(|e| match e {
        Error::EmailTaken => anyhow::anyhow!("an admin with this email already exists"),
        other => anyhow::anyhow!("{other}"),
    })
}

/// An auth failure, as the client will hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("the access token has expired")]
    TokenExpired,
    #[error("the refresh token is invalid or expired")]
    InvalidRefreshToken,
    /// A spent refresh token was presented again: the session is revoked.
    #[error("the refresh token was already used; the session has been revoked")]
    RefreshReused,
    /// A mailed token (verification, reset) is unknown, used or expired.
    #[error("the token is invalid or expired")]
    InvalidToken,
    #[error("this account is disabled")]
    Disabled,
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    Validation {
        message: String,
        field: &'static str,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("this email address is already registered")]
    EmailTaken,
    #[error("too many requests; try again later")]
    RateLimited { retry_after: std::time::Duration },
    #[error("WeChat sign-in failed: {0}")]
    WeChat(String),
    #[error("OAuth sign-in failed: {0}")]
    OAuth(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the service is unavailable")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            field,
        }
    }
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as S;
        match e {
            S::Unavailable(cause) => Error::Unavailable(cause),
            S::Conflict { constraint } if constraint == "email" => Error::EmailTaken,
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Internal(format!("{e:#}"))
    }
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A signed-in (possibly anonymous-account) user.
    User(UserAuth),
    /// A console administrator.
    Admin { id: String, session_id: String },
    /// The service key: full access, for servers.
    Service,
}

/// A principal and the request it made, as rules see it (`auth` and `request`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The client's address (after trusted proxies), when the call came over HTTP.
    pub ip: Option<std::net::IpAddr>,
    /// The HTTP method, or what the call amounts to (`GET` for reads, `POST` for writes)
    /// when it did not come over HTTP.
    pub method: &'static str,
    /// How deep in a chain of triggers this call is: 0 for clients and callable functions,
    /// n for writes made by a trigger that n writes set off. Kept in the change log's
    /// `actor` so after-triggers stop at a fixed depth.
    pub depth: u8,
}

impl Caller {
    /// A call from inside the server (cloud code, tests): no address.
    pub fn internal(principal: Principal) -> Caller {
        Caller {
            principal,
            ip: None,
            method: "POST",
            depth: 0,
        }
    }

    /// Who a change is attributed to in the change log: the principal's actor, with
    /// `#fn<depth>` appended for writes made by triggers.
    pub fn change_actor(&self) -> Option<String> {
        if self.depth == 0 {
            return self.actor();
        }
        Some(format!(
            "{}#fn{}",
            self.actor().unwrap_or_else(|| "anonymous".into()),
            self.depth
        ))
    }
}

/// The trigger depth a change's `actor` records (0 when none).
pub fn actor_depth(actor: Option<&str>) -> u8 {
    actor
        .and_then(|a| a.rsplit_once("#fn"))
        .and_then(|(_, d)| d.parse().ok())
        .unwrap_or(0)
}

/// A caller is its principal, with request context on the side.
impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

/// What the verified access token says about a user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserAuth {
    pub id: String,
    pub session_id: String,
    pub role: String,
    pub anonymous: bool,
    pub email: Option<String>,
    pub email_verified: bool,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl UserAuth {
    /// A user as rules see `auth` (`{id, role, anonymous, email, email_verified, claims}`),
    /// for tools that act "as" someone: the query planner, the rules playground.
    pub fn from_rule_value(auth: &serde_json::Value) -> Result<UserAuth, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuthInput {
            id: String,
            #[serde(default = "user_role")]
            role: String,
            #[serde(default)]
            anonymous: bool,
            #[serde(default)]
            email: Option<String>,
            #[serde(default)]
            email_verified: bool,
            #[serde(default)]
            claims: serde_json::Map<String, serde_json::Value>,
        }
        fn user_role() -> String {
            "user".into()
        }
        let input: AuthInput = serde_json::from_value(auth.clone()).map_err(|e| {
            format!("`auth` is {{id, role, anonymous, email, email_verified, claims}}: {e}")
        })?;
        Ok(UserAuth {
            id: input.id,
            session_id: String::new(),
            role: input.role,
            anonymous: input.anonymous,
            email: input.email,
            email_verified: input.email_verified,
            claims: input.claims,
        })
    }
}

impl Principal {
    /// Admins and the service key bypass rules.
    pub fn is_privileged(&self) -> bool {
        matches!(self, Principal::Admin { .. } | Principal::Service)
    }

    /// The user id, for `_owner` and rules.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Principal::User(u) => Some(&u.id),
            _ => None,
        }
    }

    /// The session behind the caller's token, if any.
    pub fn session_id(&self) -> Option<&str> {
        match self {
            Principal::User(u) => Some(&u.session_id),
            Principal::Admin { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    /// Who a change is attributed to in the change log.
    pub fn actor(&self) -> Option<String> {
        match self {
            Principal::Anonymous => None,
            Principal::User(u) => Some(u.id.clone()),
            Principal::Admin { id, .. } => Some(format!("admin:{id}")),
            Principal::Service => Some("service".to_owned()),
        }
    }
}
