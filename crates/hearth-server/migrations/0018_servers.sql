-- Pages of the workspace list (`?limit=N&after=NAME`) go by name in byte order on both
-- backends; PostgreSQL's own index on name follows the database's locale, so a page read
-- every row and sorted them. PostgreSQL runs this collation as its C one (db::postgres_sql).
CREATE INDEX workspaces_name_bytes ON workspaces (name COLLATE BINARY);
