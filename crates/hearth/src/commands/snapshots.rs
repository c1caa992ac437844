//! `hearth snapshot`, `snapshots`, `fork` and `store fsck|gc`.

use anyhow::bail;
use hearth_api::{ForkWorkspace, RestoreWorkspace, StoreGc, StoreUse};

use super::{human_size, print_table, Commands};

fn when(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// One line: how many snapshots, what they reference and what only they hold.
pub fn render_store_use(u: &StoreUse) -> String {
    format!(
        "total: {} snapshot{}, {} stored ({} only theirs, freed when they go)",
        u.snapshots,
        if u.snapshots == 1 { "" } else { "s" },
        human_size(u.referenced_bytes),
        human_size(u.unique_bytes)
    )
}

impl Commands {
    pub async fn snapshot(&self, name: &str) -> anyhow::Result<()> {
        let s = self.api.snapshot(name).await?;
        println!(
            "snapshot {} of {name}: {} in {} files, {} new",
            s.id,
            human_size(s.size),
            s.files,
            human_size(s.new_bytes)
        );
        Ok(())
    }

    pub async fn snapshots(&self, name: &str, json: bool) -> anyhow::Result<()> {
        let v = self.api.snapshots(name).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|s| {
                vec![
                    s.id.clone(),
                    when(s.time),
                    human_size(s.size),
                    s.files.to_string(),
                    human_size(s.new_bytes),
                ]
            })
            .collect();
        print_table(&["ID", "TIME", "SIZE", "FILES", "NEW"], &rows);
        match self.api.store_use(name).await {
            Ok(u) => println!("{}", render_store_use(&u)),
            Err(e) => eprintln!("store use of {name} unknown: {e}"),
        }
        Ok(())
    }

    /// Removed workspaces whose snapshots are kept (of `name` only, when given).
    pub async fn deleted(&self, name: Option<&str>, json: bool) -> anyhow::Result<()> {
        let mut v = self.api.deleted().await?;
        if let Some(n) = name {
            v.retain(|d| d.name == n);
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|d| {
                vec![
                    d.name.clone(),
                    d.id.clone(),
                    d.deleted_at.clone(),
                    d.expires_at.clone(),
                    d.snapshots.len().to_string(),
                    d.snapshots
                        .last()
                        .map_or_else(|| "-".into(), |s| s.id.clone()),
                    d.store
                        .map_or_else(|| "-".into(), |u| human_size(u.unique_bytes)),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "ID",
                "DELETED",
                "EXPIRES",
                "SNAPSHOTS",
                "NEWEST",
                "FREES",
            ],
            &rows,
        );
        Ok(())
    }

    pub async fn restore(
        &self,
        name: &str,
        snapshot: Option<String>,
        as_name: Option<String>,
    ) -> anyhow::Result<()> {
        let req = RestoreWorkspace {
            snapshot,
            name: as_name,
        };
        let w = self.api.restore(name, &req).await?;
        println!(
            "workspace {} is {} (restored from snapshot {})",
            w.name,
            w.state,
            w.last_snapshot.as_deref().unwrap_or("-")
        );
        Ok(())
    }

    pub async fn fork(&self, name: &str, snapshot: &str, new: &str) -> anyhow::Result<()> {
        let req = ForkWorkspace {
            snapshot: snapshot.to_string(),
            name: new.to_string(),
        };
        let w = self.api.fork(name, &req).await?;
        println!("workspace {} is {} (forked from {name})", w.name, w.state);
        Ok(())
    }

    /// Exits non-zero (through the error) when the store has problems.
    pub async fn store_fsck(&self, json: bool) -> anyhow::Result<()> {
        let c = self.api.store_fsck().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            for p in &c.problems {
                println!("problem: {p}");
            }
        }
        if !c.ok {
            bail!(
                "store {} has {} problem(s) in {} snapshots",
                c.location,
                c.problems.len(),
                c.snapshots
            );
        }
        if !json {
            println!(
                "store {} OK: {} snapshots, {} chunks verified",
                c.location, c.snapshots, c.chunks
            );
        }
        Ok(())
    }

    pub async fn store_gc(&self, req: StoreGc) -> anyhow::Result<()> {
        let r = self.api.store_gc(&req).await?;
        for id in &r.forgotten {
            println!("forgot snapshot {id}");
        }
        println!(
            "deleted {} unreferenced chunks ({})",
            r.deleted_chunks,
            human_size(r.deleted_bytes)
        );
        Ok(())
    }
}
