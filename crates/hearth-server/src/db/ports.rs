//! The `ports` table: which ports of a workspace are public (no row: private).

use sqlx::Row;

use super::{query_err, Store, StoreError};

impl Store {
    /// Ports of workspace `id` with a recorded visibility: `(port, public)`, ascending.
    pub async fn ports(&self, id: &str) -> Result<Vec<(u16, bool)>, StoreError> {
        let rows =
            sqlx::query("SELECT port, public FROM ports WHERE workspace_id = $1 ORDER BY port")
                .bind(id)
                .fetch_all(&self.pool)
                .await
                .map_err(query_err(id))?;
        rows.iter()
            .map(|r| {
                let port: i64 = r.try_get("port").map_err(query_err(id))?;
                let public: bool = r.try_get("public").map_err(query_err(id))?;
                let port = u16::try_from(port).map_err(|_| StoreError::Corrupt {
                    id: id.to_string(),
                    message: format!("port {port} out of range"),
                })?;
                Ok((port, public))
            })
            .collect()
    }

    /// Whether `port` of workspace `id` is public.
    pub async fn port_public(&self, id: &str, port: u16) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT public FROM ports WHERE workspace_id = $1 AND port = $2")
            .bind(id)
            .bind(i64::from(port))
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err(id))?;
        match row {
            Some(r) => r.try_get("public").map_err(query_err(id)),
            None => Ok(false),
        }
    }

    /// Records the visibility of `port`; private is stored as no row.
    pub async fn set_port_public(
        &self,
        id: &str,
        port: u16,
        public: bool,
    ) -> Result<(), StoreError> {
        let q = if public {
            "INSERT INTO ports (workspace_id, port, public) VALUES ($1, $2, TRUE) \
             ON CONFLICT (workspace_id, port) DO UPDATE SET public = TRUE"
        } else {
            "DELETE FROM ports WHERE workspace_id = $1 AND port = $2"
        };
        sqlx::query(q)
            .bind(id)
            .bind(i64::from(port))
            .execute(&self.pool)
            .await
            .map_err(query_err(id))?;
        Ok(())
    }
}
