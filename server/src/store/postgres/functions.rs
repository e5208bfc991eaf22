//! Cloud-code tables on Postgres. Mirrors `sqlite/functions.rs`.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::PgBackend;
use super::tx::PgSession;
use crate::store::Result;
use crate::store::functions::{
    FunctionsRead, FunctionsTx, JOB_COLUMNS, JobRow, JobUpdate, LogRow, VersionRow,
};

fn job_row(r: &PgRow) -> Result<JobRow> {
    Ok(JobRow {
        id: r.try_get(0)?,
        function: r.try_get(1)?,
        kind: r.try_get(2)?,
        version: r.try_get(3)?,
        payload: r.try_get(4)?,
        caller: r.try_get(5)?,
        depth: r.try_get(6)?,
        status: r.try_get(7)?,
        attempts: r.try_get(8)?,
        max_attempts: r.try_get(9)?,
        run_at: r.try_get(10)?,
        lease_until: r.try_get(11)?,
        result: r.try_get(12)?,
        error: r.try_get(13)?,
        created_at: r.try_get(14)?,
        updated_at: r.try_get(15)?,
    })
}

const INSERT_JOB: &str = "INSERT INTO fb_fn_jobs (id, function, kind, version, payload, caller, depth, \
     status, attempts, max_attempts, run_at, lease_until, result, error, created_at, updated_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16";

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_job<'q>(q: Query<'q>, job: &'q JobRow) -> Query<'q> {
    q.bind(&job.id)
        .bind(&job.function)
        .bind(&job.kind)
        .bind(job.version)
        .bind(&job.payload)
        .bind(&job.caller)
        .bind(job.depth)
        .bind(&job.status)
        .bind(job.attempts)
        .bind(job.max_attempts)
        .bind(job.run_at)
        .bind(job.lease_until)
        .bind(&job.result)
        .bind(&job.error)
        .bind(&job.created_at)
        .bind(&job.updated_at)
}

#[async_trait]
impl FunctionsRead for PgBackend {
    async fn list_versions(&self) -> Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT version, hash, source, manifest, created_at FROM fb_fn_versions ORDER BY version",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VersionRow {
                    version: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    source: r.try_get(2)?,
                    manifest: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn version_files(&self, version: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT files FROM fb_fn_versions WHERE version = $1")
                .bind(version)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn list_aliases(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, weights FROM fb_fn_aliases ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM fb_fn_jobs WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(job_row)
            .transpose()
    }

    async fn list_jobs(&self, status: &str, limit: u32) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM fb_fn_jobs WHERE status = $1 ORDER BY updated_at DESC, id LIMIT $2"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(status)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_row).collect()
    }

    async fn list_logs(
        &self,
        function: Option<&str>,
        invocation: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LogRow>> {
        let rows = sqlx::query(
            "SELECT id, invocation, function, version, level, message, at FROM fb_fn_logs \
             WHERE id > $1 AND ($2 IS NULL OR function = $3) AND ($4 IS NULL OR invocation = $5) \
             ORDER BY id LIMIT $6",
        )
        .bind(after)
        .bind(function)
        .bind(function)
        .bind(invocation)
        .bind(invocation)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogRow {
                    id: r.try_get(0)?,
                    invocation: r.try_get(1)?,
                    function: r.try_get(2)?,
                    version: r.try_get(3)?,
                    level: r.try_get(4)?,
                    message: r.try_get(5)?,
                    at: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn has_due(&self, now: i64) -> Result<bool> {
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM fb_fn_jobs WHERE (status = 'queued' AND run_at <= $1) \
             OR (status = 'running' AND lease_until < $2))",
        )
        .bind(now)
        .bind(now)
        .fetch_one(&self.read)
        .await?;
        Ok(due)
    }

    async fn prune_functions(&self, cutoff: &str) -> Result<u64> {
        self.delete_older(
            &[
                "DELETE FROM fb_fn_logs WHERE id IN (SELECT id FROM fb_fn_logs \
                 WHERE at < $1 LIMIT $2)",
                "DELETE FROM fb_fn_jobs WHERE id IN (SELECT id FROM fb_fn_jobs \
                 WHERE status = 'succeeded' AND updated_at < $1 LIMIT $2)",
            ],
            cutoff,
        )
        .await
    }

    async fn get_state(&self, key: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_fn_state WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }
}

#[async_trait]
impl FunctionsTx for PgSession {
    async fn insert_version(
        &mut self,
        hash: &str,
        files: &str,
        source: &str,
        manifest: &str,
        at: &str,
    ) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO fb_fn_versions (hash, files, source, manifest, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING version",
        )
        .bind(hash)
        .bind(files)
        .bind(source)
        .bind(manifest)
        .bind(at)
        .fetch_one(self.conn())
        .await?)
    }

    async fn put_alias(&mut self, name: &str, weights: &str, at: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO fb_fn_aliases (name, weights, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET weights = excluded.weights, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(weights)
        .bind(at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn insert_job(&mut self, job: &JobRow) -> Result<()> {
        bind_job(sqlx::query(INSERT_JOB), job)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    async fn insert_job_unless_active(&mut self, job: &JobRow) -> Result<bool> {
        let sql = format!(
            "{INSERT_JOB} WHERE NOT EXISTS (SELECT 1 FROM fb_fn_jobs WHERE function = $17 AND kind = $18 \
             AND status IN ('queued', 'running'))"
        );
        let done = bind_job(sqlx::query(AssertSqlSafe(sql)), job)
            .bind(&job.function)
            .bind(&job.kind)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_jobs(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: u32,
        at: &str,
    ) -> Result<Vec<JobRow>> {
        let sql = format!(
            "UPDATE fb_fn_jobs SET status = 'running', lease_until = $1, attempts = attempts + 1, \
             updated_at = $2 WHERE id IN (SELECT id FROM fb_fn_jobs WHERE \
             (status = 'queued' AND run_at <= $3) OR (status = 'running' AND lease_until < $4) \
             ORDER BY run_at LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING {JOB_COLUMNS}"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(lease_until)
            .bind(at)
            .bind(now)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.conn())
            .await?;
        rows.iter().map(job_row).collect()
    }

    async fn finish_job(&mut self, u: &JobUpdate<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE fb_fn_jobs SET status = $1, run_at = $2, lease_until = NULL, result = $3, \
             error = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(u.status)
        .bind(u.run_at)
        .bind(u.result)
        .bind(u.error)
        .bind(u.at)
        .bind(u.id)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    async fn replay_job(&mut self, id: &str, now: i64, at: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE fb_fn_jobs SET status = 'queued', attempts = 0, run_at = $1, lease_until = NULL, \
             error = NULL, updated_at = $2 WHERE id = $3 AND status = 'dead'",
        )
        .bind(now)
        .bind(at)
        .bind(id)
        .execute(self.conn())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_logs(&mut self, lines: &[LogRow]) -> Result<()> {
        for line in lines {
            sqlx::query(
                "INSERT INTO fb_fn_logs (invocation, function, version, level, message, at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&line.invocation)
            .bind(&line.function)
            .bind(line.version)
            .bind(&line.level)
            .bind(&line.message)
            .bind(&line.at)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    async fn swap_state(&mut self, key: &str, expected: Option<i64>, new: i64) -> Result<bool> {
        let done = match expected {
            None => sqlx::query(
                "INSERT INTO fb_fn_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(key)
            .bind(new)
            .execute(self.conn())
            .await?,
            Some(old) => {
                sqlx::query("UPDATE fb_fn_state SET value = $1 WHERE key = $2 AND value = $3")
                    .bind(new)
                    .bind(key)
                    .bind(old)
                    .execute(self.conn())
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }
}
