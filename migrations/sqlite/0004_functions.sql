-- Cloud code (SQLite). Mirrors migrations/postgres/0004_functions.sql.

-- Immutable deployed bundles: `files` is a JSON object {path: source}.
CREATE TABLE fb_fn_versions (
    version    INTEGER PRIMARY KEY AUTOINCREMENT,
    hash       TEXT NOT NULL,          -- hex SHA-256 of the files
    files      TEXT NOT NULL,
    source     TEXT NOT NULL,          -- `dir` (the functions folder) or `api`
    manifest   TEXT NOT NULL,          -- JSON: the handlers the version registers
    created_at TEXT NOT NULL
);

-- Aliases route invocations to versions by weight: {"3": 90, "4": 10}.
CREATE TABLE fb_fn_aliases (
    name       TEXT PRIMARY KEY,
    weights    TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- The durable queue: async invocations, after-triggers, cron runs. Times in ms since epoch.
CREATE TABLE fb_fn_jobs (
    id           TEXT PRIMARY KEY,
    function     TEXT NOT NULL,        -- what the handler is registered as
    kind         TEXT NOT NULL,        -- call, trigger, cron, auth
    version      INTEGER NOT NULL,
    payload      TEXT NOT NULL,
    caller       TEXT,                 -- JSON principal the handler runs as
    depth        INTEGER NOT NULL DEFAULT 0,
    status       TEXT NOT NULL,        -- queued, running, succeeded, dead
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at       INTEGER NOT NULL,
    lease_until  INTEGER,
    result       TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX fb_fn_jobs_due ON fb_fn_jobs (status, run_at);
CREATE INDEX fb_fn_jobs_function ON fb_fn_jobs (function, status);

-- Captured console/ctx.log lines.
CREATE TABLE fb_fn_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    invocation TEXT NOT NULL,
    function   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    at         TEXT NOT NULL
);
CREATE INDEX fb_fn_logs_invocation ON fb_fn_logs (invocation);
CREATE INDEX fb_fn_logs_function ON fb_fn_logs (function, id);

-- Small shared state: the trigger cursor, each cron's last tick.
CREATE TABLE fb_fn_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
