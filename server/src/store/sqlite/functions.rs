//! Cloud-code tables on SQLite. Mirrors `postgres/functions.rs`.

use async_trait::async_trait;
use rusqlite::params;
use sqlx::AssertSqlSafe;

use super::SqliteBackend;
use super::rows::Cols;
use super::tx::SqliteSession;
use crate::store::Result;
use crate::store::functions::{
    FunctionsRead, FunctionsTx, JOB_COLUMNS, JobRow, JobUpdate, LogRow, VersionRow,
};

fn job_row(r: &impl Cols) -> Result<JobRow> {
    Ok(JobRow {
        id: r.col(0)?,
        function: r.col(1)?,
        kind: r.col(2)?,
        version: r.col(3)?,
        payload: r.col(4)?,
        caller: r.col(5)?,
        depth: r.col(6)?,
        status: r.col(7)?,
        attempts: r.col(8)?,
        max_attempts: r.col(9)?,
        run_at: r.col(10)?,
        lease_until: r.col(11)?,
        result: r.col(12)?,
        error: r.col(13)?,
        created_at: r.col(14)?,
        updated_at: r.col(15)?,
    })
}

const INSERT_JOB: &str = "INSERT INTO fb_fn_jobs (id, function, kind, version, payload, caller, depth, \
     status, attempts, max_attempts, run_at, lease_until, result, error, created_at, updated_at) \
     SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?";

#[async_trait]
impl FunctionsRead for SqliteBackend {
    async fn list_versions(&self) -> Result<Vec<VersionRow>> {
        let rows = sqlx::query(
            "SELECT version, hash, source, manifest, created_at FROM fb_fn_versions ORDER BY version",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VersionRow {
                    version: r.col(0)?,
                    hash: r.col(1)?,
                    source: r.col(2)?,
                    manifest: r.col(3)?,
                    created_at: r.col(4)?,
                })
            })
            .collect()
    }

    async fn version_files(&self, version: i64) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT files FROM fb_fn_versions WHERE version = ?")
                .bind(version)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    async fn list_aliases(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, weights FROM fb_fn_aliases ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.col(0)?, r.col(1)?))).collect()
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRow>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM fb_fn_jobs WHERE id = ?");
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
            "SELECT {JOB_COLUMNS} FROM fb_fn_jobs WHERE status = ? ORDER BY updated_at DESC, id LIMIT ?"
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
             WHERE id > ? AND (? IS NULL OR function = ?) AND (? IS NULL OR invocation = ?) \
             ORDER BY id LIMIT ?",
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
                    id: r.col(0)?,
                    invocation: r.col(1)?,
                    function: r.col(2)?,
                    version: r.col(3)?,
                    level: r.col(4)?,
                    message: r.col(5)?,
                    at: r.col(6)?,
                })
            })
            .collect()
    }

    async fn has_due(&self, now: i64) -> Result<bool> {
        let due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM fb_fn_jobs WHERE (status = 'queued' AND run_at <= ?) \
             OR (status = 'running' AND lease_until < ?))",
        )
        .bind(now)
        .bind(now)
        .fetch_one(&self.read)
        .await?;
        Ok(due)
    }

    async fn prune_functions(&self, cutoff: &str) -> Result<u64> {
        self.delete_older(&PRUNE_FUNCTIONS, cutoff).await
    }

    async fn get_state(&self, key: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM fb_fn_state WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }
}

/// The values of [`INSERT_JOB`], in order.
macro_rules! job_values {
    ($job:expr $(, $extra:expr)*) => {
        params![
            $job.id,
            $job.function,
            $job.kind,
            $job.version,
            $job.payload,
            $job.caller,
            $job.depth,
            $job.status,
            $job.attempts,
            $job.max_attempts,
            $job.run_at,
            $job.lease_until,
            $job.result,
            $job.error,
            $job.created_at,
            $job.updated_at
            $(, $extra)*
        ]
    };
}

#[async_trait]
impl FunctionsTx for SqliteSession {
    async fn insert_version(
        &mut self,
        hash: &str,
        files: &str,
        source: &str,
        manifest: &str,
        at: &str,
    ) -> Result<i64> {
        self.one(
            "INSERT INTO fb_fn_versions (hash, files, source, manifest, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING version",
            [hash, files, source, manifest, at],
            |r| r.col(0),
        )?
        .ok_or(crate::store::Error::NotFound)
    }

    async fn put_alias(&mut self, name: &str, weights: &str, at: &str) -> Result<()> {
        self.exec(
            "INSERT INTO fb_fn_aliases (name, weights, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET weights = excluded.weights, updated_at = excluded.updated_at",
            [name, weights, at],
        )?;
        Ok(())
    }

    async fn insert_job(&mut self, job: &JobRow) -> Result<()> {
        self.exec(INSERT_JOB, job_values!(job))?;
        Ok(())
    }

    async fn insert_job_unless_active(&mut self, job: &JobRow) -> Result<bool> {
        let sql = format!(
            "{INSERT_JOB} WHERE NOT EXISTS (SELECT 1 FROM fb_fn_jobs WHERE function = ? AND kind = ? \
             AND status IN ('queued', 'running'))"
        );
        Ok(self.exec(&sql, job_values!(job, job.function, job.kind))? > 0)
    }

    async fn claim_jobs(
        &mut self,
        now: i64,
        lease_until: i64,
        limit: u32,
        at: &str,
    ) -> Result<Vec<JobRow>> {
        let sql = format!(
            "UPDATE fb_fn_jobs SET status = 'running', lease_until = ?, attempts = attempts + 1, \
             updated_at = ? WHERE id IN (SELECT id FROM fb_fn_jobs WHERE \
             (status = 'queued' AND run_at <= ?) OR (status = 'running' AND lease_until < ?) \
             ORDER BY run_at LIMIT ?) RETURNING {JOB_COLUMNS}"
        );
        self.all(
            &sql,
            params![lease_until, at, now, now, i64::from(limit)],
            |r| job_row(r),
        )
    }

    async fn finish_job(&mut self, u: &JobUpdate<'_>) -> Result<()> {
        self.exec(
            "UPDATE fb_fn_jobs SET status = ?, run_at = ?, lease_until = NULL, result = ?, \
             error = ?, updated_at = ? WHERE id = ?",
            params![u.status, u.run_at, u.result, u.error, u.at, u.id],
        )?;
        Ok(())
    }

    async fn replay_job(&mut self, id: &str, now: i64, at: &str) -> Result<bool> {
        let changed = self.exec(
            "UPDATE fb_fn_jobs SET status = 'queued', attempts = 0, run_at = ?, lease_until = NULL, \
             error = NULL, updated_at = ? WHERE id = ? AND status = 'dead'",
            params![now, at, id],
        )?;
        Ok(changed > 0)
    }

    async fn insert_logs(&mut self, lines: &[LogRow]) -> Result<()> {
        for line in lines {
            self.exec(
                "INSERT INTO fb_fn_logs (invocation, function, version, level, message, at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
                params![
                    line.invocation,
                    line.function,
                    line.version,
                    line.level,
                    line.message,
                    line.at
                ],
            )?;
        }
        Ok(())
    }

    async fn swap_state(&mut self, key: &str, expected: Option<i64>, new: i64) -> Result<bool> {
        let changed = match expected {
            None => self.exec(
                "INSERT INTO fb_fn_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                params![key, new],
            )?,
            Some(old) => self.exec(
                "UPDATE fb_fn_state SET value = ? WHERE key = ? AND value = ?",
                params![new, key, old],
            )?,
        };
        Ok(changed > 0)
    }
}

/// Function logs' and finished jobs' retention deletes (each served by an index).
pub(super) const PRUNE_FUNCTIONS: [&str; 2] = [
    "DELETE FROM fb_fn_logs WHERE rowid IN (SELECT rowid FROM fb_fn_logs WHERE at < ?1 LIMIT ?2)",
    "DELETE FROM fb_fn_jobs WHERE rowid IN (SELECT rowid FROM fb_fn_jobs \
     WHERE status = 'succeeded' AND updated_at < ?1 LIMIT ?2)",
];
