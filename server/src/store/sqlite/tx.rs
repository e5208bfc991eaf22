//! The SQLite write session: a transaction on the single writer connection.

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::{doc_row, table};
use crate::store::query::index_expressions;
use crate::store::writer::WriteSession;
use crate::store::{DocRow, Error, IndexDef, NewChange, Result, Tx};

pub(crate) struct SqliteSession {
    conn: PoolConnection<Sqlite>,
    last_seq: Option<i64>,
    saved: Option<i64>,
}

impl SqliteSession {
    pub(crate) fn new(conn: PoolConnection<Sqlite>) -> Self {
        Self {
            conn,
            last_seq: None,
            saved: None,
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
        self.exec("ROLLBACK TO job").await
    }

    fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }
}

#[async_trait]
impl Tx for SqliteSession {
    async fn get_doc(&mut self, table_id: i64, id: &str) -> Result<Option<DocRow>> {
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data FROM {} WHERE id = ?",
            table(table_id)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.as_ref().map(doc_row).transpose()
    }

    async fn insert_doc(&mut self, table_id: i64, row: &DocRow) -> Result<()> {
        let sql = format!(
            "INSERT INTO {} (id, owner, created_at, updated_at, version, data) VALUES (?, ?, ?, ?, ?, ?)",
            table(table_id)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&row.id)
            .bind(&row.owner)
            .bind(&row.created_at)
            .bind(&row.updated_at)
            .bind(row.version)
            .bind(&row.data)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn update_doc(&mut self, table_id: i64, row: &DocRow) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET owner = ?, updated_at = ?, version = ?, data = ? WHERE id = ?",
            table(table_id)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(&row.owner)
            .bind(&row.updated_at)
            .bind(row.version)
            .bind(&row.data)
            .bind(&row.id)
            .execute(&mut *self.conn)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound);
        }
        Ok(())
    }

    async fn delete_doc(&mut self, table_id: i64, id: &str) -> Result<bool> {
        let sql = format!("DELETE FROM {} WHERE id = ?", table(table_id));
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(&mut *self.conn)
            .await?;
        Ok(done.rows_affected() > 0)
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
