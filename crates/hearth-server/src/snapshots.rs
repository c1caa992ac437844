//! Snapshot routes: on-demand snapshots, listing, fork, store upkeep.

use axum::extract::{Extension, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_api::{
    DeletedWorkspace, ErrorBody, ForkWorkspace, RestoreWorkspace, Snapshot, StoreCheck, StoreGc,
    StoreGcReport, StoreUse, Workspace,
};

use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::state::{ApiJson, AppState, WsName};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/workspaces/{name}/snapshots",
            get(list_snapshots).post(take_snapshot),
        )
        .route("/v1/workspaces/{name}/store-usage", get(store_usage))
        .route("/v1/workspaces/{name}/fork", post(fork_workspace))
        .route("/v1/deleted-workspaces", get(list_deleted))
        .route(
            "/v1/deleted-workspaces/{name}/restore",
            post(restore_deleted),
        )
        .route("/v1/store/fsck", post(store_fsck))
        .route("/v1/store/gc", post(store_gc))
}

#[utoipa::path(post, path = "/v1/workspaces/{name}/snapshots", params(("name" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn take_snapshot(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(st.manager.snapshot(&caller, &name).await?))
}

#[utoipa::path(get, path = "/v1/workspaces/{name}/snapshots", params(("name" = String, Path)),
    responses((status = 200, description = "oldest first", body = Vec<Snapshot>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_snapshots(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    Ok(Json(st.manager.snapshots(&caller, &name).await?))
}

/// What the workspace's snapshots hold in the snapshot store (reads the store's snapshot
/// list, so it costs about what listing every snapshot's chunks does).
#[utoipa::path(get, path = "/v1/workspaces/{name}/store-usage", params(("name" = String, Path)),
    responses((status = 200, body = StoreUse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn store_usage(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<StoreUse>, ApiError> {
    Ok(Json(st.manager.store_use(&caller, &name).await?))
}

/// Removed workspaces whose snapshots are kept (the caller's; an admin sees all), most
/// recently removed first.
#[utoipa::path(get, path = "/v1/deleted-workspaces",
    responses((status = 200, body = Vec<DeletedWorkspace>)))]
pub(crate) async fn list_deleted(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<DeletedWorkspace>>, ApiError> {
    Ok(Json(st.manager.deleted(&caller).await?))
}

/// Recreates a removed workspace from its newest (or the given) snapshot, under its old
/// name or `name`, and starts it. 409 when a workspace of that name exists.
#[utoipa::path(post, path = "/v1/deleted-workspaces/{name}/restore", params(("name" = String, Path)),
    request_body = RestoreWorkspace,
    responses((status = 200, description = "the restored, running workspace", body = Workspace),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 403, description = "over the owner's quota (quota_exceeded)", body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn restore_deleted(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<RestoreWorkspace>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.restore(&caller, &name, req).await?))
}

#[utoipa::path(post, path = "/v1/workspaces/{name}/fork", params(("name" = String, Path)),
    request_body = ForkWorkspace,
    responses((status = 200, description = "the new, running workspace", body = Workspace), (status = 400, body = ErrorBody),
        (status = 403, description = "over the owner's quota (quota_exceeded)", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn fork_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<ForkWorkspace>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(st.manager.fork(&caller, &name, req).await?))
}

/// Verifies the snapshot store (admins only: it reads every user's snapshots).
#[utoipa::path(post, path = "/v1/store/fsck",
    responses((status = 200, body = StoreCheck), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn store_fsck(
    State(st): State<AppState>,
    _: Admin,
) -> Result<Json<StoreCheck>, ApiError> {
    Ok(Json(st.manager.store_fsck().await?))
}

/// Collects store garbage, optionally forgetting snapshots outside a retention policy
/// (admins only: the policy applies to every user's workspaces).
#[utoipa::path(post, path = "/v1/store/gc", request_body = StoreGc,
    responses((status = 200, body = StoreGcReport), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn store_gc(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<StoreGc>,
) -> Result<Json<StoreGcReport>, ApiError> {
    Ok(Json(st.manager.store_gc(req).await?))
}
