//! OAuth2 / OpenID Connect sign-in: authorization code with PKCE (S256), `state` and `nonce`.
//!
//! 1. `GET /v1/auth/oauth/{provider}?redirect_to=…` stores a hashed, single-use `state` with
//!    the PKCE verifier and nonce, and redirects to the provider.
//! 2. `GET /v1/auth/oauth/{provider}/callback?code&state` takes the state (once), exchanges
//!    the code, and learns who the user is: from a verified `id_token` (OIDC: signature by
//!    the provider's JWKS, `iss`, `aud`, `azp`, `exp`, `nonce`; only RS256/ES256/EdDSA) or
//!    from the userinfo endpoint (GitHub).
//! 3. The identity finds its user. A new identity is linked to an existing account only by
//!    an email the *provider* verified; an existing account whose email was never verified
//!    is taken over and its password wiped (it may have been pre-registered by an attacker);
//!    an unverified provider email links nothing and creates a fresh account without email.
//!
//! `redirect_to` must equal one of `auth.redirect_urls` exactly; the session then travels in
//! the URL fragment (`#access_token=…&refresh_token=…`), otherwise the callback answers JSON.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Error;
use super::service::{Auth, RequestCtx, Session};
use crate::config::{AuthConfig, OAuthProviderConfig};
use crate::store::Tx;
use crate::store::auth::{IdentityRow, OAuthStateRow, UserRow};
use crate::util::secret::sha256_hex;
use crate::util::{id, time};

const STATE_TTL: Duration = Duration::from_secs(600);

/// A provider's endpoints, once discovered.
#[derive(Debug, Clone)]
struct Endpoints {
    issuer: Option<String>,
    authorize: String,
    token: String,
    userinfo: Option<String>,
    jwks: Option<String>,
    /// GitHub: where verified addresses are listed.
    emails: Option<String>,
}

/// The configured providers, with discovered endpoints and JWKS cached.
pub struct Providers {
    configs: HashMap<String, OAuthProviderConfig>,
    endpoints: Mutex<HashMap<String, Endpoints>>,
    jwks: Mutex<HashMap<String, (Instant, JwkSet)>>,
}

impl Providers {
    pub fn new(config: &AuthConfig) -> Providers {
        Providers {
            configs: config.oauth.clone().into_iter().collect(),
            endpoints: Mutex::new(HashMap::new()),
            jwks: Mutex::new(HashMap::new()),
        }
    }
}

fn preset(config: &OAuthProviderConfig) -> &str {
    config.preset.as_deref().unwrap_or("oidc")
}

fn scopes(config: &OAuthProviderConfig) -> String {
    if let Some(scopes) = &config.scopes {
        return scopes.join(" ");
    }
    match preset(config) {
        "github" => "read:user user:email".into(),
        _ => "openid email profile".into(),
    }
}

fn random() -> String {
    id::random_token(32)
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// What the provider says about the user.
#[derive(Debug)]
struct Claims {
    subject: String,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct IdTokenClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Option<Value>,
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

impl Auth {
    fn provider(&self, name: &str) -> Result<&OAuthProviderConfig, Error> {
        self.oauth.configs.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "no OAuth provider `{}`",
                crate::query::shorten_for_message(name)
            ))
        })
    }

    fn callback_url(&self, provider: &str) -> String {
        format!(
            "{}/v1/auth/oauth/{provider}/callback",
            self.config.public_url.trim_end_matches('/')
        )
    }

    /// Only an exact match of a configured URL is accepted.
    fn allowed_redirect(&self, redirect_to: &str) -> Result<String, Error> {
        let bad = || Error::BadRequest("`redirect_to` is not an allowed redirect URL".into());
        let url = url::Url::parse(redirect_to).map_err(|_| bad())?;
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(bad());
        }
        let canonical = url.as_str();
        self.config
            .redirect_urls
            .iter()
            .filter_map(|allowed| url::Url::parse(allowed).ok())
            .any(|allowed| allowed.as_str() == canonical)
            .then(|| canonical.to_owned())
            .ok_or_else(bad)
    }

    async fn endpoints(&self, name: &str) -> Result<Endpoints, Error> {
        if let Some(e) = self
            .oauth
            .endpoints
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
        {
            return Ok(e);
        }
        let config = self.provider(name)?;
        let mut endpoints = match preset(config) {
            "github" => Endpoints {
                issuer: None,
                authorize: "https://github.com/login/oauth/authorize".into(),
                token: "https://github.com/login/oauth/access_token".into(),
                userinfo: Some("https://api.github.com/user".into()),
                jwks: None,
                emails: Some("https://api.github.com/user/emails".into()),
            },
            other => {
                let issuer = config.issuer.clone().or_else(|| {
                    (other == "google").then(|| "https://accounts.google.com".to_owned())
                });
                let discovered = match (&issuer, &config.authorize_url, &config.token_url) {
                    (Some(issuer), None, _) | (Some(issuer), _, None) => {
                        Some(self.discover(issuer).await?)
                    }
                    _ => None,
                };
                let from = |key: &str| {
                    discovered
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                };
                Endpoints {
                    authorize: from("authorization_endpoint").unwrap_or_default(),
                    token: from("token_endpoint").unwrap_or_default(),
                    userinfo: from("userinfo_endpoint"),
                    jwks: from("jwks_uri"),
                    issuer,
                    emails: None,
                }
            }
        };
        if let Some(u) = &config.authorize_url {
            endpoints.authorize = u.clone();
        }
        if let Some(u) = &config.token_url {
            endpoints.token = u.clone();
        }
        if let Some(u) = &config.userinfo_url {
            endpoints.userinfo = Some(u.clone());
            if preset(config) == "github" {
                // GitHub lists verified addresses at `<user endpoint>/emails`.
                endpoints.emails = Some(format!("{}/emails", u.trim_end_matches('/')));
            }
        }
        if let Some(u) = &config.jwks_url {
            endpoints.jwks = Some(u.clone());
        }
        if endpoints.authorize.is_empty() || endpoints.token.is_empty() {
            return Err(Error::OAuth("the provider's endpoints are unknown".into()));
        }
        if let Ok(mut m) = self.oauth.endpoints.lock() {
            m.insert(name.to_owned(), endpoints.clone());
        }
        Ok(endpoints)
    }

    async fn discover(&self, issuer: &str) -> Result<Value, Error> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc: Value = self
            .http()?
            .get(url)
            .send()
            .await
            .map_err(|_| Error::OAuth("the provider could not be reached".into()))?
            .json()
            .await
            .map_err(|_| Error::OAuth("the provider's discovery document is unreadable".into()))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(Error::OAuth(
                "the discovery document names another issuer".into(),
            ));
        }
        Ok(doc)
    }

    /// Step 1: where to send the browser.
    pub async fn oauth_start(
        &self,
        provider: &str,
        redirect_to: Option<&str>,
    ) -> Result<String, Error> {
        let config = self.provider(provider)?;
        let redirect_to = redirect_to.map(|r| self.allowed_redirect(r)).transpose()?;
        let endpoints = self.endpoints(provider).await?;
        let (state, verifier, nonce) = (random(), random(), random());
        let row = OAuthStateRow {
            state_hash: sha256_hex(&state),
            provider: provider.to_owned(),
            verifier: verifier.clone(),
            nonce: nonce.clone(),
            redirect_to,
            created_at: time::now(),
            expires_at: time::later(STATE_TTL),
        };
        self.store
            .write(Box::new(move |tx: &mut dyn Tx| {
                async move { tx.auth().insert_oauth_state(&row).await }.boxed()
            }))
            .await?;
        let mut url = url::Url::parse(&endpoints.authorize)
            .map_err(|_| Error::OAuth("the provider's authorize URL is invalid".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &config.client_id)
            .append_pair("redirect_uri", &self.callback_url(provider))
            .append_pair("scope", &scopes(config))
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", &nonce);
        Ok(url.into())
    }

    /// Step 2: the provider sent the browser back. Returns the session and where to send it.
    pub async fn oauth_callback(
        &self,
        provider: &str,
        code: Option<&str>,
        state: Option<&str>,
        error: Option<&str>,
        ctx: &RequestCtx,
    ) -> Result<(Session, Option<String>), Error> {
        let config = self.provider(provider)?.clone();
        let state = state
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .ok_or_else(|| Error::OAuth("missing `state`".into()))?;
        let state_hash = sha256_hex(state);
        let provider_owned = provider.to_owned();
        let taken = self
            .store
            .write(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    tx.auth()
                        .take_oauth_state(&state_hash, &provider_owned, &time::now())
                        .await
                }
                .boxed()
            }))
            .await?
            .ok_or_else(|| Error::OAuth("unknown, used or expired `state`".into()))?;
        if let Some(error) = error {
            return Err(Error::OAuth(format!(
                "the provider answered `{}`",
                crate::query::shorten_for_message(error)
            )));
        }
        let code = code
            .filter(|c| !c.is_empty() && c.len() <= 2048)
            .ok_or_else(|| Error::OAuth("missing `code`".into()))?;
        let endpoints = self.endpoints(provider).await?;
        let answer: TokenAnswer = self
            .http()?
            .post(&endpoints.token)
            .header("accept", "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.callback_url(provider)),
                ("client_id", &config.client_id),
                ("client_secret", config.client_secret.expose()),
                ("code_verifier", &taken.verifier),
            ])
            .send()
            .await
            .map_err(|_| Error::OAuth("the provider could not be reached".into()))?
            .json()
            .await
            .map_err(|_| Error::OAuth("the provider's token answer is unreadable".into()))?;
        if let Some(error) = answer.error {
            return Err(Error::OAuth(format!(
                "the provider refused the code (`{}`)",
                crate::query::shorten_for_message(&error)
            )));
        }
        let claims = match (&answer.id_token, preset(&config)) {
            (Some(id_token), p) if p != "github" => {
                self.verify_id_token(provider, &config, &endpoints, id_token, &taken.nonce)
                    .await?
            }
            _ => {
                let access = answer
                    .access_token
                    .as_deref()
                    .ok_or_else(|| Error::OAuth("the provider returned no access token".into()))?;
                self.userinfo(&config, &endpoints, access).await?
            }
        };
        let session = self.sign_in_identity(provider, claims, ctx).await?;
        Ok((session, taken.redirect_to))
    }

    async fn provider_keys(
        &self,
        provider: &str,
        url: &str,
        refresh: bool,
    ) -> Result<JwkSet, Error> {
        if !refresh
            && let Some((_, set)) = self
                .oauth
                .jwks
                .lock()
                .ok()
                .and_then(|m| m.get(provider).cloned())
        {
            return Ok(set);
        }
        if refresh
            && let Some((fetched, set)) = self
                .oauth
                .jwks
                .lock()
                .ok()
                .and_then(|m| m.get(provider).cloned())
            && fetched.elapsed() < Duration::from_secs(60)
        {
            return Ok(set);
        }
        let set: JwkSet = self
            .http()?
            .get(url)
            .send()
            .await
            .map_err(|_| Error::OAuth("the provider's keys could not be fetched".into()))?
            .json()
            .await
            .map_err(|_| Error::OAuth("the provider's keys are unreadable".into()))?;
        if let Ok(mut m) = self.oauth.jwks.lock() {
            m.insert(provider.to_owned(), (Instant::now(), set.clone()));
        }
        Ok(set)
    }

    async fn verify_id_token(
        &self,
        provider: &str,
        config: &OAuthProviderConfig,
        endpoints: &Endpoints,
        token: &str,
        nonce: &str,
    ) -> Result<Claims, Error> {
        let invalid = |why: &str| Error::OAuth(format!("the ID token is not acceptable: {why}"));
        if token.len() > 16 * 1024 {
            return Err(invalid("too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(invalid("unsupported algorithm"));
        }
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() {
            return Err(invalid("keys must come from the provider's JWKS"));
        }
        let issuer = endpoints
            .issuer
            .as_deref()
            .ok_or_else(|| invalid("no issuer is configured"))?;
        let jwks_url = endpoints
            .jwks
            .as_deref()
            .ok_or_else(|| invalid("no JWKS is known"))?;
        let find = |set: &JwkSet| match &header.kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let jwk = match find(&self.provider_keys(provider, jwks_url, false).await?) {
            Some(k) => k,
            None => find(&self.provider_keys(provider, jwks_url, true).await?)
                .ok_or_else(|| invalid("unknown key"))?,
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| invalid("unusable key"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[config.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<IdTokenClaims>(token, &key, &validation)
            .map_err(|_| invalid("signature or claims"))?;
        let claims = data.claims;
        let several_audiences = matches!(&claims.aud, Some(Value::Array(a)) if a.len() > 1);
        match &claims.azp {
            Some(azp) if azp != &config.client_id => {
                return Err(invalid("azp names another client"));
            }
            None if several_audiences => {
                return Err(invalid("azp is required with several audiences"));
            }
            _ => {}
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(invalid("nonce mismatch"));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(invalid("bad subject"));
        }
        Ok(Claims {
            subject: claims.sub,
            email_verified: truthy(claims.email_verified.as_ref()),
            email: claims.email,
            name: claims.name,
        })
    }

    async fn userinfo(
        &self,
        config: &OAuthProviderConfig,
        endpoints: &Endpoints,
        access: &str,
    ) -> Result<Claims, Error> {
        let url = endpoints
            .userinfo
            .as_deref()
            .ok_or_else(|| Error::OAuth("the provider has no userinfo endpoint".into()))?;
        let info: Value = self
            .http()?
            .get(url)
            .bearer_auth(access)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| Error::OAuth("the provider could not be reached".into()))?
            .json()
            .await
            .map_err(|_| Error::OAuth("the provider's user info is unreadable".into()))?;
        if preset(config) == "github" {
            let subject = info
                .get("id")
                .and_then(|v| {
                    v.as_u64()
                        .map(|n| n.to_string())
                        .or_else(|| v.as_str().map(str::to_owned))
                })
                .ok_or_else(|| Error::OAuth("the provider returned no user id".into()))?;
            // Only an address GitHub marks verified (and primary) counts.
            let mut email = None;
            if let Some(emails_url) = &endpoints.emails
                && let Ok(response) = self
                    .http()?
                    .get(emails_url)
                    .bearer_auth(access)
                    .send()
                    .await
                && let Ok(Value::Array(list)) = response.json::<Value>().await
            {
                email = list
                    .iter()
                    .find(|e| truthy(e.get("primary")) && truthy(e.get("verified")))
                    .and_then(|e| e.get("email").and_then(Value::as_str))
                    .map(str::to_owned);
            }
            return Ok(Claims {
                subject,
                email_verified: email.is_some(),
                email,
                name: info.get("login").and_then(Value::as_str).map(str::to_owned),
            });
        }
        let subject = info
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::OAuth("the provider returned no subject".into()))?
            .to_owned();
        Ok(Claims {
            subject,
            email: info.get("email").and_then(Value::as_str).map(str::to_owned),
            email_verified: truthy(info.get("email_verified")),
            name: info.get("name").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// Step 3: the identity's user — found, linked by a verified email, or created.
    async fn sign_in_identity(
        &self,
        provider: &str,
        claims: Claims,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        if let Some(user) = self
            .store
            .auth()
            .identity_user(provider, &claims.subject)
            .await?
        {
            if user.disabled {
                return Err(Error::Disabled);
            }
            return self.start_session(&user, None, ctx).await;
        }
        let verified_email = claims
            .email
            .as_deref()
            .filter(|_| claims.email_verified)
            .and_then(|e| super::user::normalize_email(e).ok());
        let now = time::now();
        let identity = IdentityRow {
            provider: provider.to_owned(),
            subject: claims.subject.clone(),
            user_id: String::new(),
            email: claims.email.clone(),
            data: json!({ "name": claims.name, "email_verified": claims.email_verified })
                .to_string(),
            created_at: now.clone(),
        };
        if let Some(email) = &verified_email
            && let Some(existing) = self.store.auth().user_by_email(email).await?
        {
            if existing.disabled {
                return Err(Error::Disabled);
            }
            return self.link_identity(existing, identity, ctx).await;
        }
        let user = UserRow {
            id: id::new_id(),
            email: verified_email.clone(),
            password_hash: None,
            email_verified: verified_email.is_some(),
            anonymous: false,
            role: "user".into(),
            claims: "{}".into(),
            data: "{}".into(),
            disabled: false,
            token_epoch: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        let identity = IdentityRow {
            user_id: user.id.clone(),
            ..identity
        };
        self.create_user_with(user, None, Some(identity), ctx).await
    }

    /// Attaches an identity (with a provider-verified email) to the account with that email.
    /// If the account never proved its address, whoever registered it may not own it: its
    /// password is wiped and its sessions end, and it now belongs to the verified owner.
    async fn link_identity(
        &self,
        existing: UserRow,
        identity: IdentityRow,
        ctx: &RequestCtx,
    ) -> Result<Session, Error> {
        let takeover = !existing.email_verified;
        let user_id = existing.id.clone();
        let identity = IdentityRow {
            user_id: user_id.clone(),
            ..identity
        };
        let user = self
            .store
            .write_all_or_nothing(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let now = time::now();
                    let auth = tx.auth();
                    let Some(mut user) = auth.user_by_id(&user_id).await? else {
                        return Err(crate::store::Error::NotFound);
                    };
                    if takeover {
                        user.password_hash = None;
                        user.email_verified = true;
                        user.token_epoch += 1;
                        user.updated_at = now.clone();
                        auth.update_user(&user).await?;
                        auth.revoke_user_sessions(
                            &user.id,
                            "user",
                            None,
                            &now,
                            "unverified_takeover",
                        )
                        .await?;
                    }
                    auth.insert_identity(&identity).await?;
                    Ok(user)
                }
                .boxed()
            }))
            .await?;
        if takeover {
            self.forget(None, Some(&user.id));
        }
        self.start_session(&user, None, ctx).await
    }
}

/// The fragment that carries a session back to the app after OAuth.
pub fn session_fragment(session: &Session) -> String {
    let mut fragment = url::form_urlencoded::Serializer::new(String::new());
    fragment
        .append_pair("access_token", &session.access_token)
        .append_pair("refresh_token", &session.refresh_token)
        .append_pair("token_type", "bearer")
        .append_pair("expires_in", &session.expires_in.to_string());
    fragment.finish()
}
