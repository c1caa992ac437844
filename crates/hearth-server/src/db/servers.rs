//! `servers` and `leases`: the control-plane servers sharing the database and the work
//! exactly one of them does (see [`crate::leader`]).

use hearth_api::WorkspaceState;

use super::{now, query_err, with_pool, Store, StoreError};

/// A server as its row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRow {
    pub id: String,
    pub url: String,
    pub embedded_node: Option<String>,
    pub seen_ms: i64,
}

impl Store {
    /// Records server `id` (or refreshes its row) as seen at `now_ms`.
    pub async fn register_server(
        &self,
        id: &str,
        url: &str,
        embedded_node: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO servers (id, url, embedded_node, started_at, seen_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, \
                 embedded_node = excluded.embedded_node, seen_ms = excluded.seen_ms",
            )
            .bind(id)
            .bind(url)
            .bind(embedded_node)
            .bind(now())
            .bind(now_ms)
            .execute(p)
            .await
            .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Servers seen at or after `since_ms`, by id.
    pub async fn live_servers(&self, since_ms: i64) -> Result<Vec<ServerRow>, StoreError> {
        let rows: Vec<(String, String, Option<String>, i64)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, url, embedded_node, seen_ms FROM servers WHERE seen_ms >= $1 \
                 ORDER BY id",
            )
            .bind(since_ms)
            .fetch_all(p)
            .await
            .map_err(query_err("*"))?
        });
        Ok(rows
            .into_iter()
            .map(|(id, url, embedded_node, seen_ms)| ServerRow {
                id,
                url,
                embedded_node,
                seen_ms,
            })
            .collect())
    }

    /// Forgets server `id` and gives up its leases (a clean stop; a killed server's
    /// leases expire instead). Rows of servers gone for a day go too.
    pub async fn remove_server(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("DELETE FROM leases WHERE holder = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(query_err(id))?;
            sqlx::query("DELETE FROM servers WHERE id = $1 OR seen_ms < $2")
                .bind(id)
                .bind(now_ms - 24 * 3600 * 1000)
                .execute(p)
                .await
                .map_err(query_err(id))?;
        });
        Ok(())
    }

    /// Takes lease `name` for `holder` until `until_ms`, or renews it, if it is free,
    /// expired (before `now_ms`) or `holder`'s already; one statement, so of servers
    /// racing for a free lease exactly one gets it. Whether `holder` holds it now.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let res = with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_ms = excluded.expires_ms \
                 WHERE leases.holder = excluded.holder OR leases.expires_ms < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(until_ms)
            .bind(now_ms)
            .execute(p)
            .await
            .map_err(query_err(name))?
            .rows_affected()
        });
        Ok(res == 1)
    }

    /// Who holds lease `name` at `now_ms`, if anyone.
    pub async fn lease_holder(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_scalar("SELECT holder FROM leases WHERE name = $1 AND expires_ms >= $2")
                .bind(name)
                .bind(now_ms)
                .fetch_optional(p)
                .await
                .map_err(query_err(name))
        })
    }
}

/// Operations (transitional states) and the servers running them: `workspaces.op_server`.
impl Store {
    /// Workspaces in a transitional state whose operation names a server: (name, server).
    /// `''` is an operation whose server restarted (see [`Store::orphan_own`]).
    pub async fn operations(&self) -> Result<Vec<(String, String)>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_as(
                "SELECT name, op_server FROM workspaces WHERE op_server IS NOT NULL \
                 AND state IN ('creating', 'starting', 'stopping', 'removing') ORDER BY name",
            )
            .fetch_all(p)
            .await
            .map_err(query_err("*"))
        })
    }

    /// Moves workspace `id` from `from` to transitional `to` for this server, if it is
    /// still `from`: of servers racing to operate on one workspace, one wins.
    pub async fn claim(
        &self,
        id: &str,
        from: WorkspaceState,
        to: WorkspaceState,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query(
                "UPDATE workspaces SET state = $1, error = NULL, updated_at = $2, op_server = $3 \
                 WHERE id = $4 AND state = $5",
            )
            .bind(to.as_str())
            .bind(now())
            .bind(self.op_for(to))
            .bind(id)
            .bind(from.as_str())
            .execute(p)
            .await
            .map_err(query_err(id))?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Takes over workspace `id`'s operation from server `old` (gone), if it is still
    /// `state` and `old`'s: of servers racing for it, one wins.
    pub async fn adopt(
        &self,
        id: &str,
        state: WorkspaceState,
        old: &str,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query(
                "UPDATE workspaces SET op_server = $1 WHERE id = $2 AND state = $3 \
                 AND op_server = $4",
            )
            .bind(self.operator())
            .bind(id)
            .bind(state.as_str())
            .bind(old)
            .execute(p)
            .await
            .map_err(query_err(id))?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Marks operations of server `me`'s previous run as orphaned (`''`): called at its
    /// start, before it runs any. How many there were.
    pub async fn orphan_own(&self, me: &str) -> Result<u64, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query("UPDATE workspaces SET op_server = '' WHERE op_server = $1")
                .bind(me)
                .execute(p)
                .await
                .map_err(query_err(me))?
                .rows_affected()
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::testdb::{on_both_backends, Backend, TestDb};

    on_both_backends!(
        one_holder_per_lease_until_it_expires,
        servers_come_and_go,
        operations_are_claimed_once_and_taken_over_once,
    );

    /// Two servers race to start an operation on one workspace: one wins. The other takes
    /// it over only from its server and only once; a restarted server's operations are
    /// marked orphaned; settling clears the operation.
    async fn operations_are_claimed_once_and_taken_over_once(b: Backend) {
        use hearth_api::WorkspaceState::{Running, Starting, Stopped, Stopping};
        let db = TestDb::new(b);
        let (sa, sb) = (db.store().await, db.store().await);
        sa.set_operator("a");
        sb.set_operator("b");
        let mut w = crate::db::testdb::rec("aaaaaaaaaaaa", "w", 0);
        w.state = Stopped;
        sa.insert(&w).await.unwrap();
        assert!(sa.operations().await.unwrap().is_empty());
        let id = w.spec.id.as_str();

        let (x, y) = tokio::join!(
            sa.claim(id, Stopped, Stopping),
            sb.claim(id, Stopped, Stopping)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x != y, "exactly one claim wins: {x} {y}");
        let (winner, other, won, lost) = if x {
            (&sa, &sb, "a", "b")
        } else {
            (&sb, &sa, "b", "a")
        };
        assert_eq!(
            sa.operations().await.unwrap(),
            [("w".to_string(), won.to_string())]
        );
        // The winner is gone: taken over from it, in its state, once.
        assert!(!other.adopt(id, Running, won).await.unwrap());
        assert!(!other.adopt(id, Stopping, lost).await.unwrap());
        assert!(other.adopt(id, Stopping, won).await.unwrap());
        assert!(!winner.adopt(id, Stopping, won).await.unwrap());
        assert_eq!(
            sa.operations().await.unwrap(),
            [("w".to_string(), lost.to_string())]
        );
        other.set_state(id, Stopped, None).await.unwrap();
        assert!(sa.operations().await.unwrap().is_empty());

        // A restart: its unfinished operations become nobody's.
        assert!(sa.claim(id, Stopped, Starting).await.unwrap());
        assert_eq!(sa.orphan_own("a").await.unwrap(), 1);
        assert_eq!(
            sb.operations().await.unwrap(),
            [("w".to_string(), String::new())]
        );
        assert!(sb.adopt(id, Starting, "").await.unwrap());
        sb.set_state(id, Running, None).await.unwrap();

        // A create's row names its server from the insert on.
        sb.insert(&crate::db::testdb::rec("bbbbbbbbbbbb", "c", 1))
            .await
            .unwrap();
        assert_eq!(
            sa.operations().await.unwrap(),
            [("c".to_string(), "b".to_string())]
        );
    }

    /// Of many stores racing for a free lease exactly one wins; the holder renews, the
    /// others cannot take it until it expires, then one can.
    async fn one_holder_per_lease_until_it_expires(b: Backend) {
        let db = TestDb::new(b);
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(db.store().await);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, s) in stores.iter().enumerate() {
            let s = s.clone();
            tasks.spawn(async move {
                (
                    i,
                    s.take_lease("leader", &format!("s{i}"), 1000, 2000).await,
                )
            });
        }
        let mut won = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (i, got) = r.unwrap();
            if got.unwrap() {
                won.push(i);
            }
        }
        assert_eq!(won.len(), 1, "{won:?}");
        let w = won[0];
        let other = (w + 1) % 4;
        let holder = format!("s{w}");
        assert_eq!(
            stores[0]
                .lease_holder("leader", 1500)
                .await
                .unwrap()
                .as_deref(),
            Some(holder.as_str())
        );
        // Renewed by its holder, refused to another before it expires.
        assert!(stores[w]
            .take_lease("leader", &holder, 1900, 3000)
            .await
            .unwrap());
        assert!(!stores[other]
            .take_lease("leader", &format!("s{other}"), 2500, 4000)
            .await
            .unwrap());
        // Other leases are independent.
        assert!(stores[other]
            .take_lease("gc", &format!("s{other}"), 2500, 4000)
            .await
            .unwrap());
        // Expired: taken over.
        assert_eq!(stores[0].lease_holder("leader", 3001).await.unwrap(), None);
        assert!(stores[other]
            .take_lease("leader", &format!("s{other}"), 3001, 5000)
            .await
            .unwrap());
        assert!(!stores[w]
            .take_lease("leader", &holder, 3002, 5000)
            .await
            .unwrap());
    }

    async fn servers_come_and_go(b: Backend) {
        let db = TestDb::new(b);
        let store = db.store().await;
        store
            .register_server("a", "http://a", Some("local"), 1000)
            .await
            .unwrap();
        store
            .register_server("b", "http://b", None, 5000)
            .await
            .unwrap();
        assert!(store.take_lease("leader", "a", 1000, 2000).await.unwrap());
        let live: Vec<String> = store
            .live_servers(2000)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(live, ["b"]);
        store
            .register_server("a", "http://a", Some("local"), 6000)
            .await
            .unwrap();
        let all = store.live_servers(2000).await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].embedded_node.as_deref(), Some("local"));
        store.remove_server("a", 6000).await.unwrap();
        assert_eq!(store.live_servers(0).await.unwrap().len(), 1);
        // Its lease went with it.
        assert_eq!(store.lease_holder("leader", 1500).await.unwrap(), None);
    }
}
