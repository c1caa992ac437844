-- Nodes on other hosts (`hearth node --server URL --join-token T`): an admin's join token
-- is exchanged once for a node credential, which the node presents on every connection.
-- Only SHA-256 hashes of both are kept (32 random bytes each, as API tokens).
CREATE TABLE node_join_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    -- NULL: the token joins a new node of any free name; else exactly this node, whose
    -- credential it replaces (a node that lost its data dir).
    node TEXT,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    -- Unix seconds; a token is refused from then on, and deleted when used.
    expires_at BIGINT NOT NULL
);
CREATE TABLE node_credentials (
    node TEXT PRIMARY KEY NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
