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
