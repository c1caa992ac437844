//! `hearth prebuild`, `hearth prebuild rm` and `hearth prebuilds`.

use std::io::IsTerminal;

use hearth_api::CreatePrebuild;

use super::{absolute_source, print_table, Commands, ProgressView};

impl Commands {
    /// Builds a prebuild of a repository (`req.source` as given on the command line).
    pub async fn prebuild(&self, mut req: CreatePrebuild) -> anyhow::Result<()> {
        req.source = absolute_source(&req.source)?;
        let mut view = ProgressView::new(std::io::stderr().is_terminal());
        let res = self.api.prebuild(&req, view.printer()).await;
        view.done();
        let p = res?;
        println!(
            "prebuild {} of {} at commit {}",
            p.snapshot,
            p.source,
            &p.commit[..p.commit.len().min(12)]
        );
        Ok(())
    }

    pub async fn prebuild_remove(&self, snapshot: &str) -> anyhow::Result<()> {
        self.api.remove_prebuild(snapshot).await?;
        println!("prebuild {snapshot} removed");
        Ok(())
    }

    pub async fn prebuilds(&self, json: bool) -> anyhow::Result<()> {
        let v = self.api.prebuilds().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v
            .iter()
            .map(|p| {
                vec![
                    p.source.clone(),
                    p.branch.clone().unwrap_or_else(|| "(default)".into()),
                    p.commit[..p.commit.len().min(12)].to_string(),
                    p.config_file.clone(),
                    p.snapshot.clone(),
                    p.owner.clone(),
                    p.created_at.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "SOURCE", "BRANCH", "COMMIT", "CONFIG", "SNAPSHOT", "OWNER", "CREATED",
            ],
            &rows,
        );
        Ok(())
    }
}
