-- Every prebuild run (`hearth prebuild` or a push webhook) and its outcome, so that a
-- webhook's prebuild that failed is seen by its owner (`hearth prebuilds`, `hearth
-- prebuild logs`) and not only in the server log. The newest runs of each series are kept.
CREATE TABLE prebuild_runs (
    id TEXT PRIMARY KEY NOT NULL,
    -- The series (see 0014_prebuilds.sql) the run belongs to.
    series TEXT NOT NULL,
    owner TEXT NOT NULL,
    source TEXT NOT NULL,
    -- NULL: the source's default branch.
    branch TEXT,
    config_file TEXT,
    -- The commit it builds, once known (a webhook's pushed commit, else the one read).
    commit_id TEXT,
    -- 'cli' or 'webhook'.
    trigger_kind TEXT NOT NULL,
    -- 'running', 'ready' or 'failed'.
    state TEXT NOT NULL,
    -- Why it failed (the failing step with its exit code and output's tail).
    error TEXT,
    -- The last lines of its progress and commands' output, one per line.
    log TEXT,
    -- The prebuild it made, when ready.
    snapshot TEXT,
    -- The server running it (`servers.id`); a running row whose server is gone failed.
    server TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX prebuild_runs_series ON prebuild_runs (series, started_at);
CREATE INDEX prebuild_runs_state ON prebuild_runs (state);
