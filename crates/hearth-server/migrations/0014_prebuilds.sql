-- Prebuilds (`hearth prebuild`): a workspace made from a repository's devcontainer.json,
-- run through updateContentCommand, stopped and snapshotted, then removed; `hearth up` of
-- the repository restores the snapshot instead of cloning and running those steps.
-- `series` is the workspace id every prebuild of (owner, source, branch) runs under, so
-- their snapshots chain in the store and its retention applies across them.
CREATE TABLE prebuilds (
    snapshot TEXT PRIMARY KEY NOT NULL,
    series TEXT NOT NULL,
    owner TEXT NOT NULL,
    -- Made by an admin (or a webhook): every user's `up` may start from it.
    shared BOOLEAN NOT NULL,
    source TEXT NOT NULL,
    -- NULL: the source's default branch.
    branch TEXT,
    commit_id TEXT NOT NULL,
    -- SHA-256 of the devcontainer settings and the image id (see manager/prebuilds.rs).
    config_hash TEXT NOT NULL,
    -- The image id the prebuild ran on.
    image TEXT NOT NULL,
    config_file TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX prebuilds_source ON prebuilds (source, config_hash);
