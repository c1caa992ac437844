//! `hearth secret set|ls|rm` and `hearth user dotfiles`.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use hearth_api::{Dotfiles, SetSecret};

use super::{absolute_source, print_table, Commands};

/// " for REPO" or " for every repository".
fn scope(repo: Option<&str>) -> String {
    match repo {
        Some(r) => format!(" for {r}"),
        None => " for every repository".into(),
    }
}

impl Commands {
    /// Reads the value from stdin, so it never sits in shell history or `ps`.
    pub async fn secret_set(&self, key: &str, repo: Option<&str>) -> anyhow::Result<()> {
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("value of {key} (end with Ctrl-D):");
        }
        let mut value = String::new();
        stdin
            .read_to_string(&mut value)
            .context("cannot read the secret's value from stdin")?;
        // The newline `echo` or a typed line ends with is not part of the value.
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value);
        let repo = repo.map(absolute_source).transpose()?;
        let s = self
            .api
            .set_secret(
                key,
                &SetSecret {
                    value: value.to_string(),
                    repo,
                },
            )
            .await?;
        println!(
            "secret {} set{} (new sessions get it)",
            s.key,
            scope(s.repo.as_deref())
        );
        Ok(())
    }

    pub async fn secret_list(&self, json: bool) -> anyhow::Result<()> {
        let secrets = self.api.secrets().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&secrets)?);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = secrets
            .iter()
            .map(|s| {
                vec![
                    s.key.clone(),
                    s.repo.clone().unwrap_or_else(|| "(all)".into()),
                    s.updated_at.clone(),
                ]
            })
            .collect();
        print_table(&["KEY", "REPO", "UPDATED"], &rows);
        Ok(())
    }

    pub async fn secret_remove(&self, key: &str, repo: Option<&str>) -> anyhow::Result<()> {
        let repo = repo.map(absolute_source).transpose()?;
        self.api.remove_secret(key, repo.as_deref()).await?;
        println!("secret {key} removed{}", scope(repo.as_deref()));
        Ok(())
    }

    /// Shows the dotfiles repository, or sets (`url`) or unsets it.
    pub async fn dotfiles(&self, url: Option<&str>, unset: bool) -> anyhow::Result<()> {
        let now = if unset || url.is_some() {
            let url = url.map(absolute_source).transpose()?;
            self.api.set_dotfiles(&Dotfiles { url }).await?
        } else {
            self.api.dotfiles().await?
        };
        match now.url {
            Some(u) => println!("dotfiles: {u} (new workspaces clone it to ~/dotfiles)"),
            None => println!("dotfiles: none"),
        }
        Ok(())
    }
}
