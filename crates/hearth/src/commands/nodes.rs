//! `hearth node ls|drain|undrain|label|rm` and `hearth move`.

use std::collections::BTreeMap;

use hearth_api::NodeLabels;

use super::{print_table, Commands};

/// `KEY=VALUE` terms (labels, node selectors); the server checks their characters.
pub fn parse_labels(terms: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    terms
        .iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => anyhow::bail!("label {t:?} must be KEY=VALUE"),
        })
        .collect()
}

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / f64::from(1u32 << 30))
}

impl Commands {
    pub async fn node_list(&self, json: bool) -> anyhow::Result<()> {
        let nodes = self.api.nodes().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&nodes)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let labels: Vec<String> =
                    n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let (cpus, mem, disk) = match &n.capacity {
                    Some(c) => (
                        c.cpus.to_string(),
                        format!("{}/{}", gib(c.memory_available), gib(c.memory_total)),
                        format!("{}/{}", gib(c.disk_free), gib(c.disk_total)),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                vec![
                    n.name.clone(),
                    n.state.clone(),
                    n.workspaces.to_string(),
                    cpus,
                    mem,
                    disk,
                    if labels.is_empty() {
                        "-".into()
                    } else {
                        labels.join(",")
                    },
                    n.last_seen.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "STATE",
                "WORKSPACES",
                "CPUS",
                "MEM FREE",
                "DISK FREE",
                "LABELS",
                "LAST SEEN",
            ],
            &rows,
        );
        Ok(())
    }

    /// Exit status 1 when a workspace could not be moved off.
    pub async fn node_drain(&self, name: &str) -> anyhow::Result<i32> {
        let r = self.api.drain_node(name).await?;
        for m in &r.moved {
            println!("moved {} to {}", m.workspace, m.node);
        }
        for f in &r.failed {
            eprintln!("cannot move {}: {}", f.workspace, f.error);
        }
        if r.failed.is_empty() {
            println!("node {name} is drained");
            Ok(0)
        } else {
            eprintln!(
                "node {name} stays draining with {} workspace(s) on it; hearth node drain {name} tries them again",
                r.failed.len()
            );
            Ok(1)
        }
    }

    pub async fn node_undrain(&self, name: &str) -> anyhow::Result<()> {
        self.api.undrain_node(name).await?;
        println!("node {name} takes new workspaces again");
        Ok(())
    }

    pub async fn node_label(&self, name: &str, labels: &[String]) -> anyhow::Result<()> {
        let labels = parse_labels(labels)?;
        let n = self
            .api
            .set_node_labels(name, &NodeLabels { labels })
            .await?;
        let shown: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "node {name} labels: {}",
            if shown.is_empty() {
                "none".into()
            } else {
                shown.join(",")
            }
        );
        Ok(())
    }

    pub async fn node_remove(&self, name: &str) -> anyhow::Result<()> {
        self.api.remove_node(name).await?;
        println!("node {name} removed");
        Ok(())
    }

    pub async fn move_workspace(&self, name: &str, node: Option<&str>) -> anyhow::Result<()> {
        let ws = self.api.move_workspace(name, node).await?;
        println!(
            "workspace {name} is on node {} ({})",
            ws.node.as_deref().unwrap_or("?"),
            ws.state
        );
        Ok(())
    }
}
