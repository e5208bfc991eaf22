//! The SQLite write session: a transaction on the single writer connection, run
//! synchronously.
//!
//! On SQLite the group-commit writer runs on a thread of its own (`writer.rs`) and drives
//! a rusqlite connection from there, so a batch — `BEGIN`, every statement, `COMMIT` —
//! costs no thread hand-off at all. (sqlx's SQLite driver sends each statement to a
//! per-connection worker thread and waits for the answer: two wake-ups per statement,
//! which cost more CPU than SQLite's own work on a create; see BENCHMARKS.md.) The reads
//! outside transactions stay on sqlx's pool and the inline readers.
//!
//! SQLite undoes a failing statement by itself and keeps the transaction, so when the
//! document statement fails (a unique conflict) nothing was written and no savepoint is
//! needed; if the change statement after it failed, the session is poisoned.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, Params, Row, params};

use super::checkpoint::{BACKSTOP_PAGES, Checkpointer};
use super::rows::Cols;
use super::{doc_row, table};
use crate::store::query::index_expressions;
use crate::store::writer::WriteSession;
use crate::store::{DocRow, Error, IndexDef, NewChange, Result, TableRef, Tx};

const APPEND_CHANGE: &str = "INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
     VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq";

/// The writer's connection, handed to one session at a time.
pub(crate) struct WriterConn {
    idle: Mutex<Option<Connection>>,
    /// Commits made, for the checkpoint thread (which wakes on its own tick).
    commits: Arc<AtomicU64>,
    /// Runs the WAL checkpoints the writer's commits would otherwise run.
    checkpointer: Mutex<Option<Checkpointer>>,
    path: PathBuf,
    synchronous: &'static str,
}

impl WriterConn {
    /// Opens the writer connection to the database file at `path` (which must exist).
    pub(crate) fn open(path: &Path, synchronous: &'static str) -> Result<Arc<WriterConn>> {
        let conn = connect(path, synchronous)?;
        let commits = Arc::new(AtomicU64::new(0));
        let checkpointer = Checkpointer::start(path, synchronous, commits.clone())
            .inspect_err(|e| {
                tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints itself");
            })
            .ok();
        Ok(Arc::new(WriterConn {
            idle: Mutex::new(Some(conn)),
            commits,
            checkpointer: Mutex::new(checkpointer),
            path: path.to_owned(),
            synchronous,
        }))
    }

    /// A session on the connection; a new connection if the last session lost it.
    pub(crate) fn session(self: &Arc<Self>) -> Result<SqliteSession> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.take());
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path, self.synchronous)?,
        };
        Ok(SqliteSession {
            conn: Some(conn),
            home: self.clone(),
            last_seq: None,
            saved: None,
            poisoned: false,
        })
    }

    /// Closes the connection and stops the checkpoint thread (at shutdown, after the
    /// writer stopped).
    pub(crate) fn close(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.take();
        }
        if let Ok(mut checkpointer) = self.checkpointer.lock() {
            checkpointer.take();
        }
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) fn connect(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // `journal_mode = WAL` is a property of the file, set when sqlx opened it; the rest
    // are per connection and match the pool's (see `SqliteBackend::open`), except the
    // page cache: SQLite's default 2 MB. At the end of every transaction that grew the
    // file SQLite scans the page cache's hash table, whose size follows `cache_size`; with
    // the readers' 16 MB that scan was 9.5 % of the server's CPU on creates (2.9 % now).
    // The writer touches few pages per batch; reads have their own connections.
    // Checkpoints run on their own thread (`checkpoint.rs`); the writer only past a far
    // higher threshold than SQLite's 1 000 pages, as a backstop.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = memory; PRAGMA cache_size = -2000; \
         PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES};"
    ))?;
    conn.set_prepared_statement_cache_capacity(512);
    Ok(conn)
}

pub(crate) struct SqliteSession {
    /// `None` once a failed rollback made the connection's state unknown.
    conn: Option<Connection>,
    home: Arc<WriterConn>,
    last_seq: Option<i64>,
    saved: Option<i64>,
    poisoned: bool,
}

impl Drop for SqliteSession {
    fn drop(&mut self) {
        // A session dropped inside a transaction (only if the writer itself failed) closes
        // its connection, which rolls the transaction back; the next session opens another.
        if let Some(conn) = self.conn.take()
            && conn.is_autocommit()
            && let Ok(mut idle) = self.home.idle.lock()
        {
            *idle = Some(conn);
        }
    }
}

impl SqliteSession {
    fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the writer connection is closed".into()))
    }

    /// Runs one statement; the rows it changed.
    pub(crate) fn exec(&self, sql: &str, params: impl Params) -> Result<usize> {
        Ok(self.conn()?.prepare_cached(sql)?.execute(params)?)
    }

    /// The first row a statement returns, mapped.
    pub(crate) fn one<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut stmt = self.conn()?.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        match rows.next()? {
            Some(row) => map(row).map(Some),
            None => Ok(None),
        }
    }

    /// Every row a statement returns, mapped.
    pub(crate) fn all<T>(
        &self,
        sql: &str,
        params: impl Params,
        mut map: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn()?.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
        Ok(out)
    }

    /// A statement that is not worth caching (DDL, transaction control).
    fn run(&self, sql: &str) -> Result<()> {
        self.conn()?.execute_batch(sql)?;
        Ok(())
    }

    /// Runs a document write and appends its change; `NotFound` when the write changed
    /// no row.
    fn write_with_change(
        &mut self,
        sql: &str,
        params: impl Params,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        match self.exec(sql, params) {
            Ok(0) => return Err(Error::NotFound),
            Ok(_) => {}
            Err(e) => {
                // A conflict: SQLite undid the statement and nothing was written. Anything
                // else may have ended the transaction.
                if !matches!(e, Error::Conflict { .. }) {
                    self.poisoned = true;
                }
                return Err(e);
            }
        }
        let seq = self.insert_change(change);
        if seq.is_err() {
            self.poisoned = true;
        }
        seq
    }

    fn insert_change(&mut self, c: &NewChange<'_>) -> Result<i64> {
        let seq = self
            .one(
                APPEND_CHANGE,
                params![
                    c.collection,
                    c.doc_id,
                    c.op,
                    c.before,
                    c.after,
                    c.actor,
                    c.at
                ],
                |r| r.col(0),
            )?
            .ok_or(Error::NotFound)?;
        self.last_seq = Some(seq);
        Ok(seq)
    }
}

#[async_trait]
impl WriteSession for SqliteSession {
    async fn begin(&mut self) -> Result<()> {
        self.last_seq = None;
        self.poisoned = false;
        self.exec("BEGIN IMMEDIATE", []).map(drop)
    }

    async fn commit(&mut self) -> Result<()> {
        self.exec("COMMIT", [])?;
        self.home.committed();
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        let result = self.exec("ROLLBACK", []).map(drop);
        if result.is_err() {
            // The connection's state is unknown: do not hand it to the next batch.
            self.conn = None;
        }
        result
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.saved = self.last_seq;
        self.exec("SAVEPOINT job", []).map(drop)
    }

    async fn release(&mut self) -> Result<()> {
        self.exec("RELEASE job", []).map(drop)
    }

    async fn rollback_to(&mut self) -> Result<()> {
        self.last_seq = self.saved;
        self.poisoned = false;
        self.exec("ROLLBACK TO job", []).map(drop)
    }

    fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }
}

#[async_trait]
impl Tx for SqliteSession {
    async fn get_doc(&mut self, t: TableRef, id: &str) -> Result<Option<DocRow>> {
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data FROM {} WHERE id = ?",
            table(t.id)
        );
        self.one(&sql, [id], |r| doc_row(r))
    }

    async fn insert_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "INSERT INTO {} (id, owner, created_at, updated_at, version, data) VALUES (?, ?, ?, ?, ?, ?)",
            table(t.id)
        );
        let values = params![
            row.id,
            row.owner,
            row.created_at,
            row.updated_at,
            row.version,
            row.data
        ];
        self.write_with_change(&sql, values, change)
    }

    async fn update_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "UPDATE {} SET owner = ?, updated_at = ?, version = ?, data = ? WHERE id = ?",
            table(t.id)
        );
        let values = params![row.owner, row.updated_at, row.version, row.data, row.id];
        self.write_with_change(&sql, values, change)
    }

    async fn delete_doc(&mut self, t: TableRef, id: &str, change: &NewChange<'_>) -> Result<i64> {
        let sql = format!("DELETE FROM {} WHERE id = ?", table(t.id));
        self.write_with_change(&sql, [id], change)
    }

    async fn append_change(&mut self, change: &NewChange<'_>) -> Result<i64> {
        self.insert_change(change)
    }

    async fn create_collection(&mut self, name: &str, spec: &str, at: &str) -> Result<i64> {
        let id: i64 = self
            .one(
                "INSERT INTO fb_collections (name, spec, version, created_at, updated_at) \
                 VALUES (?, ?, 1, ?, ?) RETURNING id",
                params![name, spec, at, at],
                |r| r.col(0),
            )?
            .ok_or(Error::NotFound)?;
        let t = table(id);
        self.run(&format!(
            "CREATE TABLE {t} (id TEXT PRIMARY KEY NOT NULL, owner TEXT, created_at TEXT NOT NULL, \
             updated_at TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL); \
             CREATE INDEX {t}_owner ON {t} (owner, id);"
        ))?;
        Ok(id)
    }

    async fn update_collection(&mut self, id: i64, spec: &str, at: &str) -> Result<i64> {
        self.one(
            "UPDATE fb_collections SET spec = ?, version = version + 1, updated_at = ? \
             WHERE id = ? RETURNING version",
            params![spec, at, id],
            |r| r.col(0),
        )?
        .ok_or(Error::NotFound)
    }

    async fn drop_collection(&mut self, id: i64) -> Result<()> {
        self.exec("DELETE FROM fb_collections WHERE id = ?", [id])?;
        self.run(&format!("DROP TABLE IF EXISTS {}", table(id)))
    }

    async fn index_keys(&mut self, table_id: i64) -> Result<Vec<String>> {
        let prefix = format!("{}_x", table(table_id));
        let names: Vec<String> = self.all(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            [table(table_id)],
            |r| r.col(0),
        )?;
        Ok(names
            .iter()
            .filter_map(|name| name.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect())
    }

    async fn create_index(&mut self, table_id: i64, index: &IndexDef) -> Result<()> {
        let t = table(table_id);
        let mut exprs = index_expressions(&super::Dialect, &index.fields);
        if !index.unique {
            // Rows with equal keys come out in `_id` order, the sort's tie-breaker.
            exprs.push("id".to_owned());
        }
        self.run(&format!(
            "CREATE {}INDEX {t}_x{} ON {t} ({})",
            if index.unique { "UNIQUE " } else { "" },
            index.key,
            exprs.join(", ")
        ))
    }

    fn poisoned(&self) -> bool {
        self.poisoned
    }

    fn auth(&mut self) -> &mut dyn crate::store::auth::AuthTx {
        self
    }

    fn storage(&mut self) -> &mut dyn crate::store::storage::StorageTx {
        self
    }

    fn functions(&mut self) -> &mut dyn crate::store::functions::FunctionsTx {
        self
    }

    async fn drop_index(&mut self, table_id: i64, key: &str) -> Result<()> {
        if !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Other("BUG: index key is not alphanumeric".into()));
        }
        self.run(&format!("DROP INDEX IF EXISTS {}_x{key}", table(table_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_dropped_inside_a_transaction_does_not_poison_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER);")
            .unwrap();
        let writer = WriterConn::open(&path, "FULL").unwrap();
        let mut first = writer.session().unwrap();
        first.begin().await.unwrap();
        first.exec("INSERT INTO t VALUES (1)", []).unwrap();
        drop(first);
        let mut next = writer.session().unwrap();
        next.begin().await.unwrap();
        next.exec("INSERT INTO t VALUES (2)", []).unwrap();
        next.commit().await.unwrap();
        let rows: Vec<i64> = next.all("SELECT n FROM t", [], |r| r.col(0)).unwrap();
        assert_eq!(rows, [2], "the dropped transaction was rolled back");
        // A session that ended cleanly hands its connection on.
        drop(next);
        assert!(writer.idle.lock().unwrap().is_some());
    }

    /// Commits leave their pages in the WAL; the checkpoint thread, not the writer, copies
    /// them into the database file soon after (the writer's own threshold is far off).
    #[tokio::test]
    async fn the_checkpoint_thread_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (b BLOB);")
            .unwrap();
        let writer = WriterConn::open(&path, "NORMAL").unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for _ in 0..20 {
            let mut session = writer.session().unwrap();
            session.begin().await.unwrap();
            for _ in 0..10 {
                session
                    .exec("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .unwrap();
            }
            session.commit().await.unwrap();
        }
        // ~800 KB committed: about 200 pages, far below the writer's own threshold.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size > before + 700_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {size} bytes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writer.close();
    }
}
