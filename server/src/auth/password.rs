//! Passwords: argon2id with OWASP parameters (m = 19 MiB, t = 2, p = 1), computed off the
//! async runtime (`spawn_blocking`) under a concurrency cap, so a login flood queues instead
//! of starving other requests or exhausting memory.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use tokio::sync::Semaphore;

/// OWASP's recommendation for argon2id.
pub const M_COST: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Shortest and longest accepted password (the upper bound caps hashing cost).
pub const MAX_LEN: usize = 256;

const COMMON: &str = include_str!("common_passwords.txt");

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when an account does not exist,
    /// so both paths take the same time (no account enumeration by timing).
    dummy: Arc<tokio::sync::OnceCell<String>>,
    min_len: usize,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but stored with weaker parameters: store a new hash.
    YesRehash,
}

impl Passwords {
    pub fn new(concurrency: usize, min_len: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(tokio::sync::OnceCell::new()),
            min_len,
        }
    }

    /// Refuses short, over-long and common passwords, and ones equal to the email.
    pub fn check_strength(&self, password: &str, email: Option<&str>) -> Result<(), String> {
        let len = password.chars().count();
        if len < self.min_len {
            return Err(format!(
                "passwords must be at least {} characters",
                self.min_len
            ));
        }
        if password.len() > MAX_LEN {
            return Err(format!("passwords must be at most {MAX_LEN} bytes"));
        }
        let lower = password.to_lowercase();
        if COMMON.lines().any(|common| common == lower) {
            return Err("this password is too common; choose another".into());
        }
        if let Some(email) = email {
            let local = email.split('@').next().unwrap_or("");
            if lower == email || (!local.is_empty() && lower == local) {
                return Err("the password must not be the email address".into());
            }
        }
        Ok(())
    }

    /// An argon2id PHC string for the password.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        self.blocking(move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("BUG: hashing failed: {e}"))
        })
        .await?
    }

    /// Checks a password against a stored hash (`None`: no such account — a dummy hash is
    /// verified instead, so the answer takes as long and is always `No`).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> anyhow::Result<Verified> {
        let (hash, real) = match stored {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash().await?, false),
        };
        let password = password.to_owned();
        let outcome = self
            .blocking(move || {
                let Ok(parsed) = PasswordHash::new(&hash) else {
                    return Verified::No;
                };
                if argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_err()
                {
                    return Verified::No;
                }
                if weaker_than_current(&parsed) {
                    Verified::YesRehash
                } else {
                    Verified::Yes
                }
            })
            .await?;
        Ok(if real { outcome } else { Verified::No })
    }

    async fn dummy_hash(&self) -> anyhow::Result<String> {
        self.dummy
            .get_or_try_init(|| async {
                let random = crate::util::id::random_token(24);
                self.hash(&random).await
            })
            .await
            .cloned()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| anyhow::anyhow!("password hashing is shut down"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| anyhow::anyhow!("BUG: password task failed: {e}"))
    }
}

fn weaker_than_current(hash: &PasswordHash) -> bool {
    if hash.algorithm.as_str() != "argon2id" {
        return true;
    }
    let param = |name: &str| {
        hash.params
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| v.decimal().ok())
            .unwrap_or(0)
    };
    param("m") < M_COST || param("t") < T_COST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_with_owasp_parameters_and_verifies() {
        let p = Passwords::new(2, 8);
        let hash = p.hash("correct horse battery").await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_eq!(
            p.verify("correct horse battery", Some(&hash))
                .await
                .unwrap(),
            Verified::Yes
        );
        assert_eq!(p.verify("wrong", Some(&hash)).await.unwrap(), Verified::No);
        assert_eq!(p.verify("anything", None).await.unwrap(), Verified::No);
        assert_eq!(
            p.verify("x", Some("not a hash")).await.unwrap(),
            Verified::No
        );
        let other = p.hash("correct horse battery").await.unwrap();
        assert_ne!(hash, other, "salts differ");
    }

    #[tokio::test]
    async fn weaker_hashes_are_flagged_for_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse battery")
        .unwrap()
        .to_string();
        let p = Passwords::new(1, 8);
        assert_eq!(
            p.verify("correct horse battery", Some(&weak))
                .await
                .unwrap(),
            Verified::YesRehash
        );
    }

    #[test]
    fn weak_passwords_are_refused() {
        let p = Passwords::new(1, 8);
        assert!(p.check_strength("short", None).is_err());
        assert!(p.check_strength("Password1", None).is_err());
        assert!(p.check_strength("qwerty123", None).is_err());
        assert!(
            p.check_strength("alice@example.com", Some("alice@example.com"))
                .is_err()
        );
        assert!(
            p.check_strength("alicealice", Some("alicealice@example.com"))
                .is_err()
        );
        assert!(p.check_strength(&"x".repeat(300), None).is_err());
        assert!(
            p.check_strength("correct horse battery", Some("a@b.c"))
                .is_ok()
        );
    }
}
