//! The `nodes` table and workspace placement columns (see [`crate::fleet`]).

use std::collections::BTreeMap;

use super::{now, query_err, with_pool, DbRow, Dialect, Store, StoreError};

/// A node as the database keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `ready` or `draining`, as an admin set it.
    pub state: String,
    pub created_at: String,
    pub last_seen: Option<String>,
}

fn node_err(name: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |source| StoreError::Query {
        id: format!("node {name}"),
        source,
    }
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    // A map of strings always serializes.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

fn node_record(r: &impl DbRow) -> Result<NodeRecord, StoreError> {
    let name: String = r.try_get("name").map_err(node_err("*"))?;
    let labels: String = r.try_get("labels").map_err(node_err(&name))?;
    let labels = serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
        id: format!("node {name}"),
        message: format!("labels: {e}"),
    })?;
    Ok(NodeRecord {
        labels,
        state: r.try_get("state").map_err(node_err(&name))?,
        created_at: r.try_get("created_at").map_err(node_err(&name))?,
        last_seen: r.try_get("last_seen").map_err(node_err(&name))?,
        name,
    })
}

impl Store {
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT name, labels, state, created_at, last_seen FROM nodes ORDER BY name{}",
                p.bytewise()
            ))
            .fetch_all(p)
            .await
            .map_err(node_err("*"))?;
            rows.iter().map(node_record).collect()
        })
    }

    /// Records an attach: a new node is `ready`; a known one keeps its state (a drained
    /// node that reconnects stays draining) and takes the labels it attached with.
    pub async fn attach_node(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let t = now();
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO nodes (name, labels, state, created_at, last_seen) \
                 VALUES ($1, $2, 'ready', $3, $3) \
                 ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
                 last_seen = excluded.last_seen",
            )
            .bind(name)
            .bind(labels_json(labels))
            .bind(&t)
            .execute(p)
            .await
            .map_err(node_err(name))?;
        });
        Ok(())
    }

    pub async fn set_node_seen(&self, name: &str, at: &str) -> Result<(), StoreError> {
        self.set_node_column(name, "last_seen", at).await
    }

    pub async fn set_node_state(&self, name: &str, state: &str) -> Result<(), StoreError> {
        self.set_node_column(name, "state", state).await
    }

    pub async fn set_node_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        self.set_node_column(name, "labels", &labels_json(labels))
            .await
    }

    /// Sets text column `column` (one of ours, never input) of node `name`.
    async fn set_node_column(
        &self,
        name: &str,
        column: &'static str,
        value: &str,
    ) -> Result<(), StoreError> {
        let sql = format!("UPDATE nodes SET {column} = $1 WHERE name = $2");
        with_pool!(self, p => {
            sqlx::query(&sql)
                .bind(value)
                .bind(name)
                .execute(p)
                .await
                .map_err(node_err(name))?;
        });
        Ok(())
    }

    /// Forgets a node, unless a workspace is still placed on it (checked in the same
    /// statement, so a placement racing the removal is never orphaned). False if it
    /// still holds workspaces.
    pub async fn delete_node(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(node_err(name))?;
            let n = sqlx::query(
                "DELETE FROM nodes WHERE name = $1 \
                 AND NOT EXISTS (SELECT 1 FROM workspaces WHERE node = $1)",
            )
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(node_err(name))?
            .rows_affected();
            if n > 0 {
                // Copies it should drop are gone with it.
                sqlx::query("DELETE FROM node_evictions WHERE node = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(node_err(name))?;
            }
            tx.commit().await.map_err(node_err(name))?;
            n > 0
        });
        if deleted {
            return Ok(true);
        }
        Ok(!self.node_has_workspaces(name).await?)
    }

    async fn node_has_workspaces(&self, name: &str) -> Result<bool, StoreError> {
        let n: i64 = with_pool!(self, p => {
            sqlx::query_scalar("SELECT COUNT(*) AS n FROM workspaces WHERE node = $1")
                .bind(name)
                .fetch_one(p)
                .await
                .map_err(node_err(name))?
        });
        Ok(n > 0)
    }

    /// Places workspace `id` on `node` under a new generation (one above its current):
    /// from here on its calls go there and the previous node's copy is fenced off.
    /// Returns the new generation.
    pub async fn place(&self, id: &str, node: &str) -> Result<u64, StoreError> {
        let g: i64 = with_pool!(self, p => {
            sqlx::query_scalar(
                "UPDATE workspaces SET node = $1, generation = generation + 1, updated_at = $2 \
                 WHERE id = $3 RETURNING generation",
            )
            .bind(node)
            .bind(now())
            .bind(id)
            .fetch_one(p)
            .await
            .map_err(query_err(id))?
        });
        u64::try_from(g).map_err(|_| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("generation {g}"),
        })
    }
}

impl Store {
    /// The node workspace `id` is placed on; `None` without a row.
    pub async fn node_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_scalar("SELECT node FROM workspaces WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(query_err(id))
        })
    }

    /// Node, state and limits (JSON) of every workspace: what the scheduler sums, without
    /// reading and decoding whole rows.
    pub async fn placement_rows(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_as("SELECT node, state, limits FROM workspaces")
                .fetch_all(p)
                .await
                .map_err(query_err("*"))
        })
    }

    /// The nodes of the workspaces `ids` (those that have a row), by id.
    pub async fn placements_of(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT id, node FROM workspaces WHERE id IN ({})",
            marks.join(", ")
        );
        let rows: Vec<(String, String)> = with_pool!(self, p => {
            let mut q = sqlx::query_as(&sql);
            for id in ids {
                q = q.bind(*id);
            }
            q.fetch_all(p).await.map_err(query_err("*"))?
        });
        Ok(rows.into_iter().collect())
    }

    /// Every workspace's node, by id.
    pub async fn placements(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, p => {
            sqlx::query_as("SELECT id, node FROM workspaces")
                .fetch_all(p)
                .await
                .map_err(query_err("*"))?
        });
        Ok(rows.into_iter().collect())
    }
}

impl Store {
    /// Records that `node` still holds a copy of `spec`'s workspace, placed elsewhere now.
    pub async fn add_eviction(
        &self,
        node: &str,
        spec: &hearth_node::WorkspaceSpec,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            id: spec.id.to_string(),
            message: format!("spec: {e}"),
        })?;
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO node_evictions (node, workspace, spec, created_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node, workspace) DO UPDATE SET spec = excluded.spec",
            )
            .bind(node)
            .bind(spec.id.as_str())
            .bind(&json)
            .bind(now())
            .execute(p)
            .await
            .map_err(query_err(&spec.id))?;
        });
        Ok(())
    }

    /// The copies `node` must drop.
    pub async fn evictions(
        &self,
        node: &str,
    ) -> Result<Vec<hearth_node::WorkspaceSpec>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, p => {
            sqlx::query_as("SELECT workspace, spec FROM node_evictions WHERE node = $1")
                .bind(node)
                .fetch_all(p)
                .await
                .map_err(node_err(node))?
        });
        rows.into_iter()
            .map(|(id, spec)| {
                serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                    id,
                    message: format!("eviction spec: {e}"),
                })
            })
            .collect()
    }

    pub async fn remove_eviction(&self, node: &str, workspace: &str) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM node_evictions WHERE node = $1 AND workspace = $2")
                .bind(node)
                .bind(workspace)
                .execute(p)
                .await
                .map_err(node_err(node))?;
        });
        Ok(())
    }
}
