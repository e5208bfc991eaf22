//! Access tokens: EdDSA-signed JWTs, 15 minutes by default.
//!
//! Verification is strict before any cryptography: exactly three segments, a header with
//! nothing but `alg: EdDSA`, our `kid` and an optional `typ: JWT` (so `alg: none`, HS256
//! with the public key, `jku`/`x5u`/`jwk`/`x5c`/`crit` headers and JWE are all refused
//! without fetching or parsing anything else), a bounded size. A verified token is cached
//! until it expires, so a client's repeated requests cost a map lookup, not a signature check.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys::Keys;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub sid: String,
    pub role: String,
    pub anon: bool,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    /// Set on console administrators' tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adm: bool,
    /// Custom claims an admin set on the user.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_CACHE: usize = 50_000;

/// Issues and verifies access tokens.
pub struct Tokens {
    keys: Arc<Keys>,
    issuer: String,
    ttl: Duration,
    validation: Validation,
    cache: RwLock<HashMap<Box<str>, Arc<AccessClaims>>>,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Tokens {
    pub fn new(keys: Arc<Keys>, issuer: String, ttl: Duration) -> Tokens {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = 5;
        Tokens {
            keys,
            issuer,
            ttl,
            validation,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs a token for a session.
    pub fn issue(
        &self,
        sub: &str,
        sid: &str,
        role: &str,
        anon: bool,
        adm: bool,
        claims: Map<String, Value>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let claims = AccessClaims {
            sub: sub.to_owned(),
            sid: sid.to_owned(),
            role: role.to_owned(),
            anon,
            iat: now,
            exp: now + i64::try_from(self.ttl.as_secs()).unwrap_or(900),
            iss: self.issuer.clone(),
            adm,
            claims,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.keys.encoding)
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        if let Some(claims) = self.cached(token) {
            return if claims.exp + i64::try_from(self.validation.leeway).unwrap_or(0) < unix_now() {
                Err(TokenError::Expired)
            } else {
                Ok(claims)
            };
        }
        self.check_header(token)?;
        let data =
            jsonwebtoken::decode::<AccessClaims>(token, &self.keys.decoding, &self.validation)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                })?;
        let claims = Arc::new(data.claims);
        if claims.sub.is_empty() || claims.sid.is_empty() {
            return Err(TokenError::Invalid);
        }
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= MAX_CACHE {
                cache.clear();
            }
            cache.insert(token.into(), claims.clone());
        }
        Ok(claims)
    }

    fn cached(&self, token: &str) -> Option<Arc<AccessClaims>> {
        self.cache.read().ok()?.get(token).cloned()
    }

    /// Refuses anything but three segments and a header of exactly our algorithm and key.
    fn check_header(&self, token: &str) -> Result<(), TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Invalid);
        };
        if header.len() > 1024 {
            return Err(TokenError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Invalid)?;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(TokenError::Invalid);
        };
        for (key, value) in &fields {
            let ok = match key.as_str() {
                "alg" => value == "EdDSA",
                "kid" => value.as_str() == Some(self.keys.kid.as_str()),
                "typ" => value == "JWT",
                _ => false,
            };
            if !ok {
                return Err(TokenError::Invalid);
            }
        }
        if fields.get("alg").is_none() || fields.get("kid").is_none() {
            return Err(TokenError::Invalid);
        }
        Ok(())
    }
}
