//! What the hub and the channels know of a connection: its id, its current caller and its
//! bounded outbox. The outbox never blocks a producer: when it is full the connection is
//! closed with 4008 and the client resumes from the last seq it saw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, mpsc};

use crate::auth::Caller;

/// Close codes the server uses.
pub mod close {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame over `realtime.max_frame`.
    pub const TOO_BIG: u16 = 1009;
    /// The client stopped answering pings.
    pub const DEAD_PEER: u16 = 4000;
    /// The client kept sending faster than `realtime.max_messages_per_second` after being
    /// told to slow down (policy violation).
    pub const FLOOD: u16 = 1008;
    /// The send queue overflowed (a slow consumer); resume from the last seq.
    pub const OVERFLOW: u16 = 4008;
    /// The connection reached `realtime.max_connection_lifetime`; reconnect and resume.
    pub const LIFETIME: u16 = 4009;
}

/// Longest wait for room in the outbox while replaying or sending a snapshot.
const PUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the socket writer sends.
#[derive(Debug)]
pub enum Out {
    Text(String),
    Ping,
}

/// A connection as producers see it.
pub struct Conn {
    pub id: u64,
    caller: RwLock<Arc<Caller>>,
    tx: mpsc::Sender<Out>,
    closing: Mutex<Option<(u16, String)>>,
    closed: Notify,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Conn {
    /// A connection and the receiving end of its outbox.
    pub fn new(caller: Caller, queue: usize) -> (Arc<Conn>, mpsc::Receiver<Out>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let conn = Arc::new(Conn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            caller: RwLock::new(Arc::new(caller)),
            tx,
            closing: Mutex::new(None),
            closed: Notify::new(),
        });
        (conn, rx)
    }

    /// The caller rules are evaluated for, as of now.
    pub fn caller(&self) -> Arc<Caller> {
        self.caller
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set_caller(&self, caller: Caller) {
        match self.caller.write() {
            Ok(mut slot) => *slot = Arc::new(caller),
            Err(p) => *p.into_inner() = Arc::new(caller),
        }
    }

    /// Queues a frame; a full queue closes the connection (4008). False when not queued.
    pub fn push(&self, frame: String) -> bool {
        self.push_out(Out::Text(frame))
    }

    pub fn push_out(&self, out: Out) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("ferrobase_realtime_overflows_total").increment(1);
                self.close(
                    close::OVERFLOW,
                    "the send queue overflowed; resume from your last seq",
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a frame, waiting for room (the connection's own task only: replays and
    /// snapshots it produces itself, so waiting applies back-pressure to that task alone).
    /// A peer that takes no frame for [`PUSH_WAIT`] is treated as a slow consumer (4008).
    pub async fn push_wait(&self, frame: String) -> bool {
        if self.is_closing() {
            return false;
        }
        tokio::select! {
            sent = tokio::time::timeout(PUSH_WAIT, self.tx.send(Out::Text(frame))) => match sent {
                Ok(result) => result.is_ok(),
                Err(_) => {
                    self.close(close::OVERFLOW, "the connection stopped reading; resume from your last seq");
                    false
                }
            },
            _ = self.closed() => false,
        }
    }

    /// Asks the writer to close the socket with `code` (the first request wins).
    pub fn close(&self, code: u16, reason: &str) {
        let mut slot = self.closing.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some((code, reason.to_owned()));
            self.closed.notify_waiters();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.lock().map(|s| s.is_some()).unwrap_or(true)
    }

    /// Resolves once [`Conn::close`] was called, with the code and reason.
    pub async fn closed(&self) -> (u16, String) {
        loop {
            // Registered before the check, so a close in between is not missed.
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(close) = self
                .closing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return close;
            }
            notified.await;
        }
    }
}
