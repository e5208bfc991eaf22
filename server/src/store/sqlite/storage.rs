//! Storage tables on SQLite. Mirrors `postgres/storage.rs`.

use async_trait::async_trait;
use rusqlite::params;
use sqlx::AssertSqlSafe;

use super::SqliteBackend;
use super::rows::Cols;
use super::tx::SqliteSession;
use crate::store::Result;
use crate::store::storage::{
    BucketRow, OBJECT_COLUMNS, ObjectRow, StorageRead, StorageTx, USAGE_SQL,
};

fn object_row(r: &impl Cols) -> Result<ObjectRow> {
    Ok(ObjectRow {
        bucket: r.col(0)?,
        key: r.col(1)?,
        blob: r.col(2)?,
        size: r.col(3)?,
        content_type: r.col(4)?,
        etag: r.col(5)?,
        metadata: r.col(6)?,
        owner: r.col(7)?,
        created_at: r.col(8)?,
        updated_at: r.col(9)?,
    })
}

fn get_object_sql() -> String {
    format!("SELECT {OBJECT_COLUMNS} FROM fb_objects WHERE bucket = ? AND key = ?")
}

#[async_trait]
impl StorageRead for SqliteBackend {
    async fn list_buckets(&self) -> Result<Vec<BucketRow>> {
        let rows =
            sqlx::query("SELECT name, spec, created_at, updated_at FROM fb_buckets ORDER BY name")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(BucketRow {
                    name: r.col(0)?,
                    spec: r.col(1)?,
                    created_at: r.col(2)?,
                    updated_at: r.col(3)?,
                })
            })
            .collect()
    }

    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        sqlx::query(AssertSqlSafe(get_object_sql()))
            .bind(bucket)
            .bind(key)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(object_row)
            .transpose()
    }

    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ObjectRow>> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM fb_objects WHERE bucket = ? AND key >= ? \
             AND substr(key, 1, length(?)) = ? AND key > ? ORDER BY key LIMIT ?"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(bucket)
            .bind(prefix)
            .bind(prefix)
            .bind(prefix)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(object_row).collect()
    }

    async fn blob_in_use(&self, blob: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fb_objects WHERE blob = ?")
            .bind(blob)
            .fetch_one(&self.read)
            .await?;
        Ok(n > 0)
    }

    async fn usage(&self, owner: &str, bucket: &str, key: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(USAGE_SQL)
            .bind(owner)
            .bind(bucket)
            .bind(key)
            .fetch_one(&self.read)
            .await?)
    }
}

#[async_trait]
impl StorageTx for SqliteSession {
    async fn put_bucket(&mut self, name: &str, spec: &str, at: &str) -> Result<bool> {
        let existed: Option<String> =
            self.one("SELECT name FROM fb_buckets WHERE name = ?", [name], |r| {
                r.col(0)
            })?;
        self.exec(
            "INSERT INTO fb_buckets (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            [name, spec, at, at],
        )?;
        Ok(existed.is_none())
    }

    async fn delete_bucket(&mut self, name: &str) -> Result<bool> {
        self.exec("DELETE FROM fb_objects WHERE bucket = ?", [name])?;
        Ok(self.exec("DELETE FROM fb_buckets WHERE name = ?", [name])? > 0)
    }

    async fn get_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        self.one(&get_object_sql(), [bucket, key], |r| object_row(r))
    }

    async fn put_object(&mut self, row: &ObjectRow) -> Result<Option<ObjectRow>> {
        let old = StorageTx::get_object(self, &row.bucket, &row.key).await?;
        let created_at = old
            .as_ref()
            .map_or(row.created_at.as_str(), |o| o.created_at.as_str());
        let sql = format!(
            "INSERT INTO fb_objects ({OBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (bucket, key) DO UPDATE SET blob = excluded.blob, size = excluded.size, \
             content_type = excluded.content_type, etag = excluded.etag, metadata = excluded.metadata, \
             owner = excluded.owner, updated_at = excluded.updated_at"
        );
        self.exec(
            &sql,
            params![
                row.bucket,
                row.key,
                row.blob,
                row.size,
                row.content_type,
                row.etag,
                row.metadata,
                row.owner,
                created_at,
                row.updated_at
            ],
        )?;
        Ok(old)
    }

    async fn delete_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        let old = StorageTx::get_object(self, bucket, key).await?;
        if old.is_some() {
            self.exec(
                "DELETE FROM fb_objects WHERE bucket = ? AND key = ?",
                [bucket, key],
            )?;
        }
        Ok(old)
    }

    async fn usage(&mut self, owner: &str, bucket: &str, key: &str) -> Result<i64> {
        Ok(self
            .one(USAGE_SQL, [owner, bucket, key], |r| r.col(0))?
            .unwrap_or(0))
    }
}
