-- Idle auto-stop. idle_timeout: seconds without activity before the server stops the
-- workspace (0 never; NULL the server's --idle-timeout). last_active: RFC 3339 time of the
-- last session or request the server saw, flushed now and then, so listings show it after
-- a restart. stop_reason: why the workspace last stopped, until it starts again.
ALTER TABLE workspaces ADD COLUMN idle_timeout BIGINT;
ALTER TABLE workspaces ADD COLUMN last_active TEXT;
ALTER TABLE workspaces ADD COLUMN stop_reason TEXT;
