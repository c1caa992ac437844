-- Workspaces removed with `hearth rm` whose snapshots are kept for the grace period
-- (`hearth server --deleted-retention`), so `hearth restore` can bring them back. Keyed by
-- the removed workspace's id, which is also what its snapshots are stored under: a new
-- workspace with the same name gets a new id and never shares their history.
CREATE TABLE deleted_workspaces (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    -- The WorkspaceSpec at removal (image, source, limits, egress) as JSON.
    spec TEXT NOT NULL,
    deleted_at TEXT NOT NULL,
    -- When the background store gc forgets its snapshots (RFC 3339, like deleted_at).
    expires_at TEXT NOT NULL
);
CREATE INDEX deleted_workspaces_name ON deleted_workspaces (name);
