-- System tables of Ferrobase (Postgres). Mirrors migrations/sqlite/0001_init.sql.

CREATE TABLE fb_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE fb_collections (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL UNIQUE,
    spec       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Appends take a transaction-scoped advisory lock (see store/postgres), so seq order is
-- commit order and a reader tailing `seq > n` never skips a row committed late.
CREATE TABLE fb_changes (
    seq        BIGSERIAL PRIMARY KEY,
    collection TEXT NOT NULL,
    doc_id     TEXT NOT NULL,
    op         TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    actor      TEXT,
    at         TEXT NOT NULL
);
CREATE INDEX fb_changes_at ON fb_changes (at);

-- Key functions of the query language (see server/src/store/query.rs): every JSON value
-- sorts by (rank, number, text). IMMUTABLE so that expression indexes can use them. They
-- never return NULL (0 and '' stand for "not this type"), so an equality on a field is an
-- equality on every key column and the planner can use index order for what follows.
CREATE FUNCTION fb_rank(v jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'boolean' THEN 1 WHEN 'number' THEN 2 WHEN 'string' THEN 3
        WHEN 'array' THEN 4 WHEN 'object' THEN 5 ELSE 0 END
$$;

CREATE FUNCTION fb_num(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'number' THEN v::numeric
        WHEN 'boolean' THEN CASE WHEN v::boolean THEN 1 ELSE 0 END
        ELSE 0
    END
$$;

CREATE FUNCTION fb_text(v jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(v)
        WHEN 'string' THEN v #>> '{}'
        WHEN 'array' THEN v::text
        WHEN 'object' THEN v::text
        ELSE ''
    END
$$;
