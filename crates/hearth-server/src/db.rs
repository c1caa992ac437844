//! Workspace records in SQLite, through sqlx with plain SQL so PostgreSQL can follow.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hearth_node::{EgressPolicy, Limits, WorkspaceId, WorkspaceSpec};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use hearth_api::WorkspaceState;

mod nodes;
mod ports;
mod prebuilds;
mod users;

pub use nodes::NodeRecord;
pub use prebuilds::PrebuildRecord;
pub use users::{Removal, UserRecord};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("workspace {0} already exists")]
    NameTaken(String),
    #[error("user {0} already exists")]
    UserTaken(String),
    #[error("database error on users: {0}")]
    Users(#[source] sqlx::Error),
    #[error("database error on workspace {id}: {source}")]
    Query {
        id: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("corrupt record for workspace {id}: {message}")]
    Corrupt { id: String, message: String },
}

/// One row of `workspaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub spec: WorkspaceSpec,
    pub state: WorkspaceState,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Id of the last snapshot taken, and the error of the last attempt if it failed.
    pub last_snapshot: Option<String>,
    pub snapshot_error: Option<String>,
    /// Name of the user the workspace belongs to.
    pub owner: String,
    /// The node its calls go to: where its local copy is (or is being made).
    pub node: String,
    /// Labels a node must carry to take it (`hearth up --node-selector`); empty: any.
    pub node_selector: crate::fleet::Labels,
    /// When `last_snapshot` was taken.
    pub last_snapshot_at: Option<String>,
    /// Idle auto-stop (see [`crate::manager::idle`]): seconds (0 never; `None` the
    /// server's default), the last activity flushed here, why it last stopped.
    pub idle: IdleRecord,
}

/// The idle auto-stop columns of a workspace row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdleRecord {
    pub timeout: Option<u64>,
    pub last_active: Option<String>,
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// RFC 3339 UTC time, second precision.
pub fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn query_err(id: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        id: id.to_string(),
        source,
    }
}

const COLUMNS: &str =
    "id, name, image, source, slot, limits, state, error, created_at, updated_at, egress, \
     last_snapshot, snapshot_error, owner, node, generation, node_selector, last_snapshot_at";
/// Read with [`COLUMNS`]; written by their own updates (a create sets the timeout after
/// its insert).
const IDLE_COLUMNS: &str = "idle_timeout, last_active, stop_reason";

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<WorkspaceRecord, StoreError> {
    let id: String = row.try_get("id").map_err(query_err("?"))?;
    let get_err = |source| StoreError::Query {
        id: id.clone(),
        source,
    };
    let corrupt = |message: String| StoreError::Corrupt {
        id: id.clone(),
        message,
    };
    let slot: i64 = row.try_get("slot").map_err(get_err)?;
    let limits: String = row.try_get("limits").map_err(get_err)?;
    let state: String = row.try_get("state").map_err(get_err)?;
    let egress: String = row.try_get("egress").map_err(get_err)?;
    let idle_timeout: Option<i64> = row.try_get("idle_timeout").map_err(get_err)?;
    let generation: i64 = row.try_get("generation").map_err(get_err)?;
    let selector: Option<String> = row.try_get("node_selector").map_err(get_err)?;
    Ok(WorkspaceRecord {
        spec: WorkspaceSpec {
            id: WorkspaceId::new(id.as_str()).map_err(|e| corrupt(e.to_string()))?,
            name: row.try_get("name").map_err(get_err)?,
            image: row.try_get("image").map_err(get_err)?,
            source: row.try_get("source").map_err(get_err)?,
            slot: u32::try_from(slot).map_err(|_| corrupt(format!("slot {slot} out of range")))?,
            limits: serde_json::from_str::<Limits>(&limits)
                .map_err(|e| corrupt(format!("limits: {e}")))?,
            egress: serde_json::from_str::<EgressPolicy>(&egress)
                .map_err(|e| corrupt(format!("egress: {e}")))?,
            generation: u64::try_from(generation)
                .map_err(|_| corrupt(format!("generation {generation}")))?,
        },
        state: WorkspaceState::parse(&state).ok_or_else(|| corrupt(format!("state {state:?}")))?,
        error: row.try_get("error").map_err(get_err)?,
        created_at: row.try_get("created_at").map_err(get_err)?,
        updated_at: row.try_get("updated_at").map_err(get_err)?,
        last_snapshot: row.try_get("last_snapshot").map_err(get_err)?,
        snapshot_error: row.try_get("snapshot_error").map_err(get_err)?,
        owner: row.try_get("owner").map_err(get_err)?,
        node: row.try_get("node").map_err(get_err)?,
        node_selector: selector
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("node selector: {e}"))))
            .transpose()?
            .unwrap_or_default(),
        last_snapshot_at: row.try_get("last_snapshot_at").map_err(get_err)?,
        idle: IdleRecord {
            timeout: idle_timeout
                .map(|t| u64::try_from(t).map_err(|_| corrupt(format!("idle timeout {t}"))))
                .transpose()?,
            last_active: row.try_get("last_active").map_err(get_err)?,
            stop_reason: row.try_get("stop_reason").map_err(get_err)?,
        },
    })
}

impl Store {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Store { pool })
    }

    /// For queries kept next to their feature (`ssh_keys.rs`).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn list(&self) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS}, {IDLE_COLUMNS} FROM workspaces ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("*"))?;
        rows.iter().map(record).collect()
    }

    pub async fn get(&self, name: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, {IDLE_COLUMNS} FROM workspaces WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err(name))?;
        row.as_ref().map(record).transpose()
    }

    /// Slots in use, ascending.
    pub async fn used_slots(&self) -> Result<Vec<u32>, StoreError> {
        let rows = sqlx::query("SELECT slot FROM workspaces ORDER BY slot")
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("*"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let slot: i64 = row.try_get("slot").map_err(query_err("*"))?;
            if let Ok(s) = u32::try_from(slot) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Inserts a new workspace; a taken name is [`StoreError::NameTaken`].
    pub async fn insert(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        if self.get(&rec.spec.name).await?.is_some() {
            return Err(StoreError::NameTaken(rec.spec.name.clone()));
        }
        let mut tx = self.pool.begin().await.map_err(query_err("*"))?;
        Self::insert_in(&mut tx, rec).await?;
        tx.commit().await.map_err(query_err(&rec.spec.id))
    }

    async fn insert_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rec: &WorkspaceRecord,
    ) -> Result<(), StoreError> {
        let s = &rec.spec;
        let limits = serde_json::to_string(&s.limits).map_err(|e| StoreError::Corrupt {
            id: s.id.to_string(),
            message: format!("limits: {e}"),
        })?;
        let egress = egress_json(s)?;
        sqlx::query(&format!(
            "INSERT INTO workspaces ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ))
        .bind(s.id.as_str())
        .bind(&s.name)
        .bind(&s.image)
        .bind(&s.source)
        .bind(i64::from(s.slot))
        .bind(limits)
        .bind(rec.state.as_str())
        .bind(&rec.error)
        .bind(&rec.created_at)
        .bind(&rec.updated_at)
        .bind(egress)
        .bind(&rec.last_snapshot)
        .bind(&rec.snapshot_error)
        .bind(&rec.owner)
        .bind(&rec.node)
        .bind(i64::try_from(s.generation).unwrap_or(i64::MAX))
        .bind(
            (!rec.node_selector.is_empty())
                .then(|| serde_json::to_string(&rec.node_selector).unwrap_or_default()),
        )
        .bind(&rec.last_snapshot_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::NameTaken(s.name.clone())
            }
            _ => StoreError::Query {
                id: s.id.to_string(),
                source: e,
            },
        })?;
        Ok(())
    }

    pub async fn set_state(
        &self,
        id: &str,
        state: WorkspaceState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE workspaces SET state = $1, error = $2, updated_at = $3 WHERE id = $4")
            .bind(state.as_str())
            .bind(error)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    /// Records a snapshot attempt: a success sets the last snapshot and clears the error,
    /// a failure keeps the last snapshot and sets the error. Only for the placement
    /// `generation` (an attempt on an older copy changes nothing).
    pub async fn set_snapshot_result(
        &self,
        id: &str,
        generation: u64,
        res: Result<&str, &str>,
    ) -> Result<(), StoreError> {
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        let q = match res {
            Ok(snap) => sqlx::query(
                "UPDATE workspaces SET last_snapshot = $1, last_snapshot_at = $2, \
                 snapshot_error = NULL WHERE id = $3 AND generation = $4",
            )
            .bind(snap)
            .bind(now()),
            Err(e) => sqlx::query(
                "UPDATE workspaces SET snapshot_error = $1 WHERE id = $2 AND generation = $3",
            )
            .bind(e),
        };
        q.bind(id)
            .bind(generation)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    /// Replaces a workspace's egress policy.
    pub async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), StoreError> {
        self.set_json(&spec.id, "egress", egress_json(spec)?).await
    }

    /// Replaces a workspace's limits.
    pub async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), StoreError> {
        let limits = serde_json::to_string(&spec.limits).map_err(|e| StoreError::Corrupt {
            id: spec.id.to_string(),
            message: format!("limits: {e}"),
        })?;
        self.set_json(&spec.id, "limits", limits).await
    }

    /// Sets JSON column `column` (one of ours, never input) of workspace `id`.
    async fn set_json(
        &self,
        id: &str,
        column: &'static str,
        json: String,
    ) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "UPDATE workspaces SET {column} = $1, updated_at = $2 WHERE id = $3"
        ))
        .bind(json)
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_err(id))?;
        Ok(())
    }

    /// Sets a workspace's idle timeout (`None`: the server's default).
    pub async fn set_idle_timeout(&self, id: &str, secs: Option<u64>) -> Result<(), StoreError> {
        let secs = secs.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        sqlx::query("UPDATE workspaces SET idle_timeout = $1, updated_at = $2 WHERE id = $3")
            .bind(secs)
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    /// Records when workspace `id` was last active (RFC 3339).
    pub async fn set_last_active(&self, id: &str, at: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workspaces SET last_active = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    /// Records why workspace `id` stopped (`None` clears it, at a start).
    pub async fn set_stop_reason(&self, id: &str, reason: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE workspaces SET stop_reason = $1 WHERE id = $2")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workspaces WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        self.forget_workspace_dotfiles(id).await?;
        self.forget_devcontainer(id).await
    }

    /// Records the devcontainer settings (JSON) a workspace was made from.
    pub async fn set_devcontainer(&self, id: &str, config: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workspace_devcontainers (id, config) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET config = excluded.config, done = NULL",
        )
        .bind(id)
        .bind(config)
        .execute(&self.pool)
        .await
        .map_err(query_err(id))?;
        Ok(())
    }

    /// A workspace's devcontainer settings (JSON) and its last finished create-time step.
    pub async fn devcontainer(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT config, done FROM workspace_devcontainers WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(id))?;
        row.map(|r| {
            Ok((
                r.try_get("config").map_err(query_err(id))?,
                r.try_get("done").map_err(query_err(id))?,
            ))
        })
        .transpose()
    }

    /// Replaces the settings, keeping how far the lifecycle got.
    pub async fn update_devcontainer(&self, id: &str, config: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workspace_devcontainers SET config = $2 WHERE id = $1")
            .bind(id)
            .bind(config)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    pub async fn set_devcontainer_done(&self, id: &str, step: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workspace_devcontainers SET done = $2 WHERE id = $1")
            .bind(id)
            .bind(step)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }

    async fn forget_devcontainer(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workspace_devcontainers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }
}

/// A removed workspace whose snapshots are kept until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedRecord {
    /// As it was at removal; `spec.id` keys its snapshots in the store.
    pub spec: WorkspaceSpec,
    pub owner: String,
    /// RFC 3339.
    pub deleted_at: String,
    pub expires_at: String,
}

fn deleted_record(row: &sqlx::sqlite::SqliteRow) -> Result<DeletedRecord, StoreError> {
    let id: String = row.try_get("id").map_err(query_err("?"))?;
    let get_err = |source| StoreError::Query {
        id: id.clone(),
        source,
    };
    let spec: String = row.try_get("spec").map_err(get_err)?;
    let spec: WorkspaceSpec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
        id: id.clone(),
        message: format!("deleted workspace spec: {e}"),
    })?;
    if spec.id.as_str() != id {
        return Err(StoreError::Corrupt {
            id,
            message: format!("deleted workspace spec names id {}", spec.id),
        });
    }
    Ok(DeletedRecord {
        spec,
        owner: row.try_get("owner").map_err(get_err)?,
        deleted_at: row.try_get("deleted_at").map_err(get_err)?,
        expires_at: row.try_get("expires_at").map_err(get_err)?,
    })
}

impl Store {
    /// Moves a workspace's row to `deleted_workspaces` in one transaction: from now on
    /// only its snapshots (stored under its id) are left, until `expires_at`.
    pub async fn retire(
        &self,
        rec: &WorkspaceRecord,
        deleted_at: &str,
        expires_at: &str,
    ) -> Result<(), StoreError> {
        let id = rec.spec.id.as_str();
        let spec = serde_json::to_string(&rec.spec).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("spec: {e}"),
        })?;
        let mut tx = self.pool.begin().await.map_err(query_err(id))?;
        sqlx::query(
            "INSERT INTO deleted_workspaces (id, name, owner, spec, deleted_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind(id)
        .bind(&rec.spec.name)
        .bind(&rec.owner)
        .bind(spec)
        .bind(deleted_at)
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(query_err(id))?;
        sqlx::query("DELETE FROM workspaces WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_err(id))?;
        tx.commit().await.map_err(query_err(id))
    }

    /// Removed workspaces, most recently removed first.
    pub async fn deleted(&self) -> Result<Vec<DeletedRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, owner, spec, deleted_at, expires_at FROM deleted_workspaces \
             ORDER BY deleted_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("*"))?;
        rows.iter().map(deleted_record).collect()
    }

    pub async fn forget_deleted(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM deleted_workspaces WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        self.forget_devcontainer(id).await
    }

    /// Brings a removed workspace back as `rec` (same id, so its snapshots are its own
    /// again), in one transaction; a taken name is [`StoreError::NameTaken`].
    pub async fn revive(&self, rec: &WorkspaceRecord) -> Result<(), StoreError> {
        if self.get(&rec.spec.name).await?.is_some() {
            return Err(StoreError::NameTaken(rec.spec.name.clone()));
        }
        let id = rec.spec.id.as_str();
        let mut tx = self.pool.begin().await.map_err(query_err(id))?;
        sqlx::query("DELETE FROM deleted_workspaces WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(query_err(id))?;
        Self::insert_in(&mut tx, rec).await?;
        tx.commit().await.map_err(query_err(id))
    }
}

fn egress_json(spec: &WorkspaceSpec) -> Result<String, StoreError> {
    serde_json::to_string(&spec.egress).map_err(|e| StoreError::Corrupt {
        id: spec.id.to_string(),
        message: format!("egress: {e}"),
    })
}

/// Lowest slot not in `used` (which is ascending).
pub fn lowest_free_slot(used: &[u32]) -> u32 {
    let mut want = 0;
    for &s in used {
        if s == want {
            want += 1;
        } else if s > want {
            break;
        }
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, name: &str, slot: u32) -> WorkspaceRecord {
        WorkspaceRecord {
            spec: WorkspaceSpec {
                id: WorkspaceId::new(id).unwrap(),
                name: name.into(),
                image: "sha256:abc".into(),
                source: "/src/x".into(),
                slot,
                limits: Limits::default(),
                egress: EgressPolicy::default(),
                generation: 0,
            },
            state: WorkspaceState::Creating,
            error: None,
            created_at: now(),
            updated_at: now(),
            last_snapshot: None,
            snapshot_error: None,
            owner: "admin".into(),
            node: "local".into(),
            node_selector: Default::default(),
            last_snapshot_at: None,
            idle: IdleRecord::default(),
        }
    }

    #[tokio::test]
    async fn removed_rows_keep_their_id_and_come_back_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
        let mut a = rec("aaaaaaaaaaaa", "a", 0);
        a.owner = "alice".into();
        store.insert(&a).await.unwrap();
        store.retire(&a, "t0", "t1").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        // The name is free again; the new workspace is another id.
        store.insert(&rec("bbbbbbbbbbbb", "a", 0)).await.unwrap();
        let d = store.deleted().await.unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].spec.clone(),
                d[0].owner.as_str(),
                d[0].expires_at.as_str()
            ),
            (a.spec.clone(), "alice", "t1")
        );
        // Back under its id: refused while the name is taken, then as another name.
        let mut back = a.clone();
        assert!(matches!(
            store.revive(&back).await,
            Err(StoreError::NameTaken(_))
        ));
        assert_eq!(
            store.deleted().await.unwrap().len(),
            1,
            "a refused revive kept it"
        );
        back.spec.name = "a2".into();
        back.spec.slot = 1;
        store.revive(&back).await.unwrap();
        assert!(store.deleted().await.unwrap().is_empty());
        assert_eq!(store.get("a2").await.unwrap().unwrap().spec.id, a.spec.id);
        store.retire(&back, "t2", "t3").await.unwrap();
        store.forget_deleted("aaaaaaaaaaaa").await.unwrap();
        assert!(store.deleted().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_from_before_egress_allow_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        // A database at migration 1, with a row, as an older server left it.
        {
            let opts = SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
            let m = sqlx::migrate::Migrator {
                migrations: std::borrow::Cow::Owned(
                    MIGRATOR.migrations.iter().take(1).cloned().collect(),
                ),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            m.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO workspaces (id, name, image, source, slot, limits, state, \
                 created_at, updated_at) VALUES ('aaaaaaaaaaaa', 'old', 'sha256:x', '/s', 0, \
                 '{\"memory_bytes\":1,\"pids\":1,\"cpu_weight\":1}', 'stopped', 't', 't')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let old = store.get("old").await.unwrap().unwrap();
        assert_eq!(old.spec.egress, EgressPolicy::default());
    }

    #[test]
    fn lowest_free_slot_fills_gaps() {
        assert_eq!(lowest_free_slot(&[]), 0);
        assert_eq!(lowest_free_slot(&[0, 1, 2]), 3);
        assert_eq!(lowest_free_slot(&[1, 2]), 0);
        assert_eq!(lowest_free_slot(&[0, 2, 3]), 1);
    }

    #[tokio::test]
    async fn store_round_trips_and_enforces_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        let store = Store::open(&path).await.unwrap();
        let a = rec("aaaaaaaaaaaa", "a", 0);
        store.insert(&a).await.unwrap();
        assert_eq!(store.get("a").await.unwrap().unwrap(), a);
        assert!(matches!(
            store.insert(&rec("bbbbbbbbbbbb", "a", 1)).await,
            Err(StoreError::NameTaken(n)) if n == "a"
        ));
        store.insert(&rec("cccccccccccc", "c", 2)).await.unwrap();
        assert_eq!(store.used_slots().await.unwrap(), vec![0, 2]);
        store
            .set_state("aaaaaaaaaaaa", WorkspaceState::Failed, Some("boom"))
            .await
            .unwrap();
        let got = store.get("a").await.unwrap().unwrap();
        assert_eq!(got.state, WorkspaceState::Failed);
        assert_eq!(got.error.as_deref(), Some("boom"));
        let mut with_policy = got.spec.clone();
        with_policy.egress = EgressPolicy::parse(&["10.0.0.0/8", "1.2.3.4:53/udp"]).unwrap();
        store.set_egress(&with_policy).await.unwrap();
        assert_eq!(
            store.get("a").await.unwrap().unwrap().spec.egress,
            with_policy.egress
        );
        // Snapshot outcomes: a failure keeps the last good id, a success clears the error.
        store
            .set_snapshot_result("cccccccccccc", 0, Ok("s1"))
            .await
            .unwrap();
        store
            .set_snapshot_result("cccccccccccc", 0, Err("store unreachable"))
            .await
            .unwrap();
        let c = store.get("c").await.unwrap().unwrap();
        assert_eq!(c.last_snapshot.as_deref(), Some("s1"));
        assert_eq!(c.snapshot_error.as_deref(), Some("store unreachable"));
        store.delete("aaaaaaaaaaaa").await.unwrap();
        assert!(store.get("a").await.unwrap().is_none());
        store.close().await;
        // Reopening keeps data (migrations are not re-applied destructively).
        let store = Store::open(&path).await.unwrap();
        let names: Vec<_> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.spec.name)
            .collect();
        assert_eq!(names, vec!["c"]);
        let c = store.get("c").await.unwrap().unwrap();
        assert_eq!(c.snapshot_error.as_deref(), Some("store unreachable"));
    }
}
