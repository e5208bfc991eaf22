//! The change log as the rest of the server sees it: a wake-up signal when something was
//! committed (here or, on Postgres, on another node), reading the log in order, and pruning
//! it after the retention period.
//!
//! Every committed write appends a row in the same transaction as the write itself, so a
//! reader that tails `seq > n` sees each change exactly once, in commit order, and never a
//! change that was rolled back.

use std::time::Duration;

use tokio::sync::watch;

use crate::store::{self, ChangeRow, Store};

/// The change log.
#[derive(Clone)]
pub struct Changes {
    store: Store,
    retention: Duration,
}

impl Changes {
    pub fn new(store: Store, retention: Duration) -> Self {
        Self { store, retention }
    }

    /// The seq of the newest commit; `changed()` wakes on every commit.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.store.subscribe_commits()
    }

    /// Up to `limit` changes after `seq`, in order.
    pub async fn after(&self, seq: i64, limit: u32) -> Result<Vec<ChangeRow>, store::Error> {
        self.store.changes_after(seq, limit).await
    }

    /// The oldest seq still kept (`None` while the log is empty).
    pub async fn oldest_seq(&self) -> Result<Option<i64>, store::Error> {
        self.store.oldest_seq().await
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Deletes changes older than the retention period, every `interval`, until `stop`.
    pub async fn prune_loop(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            let cutoff = crate::util::time::ago(self.retention);
            match self.store.prune_changes(&cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "change log pruned"),
                Err(e) => tracing::warn!(error = %e, "change log pruning failed"),
            }
        }
    }
}
