//! Auth tables on SQLite. Mirrors `postgres/auth.rs`.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteBackend;
use super::rows::Cols;
use super::tx::SqliteSession;
use crate::store::auth::{
    AdminRow, AuthRead, AuthTokenRow, AuthTx, IdentityRow, MailRow, OAuthStateRow, RefreshMatch,
    SessionRow, SessionState, UserRow,
};
use crate::store::{Error, Result};

const USER_COLUMNS: &str = "id, email, password_hash, email_verified, anonymous, role, claims, data, \
     disabled, token_epoch, created_at, updated_at";
const SESSION_COLUMNS: &str = "id, kind, user_id, created_at, expires_at, revoked_at, revoke_reason, \
     refresh_hash, previous_hash, rotated_at, ip, user_agent";
const USER_BY_ID: &str = "SELECT id, email, password_hash, email_verified, anonymous, role, claims, \
     data, disabled, token_epoch, created_at, updated_at FROM fb_users WHERE id = ?";
const USER_BY_EMAIL: &str = "SELECT id, email, password_hash, email_verified, anonymous, role, \
     claims, data, disabled, token_epoch, created_at, updated_at FROM fb_users WHERE email = ?";

fn user_row(r: &impl Cols) -> Result<UserRow> {
    Ok(UserRow {
        id: r.col(0)?,
        email: r.col(1)?,
        password_hash: r.col(2)?,
        email_verified: r.col(3)?,
        anonymous: r.col(4)?,
        role: r.col(5)?,
        claims: r.col(6)?,
        data: r.col(7)?,
        disabled: r.col(8)?,
        token_epoch: r.col(9)?,
        created_at: r.col(10)?,
        updated_at: r.col(11)?,
    })
}

fn session_row(r: &impl Cols) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.col(0)?,
        kind: r.col(1)?,
        user_id: r.col(2)?,
        created_at: r.col(3)?,
        expires_at: r.col(4)?,
        revoked_at: r.col(5)?,
        revoke_reason: r.col(6)?,
        refresh_hash: r.col(7)?,
        previous_hash: r.col(8)?,
        rotated_at: r.col(9)?,
        ip: r.col(10)?,
        user_agent: r.col(11)?,
    })
}

fn token_row(r: &impl Cols) -> Result<AuthTokenRow> {
    Ok(AuthTokenRow {
        hash: r.col(0)?,
        user_id: r.col(1)?,
        purpose: r.col(2)?,
        email: r.col(3)?,
        epoch: r.col(4)?,
        created_at: r.col(5)?,
        expires_at: r.col(6)?,
        used_at: r.col(7)?,
    })
}

fn admin_row(r: &impl Cols) -> Result<AdminRow> {
    Ok(AdminRow {
        id: r.col(0)?,
        email: r.col(1)?,
        password_hash: r.col(2)?,
        created_at: r.col(3)?,
    })
}

async fn read_user(
    backend: &SqliteBackend,
    sql: &'static str,
    value: &str,
) -> Result<Option<UserRow>> {
    let row = sqlx::query(sql)
        .bind(value)
        .fetch_optional(&backend.read)
        .await?;
    row.as_ref().map(user_row).transpose()
}

/// A unique violation on a user names the column.
fn user_conflict(e: Error) -> Error {
    match e {
        Error::Conflict { .. } => Error::Conflict {
            constraint: "email".into(),
        },
        other => other,
    }
}

#[async_trait]
impl AuthTx for SqliteSession {
    async fn user_by_id(&mut self, id: &str) -> Result<Option<UserRow>> {
        self.one(USER_BY_ID, [id], |r| user_row(r))
    }

    async fn user_by_email(&mut self, email: &str) -> Result<Option<UserRow>> {
        self.one(USER_BY_EMAIL, [email], |r| user_row(r))
    }

    async fn insert_user(&mut self, u: &UserRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_users (id, email, password_hash, email_verified, anonymous, role, claims, \
             data, disabled, token_epoch, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                u.id,
                u.email,
                u.password_hash,
                u.email_verified,
                u.anonymous,
                u.role,
                u.claims,
                u.data,
                u.disabled,
                u.token_epoch,
                u.created_at,
                u.updated_at
            ],
        )
        .map_err(user_conflict)?;
        Ok(())
    }

    async fn update_user(&mut self, u: &UserRow) -> Result<()> {
        let changed = self
            .exec(
                "UPDATE fb_users SET email = ?, password_hash = ?, email_verified = ?, anonymous = ?, role = ?, \
                 claims = ?, data = ?, disabled = ?, token_epoch = ?, updated_at = ? WHERE id = ?",
                params![
                    u.email,
                    u.password_hash,
                    u.email_verified,
                    u.anonymous,
                    u.role,
                    u.claims,
                    u.data,
                    u.disabled,
                    u.token_epoch,
                    u.updated_at,
                    u.id
                ],
            )
            .map_err(user_conflict)?;
        if changed == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn delete_user(&mut self, id: &str) -> Result<bool> {
        for sql in [
            "DELETE FROM fb_refresh_spent WHERE session_id IN \
             (SELECT id FROM fb_sessions WHERE kind = 'user' AND user_id = ?)",
            "DELETE FROM fb_sessions WHERE kind = 'user' AND user_id = ?",
            "DELETE FROM fb_identities WHERE user_id = ?",
            "DELETE FROM fb_auth_tokens WHERE user_id = ?",
        ] {
            self.exec(sql, [id])?;
        }
        Ok(self.exec("DELETE FROM fb_users WHERE id = ?", [id])? > 0)
    }

    async fn identity(&mut self, provider: &str, subject: &str) -> Result<Option<IdentityRow>> {
        self.one(
            "SELECT provider, subject, user_id, email, data, created_at FROM fb_identities \
             WHERE provider = ? AND subject = ?",
            [provider, subject],
            |r| {
                Ok(IdentityRow {
                    provider: r.col(0)?,
                    subject: r.col(1)?,
                    user_id: r.col(2)?,
                    email: r.col(3)?,
                    data: r.col(4)?,
                    created_at: r.col(5)?,
                })
            },
        )
    }

    async fn insert_identity(&mut self, i: &IdentityRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_identities (provider, subject, user_id, email, data, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
            params![
                i.provider,
                i.subject,
                i.user_id,
                i.email,
                i.data,
                i.created_at
            ],
        )?;
        Ok(())
    }

    async fn insert_session(&mut self, s: &SessionRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_sessions (id, kind, user_id, created_at, expires_at, revoked_at, revoke_reason, \
             refresh_hash, previous_hash, rotated_at, ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                s.id,
                s.kind,
                s.user_id,
                s.created_at,
                s.expires_at,
                s.revoked_at,
                s.revoke_reason,
                s.refresh_hash,
                s.previous_hash,
                s.rotated_at,
                s.ip,
                s.user_agent
            ],
        )?;
        Ok(())
    }

    async fn find_refresh(&mut self, hash: &str) -> Result<RefreshMatch> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM fb_sessions WHERE refresh_hash = ? OR previous_hash = ? LIMIT 1"
        );
        if let Some(session) = self.one(&sql, [hash, hash], |r| session_row(r))? {
            return Ok(if session.refresh_hash == hash {
                RefreshMatch::Current(session)
            } else {
                RefreshMatch::Previous(session)
            });
        }
        let spent = self.one(
            "SELECT session_id FROM fb_refresh_spent WHERE hash = ?",
            [hash],
            |r| r.col(0),
        )?;
        Ok(match spent {
            Some(session_id) => RefreshMatch::Spent { session_id },
            None => RefreshMatch::Unknown,
        })
    }

    async fn rotate_session(
        &mut self,
        id: &str,
        spent_hash: &str,
        new_hash: &str,
        at: &str,
    ) -> Result<()> {
        self.exec(
            "INSERT INTO fb_refresh_spent (hash, session_id, spent_at) VALUES (?, ?, ?) \
             ON CONFLICT (hash) DO NOTHING",
            [spent_hash, id, at],
        )?;
        let changed = self.exec(
            "UPDATE fb_sessions SET previous_hash = ?, refresh_hash = ?, rotated_at = ? \
             WHERE id = ? AND revoked_at IS NULL",
            [spent_hash, new_hash, at, id],
        )?;
        if changed == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn revoke_session(&mut self, id: &str, at: &str, reason: &str) -> Result<bool> {
        let changed = self.exec(
            "UPDATE fb_sessions SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL",
            [at, reason, id],
        )?;
        Ok(changed > 0)
    }

    async fn revoke_user_sessions(
        &mut self,
        user_id: &str,
        kind: &str,
        keep: Option<&str>,
        at: &str,
        reason: &str,
    ) -> Result<u64> {
        let changed = self.exec(
            "UPDATE fb_sessions SET revoked_at = ?, revoke_reason = ? \
             WHERE user_id = ? AND kind = ? AND revoked_at IS NULL AND id IS NOT ?",
            params![at, reason, user_id, kind, keep],
        )?;
        Ok(changed as u64)
    }

    async fn insert_auth_token(&mut self, t: &AuthTokenRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_auth_tokens (hash, user_id, purpose, email, epoch, created_at, expires_at, used_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                t.hash,
                t.user_id,
                t.purpose,
                t.email,
                t.epoch,
                t.created_at,
                t.expires_at,
                t.used_at
            ],
        )?;
        Ok(())
    }

    async fn redeem_auth_token(
        &mut self,
        hash: &str,
        purpose: &str,
        now: &str,
    ) -> Result<Option<AuthTokenRow>> {
        self.one(
            "UPDATE fb_auth_tokens SET used_at = ? WHERE hash = ? AND purpose = ? AND used_at IS NULL \
             AND expires_at > ? RETURNING hash, user_id, purpose, email, epoch, created_at, expires_at, used_at",
            [now, hash, purpose, now],
            |r| token_row(r),
        )
    }

    async fn insert_oauth_state(&mut self, s: &OAuthStateRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_oauth_states (state_hash, provider, verifier, nonce, redirect_to, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            params![
                s.state_hash,
                s.provider,
                s.verifier,
                s.nonce,
                s.redirect_to,
                s.created_at,
                s.expires_at
            ],
        )?;
        Ok(())
    }

    async fn take_oauth_state(
        &mut self,
        state_hash: &str,
        provider: &str,
        now: &str,
    ) -> Result<Option<OAuthStateRow>> {
        self.one(
            "DELETE FROM fb_oauth_states WHERE state_hash = ? AND provider = ? AND expires_at > ? \
             RETURNING state_hash, provider, verifier, nonce, redirect_to, created_at, expires_at",
            [state_hash, provider, now],
            |r| {
                Ok(OAuthStateRow {
                    state_hash: r.col(0)?,
                    provider: r.col(1)?,
                    verifier: r.col(2)?,
                    nonce: r.col(3)?,
                    redirect_to: r.col(4)?,
                    created_at: r.col(5)?,
                    expires_at: r.col(6)?,
                })
            },
        )
    }

    async fn insert_mail(&mut self, m: &MailRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_mail (id, to_addr, subject, text, created_at) VALUES (?, ?, ?, ?, ?)",
            params![m.id, m.to_addr, m.subject, m.text, m.created_at],
        )?;
        Ok(())
    }

    async fn insert_admin(&mut self, a: &AdminRow) -> Result<()> {
        self.exec(
            "INSERT INTO fb_admins (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)",
            params![a.id, a.email, a.password_hash, a.created_at],
        )
        .map_err(user_conflict)?;
        Ok(())
    }

    async fn set_admin_password(&mut self, id: &str, hash: &str) -> Result<()> {
        self.exec(
            "UPDATE fb_admins SET password_hash = ? WHERE id = ?",
            [hash, id],
        )?;
        Ok(())
    }
}

#[async_trait]
impl AuthRead for SqliteBackend {
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        read_user(self, USER_BY_ID, id).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        read_user(self, USER_BY_EMAIL, email).await
    }

    async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM fb_users WHERE (? IS NULL OR substr(email, 1, length(?)) = ? \
             OR substr(id, 1, length(?)) = ?) AND (? IS NULL OR id > ?) ORDER BY id LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(search)
            .bind(search)
            .bind(search)
            .bind(search)
            .bind(search)
            .bind(after)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_row).collect()
    }

    async fn session_state(&self, id: &str) -> Result<Option<SessionState>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM fb_sessions WHERE id = ?");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let session = session_row(&row)?;
        let (user, admin) = if session.kind == "admin" {
            let admin = sqlx::query(
                "SELECT id, email, password_hash, created_at FROM fb_admins WHERE id = ?",
            )
            .bind(&session.user_id)
            .fetch_optional(&self.read)
            .await?;
            (None, admin.as_ref().map(admin_row).transpose()?)
        } else {
            (read_user(self, USER_BY_ID, &session.user_id).await?, None)
        };
        Ok(Some(SessionState {
            session,
            user,
            admin,
        }))
    }

    async fn identity_user(&self, provider: &str, subject: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.password_hash, u.email_verified, u.anonymous, u.role, u.claims, u.data, \
             u.disabled, u.token_epoch, u.created_at, u.updated_at FROM fb_identities i \
             JOIN fb_users u ON u.id = i.user_id WHERE i.provider = ? AND i.subject = ?",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn admin_by_email(&self, email: &str) -> Result<Option<AdminRow>> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, created_at FROM fb_admins WHERE email = ?",
        )
        .bind(email)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(admin_row).transpose()
    }

    async fn list_mail(&self, limit: u32) -> Result<Vec<MailRow>> {
        let rows = sqlx::query(
            "SELECT id, to_addr, subject, text, created_at FROM fb_mail ORDER BY created_at DESC, id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MailRow {
                    id: r.col(0)?,
                    to_addr: r.col(1)?,
                    subject: r.col(2)?,
                    text: r.col(3)?,
                    created_at: r.col(4)?,
                })
            })
            .collect()
    }

    async fn prune_auth(&self, cutoff: &str) -> Result<u64> {
        self.delete_older(&PRUNE_AUTH, cutoff).await
    }
}

/// The auth tables' retention deletes (each served by an index; see the store tests).
pub(super) const PRUNE_AUTH: [&str; 5] = [
    // Spent refresh tokens before their sessions, or they would never match again.
    "DELETE FROM fb_refresh_spent WHERE rowid IN (SELECT r.rowid FROM fb_sessions s \
     JOIN fb_refresh_spent r ON r.session_id = s.id \
     WHERE s.expires_at < ?1 OR s.revoked_at < ?1 LIMIT ?2)",
    "DELETE FROM fb_sessions WHERE rowid IN (SELECT rowid FROM fb_sessions \
     WHERE expires_at < ?1 OR revoked_at < ?1 LIMIT ?2)",
    "DELETE FROM fb_auth_tokens WHERE rowid IN (SELECT rowid FROM fb_auth_tokens \
     WHERE expires_at < ?1 OR used_at < ?1 LIMIT ?2)",
    "DELETE FROM fb_oauth_states WHERE rowid IN (SELECT rowid FROM fb_oauth_states \
     WHERE expires_at < ?1 LIMIT ?2)",
    "DELETE FROM fb_mail WHERE rowid IN (SELECT rowid FROM fb_mail \
     WHERE created_at < ?1 LIMIT ?2)",
];
