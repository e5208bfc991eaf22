//! The group-commit writer: every write of a node runs here, one batch at a time.
//!
//! Jobs queue on a channel. The writer takes the first job and every job already waiting
//! (up to `max_batch`), runs them in one transaction and commits once. A job that fails
//! rolls back alone: a single write is atomic by itself (see [`Tx`]), and a job of several
//! writes runs inside a savepoint. If a failure leaves the transaction unusable
//! ([`Tx::poisoned`]) the whole batch is rolled back and every job in it fails. Under load many requests share one
//! commit (one fsync on SQLite); with no load a batch is one job and nothing waits. A job's
//! result is handed back only after the commit, so an acknowledged write is durable.
//!
//! SQLite allows one writer anyway, and its session runs statements synchronously, so there
//! the writer has a thread of its own (see `sqlite/tx.rs`); on Postgres the session takes a transaction-scoped
//! advisory lock, so change-log `seq` order is commit order across all nodes.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Backend, Error, Result, Tx};

/// A write job: runs against the transaction, returns its result or its own error.
pub type WriteJob<T, E = JobError> =
    Box<dyn for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Result<T, E>> + Send>;

/// The error of a job that only fails with store errors.
pub type JobError = Error;

/// A backend's transaction on its writer connection.
#[async_trait]
pub(crate) trait WriteSession: Tx {
    async fn begin(&mut self) -> Result<()>;
    async fn commit(&mut self) -> Result<()>;
    async fn rollback(&mut self) -> Result<()>;
    async fn savepoint(&mut self) -> Result<()>;
    async fn release(&mut self) -> Result<()>;
    async fn rollback_to(&mut self) -> Result<()>;
    /// The highest seq appended in this transaction (savepoint rollbacks taken into account).
    fn last_seq(&self) -> Option<i64>;
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type Runner = Box<dyn for<'c> FnOnce(&'c mut dyn Tx) -> BoxFuture<'c, Option<Completion>> + Send>;

struct Job {
    run: Runner,
    /// Fails the job with a store error when it could not run at all.
    abort: Box<dyn FnOnce(Error) + Send>,
    /// Run inside a savepoint (a job of several writes).
    savepoint: bool,
}

const QUEUE: usize = 8192;

#[derive(Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Job>,
    stop: watch::Sender<bool>,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Writer {
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        committed: watch::Sender<i64>,
        max_batch: usize,
    ) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let thread = backend.writer_thread();
        let writer = run(backend, rx, stop_rx, committed, max_batch);
        let handle = if thread {
            // SQLite: the session does its work synchronously, so the writer gets a thread
            // of its own; batches never wait behind requests on the runtime's workers, and
            // requests never wait behind a commit's fsync.
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || runtime.block_on(writer))
        } else {
            tokio::spawn(writer)
        };
        Writer {
            queue,
            stop,
            done: Arc::new(tokio::sync::Mutex::new(Some(handle))),
        }
    }

    pub(crate) async fn submit<T, E>(&self, job: WriteJob<T, E>, savepoint: bool) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let slot = Arc::new(Mutex::new(Some(tx)));
        let abort_slot = slot.clone();
        let runner: Runner = Box::new(move |conn: &mut dyn Tx| {
            Box::pin(async move {
                let result = job(conn).await;
                let sender = take(&slot)?;
                match result {
                    Ok(value) => Some(Box::new(move |commit: Result<()>| {
                        let _ = sender.send(commit.map(|()| value).map_err(E::from));
                    }) as Completion),
                    Err(e) => {
                        let _ = sender.send(Err(e));
                        None
                    }
                }
            })
        });
        let abort = Box::new(move |e: Error| {
            if let Some(sender) = take(&abort_slot) {
                let _ = sender.send(Err(E::from(e)));
            }
        });
        let job = Job {
            run: runner,
            abort,
            savepoint,
        };
        if self.queue.send(job).await.is_err() {
            return Err(E::from(Error::Unavailable(
                "the server is shutting down".into(),
            )));
        }
        match rx.await {
            Ok(result) => result,
            // The job panicked (logged by the writer) and dropped its sender.
            Err(_) => Err(E::from(Error::Other("the write did not complete".into()))),
        }
    }

    /// Finishes the queued jobs, then stops.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.done.lock().await.take() {
            let _ = handle.await;
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().ok().and_then(|mut s| s.take())
}

async fn run(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Job>,
    mut stop: watch::Receiver<bool>,
    committed: watch::Sender<i64>,
    max_batch: usize,
) {
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
            _ = stop.changed() => {
                rx.close();
                while let Some(job) = rx.recv().await {
                    run_batch(&*backend, vec![job], &committed).await;
                }
                return;
            }
        };
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&*backend, batch, &committed).await;
    }
}

async fn run_batch(backend: &dyn Backend, batch: Vec<Job>, committed: &watch::Sender<i64>) {
    let started = Instant::now();
    let size = batch.len();
    metrics::histogram!("ferrobase_writer_batch_size").record(size as f64);
    let mut session = match backend.write_session().await {
        Ok(session) => session,
        Err(e) => return abort_all(batch, &e),
    };
    if let Err(e) = session.begin().await {
        return abort_all(batch, &e);
    }
    let grouped = size > 1;
    let mut completions: Vec<Completion> = Vec::with_capacity(size);
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        let savepoint = grouped && job.savepoint;
        if savepoint && let Err(e) = session.savepoint().await {
            return fail_batch(&mut *session, completions, job, jobs, e).await;
        }
        let tx: &mut dyn Tx = &mut *session;
        let outcome = AssertUnwindSafe((job.run)(tx)).catch_unwind().await;
        let completion = match outcome {
            Ok(completion) => completion,
            Err(_) => {
                tracing::error!("BUG: a write job panicked; its write was rolled back");
                None
            }
        };
        let undo = match (&completion, savepoint) {
            (Some(_), true) => session.release().await,
            (None, true) => match session.rollback_to().await {
                Ok(()) => session.release().await,
                Err(e) => Err(e),
            },
            (_, false) if session.poisoned() => Err(Error::Other(
                "a failed statement left the transaction unusable".into(),
            )),
            (_, false) => Ok(()),
        };
        if let Some(completion) = completion {
            completions.push(completion);
        }
        if let Err(e) = undo {
            return fail_rest(&mut *session, completions, jobs, e).await;
        }
    }
    if completions.is_empty() {
        let _ = session.rollback().await;
        return;
    }
    let last_seq = session.last_seq();
    match session.commit().await {
        Ok(()) => {
            if let Some(seq) = last_seq {
                committed.send_if_modified(|current| {
                    let newer = seq > *current;
                    if newer {
                        *current = seq;
                    }
                    newer
                });
            }
            for completion in completions {
                completion(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            let _ = session.rollback().await;
            for completion in completions {
                completion(Err(Error::Unavailable("the commit failed".into())));
            }
        }
    }
    metrics::histogram!("ferrobase_writer_batch_seconds").record(started.elapsed().as_secs_f64());
}

fn abort_all(batch: Vec<Job>, e: &Error) {
    tracing::error!(error = %e, "write batch could not start");
    for job in batch {
        (job.abort)(Error::Unavailable("the database is unavailable".into()));
    }
}

async fn fail_batch(
    session: &mut dyn WriteSession,
    completions: Vec<Completion>,
    current: Job,
    rest: std::vec::IntoIter<Job>,
    e: Error,
) {
    (current.abort)(Error::Unavailable("the database is unavailable".into()));
    fail_rest(session, completions, rest, e).await;
}

/// A savepoint statement failed: the transaction is unusable, so nothing in it commits.
async fn fail_rest(
    session: &mut dyn WriteSession,
    completions: Vec<Completion>,
    rest: std::vec::IntoIter<Job>,
    e: Error,
) {
    tracing::error!(error = %e, "write batch failed");
    let _ = session.rollback().await;
    for completion in completions {
        completion(Err(Error::Unavailable(
            "the database is unavailable".into(),
        )));
    }
    for job in rest {
        (job.abort)(Error::Unavailable("the database is unavailable".into()));
    }
}
