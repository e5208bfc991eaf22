//! The SQLite write session: a transaction on the single writer connection.
//!
//! sqlx runs each SQLite connection on its own thread, so every query is a round trip
//! between threads. A document write and its change row therefore go as one multi-statement
//! query (sqlx binds `?` parameters across the statements): one round trip per write.
//! SQLite undoes a failing statement by itself and keeps the transaction, so when the
//! document statement fails (a unique conflict) nothing was written and no savepoint is
//! needed; if the change statement after it failed, the session is poisoned.

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteArguments;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::{doc_row, table};
use crate::store::query::index_expressions;
use crate::store::writer::WriteSession;
use crate::store::{DocRow, Error, IndexDef, NewChange, Result, TableRef, Tx};

/// Appends the change of the write just before it, only if that write changed a row.
const CHANGE_AFTER_WRITE: &str = "INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
     SELECT ?, ?, ?, ?, ?, ?, ? WHERE changes() > 0 RETURNING seq";

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn bind_change<'q>(query: Query<'q>, change: &NewChange<'_>) -> Query<'q> {
    query
        .bind(change.collection.to_owned())
        .bind(change.doc_id.to_owned())
        .bind(change.op.to_owned())
        .bind(change.before.map(str::to_owned))
        .bind(change.after.map(str::to_owned))
        .bind(change.actor.map(str::to_owned))
        .bind(change.at.to_owned())
}

pub(crate) struct SqliteSession {
    conn: PoolConnection<Sqlite>,
    last_seq: Option<i64>,
    saved: Option<i64>,
    poisoned: bool,
}

impl SqliteSession {
    /// The connection, for the auth statements (`auth.rs`).
    pub(crate) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    pub(crate) fn new(conn: PoolConnection<Sqlite>) -> Self {
        Self {
            conn,
            last_seq: None,
            saved: None,
            poisoned: false,
        }
    }

    /// Runs `write; CHANGE_AFTER_WRITE` in one round trip; `NotFound` when the write
    /// changed no row.
    async fn write_with_change(&mut self, query: Query<'_>) -> Result<i64> {
        match query.fetch_all(&mut *self.conn).await {
            Ok(rows) => {
                let Some(row) = rows.last() else {
                    return Err(Error::NotFound);
                };
                let seq: i64 = row.try_get(0)?;
                self.last_seq = Some(seq);
                Ok(seq)
            }
            Err(e) => {
                let e = Error::from(e);
                // A conflict names the document table: the first statement failed and
                // SQLite undid it. Anything else may have come after the document was
                // written.
                if !matches!(e, Error::Conflict { .. }) {
                    self.poisoned = true;
                }
                Err(e)
            }
        }
    }

    async fn exec(&mut self, sql: &'static str) -> Result<()> {
        sqlx::query(sql).execute(&mut *self.conn).await?;
        Ok(())
    }
}

#[async_trait]
impl WriteSession for SqliteSession {
    async fn begin(&mut self) -> Result<()> {
        self.last_seq = None;
        self.poisoned = false;
        self.exec("BEGIN IMMEDIATE").await
    }

    async fn commit(&mut self) -> Result<()> {
        self.exec("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<()> {
        let result = self.exec("ROLLBACK").await;
        if result.is_err() {
            // The connection's state is unknown: do not hand it to the next batch.
            self.conn.close_on_drop();
        }
        result
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.saved = self.last_seq;
        self.exec("SAVEPOINT job").await
    }

    async fn release(&mut self) -> Result<()> {
        self.exec("RELEASE job").await
    }

    async fn rollback_to(&mut self) -> Result<()> {
        self.last_seq = self.saved;
        self.poisoned = false;
        self.exec("ROLLBACK TO job").await
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
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.as_ref().map(doc_row).transpose()
    }

    async fn insert_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "INSERT INTO {} (id, owner, created_at, updated_at, version, data) VALUES (?, ?, ?, ?, ?, ?); {CHANGE_AFTER_WRITE}",
            table(t.id)
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(row.id.clone())
            .bind(row.owner.clone())
            .bind(row.created_at.clone())
            .bind(row.updated_at.clone())
            .bind(row.version)
            .bind(row.data.clone());
        self.write_with_change(bind_change(query, change)).await
    }

    async fn update_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "UPDATE {} SET owner = ?, updated_at = ?, version = ?, data = ? WHERE id = ?; {CHANGE_AFTER_WRITE}",
            table(t.id)
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(row.owner.clone())
            .bind(row.updated_at.clone())
            .bind(row.version)
            .bind(row.data.clone())
            .bind(row.id.clone());
        self.write_with_change(bind_change(query, change)).await
    }

    async fn delete_doc(&mut self, t: TableRef, id: &str, change: &NewChange<'_>) -> Result<i64> {
        let sql = format!(
            "DELETE FROM {} WHERE id = ?; {CHANGE_AFTER_WRITE}",
            table(t.id)
        );
        let query = sqlx::query(AssertSqlSafe(sql)).bind(id.to_owned());
        self.write_with_change(bind_change(query, change)).await
    }

    async fn append_change(&mut self, change: &NewChange<'_>) -> Result<i64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        )
        .bind(change.collection)
        .bind(change.doc_id)
        .bind(change.op)
        .bind(change.before)
        .bind(change.after)
        .bind(change.actor)
        .bind(change.at)
        .fetch_one(&mut *self.conn)
        .await?;
        self.last_seq = Some(seq);
        Ok(seq)
    }

    async fn create_collection(&mut self, name: &str, spec: &str, at: &str) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO fb_collections (name, spec, version, created_at, updated_at) \
             VALUES (?, ?, 1, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(spec)
        .bind(at)
        .bind(at)
        .fetch_one(&mut *self.conn)
        .await?;
        let t = table(id);
        let ddl = format!(
            "CREATE TABLE {t} (id TEXT PRIMARY KEY NOT NULL, owner TEXT, created_at TEXT NOT NULL, \
             updated_at TEXT NOT NULL, version INTEGER NOT NULL, data TEXT NOT NULL)"
        );
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *self.conn)
            .await?;
        let owner = format!("CREATE INDEX {t}_owner ON {t} (owner, id)");
        sqlx::query(AssertSqlSafe(owner))
            .execute(&mut *self.conn)
            .await?;
        Ok(id)
    }

    async fn update_collection(&mut self, id: i64, spec: &str, at: &str) -> Result<i64> {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE fb_collections SET spec = ?, version = version + 1, updated_at = ? \
             WHERE id = ? RETURNING version",
        )
        .bind(spec)
        .bind(at)
        .bind(id)
        .fetch_optional(&mut *self.conn)
        .await?;
        version.ok_or(Error::NotFound)
    }

    async fn drop_collection(&mut self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM fb_collections WHERE id = ?")
            .bind(id)
            .execute(&mut *self.conn)
            .await?;
        let ddl = format!("DROP TABLE IF EXISTS {}", table(id));
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn index_keys(&mut self, table_id: i64) -> Result<Vec<String>> {
        let prefix = format!("{}_x", table(table_id));
        let rows =
            sqlx::query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?")
                .bind(table(table_id))
                .fetch_all(&mut *self.conn)
                .await?;
        let mut keys = Vec::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            if let Some(key) = name.strip_prefix(&prefix) {
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }

    async fn create_index(&mut self, table_id: i64, index: &IndexDef) -> Result<()> {
        let t = table(table_id);
        let mut exprs = index_expressions(&super::Dialect, &index.fields);
        if !index.unique {
            // Rows with equal keys come out in `_id` order, the sort's tie-breaker.
            exprs.push("id".to_owned());
        }
        let ddl = format!(
            "CREATE {}INDEX {t}_x{} ON {t} ({})",
            if index.unique { "UNIQUE " } else { "" },
            index.key,
            exprs.join(", ")
        );
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *self.conn)
            .await?;
        Ok(())
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
        let ddl = format!("DROP INDEX IF EXISTS {}_x{key}", table(table_id));
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }
}
