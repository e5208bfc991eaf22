//! The only module that speaks SQL.
//!
//! Two backends with mirrored files, `sqlite/` and `postgres/`, implement [`Backend`] (reads,
//! catalog, change log) and a write session used by the group-commit [`writer`]. Domain code
//! never sees a dialect: it calls [`Store`] methods, and writes by handing the writer a job
//! that receives a [`Tx`].
//!
//! Which error type to use where: store functions return [`Error`], which keeps the cause for
//! the logger and tells callers only what they can act on (`NotFound`, `Conflict`,
//! `Unavailable`). Driver text never leaves this module in a form that reaches a client.

pub mod auth;
pub mod functions;
mod postgres;
pub mod query;
mod sqlite;
pub mod storage;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

use crate::query::{Filter, SortKey};
pub use writer::{JobError, WriteJob};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    /// A unique constraint was violated; `constraint` is the index name.
    #[error("unique constraint {constraint} violated")]
    Conflict { constraint: String },
    /// The database could not be reached in time (pool timeout, connection refused).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Error::NotFound,
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict {
                constraint: conflict_name(db.constraint().unwrap_or(db.message())),
            },
            _ => Error::Other(e.to_string()),
        }
    }
}

/// Names a violated unique constraint the way the domain knows it: `_id` for a document
/// id, the index key for a declared index (`fb_docs_<table>_x<key>`), `name` for a
/// collection name. SQLite reports the constraint only in its message, Postgres by name.
pub(crate) fn conflict_name(text: &str) -> String {
    if let Some(start) = text.find("fb_docs_") {
        let rest = &text[start + "fb_docs_".len()..];
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if let Some(key) = rest.strip_prefix("_x") {
            return key
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
        }
        return "_id".to_owned();
    }
    if text.contains("fb_collections") {
        return "name".to_owned();
    }
    "unique".to_owned()
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Other(format!("migration failed: {e}"))
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }
}

/// A stored document as the database holds it; `data` is canonical JSON text of the user fields.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRow {
    pub id: String,
    pub owner: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub version: i64,
    pub data: String,
}

impl DocRow {
    /// The document as the API shows it, as JSON text (see [`doc_json`]).
    pub fn to_json(&self) -> Option<String> {
        doc_json(
            &self.id,
            self.owner.as_deref(),
            &self.created_at,
            &self.updated_at,
            self.version,
            &self.data,
        )
    }
}

/// A document's API JSON text from its stored columns: the system fields, then the data's
/// text after its `{`, copied unparsed; `None` when the data is not braced like an object.
pub fn doc_json(
    id: &str,
    owner: Option<&str>,
    created_at: &str,
    updated_at: &str,
    version: i64,
    data: &str,
) -> Option<String> {
    let rest = data.trim().strip_prefix('{')?.trim_start();
    if !rest.ends_with('}') {
        return None;
    }
    let mut out = String::with_capacity(data.len() + 160);
    out.push_str("{\"_id\":");
    push_str_json(&mut out, id);
    out.push_str(",\"_owner\":");
    match owner {
        Some(owner) => push_str_json(&mut out, owner),
        None => out.push_str("null"),
    }
    out.push_str(",\"_created_at\":");
    push_str_json(&mut out, created_at);
    out.push_str(",\"_updated_at\":");
    push_str_json(&mut out, updated_at);
    out.push_str(",\"_version\":");
    let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{version}"));
    if !rest.starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    Some(out)
}

/// Appends `s` as a JSON string. Ids and timestamps need no escapes, so they are copied
/// as they are; anything else goes through serde_json.
fn push_str_json(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(text) = serde_json::to_string(s) {
        out.push_str(&text);
    }
}

/// Rows as the API's JSON text.
pub(crate) fn docs_json(rows: &[DocRow]) -> Result<Vec<String>> {
    rows.iter()
        .map(|row| row.to_json().ok_or_else(|| not_an_object(&row.id)))
        .collect()
}

/// The error for a stored document whose data is not a JSON object.
pub fn not_an_object(id: &str) -> Error {
    Error::Other(format!("BUG: stored document {id} is not a JSON object"))
}

/// A row of the change log.
#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub seq: i64,
    pub collection: String,
    pub doc_id: String,
    pub op: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub actor: Option<String>,
    pub at: String,
}

/// A change to append; written in the same transaction as the change itself.
#[derive(Debug, Clone, Copy)]
pub struct NewChange<'a> {
    pub collection: &'a str,
    pub doc_id: &'a str,
    pub op: &'a str,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub at: &'a str,
}

/// A declared collection as stored in the catalog; `spec` is the JSON the domain owns.
#[derive(Debug, Clone)]
pub struct CollectionRow {
    /// Also names the collection's table.
    pub id: i64,
    pub name: String,
    pub spec: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// An index to create on a collection's table.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    /// Stable name suffix derived from the definition.
    pub key: String,
    pub fields: Vec<SortKey>,
    pub unique: bool,
}

/// What a page query asks of the store.
#[derive(Debug, Clone, Copy)]
pub struct DocQuery<'a> {
    pub filter: &'a Filter,
    pub sort: &'a [SortKey],
    /// Sort values of the last row of the previous page.
    pub after: Option<&'a [Value]>,
    pub offset: u64,
    /// Rows to return (callers ask for one more than a page to learn if there is more).
    pub limit: u32,
}

/// A query plan, and the declared indexes (by key) it uses.
#[derive(Debug, Clone)]
pub struct Plan {
    pub text: String,
    pub index_keys: Vec<String>,
}

impl Plan {
    /// Finds `fb_docs_<table>_x<key>` index names in plan text.
    pub(crate) fn from_text(table: i64, text: String) -> Plan {
        let prefix = format!("fb_docs_{table}_x");
        let mut index_keys = Vec::new();
        let mut rest = text.as_str();
        while let Some(pos) = rest.find(&prefix) {
            rest = &rest[pos + prefix.len()..];
            let key: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if !key.is_empty() && !index_keys.contains(&key) {
                index_keys.push(key);
            }
        }
        Plan { text, index_keys }
    }
}

/// Connection-pool figures for `/metrics`.
#[derive(Debug, Clone)]
pub struct PoolStat {
    pub pool: &'static str,
    pub size: u32,
    pub idle: u32,
}

/// The table of a collection, as the store needs to know it for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef {
    pub id: i64,
    /// The collection has a unique index besides `_id`, so an update may conflict.
    pub has_unique: bool,
}

/// Operations inside a write transaction. Jobs given to [`Store::write`] receive one.
///
/// Each document write is atomic with its change row: it either happens whole, or fails
/// (`Conflict`, `NotFound`) having written nothing and leaving the transaction usable for
/// the other jobs of the batch. If a backend cannot guarantee that, it reports
/// [`Tx::poisoned`] and the writer rolls the batch back.
#[async_trait]
pub trait Tx: Send {
    /// The stored document, locked for this transaction where the backend locks rows.
    async fn get_doc(&mut self, table: TableRef, id: &str) -> Result<Option<DocRow>>;
    /// Inserts a document and appends its change; returns the change's `seq`.
    /// `Conflict` when the id or a unique value is taken.
    async fn insert_doc(
        &mut self,
        table: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64>;
    /// Overwrites the stored row with the same id and appends the change.
    async fn update_doc(
        &mut self,
        table: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64>;
    /// Deletes by id and appends the change; `NotFound` when there was no such document.
    async fn delete_doc(
        &mut self,
        table: TableRef,
        id: &str,
        change: &NewChange<'_>,
    ) -> Result<i64>;
    /// Appends a change that is not a document write (auth and storage events).
    async fn append_change(&mut self, change: &NewChange<'_>) -> Result<i64>;

    /// Creates the catalog row and the collection's table; returns the table id.
    async fn create_collection(&mut self, name: &str, spec: &str, at: &str) -> Result<i64>;
    /// Stores a new spec; returns the new version.
    async fn update_collection(&mut self, id: i64, spec: &str, at: &str) -> Result<i64>;
    /// Removes the catalog row and drops the table.
    async fn drop_collection(&mut self, id: i64) -> Result<()>;
    /// Names (keys) of the declared indexes that exist on a table.
    async fn index_keys(&mut self, table: i64) -> Result<Vec<String>>;
    async fn create_index(&mut self, table: i64, index: &IndexDef) -> Result<()>;
    async fn drop_index(&mut self, table: i64, key: &str) -> Result<()>;

    /// True when a failed statement left the transaction unusable (Postgres aborts a
    /// transaction on any error; SQLite only if a later statement of a write failed).
    fn poisoned(&self) -> bool;

    /// The auth tables, in this transaction.
    fn auth(&mut self) -> &mut dyn auth::AuthTx;

    /// The storage tables, in this transaction.
    fn storage(&mut self) -> &mut dyn storage::StorageTx;

    /// The cloud-code tables, in this transaction.
    fn functions(&mut self) -> &mut dyn functions::FunctionsTx;
}

/// The read side of a backend, plus the few things the writer and the bus need.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    fn kind(&self) -> Kind;
    async fn ping(&self) -> Result<()>;
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    /// Inserts `value` unless the key exists; returns the stored value either way.
    async fn init_meta(&self, key: &str, value: &str) -> Result<String>;
    async fn list_collections(&self) -> Result<Vec<CollectionRow>>;
    async fn get_doc(&self, table: i64, id: &str) -> Result<Option<DocRow>>;
    async fn query_docs(&self, table: i64, query: &DocQuery<'_>) -> Result<Vec<DocRow>>;
    /// [`Backend::query_docs`], each row as the API's JSON text ([`doc_json`]).
    async fn query_docs_json(&self, table: i64, query: &DocQuery<'_>) -> Result<Vec<String>> {
        docs_json(&self.query_docs(table, query).await?)
    }
    async fn count_docs(&self, table: i64, filter: &Filter) -> Result<u64>;
    /// The database's plan for a page query.
    async fn explain(
        &self,
        table: i64,
        query: &DocQuery<'_>,
        discourage_seqscan: bool,
    ) -> Result<Plan>;
    async fn last_seq(&self) -> Result<i64>;
    async fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<ChangeRow>>;
    /// The oldest seq still in the change log (`None` while it is empty).
    async fn oldest_seq(&self) -> Result<Option<i64>>;
    async fn prune_changes(&self, older_than: &str) -> Result<u64>;
    /// A write session on the writer connection.
    async fn write_session(&self) -> Result<Box<dyn writer::WriteSession>>;
    /// The writer's sessions do their work synchronously: run the writer on a thread of
    /// its own rather than on the async runtime.
    fn writer_thread(&self) -> bool {
        false
    }
    /// Tells other nodes the catalog changed (Postgres `NOTIFY`; nothing on SQLite).
    async fn notify_catalog(&self) -> Result<()>;
    /// Sends a realtime message (presence, broadcast) to every node (Postgres `NOTIFY`;
    /// nothing on SQLite, which has one node).
    async fn notify_realtime(&self, payload: &str) -> Result<()>;
    /// The auth tables, on the reader pool.
    fn auth(&self) -> &dyn auth::AuthRead;
    /// The storage tables, on the reader pool.
    fn storage(&self) -> &dyn storage::StorageRead;
    /// The cloud-code tables, on the reader pool.
    fn functions(&self) -> &dyn functions::FunctionsRead;
    /// Starts forwarding other nodes' commits and catalog changes (Postgres `LISTEN`).
    async fn listen(&self, events: RemoteEvents) -> Result<()>;
    fn pool_stats(&self) -> Vec<PoolStat>;
    async fn close(&self);
}

/// Where a backend forwards what other nodes did.
#[derive(Clone)]
pub(crate) struct RemoteEvents {
    pub committed: watch::Sender<i64>,
    pub catalog: watch::Sender<u64>,
    pub realtime: tokio::sync::broadcast::Sender<Arc<str>>,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: SQLite in `data_dir`.
    pub database_url: Option<crate::util::secret::Secret>,
    pub data_dir: std::path::PathBuf,
    pub max_connections: u32,
    pub group_commit: bool,
    pub max_batch: usize,
    /// SQLite `synchronous`: `full` (default) or `normal`.
    pub sqlite_synchronous: String,
    /// SQLite: hot reads on the calling thread (see `sqlite::inline`).
    pub sqlite_inline_reads: bool,
    pub acquire_timeout: Duration,
}

/// Rows one retention `DELETE` removes at most; the pruners repeat it until less go.
pub(crate) const PRUNE_CHUNK: i64 = 1000;

/// The handle the rest of the server uses. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    writer: writer::Writer,
    committed: watch::Sender<i64>,
    catalog: watch::Sender<u64>,
    realtime: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Store {
    /// Opens the database, applies migrations and starts the writer.
    pub async fn open(opts: &Options) -> Result<Store> {
        let backend: Arc<dyn Backend> = match &opts.database_url {
            Some(url) if url.expose().starts_with("postgres") => {
                Arc::new(postgres::PgBackend::open(url.expose(), opts).await?)
            }
            Some(url) if url.expose().starts_with("sqlite:") => {
                Arc::new(sqlite::SqliteBackend::open_url(url.expose(), opts).await?)
            }
            Some(_) => {
                return Err(Error::Other(
                    "database URL must start with postgres:// or sqlite:".into(),
                ));
            }
            None => Arc::new(sqlite::SqliteBackend::open_dir(&opts.data_dir, opts).await?),
        };
        let last = backend.last_seq().await?;
        let (committed, _) = watch::channel(last);
        let (catalog, _) = watch::channel(0u64);
        let (realtime, _) = tokio::sync::broadcast::channel(4096);
        let writer = writer::Writer::start(
            backend.clone(),
            committed.clone(),
            if opts.group_commit {
                opts.max_batch.max(1)
            } else {
                1
            },
        );
        backend
            .listen(RemoteEvents {
                committed: committed.clone(),
                catalog: catalog.clone(),
                realtime: realtime.clone(),
            })
            .await?;
        Ok(Store {
            backend,
            writer,
            committed,
            catalog,
            realtime,
        })
    }

    /// Applies migrations without serving (`ferrobase migrate`).
    pub async fn migrate_only(opts: &Options) -> Result<Kind> {
        let store = Store::open(opts).await?;
        let kind = store.kind();
        store.close().await;
        Ok(kind)
    }

    pub fn kind(&self) -> Kind {
        self.backend.kind()
    }

    /// Runs `job` inside a write transaction, grouped with concurrent jobs into one commit.
    /// The result is returned only after the commit is durable. The job must make at most
    /// one [`Tx`] write (each is atomic on its own); use [`Store::write_all_or_nothing`] for
    /// more.
    pub async fn write<T, E>(&self, job: WriteJob<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.writer.submit(job, false).await
    }

    /// Like [`Store::write`], for a job of several writes: a savepoint makes them all or
    /// nothing when the job fails.
    pub async fn write_all_or_nothing<T, E>(&self, job: WriteJob<T, E>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.writer.submit(job, true).await
    }

    /// The seq of the newest committed change, updated on every local and remote commit.
    pub fn subscribe_commits(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// Bumped whenever another node changes the catalog.
    pub fn subscribe_catalog(&self) -> watch::Receiver<u64> {
        self.catalog.subscribe()
    }

    pub async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
    pub async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.backend.get_meta(key).await
    }
    pub async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        self.backend.init_meta(key, value).await
    }
    pub async fn list_collections(&self) -> Result<Vec<CollectionRow>> {
        self.backend.list_collections().await
    }
    pub async fn get_doc(&self, table: i64, id: &str) -> Result<Option<DocRow>> {
        self.backend.get_doc(table, id).await
    }
    pub async fn query_docs(&self, table: i64, query: &DocQuery<'_>) -> Result<Vec<DocRow>> {
        self.backend.query_docs(table, query).await
    }
    pub async fn query_docs_json(&self, table: i64, query: &DocQuery<'_>) -> Result<Vec<String>> {
        self.backend.query_docs_json(table, query).await
    }
    pub async fn count_docs(&self, table: i64, filter: &Filter) -> Result<u64> {
        self.backend.count_docs(table, filter).await
    }
    pub async fn explain(
        &self,
        table: i64,
        query: &DocQuery<'_>,
        discourage_seqscan: bool,
    ) -> Result<Plan> {
        self.backend.explain(table, query, discourage_seqscan).await
    }
    pub async fn last_seq(&self) -> Result<i64> {
        self.backend.last_seq().await
    }
    pub async fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<ChangeRow>> {
        self.backend.changes_after(seq, limit).await
    }
    pub async fn oldest_seq(&self) -> Result<Option<i64>> {
        self.backend.oldest_seq().await
    }
    pub async fn prune_changes(&self, older_than: &str) -> Result<u64> {
        self.backend.prune_changes(older_than).await
    }
    /// Publishes a realtime message to the other nodes (no-op with one node).
    pub async fn notify_realtime(&self, payload: &str) -> Result<()> {
        self.backend.notify_realtime(payload).await
    }
    /// Realtime messages other nodes published.
    pub fn subscribe_realtime(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.realtime.subscribe()
    }
    pub async fn notify_catalog(&self) -> Result<()> {
        self.backend.notify_catalog().await
    }
    /// Auth reads.
    pub fn auth(&self) -> &dyn auth::AuthRead {
        self.backend.auth()
    }

    /// Storage reads.
    pub fn storage(&self) -> &dyn storage::StorageRead {
        self.backend.storage()
    }

    /// Cloud-code reads.
    pub fn functions(&self) -> &dyn functions::FunctionsRead {
        self.backend.functions()
    }

    pub fn pool_stats(&self) -> Vec<PoolStat> {
        self.backend.pool_stats()
    }

    /// Stops the writer after the queued jobs and closes the pools (SQLite checkpoints).
    pub async fn close(&self) {
        self.writer.stop().await;
        self.backend.close().await;
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    fn versions(dialect: &str) -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(dialect);
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect()
    }

    #[test]
    fn both_dialects_have_the_same_migrations() {
        let sqlite = versions("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(
            sqlite,
            versions("postgres"),
            "migrations/sqlite and migrations/postgres must mirror each other"
        );
    }

    #[test]
    fn conflict_names_map_to_domain_keys() {
        assert_eq!(
            super::conflict_name("UNIQUE constraint failed: fb_docs_12.id"),
            "_id"
        );
        assert_eq!(super::conflict_name("fb_docs_12_pkey"), "_id");
        assert_eq!(
            super::conflict_name("UNIQUE constraint failed: index 'fb_docs_3_xab12cd'"),
            "ab12cd"
        );
        assert_eq!(super::conflict_name("fb_docs_3_xab12cd"), "ab12cd");
        assert_eq!(super::conflict_name("fb_collections_name_key"), "name");
    }

    fn sqlite_options(url: &str) -> super::Options {
        super::Options {
            database_url: Some(crate::util::secret::Secret::new(url)),
            data_dir: std::env::temp_dir(),
            max_connections: 2,
            group_commit: true,
            max_batch: 64,
            sqlite_synchronous: "full".into(),
            sqlite_inline_reads: true,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }

    /// Rows a week past their end go, in more than one chunk each; what is younger stays,
    /// and so do the spent refresh tokens of a live session (reuse detection needs them).
    async fn retention_deletes_old_rows_chunk_by_chunk(store: super::Store) {
        use super::auth::{MailRow, RefreshMatch, SessionRow};
        use super::functions::LogRow;
        const OLD: &str = "2026-01-01T00:00:00.000Z";
        const CUTOFF: &str = "2026-01-15T00:00:00.000Z";
        const FRESH: &str = "2026-02-01T00:00:00.000Z";
        let many = super::PRUNE_CHUNK as usize + 100;
        let session = |id: String, expires_at: &str| SessionRow {
            refresh_hash: format!("{id}-r0"),
            id,
            kind: "user".into(),
            user_id: "u".into(),
            created_at: OLD.into(),
            expires_at: expires_at.into(),
            revoked_at: None,
            revoke_reason: None,
            previous_hash: None,
            rotated_at: None,
            ip: None,
            user_agent: None,
        };
        let mut sessions: Vec<SessionRow> = (0..many)
            .map(|i| session(format!("expired{i}"), OLD))
            .collect();
        sessions.push(session("revoked".into(), FRESH));
        sessions.push(session("live".into(), FRESH));
        let mail = |i: usize, at: &str| MailRow {
            id: format!("{at}-{i}"),
            to_addr: "a@example.com".into(),
            subject: "s".into(),
            text: "t".into(),
            created_at: at.into(),
        };
        let log = |at: &str| LogRow {
            id: 0,
            invocation: "i".into(),
            function: "f".into(),
            version: 1,
            level: "info".into(),
            message: at.into(),
            at: at.into(),
        };
        let logs: Vec<LogRow> = (0..many).map(|_| log(OLD)).chain([log(FRESH)]).collect();
        store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn super::Tx| {
                Box::pin(async move {
                    for s in &sessions {
                        tx.auth().insert_session(s).await?;
                        // Two rotations: r0 and r1 spent, r2 current.
                        for n in 0..2 {
                            let (spent, new) =
                                (format!("{}-r{n}", s.id), format!("{}-r{}", s.id, n + 1));
                            tx.auth().rotate_session(&s.id, &spent, &new, OLD).await?;
                        }
                    }
                    tx.auth().revoke_session("revoked", OLD, "test").await?;
                    for i in 0..many {
                        tx.auth().insert_mail(&mail(i, OLD)).await?;
                    }
                    tx.auth().insert_mail(&mail(0, FRESH)).await?;
                    tx.functions().insert_logs(&logs).await
                })
            }))
            .await
            .unwrap();

        let removed = store.auth().prune_auth(CUTOFF).await.unwrap();
        // Sessions (expired and revoked) with two spent tokens each, and the old mail.
        assert_eq!(removed as usize, (many + 1) * 3 + many);
        assert_eq!(
            store.functions().prune_functions(CUTOFF).await.unwrap() as usize,
            many
        );

        let mail = store.auth().list_mail(10_000).await.unwrap();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].created_at, FRESH);
        let logs = store
            .functions()
            .list_logs(None, None, 0, 10_000)
            .await
            .unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].at, FRESH);
        for gone in ["expired0", "revoked", &format!("expired{}", many - 1)] {
            assert!(
                store.auth().session_state(gone).await.unwrap().is_none(),
                "{gone}"
            );
        }
        assert!(store.auth().session_state("live").await.unwrap().is_some());
        let found = store
            .write::<_, super::Error>(Box::new(|tx: &mut dyn super::Tx| {
                Box::pin(async move {
                    let live = tx.auth().find_refresh("live-r0").await?;
                    let gone = tx.auth().find_refresh("expired7-r0").await?;
                    Ok((live, gone))
                })
            }))
            .await
            .unwrap();
        assert!(
            matches!(&found.0, RefreshMatch::Spent { session_id } if session_id == "live"),
            "{:?}",
            found.0
        );
        assert!(matches!(found.1, RefreshMatch::Unknown), "{:?}", found.1);
        store.close().await;
    }

    #[tokio::test]
    async fn retention_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("app.db").display());
        let store = super::Store::open(&sqlite_options(&url)).await.unwrap();
        retention_deletes_old_rows_chunk_by_chunk(store).await;
    }

    /// On the Postgres of `FERROBASE_TEST_DATABASE_URL` (skipped when it is unreachable,
    /// unless `FERROBASE_REQUIRE_POSTGRES=1`), in a database made for it and dropped after.
    #[tokio::test]
    async fn retention_on_postgres() {
        use sqlx::Connection;
        let admin = std::env::var("FERROBASE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) if std::env::var("FERROBASE_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("FERROBASE_REQUIRE_POSTGRES=1 but Postgres is unreachable: {e}")
            }
            Err(_) => return,
        };
        let name = format!("fb_unit_retention_{}", std::process::id());
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let mut opts = sqlite_options("");
        opts.database_url = Some(crate::util::secret::Secret::new(format!("{base}/{name}")));
        let store = super::Store::open(&opts).await.unwrap();
        retention_deletes_old_rows_chunk_by_chunk(store).await;
        let drop = format!("DROP DATABASE {name} WITH (FORCE)");
        sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// The SQLite writer opens the database file a second time, which an in-memory
    /// database cannot offer: refused with a clear message instead of writing elsewhere.
    #[tokio::test]
    async fn in_memory_sqlite_is_refused_and_a_file_url_works() {
        let refused = super::Store::open(&sqlite_options("sqlite::memory:")).await;
        assert!(
            matches!(&refused, Err(super::Error::Other(m)) if m.contains("needs a database file")),
            "{:?}",
            refused.err()
        );
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("app.db").display());
        let store = super::Store::open(&sqlite_options(&url)).await.unwrap();
        let table = store
            .write::<_, super::Error>(Box::new(|tx: &mut dyn super::Tx| {
                Box::pin(async move { tx.create_collection("c", "{}", "t").await })
            }))
            .await
            .unwrap();
        let row = super::DocRow {
            id: "a".into(),
            owner: None,
            created_at: "t".into(),
            updated_at: "t".into(),
            version: 1,
            data: "{}".into(),
        };
        let stored = row.clone();
        store
            .write::<_, super::Error>(Box::new(move |tx: &mut dyn super::Tx| {
                Box::pin(async move {
                    let t = super::TableRef {
                        id: table,
                        has_unique: false,
                    };
                    let change = super::NewChange {
                        collection: "c",
                        doc_id: "a",
                        op: "create",
                        before: None,
                        after: Some("{}"),
                        actor: None,
                        at: "t",
                    };
                    tx.insert_doc(t, &stored, &change).await
                })
            }))
            .await
            .unwrap();
        assert_eq!(store.get_doc(table, "a").await.unwrap(), Some(row));
        store.close().await;
    }
}
