//! Users' SSH public keys: parsing and checking, their table, and their routes.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use hearth_api::{AddSshKey, ErrorBody, SshInfo, SshKey};
use rand::RngCore;
use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::auth::Caller;
use crate::db::{now, with_pool, DbRow, Dialect, Store, StoreError};
use crate::error::ApiError;
use crate::state::{ApiJson, AppState};

/// Keys per user: enough for every machine a person has, small enough to scan per login.
pub const MAX_KEYS_PER_USER: usize = 64;
/// RSA keys below this many bits are refused (OpenSSH's own minimum).
const MIN_RSA_BITS: usize = 2048;

/// A parsed, accepted public key.
#[derive(Debug, Clone)]
pub struct ParsedKey {
    pub key: PublicKey,
    pub algorithm: String,
    pub fingerprint: String,
    pub comment: String,
    /// `algorithm base64`, the canonical form stored and compared.
    pub openssh: String,
}

/// SHA256 fingerprint as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses one `authorized_keys` style line, refusing what the gateway cannot verify or
/// should not trust, with a message saying what to use instead.
pub fn parse_key(line: &str) -> Result<ParsedKey, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("public_key is empty: give the contents of a .pub file".into());
    }
    if line.starts_with("-----BEGIN") {
        return Err(
            "that is a private key: give the public key (the .pub file) and keep the private key secret"
                .into(),
        );
    }
    if line.contains('\n') {
        return Err("public_key must be one key on one line".into());
    }
    let key = PublicKey::from_openssh(line).map_err(|e| {
        format!(
            "not an OpenSSH public key ({e}): expected a line like `ssh-ed25519 AAAA... comment`"
        )
    })?;
    let algorithm = key.algorithm();
    match &algorithm {
        Algorithm::Ed25519 => {}
        Algorithm::Ecdsa { .. } => {}
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .and_then(|k| k.n().as_positive_bytes().map(|b| b.len() * 8))
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits is too small: use at least {MIN_RSA_BITS} bits, or ed25519"
                ));
            }
        }
        other => {
            return Err(format!(
            "{} keys are not supported: use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa",
            other.as_str()
        ))
        }
    }
    let mut bare = key.clone();
    bare.set_comment("");
    let openssh = bare
        .to_openssh()
        .map_err(|e| format!("cannot encode key: {e}"))?
        .trim()
        .to_string();
    Ok(ParsedKey {
        algorithm: algorithm.as_str().to_string(),
        fingerprint: fingerprint(&key),
        comment: key.comment().to_string(),
        openssh,
        key,
    })
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn row_key(row: &impl DbRow) -> Result<SshKey, StoreError> {
    let get = |c: &str| -> Result<String, StoreError> {
        row.try_get::<String>(c)
            .map_err(|source| StoreError::Query {
                id: "ssh_keys".into(),
                source,
            })
    };
    Ok(SshKey {
        id: get("id")?,
        user: get("user_name")?,
        algorithm: get("algorithm")?,
        fingerprint: get("fingerprint")?,
        comment: get("comment")?,
        created_at: get("created_at")?,
    })
}

fn q(source: sqlx::Error) -> StoreError {
    StoreError::Query {
        id: "ssh_keys".into(),
        source,
    }
}

const KEY_COLUMNS: &str = "id, user_name, algorithm, fingerprint, comment, created_at";

impl Store {
    pub async fn ssh_keys(&self, user: &str) -> Result<Vec<SshKey>, StoreError> {
        with_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM ssh_keys WHERE user_name = $1 ORDER BY created_at, id"
            ))
            .bind(user)
            .fetch_all(p)
            .await
            .map_err(q)?;
            rows.iter().map(row_key).collect()
        })
    }

    /// The owner of the key with this fingerprint and the key as stored.
    pub async fn ssh_key_owner(&self, fp: &str) -> Result<Option<(String, String)>, StoreError> {
        with_pool!(self, p => {
            sqlx::query_as("SELECT user_name, public_key FROM ssh_keys WHERE fingerprint = $1")
                .bind(fp)
                .fetch_optional(p)
                .await
                .map_err(q)
        })
    }

    /// Inserts unless the fingerprint is known (`Ok(None)`). The user's row is locked
    /// shared meanwhile, so a key never outlives a user removed at the same time.
    async fn insert_ssh_key(
        &self,
        user: &str,
        k: &ParsedKey,
    ) -> Result<Option<SshKey>, StoreError> {
        let rec = SshKey {
            id: new_id(),
            user: user.to_string(),
            algorithm: k.algorithm.clone(),
            fingerprint: k.fingerprint.clone(),
            comment: k.comment.clone(),
            created_at: now(),
        };
        let inserted = with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(q)?;
            let exists = sqlx::query(&format!(
                "SELECT name FROM users WHERE name = $1{}",
                p.for_share()
            ))
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q)?
            .is_some();
            if !exists {
                return Err(StoreError::Users(sqlx::Error::RowNotFound));
            }
            let n = sqlx::query(
                "INSERT INTO ssh_keys \
                 (id, user_name, algorithm, fingerprint, public_key, comment, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(&rec.id)
            .bind(user)
            .bind(&rec.algorithm)
            .bind(&rec.fingerprint)
            .bind(&k.openssh)
            .bind(&rec.comment)
            .bind(&rec.created_at)
            .execute(&mut *tx)
            .await
            .map_err(q)?
            .rows_affected();
            tx.commit().await.map_err(q)?;
            n == 1
        });
        Ok(inserted.then_some(rec))
    }

    /// Deletes the user's key with this id or fingerprint; whether one was deleted.
    async fn delete_ssh_key(&self, user: &str, key: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query(
                "DELETE FROM ssh_keys WHERE user_name = $1 AND (id = $2 OR fingerprint = $2)",
            )
            .bind(user)
            .bind(key)
            .execute(p)
            .await
            .map_err(q)?
            .rows_affected()
        });
        Ok(n > 0)
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/ssh-keys", get(list_keys).post(add_key))
        .route("/v1/ssh-keys/{key}", delete(remove_key))
        .route("/v1/ssh", get(ssh_info))
}

/// The caller's own keys.
#[utoipa::path(get, path = "/v1/ssh-keys",
    responses((status = 200, body = Vec<SshKey>)))]
pub(crate) async fn list_keys(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<SshKey>>, ApiError> {
    Ok(Json(st.manager.store().ssh_keys(&caller.id).await?))
}

/// Registers a public key for the caller: `ssh -p PORT WORKSPACE@HOST` with it reaches
/// the caller's workspaces. Malformed or unsupported keys are 400; a key already
/// registered (by anyone) is 409.
#[utoipa::path(post, path = "/v1/ssh-keys", request_body = AddSshKey,
    responses((status = 201, body = SshKey), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn add_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AddSshKey>,
) -> Result<(StatusCode, Json<SshKey>), ApiError> {
    let parsed = parse_key(&req.public_key).map_err(ApiError::invalid)?;
    let store = st.manager.store();
    if store.ssh_keys(&caller.id).await?.len() >= MAX_KEYS_PER_USER {
        return Err(ApiError::conflict(format!(
            "user {} has {MAX_KEYS_PER_USER} keys already (hearth ssh-key rm removes one)",
            caller.id
        )));
    }
    match store.insert_ssh_key(&caller.id, &parsed).await? {
        Some(k) => {
            tracing::info!(user = %caller.id, fingerprint = k.fingerprint, "ssh key added");
            Ok((StatusCode::CREATED, Json(k)))
        }
        None => Err(ApiError::conflict(format!(
            "key {} is already registered (hearth ssh-key ls lists yours)",
            parsed.fingerprint
        ))),
    }
}

/// Removes one of the caller's keys by id or fingerprint.
#[utoipa::path(delete, path = "/v1/ssh-keys/{key}",
    params(("key" = String, Path, description = "key id or SHA256 fingerprint")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_key(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    if st.manager.store().delete_ssh_key(&caller.id, &key).await? {
        tracing::info!(user = %caller.id, key, "ssh key removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no ssh key {key} (hearth ssh-key ls lists yours)"
        )))
    }
}

/// Where the SSH gateway listens and its host key (for `hearth ssh` and `config-ssh`).
#[utoipa::path(get, path = "/v1/ssh", responses((status = 200, body = SshInfo)))]
pub(crate) async fn ssh_info(State(st): State<AppState>) -> Json<SshInfo> {
    Json((*st.ssh).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `ssh-keygen -t ed25519 -C me@laptop`; `ssh-keygen -l` prints FP for it.
    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAX17WC2Ld5MhQLHoSvMQ8tbba1kw9+WexF553xO58SZ me@laptop";
    const FP: &str = "SHA256:pdQ49QWs2R33MXdBBJDrLyEjvj78kEO+RDI56JIuDFc";

    #[test]
    fn accepts_ed25519_and_keeps_its_comment() {
        let k = parse_key(ED).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "me@laptop");
        assert_eq!(k.fingerprint, FP);
        assert!(!k.openssh.contains("me@laptop"));
    }

    #[test]
    fn refuses_garbage_private_keys_and_two_lines() {
        for bad in [
            "",
            "hello",
            "ssh-ed25519 notbase64!",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            &format!("{ED}\n{ED}"),
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
