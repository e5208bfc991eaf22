//! Cloud code: JavaScript handlers run by an embedded engine, invoked over HTTP, by writes
//! (before/after triggers), by storage and auth events, and on schedules.
//!
//! - `engine` — QuickJS behind a small surface (isolates, limits, the bridge's JS half);
//! - `pool` — worker threads that own isolates, with a watchdog;
//! - `host` — the operations JS may call (`ctx.db`, `ctx.admin.db`, logs, `fetch`);
//! - `routes` — versions and aliases, weighted and sticky per caller;
//! - `queue` — the durable job queue (async calls, after-triggers, cron runs), the trigger
//!   pump that turns change-log rows into jobs, and cron;
//! - this file — the service the HTTP layer and the write pipeline call.

pub mod engine;
pub mod fetch;
pub mod host;
pub mod pool;
mod queue;
pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::auth::{Caller, Principal, UserAuth};
use crate::config::FunctionsConfig;
use crate::documents::hooks::{BeforeEvent, Hooks};
use crate::documents::{self, Documents, WriteKind};
use crate::store::functions::{JobRow, LogRow, VersionRow};
use crate::store::{Store, Tx};
use engine::{Files, Limits, Manifest, Outcome};
use pool::{Code, Done, Pool, Work};
use routes::{Routes, Version, Weights};

/// Deepest chain of triggers: a write made by a trigger at this depth sets off no more.
pub const MAX_DEPTH: u8 = 3;

/// A cloud-code failure, as the client will hear it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Forbidden(String),
    /// `fb.error(status, message)`, or a host error the handler did not catch.
    #[error("{message}")]
    Rejected { status: u16, message: String },
    /// Any other exception (details in the logs).
    #[error("the function failed")]
    Failed,
    #[error("the function ran out of time")]
    Timeout,
    #[error("too many concurrent invocations of this function")]
    Busy,
    #[error("the database is unavailable")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::Error> for Error {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Unavailable(c) => Error::Unavailable(c),
            other => Error::Internal(other.to_string()),
        }
    }
}

/// How an invocation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call,
    Trigger,
    Cron,
    Auth,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Trigger => "trigger",
            Kind::Cron => "cron",
            Kind::Auth => "auth",
        }
    }
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "call" => Kind::Call,
            "trigger" => Kind::Trigger,
            "cron" => Kind::Cron,
            "auth" => Kind::Auth,
            _ => return None,
        })
    }
}

/// Which version answers a call.
#[derive(Debug, Clone)]
pub enum Target {
    /// The `live` alias, sticky per caller.
    Live,
    Alias(String),
    Version(i64),
}

/// The cloud-code service.
pub struct Functions {
    config: FunctionsConfig,
    store: Store,
    documents: OnceLock<Documents>,
    storage: OnceLock<Arc<crate::storage::Storage>>,
    pool: Pool,
    routes: RwLock<Routes>,
    handle: tokio::runtime::Handle,
    fetch: Option<Arc<fetch::Fetcher>>,
    logs: mpsc::UnboundedSender<LogRow>,
    log_rx: Mutex<Option<mpsc::UnboundedReceiver<LogRow>>>,
    gates: HashMap<String, Arc<Semaphore>>,
    jobs_ready: Notify,
    routes_changed: watch::Sender<u64>,
    dir: std::path::PathBuf,
    dev: bool,
}

/// A job, as `GET /v1/functions/invocations/{id}` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct InvocationView {
    pub id: String,
    pub function: String,
    pub kind: String,
    pub version: i64,
    /// `queued`, `running`, `succeeded` or `dead`.
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl InvocationView {
    fn from_row(row: JobRow) -> Self {
        InvocationView {
            result: row
                .result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
            id: row.id,
            function: row.function,
            kind: row.kind,
            version: row.version,
            status: row.status,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A deployed version, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub hash: String,
    /// `dir` (the functions folder) or `api`.
    pub source: String,
    #[schema(value_type = Object)]
    pub handlers: Value,
    pub created_at: String,
}

impl VersionView {
    fn from_row(row: VersionRow) -> Self {
        VersionView {
            version: row.version,
            hash: row.hash,
            source: row.source,
            handlers: serde_json::from_str(&row.manifest).unwrap_or(Value::Null),
            created_at: row.created_at,
        }
    }
}

/// A log line, as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LogView {
    pub id: i64,
    pub invocation: String,
    pub function: String,
    pub version: i64,
    pub level: String,
    pub message: String,
    pub at: String,
}

fn hash_files(files: &Files) -> String {
    let mut h = sha2::Sha256::new();
    for (path, source) in files {
        h.update((path.len() as u64).to_le_bytes());
        h.update(path.as_bytes());
        h.update((source.len() as u64).to_le_bytes());
        h.update(source.as_bytes());
    }
    hex::encode(h.finalize())
}

/// What `ctx.auth` shows for a principal (and how a queued job remembers its caller).
/// Counts an invocation and times it, with handles cached per thread and function name
/// (names come from deployed manifests, so the set is bounded): building the labelled keys
/// and looking them up in the recorder's registry on every invocation was ~1 % of a
/// hooked create's instructions.
fn record_invocation(name: &str, outcome: &'static str, cold: bool, elapsed: Duration) {
    struct Handles {
        outcomes: Vec<(&'static str, metrics::Counter)>,
        duration: metrics::Histogram,
    }
    thread_local! {
        static HANDLES: std::cell::RefCell<HashMap<Box<str>, Handles>> = Default::default();
        static STARTS: [metrics::Counter; 2] = [
            metrics::counter!("ferrobase_function_starts_total", "start" => "warm"),
            metrics::counter!("ferrobase_function_starts_total", "start" => "cold"),
        ];
    }
    HANDLES.with_borrow_mut(|handles| {
        if !handles.contains_key(name) {
            let duration = metrics::histogram!(
                "ferrobase_function_duration_seconds", "function" => name.to_owned()
            );
            handles.insert(
                name.into(),
                Handles {
                    outcomes: Vec::new(),
                    duration,
                },
            );
        }
        let Some(h) = handles.get_mut(name) else {
            return;
        };
        h.duration.record(elapsed.as_secs_f64());
        match h.outcomes.iter().find(|(o, _)| *o == outcome) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = metrics::counter!(
                    "ferrobase_function_invocations_total",
                    "function" => name.to_owned(),
                    "outcome" => outcome
                );
                counter.increment(1);
                h.outcomes.push((outcome, counter));
            }
        }
    });
    STARTS.with(|starts| starts[usize::from(cold)].increment(1));
}

pub fn auth_json(principal: &Principal) -> Value {
    match principal {
        Principal::Anonymous => Value::Null,
        Principal::User(u) => json!({
            "id": u.id, "role": u.role, "anonymous": u.anonymous, "email": u.email,
            "email_verified": u.email_verified, "claims": u.claims,
        }),
        Principal::Admin { id, .. } => json!({ "id": id, "role": "admin", "admin": true }),
        Principal::Service => json!({ "role": "service", "service": true }),
    }
}

fn principal_from_json(v: &Value) -> Principal {
    if v.is_null() {
        return Principal::Anonymous;
    }
    if v.get("service").and_then(Value::as_bool) == Some(true) {
        return Principal::Service;
    }
    if v.get("admin").and_then(Value::as_bool) == Some(true) {
        return Principal::Admin {
            id: v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            session_id: String::new(),
        };
    }
    match UserAuth::from_rule_value(v) {
        Ok(u) => Principal::User(u),
        Err(_) => Principal::Anonymous,
    }
}

/// The key that keeps a caller on one version of a split alias.
fn sticky_key(caller: &Caller) -> String {
    match (caller.user_id(), caller.ip) {
        (Some(id), _) => format!("u:{id}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => match &caller.principal {
            Principal::Admin { id, .. } => format!("admin:{id}"),
            _ => "anonymous".into(),
        },
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Functions {
    /// Starts the engine threads. Versions load in [`Functions::start`].
    pub fn new(
        config: FunctionsConfig,
        store: Store,
        dir: std::path::PathBuf,
        dev: bool,
    ) -> anyhow::Result<Arc<Functions>> {
        let limits = Limits {
            memory: config.memory_mb << 20,
            stack: config.stack_kb << 10,
        };
        let fetch = fetch::Fetcher::new(config.fetch_allow.clone()).map(Arc::new);
        let pool = Pool::start(config.workers, limits, fetch.is_some())?;
        let gates = config
            .handlers
            .iter()
            .filter(|(_, h)| h.max_concurrency > 0)
            .map(|(name, h)| (name.clone(), Arc::new(Semaphore::new(h.max_concurrency))))
            .collect();
        let (logs, log_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Functions {
            config,
            store,
            documents: OnceLock::new(),
            storage: OnceLock::new(),
            pool,
            routes: RwLock::new(Routes::default()),
            handle: tokio::runtime::Handle::current(),
            fetch,
            logs,
            log_rx: Mutex::new(Some(log_rx)),
            gates,
            jobs_ready: Notify::new(),
            routes_changed: watch::channel(0).0,
            dir,
            dev,
        }))
    }

    /// Gives the service the documents it reads and writes for JS (set once, after the
    /// documents service exists: it holds this service as its hooks).
    pub fn attach(&self, documents: Documents) {
        let _ = self.documents.set(documents);
    }

    /// Gives handlers `ctx.storage` (storage is opened after the engine).
    pub fn attach_storage(&self, storage: Arc<crate::storage::Storage>) {
        let _ = self.storage.set(storage);
    }

    fn documents(&self) -> Result<&Documents, Error> {
        self.documents
            .get()
            .ok_or_else(|| Error::Internal("BUG: functions used before attach".into()))
    }

    /// Loads versions and aliases, deploys the functions folder when it changed, and
    /// starts the background tasks (queue workers, trigger pump, cron, log writer, refresh,
    /// and the folder watcher with `--dev`).
    pub async fn start(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        self.refresh()
            .await
            .map_err(|e| anyhow::anyhow!("loading function versions: {e}"))?;
        if let Some(files) = read_dir(&self.dir)? {
            self.deploy_dir(files).await?;
        }
        let mut tasks = vec![
            tokio::spawn(self.clone().refresh_loop(stop.clone())),
            tokio::spawn(self.clone().log_loop(stop.clone())),
            tokio::spawn(self.clone().pump_loop(stop.clone())),
            tokio::spawn(self.clone().cron_loop(stop.clone())),
        ];
        for _ in 0..self.config.workers.clamp(1, 4) {
            tasks.push(tokio::spawn(self.clone().job_loop(stop.clone())));
        }
        if self.dev {
            tasks.push(tokio::spawn(self.clone().watch_dir(stop)));
        }
        Ok(tasks)
    }

    async fn deploy_dir(&self, files: Files) -> anyhow::Result<()> {
        let hash = hash_files(&files);
        let latest_dir = self
            .store
            .functions()
            .list_versions()
            .await?
            .into_iter()
            .rev()
            .find(|v| v.source == "dir");
        if latest_dir.is_some_and(|v| v.hash == hash) {
            return Ok(());
        }
        match self.deploy(files, true, "dir").await {
            Ok((version, _)) => {
                tracing::info!(version, folder = %self.dir.display(), "deployed the functions folder");
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "the functions folder {} does not load: {e}",
                self.dir.display()
            )),
        }
    }

    /// With `--dev`: redeploys the folder whenever its content changes.
    async fn watch_dir(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last = read_dir(&self.dir).ok().flatten().map(|f| hash_files(&f));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => return,
            }
            let files = match read_dir(&self.dir) {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the functions folder failed");
                    continue;
                }
            };
            let hash = hash_files(&files);
            if last.as_ref() == Some(&hash) {
                continue;
            }
            last = Some(hash);
            if let Err(e) = self.deploy_dir(files).await {
                tracing::warn!(error = %e, "the changed functions folder was not deployed");
            }
        }
    }

    /// Makes a new immutable version; with `promote`, `live` routes all traffic to it.
    pub async fn deploy(
        &self,
        files: Files,
        promote: bool,
        source: &'static str,
    ) -> Result<(i64, Manifest), Error> {
        check_files(&files)?;
        let hash = hash_files(&files);
        // Load it once to validate and learn its handlers; version 0 is never stored.
        let probe = Arc::new(Code {
            version: -(now_ms()),
            files: files.clone(),
        });
        let manifest = self
            .pool
            .load(probe)
            .await
            .map_err(|e| Error::Validation(format!("the functions do not load: {}", e.0)))?;
        routes::check_manifest(&manifest).map_err(Error::Validation)?;
        let files_text =
            serde_json::to_string(&files).map_err(|e| Error::Internal(e.to_string()))?;
        let manifest_text =
            serde_json::to_string(&manifest).map_err(|e| Error::Internal(e.to_string()))?;
        let at = crate::util::time::now();
        let version = self
            .store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move {
                    let v = tx
                        .functions()
                        .insert_version(&hash, &files_text, source, &manifest_text, &at)
                        .await?;
                    if promote {
                        let weights = json!({ v.to_string(): 100 }).to_string();
                        tx.functions().put_alias("live", &weights, &at).await?;
                    }
                    Ok(v)
                }
                .boxed()
            }))
            .await?;
        self.refresh().await?;
        Ok((version, manifest))
    }

    /// Points an alias at versions by weight.
    pub async fn set_alias(&self, name: &str, weights: Weights) -> Result<(), Error> {
        routes::check_alias_name(name).map_err(Error::BadRequest)?;
        let known: Vec<i64> = self
            .store
            .functions()
            .list_versions()
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        weights.check(&known).map_err(Error::Validation)?;
        let text = weights.to_json().to_string();
        let name = name.to_owned();
        let at = crate::util::time::now();
        self.store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.functions().put_alias(&name, &text, &at).await?) }.boxed()
            }))
            .await?;
        self.refresh().await
    }

    pub async fn versions(&self) -> Result<Vec<VersionView>, Error> {
        Ok(self
            .store
            .functions()
            .list_versions()
            .await?
            .into_iter()
            .map(VersionView::from_row)
            .collect())
    }

    pub async fn aliases(&self) -> Result<Value, Error> {
        let rows = self.store.functions().list_aliases().await?;
        Ok(Value::Object(
            rows.into_iter()
                .map(|(name, weights)| {
                    (
                        name,
                        json!({ "weights": serde_json::from_str::<Value>(&weights).unwrap_or(Value::Null) }),
                    )
                })
                .collect(),
        ))
    }

    /// Re-reads versions and aliases from the database, loads versions newly routed to,
    /// and tells the workers which versions to keep warm.
    pub async fn refresh(&self) -> Result<(), Error> {
        let aliases = self.store.functions().list_aliases().await?;
        let versions = self.store.functions().list_versions().await?;
        let mut parsed = HashMap::new();
        for (name, text) in aliases {
            match Weights::parse(&text) {
                Ok(w) => {
                    parsed.insert(name, w);
                }
                Err(e) => tracing::warn!(alias = %name, error = %e, "unreadable alias"),
            }
        }
        let wanted: std::collections::BTreeSet<i64> =
            parsed.values().flat_map(|w| w.versions()).collect();
        let mut loaded: HashMap<i64, Arc<Version>> = self
            .routes
            .read()
            .map(|r| r.versions.clone())
            .unwrap_or_default();
        loaded.retain(|v, _| wanted.contains(v));
        for row in versions.iter().filter(|v| wanted.contains(&v.version)) {
            if loaded.contains_key(&row.version) {
                continue;
            }
            let Some(files) = self.store.functions().version_files(row.version).await? else {
                continue;
            };
            let files: Files = serde_json::from_str(&files)
                .map_err(|e| Error::Internal(format!("version {}: {e}", row.version)))?;
            let manifest: Manifest = serde_json::from_str(&row.manifest).unwrap_or_default();
            loaded.insert(
                row.version,
                Arc::new(Version::new(
                    Arc::new(Code {
                        version: row.version,
                        files,
                    }),
                    manifest,
                )),
            );
        }
        let unchanged = self
            .routes
            .read()
            .map(|r| r.aliases == parsed && r.versions.len() == loaded.len())
            .unwrap_or(false);
        if unchanged {
            return Ok(());
        }
        self.pool
            .keep_warm(loaded.values().map(|v| v.code.clone()).collect());
        if let Ok(mut routes) = self.routes.write() {
            *routes = Routes::new(loaded, parsed);
        }
        self.routes_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn refresh_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "refreshing function versions failed");
            }
        }
    }

    fn pick(&self, target: &Target, sticky: &str) -> Option<Arc<Version>> {
        let routes = self.routes.read().ok()?;
        match target {
            Target::Live => routes.route("live", sticky),
            Target::Alias(a) => routes.route(a, sticky),
            Target::Version(v) => routes.versions.get(v).cloned(),
        }
    }

    async fn version_for(&self, target: &Target, sticky: &str) -> Result<Arc<Version>, Error> {
        if let Some(v) = self.pick(target, sticky) {
            return Ok(v);
        }
        if let Target::Version(n) = target {
            // Not routed to: load it for this (admin) call.
            if let Some(files) = self.store.functions().version_files(*n).await? {
                let files: Files =
                    serde_json::from_str(&files).map_err(|e| Error::Internal(e.to_string()))?;
                let code = Arc::new(Code { version: *n, files });
                let manifest = self
                    .pool
                    .load(code.clone())
                    .await
                    .map_err(|e| Error::Internal(e.0))?;
                return Ok(Arc::new(Version::new(code, manifest)));
            }
        }
        Err(Error::NotFound("no such function".into()))
    }

    /// `POST /v1/functions/{name}`: runs a callable function and returns its result.
    pub async fn call(
        &self,
        caller: &Caller,
        name: &str,
        data: Value,
        target: Target,
    ) -> Result<Value, Error> {
        if !routes::valid_name(name) {
            return Err(Error::NotFound("no such function".into()));
        }
        let version = self.version_for(&target, &sticky_key(caller)).await?;
        if !version.manifest.calls.iter().any(|c| c == name) {
            return Err(Error::NotFound("no such function".into()));
        }
        let id = crate::util::id::new_id();
        let timeout = self.timeout_for(name, self.config.timeout);
        let payload = json!({ "data": data });
        let outcome = self
            .invoke(
                &version,
                Kind::Call,
                name,
                name,
                payload,
                caller.clone(),
                0,
                timeout,
                &id,
            )
            .await?;
        finish(outcome)
    }

    /// `POST /v1/functions/{name}/async`: queues an invocation; returns its id.
    pub async fn call_async(
        &self,
        caller: &Caller,
        name: &str,
        data: Value,
    ) -> Result<String, Error> {
        if !routes::valid_name(name) {
            return Err(Error::NotFound("no such function".into()));
        }
        let version = self.version_for(&Target::Live, &sticky_key(caller)).await?;
        if !version.manifest.calls.iter().any(|c| c == name) {
            return Err(Error::NotFound("no such function".into()));
        }
        let job = self.new_job(
            name,
            Kind::Call,
            version.code.version,
            json!({ "data": data }).to_string(),
            &caller.principal,
            0,
        );
        let id = job.id.clone();
        self.store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.functions().insert_job(&job).await?) }.boxed()
            }))
            .await?;
        self.jobs_ready.notify_waiters();
        Ok(id)
    }

    fn new_job(
        &self,
        function: &str,
        kind: Kind,
        version: i64,
        payload: String,
        principal: &Principal,
        depth: u8,
    ) -> JobRow {
        let at = crate::util::time::now();
        JobRow {
            id: crate::util::id::new_id(),
            function: function.to_owned(),
            kind: kind.as_str().to_owned(),
            version,
            payload,
            caller: Some(auth_json(principal).to_string()),
            depth: i32::from(depth),
            status: "queued".into(),
            attempts: 0,
            max_attempts: if kind == Kind::Cron {
                1
            } else {
                self.config.max_attempts as i32
            },
            run_at: now_ms(),
            lease_until: None,
            result: None,
            error: None,
            created_at: at.clone(),
            updated_at: at,
        }
    }

    /// `GET /v1/functions/invocations/{id}`: the caller who queued it, or an admin.
    pub async fn invocation(&self, caller: &Caller, id: &str) -> Result<InvocationView, Error> {
        let row = self
            .store
            .functions()
            .get_job(id)
            .await?
            .ok_or_else(|| Error::NotFound("no such invocation".into()))?;
        let owner = row
            .caller
            .as_deref()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .map(|c| principal_from_json(&c));
        let mine = match (&owner, caller.user_id()) {
            (Some(Principal::User(u)), Some(me)) => u.id == me,
            _ => false,
        };
        if !(mine || caller.is_privileged()) {
            return Err(Error::NotFound("no such invocation".into()));
        }
        Ok(InvocationView::from_row(row))
    }

    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<InvocationView>, Error> {
        Ok(self
            .store
            .functions()
            .list_jobs("dead", limit)
            .await?
            .into_iter()
            .map(InvocationView::from_row)
            .collect())
    }

    pub async fn replay(&self, id: &str) -> Result<(), Error> {
        let id = id.to_owned();
        let at = crate::util::time::now();
        let done = self
            .store
            .write::<_, Error>(Box::new(move |tx: &mut dyn Tx| {
                async move { Ok(tx.functions().replay_job(&id, now_ms(), &at).await?) }.boxed()
            }))
            .await?;
        if !done {
            return Err(Error::NotFound("no dead letter with that id".into()));
        }
        self.jobs_ready.notify_waiters();
        Ok(())
    }

    pub async fn logs(
        &self,
        function: Option<&str>,
        invocation: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogView>, Error> {
        Ok(self
            .store
            .functions()
            .list_logs(function, invocation, after, limit)
            .await?
            .into_iter()
            .map(|r| LogView {
                id: r.id,
                invocation: r.invocation,
                function: r.function,
                version: r.version,
                level: r.level,
                message: r.message,
                at: r.at,
            })
            .collect())
    }

    fn timeout_for(&self, name: &str, default: Duration) -> Duration {
        self.config
            .handlers
            .get(name)
            .and_then(|h| h.timeout)
            .unwrap_or(default)
    }

    fn env_for(&self, name: &str) -> Value {
        let mut env = self.config.env.clone();
        if let Some(h) = self.config.handlers.get(name) {
            env.extend(h.env.clone());
        }
        json!(env)
    }

    /// A handler's own memory and stack limits (`functions.handlers.<name>`), if it has any.
    fn limits_for(&self, name: &str) -> Option<Limits> {
        let handler = self.config.handlers.get(name)?;
        if handler.memory_mb.is_none() && handler.stack_kb.is_none() {
            return None;
        }
        Some(Limits {
            memory: handler.memory_mb.unwrap_or(self.config.memory_mb) << 20,
            stack: handler.stack_kb.unwrap_or(self.config.stack_kb) << 10,
        })
    }

    /// Runs one handler on the pool; captures its logs and counts it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per invocation kind; a struct would only rename them"
    )]
    async fn invoke(
        &self,
        version: &Version,
        kind: Kind,
        key: &str,
        name: &str,
        payload: Value,
        caller: Caller,
        depth: u8,
        timeout: Duration,
        invocation: &str,
    ) -> Result<Outcome, Error> {
        let _permit = match self.gates.get(name) {
            Some(gate) => Some(gate.clone().try_acquire_owned().map_err(|_| Error::Busy)?),
            None => None,
        };
        let documents = self.documents()?.clone();
        let started = Instant::now();
        let deadline = started + timeout;
        let meta = json!({
            "function": name,
            "invocation": invocation,
            "auth": auth_json(&caller.principal),
            "env": self.env_for(name),
        });
        let logs = Arc::new(Mutex::new(host::Captured::default()));
        let bridge = host::HostBridge {
            documents,
            handle: self.handle.clone(),
            caller,
            depth,
            deadline,
            logs: logs.clone(),
            fetch: self.fetch.clone(),
            storage: self.storage.get().cloned(),
        };
        let work = Work::Invoke {
            kind: kind.as_str(),
            key: key.to_owned(),
            payload,
            meta,
            bridge: Box::new(bridge),
            limits: self.limits_for(name),
        };
        let done = self
            .pool
            .run(version.code.clone(), work, deadline, timeout)
            .await;
        let elapsed = started.elapsed();
        let (outcome, cold) = match done {
            Some(Done::Invoked { outcome, cold }) => (outcome, cold),
            Some(Done::LoadFailed(e)) => (Outcome::Failed { detail: e }, true),
            Some(Done::Loaded(_)) => (
                Outcome::Failed {
                    detail: "BUG: invoke answered a load".into(),
                },
                false,
            ),
            None if Instant::now() >= deadline => (Outcome::Timeout, false),
            None => (
                Outcome::Failed {
                    detail: "the worker stopped".into(),
                },
                false,
            ),
        };
        let label = match &outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Missing => "missing",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "error",
            Outcome::Timeout => "timeout",
        };
        record_invocation(name, label, cold, elapsed);
        let mut captured = logs
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        match &outcome {
            Outcome::Failed { detail } => captured.lines.push(host::Line {
                level: engine::Level::Error,
                message: detail.chars().take(4096).collect(),
                at: crate::util::time::now(),
            }),
            Outcome::Timeout => captured.lines.push(host::Line {
                level: engine::Level::Error,
                message: format!("timed out after {} ms", timeout.as_millis()),
                at: crate::util::time::now(),
            }),
            _ => {}
        }
        if captured.dropped > 0 {
            captured.lines.push(host::Line {
                level: engine::Level::Warn,
                message: format!("{} more log lines were dropped", captured.dropped),
                at: crate::util::time::now(),
            });
        }
        for line in captured.lines {
            let _ = self.logs.send(LogRow {
                id: 0,
                invocation: invocation.to_owned(),
                function: name.to_owned(),
                version: version.code.version,
                level: line.level.as_str().to_owned(),
                message: line.message,
                at: line.at,
            });
        }
        Ok(outcome)
    }

    /// Writes captured log lines in batches.
    async fn log_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = self.log_rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        loop {
            let first = tokio::select! {
                line = rx.recv() => match line { Some(l) => l, None => return },
                _ = stop.changed() => return,
            };
            let mut batch = vec![first];
            while batch.len() < 500 {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            let result = self
                .store
                .write::<_, crate::store::Error>(Box::new(move |tx: &mut dyn Tx| {
                    async move { tx.functions().insert_logs(&batch).await }.boxed()
                }))
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "writing function logs failed");
            }
        }
    }
}

/// The client-facing result of an invocation.
fn finish(outcome: Outcome) -> Result<Value, Error> {
    match outcome {
        Outcome::Ok(v) => Ok(v),
        Outcome::Missing => Err(Error::NotFound("no such function".into())),
        Outcome::Rejected { status, message } => Err(Error::Rejected { status, message }),
        Outcome::Failed { .. } => Err(Error::Failed),
        Outcome::Timeout => Err(Error::Timeout),
    }
}

/// Bundle limits: paths are relative, made of safe segments; at most 500 files, 10 MiB.
fn check_files(files: &Files) -> Result<(), Error> {
    if files.is_empty() {
        return Err(Error::Validation(
            "a version needs at least one file".into(),
        ));
    }
    if files.len() > 500 {
        return Err(Error::Validation(
            "a version holds at most 500 files".into(),
        ));
    }
    let total: usize = files.iter().map(|(p, s)| p.len() + s.len()).sum();
    if total > 10 << 20 {
        return Err(Error::Validation(
            "a version holds at most 10 MiB of source".into(),
        ));
    }
    for path in files.keys() {
        let ok = !path.is_empty()
            && path.len() <= 256
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            });
        if !ok {
            return Err(Error::Validation(format!(
                "`{}` is not a file path like `main.js` or `lib/util.js`",
                crate::query::shorten_for_message(path)
            )));
        }
    }
    if !files.keys().any(|p| engine::is_entry(p)) {
        return Err(Error::Validation(
            "a version needs a top-level .js or .mjs file".into(),
        ));
    }
    Ok(())
}

/// The functions folder's `.js`/`.mjs` files (recursively; `node_modules` and dot folders
/// skipped), or `None` when the folder does not exist or holds none.
pub fn read_dir(dir: &std::path::Path) -> anyhow::Result<Option<Files>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        files: &mut Files,
    ) -> anyhow::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "node_modules" {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, files)?;
            } else if kind.is_file() && (name.ends_with(".js") || name.ends_with(".mjs")) {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .to_string_lossy()
                    .replace('\\', "/");
                files.insert(rel, std::fs::read_to_string(&path)?);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut files = Files::new();
    walk(dir, dir, &mut files)?;
    Ok(if files.keys().any(|p| engine::is_entry(p)) {
        Some(files)
    } else {
        None
    })
}

fn before_key(kind: WriteKind) -> &'static str {
    match kind {
        WriteKind::Create => "beforeCreate",
        WriteKind::Update | WriteKind::Replace => "beforeUpdate",
        WriteKind::Delete => "beforeDelete",
    }
}

#[async_trait]
impl Hooks for Functions {
    fn has_before(&self, collection: &str, kind: WriteKind) -> bool {
        self.routes
            .read()
            .map(|r| r.has_before(before_key(kind), collection))
            .unwrap_or(false)
    }

    async fn before(&self, event: &mut BeforeEvent<'_>) -> Result<(), documents::Error> {
        let key = format!("{}:{}", before_key(event.kind), event.collection);
        let Some(version) = self.pick(&Target::Live, &sticky_key(event.auth)) else {
            return Ok(());
        };
        if !version.manifest.triggers.contains(&key) {
            return Ok(());
        }
        let depth = event.auth.depth + 1;
        if depth > MAX_DEPTH {
            return Err(documents::Error::Rejected {
                status: 508,
                message: format!("triggers nest at most {MAX_DEPTH} deep"),
            });
        }
        let op = match event.kind {
            WriteKind::Create => "create",
            WriteKind::Update => "update",
            WriteKind::Replace => "replace",
            WriteKind::Delete => "delete",
        };
        let payload = json!({
            "collection": event.collection,
            "op": op,
            "id": event.id,
            "data": event.data,
            "doc": event.doc.map(|d| d.to_json()),
        });
        let timeout = self.timeout_for(&key, self.config.before_timeout);
        let id = crate::util::id::new_id();
        let outcome = self
            .invoke(
                &version,
                Kind::Trigger,
                &key,
                &key,
                payload,
                event.auth.clone(),
                depth,
                timeout,
                &id,
            )
            .await
            .map_err(|e| match e {
                Error::Busy => documents::Error::Rejected {
                    status: 429,
                    message: e.to_string(),
                },
                other => documents::Error::Internal(other.to_string()),
            })?;
        match outcome {
            Outcome::Ok(data) => {
                if event.kind != WriteKind::Delete {
                    event.data = data;
                }
                Ok(())
            }
            Outcome::Missing => Ok(()),
            Outcome::Rejected { status, message } => {
                Err(documents::Error::Rejected { status, message })
            }
            Outcome::Failed { .. } => Err(documents::Error::Rejected {
                status: 500,
                message: "the function failed".into(),
            }),
            Outcome::Timeout => Err(documents::Error::FunctionTimeout(
                "the function ran out of time".into(),
            )),
        }
    }
}
