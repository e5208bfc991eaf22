//! Who is calling. Every request resolves to a [`Principal`]; the domain decides what that
//! principal may do (rules for users and anonymous callers, everything for admins and the
//! service key).

pub mod service_key;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A signed-in (possibly anonymous-account) user.
    User(UserAuth),
    /// A console administrator.
    Admin { id: String },
    /// The service key: full access, for servers.
    Service,
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

    /// Who a change is attributed to in the change log.
    pub fn actor(&self) -> Option<String> {
        match self {
            Principal::Anonymous => None,
            Principal::User(u) => Some(u.id.clone()),
            Principal::Admin { id } => Some(format!("admin:{id}")),
            Principal::Service => Some("service".to_owned()),
        }
    }
}
