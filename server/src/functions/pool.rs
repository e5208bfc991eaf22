//! The engine's worker threads. QuickJS is single-threaded and a busy isolate must never
//! block the async runtime, so each worker is an OS thread that owns its isolates (one per
//! version it has run) and takes tasks from a shared queue.
//!
//! A watchdog on the async side bounds every task: when a task outlives its deadline by
//! the grace period (a native operation the interrupt handler cannot stop), the caller is
//! answered with a timeout, a replacement worker starts, and the stuck thread exits as
//! soon as its task ends (its isolate is dropped with it).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{Bridge, Files, Isolate, Limits, LoadError, Manifest, Outcome};

/// A version's code, shared by every worker that runs it.
#[derive(Debug)]
pub struct Code {
    pub version: i64,
    pub files: Files,
}

/// What a worker should do with a version.
pub enum Work {
    /// Build an isolate (if needed) and report the handlers.
    Load,
    Invoke {
        kind: &'static str,
        key: String,
        payload: serde_json::Value,
        meta: serde_json::Value,
        bridge: Box<dyn Bridge + Send>,
        /// The handler's own memory and stack limits, when configured.
        limits: Option<Limits>,
    },
}

/// What came of a task.
#[derive(Debug)]
pub enum Done {
    Loaded(Manifest),
    Invoked { outcome: Outcome, cold: bool },
    LoadFailed(String),
}

struct Task {
    code: Arc<Code>,
    work: Work,
    deadline: Instant,
    started: Arc<AtomicBool>,
    abandoned: Arc<AtomicBool>,
    reply: oneshot::Sender<Done>,
}

struct Shared {
    queue: Mutex<mpsc::Receiver<Task>>,
    /// Versions to keep warm, with a generation so workers notice changes.
    warm: Mutex<(u64, Vec<Arc<Code>>)>,
    limits: Limits,
    fetch: bool,
    alive: AtomicUsize,
}

/// The pool of engine threads.
pub struct Pool {
    sender: Mutex<mpsc::Sender<Task>>,
    shared: Arc<Shared>,
}

const LOAD_DEADLINE: Duration = Duration::from_secs(5);

impl Pool {
    pub fn start(workers: usize, limits: Limits, fetch: bool) -> std::io::Result<Pool> {
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(receiver),
            warm: Mutex::new((0, Vec::new())),
            limits,
            fetch,
            alive: AtomicUsize::new(0),
        });
        for _ in 0..workers {
            spawn_worker(shared.clone())?;
        }
        Ok(Pool {
            sender: Mutex::new(sender),
            shared,
        })
    }

    /// Sets the versions workers keep an isolate for (pre-warming them when idle).
    pub fn keep_warm(&self, codes: Vec<Arc<Code>>) {
        if let Ok(mut warm) = self.shared.warm.lock() {
            warm.0 += 1;
            warm.1 = codes;
        }
    }

    /// Workers alive (including stuck ones that have not exited yet).
    pub fn workers(&self) -> usize {
        self.shared.alive.load(Ordering::Relaxed)
    }

    /// Runs `work` on a worker; answers `None` when the deadline (plus `grace`) passed
    /// first, in which case the worker is replaced if it had started.
    pub async fn run(
        &self,
        code: Arc<Code>,
        work: Work,
        deadline: Instant,
        grace: Duration,
    ) -> Option<Done> {
        let (reply, answer) = oneshot::channel();
        let started = Arc::new(AtomicBool::new(false));
        let abandoned = Arc::new(AtomicBool::new(false));
        let task = Task {
            code,
            work,
            deadline,
            started: started.clone(),
            abandoned: abandoned.clone(),
            reply,
        };
        let sent = self
            .sender
            .lock()
            .ok()
            .map(|s| s.send(task).is_ok())
            .unwrap_or(false);
        if !sent {
            return None;
        }
        let limit = tokio::time::Instant::from_std(deadline + grace);
        match tokio::time::timeout_at(limit, answer).await {
            Ok(Ok(done)) => Some(done),
            // The worker dropped the reply: it panicked (caught) or the pool is closing.
            Ok(Err(_)) => None,
            Err(_) => {
                abandoned.store(true, Ordering::SeqCst);
                if started.load(Ordering::SeqCst) {
                    tracing::warn!(
                        "a function outlived its deadline in native code; replacing its worker"
                    );
                    metrics::counter!("ferrobase_function_workers_replaced_total").increment(1);
                    if let Err(e) = spawn_worker(self.shared.clone()) {
                        tracing::error!(error = %e, "could not start a replacement worker");
                    }
                }
                None
            }
        }
    }

    /// Loads a version on some worker and reports its handlers (or why it failed).
    pub async fn load(&self, code: Arc<Code>) -> Result<Manifest, LoadError> {
        match self
            .run(
                code,
                Work::Load,
                Instant::now() + LOAD_DEADLINE,
                LOAD_DEADLINE,
            )
            .await
        {
            Some(Done::Loaded(m)) => Ok(m),
            Some(Done::LoadFailed(e)) => Err(LoadError(e)),
            Some(Done::Invoked { .. }) => Err(LoadError("BUG: load answered an invoke".into())),
            None => Err(LoadError("loading timed out".into())),
        }
    }
}

fn spawn_worker(shared: Arc<Shared>) -> std::io::Result<()> {
    shared.alive.fetch_add(1, Ordering::SeqCst);
    let result = std::thread::Builder::new()
        .name("fb-js".into())
        .stack_size(8 << 20)
        .spawn({
            let shared = shared.clone();
            move || {
                worker(&shared);
                shared.alive.fetch_sub(1, Ordering::SeqCst);
            }
        });
    if result.is_err() {
        shared.alive.fetch_sub(1, Ordering::SeqCst);
    }
    result.map(|_| ())
}

fn worker(shared: &Shared) {
    let mut isolates: HashMap<i64, Isolate> = HashMap::new();
    let mut generation = 0u64;
    loop {
        let next = match shared.queue.lock() {
            Ok(queue) => queue.recv_timeout(Duration::from_millis(250)),
            Err(_) => return,
        };
        prewarm(shared, &mut isolates, &mut generation);
        let task = match next {
            Ok(task) => task,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if task.abandoned.load(Ordering::SeqCst) {
            continue;
        }
        task.started.store(true, Ordering::SeqCst);
        let abandoned = task.abandoned.clone();
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| run_task(shared, &mut isolates, task)));
        if result.is_err() {
            // The reply was dropped with the task; the caller sees a failure.
            tracing::error!("a function worker panicked; its isolates are dropped");
            isolates.clear();
        }
        if abandoned.load(Ordering::SeqCst) {
            // A replacement took this worker's place.
            return;
        }
    }
}

fn prewarm(shared: &Shared, isolates: &mut HashMap<i64, Isolate>, generation: &mut u64) {
    let (current, codes) = match shared.warm.lock() {
        Ok(warm) => (warm.0, warm.1.clone()),
        Err(_) => return,
    };
    if current == *generation {
        return;
    }
    *generation = current;
    isolates.retain(|v, _| codes.iter().any(|c| c.version == *v));
    for code in codes {
        if isolates.contains_key(&code.version) {
            continue;
        }
        match Isolate::load(
            &code.files,
            shared.limits,
            shared.fetch,
            Instant::now() + LOAD_DEADLINE,
        ) {
            Ok((isolate, _)) => {
                isolates.insert(code.version, isolate);
            }
            Err(e) => tracing::warn!(version = code.version, error = %e, "pre-warming failed"),
        }
    }
}

fn run_task(shared: &Shared, isolates: &mut HashMap<i64, Isolate>, task: Task) {
    let version = task.code.version;
    let cold = !isolates.contains_key(&version);
    if cold {
        match Isolate::load(
            &task.code.files,
            shared.limits,
            shared.fetch,
            Instant::now() + LOAD_DEADLINE,
        ) {
            Ok((isolate, manifest)) => {
                isolates.insert(version, isolate);
                if matches!(task.work, Work::Load) {
                    let _ = task.reply.send(Done::Loaded(manifest));
                    return;
                }
            }
            Err(e) => {
                let _ = task.reply.send(Done::LoadFailed(e.0));
                return;
            }
        }
    }
    let Some(isolate) = isolates.get_mut(&version) else {
        return;
    };
    let done = match task.work {
        Work::Load => {
            // Already warm: load again only to read the manifest (cheap, rare).
            match Isolate::load(
                &task.code.files,
                shared.limits,
                shared.fetch,
                Instant::now() + LOAD_DEADLINE,
            ) {
                Ok((_, manifest)) => Done::Loaded(manifest),
                Err(e) => Done::LoadFailed(e.0),
            }
        }
        Work::Invoke {
            kind,
            key,
            payload,
            meta,
            bridge,
            limits,
        } => {
            let outcome =
                isolate.invoke(kind, &key, &payload, &meta, bridge, task.deadline, limits);
            Done::Invoked { outcome, cold }
        }
    };
    if isolate.poisoned() {
        isolates.remove(&version);
    }
    let _ = task.reply.send(done);
}
