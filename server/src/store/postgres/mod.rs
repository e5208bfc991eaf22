//! Postgres backend: a reader pool, a one-connection writer pool for the group-commit
//! writer, and a `LISTEN` connection that hears other nodes' commits and catalog changes.

mod auth;
mod dialect;
mod functions;
mod storage;
mod tx;

use std::sync::Mutex;

use async_trait::async_trait;
use sqlx::postgres::{PgArguments, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use tokio::task::JoinHandle;

use super::query::{Param, select_count, select_page};
use super::writer::WriteSession;
use super::{
    Backend, ChangeRow, CollectionRow, DocQuery, DocRow, Kind, Options, PRUNE_CHUNK, Plan,
    PoolStat, RemoteEvents, Result,
};
use crate::query::Filter;
pub(crate) use dialect::Postgres as Dialect;

/// `NOTIFY` channel carrying the newest committed seq.
pub(crate) const CHANGES_CHANNEL: &str = "fb_changes";
/// `NOTIFY` channel telling nodes to reload collections.
pub(crate) const CATALOG_CHANNEL: &str = "fb_catalog";
/// `NOTIFY` channel carrying realtime presence and broadcasts between nodes.
pub(crate) const REALTIME_CHANNEL: &str = "fb_realtime";

pub(crate) struct PgBackend {
    read: PgPool,
    write: PgPool,
    listener: Mutex<Option<JoinHandle<()>>>,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl PgBackend {
    /// Runs retention `DELETE`s (each binding `$1` to `cutoff` and `$2` to the chunk size,
    /// [`PRUNE_CHUNK`]), each again until it deletes less than a chunk, so no prune is one
    /// long transaction; the rows they removed.
    pub(crate) async fn delete_older(
        &self,
        statements: &[&'static str],
        cutoff: &str,
    ) -> Result<u64> {
        let mut total = 0;
        for sql in statements {
            loop {
                let done = sqlx::query(*sql)
                    .bind(cutoff)
                    .bind(PRUNE_CHUNK)
                    .execute(&self.read)
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

    pub(crate) async fn open(url: &str, opts: &Options) -> Result<Self> {
        let read = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect(url)
            .await?;
        MIGRATOR.run(&read).await?;
        let write = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect(url)
            .await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&read)
            .await?;
        tracing::info!(postgres.version = %version, "postgres opened");
        Ok(PgBackend {
            read,
            write,
            listener: Mutex::new(None),
        })
    }
}

pub(crate) fn table(id: i64) -> String {
    format!("fb_docs_{id}")
}

pub(crate) fn bind_params(
    mut query: sqlx::query::Query<'_, Postgres, PgArguments>,
    params: Vec<Param>,
) -> sqlx::query::Query<'_, Postgres, PgArguments> {
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

pub(crate) fn doc_row(row: &PgRow) -> Result<DocRow> {
    Ok(DocRow {
        id: row.try_get(0)?,
        owner: row.try_get(1)?,
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        version: row.try_get(4)?,
        data: row.try_get(5)?,
    })
}

fn change_row(row: &PgRow) -> Result<ChangeRow> {
    Ok(ChangeRow {
        seq: row.try_get(0)?,
        collection: row.try_get(1)?,
        doc_id: row.try_get(2)?,
        op: row.try_get(3)?,
        before: row.try_get(4)?,
        after: row.try_get(5)?,
        actor: row.try_get(6)?,
        at: row.try_get(7)?,
    })
}

#[async_trait]
impl Backend for PgBackend {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn init_meta(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO fb_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.read)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_meta WHERE key = $1")
                .bind(key)
                .fetch_one(&self.read)
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
        let sql = format!(
            "SELECT id, owner, created_at, updated_at, version, data::text FROM {} WHERE id = $1",
            table(table_id)
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(doc_row).transpose()
    }

    async fn query_docs(&self, table_id: i64, query: &DocQuery<'_>) -> Result<Vec<DocRow>> {
        let (sql, params) = select_page(&Dialect, &table(table_id), "data::text", query);
        let rows = bind_params(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(doc_row).collect()
    }

    async fn count_docs(&self, table_id: i64, filter: &Filter) -> Result<u64> {
        let (sql, params) = select_count(&Dialect, &table(table_id), filter);
        let row = bind_params(sqlx::query(AssertSqlSafe(sql)), params)
            .fetch_one(&self.read)
            .await?;
        let n: i64 = row.try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn explain(
        &self,
        table_id: i64,
        query: &DocQuery<'_>,
        discourage_seqscan: bool,
    ) -> Result<Plan> {
        let (sql, params) = select_page(&Dialect, &table(table_id), "data::text", query);
        let mut tx = self.read.begin().await?;
        if discourage_seqscan {
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await?;
        }
        let rows = bind_params(sqlx::query(AssertSqlSafe(format!("EXPLAIN {sql}"))), params)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        let mut text = String::new();
        for row in rows {
            let line: String = row.try_get(0)?;
            text.push_str(&line);
            text.push('\n');
        }
        Ok(Plan::from_text(table_id, text))
    }

    async fn last_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0)::bigint FROM fb_changes")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<ChangeRow>> {
        let rows = sqlx::query(
            "SELECT seq, collection, doc_id, op, before, after, actor, at FROM fb_changes \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(change_row).collect()
    }

    async fn prune_changes(&self, older_than: &str) -> Result<u64> {
        // Oldest first by `at`, so the `at` index serves it (see the SQLite backend).
        self.delete_older(
            &[
                "DELETE FROM fb_changes WHERE seq IN (SELECT seq FROM fb_changes WHERE at < $1 \
               AND seq < (SELECT MAX(seq) FROM fb_changes) ORDER BY at LIMIT $2)",
            ],
            older_than,
        )
        .await
    }

    async fn write_session(&self) -> Result<Box<dyn WriteSession>> {
        let conn = self.write.acquire().await?;
        Ok(Box::new(tx::PgSession::new(conn)))
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

    async fn notify_catalog(&self) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CATALOG_CHANNEL)
            .execute(&self.read)
            .await?;
        Ok(())
    }

    async fn notify_realtime(&self, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REALTIME_CHANNEL)
            .bind(payload)
            .execute(&self.read)
            .await?;
        Ok(())
    }

    async fn oldest_seq(&self) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT MIN(seq)::bigint FROM fb_changes")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn listen(&self, events: RemoteEvents) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.read).await?;
        listener
            .listen_all([CHANGES_CHANNEL, CATALOG_CHANNEL, REALTIME_CHANNEL])
            .await?;
        let read = self.read.clone();
        let handle = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(note)) => {
                        if note.channel() == CATALOG_CHANNEL {
                            events.catalog.send_modify(|v| *v += 1);
                        } else if note.channel() == REALTIME_CHANNEL {
                            let _ = events.realtime.send(note.payload().into());
                        } else if let Ok(seq) = note.payload().parse::<i64>() {
                            advance(&events.committed, seq);
                        }
                    }
                    Ok(None) => {
                        // The connection dropped; notifications may have been missed.
                        // The next try_recv reconnects; catch up meanwhile.
                        tracing::warn!("postgres LISTEN connection lost; reconnecting");
                        events.catalog.send_modify(|v| *v += 1);
                        if let Ok(seq) = sqlx::query_scalar::<_, i64>(
                            "SELECT COALESCE(MAX(seq), 0)::bigint FROM fb_changes",
                        )
                        .fetch_one(&read)
                        .await
                        {
                            advance(&events.committed, seq);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres LISTEN failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        if let Ok(mut slot) = self.listener.lock() {
            *slot = Some(handle);
        }
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
        if let Some(handle) = self.listener.lock().ok().and_then(|mut s| s.take()) {
            handle.abort();
        }
        self.write.close().await;
        self.read.close().await;
    }
}

/// Moves the committed-seq watch forward (never back).
fn advance(committed: &tokio::sync::watch::Sender<i64>, seq: i64) {
    committed.send_if_modified(|current| {
        let newer = seq > *current;
        if newer {
            *current = seq;
        }
        newer
    });
}
