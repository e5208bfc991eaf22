//! The service key: configured, or generated once on first start.
//!
//! Only its SHA-256 is kept in the database (`fb_meta`), so every node of a cluster accepts
//! it and a database dump does not reveal it. A generated key is printed once and written to
//! `<data dir>/service_key` (mode 0600) on the node that generated it.

use crate::store::Store;
use crate::util::secret::{Secret, constant_time_eq, sha256_hex};

const META_KEY: &str = "service_key_sha256";

/// Checks presented keys against the service key's hash.
#[derive(Clone)]
pub struct ServiceKey {
    hash: String,
}

impl ServiceKey {
    /// The configured key, or the stored/generated one.
    pub async fn load(
        store: &Store,
        configured: Option<&Secret>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<ServiceKey> {
        use anyhow::Context as _;
        if let Some(key) = configured {
            anyhow::ensure!(
                key.expose().len() >= 16,
                "the service key must be at least 16 characters"
            );
            return Ok(ServiceKey {
                hash: sha256_hex(key.expose()),
            });
        }
        if let Some(hash) = store.get_meta(META_KEY).await? {
            return Ok(ServiceKey { hash });
        }
        let key = format!("fbsk_{}", crate::util::id::random_token(32));
        let hash = sha256_hex(&key);
        let stored = store.init_meta(META_KEY, &hash).await?;
        if stored == hash {
            // We won the race to create it: this node tells the operator, once.
            std::fs::create_dir_all(data_dir).context("creating the data folder")?;
            let path = data_dir.join("service_key");
            write_private(&path, &key).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "ferrobase: generated a service key (shown once; also saved to {}):\n  {key}",
                path.display()
            );
        }
        Ok(ServiceKey { hash: stored })
    }

    /// True when `presented` is the service key.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(sha256_hex(presented).as_bytes(), self.hash.as_bytes())
    }
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
