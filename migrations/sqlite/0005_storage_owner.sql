-- Per-user storage quotas (SQLite). Mirrors migrations/postgres/0005_storage_owner.sql.

-- A user's stored bytes are summed at every upload when `storage.user_quota` is set; the
-- index covers that sum.
CREATE INDEX fb_objects_owner ON fb_objects (owner, size);
