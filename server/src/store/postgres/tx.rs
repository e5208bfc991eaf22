//! The Postgres write session: a transaction on the writer connection that first takes a
//! transaction-scoped advisory lock, so batches from all nodes commit one after another and
//! change-log `seq` order is commit order. The `NOTIFY` for other nodes is sent inside the
//! transaction, so it is delivered exactly when (and only if) the batch commits.

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::dialect::{path_expr, rank_expr};
use super::{CHANGES_CHANNEL, doc_row, table};
use crate::query::{Field, SystemField};
use crate::store::query::index_expressions;
use crate::store::writer::WriteSession;
use crate::store::{DocRow, Error, IndexDef, NewChange, Result, Tx};

/// Key of the advisory lock that serialises change-log appends across nodes.
const APPEND_LOCK: i64 = 0x4665_7272_6f62; // "Ferrob"

pub(crate) struct PgSession {
    conn: PoolConnection<Postgres>,
    last_seq: Option<i64>,
    saved: Option<i64>,
}

impl PgSession {
    pub(crate) fn new(conn: PoolConnection<Postgres>) -> Self {
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

    async fn exec_ddl(&mut self, sql: String) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl WriteSession for PgSession {
    async fn begin(&mut self) -> Result<()> {
        self.last_seq = None;
        self.exec("BEGIN").await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        if let Some(seq) = self.last_seq {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *self.conn)
                .await?;
        }
        self.exec("COMMIT").await
    }

    async fn rollback(&mut self) -> Result<()> {
        let result = self.exec("ROLLBACK").await;
        if result.is_err() {
            self.conn.close_on_drop();
        }
        result
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.saved = self.last_seq;
        self.exec("SAVEPOINT job").await
    }

    async fn release(&mut self) -> Result<()> {
        self.exec("RELEASE SAVEPOINT job").await
    }

    async fn rollback_to(&mut self) -> Result<()> {
        self.last_seq = self.saved;
        self.exec("ROLLBACK TO SAVEPOINT job").await
    }

    fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }
}

#[async_trait]
impl Tx for PgSession {
    async fn get_doc(&mut self, table_id: i64, id: &str) -> Result<Option<DocRow>> {
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data::text FROM {} WHERE id = $1 FOR UPDATE",
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
            "INSERT INTO {} (id, owner, created_at, updated_at, version, data) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
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
            "UPDATE {} SET owner = $1, updated_at = $2, version = $3, data = $4::jsonb WHERE id = $5",
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
        let sql = format!("DELETE FROM {} WHERE id = $1", table(table_id));
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .execute(&mut *self.conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_change(&mut self, change: &NewChange<'_>) -> Result<i64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
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
             VALUES ($1, $2, 1, $3, $3) RETURNING id",
        )
        .bind(name)
        .bind(spec)
        .bind(at)
        .fetch_one(&mut *self.conn)
        .await?;
        let t = table(id);
        self.exec_ddl(format!(
            "CREATE TABLE {t} (id TEXT COLLATE \"C\" PRIMARY KEY, owner TEXT COLLATE \"C\", \
             created_at TEXT COLLATE \"C\" NOT NULL, updated_at TEXT COLLATE \"C\" NOT NULL, \
             version BIGINT NOT NULL, data JSONB NOT NULL); \
             CREATE INDEX {t}_owner ON {t} (owner, id)"
        ))
        .await?;
        Ok(id)
    }

    async fn update_collection(&mut self, id: i64, spec: &str, at: &str) -> Result<i64> {
        let version: Option<i64> = sqlx::query_scalar(
            "UPDATE fb_collections SET spec = $1, version = version + 1, updated_at = $2 \
             WHERE id = $3 RETURNING version",
        )
        .bind(spec)
        .bind(at)
        .bind(id)
        .fetch_optional(&mut *self.conn)
        .await?;
        version.ok_or(Error::NotFound)
    }

    async fn drop_collection(&mut self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM fb_collections WHERE id = $1")
            .bind(id)
            .execute(&mut *self.conn)
            .await?;
        self.exec_ddl(format!("DROP TABLE IF EXISTS {}", table(id)))
            .await
    }

    async fn index_keys(&mut self, table_id: i64) -> Result<Vec<String>> {
        let prefix = format!("{}_x", table(table_id));
        let rows = sqlx::query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
        )
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
        let exprs = index_expressions(&super::Dialect, &index.fields);
        let ddl = if index.unique {
            // Same key columns as SQLite's unique index; documents where a field is missing
            // or null never conflict (they are outside the partial index), and within it
            // NULL key parts (a string has no numeric part) compare equal.
            let present: Vec<String> = index
                .fields
                .iter()
                .filter_map(|k| match &k.field {
                    Field::User(path) => Some(format!("{} <> 0", rank_expr(&path_expr(path)))),
                    Field::System(SystemField::Owner) => Some("owner IS NOT NULL".to_owned()),
                    Field::System(_) => None,
                })
                .collect();
            let predicate = if present.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", present.join(" AND "))
            };
            format!(
                "CREATE UNIQUE INDEX {t}_x{} ON {t} ({}) NULLS NOT DISTINCT{predicate}",
                index.key,
                exprs.join(", ")
            )
        } else {
            format!(
                "CREATE INDEX {t}_x{} ON {t} ({}, id)",
                index.key,
                exprs.join(", ")
            )
        };
        self.exec_ddl(ddl).await
    }

    async fn drop_index(&mut self, table_id: i64, key: &str) -> Result<()> {
        if !key.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Error::Other("BUG: index key is not alphanumeric".into()));
        }
        self.exec_ddl(format!("DROP INDEX IF EXISTS {}_x{key}", table(table_id)))
            .await
    }
}
