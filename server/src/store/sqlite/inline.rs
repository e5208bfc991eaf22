//! Inline reads: the hot reads (a document by id, a page, a count) run on the calling
//! thread through a few synchronous connections, instead of through sqlx, whose SQLite
//! driver sends every statement to a per-connection worker thread and back (two
//! cross-thread wake-ups per query — on a get by id they cost more CPU than SQLite itself,
//! see BENCHMARKS.md).
//!
//! Running SQLite on an async worker thread is only fine while it is quick, so each
//! statement has a budget: a progress handler interrupts it once it has run for
//! [`BUDGET`], and the read is done again the usual way, off the runtime. A point read or
//! an indexed page finishes well inside the budget; a scan of a large table does not, and
//! costs at most the budget in wasted work. When every inline connection is busy, or on any
//! error, the caller also takes the usual way — this path is only ever an optimization,
//! never a different answer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::super::query::Param;
use super::super::{ChangeRow, DocRow, doc_json, not_an_object};
use super::{change_row, doc_row};

/// How long one statement may run on the calling thread before it is interrupted.
pub const BUDGET: Duration = Duration::from_millis(2);

/// Virtual-machine steps between two looks at the clock.
const CHECK_EVERY: i32 = 1000;

struct Reader {
    conn: Connection,
    /// When the running statement must stop (read by the progress handler).
    deadline: Arc<Mutex<Option<Instant>>>,
}

pub struct InlineReaders {
    /// Taken first-free from the front, so the first few (as many as threads read at
    /// once) do nearly all the work and keep their page caches warm; the rest fill their
    /// caches only when they are needed.
    readers: Vec<Mutex<Reader>>,
}

impl InlineReaders {
    /// `count` connections to the database file at `path` (which must exist).
    pub fn open(path: &Path, count: usize) -> rusqlite::Result<InlineReaders> {
        let mut readers = Vec::with_capacity(count);
        for _ in 0..count {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_millis(50))?;
            conn.execute_batch(
                "PRAGMA query_only = true; PRAGMA temp_store = memory; PRAGMA cache_size = -16000;",
            )?;
            conn.set_prepared_statement_cache_capacity(256);
            let deadline: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
            let seen = deadline.clone();
            conn.progress_handler(
                CHECK_EVERY,
                Some(move || {
                    // true interrupts the statement.
                    seen.lock()
                        .ok()
                        .and_then(|d| *d)
                        .is_some_and(|d| Instant::now() >= d)
                }),
            )?;
            readers.push(Mutex::new(Reader { conn, deadline }));
        }
        Ok(InlineReaders { readers })
    }

    /// Runs `read` on a free connection within the budget; `None` when none is free, the
    /// budget ran out or SQLite failed (the caller then reads the usual way).
    fn with<T>(&self, read: impl FnOnce(&Connection) -> Result<T, Failure>) -> Option<T> {
        let mut reader = self.readers.iter().find_map(|r| r.try_lock().ok())?;
        let reader = &mut *reader;
        if let Ok(mut d) = reader.deadline.lock() {
            *d = Some(Instant::now() + BUDGET);
        }
        let result = read(&reader.conn);
        if let Ok(mut d) = reader.deadline.lock() {
            *d = None;
        }
        match result {
            Ok(value) => {
                metrics::counter!("ferrobase_sqlite_inline_reads_total").increment(1);
                Some(value)
            }
            Err(e) => {
                let interrupted = matches!(&e, Failure::Sqlite(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted));
                if interrupted {
                    metrics::counter!("ferrobase_sqlite_inline_fallbacks_total", "reason" => "budget")
                        .increment(1);
                } else {
                    tracing::debug!(error = %e, "inline read failed; reading through the pool");
                    metrics::counter!("ferrobase_sqlite_inline_fallbacks_total", "reason" => "error")
                        .increment(1);
                }
                None
            }
        }
    }

    pub fn get_doc(&self, table: &str, id: &str) -> Option<Option<DocRow>> {
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data FROM {table} WHERE id = ?"
        );
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query([id])?;
            Ok(rows.next()?.map(doc_row).transpose()?)
        })
    }

    pub fn query_docs(&self, sql: &str, params: &[Param]) -> Option<Vec<DocRow>> {
        self.rows(sql, params, |row| Ok(doc_row(row)?))
    }

    /// [`InlineReaders::query_docs`], each row written straight from SQLite's column
    /// buffers as the API's JSON text (no row of owned strings in between: that was a fifth
    /// of a 50-document list).
    pub fn query_docs_json(&self, sql: &str, params: &[Param]) -> Option<Vec<String>> {
        self.rows(sql, params, |row| {
            let id = text(row, 0)?;
            let owner = match row.get_ref(1)? {
                rusqlite::types::ValueRef::Null => None,
                _ => Some(text(row, 1)?),
            };
            let version = row.get(4)?;
            let json = doc_json(
                id,
                owner,
                text(row, 2)?,
                text(row, 3)?,
                version,
                text(row, 5)?,
            );
            Ok(json.ok_or_else(|| not_an_object(id))?)
        })
    }

    /// Every row of a query, mapped.
    fn rows<T>(
        &self,
        sql: &str,
        params: &[Param],
        mut map: impl FnMut(&rusqlite::Row<'_>) -> Result<T, Failure>,
    ) -> Option<Vec<T>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            bind(&mut stmt, params)?;
            let mut rows = stmt.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(map(row)?);
            }
            Ok(out)
        })
    }

    pub fn count(&self, sql: &str, params: &[Param]) -> Option<i64> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            bind(&mut stmt, params)?;
            let mut rows = stmt.raw_query();
            match rows.next()? {
                Some(row) => Ok(row.get(0)?),
                None => Err(rusqlite::Error::QueryReturnedNoRows.into()),
            }
        })
    }

    /// Up to `limit` changes after `seq`, in order (the change feed's tail: it runs after
    /// every commit, for realtime and for the trigger queue).
    pub fn changes_after(&self, seq: i64, limit: u32) -> Option<Vec<ChangeRow>> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, collection, doc_id, op, before, after, actor, at FROM fb_changes \
                 WHERE seq > ? ORDER BY seq LIMIT ?",
            )?;
            let mut rows = stmt.query([seq, i64::from(limit)])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(change_row(row)?);
            }
            Ok(out)
        })
    }
}

/// Column `i` as text, borrowed from SQLite.
fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Why an inline read gave up.
enum Failure {
    Sqlite(rusqlite::Error),
    /// A row the mapper could not read.
    Row(super::super::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Sqlite(e) => e.fmt(f),
            Failure::Row(e) => e.fmt(f),
        }
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sqlite(e)
    }
}

impl From<super::super::Error> for Failure {
    fn from(e: super::super::Error) -> Self {
        Failure::Row(e)
    }
}

fn bind(stmt: &mut rusqlite::CachedStatement<'_>, params: &[Param]) -> rusqlite::Result<()> {
    for (i, param) in params.iter().enumerate() {
        let at = i + 1;
        match param {
            Param::Null => stmt.raw_bind_parameter(at, rusqlite::types::Null)?,
            Param::Int(v) => stmt.raw_bind_parameter(at, v)?,
            Param::Float(v) => stmt.raw_bind_parameter(at, v)?,
            Param::Text(v) => stmt.raw_bind_parameter(at, v.as_str())?,
        }
    }
    Ok(())
}
