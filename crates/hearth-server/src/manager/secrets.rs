//! A workspace owner's secrets in its sessions' environment, and the owner's dotfiles
//! installed into a new workspace's home.
//!
//! Dotfiles are cloned by the node (as the workspace's root uid, so the image needs no
//! git) and unpacked inside by `tar` as the workspace's user, into `~/dotfiles`; then, as
//! the reference CLI does, its first `install.sh`, `install`, `bootstrap.sh`, `bootstrap`,
//! `script/bootstrap`, `setup.sh`, `setup` or `script/setup` runs there, else its
//! dotfiles are linked into the home directory. They are installed once, after the
//! create-time lifecycle commands and before `postStartCommand` (the reference CLI's
//! place). A failure is a warning in `hearth up` and `hearth logs`, not a failed
//! workspace: dotfiles are one person's extras on top of the repository's environment,
//! which works without them (the reference CLI and Codespaces do the same), and a rerun
//! at the next start would repeat an install script that may not be idempotent.

use hearth_node::{ExecRequest, Progress, WorkspaceSpec};

use super::devcontainer::Devcontainer;
use super::Manager;
use crate::error::ApiError;
use crate::secrets::SecretBox;

/// Unpacks the archive on stdin into `~/dotfiles` (kept if it exists) and installs it.
const INSTALL_SCRIPT: &str = r#"set -e
cd "${HOME:?no home directory}"
if [ -e dotfiles ]; then
  echo "$HOME/dotfiles exists: kept as it is"
  cat >/dev/null
else
  mkdir dotfiles
  tar -x -f - -C dotfiles
fi
cd dotfiles
for f in install.sh install bootstrap.sh bootstrap script/bootstrap setup.sh setup script/setup; do
  if [ -f "$f" ]; then
    [ -x "$f" ] || chmod +x "$f"
    echo "running ~/dotfiles/$f"
    exec "./$f" </dev/null
  fi
done
linked=
for f in .[!.]* ..?*; do
  if [ "$f" = .git ] || { [ ! -e "$f" ] && [ ! -L "$f" ]; }; then continue; fi
  ln -sf "$PWD/$f" "$HOME/"
  linked="$linked $f"
done
if [ -n "$linked" ]; then
  echo "no install script; linked into $HOME:$linked"
else
  echo "no install script and no dotfiles to link"
fi
"#;

/// `url` with the user and password of a `scheme://user:password@host/...` URL replaced
/// by `***`.
pub(super) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[authority.len()..]),
        None => url.to_string(),
    }
}

/// `base` with `over`'s variables added or replacing those of the same name.
pub(super) fn overlay(
    mut base: Vec<(String, String)>,
    over: Vec<(String, String)>,
) -> Vec<(String, String)> {
    base.retain(|(k, _)| !over.iter().any(|(ok, _)| ok == k));
    base.extend(over);
    base
}

impl Manager {
    /// Set once at server start; secrets cannot be set or used without it.
    pub fn set_secret_box(&self, b: SecretBox) {
        if self.secret_box.set(b).is_err() {
            tracing::warn!("the secrets key was set twice; the first one stays");
        }
    }

    pub(crate) fn secret_box(&self) -> Result<&SecretBox, ApiError> {
        self.secret_box
            .get()
            .ok_or_else(|| ApiError::internal("this server has no secrets key"))
    }

    /// The workspace owner's secrets for its repository (none without a key, which only
    /// servers without secrets lack, and none in a prebuild's workspace, whose snapshot
    /// other users' workspaces may start from: not even in its owner's sessions).
    pub(super) async fn secrets_for(
        &self,
        spec: &WorkspaceSpec,
    ) -> Result<Vec<(String, String)>, ApiError> {
        let Some(sealer) = self.secret_box.get() else {
            return Ok(Vec::new());
        };
        if super::prebuilds::is_prebuild(spec) {
            return Ok(Vec::new());
        }
        let Some(rec) = self
            .store
            .get(&spec.name)
            .await?
            .filter(|r| r.spec.id == spec.id)
        else {
            return Ok(Vec::new());
        };
        crate::secrets::secret_env(&self.store, sealer, &rec.owner, &rec.spec.source).await
    }

    /// Installs the dotfiles recorded for the workspace at its create, once: whatever the
    /// outcome, the record goes; a failure is a warning line, not an error.
    pub(super) async fn install_dotfiles(
        &self,
        spec: &WorkspaceSpec,
        dc: Option<&Devcontainer>,
        progress: Option<&Progress>,
    ) -> Result<(), ApiError> {
        let Some(url) = self.store.workspace_dotfiles(spec.id.as_str()).await? else {
            return Ok(());
        };
        // Credentials in the URL (https://user:token@host/...) stay out of the console.
        let shown = redact_userinfo(&url);
        self.note(spec, progress, &format!("installing dotfiles from {shown}"))
            .await;
        if let Err(why) = self.unpack_dotfiles(spec, dc, &url, progress).await {
            let why = why.replace(&url, &shown);
            self.note(
                spec,
                progress,
                &format!("warning: dotfiles not installed: {why}"),
            )
            .await;
        }
        self.store
            .forget_workspace_dotfiles(spec.id.as_str())
            .await?;
        Ok(())
    }

    async fn unpack_dotfiles(
        &self,
        spec: &WorkspaceSpec,
        dc: Option<&Devcontainer>,
        url: &str,
        progress: Option<&Progress>,
    ) -> Result<(), String> {
        let archive = self
            .node
            .dotfiles_archive(spec, url)
            .await
            .map_err(|e| e.to_string())?;
        let base = dc.map(Devcontainer::env).unwrap_or_default();
        let env = overlay(base, self.secrets_for(spec).await.map_err(|e| e.message)?);
        let req = ExecRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), INSTALL_SCRIPT.into()],
            env,
            cwd: None,
            user: dc.and_then(|d| d.config.exec_user()).map(str::to_string),
            tty: false,
            rows: 0,
            cols: 0,
        };
        let (code, tail) = self
            .run_capture_input(spec, req, progress, "dotfiles", &archive)
            .await
            .map_err(|e| e.message)?;
        if code == 0 {
            return Ok(());
        }
        Err(format!(
            "exit code {code}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", tail.join(" / "))
            }
        ))
    }
}

impl crate::db::Store {
    pub async fn set_workspace_dotfiles(
        &self,
        id: &hearth_node::WorkspaceId,
        url: &str,
    ) -> Result<(), crate::db::StoreError> {
        crate::db::with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO workspace_dotfiles (id, url) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url",
            )
            .bind(id.as_str())
            .bind(url)
            .execute(p)
            .await
            .map_err(dotfiles_err(id.as_str()))?;
        });
        Ok(())
    }

    pub async fn workspace_dotfiles(
        &self,
        id: &str,
    ) -> Result<Option<String>, crate::db::StoreError> {
        crate::db::with_pool!(self, p => {
            sqlx::query_scalar("SELECT url FROM workspace_dotfiles WHERE id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(dotfiles_err(id))
        })
    }

    pub async fn forget_workspace_dotfiles(&self, id: &str) -> Result<(), crate::db::StoreError> {
        crate::db::with_pool!(self, p => {
            sqlx::query("DELETE FROM workspace_dotfiles WHERE id = $1")
                .bind(id)
                .execute(p)
                .await
                .map_err(dotfiles_err(id))?;
        });
        Ok(())
    }
}

fn dotfiles_err(id: &str) -> impl FnOnce(sqlx::Error) -> crate::db::StoreError + '_ {
    move |source| crate::db::StoreError::Query {
        id: id.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn credentials_in_urls_are_not_shown() {
        assert_eq!(
            redact_userinfo("https://me:tok@git.example.com/me/dots.git"),
            "https://***@git.example.com/me/dots.git"
        );
        assert_eq!(redact_userinfo("ssh://git@h:22/x"), "ssh://***@h:22/x");
        for same in ["https://h/a@b", "/srv/dots", "git@h:me/dots.git"] {
            assert_eq!(redact_userinfo(same), same);
        }
    }

    #[test]
    fn later_layers_win() {
        let got = overlay(
            env(&[("A", "1"), ("B", "1")]),
            env(&[("B", "2"), ("C", "2")]),
        );
        assert_eq!(got, env(&[("A", "1"), ("B", "2"), ("C", "2")]));
    }
}
