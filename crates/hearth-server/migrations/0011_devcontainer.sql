-- The devcontainer.json a workspace was made from, by workspace id: `config` is the
-- server's `Devcontainer` (hearth-devcontainer's model after the first substitution pass,
-- the commit, the workspace folder) as JSON; `done` names the last create-time lifecycle
-- step that finished (NULL: none), so a start after a failed one runs the rest. Kept
-- while a removed workspace can be restored (same id), deleted with it after that.
CREATE TABLE workspace_devcontainers (
    id TEXT PRIMARY KEY NOT NULL,
    config TEXT NOT NULL,
    done TEXT
);
