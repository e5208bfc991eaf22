//! WeChat mini-program login: exchange the `code` from `wx.login()` for the user's openid
//! (`jscode2session`), then find or create the user by openid. The `session_key` WeChat
//! returns is never stored, logged or sent to the client; openid and unionid come only from
//! WeChat's server-to-server answer, never from the client.

use serde::Deserialize;
use serde_json::json;

use super::Error;
use super::service::{Auth, RequestCtx, Session};
use crate::store::auth::{IdentityRow, UserRow};
use crate::util::{id, time};

pub const PROVIDER: &str = "wechat";

#[derive(Deserialize)]
struct Code2Session {
    #[serde(default)]
    openid: Option<String>,
    #[serde(default)]
    unionid: Option<String>,
    #[serde(default)]
    errcode: Option<i64>,
    #[serde(default)]
    errmsg: Option<String>,
}

impl Auth {
    /// `POST /v1/auth/wechat {code}`.
    pub async fn wechat(&self, code: &str, ctx: &RequestCtx) -> Result<Session, Error> {
        self.rate("wechat", &self.config.rate_limits.wechat, ctx.ip)?;
        let config = &self.config.wechat;
        let (Some(app_id), Some(secret)) = (&config.app_id, &config.app_secret) else {
            return Err(Error::Forbidden("WeChat sign-in is not configured".into()));
        };
        if code.is_empty() || code.len() > 256 || !code.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::BadRequest(
                "`code` must be the code from wx.login()".into(),
            ));
        }
        let url = format!(
            "{}/sns/jscode2session",
            config.api_base.trim_end_matches('/')
        );
        let response = self
            .http()?
            .get(url)
            .query(&[
                ("appid", app_id.as_str()),
                ("secret", secret.expose()),
                ("js_code", code),
                ("grant_type", "authorization_code"),
            ])
            .send()
            .await
            .map_err(|_| Error::WeChat("WeChat could not be reached".into()))?;
        let answer: Code2Session = response
            .json()
            .await
            .map_err(|_| Error::WeChat("WeChat gave an unreadable answer".into()))?;
        if let Some(code) = answer.errcode.filter(|c| *c != 0) {
            let reason = answer.errmsg.unwrap_or_default();
            tracing::info!(wechat.errcode = code, wechat.errmsg = %reason, "WeChat refused a login code");
            return Err(Error::WeChat(format!(
                "WeChat refused the code (errcode {code})"
            )));
        }
        let openid = answer
            .openid
            .filter(|o| !o.is_empty() && o.len() <= 128)
            .ok_or_else(|| Error::WeChat("WeChat returned no openid".into()))?;
        let subject = format!("{app_id}:{openid}");
        if let Some(user) = self.store.auth().identity_user(PROVIDER, &subject).await? {
            if user.disabled {
                return Err(Error::Disabled);
            }
            return self.start_session(&user, None, ctx).await;
        }
        let now = time::now();
        let user = UserRow {
            id: id::new_id(),
            email: None,
            password_hash: None,
            email_verified: false,
            anonymous: false,
            role: "user".into(),
            claims: "{}".into(),
            data: "{}".into(),
            disabled: false,
            token_epoch: 0,
            created_at: now.clone(),
            updated_at: now.clone(),
        };
        let identity = IdentityRow {
            provider: PROVIDER.into(),
            subject,
            user_id: user.id.clone(),
            email: None,
            data: json!({ "openid": openid, "unionid": answer.unionid, "appid": app_id })
                .to_string(),
            created_at: now,
        };
        self.create_user_with(user, None, Some(identity), ctx).await
    }
}
