//! The `ports` table: which ports of a workspace are public (no row: private).

use super::{query_err, with_pool, Store, StoreError};

impl Store {
    /// Ports of workspace `id` with a recorded visibility: `(port, public)`, ascending.
    pub async fn ports(&self, id: &str) -> Result<Vec<(u16, bool)>, StoreError> {
        let rows: Vec<(i32, bool)> = with_pool!(self, p => {
            sqlx::query_as("SELECT port, public FROM ports WHERE workspace_id = $1 ORDER BY port")
                .bind(id)
                .fetch_all(p)
                .await
                .map_err(query_err(id))?
        });
        rows.into_iter()
            .map(|(port, public)| {
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
        let public: Option<bool> = with_pool!(self, p => {
            sqlx::query_scalar("SELECT public FROM ports WHERE workspace_id = $1 AND port = $2")
                .bind(id)
                .bind(i32::from(port))
                .fetch_optional(p)
                .await
                .map_err(query_err(id))?
        });
        Ok(public.unwrap_or(false))
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
        with_pool!(self, p => {
            sqlx::query(q)
                .bind(id)
                .bind(i32::from(port))
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }
}
