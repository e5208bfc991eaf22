-- System tables of Ferrobase (SQLite). Mirrors migrations/postgres/0001_init.sql.

-- Small server-wide values: generated secrets' hashes, signing keys, settings.
CREATE TABLE fb_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Declared collections. `id` names the collection's table: fb_docs_<id>.
CREATE TABLE fb_collections (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    spec       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- The change log: one row per committed change, in commit order. AUTOINCREMENT so that a
-- seq is never reused, even after pruning.
CREATE TABLE fb_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    op         TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    actor      TEXT,
    at         TEXT NOT NULL
);
CREATE INDEX fb_changes_at ON fb_changes (at);
