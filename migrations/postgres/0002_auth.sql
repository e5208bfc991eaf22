-- Users, sessions, single-use tokens, mail outbox, admins (Postgres).
-- Mirrors migrations/sqlite/0002_auth.sql.

CREATE TABLE fb_users (
    id             TEXT COLLATE "C" PRIMARY KEY,
    email          TEXT UNIQUE,           -- normalised (trimmed, lower-case); NULL: none
    password_hash  TEXT,                  -- argon2id PHC string; NULL: no password
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    anonymous      BOOLEAN NOT NULL DEFAULT FALSE,
    role           TEXT NOT NULL DEFAULT 'user',
    claims         TEXT NOT NULL DEFAULT '{}',
    data           TEXT NOT NULL DEFAULT '{}',
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    token_epoch    BIGINT NOT NULL DEFAULT 0,  -- bumped to invalidate mailed tokens
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- Sign-in identities from WeChat and OAuth providers.
CREATE TABLE fb_identities (
    provider   TEXT NOT NULL,
    subject    TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES fb_users (id) ON DELETE CASCADE,
    email      TEXT,
    data       TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX fb_identities_user ON fb_identities (user_id);

-- A session is one refresh-token family. refresh_hash is the current token's SHA-256,
-- previous_hash the one it replaced (accepted again within the grace window).
CREATE TABLE fb_sessions (
    id            TEXT COLLATE "C" PRIMARY KEY,
    kind          TEXT NOT NULL,          -- 'user' or 'admin'
    user_id       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    revoked_at    TEXT,
    revoke_reason TEXT,
    refresh_hash  TEXT NOT NULL UNIQUE,
    previous_hash TEXT,
    rotated_at    TEXT,
    ip            TEXT,
    user_agent    TEXT
);
CREATE INDEX fb_sessions_user ON fb_sessions (user_id);
CREATE INDEX fb_sessions_previous ON fb_sessions (previous_hash);

-- Every refresh token ever spent, to recognise reuse of an old one.
CREATE TABLE fb_refresh_spent (
    hash       TEXT COLLATE "C" PRIMARY KEY,
    session_id TEXT NOT NULL,
    spent_at   TEXT NOT NULL
);
CREATE INDEX fb_refresh_spent_session ON fb_refresh_spent (session_id);

-- Mailed single-use tokens (email verification, password reset), stored hashed.
CREATE TABLE fb_auth_tokens (
    hash       TEXT COLLATE "C" PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES fb_users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,
    email      TEXT,
    epoch      BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT
);

-- OAuth authorization requests in flight (state, PKCE verifier, nonce).
CREATE TABLE fb_oauth_states (
    state_hash  TEXT COLLATE "C" PRIMARY KEY,
    provider    TEXT NOT NULL,
    verifier    TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    redirect_to TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

-- Mail that was not sent through SMTP (no SMTP configured).
CREATE TABLE fb_mail (
    id         TEXT COLLATE "C" PRIMARY KEY,
    to_addr    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX fb_mail_created ON fb_mail (created_at);

-- Console administrators.
CREATE TABLE fb_admins (
    id            TEXT COLLATE "C" PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
