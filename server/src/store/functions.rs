//! Cloud-code tables: versions, aliases, the durable job queue, logs and shared state.
//! Backends implement these in `sqlite/functions.rs` and `postgres/functions.rs`.

use async_trait::async_trait;

use super::Result;

/// A deployed version, without its files.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub version: i64,
    pub hash: String,
    pub source: String,
    pub manifest: String,
    pub created_at: String,
}

/// A queued, running or finished job.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub function: String,
    pub kind: String,
    pub version: i64,
    pub payload: String,
    pub caller: Option<String>,
    pub depth: i32,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: i64,
    pub lease_until: Option<i64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A captured log line.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub id: i64,
    pub invocation: String,
    pub function: String,
    pub version: i64,
    pub level: String,
    pub message: String,
    pub at: String,
}

/// How a finished attempt leaves a job.
#[derive(Debug, Clone)]
pub struct JobUpdate<'a> {
    pub id: &'a str,
    /// `queued` (retry at `run_at`), `succeeded` or `dead`.
    pub status: &'a str,
    pub run_at: i64,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
    pub at: &'a str,
}

#[async_trait]
pub trait FunctionsRead: Send + Sync {
    async fn list_versions(&self) -> Result<Vec<VersionRow>>;
    /// A version's files (JSON text).
    async fn version_files(&self, version: i64) -> Result<Option<String>>;
    async fn list_aliases(&self) -> Result<Vec<(String, String)>>;
    async fn get_job(&self, id: &str) -> Result<Option<JobRow>>;
    /// Jobs in a status, newest first.
    async fn list_jobs(&self, status: &str, limit: u32) -> Result<Vec<JobRow>>;
    /// Log lines, oldest first, optionally of one function and/or one invocation.
    async fn list_logs(
        &self,
        function: Option<&str>,
        invocation: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogRow>>;
    async fn get_state(&self, key: &str) -> Result<Option<i64>>;
    /// Whether any job is due (queued with `run_at <= now`, or leased until before now).
    async fn has_due(&self, now: i64) -> Result<bool>;
    /// Deletes log lines and succeeded jobs older than `cutoff` (dead letters stay until
    /// replayed); returns the rows deleted.
    async fn prune_functions(&self, cutoff: &str) -> Result<u64>;
}

#[async_trait]
pub trait FunctionsTx: Send {
    /// Stores a new version; returns its number.
    async fn insert_version(
        &mut self,
        hash: &str,
        files: &str,
        source: &str,
        manifest: &str,
        at: &str,
    ) -> Result<i64>;
    async fn put_alias(&mut self, name: &str, weights: &str, at: &str) -> Result<()>;
    async fn insert_job(&mut self, job: &JobRow) -> Result<()>;
    /// Inserts a job unless a job of the same function is queued or running; false when
    /// one is (cron runs never overlap).
    async fn insert_job_unless_active(&mut self, job: &JobRow) -> Result<bool>;
    /// Leases up to `limit` due jobs (queued with `run_at <= now`, or running with an
    /// expired lease), counting an attempt for each. Other nodes skip leased rows.
    async fn claim_jobs(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: u32,
        at: &str,
    ) -> Result<Vec<JobRow>>;
    async fn finish_job(&mut self, update: &JobUpdate<'_>) -> Result<()>;
    /// Puts a dead job back in the queue with its attempts reset; false when there is no
    /// dead job with that id.
    async fn replay_job(&mut self, id: &str, now: i64, at: &str) -> Result<bool>;
    async fn insert_logs(&mut self, lines: &[LogRow]) -> Result<()>;
    /// Sets `key` to `new` when it holds `expected` (`None`: the key is absent); false when
    /// another writer got there first.
    async fn swap_state(&mut self, key: &str, expected: Option<i64>, new: i64) -> Result<bool>;
}

/// The columns of `fb_fn_jobs`, in [`JobRow`] order.
pub(crate) const JOB_COLUMNS: &str = "id, function, kind, version, payload, caller, depth, status, \
     attempts, max_attempts, run_at, lease_until, result, error, created_at, updated_at";
