//! SQLite backend: one database file in WAL mode, a single writer connection (used by the
//! group-commit writer) and a pool of `query_only` reader connections.

mod auth;
mod checkpoint;
mod dialect;
mod functions;
mod inline;
mod rows;
mod storage;
mod tx;

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::query::{Param, select_count, select_page};
use super::writer::WriteSession;
use super::{
    Backend, ChangeRow, CollectionRow, DocQuery, DocRow, Error, Kind, Options, PRUNE_CHUNK, Plan,
    PoolStat, RemoteEvents, Result, docs_json,
};
use crate::query::Filter;
pub(crate) use dialect::Sqlite as Dialect;
use rows::Cols;

pub(crate) struct SqliteBackend {
    read: SqlitePool,
    /// For what runs outside the group-commit writer: migrations, retention deletes, the
    /// checkpoint at close.
    write: SqlitePool,
    /// The group-commit writer's connection (synchronous, see `tx.rs`).
    writer: std::sync::Arc<tx::WriterConn>,
    /// Synchronous readers for the hot reads (none when `database.inline_reads` is off or
    /// they could not be opened).
    inline: Option<inline::InlineReaders>,
}

/// One chunk of the change log's pruning (see `prune_changes`).
const PRUNE_CHANGES: &str = "DELETE FROM fb_changes WHERE seq IN (SELECT seq FROM fb_changes \
     WHERE at < ?1 AND seq < (SELECT MAX(seq) FROM fb_changes) ORDER BY at LIMIT ?2)";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// An error opening the database file, said plainly when SQLite finds the file damaged
/// (`SQLITE_CORRUPT`, 11) or not a database at all (`SQLITE_NOTADB`, 26). The server then
/// refuses to start; it never recreates or truncates the file.
fn damaged(path: &Path, e: sqlx::Error) -> Error {
    let code = match &e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        Some("11" | "26") => Error::Other(format!(
            "the database file {} is damaged or not a SQLite database ({e}); \
             not starting on it: restore it from a backup, or check it with `sqlite3 {} \
             'PRAGMA integrity_check'`",
            path.display(),
            path.display()
        )),
        _ => e.into(),
    }
}

impl SqliteBackend {
    /// A page query's rows read through the sqlx pool (when an inline read gave up).
    async fn pooled_docs(&self, sql: String, params: Vec<Param>) -> Result<Vec<DocRow>> {
        let rows = bind_params(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(doc_row).collect()
    }

    /// Runs retention `DELETE`s (each binding `?1` to `cutoff` and `?2` to the chunk size,
    /// [`PRUNE_CHUNK`]) through the write pool, each again until it deletes less than a
    /// chunk; the rows they removed.
    pub(crate) async fn delete_older(
        &self,
        statements: &[&'static str],
        cutoff: &str,
    ) -> Result<u64> {
        // Chunk by chunk, each its own short transaction, so the group-commit writer never
        // waits behind one long delete (say, the first prune after a long downtime).
        let mut total = 0;
        for sql in statements {
            loop {
                let mut conn = self.write.acquire().await?;
                let done = sqlx::query(*sql)
                    .bind(cutoff)
                    .bind(PRUNE_CHUNK)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                total += done;
                if done < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    pub(crate) async fn open_dir(dir: &Path, opts: &Options) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Other(format!("cannot create data folder {}: {e}", dir.display()))
        })?;
        let connect = SqliteConnectOptions::new().filename(dir.join("data.db"));
        Self::open(connect, opts).await
    }

    pub(crate) async fn open_url(url: &str, opts: &Options) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Other(format!("invalid SQLite URL: {e}")))?;
        Self::open(connect, opts).await
    }

    async fn open(connect: SqliteConnectOptions, opts: &Options) -> Result<Self> {
        let (synchronous, synchronous_name) = match opts.sqlite_synchronous.as_str() {
            "normal" => (SqliteSynchronous::Normal, "NORMAL"),
            _ => (SqliteSynchronous::Full, "FULL"),
        };
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-16000")
            .statement_cache_capacity(512);
        let path = connect.get_filename().to_owned();
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|e| damaged(&path, e))?;
        MIGRATOR.run(&write).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => damaged(&path, e),
            other => other.into(),
        })?;
        if !path.is_file() {
            return Err(Error::Other(format!(
                "SQLite needs a database file, not {}",
                path.display()
            )));
        }
        let writer = tx::WriterConn::open(&path, synchronous_name)?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(connect.pragma("query_only", "true"))
            .await?;
        let inline = if opts.sqlite_inline_reads {
            let count = opts.max_connections.clamp(1, 8) as usize;
            match inline::InlineReaders::open(&path, count) {
                Ok(readers) => Some(readers),
                Err(e) => {
                    tracing::warn!(error = %e, "no inline SQLite readers; reading through the pool");
                    None
                }
            }
        } else {
            None
        };
        let backend = SqliteBackend {
            read,
            write,
            writer,
            inline,
        };
        backend.log_settings().await?;
        Ok(backend)
    }

    /// Logs the durability-relevant settings once at start (HOSTILE DUR-02).
    async fn log_settings(&self) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await?;
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await?;
        let version: String = sqlx::query_scalar("SELECT sqlite_version()")
            .fetch_one(&mut *conn)
            .await?;
        let sync = match sync {
            0 => "off",
            1 => "normal",
            2 => "full",
            _ => "extra",
        };
        tracing::info!(
            sqlite.version = %version,
            journal_mode = %journal,
            synchronous = sync,
            foreign_keys = fk == 1,
            busy_timeout_ms = busy,
            "sqlite opened"
        );
        Ok(())
    }
}

pub(crate) fn table(id: i64) -> String {
    format!("fb_docs_{id}")
}

pub(crate) fn bind_params(
    mut query: sqlx::query::Query<'_, Sqlite, SqliteArguments>,
    params: Vec<Param>,
) -> sqlx::query::Query<'_, Sqlite, SqliteArguments> {
    for param in params {
        query = match param {
            Param::Null => query.bind(None::<String>),
            Param::Int(i) => query.bind(i),
            Param::Float(f) => query.bind(f),
            Param::Text(s) => query.bind(s),
        };
    }
    query
}

pub(crate) fn doc_row(row: &impl Cols) -> Result<DocRow> {
    Ok(DocRow {
        id: row.col(0)?,
        owner: row.col(1)?,
        created_at: row.col(2)?,
        updated_at: row.col(3)?,
        version: row.col(4)?,
        data: row.col(5)?,
    })
}

fn change_row(row: &impl Cols) -> Result<ChangeRow> {
    Ok(ChangeRow {
        seq: row.col(0)?,
        collection: row.col(1)?,
        doc_id: row.col(2)?,
        op: row.col(3)?,
        before: row.col(4)?,
        after: row.col(5)?,
        actor: row.col(6)?,
        at: row.col(7)?,
    })
}

#[async_trait]
impl Backend for SqliteBackend {
    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        let mut conn = self.write.acquire().await?;
        sqlx::query("INSERT INTO fb_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = ?")
                .bind(key)
                .fetch_one(&mut *conn)
                .await?,
        )
    }

    async fn list_collections(&self) -> Result<Vec<CollectionRow>> {
        let rows = sqlx::query(
            "SELECT id, name, spec, version, created_at, updated_at FROM fb_collections ORDER BY name",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CollectionRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    spec: r.try_get(2)?,
                    version: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    updated_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn get_doc(&self, table_id: i64, id: &str) -> Result<Option<DocRow>> {
        if let Some(found) = self
            .inline
            .as_ref()
            .and_then(|r| r.get_doc(&table(table_id), id))
        {
            return Ok(found);
        }
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data FROM {} WHERE id = ?",
            table(table_id)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(doc_row).transpose()
    }

    async fn query_docs(&self, table_id: i64, query: &DocQuery<'_>) -> Result<Vec<DocRow>> {
        let (sql, params) = select_page(&Dialect, &table(table_id), "data", query);
        if let Some(rows) = self
            .inline
            .as_ref()
            .and_then(|r| r.query_docs(&sql, &params))
        {
            return Ok(rows);
        }
        self.pooled_docs(sql, params).await
    }

    async fn query_docs_json(&self, table_id: i64, query: &DocQuery<'_>) -> Result<Vec<String>> {
        let (sql, params) = select_page(&Dialect, &table(table_id), "data", query);
        if let Some(rows) = self
            .inline
            .as_ref()
            .and_then(|r| r.query_docs_json(&sql, &params))
        {
            return Ok(rows);
        }
        docs_json(&self.pooled_docs(sql, params).await?)
    }

    async fn count_docs(&self, table_id: i64, filter: &Filter) -> Result<u64> {
        let (sql, params) = select_count(&Dialect, &table(table_id), filter);
        if let Some(n) = self.inline.as_ref().and_then(|r| r.count(&sql, &params)) {
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let row = bind_params(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_one(&self.read)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn explain(&self, table_id: i64, query: &DocQuery<'_>, _: bool) -> Result<Plan> {
        let (sql, params) = select_page(&Dialect, &table(table_id), "data", query);
        let rows = bind_params(
            sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"))),
            params,
        )
        .fetch_all(&self.read)
        .await?;
        let mut text = String::new();
        for row in rows {
            let detail: String = row.try_get(3)?;
            text.push_str(&detail);
            text.push('\n');
        }
        Ok(Plan::from_text(table_id, text))
    }

    async fn last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM fb_changes")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<ChangeRow>> {
        if let Some(changes) = self
            .inline
            .as_ref()
            .and_then(|r| r.changes_after(seq, limit))
        {
            return Ok(changes);
        }
        let rows = sqlx::query(
            "SELECT seq, collection, doc_id, op, before, after, actor, at FROM fb_changes \
             WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(change_row).collect()
    }

    async fn prune_changes(&self, older_than: &str) -> Result<u64> {
        // In chunks, so the writer is never blocked for long; the newest row always stays
        // so that MAX(seq) keeps telling where the log is. Oldest first by `at`, not `seq`:
        // with `ORDER BY seq` SQLite walked the whole table in rowid order testing `at` on
        // every row, a full scan holding the write lock every `prune_interval` even when
        // nothing was old enough (a realtime event waited 100+ ms behind it in the bench);
        // the `at` index finds the old rows, or that there are none, at once.
        self.delete_older(&[PRUNE_CHANGES], older_than).await
    }

    async fn write_session(&self) -> Result<Box<dyn WriteSession>> {
        Ok(Box::new(self.writer.session()?))
    }

    fn writer_thread(&self) -> bool {
        true
    }

    async fn notify_catalog(&self) -> Result<()> {
        Ok(())
    }

    async fn notify_realtime(&self, _payload: &str) -> Result<()> {
        Ok(())
    }

    async fn oldest_seq(&self) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MIN(seq) FROM fb_changes")
            .fetch_one(&self.read)
            .await?)
    }

    fn auth(&self) -> &dyn crate::store::auth::AuthRead {
        self
    }

    fn storage(&self) -> &dyn crate::store::storage::StorageRead {
        self
    }

    fn functions(&self) -> &dyn crate::store::functions::FunctionsRead {
        self
    }

    async fn listen(&self, _events: RemoteEvents) -> Result<()> {
        // One process owns a SQLite file: there are no other nodes to hear from.
        Ok(())
    }

    fn pool_stats(&self) -> Vec<PoolStat> {
        vec![
            PoolStat {
                pool: "read",
                size: self.read.size(),
                idle: u32::try_from(self.read.num_idle()).unwrap_or(u32::MAX),
            },
            PoolStat {
                pool: "write",
                size: self.write.size(),
                idle: u32::try_from(self.write.num_idle()).unwrap_or(u32::MAX),
            },
        ]
    }

    async fn close(&self) {
        self.writer.close();
        self.read.close().await;
        if let Ok(mut conn) = self.write.acquire().await {
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut *conn)
                .await;
        }
        self.write.close().await;
    }
}

#[cfg(test)]
mod tests {
    /// The query plan's steps for `sql` on a database with every migration applied.
    fn plan(sql: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for migration in super::MIGRATOR.iter() {
            conn.execute_batch(migration.sql.as_str()).unwrap();
        }
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map(rusqlite::params!["2026-01-01", super::PRUNE_CHUNK], |r| {
            r.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// The retention jobs run every minute through the write connection; each of their
    /// deletes must find its rows through an index, never scan a table under the write
    /// lock (pruning the change log `ORDER BY seq` walked the whole log).
    #[test]
    fn retention_deletes_search_indexes_and_scan_nothing() {
        let change_log = plan(super::PRUNE_CHANGES);
        assert!(
            change_log
                .iter()
                .any(|step| step.contains("INDEX fb_changes_at (at<?)")),
            "{change_log:?}"
        );
        let all = [super::PRUNE_CHANGES]
            .into_iter()
            .chain(super::auth::PRUNE_AUTH)
            .chain(super::functions::PRUNE_FUNCTIONS);
        for sql in all {
            let steps = plan(sql);
            assert!(
                !steps.iter().any(|step| step.starts_with("SCAN")),
                "{sql}: {steps:?}"
            );
        }
    }
}
