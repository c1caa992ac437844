//! `hearth user add|ls|rm` (`hearth user quota` is in quotas.rs).

use hearth_api::CreateUser;

use super::quotas::{quota_columns, QUOTA_HEADER};
use super::{print_table, Commands};

impl Commands {
    /// Prints the new user's token alone on stdout (for scripts); the advice goes to stderr.
    pub async fn user_add(&self, name: &str, admin: bool) -> anyhow::Result<()> {
        let u = self
            .api
            .create_user(&CreateUser {
                name: name.to_string(),
                admin,
            })
            .await?;
        eprintln!(
            "added {}user {}; its token (below) is shown only now: they use it as \
             HEARTH_TOKEN, with HEARTH_URL set to this server's address",
            if u.user.admin { "admin " } else { "" },
            u.user.name,
        );
        println!("{}", u.token);
        Ok(())
    }

    pub async fn user_list(&self, json: bool) -> anyhow::Result<()> {
        let users = self.api.users().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&users)?);
            return Ok(());
        }
        let quotas = self.api.quotas().await?.users;
        let rows: Vec<Vec<String>> = users
            .iter()
            .map(|u| {
                let mut row = vec![
                    u.name.clone(),
                    if u.admin { "yes" } else { "no" }.to_string(),
                    u.created_at.clone(),
                ];
                match quotas.iter().find(|q| q.user == u.name) {
                    Some(q) => row.extend(quota_columns(q)),
                    // Added since the first call.
                    None => row.extend(std::iter::repeat_n("?".to_string(), QUOTA_HEADER.len())),
                }
                row
            })
            .collect();
        let mut header = vec!["NAME", "ADMIN", "CREATED"];
        header.extend(QUOTA_HEADER);
        print_table(&header, &rows);
        Ok(())
    }

    pub async fn user_admin(&self, name: &str, admin: bool) -> anyhow::Result<()> {
        let u = self.api.set_user_admin(name, admin).await?;
        if u.admin {
            println!("user {} is an admin", u.name);
        } else {
            println!("user {} is a plain user", u.name);
        }
        Ok(())
    }

    pub async fn user_remove(&self, name: &str, reassign_to: Option<&str>) -> anyhow::Result<()> {
        self.api.remove_user(name, reassign_to).await?;
        match reassign_to {
            Some(heir) => println!("user {name} removed; its workspaces now belong to {heir}"),
            None => println!("user {name} removed"),
        }
        Ok(())
    }
}
