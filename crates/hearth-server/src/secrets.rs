//! Users' secrets and dotfiles settings: encryption at rest, their tables and routes.
//!
//! A secret is sealed with XChaCha20-Poly1305 under `<data-dir>/secrets.key` (32 random
//! bytes, hex, 0600, made at first start), a fresh random nonce each time, and its owner,
//! repository and name as associated data: a copied database without the key file gives
//! nothing, and a row moved to another user or name fails to open. Values go only into
//! the environment of the owner's workspace sessions (see `manager/secrets.rs`); no route
//! answers them.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hearth_api::{
    Dotfiles, ErrorBody, Secret, SetSecret, MAX_REPO_URL, MAX_SECRET_KEY, MAX_SECRET_VALUE,
    SECRET_KEY_PATTERN,
};

use crate::auth::Caller;
use crate::db::{now, with_pool, DbRow, Dialect, Store, StoreError};
use crate::error::ApiError;
use crate::state::{ApiJson, AppState};

/// The key file in the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// Secrets per user (all repositories): their values together fit one agent request.
pub const MAX_SECRETS_PER_USER: usize = 64;
/// Bytes of all of a user's values together: even escaped six-fold in the JSON of an exec
/// request they stay under the agent's 1 MiB frame.
pub const MAX_SECRET_BYTES_PER_USER: i64 = 128 << 10;
const NONCE_LEN: usize = 24;
/// What sealing adds to a value: the nonce and Poly1305's tag.
const SEAL_OVERHEAD: i64 = NONCE_LEN as i64 + 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error("secrets key {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("secrets key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cipher for secrets, from the data dir's key file.
pub struct SecretBox(XChaCha20Poly1305);

impl SecretBox {
    pub fn from_key(key: &[u8; 32]) -> SecretBox {
        SecretBox(XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(
            key,
        )))
    }

    /// Reads `<data_dir>/secrets.key`, writing a new random key there first if there is
    /// none and the database holds no secret (`sealed`: how many it holds; a new key
    /// would make them unreadable for good). A key file others may read, or that is not a
    /// regular file, is refused.
    pub fn open_or_create(data_dir: &Path, sealed: u64) -> Result<SecretBox, SecretKeyError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| SecretKeyError::Io {
            path: path.clone(),
            source,
        };
        let bad = |reason: String| SecretKeyError::Bad {
            path: path.clone(),
            reason,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed > 0 => {
                return Err(bad(format!(
                    "missing, but the database holds {sealed} secret(s) sealed with it: \
                     restore the file from a backup, or delete them (sqlite3 hearth.db \
                     'DELETE FROM secrets') to start over"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&XChaCha20Poly1305::generate_key(&mut OsRng));
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(format!("{}\n", hex::encode(key)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "made a new secrets key");
                return Ok(SecretBox::from_key(&key));
            }
            Err(e) => return Err(io(e)),
        };
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o} lets others read it: chmod 600 it",
                meta.mode() & 0o777
            )));
        }
        let f = std::fs::File::open(&path).map_err(io)?;
        let mut text = String::new();
        f.take(256).read_to_string(&mut text).map_err(io)?;
        let key: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| bad("expected 64 hex digits (32 bytes)".into()))?;
        Ok(SecretBox::from_key(&key))
    }

    /// Nonce then ciphertext of `value`, bound to its place.
    fn seal(&self, place: &Place<'_>, value: &str) -> Result<Vec<u8>, ApiError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = place.aad();
        let ct = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| ApiError::internal("cannot encrypt the secret"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The value sealed at `place`; an error names the secret (never its value).
    fn open(&self, place: &Place<'_>, sealed: &[u8]) -> Result<String, ApiError> {
        let unreadable = || {
            ApiError::internal(format!(
                "secret {} of user {} cannot be decrypted (was {KEY_FILE} replaced?): \
                 set it again or remove it with hearth secret rm",
                place.key, place.user
            ))
        };
        if sealed.len() < NONCE_LEN {
            return Err(unreadable());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let aad = place.aad();
        let plain = self
            .0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| unreadable())?;
        String::from_utf8(plain).map_err(|_| unreadable())
    }
}

/// Where a secret belongs: its user, repository ('' for all) and name.
struct Place<'a> {
    user: &'a str,
    repo: &'a str,
    key: &'a str,
}

impl Place<'_> {
    /// Length-prefixed fields, so no two places share associated data.
    fn aad(&self) -> Vec<u8> {
        let mut out = b"hearth-secret-v1".to_vec();
        for f in [self.user, self.repo, self.key] {
            out.extend_from_slice(&(f.len() as u64).to_be_bytes());
            out.extend_from_slice(f.as_bytes());
        }
        out
    }
}

/// How a repository is compared with workspaces' sources: without surrounding blanks, a
/// trailing `/` or `.git`.
pub fn normalize_repo(repo: &str) -> String {
    let t = repo.trim().trim_end_matches('/');
    let t = t.strip_suffix(".git").unwrap_or(t);
    if t.is_empty() {
        repo.to_string()
    } else {
        t.to_string()
    }
}

/// Checks a secret's name: an environment variable name of at most [`MAX_SECRET_KEY`].
pub fn check_key(key: &str) -> Result<(), ApiError> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok
        && key.len() <= MAX_SECRET_KEY
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        let shown: String = key.chars().take(MAX_SECRET_KEY).collect();
        Err(ApiError::invalid(format!(
            "invalid secret name {shown:?}: use an environment variable name \
             ({SECRET_KEY_PATTERN}, at most {MAX_SECRET_KEY} characters)"
        )))
    }
}

fn check_value(value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::invalid(
            "a secret's value cannot hold a NUL byte (it becomes an environment variable)",
        ));
    }
    if value.chars().count() > MAX_SECRET_VALUE {
        return Err(ApiError::invalid(format!(
            "a secret's value is at most {MAX_SECRET_VALUE} characters"
        )));
    }
    Ok(())
}

/// A repository as a request names one: 1 to [`MAX_REPO_URL`] characters.
fn check_repo(repo: &str) -> Result<(), ApiError> {
    let n = repo.chars().count();
    if (1..=MAX_REPO_URL).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "a repository is 1 to {MAX_REPO_URL} characters"
        )))
    }
}

fn q(source: sqlx::Error) -> StoreError {
    StoreError::Query {
        id: "secrets".into(),
        source,
    }
}

fn listed(row: &impl DbRow) -> Result<Secret, StoreError> {
    let repo: String = row.try_get("repo").map_err(q)?;
    Ok(Secret {
        key: row.try_get("key").map_err(q)?,
        repo: (!repo.is_empty()).then_some(repo),
        created_at: row.try_get("created_at").map_err(q)?,
        updated_at: row.try_get("updated_at").map_err(q)?,
    })
}

impl Store {
    /// How many secrets (of all users) the database holds.
    pub async fn secret_count(&self) -> Result<u64, StoreError> {
        let n: i64 = with_pool!(self, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM secrets")
                .fetch_one(p)
                .await
                .map_err(q)?
        });
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn secrets(&self, user: &str) -> Result<Vec<Secret>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT key, repo, created_at, updated_at FROM secrets WHERE user_name = $1 \
                 ORDER BY key{0}, repo{0}",
                p.bytewise()
            ))
            .bind(user)
            .fetch_all(p)
            .await
            .map_err(q)?;
            rows.iter().map(listed).collect()
        })
    }

    /// Inserts or replaces; `None` when the user's other secrets leave no room (count or
    /// bytes). The user's row is locked meanwhile, so two at once cannot both fit in the
    /// room of one.
    async fn put_secret(
        &self,
        user: &str,
        repo: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<Option<Secret>, StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(q)?;
            sqlx::query(&format!("SELECT name FROM users WHERE name = $1{}", p.for_update()))
                .bind(user)
                .fetch_optional(&mut *tx)
                .await
                .map_err(q)?;
            let (others, bytes): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM secrets \
                 WHERE user_name = $1 AND NOT (repo = $2 AND key = $3)",
            )
            .bind(user)
            .bind(repo)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(q)?;
            let total = bytes - others * SEAL_OVERHEAD + sealed.len() as i64 - SEAL_OVERHEAD;
            if usize::try_from(others).unwrap_or(usize::MAX) >= MAX_SECRETS_PER_USER
                || total > MAX_SECRET_BYTES_PER_USER
            {
                return Ok(None);
            }
            let t = now();
            let row = sqlx::query(
                "INSERT INTO secrets (user_name, repo, key, value, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (user_name, repo, key) \
                 DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
                 RETURNING key, repo, created_at, updated_at",
            )
            .bind(user)
            .bind(repo)
            .bind(key)
            .bind(sealed)
            .bind(&t)
            .fetch_one(&mut *tx)
            .await
            .map_err(q)?;
            tx.commit().await.map_err(q)?;
            listed(&row).map(Some)
        })
    }

    async fn delete_secret(&self, user: &str, repo: &str, key: &str) -> Result<bool, StoreError> {
        let res = with_pool!(self, p => {
            sqlx::query("DELETE FROM secrets WHERE user_name = $1 AND repo = $2 AND key = $3")
                .bind(user)
                .bind(repo)
                .bind(key)
                .execute(p)
                .await
                .map_err(q)?
                .rows_affected()
        });
        Ok(res > 0)
    }

    /// `(repo, key, sealed value)` of the user's secrets for `repo` and for every
    /// repository.
    async fn sealed_secrets(
        &self,
        user: &str,
        repo: &str,
    ) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_as(
                "SELECT repo, key, value FROM secrets \
                 WHERE user_name = $1 AND (repo = '' OR repo = $2)",
            )
            .bind(user)
            .bind(repo)
            .fetch_all(p)
            .await
            .map_err(q)
        })
    }

    pub async fn user_dotfiles(&self, user: &str) -> Result<Option<String>, StoreError> {
        let url: Option<Option<String>> = with_pool!(self, p => {
            sqlx::query_scalar("SELECT dotfiles FROM users WHERE name = $1")
                .bind(user)
                .fetch_optional(p)
                .await
                .map_err(StoreError::Users)?
        });
        Ok(url.flatten())
    }

    async fn set_user_dotfiles(&self, user: &str, url: Option<&str>) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE users SET dotfiles = $2 WHERE name = $1")
                .bind(user)
                .bind(url)
                .execute(p)
                .await
                .map_err(StoreError::Users)?;
        });
        Ok(())
    }
}

/// The caller's secrets for a workspace of `source`, decrypted: the repository's own
/// over those of every repository.
pub(crate) async fn secret_env(
    store: &Store,
    sealer: &SecretBox,
    user: &str,
    source: &str,
) -> Result<Vec<(String, String)>, ApiError> {
    let repo = normalize_repo(source);
    let mut rows = store.sealed_secrets(user, &repo).await?;
    // Unscoped first, so a repository's own secret of the same name replaces it.
    rows.sort_by_key(|(repo, _, _)| !repo.is_empty());
    let mut env = std::collections::BTreeMap::new();
    for (repo, key, sealed) in rows {
        let place = Place {
            user,
            repo: &repo,
            key: &key,
        };
        let value = sealer.open(&place, &sealed)?;
        env.insert(key, value);
    }
    Ok(env.into_iter().collect())
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/secrets", get(list_secrets))
        .route(
            "/v1/secrets/{key}",
            axum::routing::put(set_secret).delete(remove_secret),
        )
        .route("/v1/me/dotfiles", get(get_dotfiles).put(set_dotfiles))
}

/// A secret's name in the path.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretKeyPath {
    /// The environment variable the secret sets.
    #[param(pattern = "^[A-Za-z_][A-Za-z0-9_]*$", min_length = 1, max_length = 128)]
    pub key: String,
}

/// Query of `DELETE /v1/secrets/{key}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SecretRepoQuery {
    /// The repository the secret is limited to; absent: the secret of every repository.
    #[param(min_length = 1, max_length = 4096)]
    pub repo: Option<String>,
}

/// The caller's secrets: names, repositories and times, never values.
#[utoipa::path(get, path = "/v1/secrets", responses((status = 200, body = Vec<Secret>)))]
pub(crate) async fn list_secrets(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<Secret>>, ApiError> {
    Ok(Json(st.manager.store().secrets(&caller.id).await?))
}

/// Sets one of the caller's secrets (replacing its value if it exists): an environment
/// variable of every session and lifecycle command in the caller's workspaces (of `repo`
/// only, when given), from their next session on. The value is stored encrypted and never
/// answered.
#[utoipa::path(put, path = "/v1/secrets/{key}", params(SecretKeyPath), request_body = SetSecret,
    responses((status = 200, body = Secret),
        (status = 409, description = "the user has the most secrets allowed", body = ErrorBody)))]
pub(crate) async fn set_secret(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(key): axum::extract::Path<String>,
    ApiJson(req): ApiJson<SetSecret>,
) -> Result<Json<Secret>, ApiError> {
    check_key(&key)?;
    check_value(&req.value)?;
    req.repo.as_deref().map(check_repo).transpose()?;
    let repo = req.repo.as_deref().map(normalize_repo).unwrap_or_default();
    let place = Place {
        user: &caller.id,
        repo: &repo,
        key: &key,
    };
    let sealed = st.manager.secret_box()?.seal(&place, &req.value)?;
    match st
        .manager
        .store()
        .put_secret(&caller.id, &repo, &key, &sealed)
        .await?
    {
        Some(s) => {
            tracing::info!(user = %caller.id, key = %key, repo = %repo, "secret set");
            Ok(Json(s))
        }
        None => Err(ApiError::conflict(format!(
            "user {} has no room for this secret: at most {MAX_SECRETS_PER_USER} secrets of \
             {} KiB together (hearth secret rm removes one)",
            caller.id,
            MAX_SECRET_BYTES_PER_USER >> 10
        ))),
    }
}

/// Removes one of the caller's secrets (the one of `repo` when given).
#[utoipa::path(delete, path = "/v1/secrets/{key}", params(SecretKeyPath, SecretRepoQuery),
    responses((status = 204),
        (status = 400, description = "the name or repository can never be a secret's", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_secret(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(key): axum::extract::Path<String>,
    query: Result<Query<SecretRepoQuery>, QueryRejection>,
) -> Result<axum::http::StatusCode, ApiError> {
    let Query(query) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    check_key(&key)?;
    query.repo.as_deref().map(check_repo).transpose()?;
    let repo = query
        .repo
        .as_deref()
        .map(normalize_repo)
        .unwrap_or_default();
    if st
        .manager
        .store()
        .delete_secret(&caller.id, &repo, &key)
        .await?
    {
        tracing::info!(user = %caller.id, key = %key, repo = %repo, "secret removed");
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        let scope = if repo.is_empty() {
            "for every repository".to_string()
        } else {
            format!("for {repo}")
        };
        Err(ApiError::not_found(format!(
            "no secret {key} {scope} (hearth secret ls lists yours)"
        )))
    }
}

/// The caller's dotfiles repository.
#[utoipa::path(get, path = "/v1/me/dotfiles", responses((status = 200, body = Dotfiles)))]
pub(crate) async fn get_dotfiles(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Dotfiles>, ApiError> {
    Ok(Json(Dotfiles {
        url: st.manager.store().user_dotfiles(&caller.id).await?,
    }))
}

/// Sets the caller's dotfiles repository (`url: null` unsets it). Workspaces the caller
/// makes from now on clone it to `~/dotfiles` and run its install script (or link its
/// dotfiles into the home directory); existing ones are left alone.
#[utoipa::path(put, path = "/v1/me/dotfiles", request_body = Dotfiles,
    responses((status = 200, body = Dotfiles), (status = 400, body = ErrorBody),
        (status = 403, description = "a non-admin named a path on the server", body = ErrorBody)))]
pub(crate) async fn set_dotfiles(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<Dotfiles>,
) -> Result<Json<Dotfiles>, ApiError> {
    req.url.as_deref().map(check_repo).transpose()?;
    let url = req.url.as_deref().map(str::trim);
    if let Some(u) = url {
        caller.check_source("dotfiles repository", u)?;
        hearth_node::validate_source(u).map_err(|e| {
            ApiError::invalid(format!(
                "dotfiles: {}",
                e.to_string().replace("source", "repository")
            ))
        })?;
    }
    st.manager
        .store()
        .set_user_dotfiles(&caller.id, url)
        .await?;
    tracing::info!(user = %caller.id, set = url.is_some(), "dotfiles repository changed");
    Ok(Json(Dotfiles {
        url: url.map(str::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place<'a>(user: &'a str, repo: &'a str, key: &'a str) -> Place<'a> {
        Place { user, repo, key }
    }

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let b = SecretBox::from_key(&[7; 32]);
        let here = place("alice", "", "TOKEN");
        let sealed = b.seal(&here, "s3cret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(b.open(&here, &sealed).unwrap(), "s3cret");
        // Same value, fresh nonce: nothing to compare ciphertexts by.
        assert_ne!(b.seal(&here, "s3cret").unwrap(), sealed);
        for other in [
            place("bob", "", "TOKEN"),
            place("alice", "/r", "TOKEN"),
            place("alice", "", "TOKEN2"),
            // Moving bytes between fields is a different place too.
            place("alic", "e", "TOKEN"),
        ] {
            let err = b.open(&other, &sealed).unwrap_err();
            assert!(!err.message.contains("s3cret"), "{}", err.message);
        }
        let other_key = SecretBox::from_key(&[8; 32]);
        assert!(other_key.open(&here, &sealed).is_err());
        assert!(b.open(&here, &sealed[..10]).is_err());
    }

    #[test]
    fn key_file_is_made_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::open_or_create(dir.path(), 0).unwrap();
        let path = dir.path().join(KEY_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "key file mode"
        );
        let p = place("u", "", "K");
        let sealed = a.seal(&p, "v").unwrap();
        let b = SecretBox::open_or_create(dir.path(), 1).unwrap();
        assert_eq!(b.open(&p, &sealed).unwrap(), "v");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::open_or_create(dir.path(), 1).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "abcd\n").unwrap();
        let err = SecretBox::open_or_create(dir.path(), 1).err().unwrap();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        // Lost while secrets sealed with it remain: no new key that could open none.
        std::fs::remove_file(&path).unwrap();
        let err = SecretBox::open_or_create(dir.path(), 3).err().unwrap();
        assert!(err.to_string().contains("holds 3 secret(s)"), "{err}");
        assert!(!path.exists());
    }

    crate::db::testdb::on_both_backends!(room_per_user_and_repository_secrets_first);

    async fn room_per_user_and_repository_secrets_first(b: crate::db::testdb::Backend) {
        let db = crate::db::testdb::TestDb::new(b);
        let store = db.store().await;
        let b = SecretBox::from_key(&[1; 32]);
        let put = |user: &'static str, repo: &'static str, key: String, value: String| {
            let (store, b) = (&store, &b);
            async move {
                let sealed = b.seal(&place(user, repo, &key), &value).unwrap();
                store
                    .put_secret(user, repo, &key, &sealed)
                    .await
                    .unwrap()
                    .is_some()
            }
        };
        // 32 values of 4 KiB fill a user's 128 KiB; replacing one needs no more room.
        let big = "x".repeat(MAX_SECRET_VALUE);
        for i in 0..32 {
            assert!(put("u", "", format!("K{i}"), big.clone()).await, "K{i}");
        }
        assert!(!put("u", "", "ONE_MORE".into(), "x".into()).await);
        assert!(put("u", "", "K0".into(), big.clone()).await);
        // Another user has their own room, up to 64 secrets.
        for i in 0..MAX_SECRETS_PER_USER {
            assert!(put("v", "", format!("K{i}"), "x".into()).await, "K{i}");
        }
        assert!(!put("v", "/r", "K0".into(), "x".into()).await);
        // A repository's own secret wins for its workspaces only.
        assert!(put("p", "", "K1".into(), "all".into()).await);
        assert!(put("p", "", "K2".into(), "two".into()).await);
        assert!(put("p", "/r", "K1".into(), "mine".into()).await);
        let env = secret_env(&store, &b, "p", "/r.git/").await.unwrap();
        assert_eq!(
            env,
            [("K1".into(), "mine".into()), ("K2".into(), "two".into())]
        );
        let env = secret_env(&store, &b, "p", "/other").await.unwrap();
        assert_eq!(
            env,
            [("K1".into(), "all".into()), ("K2".into(), "two".into())]
        );
        assert!(secret_env(&store, &b, "w", "/r").await.unwrap().is_empty());
    }

    #[test]
    fn names_values_and_repositories() {
        for ok in ["A", "_x", "GITHUB_TOKEN", "a1_b2"] {
            check_key(ok).unwrap();
        }
        for bad in ["", "1A", "A-B", "A B", "É", &"A".repeat(MAX_SECRET_KEY + 1)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        check_value(&"é".repeat(MAX_SECRET_VALUE)).unwrap();
        assert!(check_value(&"x".repeat(MAX_SECRET_VALUE + 1)).is_err());
        assert!(check_value("a\0b").is_err());
        assert_eq!(normalize_repo("https://h/a/b.git/"), "https://h/a/b");
        assert_eq!(normalize_repo(" /srv/r/ "), "/srv/r");
        assert_eq!(normalize_repo("/"), "/");
    }
}
