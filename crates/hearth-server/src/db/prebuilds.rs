//! The `prebuilds` table: one row per prebuild snapshot (see `manager/prebuilds.rs`).

use super::{query_err, with_pool, DbRow, Dialect, Store, StoreError};

/// A recorded prebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrebuildRecord {
    /// The snapshot holding its files (stored under `series`).
    pub snapshot: String,
    /// The workspace id its prebuild workspaces run under.
    pub series: String,
    pub owner: String,
    /// Every user's `up` may start from it (an admin made it).
    pub shared: bool,
    pub source: String,
    pub branch: Option<String>,
    pub commit: String,
    pub config_hash: String,
    pub image: String,
    /// Repository-relative path of its devcontainer.json.
    pub config_file: String,
    pub created_at: String,
    /// Its features' lifecycle commands (JSON, see `manager/prebuilds.rs`); `None` when
    /// it installed none.
    pub feature_lifecycle: Option<String>,
}

const COLUMNS: &str = "snapshot, series, owner, shared, source, branch, commit_id, config_hash, \
                       image, config_file, created_at, feature_lifecycle";

fn record(r: &impl DbRow) -> Result<PrebuildRecord, sqlx::Error> {
    Ok(PrebuildRecord {
        snapshot: r.try_get("snapshot")?,
        series: r.try_get("series")?,
        owner: r.try_get("owner")?,
        shared: r.try_get("shared")?,
        source: r.try_get("source")?,
        branch: r.try_get("branch")?,
        commit: r.try_get("commit_id")?,
        config_hash: r.try_get("config_hash")?,
        image: r.try_get("image")?,
        config_file: r.try_get("config_file")?,
        created_at: r.try_get("created_at")?,
        feature_lifecycle: r.try_get("feature_lifecycle")?,
    })
}

impl Store {
    pub async fn insert_prebuild(&self, p: &PrebuildRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO prebuilds ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&p.snapshot)
                .bind(&p.series)
                .bind(&p.owner)
                .bind(p.shared)
                .bind(&p.source)
                .bind(&p.branch)
                .bind(&p.commit)
                .bind(&p.config_hash)
                .bind(&p.image)
                .bind(&p.config_file)
                .bind(&p.created_at)
                .bind(&p.feature_lifecycle)
                .execute(pool)
                .await
                .map_err(query_err(&p.snapshot))?;
        });
        Ok(())
    }

    /// Every prebuild, or those of `source`; newest first (those of the same second by
    /// snapshot id, an order both backends keep).
    pub async fn prebuilds(&self, source: Option<&str>) -> Result<Vec<PrebuildRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM prebuilds WHERE $1 IS NULL OR source = $1 \
                 ORDER BY created_at{0} DESC, snapshot{0} DESC",
                p.bytewise()
            ))
            .bind(source)
            .fetch_all(p)
            .await
            .map_err(query_err("prebuilds"))?;
            rows.iter()
                .map(|r| record(r).map_err(query_err("prebuilds")))
                .collect()
        })
    }

    /// Forgets the rows of snapshots the store no longer has.
    pub async fn forget_prebuilds(&self, snapshots: &[String]) -> Result<(), StoreError> {
        for s in snapshots {
            with_pool!(self, p => {
                sqlx::query("DELETE FROM prebuilds WHERE snapshot = $1")
                    .bind(s)
                    .execute(p)
                    .await
                    .map_err(query_err(s))?;
            });
        }
        Ok(())
    }
}

/// One prebuild run (`prebuild_runs`): what `hearth prebuilds` shows of a prebuild under
/// way or one that failed, with its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrebuildRunRecord {
    pub id: String,
    pub series: String,
    pub owner: String,
    pub source: String,
    pub branch: Option<String>,
    pub config_file: Option<String>,
    pub commit: Option<String>,
    /// `cli` or `webhook`.
    pub trigger: String,
    /// `running`, `ready` or `failed`.
    pub state: String,
    pub error: Option<String>,
    /// The last lines of its output, newline-separated (written as the run goes).
    pub log: Option<String>,
    /// How many lines the run has written in all: `log` ends with line number `log_lines`.
    pub log_lines: i64,
    pub snapshot: Option<String>,
    /// The server running it.
    pub server: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

const RUN_COLUMNS: &str = "id, series, owner, source, branch, config_file, commit_id, \
                           trigger_kind, state, error, log, log_lines, snapshot, server, \
                           started_at, finished_at";

/// Finished runs kept per series (the newest); older ones go as new ones finish.
pub const RUNS_KEPT: i64 = 20;

fn run_record(r: &impl DbRow) -> Result<PrebuildRunRecord, sqlx::Error> {
    Ok(PrebuildRunRecord {
        id: r.try_get("id")?,
        series: r.try_get("series")?,
        owner: r.try_get("owner")?,
        source: r.try_get("source")?,
        branch: r.try_get("branch")?,
        config_file: r.try_get("config_file")?,
        commit: r.try_get("commit_id")?,
        trigger: r.try_get("trigger_kind")?,
        state: r.try_get("state")?,
        error: r.try_get("error")?,
        log: r.try_get("log")?,
        log_lines: r.try_get("log_lines")?,
        snapshot: r.try_get("snapshot")?,
        server: r.try_get("server")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

impl Store {
    pub async fn insert_prebuild_run(&self, r: &PrebuildRunRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO prebuild_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        with_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(&r.id)
                .bind(&r.series)
                .bind(&r.owner)
                .bind(&r.source)
                .bind(&r.branch)
                .bind(&r.config_file)
                .bind(&r.commit)
                .bind(&r.trigger)
                .bind(&r.state)
                .bind(&r.error)
                .bind(&r.log)
                .bind(r.log_lines)
                .bind(&r.snapshot)
                .bind(&r.server)
                .bind(&r.started_at)
                .bind(&r.finished_at)
                .execute(pool)
                .await
                .map_err(query_err(&r.id))?;
        });
        Ok(())
    }

    /// Writes running run `id`'s log so far: its newest lines and how many it wrote in
    /// all. An ended run's is left as its end wrote it.
    pub async fn set_prebuild_run_log(
        &self,
        id: &str,
        log: &str,
        log_lines: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "UPDATE prebuild_runs SET log = $2, log_lines = $3 \
                 WHERE id = $1 AND state = 'running'",
            )
            .bind(id)
            .bind(log)
            .bind(log_lines)
            .execute(p)
            .await
            .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Records run `id`'s end: `state` (`ready` or `failed`), why, its log (the newest
    /// lines of `log_lines` in all), its prebuild; then drops its series' finished runs
    /// beyond the newest [`RUNS_KEPT`].
    pub async fn finish_prebuild_run(
        &self,
        id: &str,
        state: &str,
        error: Option<&str>,
        (log, log_lines): (&str, i64),
        snapshot: Option<&str>,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "UPDATE prebuild_runs SET state = $2, error = $3, log = $4, log_lines = $5, \
                 snapshot = $6, finished_at = $7 WHERE id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(error)
            .bind(log)
            .bind(log_lines)
            .bind(snapshot)
            .bind(super::now_precise())
            .execute(p)
            .await
            .map_err(query_err(id))?;
            let sql = format!(
                "DELETE FROM prebuild_runs WHERE state <> 'running' AND series IN \
                 (SELECT series FROM prebuild_runs WHERE id = $1) AND id NOT IN \
                 (SELECT r.id FROM prebuild_runs r WHERE r.series IN \
                   (SELECT series FROM prebuild_runs WHERE id = $1) \
                  ORDER BY r.started_at{0} DESC, r.id{0} DESC LIMIT {RUNS_KEPT})",
                p.bytewise()
            );
            sqlx::query(&sql)
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Every prebuild run, newest first.
    pub async fn prebuild_runs(&self) -> Result<Vec<PrebuildRunRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM prebuild_runs \
                 ORDER BY started_at{0} DESC, id{0} DESC",
                p.bytewise()
            ))
            .fetch_all(p)
            .await
            .map_err(query_err("prebuild_runs"))?;
            rows.iter()
                .map(|r| run_record(r).map_err(query_err("prebuild_runs")))
                .collect()
        })
    }

    pub async fn prebuild_run(&self, id: &str) -> Result<Option<PrebuildRunRecord>, StoreError> {
        with_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {RUN_COLUMNS} FROM prebuild_runs WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(p)
            .await
            .map_err(query_err(id))?;
            row.map(|r| run_record(&r).map_err(query_err(id))).transpose()
        })
    }

    /// Marks the runs still `running` on a server in `servers` failed with `why` (the
    /// server restarted or is gone: nothing finishes them). How many there were.
    pub async fn fail_prebuild_runs_of(
        &self,
        servers: &[String],
        why: &str,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for s in servers {
            n += with_pool!(self, p => {
                sqlx::query(
                    "UPDATE prebuild_runs SET state = 'failed', error = $2, finished_at = $3 \
                     WHERE state = 'running' AND server = $1",
                )
                .bind(s)
                .bind(why)
                .bind(super::now_precise())
                .execute(p)
                .await
                .map_err(query_err(s))?
                .rows_affected()
            });
        }
        Ok(n)
    }

    /// The servers of runs still `running`.
    pub async fn prebuild_run_servers(&self) -> Result<Vec<String>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT DISTINCT server FROM prebuild_runs \
                 WHERE state = 'running' AND server IS NOT NULL",
            )
            .fetch_all(p)
            .await
            .map_err(query_err("prebuild_runs"))?;
            rows.iter()
                .map(|r| r.try_get("server").map_err(query_err("prebuild_runs")))
                .collect()
        })
    }
}
