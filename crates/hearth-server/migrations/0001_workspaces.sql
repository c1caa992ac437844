-- Plain SQL that also runs on PostgreSQL: text ids and RFC 3339 timestamps.
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    source TEXT NOT NULL,
    slot BIGINT NOT NULL UNIQUE,
    limits TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
