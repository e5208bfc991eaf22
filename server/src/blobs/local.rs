//! Blobs as files: `<root>/blobs/<first two chars>/<id>`, written as `<root>/tmp/<id>` and
//! renamed into place after an fsync. Paths are built only from validated blob ids, never
//! from anything a client sent.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Blobs, ByteStream, Error, Stored, valid_id};

pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    /// Creates the folders under `root` if needed.
    pub fn open(root: &Path) -> std::io::Result<LocalBlobs> {
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalBlobs {
            root: root.to_owned(),
        })
    }

    fn path(&self, id: &str) -> Result<PathBuf, Error> {
        if !valid_id(id) {
            return Err(Error::Io("BUG: invalid blob id".into()));
        }
        Ok(self
            .root
            .join("blobs")
            .join(&id[..2.min(id.len())])
            .join(id))
    }

    fn temp(&self, id: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{id}.part"))
    }
}

#[async_trait]
impl Blobs for LocalBlobs {
    async fn put(&self, id: &str, mut body: ByteStream<'_>, limit: u64) -> Result<Stored, Error> {
        let target = self.path(id)?;
        let temp = self.temp(id);
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::TooLarge { limit });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            drop(file);
            if let Some(dir) = target.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::rename(&temp, &target).await?;
            Ok(Stored {
                size,
                sha256: hex::encode(hasher.finalize()),
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn get(&self, id: &str, start: u64, len: u64) -> Result<ByteStream<'static>, Error> {
        let mut file = tokio::fs::File::open(self.path(id)?).await?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await?;
        }
        let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
        Ok(Box::pin(reader))
    }

    async fn delete(&self, id: &str) -> Result<(), Error> {
        match tokio::fs::remove_file(self.path(id)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<(String, SystemTime)>, Error> {
        let mut out = Vec::new();
        let mut shards = tokio::fs::read_dir(self.root.join("blobs")).await?;
        while let Some(shard) = shards.next_entry().await? {
            if !shard.file_type().await?.is_dir() {
                continue;
            }
            let mut files = tokio::fs::read_dir(shard.path()).await?;
            while let Some(file) = files.next_entry().await? {
                let name = file.file_name().to_string_lossy().into_owned();
                if valid_id(&name) {
                    // A blob deleted between reading the folder and looking at it (an
                    // overwrite or delete finishing) is simply not listed.
                    match file.metadata().await {
                        Ok(meta) => out.push((name, meta.modified()?)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(out)
    }

    async fn sweep_temp(&self, before: SystemTime) -> Result<u64, Error> {
        let mut removed = 0;
        let mut files = tokio::fs::read_dir(self.root.join("tmp")).await?;
        while let Some(file) = files.next_entry().await? {
            // Uploads finish (rename out of tmp/) while this runs: a file that is gone
            // was not abandoned.
            let modified = match file.metadata().await {
                Ok(meta) => meta.modified()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if modified < before {
                match tokio::fs::remove_file(file.path()).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }
}
