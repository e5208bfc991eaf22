//! WAL checkpoints off the writer's path.
//!
//! By default SQLite checkpoints inside the `COMMIT` that takes the WAL past 1 000 pages:
//! that commit copies the WAL into the database file and fsyncs it, and every write queued
//! behind it waits (tens of milliseconds on a slow disk, several times a second under
//! load; the likely cause of the realtime benchmark's >100 ms outliers, see BENCHMARKS.md).
//! Here a thread of its own runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection
//! soon after commits happen, and the writer checkpoints by itself only past a far higher
//! threshold, as a backstop should this thread fall behind or stop. A passive checkpoint
//! never blocks the writer or readers; what it cannot copy yet (a reader still needs an
//! old page) it copies next time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::{Error, Result};

/// Pages of WAL after which the writer checkpoints by itself (SQLite's default: 1 000).
pub(crate) const BACKSTOP_PAGES: u32 = 20_000;
/// How soon after commits a checkpoint runs.
const BUSY_TICK: Duration = Duration::from_millis(100);
/// How often an idle database is looked at.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The checkpoint thread; it stops when this is dropped.
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the thread; it checkpoints soon after `commits` (the writer's count) moves.
    pub(crate) fn start(
        path: &Path,
        synchronous: &str,
        commits: Arc<AtomicU64>,
    ) -> Result<Checkpointer> {
        // Set up like the writer's connection: the checkpoint fsyncs the database file as
        // `synchronous` says. (It never commits, so its own autocheckpoint never fires.)
        let conn = super::tx::connect(path, synchronous)?;
        let (stop, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("fb-checkpoint".into())
            .spawn(move || run(&conn, &commits, &stopped))
            .map_err(|e| Error::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn run(conn: &Connection, commits: &AtomicU64, stopped: &mpsc::Receiver<()>) {
    let mut done = 0u64;
    let mut tick = IDLE_TICK;
    loop {
        match stopped.recv_timeout(tick) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The store closed (its own close checkpoints what is left).
            _ => return,
        }
        let now = commits.load(Ordering::Relaxed);
        if now == done {
            tick = IDLE_TICK;
            continue;
        }
        tick = BUSY_TICK;
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((log, copied)) => {
                // Everything copied: nothing to do until the next commit. Otherwise (a
                // reader holds an old snapshot) try again next tick.
                if log == copied {
                    done = now;
                }
            }
            Err(e) => tracing::debug!(error = %e, "WAL checkpoint failed; retrying"),
        }
    }
}
