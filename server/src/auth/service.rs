//! The auth service: sessions with rotating refresh tokens, authentication of requests, and
//! the email/password flows.
//!
//! Sessions. A session is a refresh-token family. Refresh tokens are 256-bit random, stored
//! only as SHA-256, single use: each refresh spends the token and returns its successor,
//! `HMAC-SHA256(secret, token)` — derived, not stored, so the token just spent can be
//! presented again within the grace window and answers with the *same* successor (a retry
//! after a lost response does not log anyone out). Any other reuse of a spent token revokes
//! the session. All of it runs in the serialized writer, so concurrent refreshes of one
//! token, on any node, see one consistent order.
//!
//! Requests. An access token is checked (signature, expiry) and its session looked up; the
//! answer "is this session still valid, and who is its user now" is cached per node for
//! `session_check_interval` (5 s by default), so a revoked session, a disabled or deleted user
//! or a changed role takes effect within that interval everywhere, at once on this node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};

use super::keys::Keys;
use super::mail::{Mail, Mailer};
use super::password::{Passwords, Verified};
use super::ratelimit::{Limit, RateLimiter};
use super::tokens::{TokenError, Tokens};
use super::user::{User, check_object, normalize_email};
use super::{Error, Principal, UserAuth};
use crate::config::{AuthConfig, RateLimitConfig};
use crate::store::auth::{AuthTokenRow, RefreshMatch, SessionRow, UserRow};
use crate::store::{NewChange, Store, Tx};
use crate::util::secret::sha256_hex;
use crate::util::{id, time};

/// The change-log collection of auth events (`signup`, `login`, `delete`).
pub const AUTH_EVENTS: &str = "_auth";
const REFRESH_PREFIX: &str = "fbr_";
const MAX_DATA_BYTES: usize = 64 * 1024;

/// Where a request came from.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

/// A signed-in session, as `/v1/auth/*` returns it.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user: User,
}

impl Session {
    pub fn to_json(&self) -> Value {
        json!({
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "user": self.user.to_json(),
        })
    }
}

/// A cached answer about a session.
#[derive(Clone)]
struct Verdict {
    checked: Instant,
    principal: Option<Principal>,
    user_id: String,
}

pub struct Auth {
    pub(super) store: Store,
    pub(super) config: AuthConfig,
    pub(super) keys: Arc<Keys>,
    pub(super) tokens: Tokens,
    pub(super) passwords: Passwords,
    pub(super) limiter: RateLimiter,
    pub(super) mailer: Arc<Mailer>,
    sessions: RwLock<HashMap<String, Arc<Verdict>>>,
    /// Outbound HTTP (OAuth, WeChat), built on first use: loading the TLS roots costs
    /// milliseconds at start-up that a server without providers never needs.
    http: std::sync::OnceLock<Result<reqwest::Client, String>>,
    pub(super) oauth: super::oauth::Providers,
}

fn limit(config: &RateLimitConfig, per_account: bool) -> Limit {
    Limit {
        max: if per_account {
            config.per_account
        } else {
            config.per_ip
        },
        window: config.window,
    }
}

impl Auth {
    /// The outbound HTTP client (no redirects, 10 s timeout). Built on first use; if it
    /// cannot be built the call fails rather than falling back to a client that follows
    /// redirects.
    pub(super) fn http(&self) -> Result<&reqwest::Client, super::Error> {
        self.http
            .get_or_init(|| {
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("ferrobase/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| super::Error::Internal(format!("the outbound HTTP client: {e}")))
    }

    pub async fn new(store: Store, config: AuthConfig) -> anyhow::Result<Auth> {
        // Outbound TLS (OAuth, WeChat, SMTP) uses rustls with ring; another caller in the
        // same process may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let keys = Arc::new(Keys::load(&store).await?);
        let tokens = Tokens::new(keys.clone(), config.issuer.clone(), config.access_token_ttl);
        let passwords = Passwords::new(config.password_concurrency, config.min_password_length);
        let mailer = Arc::new(Mailer::new(config.smtp.as_ref())?);
        let oauth = super::oauth::Providers::new(&config);
        Ok(Auth {
            store,
            config,
            keys,
            tokens,
            passwords,
            limiter: RateLimiter::default(),
            mailer,
            sessions: RwLock::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
            oauth,
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    pub fn passwords(&self) -> &Passwords {
        &self.passwords
    }

    // ---- rate limits ----

    /// Takes a password attempt against an account's failure limit
    /// (`rate_limits.login.per_account`, `key` naming the account), before anything else is
    /// done for it: concurrent guesses cannot all pass the limit while none has been counted
    /// yet (the Parse Server race), and a refused attempt costs no lookup or hash.
    pub(super) fn take_attempt(&self, key: &str) -> Result<(), Error> {
        self.limiter
            .hit(
                "login_failures",
                key,
                limit(&self.config.rate_limits.login, true),
            )
            .map_err(|retry_after| Error::RateLimited { retry_after })
    }

    /// Checks the password of an attempt taken with [`Self::take_attempt`]; a right password
    /// clears the account's count.
    pub(super) async fn check_attempt(
        &self,
        key: &str,
        password: &str,
        stored: Option<&str>,
    ) -> Result<Verified, Error> {
        let verified = if password.len() > super::password::MAX_LEN {
            Verified::No
        } else {
            self.passwords.verify(password, stored).await?
        };
        if verified == Verified::No || stored.is_none() {
            metrics::counter!("ferrobase_auth_login_failures_total").increment(1);
        } else {
            self.limiter.reset("login_failures", key);
        }
        Ok(verified)
    }

    pub(super) fn rate(
        &self,
        action: &'static str,
        config: &RateLimitConfig,
        ip: IpAddr,
    ) -> Result<(), Error> {
        self.limiter
            .hit(action, &ip.to_string(), limit(config, false))
            .map_err(|retry_after| Error::RateLimited { retry_after })
    }

    // ---- authentication of requests ----

    /// The principal an access token stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        self.authenticate_until(token).await.map(|(p, _)| p)
    }

    /// The principal an access token stands for, and when the token expires (unix seconds).
    pub async fn authenticate_until(&self, token: &str) -> Result<(Principal, i64), Error> {
        let claims = self.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => Error::TokenExpired,
            TokenError::Invalid => Error::Unauthenticated("invalid or expired token".into()),
        })?;
        let cached = self
            .sessions
            .read()
            .ok()
            .and_then(|m| m.get(&claims.sid).cloned())
            .filter(|v| v.checked.elapsed() < self.config.session_check_interval);
        let verdict = match cached {
            Some(v) => v,
            None => {
                let verdict = Arc::new(self.check_session(&claims.sid).await?);
                if let Ok(mut map) = self.sessions.write() {
                    if map.len() > 100_000 {
                        map.clear();
                    }
                    map.insert(claims.sid.clone(), verdict.clone());
                }
                verdict
            }
        };
        match &verdict.principal {
            Some(p)
                if verdict.user_id == claims.sub
                    && matches!(p, Principal::Admin { .. }) == claims.adm =>
            {
                Ok((p.clone(), claims.exp))
            }
            _ => Err(Error::Unauthenticated("the session has ended".into())),
        }
    }

    async fn check_session(&self, sid: &str) -> Result<Verdict, Error> {
        let state = self.store.auth().session_state(sid).await?;
        let now = time::now();
        let checked = Instant::now();
        let Some(state) = state else {
            return Ok(Verdict {
                checked,
                principal: None,
                user_id: String::new(),
            });
        };
        let session = &state.session;
        let live = session.revoked_at.is_none() && session.expires_at > now;
        let principal = match (live, session.kind.as_str(), &state.user, &state.admin) {
            (true, "user", Some(user), _) if !user.disabled => {
                let user = User::from_row(user);
                Some(Principal::User(UserAuth {
                    id: user.id,
                    session_id: session.id.clone(),
                    role: user.role,
                    anonymous: user.anonymous,
                    email: user.email,
                    email_verified: user.email_verified,
                    claims: user.claims,
                }))
            }
            (true, "admin", _, Some(admin)) => Some(Principal::Admin {
                id: admin.id.clone(),
                session_id: session.id.clone(),
            }),
            _ => None,
        };
        Ok(Verdict {
            checked,
            principal,
            user_id: session.user_id.clone(),
        })
    }

    /// Forgets cached verdicts of a session, or of every session of a user.
    pub(super) fn forget(&self, session: Option<&str>, user: Option<&str>) {
        if let Ok(mut map) = self.sessions.write() {
            if let Some(sid) = session {
                map.remove(sid);
            }
            if let Some(uid) = user {
                map.retain(|_, v| v.user_id != uid);
            }
        }
    }

    // ---- sessions ----

    /// A new refresh token and the session row for it.
    pub(super) fn new_session_row(
        &self,
        kind: &str,
        user_id: &str,
        ctx: &RequestCtx,
    ) -> (SessionRow, String) {
        let refresh = format!("{REFRESH_PREFIX}{}", id::random_token(32));
        let now = time::now();
        let row = SessionRow {
            id: id::new_id(),
            kind: kind.to_owned(),
            user_id: user_id.to_owned(),
            created_at: now,
            expires_at: time::later(self.config.session_max_age),
            revoked_at: None,
            revoke_reason: None,
            refresh_hash: sha256_hex(&refresh),
            previous_hash: None,
            rotated_at: None,
            ip: Some(ctx.ip.to_string()),
            user_agent: ctx.user_agent.clone(),
        };
        (row, refresh)
    }

    /// The successor of a refresh token.
    fn successor(&self, token: &str) -> String {
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.keys.refresh_secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(token.as_bytes());
        format!(
            "{REFRESH_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// Signs an access token for a user session.
    pub(super) fn session_for(
        &self,
        user: User,
        sid: &str,
        refresh_token: String,
    ) -> Result<Session, Error> {
        let access_token = self
            .tokens
            .issue(
                &user.id,
                sid,
                &user.role,
                user.anonymous,
                false,
                user.claims.clone(),
            )
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))?;
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: self.tokens.ttl().as_secs(),
            user,
        })
    }

    /// Signs an access token for an admin session.
    pub(super) fn admin_token(&self, admin_id: &str, sid: &str) -> Result<String, Error> {
        self.tokens
            .issue(admin_id, sid, "admin", false, true, Map::new())
            .map_err(|e| Error::Internal(format!("signing a token: {e}")))
    }

    /// `POST /v1/auth/refresh`: rotates the refresh token; answers the new session.
    pub async fn refresh(&self, token: &str, ctx: &RequestCtx) -> Result<Value, Error> {
        self.rate("refresh", &self.config.rate_limits.refresh, ctx.ip)?;
        if !token.starts_with(REFRESH_PREFIX) || token.len() > 128 {
            return Err(Error::InvalidRefreshToken);
        }
        let hash = sha256_hex(token);
        let successor = self.successor(token);
        let successor_hash = sha256_hex(&successor);
        let grace = self.config.refresh_reuse_grace;
        enum Outcome {
            Rotated(Box<(SessionRow, Option<UserRow>)>),
            Unusable,
            Reused(String),
        }
        let outcome = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let session = match auth.find_refresh(&hash).await? {
                        RefreshMatch::Current(s) => {
                            if s.revoked_at.is_some() || s.expires_at <= now {
                                return Ok(Outcome::Unusable);
                            }
                            auth.rotate_session(&s.id, &hash, &successor_hash, &now)
                                .await?;
                            s
                        }
                        RefreshMatch::Previous(s) => {
                            let within_grace = s.rotated_at.as_deref().is_some_and(|at| {
                                !grace.is_zero() && at >= time::ago(grace).as_str()
                            });
                            if s.revoked_at.is_some() || s.expires_at <= now {
                                return Ok(Outcome::Unusable);
                            }
                            if !(within_grace && s.refresh_hash == successor_hash) {
                                auth.revoke_session(&s.id, &now, "refresh_reuse").await?;
                                return Ok(Outcome::Reused(s.id));
                            }
                            s
                        }
                        RefreshMatch::Spent { session_id } => {
                            auth.revoke_session(&session_id, &now, "refresh_reuse")
                                .await?;
                            return Ok(Outcome::Reused(session_id));
                        }
                        RefreshMatch::Unknown => return Ok(Outcome::Unusable),
                    };
                    let user = if session.kind == "user" {
                        auth.user_by_id(&session.user_id).await?
                    } else {
                        None
                    };
                    Ok::<_, crate::store::Error>(Outcome::Rotated(Box::new((session, user))))
                }
                .boxed()
            }))
            .await?;
        match outcome {
            Outcome::Unusable => Err(Error::InvalidRefreshToken),
            Outcome::Reused(sid) => {
                self.forget(Some(&sid), None);
                tracing::warn!(session.id = %sid, "refresh token reused; session revoked");
                metrics::counter!("ferrobase_auth_refresh_reuse_total").increment(1);
                Err(Error::RefreshReused)
            }
            Outcome::Rotated(rotated) => self.rotated(rotated.0, rotated.1, successor),
        }
    }

    fn rotated(
        &self,
        session: SessionRow,
        user: Option<UserRow>,
        successor: String,
    ) -> Result<Value, Error> {
        match (session, user) {
            (session, _) if session.kind == "admin" => {
                let access = self.admin_token(&session.user_id, &session.id)?;
                Ok(json!({
                    "access_token": access,
                    "refresh_token": successor,
                    "token_type": "bearer",
                    "expires_in": self.tokens.ttl().as_secs(),
                }))
            }
            (session, Some(user)) if !user.disabled => Ok(self
                .session_for(User::from_row(&user), &session.id, successor)?
                .to_json()),
            (_, Some(_)) => Err(Error::Disabled),
            (_, None) => Err(Error::InvalidRefreshToken),
        }
    }

    /// `POST /v1/auth/logout`: ends this session, a given one, or all of the user's.
    pub async fn logout(
        &self,
        principal: &Principal,
        refresh_token: Option<&str>,
        all: bool,
    ) -> Result<(), Error> {
        let (user_id, kind) = match principal {
            Principal::User(u) => (Some(u.id.clone()), "user"),
            Principal::Admin { id, .. } => (Some(id.clone()), "admin"),
            _ => (None, "user"),
        };
        let current = principal.session_id().map(str::to_owned);
        let refresh_hash = refresh_token.map(sha256_hex);
        if user_id.is_none() && refresh_hash.is_none() {
            return Err(Error::Unauthenticated(
                "sign in, or send the refresh token".into(),
            ));
        }
        let uid = user_id.clone();
        let revoked: Vec<String> = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let mut revoked = Vec::new();
                    if all && let Some(uid) = &uid {
                        auth.revoke_user_sessions(uid, kind, None, &now, "logout_all")
                            .await?;
                        return Ok(revoked);
                    }
                    let target = match refresh_hash {
                        Some(hash) => match auth.find_refresh(&hash).await? {
                            RefreshMatch::Current(s) | RefreshMatch::Previous(s)
                                if uid.as_deref().is_none_or(|u| u == s.user_id) =>
                            {
                                Some(s.id)
                            }
                            _ => None,
                        },
                        None => current,
                    };
                    if let Some(sid) = target {
                        auth.revoke_session(&sid, &now, "logout").await?;
                        revoked.push(sid);
                    }
                    Ok::<_, crate::store::Error>(revoked)
                }
                .boxed()
            }))
            .await?;
        for sid in &revoked {
            self.forget(Some(sid), None);
        }
        if all {
            self.forget(None, user_id.as_deref());
        }
        Ok(())
    }

    // ---- sign-up and sign-in ----

    /// `POST /v1/auth/signup`.
    pub async fn signup(
        &self,
        email: &str,
        password: &str,
        data: Option<Value>,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        if !self.config.allow_signup {
            return Err(Error::Forbidden("sign-up is disabled".into()));
        }
        self.rate("signup", &self.config.rate_limits.signup, ctx.ip)?;
        let email = normalize_email(email)?;
        self.passwords
            .check_strength(password, Some(&email))
            .map_err(|m| Error::validation("password", m))?;
        let data = match data {
            Some(d) => check_object("data", &d, MAX_DATA_BYTES)?,
            None => Map::new(),
        };
        let hash = self.passwords.hash(password).await?;
        let now = time::now();
        let user = UserRow {
            id: id::new_id(),
            email: Some(email.clone()),
            password_hash: Some(hash),
            email_verified: false,
            anonymous: false,
            role: "user".into(),
            claims: "{}".into(),
            data: Value::Object(data).to_string(),
            disabled: false,
            token_epoch: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        let verify = self.verification_mail(&user);
        self.create_user(user, Some(verify), ctx).await
    }

    /// `POST /v1/auth/anonymous`.
    pub async fn anonymous(&self, ctx: &RequestCtx) -> Result<Session, Error> {
        if !self.config.allow_anonymous {
            return Err(Error::Forbidden("anonymous sign-in is disabled".into()));
        }
        self.rate("anonymous", &self.config.rate_limits.anonymous, ctx.ip)?;
        let now = time::now();
        let user = UserRow {
            id: id::new_id(),
            email: None,
            password_hash: None,
            email_verified: false,
            anonymous: true,
            role: "user".into(),
            claims: "{}".into(),
            data: "{}".into(),
            disabled: false,
            token_epoch: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        self.create_user(user, None, ctx).await
    }

    /// Inserts a user with a first session and a `signup` event, all or nothing.
    pub(super) async fn create_user(
        &self,
        user: UserRow,
        mail: Option<(AuthTokenRow, Mail)>,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        self.create_user_with(user, mail, None, ctx).await
    }

    pub(super) async fn create_user_with(
        &self,
        user: UserRow,
        mail: Option<(AuthTokenRow, Mail)>,
        identity: Option<crate::store::auth::IdentityRow>,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        let (session, refresh) = self.new_session_row("user", &user.id, ctx);
        let mailer = self.mailer.clone();
        let event = User::from_row(&user).to_json().to_string();
        let inserted = user.clone();
        let sid = session.id.clone();
        let raced = identity
            .as_ref()
            .map(|i| (i.provider.clone(), i.subject.clone()));
        let result = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    tx.auth().insert_user(&inserted).await?;
                    if let Some(identity) = &identity {
                        tx.auth().insert_identity(identity).await?;
                    }
                    tx.auth().insert_session(&session).await?;
                    append_event(tx, &inserted.id, "signup", &event).await?;
                    let mut queued = None;
                    if let Some((token, mail)) = mail {
                        tx.auth().insert_auth_token(&token).await?;
                        queued = mailer.queue(tx.auth(), mail).await?;
                    }
                    Ok::<_, crate::store::Error>(queued)
                }
                .boxed()
            }))
            .await;
        let queued = match (result, raced) {
            // Two first sign-ins with one identity raced; the other one created the user.
            (Err(crate::store::Error::Conflict { constraint }), Some((provider, subject)))
                if constraint != "email" =>
            {
                let user = self
                    .store
                    .auth()
                    .identity_user(&provider, &subject)
                    .await?
                    .ok_or_else(|| Error::Internal("identity conflict without a user".into()))?;
                return self.start_session(&user, None, ctx).await;
            }
            (result, _) => result?,
        };
        self.mailer.send_later(queued);
        metrics::counter!("ferrobase_auth_events_total", "event" => "signup").increment(1);
        self.session_for(User::from_row(&user), &sid, refresh)
    }

    /// Starts a session for an existing user (after a password, WeChat or OAuth check).
    pub(super) async fn start_session(
        &self,
        user: &UserRow,
        rehash: Option<String>,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        let (session, refresh) = self.new_session_row("user", &user.id, ctx);
        let sid = session.id.clone();
        let event = User::from_row(user).to_json().to_string();
        let user_id = user.id.clone();
        self.store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    if let Some(hash) = rehash
                        && let Some(mut row) = tx.auth().user_by_id(&user_id).await?
                    {
                        row.password_hash = Some(hash);
                        tx.auth().update_user(&row).await?;
                    }
                    tx.auth().insert_session(&session).await?;
                    append_event(tx, &user_id, "login", &event).await?;
                    Ok::<_, crate::store::Error>(())
                }
                .boxed()
            }))
            .await?;
        metrics::counter!("ferrobase_auth_events_total", "event" => "login").increment(1);
        self.session_for(User::from_row(user), &sid, refresh)
    }

    /// `POST /v1/auth/login`.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        let limits = &self.config.rate_limits.login;
        self.rate("login", limits, ctx.ip)?;
        let email = normalize_email(email).map_err(|_| Error::InvalidCredentials)?;
        // Failures are counted per account, whether or not the account exists.
        self.take_attempt(&email)?;
        let user = self.store.auth().user_by_email(&email).await?;
        let stored = user.as_ref().and_then(|u| u.password_hash.as_deref());
        let verified = self.check_attempt(&email, password, stored).await?;
        let (Some(user), Verified::Yes | Verified::YesRehash) = (user, verified) else {
            return Err(Error::InvalidCredentials);
        };
        if user.disabled {
            return Err(Error::Disabled);
        }
        let rehash = if verified == Verified::YesRehash {
            Some(self.passwords.hash(password).await?)
        } else {
            None
        };
        self.start_session(&user, rehash, ctx).await
    }

    // ---- the current user ----

    fn require_user(principal: &Principal) -> Result<&UserAuth, Error> {
        match principal {
            Principal::User(u) => Ok(u),
            _ => Err(Error::Unauthenticated("sign in as a user first".into())),
        }
    }

    /// `GET /v1/auth/user`.
    pub async fn current_user(&self, principal: &Principal) -> Result<User, Error> {
        let u = Self::require_user(principal)?;
        let row = self
            .store
            .auth()
            .user_by_id(&u.id)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the session has ended".into()))?;
        Ok(User::from_row(&row))
    }

    /// `PATCH /v1/auth/user`: email, password (both need `current_password` when the account
    /// has one) and `data`. A new password or email ends the user's other sessions.
    pub async fn update_user(
        &self,
        principal: &Principal,
        email: Option<&str>,
        password: Option<&str>,
        current_password: Option<&str>,
        data: Option<Value>,
    ) -> Result<User, Error> {
        let me = Self::require_user(principal)?.clone();
        let row = self
            .store
            .auth()
            .user_by_id(&me.id)
            .await?
            .ok_or_else(|| Error::Unauthenticated("the session has ended".into()))?;
        let new_email = email.map(normalize_email).transpose()?;
        let email_changes = new_email.is_some() && new_email != row.email;
        if (password.is_some() || email_changes) && row.password_hash.is_some() {
            let current = current_password.ok_or_else(|| {
                Error::validation("current_password", "`current_password` is required")
            })?;
            // The same failure limit as logins: a stolen access token must not become a
            // way to guess the password without one.
            let key = row.email.clone().unwrap_or_else(|| row.id.clone());
            self.take_attempt(&key)?;
            if self
                .check_attempt(&key, current, row.password_hash.as_deref())
                .await?
                == Verified::No
            {
                return Err(Error::InvalidCredentials);
            }
        }
        let new_hash = match password {
            Some(p) => {
                let for_email = new_email.as_deref().or(row.email.as_deref());
                self.passwords
                    .check_strength(p, for_email)
                    .map_err(|m| Error::validation("password", m))?;
                Some(self.passwords.hash(p).await?)
            }
            None => None,
        };
        let data = data
            .map(|d| check_object("data", &d, MAX_DATA_BYTES))
            .transpose()?;
        let revoke_others = new_hash.is_some() || email_changes;
        let sid = me.session_id.clone();
        let mailer = self.mailer.clone();
        let verify_ttl = self.config.verify_token_ttl;
        let (updated, queued) = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let Some(mut user) = auth.user_by_id(&me.id).await? else {
                        return Err(crate::store::Error::NotFound);
                    };
                    if let Some(hash) = new_hash {
                        user.password_hash = Some(hash);
                        user.token_epoch += 1;
                    }
                    let mut queued = None;
                    if email_changes {
                        user.email = new_email;
                        user.email_verified = false;
                        user.token_epoch += 1;
                    }
                    if let Some(data) = data {
                        user.data = Value::Object(data).to_string();
                    }
                    user.updated_at = now.clone();
                    auth.update_user(&user).await?;
                    if revoke_others {
                        auth.revoke_user_sessions(
                            &user.id,
                            "user",
                            Some(&sid),
                            &now,
                            "credentials_changed",
                        )
                        .await?;
                    }
                    if email_changes && let Some((token, mail)) = verification(&user, verify_ttl) {
                        auth.insert_auth_token(&token).await?;
                        queued = mailer.queue(auth, mail).await?;
                    }
                    Ok((user, queued))
                }
                .boxed()
            }))
            .await
            .map_err(|e| match e {
                crate::store::Error::NotFound => {
                    Error::Unauthenticated("the session has ended".into())
                }
                other => other.into(),
            })?;
        self.mailer.send_later(queued);
        if revoke_others {
            self.forget(None, Some(&updated.id));
        }
        Ok(User::from_row(&updated))
    }

    /// `POST /v1/auth/link`: an anonymous user becomes an email user (same id, same data).
    pub async fn link(
        &self,
        principal: &Principal,
        email: &str,
        password: &str,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        let me = Self::require_user(principal)?.clone();
        if !me.anonymous {
            return Err(Error::BadRequest(
                "only anonymous users can link an email".into(),
            ));
        }
        let email = normalize_email(email)?;
        self.passwords
            .check_strength(password, Some(&email))
            .map_err(|m| Error::validation("password", m))?;
        let hash = self.passwords.hash(password).await?;
        let (session, refresh) = self.new_session_row("user", &me.id, ctx);
        let sid = session.id.clone();
        let old_sid = me.session_id.clone();
        let mailer = self.mailer.clone();
        let verify_ttl = self.config.verify_token_ttl;
        let (user, queued) = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let Some(mut user) = auth.user_by_id(&me.id).await? else {
                        return Err(crate::store::Error::NotFound);
                    };
                    if !user.anonymous {
                        return Err(crate::store::Error::Conflict {
                            constraint: "linked".into(),
                        });
                    }
                    user.email = Some(email);
                    user.password_hash = Some(hash);
                    user.anonymous = false;
                    user.updated_at = now.clone();
                    auth.update_user(&user).await?;
                    auth.insert_session(&session).await?;
                    auth.revoke_session(&old_sid, &now, "linked").await?;
                    let mut queued = None;
                    if let Some((token, mail)) = verification(&user, verify_ttl) {
                        auth.insert_auth_token(&token).await?;
                        queued = mailer.queue(auth, mail).await?;
                    }
                    Ok((user, queued))
                }
                .boxed()
            }))
            .await
            .map_err(|e| match e {
                crate::store::Error::Conflict { constraint } if constraint == "linked" => {
                    Error::BadRequest("only anonymous users can link an email".into())
                }
                crate::store::Error::NotFound => {
                    Error::Unauthenticated("the session has ended".into())
                }
                other => other.into(),
            })?;
        self.mailer.send_later(queued);
        self.forget(Some(&me.session_id), None);
        self.session_for(User::from_row(&user), &sid, refresh)
    }

    // ---- email verification and password reset ----

    fn verification_mail(&self, user: &UserRow) -> (AuthTokenRow, Mail) {
        verification(user, self.config.verify_token_ttl)
            .unwrap_or_else(|| unreachable!("signup has an email"))
    }

    /// `POST /v1/auth/verify/request`: mails a verification token to the signed-in user, or
    /// to `email` (the answer is the same whether or not that account exists: the lookup
    /// happens after the response).
    pub async fn request_verification(
        self: &Arc<Self>,
        principal: &Principal,
        email: Option<&str>,
        ctx: &RequestCtx,
    ) -> Result<(), Error> {
        let reset = &self.config.rate_limits.reset;
        self.rate("verify_request", reset, ctx.ip)?;
        match (principal, email) {
            (Principal::User(u), _) => {
                self.limiter
                    .hit("verify_request_account", &u.id, limit(reset, true))
                    .map_err(|retry_after| Error::RateLimited { retry_after })?;
                self.mail_token(u.id.clone(), "verify").await
            }
            (_, Some(email)) => {
                let email = normalize_email(email)?;
                self.limiter
                    .hit("verify_request_account", &email, limit(reset, true))
                    .map_err(|retry_after| Error::RateLimited { retry_after })?;
                let auth = self.clone();
                tokio::spawn(async move {
                    if let Ok(Some(user)) = auth.store.auth().user_by_email(&email).await
                        && let Err(e) = auth.mail_token(user.id, "verify").await
                    {
                        tracing::warn!(error = %e, "could not send a verification mail");
                    }
                });
                Ok(())
            }
            _ => Err(Error::BadRequest("sign in, or give `email`".into())),
        }
    }

    /// `POST /v1/auth/reset/request`: mails a reset token; the same answer whether or not the
    /// account exists (the work happens after the response).
    pub fn request_reset(self: &Arc<Self>, email: &str, ctx: &RequestCtx) -> Result<(), Error> {
        let limits = &self.config.rate_limits.reset;
        self.rate("reset_request", limits, ctx.ip)?;
        let email = normalize_email(email)?;
        self.limiter
            .hit("reset_request_account", &email, limit(limits, true))
            .map_err(|retry_after| Error::RateLimited { retry_after })?;
        let auth = self.clone();
        tokio::spawn(async move {
            match auth.store.auth().user_by_email(&email).await {
                Ok(Some(user)) if !user.disabled => {
                    if let Err(e) = auth.mail_token(user.id, "reset").await {
                        tracing::warn!(error = %e, "could not send a reset mail");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reset lookup failed"),
            }
        });
        Ok(())
    }

    async fn mail_token(&self, user_id: String, purpose: &'static str) -> Result<(), Error> {
        let mailer = self.mailer.clone();
        let ttl = if purpose == "reset" {
            self.config.reset_token_ttl
        } else {
            self.config.verify_token_ttl
        };
        let queued = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let auth = tx.auth();
                    let Some(user) = auth.user_by_id(&user_id).await? else {
                        return Ok(None);
                    };
                    let made = if purpose == "reset" {
                        reset_mail(&user, ttl)
                    } else if user.email_verified {
                        None
                    } else {
                        verification(&user, ttl)
                    };
                    let Some((token, mail)) = made else {
                        return Ok(None);
                    };
                    auth.insert_auth_token(&token).await?;
                    mailer.queue(auth, mail).await
                }
                .boxed()
            }))
            .await?;
        self.mailer.send_later(queued);
        Ok(())
    }

    /// Redeems a mailed token of `purpose`, returning the user it belongs to if it is still
    /// valid for that user (same email, issued before no credential change).
    async fn redeem<F>(&self, token: &str, purpose: &'static str, apply: F) -> Result<User, Error>
    where
        F: FnOnce(&mut UserRow) + Send + 'static,
    {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::InvalidToken);
        }
        let hash = sha256_hex(token);
        let revoke_all = purpose == "reset";
        let result = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let Some(redeemed) = auth.redeem_auth_token(&hash, purpose, &now).await? else {
                        return Ok(None);
                    };
                    let Some(mut user) = auth.user_by_id(&redeemed.user_id).await? else {
                        return Ok(None);
                    };
                    if redeemed.epoch != user.token_epoch || redeemed.email != user.email {
                        // Issued before a credential change: dead, but spent.
                        return Ok(None);
                    }
                    apply(&mut user);
                    user.updated_at = now.clone();
                    auth.update_user(&user).await?;
                    if revoke_all {
                        auth.revoke_user_sessions(&user.id, "user", None, &now, "password_reset")
                            .await?;
                    }
                    Ok::<_, crate::store::Error>(Some(user))
                }
                .boxed()
            }))
            .await?;
        let user = result.ok_or(Error::InvalidToken)?;
        if revoke_all {
            self.forget(None, Some(&user.id));
        }
        Ok(User::from_row(&user))
    }

    /// `POST /v1/auth/verify`.
    pub async fn verify_email(&self, token: &str) -> Result<User, Error> {
        self.redeem(token, "verify", |user| user.email_verified = true)
            .await
    }

    /// `POST /v1/auth/reset`: sets a new password, ends every session of the user.
    pub async fn reset_password(&self, token: &str, password: &str) -> Result<(), Error> {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::InvalidToken);
        }
        self.passwords
            .check_strength(password, None)
            .map_err(|m| Error::validation("password", m))?;
        let hash = self.passwords.hash(password).await?;
        self.redeem(token, "reset", move |user| {
            user.password_hash = Some(hash);
            user.token_epoch += 1;
            // The link proved the address.
            user.email_verified = true;
        })
        .await
        .map(|_| ())
    }
}

/// Appends an auth event to the change log (cloud code triggers on these).
pub(super) async fn append_event(
    tx: &mut dyn Tx,
    user_id: &str,
    op: &str,
    user_json: &str,
) -> crate::store::Result<i64> {
    let at = time::now();
    tx.append_change(&NewChange {
        collection: AUTH_EVENTS,
        doc_id: user_id,
        op,
        before: None,
        after: if op == "delete" {
            None
        } else {
            Some(user_json)
        },
        actor: Some(user_id),
        at: &at,
    })
    .await
}

fn mailed_token(user: &UserRow, purpose: &str, ttl: Duration) -> (AuthTokenRow, String) {
    let token = id::random_token(32);
    let row = AuthTokenRow {
        hash: sha256_hex(&token),
        user_id: user.id.clone(),
        purpose: purpose.to_owned(),
        email: user.email.clone(),
        epoch: user.token_epoch,
        created_at: time::now(),
        expires_at: time::later(ttl),
        used_at: None,
    };
    (row, token)
}

fn verification(user: &UserRow, ttl: Duration) -> Option<(AuthTokenRow, Mail)> {
    let to = user.email.clone()?;
    let (row, token) = mailed_token(user, "verify", ttl);
    Some((
        row,
        Mail {
            to,
            subject: "Confirm your email address".into(),
            text: format!(
                "Confirm your email address by sending this token to POST /v1/auth/verify:\n\n{token}\n\n\
                 If you did not sign up, ignore this message."
            ),
        },
    ))
}

fn reset_mail(user: &UserRow, ttl: Duration) -> Option<(AuthTokenRow, Mail)> {
    let to = user.email.clone()?;
    let (row, token) = mailed_token(user, "reset", ttl);
    Some((
        row,
        Mail {
            to,
            subject: "Reset your password".into(),
            text: format!(
                "Someone asked to reset the password of this account. To choose a new password, send\n\
                 this token with it to POST /v1/auth/reset:\n\n{token}\n\n\
                 The token expires in {} minutes. If it was not you, ignore this message.",
                ttl.as_secs() / 60
            ),
        },
    ))
}
