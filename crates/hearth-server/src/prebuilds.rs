//! Prebuild routes: build one (`hearth prebuild`), list them (`hearth prebuilds`), and
//! the forges' push webhooks that refresh them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hearth_api::{
    CreatePrebuild, ErrorBody, Prebuild, PrebuildRun, PrebuildRunLog, PrebuildRunOptions,
    PrebuildTrigger, WebhookResult, NDJSON,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::api::StreamLineDoc;
use crate::auth::Caller;
use crate::db::DeliveryClaim;
use crate::error::ApiError;
use crate::ndjson;
use crate::state::{ApiJson, AppState};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/prebuilds", get(list_prebuilds).post(create_prebuild))
        .route(
            "/v1/prebuilds/{snapshot}",
            axum::routing::delete(remove_prebuild),
        )
        .route("/v1/prebuild-runs", get(list_prebuild_runs))
        .route("/v1/prebuild-runs/{id}", get(get_prebuild_run))
}

/// A prebuild run's id in the path.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PrebuildRunPath {
    /// The run's id, as `hearth prebuilds` lists it.
    #[param(pattern = "^[0-9a-f]{12}$", min_length = 12, max_length = 12)]
    pub id: String,
}

/// A prebuild's snapshot id in the path.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PrebuildPath {
    /// The prebuild's snapshot id, as `hearth prebuilds` lists it.
    #[param(pattern = "^[0-9a-f]{32}$", min_length = 32, max_length = 32)]
    pub snapshot: String,
}

/// The webhook route: outside the token check (the forge has no token; the secret is
/// checked instead).
pub(crate) fn public_routes() -> Router<AppState> {
    Router::new().route("/v1/hooks/{forge}", axum::routing::post(webhook))
}

/// Builds a prebuild of a repository: a workspace from its devcontainer.json through
/// `updateContentCommand`, snapshotted and removed. Checked like a create before the
/// ndjson stream starts (400, 404, 409); a failing command ends the stream with its
/// output.
#[utoipa::path(post, path = "/v1/prebuilds", request_body = CreatePrebuild,
    responses((status = 200, description = "ndjson progress lines, then the Prebuild or an error",
        content_type = "application/x-ndjson", body = StreamLineDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "a non-admin's source is a path on the server", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_prebuild(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreatePrebuild>,
) -> Response {
    let plan = match st.manager.plan_prebuild(&caller, req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    ndjson::stream(
        move |p| async move { st.manager.run_prebuild(plan, p, PrebuildTrigger::Cli).await },
    )
}

/// The caller's prebuild runs (an admin's: everyone's), newest first: those under way,
/// and the recent ones of each repository and branch with their outcome (a failed one
/// says why). The newest runs of each series are kept.
#[utoipa::path(get, path = "/v1/prebuild-runs",
    responses((status = 200, body = Vec<PrebuildRun>), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_prebuild_runs(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<PrebuildRun>>, ApiError> {
    Ok(Json(st.manager.prebuild_runs(&caller).await?))
}

/// One prebuild run with the last lines of its output (`hearth prebuild logs ID`), also
/// while it runs; with `follow`, its output streamed until it ends, then the run
/// (`hearth prebuild logs -f ID`).
#[utoipa::path(get, path = "/v1/prebuild-runs/{id}", params(PrebuildRunPath, PrebuildRunOptions),
    responses((status = 200, description = "the run with its log; with follow, ndjson progress \
        lines (its output) and then the PrebuildRun once it ended, or an error",
        content((PrebuildRunLog = "application/json"), (StreamLineDoc = "application/x-ndjson"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_prebuild_run(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(PrebuildRunPath { id }): Path<PrebuildRunPath>,
    query: Result<Query<PrebuildRunOptions>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(opts) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    if !opts.follow {
        return Ok(Json(st.manager.prebuild_run(&caller, &id).await?).into_response());
    }
    let rx = st.manager.follow_prebuild_run(&caller, &id).await?;
    Ok(crate::api::followed(rx, NDJSON))
}

/// The prebuilds the caller's `up` may start from (their own and admins'), newest first.
#[utoipa::path(get, path = "/v1/prebuilds",
    responses((status = 200, body = Vec<Prebuild>), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_prebuilds(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<Prebuild>>, ApiError> {
    Ok(Json(st.manager.prebuilds(&caller).await?))
}

/// Removes a prebuild (its owner's or, for an admin, anyone's): `up` no longer starts
/// from it, and the image it ran on is no longer held for it. A series left with no
/// prebuild has its snapshots forgotten (their chunks go at the next store gc) and is
/// no longer refreshed by webhooks; otherwise the snapshot stays for the retention to
/// drop with the series' others.
#[utoipa::path(delete, path = "/v1/prebuilds/{snapshot}", params(PrebuildPath),
    responses((status = 204), (status = 401, body = ErrorBody),
        (status = 403, description = "another user's (shared) prebuild", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_prebuild(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(PrebuildPath { snapshot }): Path<PrebuildPath>,
) -> Result<StatusCode, ApiError> {
    st.manager.remove_prebuild(&caller, &snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A forge whose push webhooks start prebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

impl Forge {
    fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }

    /// The headers naming a delivery, the same when it is sent again, by preference:
    /// GitLab's `Idempotency-Key` is the one kept across its retries (GitLab 17.4 on).
    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Forge::GitHub => &["x-github-delivery"],
            Forge::Gitea => &["x-gitea-delivery"],
            Forge::GitLab => &["idempotency-key", "x-gitlab-event-uuid"],
        }
    }
}

impl std::str::FromStr for Forge {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Forge, ApiError> {
        match s {
            "github" => Ok(Forge::GitHub),
            "gitlab" => Ok(Forge::GitLab),
            "gitea" => Ok(Forge::Gitea),
            _ => Err(ApiError::not_found(format!(
                "no webhook for {s:?}: use /v1/hooks/github, /v1/hooks/gitlab or /v1/hooks/gitea"
            ))),
        }
    }
}

/// A push as a forge's webhook describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The repository's clone URLs (https and ssh), as the forge knows them.
    pub urls: Vec<String>,
    /// The pushed branch (`refs/heads/` stripped).
    pub branch: String,
    pub default_branch: Option<String>,
    /// The commit the branch now points at, when the event says.
    pub after: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Longest delivery id taken (the forges send UUIDs, 36 characters).
pub const MAX_DELIVERY_ID: usize = 100;

/// The forge's id of a delivery (see [`Forge::delivery_headers`]) as the key its answer is
/// kept under (`forge:id`); `None` when the request names none. An id is 1 to
/// [`MAX_DELIVERY_ID`] ASCII letters, digits, `-`, `_` or `.`, given once.
pub fn delivery_key(forge: Forge, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    for name in forge.delivery_headers() {
        let mut values = headers.get_all(*name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(ApiError::invalid(format!(
                "webhook refused: more than one {name} header"
            )));
        }
        let id = value.as_bytes();
        if id.is_empty()
            || id.len() > MAX_DELIVERY_ID
            || !id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        {
            return Err(ApiError::invalid(format!(
                "webhook refused: {name} must be 1 to {MAX_DELIVERY_ID} ASCII letters, digits, \
                 '-', '_' or '.' (got {} bytes)",
                id.len()
            )));
        }
        let id = String::from_utf8_lossy(id);
        return Ok(Some(format!("{}:{id}", forge.name())));
    }
    Ok(None)
}

/// Checks that `body` comes from someone who knows `secret`: GitHub and Gitea sign it
/// (HMAC-SHA256, hex; GitHub prefixes `sha256=`), GitLab sends the secret as a token.
/// Compared in constant time.
pub fn verify(
    forge: Forge,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let refused = |why: &str| ApiError::unauthorized(format!("webhook refused: {why}"));
    match forge {
        Forge::GitHub | Forge::Gitea => {
            let (name, prefix) = match forge {
                Forge::GitHub => ("x-hub-signature-256", "sha256="),
                _ => ("x-gitea-signature", ""),
            };
            let sig = header(headers, name)
                .and_then(|v| v.strip_prefix(prefix))
                .ok_or_else(|| refused(&format!("no {name} header")))?;
            let sig = hex::decode(sig.trim()).map_err(|_| refused("the signature is not hex"))?;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes a key of any length");
            mac.update(body);
            mac.verify_slice(&sig)
                .map_err(|_| refused("the signature does not match the secret"))
        }
        Forge::GitLab => {
            let token = header(headers, "x-gitlab-token")
                .ok_or_else(|| refused("no X-Gitlab-Token header"))?;
            // Equal hashes, compared as MACs of them: no early exit on the secret's bytes.
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes a key of any length");
            mac.update(&Sha256::digest(token.as_bytes()));
            let mut want =
                Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes a key of any length");
            want.update(&Sha256::digest(secret));
            mac.verify_slice(&want.finalize().into_bytes())
                .map_err(|_| refused("the token does not match the secret"))
        }
    }
}

/// The push a verified webhook body describes; `None` for other events (a ping, a tag,
/// a deleted branch).
pub fn parse_push(
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Push>, ApiError> {
    let event = match forge {
        Forge::GitHub => header(headers, "x-github-event"),
        Forge::Gitea => header(headers, "x-gitea-event"),
        Forge::GitLab => header(headers, "x-gitlab-event"),
    };
    if !matches!(event, Some("push" | "Push Hook")) {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("webhook body is not JSON: {e}")))?;
    let Some(branch) = v["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return Ok(None);
    };
    if v["deleted"].as_bool() == Some(true)
        || v["after"]
            .as_str()
            .is_some_and(|a| a.bytes().all(|b| b == b'0'))
    {
        return Ok(None);
    }
    let repo = match forge {
        Forge::GitLab => &v["project"],
        _ => &v["repository"],
    };
    let keys: &[&str] = match forge {
        Forge::GitLab => &["git_http_url", "git_ssh_url", "http_url", "ssh_url"],
        _ => &["clone_url", "ssh_url", "html_url"],
    };
    let urls: Vec<String> = keys
        .iter()
        .filter_map(|k| repo[*k].as_str())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(ApiError::invalid("webhook body names no repository URL"));
    }
    Ok(Some(Push {
        urls,
        branch: branch.to_string(),
        default_branch: repo["default_branch"].as_str().map(str::to_string),
        after: v["after"].as_str().map(str::to_string),
    }))
}

/// A push webhook from GitHub, GitLab or Gitea (`forge`): refreshes the prebuilds of the
/// pushed repository and branch that exist already (made by `hearth prebuild`, as their
/// owner), in the background. Needs no token; the request must carry the server's
/// webhook secret (`hearth server --webhook-secret-file`): GitHub and Gitea sign the body
/// with it, GitLab sends it. Nothing else is built: a webhook never names a new source.
/// A delivery the forge names (`X-GitHub-Delivery`, `X-Gitea-Delivery`, GitLab's
/// `Idempotency-Key` or else `X-Gitlab-Event-UUID`) that was answered in the last days is
/// answered the same again and starts nothing (a retry, a redelivery).
#[utoipa::path(post, path = "/v1/hooks/{forge}", security(()),
    params(("forge" = String, Path, description = "github, gitlab or gitea"),
        ("X-GitHub-Delivery" = Option<String>, Header, max_length = 100, pattern = "^[A-Za-z0-9._-]+$",
            description = "GitHub's delivery id: a redelivery is answered as the first and starts nothing"),
        ("X-Gitea-Delivery" = Option<String>, Header, max_length = 100, pattern = "^[A-Za-z0-9._-]+$",
            description = "Gitea's delivery id, likewise"),
        ("Idempotency-Key" = Option<String>, Header, max_length = 100, pattern = "^[A-Za-z0-9._-]+$",
            description = "GitLab's (17.4 on) id of an event, the same on its retries"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header, max_length = 100, pattern = "^[A-Za-z0-9._-]+$",
            description = "GitLab's event id, used without an Idempotency-Key")),
    request_body(content = serde_json::Value, description = "the forge's push event"),
    responses((status = 202, body = WebhookResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the delivery id came before with another body, or \
            its first copy is still being handled", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub(crate) async fn webhook(
    State(st): State<AppState>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<WebhookResult>), ApiError> {
    let forge: Forge = forge.parse()?;
    let Some(secret) = st.manager.webhook_secret() else {
        return Err(ApiError::not_found(
            "webhooks are off: start the server with --webhook-secret-file",
        ));
    };
    verify(forge, &secret, &headers, &body)?;
    let handle = || async {
        match parse_push(forge, &headers, &body)? {
            Some(push) => st.manager.prebuild_push(&push).await,
            None => Ok(WebhookResult {
                started: Vec::new(),
                runs: Vec::new(),
            }),
        }
    };
    let result = match delivery_key(forge, &headers)? {
        Some(key) => once(st.manager.store(), &key, &body, handle).await?,
        None => handle().await?,
    };
    Ok((StatusCode::ACCEPTED, Json(result)))
}

/// How long a delivery's answer is kept for redeliveries (GitHub redelivers up to three
/// days back; GitLab's and Gitea's are kept for days too).
const DELIVERY_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// The most deliveries kept (the newest): forgotten early past them.
const DELIVERIES_KEPT: i64 = 10_000;
/// An unanswered claim this old is of a server that died handling it: taken over.
const DELIVERY_STALE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a copy waits for the first copy of its delivery, being handled, to answer.
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Handles delivery `key` once across the servers of the database: a copy of a delivery
/// handled in the last [`DELIVERY_KEPT`] gets its answer (a failed one is handled anew),
/// one with another body is refused.
async fn once<F, Fut>(
    store: &crate::db::Store,
    key: &str,
    body: &[u8],
    handle: F,
) -> Result<WebhookResult, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<WebhookResult, ApiError>>,
{
    let sha = hex::encode(Sha256::digest(body));
    let ago = |d: std::time::Duration| {
        crate::db::fixed_time(
            time::OffsetDateTime::now_utc()
                - time::Duration::try_from(d).unwrap_or(time::Duration::ZERO),
        )
    };
    let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
    loop {
        match store
            .claim_delivery(key, &sha, &ago(DELIVERY_STALE))
            .await?
        {
            DeliveryClaim::New => break,
            DeliveryClaim::Answered(answer) => {
                tracing::info!(
                    delivery = key,
                    "webhook delivery seen before: answered as then"
                );
                return serde_json::from_str(&answer).map_err(|e| {
                    ApiError::internal(format!("delivery {key}'s recorded answer: {e}"))
                });
            }
            DeliveryClaim::OtherBody => {
                return Err(ApiError::conflict(format!(
                    "webhook refused: delivery {key} came before with another body"
                )))
            }
            DeliveryClaim::Pending if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::conflict(format!(
                    "delivery {key} is still being handled: redeliver it later"
                )))
            }
            DeliveryClaim::Pending => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
        }
    }
    match store
        .prune_deliveries(&ago(DELIVERY_KEPT), DELIVERIES_KEPT)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::debug!(forgotten = n, "old webhook deliveries forgotten"),
        Err(e) => tracing::warn!(error = %e, "cannot prune webhook deliveries"),
    }
    match handle().await {
        Ok(result) => {
            let answer = serde_json::to_string(&result)
                .map_err(|e| ApiError::internal(format!("webhook answer: {e}")))?;
            if let Err(e) = store.answer_delivery(key, &answer).await {
                // Its claim goes stale: a redelivery after that is handled again.
                tracing::warn!(delivery = key, error = %e, "cannot record a webhook delivery's answer");
            }
            Ok(result)
        }
        Err(e) => {
            if let Err(re) = store.release_delivery(key).await {
                tracing::warn!(delivery = key, error = %re, "cannot release a failed webhook delivery");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn signatures_and_tokens_are_checked() {
        let (secret, body) = (
            b"s3cret".as_slice(),
            br#"{"ref":"refs/heads/main"}"#.as_slice(),
        );
        let good = sign(secret, body);
        let gh = headers(&[("x-hub-signature-256", &format!("sha256={good}"))]);
        assert!(verify(Forge::GitHub, secret, &gh, body).is_ok());
        assert!(verify(Forge::GitHub, b"other", &gh, body).is_err());
        assert!(verify(Forge::GitHub, secret, &gh, b"{}").is_err());
        // Gitea: the same HMAC without a prefix, in its own header.
        assert!(verify(
            Forge::Gitea,
            secret,
            &headers(&[("x-gitea-signature", &good)]),
            body
        )
        .is_ok());
        assert!(verify(Forge::Gitea, secret, &gh, body).is_err());
        let e = verify(Forge::GitHub, secret, &HeaderMap::new(), body).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        // GitLab: the secret itself.
        assert!(verify(
            Forge::GitLab,
            secret,
            &headers(&[("x-gitlab-token", "s3cret")]),
            body
        )
        .is_ok());
        assert!(verify(
            Forge::GitLab,
            secret,
            &headers(&[("x-gitlab-token", "s3cre")]),
            body
        )
        .is_err());
    }

    #[test]
    fn delivery_ids_are_read_per_forge_and_checked() {
        let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
        let key = |forge, h: &[(&'static str, &str)]| delivery_key(forge, &headers(h));
        assert_eq!(
            key(Forge::GitHub, &[("x-github-delivery", id)]).unwrap(),
            Some(format!("github:{id}"))
        );
        assert_eq!(
            key(Forge::Gitea, &[("x-gitea-delivery", id)]).unwrap(),
            Some(format!("gitea:{id}"))
        );
        // Gitea also sends GitHub's header; each forge's own is the one read.
        assert_eq!(
            key(Forge::Gitea, &[("x-github-delivery", id)]).unwrap(),
            None
        );
        // GitLab: the idempotency key (kept across its retries) before the event's id.
        assert_eq!(
            key(
                Forge::GitLab,
                &[("x-gitlab-event-uuid", "e1"), ("idempotency-key", "k1")]
            )
            .unwrap(),
            Some("gitlab:k1".into())
        );
        assert_eq!(
            key(Forge::GitLab, &[("x-gitlab-event-uuid", "e1")]).unwrap(),
            Some("gitlab:e1".into())
        );
        assert_eq!(key(Forge::GitHub, &[]).unwrap(), None);
        // Hostile ids are refused, never echoed.
        let long = "a".repeat(MAX_DELIVERY_ID + 1);
        assert!(key(
            Forge::GitHub,
            &[("x-github-delivery", &"a".repeat(MAX_DELIVERY_ID))]
        )
        .is_ok());
        for bad in ["", "a b", "a/b", "a:b", "%41", long.as_str()] {
            let e = key(Forge::GitHub, &[("x-github-delivery", bad)]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.contains("x-github-delivery must be"), "{e}");
            assert!(!e.message.contains(&long), "{e}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-github-delivery",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(delivery_key(Forge::GitHub, &h).is_err());
        h.append("x-github-delivery", "b".parse().unwrap());
        let e = delivery_key(Forge::GitHub, &h).unwrap_err();
        assert!(e.message.contains("more than one"), "{e}");
    }

    #[test]
    fn pushes_are_read_per_forge() {
        let gh = br#"{"ref":"refs/heads/dev","after":"1111111111111111111111111111111111111111",
            "repository":{"clone_url":"https://g.example/a/b.git","ssh_url":"git@g.example:a/b.git",
            "default_branch":"main"}}"#;
        let push = parse_push(Forge::GitHub, &headers(&[("x-github-event", "push")]), gh)
            .unwrap()
            .unwrap();
        assert_eq!(push.branch, "dev");
        assert_eq!(push.default_branch.as_deref(), Some("main"));
        assert_eq!(
            push.urls[..2],
            ["https://g.example/a/b.git", "git@g.example:a/b.git"]
        );
        // Other events, tags and deletions start nothing.
        assert_eq!(
            parse_push(Forge::GitHub, &headers(&[("x-github-event", "ping")]), gh).unwrap(),
            None
        );
        let tag = br#"{"ref":"refs/tags/v1","repository":{"clone_url":"x"}}"#;
        assert_eq!(
            parse_push(Forge::Gitea, &headers(&[("x-gitea-event", "push")]), tag).unwrap(),
            None
        );
        let gone = br#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","project":{"git_http_url":"x"}}"#;
        assert_eq!(
            parse_push(
                Forge::GitLab,
                &headers(&[("x-gitlab-event", "Push Hook")]),
                gone
            )
            .unwrap(),
            None
        );
        let gl = br#"{"ref":"refs/heads/main","after":"2222222222222222222222222222222222222222",
            "project":{"git_http_url":"https://l.example/a/b.git","default_branch":"main"}}"#;
        let push = parse_push(
            Forge::GitLab,
            &headers(&[("x-gitlab-event", "Push Hook")]),
            gl,
        )
        .unwrap()
        .unwrap();
        assert_eq!(push.urls, ["https://l.example/a/b.git"]);
        assert!(parse_push(
            Forge::GitHub,
            &headers(&[("x-github-event", "push")]),
            b"nope"
        )
        .is_err());
    }
}
