-- Users' secrets, injected as environment variables into the sessions and lifecycle
-- commands of their workspaces. `value` is XChaCha20-Poly1305 ciphertext (24-byte nonce
-- first) under the data dir's `secrets.key`, with (user, repo, key) as associated data so
-- a row cannot be moved to another user or name. `repo` is '' for every repository.
CREATE TABLE secrets (
    user_name TEXT NOT NULL,
    repo TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user_name, repo, key)
);
-- A user's dotfiles repository (NULL: none), cloned into the home of their new workspaces.
ALTER TABLE users ADD COLUMN dotfiles TEXT;
-- Dotfiles a new workspace still has to install: its owner's setting when it was made.
-- Deleted once the install ran (whatever its outcome) and with the workspace.
CREATE TABLE workspace_dotfiles (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL
);
