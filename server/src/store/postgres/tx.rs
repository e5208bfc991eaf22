//! The Postgres write session: a transaction on the writer connection that first takes a
//! transaction-scoped advisory lock, so batches from all nodes commit one after another and
//! change-log `seq` order is commit order. The `NOTIFY` for other nodes is sent inside the
//! transaction, so it is delivered exactly when (and only if) the batch commits.
//!
//! Postgres aborts a transaction on any error, so each document write is one statement (a
//! CTE writing the document and its change row) that cannot fail in the common case: an
//! insert uses `ON CONFLICT DO NOTHING` (and only on a conflict, inside its own savepoint,
//! repeats the insert to learn which constraint it was); an update of a collection with
//! unique indexes runs inside a savepoint. Any other error poisons the session.

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::dialect::{path_expr, rank_expr};
use super::{CHANGES_CHANNEL, doc_row, table};
use crate::query::{Field, SystemField};
use crate::store::query::index_expressions;
use crate::store::writer::WriteSession;
use crate::store::{DocRow, Error, IndexDef, NewChange, Result, TableRef, Tx};

/// The change row of the write in the CTE named `w`.
const CHANGE_OF_W: &str = "INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
     SELECT $7, $8, $9, $10, $11, $12, $13 FROM w RETURNING seq";

type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds a row as $1-$6 in the order (id, owner, created_at, updated_at, version, data).
fn bind_row<'q>(query: Query<'q>, row: &DocRow) -> Query<'q> {
    query
        .bind(row.id.clone())
        .bind(row.owner.clone())
        .bind(row.created_at.clone())
        .bind(row.updated_at.clone())
        .bind(row.version)
        .bind(row.data.clone())
}

/// Binds a change as $7-$13.
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

/// Key of the advisory lock that serialises change-log appends across nodes.
const APPEND_LOCK: i64 = 0x4665_7272_6f62; // "Ferrob"

pub(crate) struct PgSession {
    conn: PoolConnection<Postgres>,
    last_seq: Option<i64>,
    saved: Option<i64>,
    poisoned: bool,
}

impl PgSession {
    /// The connection, for the auth statements (`auth.rs`).
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.conn
    }

    pub(crate) fn new(conn: PoolConnection<Postgres>) -> Self {
        Self {
            conn,
            last_seq: None,
            saved: None,
            poisoned: false,
        }
    }

    /// Any error from Postgres aborts the transaction: remember it.
    fn check<T>(&mut self, result: std::result::Result<T, sqlx::Error>) -> Result<T> {
        result.map_err(|e| {
            self.poisoned = true;
            Error::from(e)
        })
    }

    async fn exec(&mut self, sql: &'static str) -> Result<()> {
        let result = sqlx::query(sql).execute(&mut *self.conn).await;
        self.check(result).map(|_| ())
    }

    async fn exec_ddl(&mut self, sql: String) -> Result<()> {
        let result = sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *self.conn)
            .await;
        self.check(result).map(|_| ())
    }

    /// Runs a CTE write; `None` when it wrote nothing.
    async fn write(&mut self, query: Query<'_>) -> Result<Option<i64>> {
        let result = query.fetch_optional(&mut *self.conn).await;
        let Some(row) = self.check(result)? else {
            return Ok(None);
        };
        let seq: i64 = row.try_get(0)?;
        self.last_seq = Some(seq);
        Ok(Some(seq))
    }

    /// Runs `f` inside a savepoint of its own: on error the savepoint is rolled back and
    /// the session stays usable.
    async fn guarded<T>(&mut self, f: impl AsyncFnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.exec("SAVEPOINT fb_op").await?;
        let saved_seq = self.last_seq;
        match f(self).await {
            Ok(v) => {
                self.exec("RELEASE SAVEPOINT fb_op").await?;
                Ok(v)
            }
            Err(e) => {
                self.poisoned = false;
                self.last_seq = saved_seq;
                self.exec("ROLLBACK TO SAVEPOINT fb_op").await?;
                self.exec("RELEASE SAVEPOINT fb_op").await?;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl WriteSession for PgSession {
    async fn begin(&mut self) -> Result<()> {
        self.last_seq = None;
        self.poisoned = false;
        self.exec("BEGIN").await?;
        let result = sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *self.conn)
            .await;
        self.check(result).map(|_| ())
    }

    async fn commit(&mut self) -> Result<()> {
        if let Some(seq) = self.last_seq {
            let result = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *self.conn)
                .await;
            self.check(result)?;
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
        self.poisoned = false;
        self.exec("ROLLBACK TO SAVEPOINT job").await
    }

    fn last_seq(&self) -> Option<i64> {
        self.last_seq
    }
}

#[async_trait]
impl Tx for PgSession {
    async fn get_doc(&mut self, t: TableRef, id: &str) -> Result<Option<DocRow>> {
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data::text FROM {} WHERE id = $1 FOR UPDATE",
            table(t.id)
        );
        let result = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.conn)
            .await;
        let row = self.check(result)?;
        row.as_ref().map(doc_row).transpose()
    }

    async fn insert_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "WITH w AS (INSERT INTO {} (id, owner, created_at, updated_at, version, data) \
             VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT DO NOTHING RETURNING id) {CHANGE_OF_W}",
            table(t.id)
        );
        let query = bind_change(bind_row(sqlx::query(AssertSqlSafe(sql)), row), change);
        if let Some(seq) = self.write(query).await? {
            return Ok(seq);
        }
        // A unique value is taken. Repeat the insert, guarded, to learn which one.
        let plain = format!(
            "INSERT INTO {} (id, owner, created_at, updated_at, version, data) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
            table(t.id)
        );
        let outcome = self
            .guarded(async |s: &mut Self| {
                let result = bind_row(sqlx::query(AssertSqlSafe(plain)), row)
                    .execute(&mut *s.conn)
                    .await;
                s.check(result)?;
                // It went in after all: undo it, the conflict stands.
                Err::<(), _>(Error::Conflict {
                    constraint: "unique".into(),
                })
            })
            .await;
        match outcome {
            Err(e) => Err(e),
            Ok(()) => Err(Error::Conflict {
                constraint: "unique".into(),
            }),
        }
    }

    async fn update_doc(
        &mut self,
        t: TableRef,
        row: &DocRow,
        change: &NewChange<'_>,
    ) -> Result<i64> {
        let sql = format!(
            "WITH w AS (UPDATE {} SET owner = $2, updated_at = $4, version = $5, data = $6::jsonb \
             WHERE id = $1 AND created_at = $3 RETURNING id) {CHANGE_OF_W}",
            table(t.id)
        );
        let query = bind_change(bind_row(sqlx::query(AssertSqlSafe(sql)), row), change);
        let seq = if t.has_unique {
            self.guarded(async |s: &mut Self| s.write(query).await)
                .await?
        } else {
            self.write(query).await?
        };
        seq.ok_or(Error::NotFound)
    }

    async fn delete_doc(&mut self, t: TableRef, id: &str, change: &NewChange<'_>) -> Result<i64> {
        let sql = format!(
            "WITH w AS (DELETE FROM {} WHERE id = $1 RETURNING id) \
             INSERT INTO fb_changes (collection, doc_id, op, before, after, actor, at) \
             SELECT $2, $3, $4, $5, $6, $7, $8 FROM w RETURNING seq",
            table(t.id)
        );
        let query = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_owned())
            .bind(change.collection.to_owned())
            .bind(change.doc_id.to_owned())
            .bind(change.op.to_owned())
            .bind(change.before.map(str::to_owned))
            .bind(change.after.map(str::to_owned))
            .bind(change.actor.map(str::to_owned))
            .bind(change.at.to_owned());
        self.write(query).await?.ok_or(Error::NotFound)
    }

    async fn append_change(&mut self, change: &NewChange<'_>) -> Result<i64> {
        let result = sqlx::query_scalar(
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
        .await;
        let seq: i64 = self.check(result)?;
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
            // or null never conflict, as on SQLite: they are outside the partial index.
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
                "CREATE UNIQUE INDEX {t}_x{} ON {t} ({}){predicate}",
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
        self.exec_ddl(format!("DROP INDEX IF EXISTS {}_x{key}", table(table_id)))
            .await
    }
}
