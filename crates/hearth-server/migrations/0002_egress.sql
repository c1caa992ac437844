-- Per-workspace egress policy as JSON ({"deny": ["10.0.0.0/8", ...]}); '{}' allows all.
ALTER TABLE workspaces ADD COLUMN egress TEXT NOT NULL DEFAULT '{}';
