-- Ports given a visibility with `hearth port NAME PORT --public|--private`. A port with
-- no row is private. Rows go with their workspace.
CREATE TABLE ports (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    port INTEGER NOT NULL,
    public BOOLEAN NOT NULL,
    PRIMARY KEY (workspace_id, port)
);
