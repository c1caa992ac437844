-- A running prebuild's log is written as it goes (`hearth prebuild logs RUN [-f]`): how
-- many lines the run has written in all, so a follower that read up to line N knows which
-- of the kept tail (`log`, the newest lines) are new. 0 on rows from before.
ALTER TABLE prebuild_runs ADD COLUMN log_lines BIGINT NOT NULL DEFAULT 0;
