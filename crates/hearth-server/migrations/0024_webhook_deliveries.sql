-- Webhook deliveries handled recently, by the forge's delivery id, so that a redelivery
-- (the forge's retry, a "Redeliver" click) is answered as the first was and starts no
-- prebuild. Shared by every server of a database: the primary key decides which of two
-- concurrent copies is handled. Pruned by age and count as deliveries come.
CREATE TABLE webhook_deliveries (
    -- `forge:id`, e.g. `github:72d3162e-cc78-11e3-81ab-4c9367dc0958`.
    id TEXT PRIMARY KEY NOT NULL,
    -- SHA-256 of the body, hex: the same id with another body is refused.
    body_sha256 TEXT NOT NULL,
    -- The answer given (a WebhookResult as JSON); NULL while the first copy is handled.
    answer TEXT,
    -- When it was claimed (`now_precise`); the age the pruning goes by.
    received_at TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
