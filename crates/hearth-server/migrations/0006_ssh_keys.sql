-- Public keys for the SSH gateway, keyed by the owning user's name (auth::Caller.id).
-- A key authenticates exactly one user, so its fingerprint is unique across users.
CREATE TABLE ssh_keys (
    id          TEXT PRIMARY KEY,
    user_name   TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX ssh_keys_user ON ssh_keys (user_name);
