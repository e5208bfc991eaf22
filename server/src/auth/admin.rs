//! Console administrators (created with `ferrobase admin create`) and what the admin API
//! may do to users: list, read, change role / claims / disabled, delete, end sessions.

use futures_util::FutureExt;
use serde_json::{Map, Value, json};

use super::Error;
use super::service::{Auth, RequestCtx, append_event};
use super::user::{User, check_object, check_role, normalize_email};
use crate::store::Tx;
use crate::store::auth::AdminRow;
use crate::util::{id, time};

/// Changes an admin may make to a user.
#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub role: Option<String>,
    pub claims: Option<Value>,
    pub disabled: Option<bool>,
    pub email_verified: Option<bool>,
    pub data: Option<Value>,
}

const MAX_CLAIMS_BYTES: usize = 8 * 1024;

impl Auth {
    /// `ferrobase admin create EMAIL`.
    pub async fn create_admin(&self, email: &str, password: &str) -> Result<String, Error> {
        let email = normalize_email(email)?;
        self.passwords
            .check_strength(password, Some(&email))
            .map_err(|m| Error::validation("password", m))?;
        let hash = self.passwords.hash(password).await?;
        let admin = AdminRow {
            id: id::new_id(),
            email,
            password_hash: hash,
            created_at: time::now(),
        };
        let admin_id = admin.id.clone();
        self.store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move { tx.auth().insert_admin(&admin).await }.boxed()
            }))
            .await?;
        Ok(admin_id)
    }

    /// `POST /v1/admin/login`: an admin session.
    pub async fn admin_login(
        &self,
        email: &str,
        password: &str,
        ctx: &RequestCtx,
    ) -> Result<Value, Error> {
        let limits = &self.config.rate_limits.login;
        self.rate("login", limits, ctx.ip)?;
        let email = normalize_email(email).map_err(|_| Error::InvalidCredentials)?;
        let key = format!("admin:{email}");
        self.take_attempt(&key)?;
        let admin = self.store.auth().admin_by_email(&email).await?;
        let verified = self
            .check_attempt(
                &key,
                password,
                admin.as_ref().map(|a| a.password_hash.as_str()),
            )
            .await?;
        let Some(admin) = admin.filter(|_| verified != super::password::Verified::No) else {
            return Err(Error::InvalidCredentials);
        };
        let rehash = if verified == super::password::Verified::YesRehash {
            Some(self.passwords.hash(password).await?)
        } else {
            None
        };
        let (session, refresh) = self.new_session_row("admin", &admin.id, ctx);
        let sid = session.id.clone();
        let admin_id = admin.id.clone();
        self.store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    if let Some(hash) = rehash {
                        tx.auth().set_admin_password(&admin_id, &hash).await?;
                    }
                    tx.auth().insert_session(&session).await
                }
                .boxed()
            }))
            .await?;
        let access = self.admin_token(&admin.id, &sid)?;
        Ok(json!({
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": self.tokens.ttl().as_secs(),
            "admin": { "id": admin.id, "email": admin.email },
        }))
    }

    /// Users by id order, optionally those whose email or id starts with `search`.
    pub async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<User>, Option<String>), Error> {
        let limit = limit.clamp(1, 200);
        let search = search
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty());
        let rows = self
            .store
            .auth()
            .list_users(search.as_deref(), after, limit + 1)
            .await?;
        let more = rows.len() > limit as usize;
        let users: Vec<User> = rows
            .iter()
            .take(limit as usize)
            .map(User::from_row)
            .collect();
        let next = if more {
            users.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok((users, next))
    }

    pub async fn get_user(&self, id: &str) -> Result<User, Error> {
        let row = self
            .store
            .auth()
            .user_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such user".into()))?;
        Ok(User::from_row(&row))
    }

    /// Changes role, claims, disabled, email_verified or data. Disabling ends the user's
    /// sessions.
    pub async fn patch_user(&self, id: &str, patch: UserPatch) -> Result<User, Error> {
        if let Some(role) = &patch.role {
            check_role(role)?;
        }
        let claims: Option<Map<String, Value>> = patch
            .claims
            .as_ref()
            .map(|c| check_object("claims", c, MAX_CLAIMS_BYTES))
            .transpose()?;
        let data = patch
            .data
            .as_ref()
            .map(|d| check_object("data", d, 64 * 1024))
            .transpose()?;
        let id_owned = id.to_owned();
        let disable = patch.disabled == Some(true);
        let user = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let Some(mut user) = auth.user_by_id(&id_owned).await? else {
                        return Ok(None);
                    };
                    if let Some(role) = patch.role {
                        user.role = role;
                    }
                    if let Some(claims) = claims {
                        user.claims = Value::Object(claims).to_string();
                    }
                    if let Some(disabled) = patch.disabled {
                        user.disabled = disabled;
                    }
                    if let Some(verified) = patch.email_verified {
                        user.email_verified = verified;
                    }
                    if let Some(data) = data {
                        user.data = Value::Object(data).to_string();
                    }
                    user.updated_at = now.clone();
                    auth.update_user(&user).await?;
                    if disable {
                        auth.revoke_user_sessions(&user.id, "user", None, &now, "disabled")
                            .await?;
                    }
                    Ok::<_, crate::store::Error>(Some(user))
                }
                .boxed()
            }))
            .await?
            .ok_or_else(|| Error::NotFound("no such user".into()))?;
        self.forget(None, Some(id));
        Ok(User::from_row(&user))
    }

    /// Deletes a user with their sessions and identities; appends a `delete` auth event.
    pub async fn delete_user(&self, id: &str) -> Result<(), Error> {
        let id_owned = id.to_owned();
        let deleted = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let Some(user) = tx.auth().user_by_id(&id_owned).await? else {
                        return Ok(false);
                    };
                    let json = User::from_row(&user).to_json().to_string();
                    tx.auth().delete_user(&id_owned).await?;
                    append_event(tx, &id_owned, "delete", &json).await?;
                    Ok::<_, crate::store::Error>(true)
                }
                .boxed()
            }))
            .await?;
        if !deleted {
            return Err(Error::NotFound("no such user".into()));
        }
        self.forget(None, Some(id));
        metrics::counter!("ferrobase_auth_events_total", "event" => "delete").increment(1);
        Ok(())
    }

    /// Ends every session of a user; returns how many were live.
    pub async fn revoke_sessions(&self, id: &str) -> Result<u64, Error> {
        let id_owned = id.to_owned();
        let n = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    tx.auth()
                        .revoke_user_sessions(&id_owned, "user", None, &time::now(), "admin")
                        .await
                }
                .boxed()
            }))
            .await?;
        self.forget(None, Some(id));
        Ok(n)
    }

    /// The mail outbox, newest first.
    pub async fn outbox(&self, limit: u32) -> Result<Vec<Value>, Error> {
        let rows = self.store.auth().list_mail(limit.clamp(1, 500)).await?;
        Ok(rows
            .into_iter()
            .map(|m| json!({"to": m.to_addr, "subject": m.subject, "text": m.text, "created_at": m.created_at}))
            .collect())
    }
}
