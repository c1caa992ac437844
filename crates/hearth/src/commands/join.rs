//! `hearth node token`.

use hearth_api::CreateJoinToken;

use super::Commands;

impl Commands {
    /// Prints the join token alone on stdout (for scripts); how to use it goes to stderr.
    pub async fn node_token(
        &self,
        ttl: std::time::Duration,
        node: Option<String>,
    ) -> anyhow::Result<()> {
        let t = self
            .api
            .create_join_token(&CreateJoinToken {
                ttl_seconds: Some(ttl.as_secs().max(1)),
                node,
            })
            .await?;
        eprintln!(
            "join token for {}, usable once until {}; on the node's host run:\n  \
             hearth node --server {} --name {} --join-token TOKEN",
            t.node
                .as_deref()
                .map_or("a new node".to_string(), |n| format!("node {n}")),
            t.expires_at,
            self.api.base(),
            t.node.as_deref().unwrap_or("NAME"),
        );
        println!("{}", t.token);
        Ok(())
    }
}
