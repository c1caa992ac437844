-- Nodes of the fleet (`hearth node ls`). The embedded node registers as `local` (or
-- `hearth server --node-name`); remote ones when they attach. `state` is what an admin
-- set (ready or draining); lost is not stored: it follows from `last_seen`.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY NOT NULL,
    -- JSON object of string labels, matched by `--node-selector key=value`.
    labels TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- Last heartbeat or attach (RFC 3339); NULL before the first.
    last_seen TEXT
);
-- The node holding a workspace's local copy: its calls go there. Rows older than the
-- fleet were all on the embedded node.
ALTER TABLE workspaces ADD COLUMN node TEXT NOT NULL DEFAULT 'local';
-- Placement generation (WorkspaceSpec::generation): bumped at each placement, carried by
-- every node call, so a node cut off while its workspaces moved is fenced off.
ALTER TABLE workspaces ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
CREATE INDEX workspaces_node ON workspaces (node);
-- `hearth up --node-selector k=v` as a JSON object (NULL: any node); applies again when
-- the workspace is moved or brought up elsewhere after its node was lost.
ALTER TABLE workspaces ADD COLUMN node_selector TEXT;
-- When `last_snapshot` was taken (RFC 3339): what a workspace on a lost node can be
-- brought back to.
ALTER TABLE workspaces ADD COLUMN last_snapshot_at TEXT;
-- Copies a node still holds of workspaces placed elsewhere since (its node was lost, or
-- the old copy's removal failed after a move): removed, without a snapshot, when the
-- node attaches again. `spec` is the WorkspaceSpec as placed there (JSON).
CREATE TABLE node_evictions (
    node TEXT NOT NULL,
    workspace TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (node, workspace)
);
