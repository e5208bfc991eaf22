-- Buckets and object metadata (SQLite). Mirrors migrations/postgres/0003_storage.sql.
-- Object bytes live in the blob store under `blob` (a random id, never the key), so a key
-- can never name a path, and a replaced object's old bytes are deleted after the commit.

CREATE TABLE fb_buckets (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,          -- JSON: rules, max_size, content_types
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE fb_objects (
    bucket       TEXT NOT NULL REFERENCES fb_buckets (name) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    blob         TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    etag         TEXT NOT NULL,        -- hex SHA-256 of the bytes
    metadata     TEXT NOT NULL DEFAULT '{}',
    owner        TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX fb_objects_blob ON fb_objects (blob);
