-- Users and their API tokens. Only a SHA-256 of each token is kept (tokens are 32 random
-- bytes, so a fast hash is enough); the server looks callers up by it.
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
-- Every workspace has an owner (a user's name). Workspaces made before users existed
-- belong to the first-start admin, whose token they were made with.
ALTER TABLE workspaces ADD COLUMN owner TEXT NOT NULL DEFAULT 'admin';
CREATE INDEX workspaces_owner ON workspaces (owner);
