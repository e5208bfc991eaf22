//! Passwords: argon2id with OWASP parameters (m = 19 MiB, t = 2, p = 1), computed off the
//! async runtime on a fixed pool of hashing threads, so a login flood queues instead of
//! starving other requests.
//!
//! Priority: the hashing threads run at the lowest scheduling priority (nice 19), so on a
//! small machine a login flood takes the CPU only when request handling does not want it.
//!
//! Memory: argon2 needs 19 MiB per hash. Allocating that per call made glibc keep freed
//! blocks in its arenas (its mmap threshold rises after the first free), and a login flood
//! grew the process to 230 MiB. Each hashing thread instead keeps one buffer for its
//! lifetime: memory is N × 19 MiB once passwords have been hashed, and never more.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};

use crate::util::secret::constant_time_eq;

/// Largest work area a stored hash may ask for (256 MiB).
const MAX_BLOCKS: usize = 256 * 1024;

thread_local! {
    /// This thread's argon2 work area, reused by every hash it computes.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        f(&mut memory[..blocks])
    })
}

/// A new argon2id PHC string for `password`.
fn hash_now(password: &str) -> anyhow::Result<String> {
    let params = Params::new(M_COST, T_COST, P_COST, None)
        .map_err(|e| anyhow::anyhow!("BUG: argon2 parameters: {e}"))?;
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt[..]);
    let mut out = [0u8; 32];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    with_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, memory)
    })
    .map_err(|e| anyhow::anyhow!("BUG: hashing failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13 as u32),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("BUG: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("BUG: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("BUG: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a stored PHC string (any argon2 variant and parameters).
fn verify_now(password: &str, stored: &str) -> Verified {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verified::No;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::new(parsed.algorithm.as_str()),
        Params::try_from(&parsed),
    ) else {
        return Verified::No;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return Verified::No,
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Verified::No;
    };
    if params.block_count() > MAX_BLOCKS {
        return Verified::No;
    }
    let mut out = vec![0u8; expected.len()];
    let weaker =
        algorithm != Algorithm::Argon2id || params.m_cost() < M_COST || params.t_cost() < T_COST;
    let argon = Argon2::new(algorithm, version, params.clone());
    let computed = with_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), &mut out, memory)
    });
    match computed {
        Ok(()) if constant_time_eq(&out, expected.as_bytes()) => {
            if weaker {
                Verified::YesRehash
            } else {
                Verified::Yes
            }
        }
        _ => Verified::No,
    }
}

type Task = Box<dyn FnOnce() + Send>;

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
    queue: mpsc::UnboundedSender<Task>,
    /// A real hash of a random password, verified against when an account does not exist,
    /// so both paths take the same time (no account enumeration by timing).
    dummy: Arc<tokio::sync::OnceCell<String>>,
    min_len: usize,
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
    /// Starts `concurrency` hashing threads (they end when the last clone is dropped).
    pub fn new(concurrency: usize, min_len: usize) -> Self {
        let (queue, rx) = mpsc::unbounded_channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // nice 19, not SCHED_IDLE: the latter measured about the same for other
                    // requests but starves logins outright on a saturated machine.
                    if let Err(e) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
                        tracing::debug!(error = ?e, "could not lower the hashing thread's priority");
                    }
                    loop {
                        let task = match rx.lock() {
                            Ok(mut rx) => rx.blocking_recv(),
                            Err(_) => None,
                        };
                        match task {
                            Some(task) => task(),
                            None => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self {
            queue,
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
        self.blocking(move || hash_now(&password)).await?
    }

    /// Checks a password against a stored hash (`None`: no such account — a dummy hash is
    /// verified instead, so the answer takes as long and is always `No`).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> anyhow::Result<Verified> {
        let (hash, real) = match stored {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash().await?, false),
        };
        let password = password.to_owned();
        let outcome = self.blocking(move || verify_now(&password, &hash)).await?;
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
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| anyhow::anyhow!("password hashing is shut down"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("BUG: a password task did not finish"))
    }
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
        use argon2::PasswordHasher;
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
        // Hashes made by the argon2 crate's own API verify too.
        let standard = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(M_COST, T_COST, P_COST, None).unwrap(),
        )
        .hash_password(b"correct horse battery")
        .unwrap()
        .to_string();
        assert_eq!(
            verify_now("correct horse battery", &standard),
            Verified::Yes
        );
        assert_eq!(verify_now("wrong", &standard), Verified::No);
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
