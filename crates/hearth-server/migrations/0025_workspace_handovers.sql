-- A new workspace without a devcontainer.json whose clone still has to be handed to the
-- user its sessions run as (its image's non-root USER); with a devcontainer.json the
-- step before onCreateCommand does it. Deleted once done, and with the workspace.
CREATE TABLE workspace_handovers (
    id TEXT PRIMARY KEY NOT NULL
);
