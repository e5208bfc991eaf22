//! What the two SQLite drivers share: reading a column of a row, and their errors.
//!
//! Reads outside a transaction go through sqlx's pool; the writer's transaction runs on
//! a synchronous rusqlite connection (see `tx.rs`). The row mappers (`doc_row`,
//! `user_row`, …) are written once against [`Cols`] and serve both.

use rusqlite::ErrorCode;
use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
use sqlx::Sqlite;
use sqlx::sqlite::SqliteRow;

use crate::store::{Error, Result, conflict_name};

/// A value either driver can read from a column.
pub(crate) trait ColType:
    rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>
{
}

impl<T> ColType for T where
    T: rusqlite::types::FromSql + for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>
{
}

/// A row of either driver, read by column index.
pub(crate) trait Cols {
    fn col<T: ColType>(&self, index: usize) -> Result<T>;
}

impl Cols for SqliteRow {
    fn col<T: ColType>(&self, index: usize) -> Result<T> {
        Ok(sqlx::Row::try_get(self, index)?)
    }
}

impl Cols for rusqlite::Row<'_> {
    fn col<T: ColType>(&self, index: usize) -> Result<T> {
        Ok(self.get(index)?)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::QueryReturnedNoRows => Error::NotFound,
            rusqlite::Error::SqliteFailure(failure, message) => match failure.code {
                ErrorCode::ConstraintViolation
                    if matches!(
                        failure.extended_code,
                        SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY
                    ) =>
                {
                    Error::Conflict {
                        constraint: conflict_name(message.as_deref().unwrap_or_default()),
                    }
                }
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    Error::Unavailable(e.to_string())
                }
                _ => Error::Other(e.to_string()),
            },
            _ => Error::Other(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_violations_name_the_index_like_sqlx_does() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE fb_docs_7 (id TEXT PRIMARY KEY NOT NULL, data TEXT);
             CREATE UNIQUE INDEX fb_docs_7_xemail ON fb_docs_7 (json_extract(data, '$.email'));
             INSERT INTO fb_docs_7 VALUES ('a', '{\"email\":\"x\"}');",
        )
        .unwrap();
        let id = conn
            .execute("INSERT INTO fb_docs_7 VALUES ('a', '{}')", [])
            .unwrap_err();
        assert!(matches!(Error::from(id), Error::Conflict { constraint } if constraint == "_id"));
        let email = conn
            .execute(
                "INSERT INTO fb_docs_7 VALUES ('b', '{\"email\":\"x\"}')",
                [],
            )
            .unwrap_err();
        assert!(
            matches!(Error::from(email), Error::Conflict { constraint } if constraint == "email")
        );
        let other = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        assert!(matches!(Error::from(other), Error::Other(_)));
    }
}
