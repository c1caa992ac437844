-- Per-user quotas (`hearth user quota`). The row named '*' (no user name can be) is the
-- default, for users without a row of their own. NULL: no limit on that resource.
CREATE TABLE quotas (
    user_name TEXT PRIMARY KEY NOT NULL,
    max_workspaces BIGINT,
    max_running BIGINT,
    memory_bytes BIGINT,
    disk_bytes BIGINT,
    updated_at TEXT NOT NULL
);
-- The audit log (`hearth audit`): one row per mutating API call, SSH login and port
-- visibility change. `id` is the fixed-width time plus a random suffix, so it sorts in
-- time order and two rows of one nanosecond stay distinct. Never holds secret values.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    at TEXT NOT NULL,
    -- NULL: the caller was not authenticated (a refused token, a failed SSH login).
    user_name TEXT,
    action TEXT NOT NULL,
    target TEXT,
    peer TEXT,
    -- HTTP status of an API call; NULL for what is not one (SSH logins).
    status BIGINT,
    ok BOOLEAN NOT NULL,
    error TEXT
);
CREATE INDEX audit_log_user ON audit_log (user_name, id);
