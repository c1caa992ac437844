-- Outcome of each workspace's most recent snapshot attempt, so `hearth ls` still shows a
-- failed final snapshot (and its retries resume) after a server restart.
ALTER TABLE workspaces ADD COLUMN last_snapshot TEXT;
ALTER TABLE workspaces ADD COLUMN snapshot_error TEXT;
