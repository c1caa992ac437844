-- Control-plane servers sharing this database (several only on PostgreSQL), each with
-- its last heartbeat and the embedded node it runs, if any: a local node belongs to one
-- host, so a server with one refuses to share the database with another.
CREATE TABLE servers (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    embedded_node TEXT,
    started_at TEXT NOT NULL,
    -- Unix milliseconds of its last heartbeat.
    seen_ms BIGINT NOT NULL
);
-- Work exactly one server does at a time (`leader`: the background jobs). The holder
-- renews its lease before `expires_ms` (unix milliseconds); after that anyone may take it.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
-- Pages of the workspace list (`?limit=N&after=NAME`) go by name in byte order on both
-- backends; PostgreSQL's own index on name follows the database's locale, so a page read
-- every row and sorted them. PostgreSQL runs this collation as its C one (db::postgres_sql).
CREATE INDEX workspaces_name_bytes ON workspaces (name COLLATE BINARY);
