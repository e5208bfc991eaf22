//! Auth tables on Postgres. Mirrors `sqlite/auth.rs`.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Executor, Postgres, Row};

use super::PgBackend;
use super::tx::PgSession;
use crate::store::auth::{
    AdminRow, AuthRead, AuthTokenRow, AuthTx, IdentityRow, MailRow, OAuthStateRow, RefreshMatch,
    SessionRow, SessionState, UserRow,
};
use crate::store::{Error, Result};

const USER_COLUMNS: &str = "id, email, password_hash, email_verified, anonymous, role, claims, data, \
     disabled, token_epoch, created_at, updated_at";
const SESSION_COLUMNS: &str = "id, kind, user_id, created_at, expires_at, revoked_at, revoke_reason, \
     refresh_hash, previous_hash, rotated_at, ip, user_agent";

fn user_row(r: &PgRow) -> Result<UserRow> {
    Ok(UserRow {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        email_verified: r.try_get(3)?,
        anonymous: r.try_get(4)?,
        role: r.try_get(5)?,
        claims: r.try_get(6)?,
        data: r.try_get(7)?,
        disabled: r.try_get(8)?,
        token_epoch: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

fn session_row(r: &PgRow, at: usize) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get(at)?,
        kind: r.try_get(at + 1)?,
        user_id: r.try_get(at + 2)?,
        created_at: r.try_get(at + 3)?,
        expires_at: r.try_get(at + 4)?,
        revoked_at: r.try_get(at + 5)?,
        revoke_reason: r.try_get(at + 6)?,
        refresh_hash: r.try_get(at + 7)?,
        previous_hash: r.try_get(at + 8)?,
        rotated_at: r.try_get(at + 9)?,
        ip: r.try_get(at + 10)?,
        user_agent: r.try_get(at + 11)?,
    })
}

fn token_row(r: &PgRow) -> Result<AuthTokenRow> {
    Ok(AuthTokenRow {
        hash: r.try_get(0)?,
        user_id: r.try_get(1)?,
        purpose: r.try_get(2)?,
        email: r.try_get(3)?,
        epoch: r.try_get(4)?,
        created_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        used_at: r.try_get(7)?,
    })
}

fn admin_row(r: &PgRow) -> Result<AdminRow> {
    Ok(AdminRow {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}

/// Reads shared by the session (inside the transaction) and the backend (reader pool).
async fn user_by<'e, E: Executor<'e, Database = Postgres>>(
    executor: E,
    column: &'static str,
    value: &str,
) -> Result<Option<UserRow>> {
    let sql = match column {
        "email" => {
            "SELECT id, email, password_hash, email_verified, anonymous, role, claims, data, \
                    disabled, token_epoch, created_at, updated_at FROM fb_users WHERE email = $1"
        }
        _ => {
            "SELECT id, email, password_hash, email_verified, anonymous, role, claims, data, \
              disabled, token_epoch, created_at, updated_at FROM fb_users WHERE id = $1"
        }
    };
    let row = sqlx::query(sql)
        .bind(value)
        .fetch_optional(executor)
        .await?;
    row.as_ref().map(user_row).transpose()
}

/// A unique violation on a user names the column.
fn user_conflict(e: sqlx::Error) -> Error {
    match Error::from(e) {
        Error::Conflict { .. } => Error::Conflict {
            constraint: "email".into(),
        },
        other => other,
    }
}

#[async_trait]
impl AuthTx for PgSession {
    async fn user_by_id(&mut self, id: &str) -> Result<Option<UserRow>> {
        user_by(self.conn(), "id", id).await
    }

    async fn user_by_email(&mut self, email: &str) -> Result<Option<UserRow>> {
        user_by(self.conn(), "email", email).await
    }

    async fn insert_user(&mut self, u: &UserRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_users (id, email, password_hash, email_verified, anonymous, role, claims, \
             data, disabled, token_epoch, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&u.id)
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(u.email_verified)
        .bind(u.anonymous)
        .bind(&u.role)
        .bind(&u.claims)
        .bind(&u.data)
        .bind(u.disabled)
        .bind(u.token_epoch)
        .bind(&u.created_at)
        .bind(&u.updated_at)
        .execute(self.conn())
        .await
        .map_err(user_conflict)?;
        Ok(())
    }

    async fn update_user(&mut self, u: &UserRow) -> Result<()> {
        let done = sqlx::query(
            "UPDATE fb_users SET email = $1, password_hash = $2, email_verified = $3, anonymous = $4, role = $5, \
             claims = $6, data = $7, disabled = $8, token_epoch = $9, updated_at = $10 WHERE id = $11",
        )
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(u.email_verified)
        .bind(u.anonymous)
        .bind(&u.role)
        .bind(&u.claims)
        .bind(&u.data)
        .bind(u.disabled)
        .bind(u.token_epoch)
        .bind(&u.updated_at)
        .bind(&u.id)
        .execute(self.conn())
        .await
        .map_err(user_conflict)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn delete_user(&mut self, id: &str) -> Result<bool> {
        sqlx::query(
            "DELETE FROM fb_refresh_spent WHERE session_id IN (SELECT id FROM fb_sessions WHERE kind = 'user' AND user_id = $1)",
        )
        .bind(id)
        .execute(self.conn())
        .await?;
        sqlx::query("DELETE FROM fb_sessions WHERE kind = 'user' AND user_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM fb_identities WHERE user_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        sqlx::query("DELETE FROM fb_auth_tokens WHERE user_id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        let done = sqlx::query("DELETE FROM fb_users WHERE id = $1")
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn identity(&mut self, provider: &str, subject: &str) -> Result<Option<IdentityRow>> {
        let row = sqlx::query(
            "SELECT provider, subject, user_id, email, data, created_at FROM fb_identities \
             WHERE provider = $1 AND subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional(self.conn())
        .await?;
        row.map(|r| {
            Ok(IdentityRow {
                provider: r.try_get(0)?,
                subject: r.try_get(1)?,
                user_id: r.try_get(2)?,
                email: r.try_get(3)?,
                data: r.try_get(4)?,
                created_at: r.try_get(5)?,
            })
        })
        .transpose()
    }

    async fn insert_identity(&mut self, i: &IdentityRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_identities (provider, subject, user_id, email, data, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&i.provider)
        .bind(&i.subject)
        .bind(&i.user_id)
        .bind(&i.email)
        .bind(&i.data)
        .bind(&i.created_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_session(&mut self, s: &SessionRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_sessions (id, kind, user_id, created_at, expires_at, revoked_at, revoke_reason, \
             refresh_hash, previous_hash, rotated_at, ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&s.id)
        .bind(&s.kind)
        .bind(&s.user_id)
        .bind(&s.created_at)
        .bind(&s.expires_at)
        .bind(&s.revoked_at)
        .bind(&s.revoke_reason)
        .bind(&s.refresh_hash)
        .bind(&s.previous_hash)
        .bind(&s.rotated_at)
        .bind(&s.ip)
        .bind(&s.user_agent)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn find_refresh(&mut self, hash: &str) -> Result<RefreshMatch> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM fb_sessions WHERE refresh_hash = $1 OR previous_hash = $2 LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hash)
            .bind(hash)
            .fetch_optional(self.conn())
            .await?;
        if let Some(row) = row {
            let session = session_row(&row, 0)?;
            return Ok(if session.refresh_hash == hash {
                RefreshMatch::Current(session)
            } else {
                RefreshMatch::Previous(session)
            });
        }
        let spent: Option<String> =
            sqlx::query_scalar("SELECT session_id FROM fb_refresh_spent WHERE hash = $1")
                .bind(hash)
                .fetch_optional(self.conn())
                .await?;
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
        sqlx::query(
            "INSERT INTO fb_refresh_spent (hash, session_id, spent_at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(spent_hash)
        .bind(id)
        .bind(at)
        .execute(self.conn())
        .await?;
        let done = sqlx::query(
            "UPDATE fb_sessions SET previous_hash = $1, refresh_hash = $2, rotated_at = $3 WHERE id = $4 AND revoked_at IS NULL",
        )
        .bind(spent_hash)
        .bind(new_hash)
        .bind(at)
        .bind(id)
        .execute(self.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn revoke_session(&mut self, id: &str, at: &str, reason: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE fb_sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(reason)
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn revoke_user_sessions(
        &mut self,
        user_id: &str,
        kind: &str,
        keep: Option<&str>,
        at: &str,
        reason: &str,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE fb_sessions SET revoked_at = $1, revoke_reason = $2 \
             WHERE user_id = $3 AND kind = $4 AND revoked_at IS NULL AND id IS DISTINCT FROM $5",
        )
        .bind(at)
        .bind(reason)
        .bind(user_id)
        .bind(kind)
        .bind(keep)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_auth_token(&mut self, t: &AuthTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_auth_tokens (hash, user_id, purpose, email, epoch, created_at, expires_at, used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.hash)
        .bind(&t.user_id)
        .bind(&t.purpose)
        .bind(&t.email)
        .bind(t.epoch)
        .bind(&t.created_at)
        .bind(&t.expires_at)
        .bind(&t.used_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn redeem_auth_token(
        &mut self,
        hash: &str,
        purpose: &str,
        now: &str,
    ) -> Result<Option<AuthTokenRow>> {
        let row = sqlx::query(
            "UPDATE fb_auth_tokens SET used_at = $1 WHERE hash = $2 AND purpose = $3 AND used_at IS NULL \
             AND expires_at > $4 RETURNING hash, user_id, purpose, email, epoch, created_at, expires_at, used_at",
        )
        .bind(now)
        .bind(hash)
        .bind(purpose)
        .bind(now)
        .fetch_optional(self.conn())
        .await?;
        row.as_ref().map(token_row).transpose()
    }

    async fn insert_oauth_state(&mut self, s: &OAuthStateRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_oauth_states (state_hash, provider, verifier, nonce, redirect_to, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.state_hash)
        .bind(&s.provider)
        .bind(&s.verifier)
        .bind(&s.nonce)
        .bind(&s.redirect_to)
        .bind(&s.created_at)
        .bind(&s.expires_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn take_oauth_state(
        &mut self,
        state_hash: &str,
        provider: &str,
        now: &str,
    ) -> Result<Option<OAuthStateRow>> {
        let row = sqlx::query(
            "DELETE FROM fb_oauth_states WHERE state_hash = $1 AND provider = $2 AND expires_at > $3 \
             RETURNING state_hash, provider, verifier, nonce, redirect_to, created_at, expires_at",
        )
        .bind(state_hash)
        .bind(provider)
        .bind(now)
        .fetch_optional(self.conn())
        .await?;
        row.map(|r| {
            Ok(OAuthStateRow {
                state_hash: r.try_get(0)?,
                provider: r.try_get(1)?,
                verifier: r.try_get(2)?,
                nonce: r.try_get(3)?,
                redirect_to: r.try_get(4)?,
                created_at: r.try_get(5)?,
                expires_at: r.try_get(6)?,
            })
        })
        .transpose()
    }

    async fn insert_mail(&mut self, m: &MailRow) -> Result<()> {
        sqlx::query("INSERT INTO fb_mail (id, to_addr, subject, text, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&m.id)
            .bind(&m.to_addr)
            .bind(&m.subject)
            .bind(&m.text)
            .bind(&m.created_at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_admin(&mut self, a: &AdminRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_admins (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&a.id)
        .bind(&a.email)
        .bind(&a.password_hash)
        .bind(&a.created_at)
        .execute(self.conn())
        .await
        .map_err(user_conflict)?;
        Ok(())
    }

    async fn set_admin_password(&mut self, id: &str, hash: &str) -> Result<()> {
        sqlx::query("UPDATE fb_admins SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl AuthRead for PgBackend {
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRow>> {
        user_by(&self.read, "id", id).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        user_by(&self.read, "email", email).await
    }

    async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRow>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM fb_users WHERE ($1::text IS NULL OR starts_with(email, $1) \
             OR starts_with(id, $1)) AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(search)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_row).collect()
    }

    async fn session_state(&self, id: &str) -> Result<Option<SessionState>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM fb_sessions WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let session = session_row(&row, 0)?;
        let (user, admin) = if session.kind == "admin" {
            let admin = sqlx::query(
                "SELECT id, email, password_hash, created_at FROM fb_admins WHERE id = $1",
            )
            .bind(&session.user_id)
            .fetch_optional(&self.read)
            .await?;
            (None, admin.as_ref().map(admin_row).transpose()?)
        } else {
            (user_by(&self.read, "id", &session.user_id).await?, None)
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
             JOIN fb_users u ON u.id = i.user_id WHERE i.provider = $1 AND i.subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn admin_by_email(&self, email: &str) -> Result<Option<AdminRow>> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, created_at FROM fb_admins WHERE email = $1",
        )
        .bind(email)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(admin_row).transpose()
    }

    async fn list_mail(&self, limit: u32) -> Result<Vec<MailRow>> {
        let rows = sqlx::query(
            "SELECT id, to_addr, subject, text, created_at FROM fb_mail ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MailRow {
                    id: r.try_get(0)?,
                    to_addr: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    text: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn prune_auth(&self, cutoff: &str) -> Result<u64> {
        self.delete_older(
            &[
                // Spent refresh tokens before their sessions (see the SQLite backend).
                "DELETE FROM fb_refresh_spent WHERE hash IN (SELECT r.hash FROM fb_sessions s \
                 JOIN fb_refresh_spent r ON r.session_id = s.id \
                 WHERE s.expires_at < $1 OR s.revoked_at < $1 LIMIT $2)",
                "DELETE FROM fb_sessions WHERE id IN (SELECT id FROM fb_sessions \
                 WHERE expires_at < $1 OR revoked_at < $1 LIMIT $2)",
                "DELETE FROM fb_auth_tokens WHERE hash IN (SELECT hash FROM fb_auth_tokens \
                 WHERE expires_at < $1 OR used_at < $1 LIMIT $2)",
                "DELETE FROM fb_oauth_states WHERE state_hash IN (SELECT state_hash \
                 FROM fb_oauth_states WHERE expires_at < $1 LIMIT $2)",
                "DELETE FROM fb_mail WHERE id IN (SELECT id FROM fb_mail \
                 WHERE created_at < $1 LIMIT $2)",
            ],
            cutoff,
        )
        .await
    }
}
