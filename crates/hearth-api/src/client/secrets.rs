//! Secrets and dotfiles of the caller.

use super::{enc, Client, Result};
use crate::{Dotfiles, Secret, SetSecret};

impl Client {
    /// The caller's secrets (names and scopes; values never come back).
    pub async fn secrets(&self) -> Result<Vec<Secret>> {
        self.get("/v1/secrets").await
    }

    pub async fn set_secret(&self, key: &str, req: &SetSecret) -> Result<Secret> {
        let url = self.url(&format!("/v1/secrets/{}", enc(key)));
        Self::json(self.send(self.http.put(url).json(req)).await?).await
    }

    /// Removes the caller's secret `key`, the one of `repo` when given.
    pub async fn remove_secret(&self, key: &str, repo: Option<&str>) -> Result<()> {
        let mut req = self
            .http
            .delete(self.url(&format!("/v1/secrets/{}", enc(key))));
        if let Some(repo) = repo {
            req = req.query(&[("repo", repo)]);
        }
        self.send(req).await?;
        Ok(())
    }

    pub async fn dotfiles(&self) -> Result<Dotfiles> {
        self.get("/v1/me/dotfiles").await
    }

    /// Sets (or with `url: None` unsets) the caller's dotfiles repository.
    pub async fn set_dotfiles(&self, req: &Dotfiles) -> Result<Dotfiles> {
        let url = self.url("/v1/me/dotfiles");
        Self::json(self.send(self.http.put(url).json(req)).await?).await
    }
}
