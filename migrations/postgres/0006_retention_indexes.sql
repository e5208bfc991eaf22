-- The retention jobs delete by age every minute, through the write connection: without
-- these indexes each of their DELETEs scanned its whole table under the write lock.
CREATE INDEX fb_fn_logs_at ON fb_fn_logs (at);
CREATE INDEX fb_fn_jobs_succeeded ON fb_fn_jobs (status, updated_at);
CREATE INDEX fb_sessions_expires ON fb_sessions (expires_at);
CREATE INDEX fb_sessions_revoked ON fb_sessions (revoked_at);
CREATE INDEX fb_auth_tokens_expires ON fb_auth_tokens (expires_at);
CREATE INDEX fb_auth_tokens_used ON fb_auth_tokens (used_at);
CREATE INDEX fb_oauth_states_expires ON fb_oauth_states (expires_at);
