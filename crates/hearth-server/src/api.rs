//! HTTP routes, token auth and the OpenAPI document.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use hearth_node::WorkspaceSpec;
use hearth_proto::Event;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::{require_token, Admin, Caller};
use crate::contract::Contract;
use crate::error::ApiError;
use crate::manager::Manager;
use crate::ndjson;
use crate::ratelimit::{self, Limiter};
use crate::state::{ApiJson, AppState, WsName, BODY_LIMIT};
use hearth_api::*;

const SIGHUP: i32 = 1;

/// How long a finished session waits for the client to close its side.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let comps = doc.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Hearth", description = "Self-hosted development workspaces."),
    paths(
        health, openapi_json, list_images, load_image, upload_image, build_image, pull_image, remove_image, list_workspaces,
        create_workspace, get_workspace, update_workspace, inspect_workspace, start_workspace, stop_workspace,
        remove_workspace, workspace_logs, exec_workspace, set_egress, edit_egress, set_limits,
        crate::ports::list_ports, crate::ports::set_port, crate::ports::port_login,
        crate::ports::forward_port,
        crate::snapshots::take_snapshot, crate::snapshots::list_snapshots,
        crate::snapshots::store_usage, crate::snapshots::list_deleted,
        crate::snapshots::restore_deleted,
        crate::snapshots::fork_workspace, crate::snapshots::store_fsck, crate::snapshots::store_gc,
        crate::users::me, crate::users::list_users, crate::users::create_user,
        crate::sessions::auth_methods, crate::sessions::create_session,
        crate::sessions::get_session, crate::sessions::logout, crate::sessions::new_token,
        crate::users::remove_user, crate::users::update_user, crate::users::user_quota, crate::users::set_user_quota,
        crate::users::reset_user_quota, crate::users::list_quotas, crate::users::set_default_quota,
        crate::nodes::list_nodes, crate::nodes::drain_node, crate::nodes::undrain_node,
        crate::nodes::set_labels, crate::nodes::remove_node, crate::nodes::move_workspace,
        crate::ssh_keys::list_keys, crate::ssh_keys::add_key, crate::ssh_keys::remove_key,
        crate::ssh_keys::ssh_info, crate::metrics::scrape,
        crate::secrets::list_secrets, crate::secrets::set_secret, crate::secrets::remove_secret,
        crate::secrets::get_dotfiles, crate::secrets::set_dotfiles,
        crate::prebuilds::create_prebuild, crate::prebuilds::list_prebuilds,
        crate::prebuilds::remove_prebuild, crate::prebuilds::list_prebuild_runs,
        crate::prebuilds::get_prebuild_run,
        crate::prebuilds::webhook, crate::links::create_join_token, crate::links::join,
        crate::audit::list_audit
    ),
    components(schemas(StreamLineDoc)),
    modifiers(&BearerAuth, &Contract),
    security(("token" = []))
)]
pub struct ApiDoc;

/// Shape of one ndjson line: exactly one of the three fields is present.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct StreamLineDoc {
    progress: Option<String>,
    result: Option<serde_json::Value>,
    error: Option<ErrorInfo>,
}

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/images", get(list_images))
        .route("/v1/images/load", post(load_image))
        .route("/v1/images/upload", post(upload_image))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/pull", post(pull_image))
        .route("/v1/images/{reference}", delete(remove_image))
        .route(
            "/v1/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route(
            "/v1/workspaces/{name}",
            get(get_workspace)
                .patch(update_workspace)
                .delete(remove_workspace),
        )
        .route("/v1/workspaces/{name}/inspect", get(inspect_workspace))
        .route("/v1/workspaces/{name}/start", post(start_workspace))
        .route("/v1/workspaces/{name}/stop", post(stop_workspace))
        .route("/v1/workspaces/{name}/logs", get(workspace_logs))
        .route(
            "/v1/workspaces/{name}/egress",
            put(set_egress).patch(edit_egress),
        )
        .route("/v1/workspaces/{name}/limits", patch(set_limits))
        .route("/v1/workspaces/{name}/exec", get(exec_workspace))
        .route("/metrics", get(crate::metrics::scrape))
        .merge(crate::snapshots::routes())
        .merge(crate::ports::routes())
        .merge(crate::users::routes())
        .merge(crate::nodes::routes())
        .merge(crate::ssh_keys::routes())
        .merge(crate::secrets::routes())
        .merge(crate::prebuilds::routes())
        .merge(crate::links::routes())
        .merge(crate::sessions::routes())
        .merge(crate::audit::routes())
        // Layers run outside in: the token check first, then the caller's rate.
        .route_layer(middleware::from_fn_with_state(
            Limiter::new(state.rate),
            ratelimit::limit,
        ))
        .route_layer(middleware::from_fn(crate::audit::note_caller))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .merge(
            Router::new()
                .merge(crate::prebuilds::public_routes())
                .merge(crate::links::public_routes())
                .merge(crate::sessions::public_routes())
                .merge(crate::oidc::routes())
                .route_layer(middleware::from_fn_with_state(
                    (
                        ratelimit::PeerLimiter::new(state.public_rate),
                        state.manager.clone(),
                    ),
                    ratelimit::limit_peer,
                )),
        )
        .merge(crate::web::routes())
        .merge(protected)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        // Around each route (and outside the token check, so refused tokens are
        // recorded too).
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::audit::record,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

#[utoipa::path(get, path = "/v1/health", security(()), responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[utoipa::path(get, path = "/v1/openapi.json", security(()),
    responses((status = 200, description = "this document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => {
            ApiError::internal(format!("cannot render openapi document: {e}")).into_response()
        }
    }
}

#[utoipa::path(get, path = "/v1/images",
    responses((status = 200, body = Vec<Image>), (status = 401, body = ErrorBody)))]
async fn list_images(State(st): State<AppState>) -> Result<Json<Vec<Image>>, ApiError> {
    Ok(Json(st.manager.images().await?))
}

/// Loads an image from a path on the server host (admins only: it reads the server's
/// files). Everything that can be checked up front is answered with its status before the
/// ndjson stream starts; an error during the load is the stream's last line.
#[utoipa::path(post, path = "/v1/images/load", request_body = LoadImage,
    responses((status = 200, description = "ndjson progress lines, then the Image or an error",
        content_type = "application/x-ndjson", body = StreamLineDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn load_image(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<LoadImage>,
) -> Response {
    if let Err(e) = st
        .manager
        .check_load(&caller, &req.path, req.name.as_deref())
        .await
    {
        return e.into_response();
    }
    ndjson::stream(
        move |p| async move { st.manager.load_image(req.path.into(), req.name, p).await },
    )
}

/// Query of `POST /v1/images/upload`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Name to give the image, e.g. `busybox:latest`; default: the names in the archive.
    pub name: Option<String>,
}

/// Loads an image from the request body: an oci-archive or docker-archive tarball (gzip
/// or zstd compressed or not), streamed to a temporary file under the data dir (at most
/// the server's `--upload-max`) and loaded from there. Answers once the image is loaded.
#[utoipa::path(post, path = "/v1/images/upload", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the archive (any content type is accepted; the bytes are sniffed)"),
    responses((status = 200, body = Image), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn upload_image(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Image>, ApiError> {
    let declared = crate::uploads::declared_length(&headers);
    let checked = query
        .map_err(|rej| ApiError::invalid(rej.body_text()))
        .and_then(|Query(q)| {
            crate::manager::check_own_image_name(&caller, q.name.as_deref())?;
            Ok(q)
        });
    let q = match checked {
        Ok(q) => q,
        Err(e) => return Err(crate::uploads::refuse(body, declared, e).await),
    };
    let max = st.uploads.max;
    let too_large = || {
        ApiError::too_large(format!(
            "upload is larger than the server's limit of {max} bytes"
        ))
    };
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let tmp = crate::uploads::receive(&st.uploads.dir, body, max, too_large).await?;
    let image = st.manager.load_upload(&tmp, q.name).await?;
    Ok(Json(image))
}

/// Builds an image from a Dockerfile in the caller's builder workspace (podman, never on
/// the host) and loads it. The body is the build context as a tar (at most the server's
/// `--upload-max`), received before the ndjson stream of the build's output starts.
#[utoipa::path(post, path = "/v1/images/build", params(BuildImage),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the build context as a tar (any content type is accepted)"),
    responses((status = 200, description = "ndjson progress lines, then the Image or an error",
        content_type = "application/x-ndjson", body = StreamLineDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn build_image(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<BuildImage>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    let plan = async {
        let checked = async {
            let Query(q) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
            crate::manager::check_own_image_name(&caller, Some(&q.name))?;
            let args: std::collections::BTreeMap<String, String> = match &q.args {
                Some(a) => serde_json::from_str(a).map_err(|e| {
                    ApiError::invalid(format!("args must be a JSON object of strings: {e}"))
                })?,
                None => Default::default(),
            };
            let check = crate::manager::build::BuildRequest {
                context: crate::manager::build::BuildContext::Tar(Vec::new()),
                dockerfile: q.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into()),
                context_dir: ".".into(),
                args,
                target: q.target.clone(),
                name: q.name.clone(),
            };
            st.manager.check_build(&caller, &check).await?;
            Ok::<_, ApiError>(check)
        }
        .await;
        let check = match checked {
            Ok(c) => c,
            Err(e) => {
                let declared = crate::uploads::declared_length(&headers);
                return Err(crate::uploads::refuse(body, declared, e).await);
            }
        };
        let max = st.uploads.max;
        let too_large = || {
            ApiError::too_large(format!(
                "build context is larger than the server's limit of {max} bytes"
            ))
        };
        let tmp = crate::uploads::receive(&st.uploads.dir, body, max, too_large).await?;
        let file = std::fs::File::open(&tmp)
            .map_err(|e| ApiError::internal(format!("cannot read the build context: {e}")))?;
        Ok::<_, ApiError>((
            tmp,
            crate::manager::build::BuildRequest {
                context: crate::manager::build::BuildContext::File(file),
                ..check
            },
        ))
    }
    .await;
    let (tmp, req) = match plan {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    ndjson::stream(move |p| async move {
        let res = st.manager.build_image(&caller, req, &p).await;
        drop(tmp);
        res.map(crate::convert::image)
    })
}

/// Pulls an image from an OCI registry, streaming per-layer progress. The reference, the
/// credentials and the image's manifest are checked before the stream starts (a missing
/// image is a 404); failures while downloading end the stream.
#[utoipa::path(post, path = "/v1/images/pull", request_body = PullImage,
    responses((status = 200, description = "ndjson progress lines, then the Image or an error",
        content_type = "application/x-ndjson", body = StreamLineDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "the registry does not have the image", body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn pull_image(State(st): State<AppState>, ApiJson(req): ApiJson<PullImage>) -> Response {
    let plan = match st.manager.check_pull(req).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    ndjson::stream(move |p| async move { st.manager.pull_checked(plan, p).await })
}

/// Removes an image no workspace uses (admins only: images are shared by every user).
#[utoipa::path(delete, path = "/v1/images/{reference}",
    params(("reference" = String, Path, description = "image name or id (prefix)")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn remove_image(
    State(st): State<AppState>,
    _: Admin,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.manager.remove_image(&reference).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's workspaces, by name; every workspace for an admin. With `limit`, one
/// page: pass the last name as `after` for the next.
#[utoipa::path(get, path = "/v1/workspaces", params(ListWorkspaces),
    responses((status = 200, body = Vec<Workspace>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn list_workspaces(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListWorkspaces>, QueryRejection>,
) -> Result<Json<Vec<Workspace>>, ApiError> {
    let Query(q) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    let page = match q.limit {
        Some(limit @ 1..=MAX_PAGE) => Some((q.after, limit)),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "limit {other}: ask for 1 to {MAX_PAGE} workspaces a page"
            )))
        }
        None if q.after.is_some() => Some((q.after, MAX_PAGE)),
        None => None,
    };
    Ok(Json(st.manager.list(&caller, page).await?))
}

/// Creates and starts a workspace. The request, name, image, disk size and free space are
/// checked before the ndjson stream starts (answered 400, 404 or 409); errors while
/// cloning or starting end the stream.
#[utoipa::path(post, path = "/v1/workspaces", request_body = CreateWorkspace,
    responses((status = 200, description = "ndjson progress lines, then the Workspace or an error",
        content_type = "application/x-ndjson", body = StreamLineDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "over the owner's quota (quota_exceeded), or a non-admin's \
            source is a path on the server (forbidden)", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> Response {
    // The name, for the audit log: given, or made from the source by the plan.
    let given = Some(
        req.name
            .clone()
            .unwrap_or_else(|| crate::names::default_name(req.source.trim())),
    );
    let plan = match st.manager.plan_create(&caller, req).await {
        Ok(p) => p,
        Err(e) => {
            let mut resp = e.into_response();
            if let Some(n) = given {
                resp.extensions_mut().insert(crate::audit::AuditTarget(n));
            }
            return resp;
        }
    };
    let name = crate::audit::AuditTarget(plan.name().to_string());
    let mut resp = ndjson::stream(move |p| async move { st.manager.run_create(plan, p).await });
    resp.extensions_mut().insert(name);
    resp
}

#[utoipa::path(get, path = "/v1/workspaces/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.get(&caller, &name).await?))
}

/// Changes the settings the body sets (the idle timeout); the others stay.
#[utoipa::path(patch, path = "/v1/workspaces/{name}", params(("name" = String, Path)),
    request_body = WorkspaceUpdate,
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<WorkspaceUpdate>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.update(&caller, &name, req).await?))
}

/// The record plus host details: uid range, cgroups, network, pid and current usage.
#[utoipa::path(get, path = "/v1/workspaces/{name}/inspect", params(("name" = String, Path)),
    responses((status = 200, body = WorkspaceInspect), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn inspect_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<WorkspaceInspect>, ApiError> {
    Ok(Json(st.manager.inspect(&caller, &name).await?))
}

#[utoipa::path(post, path = "/v1/workspaces/{name}/start", params(("name" = String, Path)),
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 403, description = "over the owner's quota (quota_exceeded)", body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn start_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.start(&caller, &name).await?))
}

#[utoipa::path(post, path = "/v1/workspaces/{name}/stop", params(("name" = String, Path)),
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn stop_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.stop(&caller, &name).await?))
}

/// Removes the workspace. Its snapshots stay restorable for the server's grace period
/// (`GET /v1/deleted-workspaces`), unless `purge` forgets them at once.
#[utoipa::path(delete, path = "/v1/workspaces/{name}", params(("name" = String, Path), RemoveOptions),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    query: Result<Query<RemoveOptions>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(opts) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    st.manager.remove(&caller, &name, opts.purge).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the workspace's outbound deny list and applies it to a running workspace at
/// once (open connections to newly denied destinations stop too). `{"deny": []}` allows
/// everything except what the node always denies. Invalid rules change nothing.
#[utoipa::path(put, path = "/v1/workspaces/{name}/egress", params(("name" = String, Path)),
    request_body = Egress,
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_egress(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<Egress>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.set_egress(&caller, &name, req).await?))
}

/// Edits the deny list (add, remove, clear) atomically on the server, so concurrent edits
/// never lose one another; applied at once like `PUT`. Invalid rules change nothing.
#[utoipa::path(patch, path = "/v1/workspaces/{name}/egress", params(("name" = String, Path)),
    request_body = EgressEdit,
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn edit_egress(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<EgressEdit>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.edit_egress(&caller, &name, req).await?))
}

/// Changes the limits the request names and keeps the others: memory, pids and CPU weight
/// apply at once to a running workspace (else at its next start); the disk grows in place,
/// running or not, and never shrinks.
#[utoipa::path(patch, path = "/v1/workspaces/{name}/limits", params(("name" = String, Path)),
    request_body = LimitsRequest,
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody),
        (status = 403, description = "over the owner's quota (quota_exceeded)", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn set_limits(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<LimitsRequest>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.set_limits(&caller, &name, req).await?))
}

/// The console output of the workspace's PID 1 (the newest 1 MiB); with `follow`, then
/// what comes after it, streamed (chunked) until the workspace stops.
#[utoipa::path(get, path = "/v1/workspaces/{name}/logs", params(("name" = String, Path), LogsOptions),
    responses((status = 200, description = "console output of the workspace's PID 1",
        content_type = "application/octet-stream"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn workspace_logs(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    query: Result<Query<LogsOptions>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(opts) = query.map_err(|rej| ApiError::invalid(rej.body_text()))?;
    if !opts.follow {
        let bytes = st.manager.logs(&caller, &name).await?;
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response());
    }
    let rx = st.manager.clone().follow_logs(&caller, &name).await?;
    Ok(followed(rx, "application/octet-stream"))
}

/// A response whose (chunked) body is what a follower sends (see `manager::follow`),
/// ending when it ends.
pub(crate) fn followed(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    content_type: &'static str,
) -> Response {
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(Ok::<_, std::convert::Infallible>))
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Runs a command in a workspace over a WebSocket.
///
/// First client message: the JSON ExecRequest. Then binary frames with a 1-byte tag.
/// Client: 0 stdin(bytes), 1 stdin-eof, 2 resize(rows u16 BE, cols u16 BE), 3 signal(i32 BE).
/// Server: 1 stdout(bytes), 2 stderr(bytes), 3 exit(i32 BE), 4 error(utf-8); the server
/// closes the socket after exit or error.
#[utoipa::path(get, path = "/v1/workspaces/{name}/exec", params(("name" = String, Path)),
    responses((status = 101, description = "switching to the exec WebSocket protocol"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn exec_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|rej| {
        ApiError::invalid(format!(
            "exec needs a WebSocket upgrade: {}",
            rej.body_text()
        ))
    })?;
    let spec = st.manager.exec_target(&caller, &name).await?;
    // The workspace is in use (never stopped as idle) while the socket is open.
    let in_use = st.manager.activity().session(spec.id.as_str());
    Ok(ws.on_upgrade(move |socket| async move {
        exec_session(st.manager, spec, socket).await;
        drop(in_use);
    }))
}

async fn send_frame(socket: &mut WebSocket, f: ServerFrame) -> bool {
    socket
        .send(Message::Binary(f.encode().into()))
        .await
        .is_ok()
}

/// Ends a session: closes our side, then reads until the client closes too.
///
/// Dropping a socket with unread client frames in its buffer makes the kernel send a
/// reset, which can destroy our last frames before the client reads them.
async fn finish(socket: &mut WebSocket) {
    let _ = socket.close().await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

async fn exec_session(manager: Arc<Manager>, spec: WorkspaceSpec, mut socket: WebSocket) {
    let req: ExecRequest = loop {
        let msg = match socket.recv().await {
            Some(Ok(m)) => m,
            _ => return,
        };
        let parsed = match &msg {
            Message::Text(t) => serde_json::from_str(t.as_str()),
            Message::Binary(b) => serde_json::from_slice(b),
            Message::Close(_) => return,
            _ => continue,
        };
        match parsed {
            Ok(r) => break r,
            Err(e) => {
                let msg = format!("bad exec request: {e}");
                let _ = send_frame(&mut socket, ServerFrame::Error(msg)).await;
                finish(&mut socket).await;
                return;
            }
        }
    };
    let session = match manager.exec(&spec, req).await {
        Ok(s) => s,
        Err(e) => {
            let _ = send_frame(&mut socket, ServerFrame::Error(e.message)).await;
            finish(&mut socket).await;
            return;
        }
    };
    let (mut writer, mut reader) = session.split();
    let (mut sink, mut stream) = socket.split();

    // Forwards client frames until the client closes; after the output side is done it
    // only drains (see `finish`).
    let input = async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let res = match ClientFrame::decode(&data) {
                Ok(ClientFrame::Stdin(d)) => writer.write_stdin(&d).await,
                Ok(ClientFrame::StdinEof) => writer.close_stdin().await,
                Ok(ClientFrame::Resize { rows, cols }) => writer.resize(rows, cols).await,
                Ok(ClientFrame::Signal(s)) => writer.signal(s).await,
                Err(e) => {
                    tracing::debug!(workspace = spec.name, error = ?e.to_string(), "ignoring bad exec frame");
                    continue;
                }
            };
            if let Err(e) = res {
                // The process may have exited and closed its stdin; output still flows.
                tracing::debug!(workspace = spec.name, error = ?e.to_string(), "exec input failed");
            }
        }
        writer
    };
    let output = async move {
        loop {
            let frame = match reader.next_event().await {
                Ok(Event::Stdout(d)) => ServerFrame::Stdout(d),
                Ok(Event::Stderr(d)) => ServerFrame::Stderr(d),
                Ok(Event::Exit(c)) => ServerFrame::Exit(c),
                Err(e) => ServerFrame::Error(format!("exec session failed: {e}")),
            };
            let last = matches!(frame, ServerFrame::Exit(_) | ServerFrame::Error(_));
            let sent = sink.send(Message::Binary(frame.encode().into())).await;
            if sent.is_err() || last {
                let _ = sink.close().await;
                break;
            }
        }
    };
    tokio::pin!(input, output);
    tokio::select! {
        _ = &mut output => {
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut input).await;
        }
        mut writer = &mut input => {
            // The client is gone: hang up on the process as a terminal would, and let it
            // end (its exit goes nowhere).
            let _ = writer.signal(SIGHUP).await;
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut output).await;
        }
    }
}
