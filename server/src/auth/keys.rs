//! Server secrets that every node must share: the Ed25519 key that signs access tokens and
//! the secret that derives refresh-token successors. Generated once, kept in the database
//! (`fb_meta`), so a cluster agrees without configuration.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::Store;

const SIGNING_KEY: &str = "jwt_ed25519_seed";
const REFRESH_SECRET: &str = "refresh_hmac_secret";

/// The token-signing key pair and the refresh secret.
pub struct Keys {
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// Key id: the first 16 hex digits of SHA-256 of the public key.
    pub kid: String,
    /// The public key, base64url (the JWK `x`).
    pub public_x: String,
    pub refresh_secret: [u8; 32],
}

impl Keys {
    /// Loads the keys, generating them on the first start of the first node.
    pub async fn load(store: &Store) -> anyhow::Result<Keys> {
        let seed = shared_secret(store, SIGNING_KEY).await?;
        let refresh_secret = shared_secret(store, REFRESH_SECRET).await?;
        let signing = SigningKey::from_bytes(&seed);
        let der = signing
            .to_pkcs8_der()
            .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?;
        let public = signing.verifying_key().to_bytes();
        let kid = hex::encode(&Sha256::digest(public)[..8]);
        Ok(Keys {
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
            kid,
            public_x: URL_SAFE_NO_PAD.encode(public),
            refresh_secret,
        })
    }

    /// `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": self.public_x,
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            }]
        })
    }
}

/// A 32-byte secret stored once in `fb_meta` (the first node to start wins the race).
pub async fn shared_secret(store: &Store, name: &str) -> anyhow::Result<[u8; 32]> {
    let stored = match store.get_meta(name).await? {
        Some(value) => value,
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill(&mut bytes[..]);
            store.init_meta(name, &STANDARD.encode(bytes)).await?
        }
    };
    let bytes = STANDARD
        .decode(stored.trim())
        .map_err(|_| anyhow::anyhow!("the stored secret `{name}` is not base64"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the stored secret `{name}` is not 32 bytes"))
}
