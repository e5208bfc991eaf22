//! What the store keeps for auth: users, identities, sessions (refresh-token families),
//! mailed single-use tokens, OAuth requests in flight, the mail outbox and admins.
//! Writes happen inside the writer's transaction through [`AuthTx`]; reads through
//! [`AuthRead`] on the reader pool.

use async_trait::async_trait;

use super::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: String,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub email_verified: bool,
    pub anonymous: bool,
    pub role: String,
    /// JSON object text.
    pub claims: String,
    /// JSON object text.
    pub data: String,
    pub disabled: bool,
    pub token_epoch: i64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityRow {
    pub provider: String,
    pub subject: String,
    pub user_id: String,
    pub email: Option<String>,
    /// JSON object text.
    pub data: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: String,
    /// `user` or `admin`.
    pub kind: String,
    pub user_id: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub revoke_reason: Option<String>,
    pub refresh_hash: String,
    pub previous_hash: Option<String>,
    pub rotated_at: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthTokenRow {
    pub hash: String,
    pub user_id: String,
    pub purpose: String,
    pub email: Option<String>,
    pub epoch: i64,
    pub created_at: String,
    pub expires_at: String,
    pub used_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OAuthStateRow {
    pub state_hash: String,
    pub provider: String,
    pub verifier: String,
    pub nonce: String,
    pub redirect_to: Option<String>,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MailRow {
    pub id: String,
    pub to_addr: String,
    pub subject: String,
    pub text: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub created_at: String,
}

/// How a presented refresh token relates to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshMatch {
    /// The session's current token.
    Current(SessionRow),
    /// The token the current one replaced.
    Previous(SessionRow),
    /// A token spent earlier in the session's life (reuse).
    Spent {
        session_id: String,
    },
    Unknown,
}

/// Auth writes, inside the writer's transaction (jobs run with
/// [`super::Store::write_all_or_nothing`] when they make several).
#[async_trait]
pub trait AuthTx: Send {
    async fn user_by_id(&mut self, id: &str) -> Result<Option<UserRow>>;
    async fn user_by_email(&mut self, email: &str) -> Result<Option<UserRow>>;
    /// `Conflict { constraint: "email" }` when the email is taken.
    async fn insert_user(&mut self, user: &UserRow) -> Result<()>;
    /// Overwrites every column of the user with this id.
    async fn update_user(&mut self, user: &UserRow) -> Result<()>;
    /// Deletes the user with its identities, sessions and tokens.
    async fn delete_user(&mut self, id: &str) -> Result<bool>;

    async fn identity(&mut self, provider: &str, subject: &str) -> Result<Option<IdentityRow>>;
    async fn insert_identity(&mut self, identity: &IdentityRow) -> Result<()>;

    async fn insert_session(&mut self, session: &SessionRow) -> Result<()>;
    async fn find_refresh(&mut self, hash: &str) -> Result<RefreshMatch>;
    /// Makes `new_hash` the session's token; `spent_hash` becomes the previous one.
    async fn rotate_session(
        &mut self,
        id: &str,
        spent_hash: &str,
        new_hash: &str,
        at: &str,
    ) -> Result<()>;
    async fn revoke_session(&mut self, id: &str, at: &str, reason: &str) -> Result<bool>;
    /// Revokes all live sessions of a user (of `kind`), except `keep`; returns how many.
    async fn revoke_user_sessions(
        &mut self,
        user_id: &str,
        kind: &str,
        keep: Option<&str>,
        at: &str,
        reason: &str,
    ) -> Result<u64>;

    async fn insert_auth_token(&mut self, token: &AuthTokenRow) -> Result<()>;
    /// Marks an unused, unexpired token of `purpose` used and returns it; `None` if it
    /// does not exist, was used, or expired. At most one caller ever gets it.
    async fn redeem_auth_token(
        &mut self,
        hash: &str,
        purpose: &str,
        now: &str,
    ) -> Result<Option<AuthTokenRow>>;

    async fn insert_oauth_state(&mut self, state: &OAuthStateRow) -> Result<()>;
    /// Removes and returns an unexpired request (single use).
    async fn take_oauth_state(
        &mut self,
        state_hash: &str,
        provider: &str,
        now: &str,
    ) -> Result<Option<OAuthStateRow>>;

    async fn insert_mail(&mut self, mail: &MailRow) -> Result<()>;

    async fn insert_admin(&mut self, admin: &AdminRow) -> Result<()>;
    async fn set_admin_password(&mut self, id: &str, hash: &str) -> Result<()>;
}

/// What a request needs to know about a session to accept its access token.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub session: SessionRow,
    /// The user (user sessions only).
    pub user: Option<UserRow>,
    /// The admin (admin sessions only).
    pub admin: Option<AdminRow>,
}

/// Auth reads, on the reader pool.
#[async_trait]
pub trait AuthRead: Send + Sync {
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>>;
    /// Users ordered by id, after `after`, whose email or id starts with `search`.
    async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>>;
    async fn session_state(&self, id: &str) -> Result<Option<SessionState>>;
    /// The user an identity belongs to.
    async fn identity_user(&self, provider: &str, subject: &str) -> Result<Option<UserRow>>;
    async fn admin_by_email(&self, email: &str) -> Result<Option<AdminRow>>;
    async fn list_mail(&self, limit: u32) -> Result<Vec<MailRow>>;
    /// Deletes expired sessions, spent tokens, used or expired mailed tokens and OAuth
    /// requests older than `cutoff`; returns how many rows went.
    async fn prune_auth(&self, cutoff: &str) -> Result<u64>;
}
