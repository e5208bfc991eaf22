//! Storage tables on Postgres. Mirrors `sqlite/storage.rs`.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Executor, Postgres, Row};

use super::PgBackend;
use super::tx::PgSession;
use crate::store::Result;
use crate::store::storage::{
    BucketRow, OBJECT_COLUMNS, ObjectRow, StorageRead, StorageTx, USAGE_SQL,
};

fn object_row(r: &PgRow) -> Result<ObjectRow> {
    Ok(ObjectRow {
        bucket: r.try_get(0)?,
        key: r.try_get(1)?,
        blob: r.try_get(2)?,
        size: r.try_get(3)?,
        content_type: r.try_get(4)?,
        etag: r.try_get(5)?,
        metadata: r.try_get(6)?,
        owner: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

async fn get_object<'e>(
    exec: impl Executor<'e, Database = Postgres>,
    bucket: &str,
    key: &str,
) -> Result<Option<ObjectRow>> {
    let sql = format!("SELECT {OBJECT_COLUMNS} FROM fb_objects WHERE bucket = $1 AND key = $2");
    sqlx::query(AssertSqlSafe(sql))
        .bind(bucket)
        .bind(key)
        .fetch_optional(exec)
        .await?
        .as_ref()
        .map(object_row)
        .transpose()
}

#[async_trait]
impl StorageRead for PgBackend {
    async fn list_buckets(&self) -> Result<Vec<BucketRow>> {
        let rows =
            sqlx::query("SELECT name, spec, created_at, updated_at FROM fb_buckets ORDER BY name")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(BucketRow {
                    name: r.try_get(0)?,
                    spec: r.try_get(1)?,
                    created_at: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        get_object(&self.read, bucket, key).await
    }

    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ObjectRow>> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM fb_objects WHERE bucket = $1 AND key >= $2 \
             AND substr(key, 1, length($3)) = $4 AND key > $5 ORDER BY key LIMIT $6"
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fb_objects WHERE blob = $1")
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
impl StorageTx for PgSession {
    async fn put_bucket(&mut self, name: &str, spec: &str, at: &str) -> Result<bool> {
        let existed: Option<String> =
            sqlx::query_scalar("SELECT name FROM fb_buckets WHERE name = $1")
                .bind(name)
                .fetch_optional(self.conn())
                .await?;
        sqlx::query(
            "INSERT INTO fb_buckets (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(spec)
        .bind(at)
        .bind(at)
        .execute(self.conn())
        .await?;
        Ok(existed.is_none())
    }

    async fn delete_bucket(&mut self, name: &str) -> Result<bool> {
        sqlx::query("DELETE FROM fb_objects WHERE bucket = $1")
            .bind(name)
            .execute(self.conn())
            .await?;
        let done = sqlx::query("DELETE FROM fb_buckets WHERE name = $1")
            .bind(name)
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        get_object(self.conn(), bucket, key).await
    }

    async fn put_object(&mut self, row: &ObjectRow) -> Result<Option<ObjectRow>> {
        let old = get_object(self.conn(), &row.bucket, &row.key).await?;
        let created_at = old
            .as_ref()
            .map_or(row.created_at.as_str(), |o| o.created_at.as_str());
        let sql = format!(
            "INSERT INTO fb_objects ({OBJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (bucket, key) DO UPDATE SET blob = excluded.blob, size = excluded.size, \
             content_type = excluded.content_type, etag = excluded.etag, metadata = excluded.metadata, \
             owner = excluded.owner, updated_at = excluded.updated_at"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(&row.bucket)
            .bind(&row.key)
            .bind(&row.blob)
            .bind(row.size)
            .bind(&row.content_type)
            .bind(&row.etag)
            .bind(&row.metadata)
            .bind(&row.owner)
            .bind(created_at)
            .bind(&row.updated_at)
            .execute(self.conn())
            .await?;
        Ok(old)
    }

    async fn delete_object(&mut self, bucket: &str, key: &str) -> Result<Option<ObjectRow>> {
        let old = get_object(self.conn(), bucket, key).await?;
        if old.is_some() {
            sqlx::query("DELETE FROM fb_objects WHERE bucket = $1 AND key = $2")
                .bind(bucket)
                .bind(key)
                .execute(self.conn())
                .await?;
        }
        Ok(old)
    }

    async fn usage(&mut self, owner: &str, bucket: &str, key: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(USAGE_SQL)
            .bind(owner)
            .bind(bucket)
            .bind(key)
            .fetch_one(self.conn())
            .await?)
    }
}
