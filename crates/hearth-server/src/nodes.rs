//! Node routes (admins only): `/v1/nodes` list, drain, undrain, labels, remove, and
//! `POST /v1/workspaces/{name}/move`.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use hearth_api::{DrainReport, ErrorBody, MoveWorkspace, Node, NodeLabels, Workspace};

use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::state::{ApiJson, AppState, WsName};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{node}", delete(remove_node))
        .route("/v1/nodes/{node}/drain", post(drain_node))
        .route("/v1/nodes/{node}/undrain", post(undrain_node))
        .route("/v1/nodes/{node}/labels", put(set_labels))
        .route("/v1/workspaces/{name}/move", post(move_workspace))
}

/// Every node, with its state, labels and last reported capacity.
#[utoipa::path(get, path = "/v1/nodes",
    responses((status = 200, body = Vec<Node>), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_nodes(
    State(st): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<Node>>, ApiError> {
    Ok(Json(st.manager.nodes().await?))
}

/// Marks the node draining (nothing new is placed there) and moves its workspaces to
/// other nodes; those that cannot move are listed with why.
#[utoipa::path(post, path = "/v1/nodes/{node}/drain", params(("node" = String, Path)),
    responses((status = 200, body = DrainReport), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn drain_node(
    State(st): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Result<Json<DrainReport>, ApiError> {
    Ok(Json(st.manager.drain_node(&node).await?))
}

/// Lets new workspaces go to a drained node again.
#[utoipa::path(post, path = "/v1/nodes/{node}/undrain", params(("node" = String, Path)),
    responses((status = 200, body = Node), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn undrain_node(
    State(st): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(st.manager.undrain_node(&node).await?))
}

/// Replaces the node's labels (what `node_selector` matches).
#[utoipa::path(put, path = "/v1/nodes/{node}/labels", params(("node" = String, Path)),
    request_body = NodeLabels,
    responses((status = 200, body = Node), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_labels(
    State(st): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<NodeLabels>,
) -> Result<Json<Node>, ApiError> {
    Ok(Json(st.manager.set_node_labels(&node, req.labels).await?))
}

/// Forgets a node; refused (409) while workspaces are placed on it.
#[utoipa::path(delete, path = "/v1/nodes/{node}", params(("node" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "workspaces are still on it", body = ErrorBody)))]
pub(crate) async fn remove_node(
    State(st): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.manager.remove_node(&node).await?;
    // A remote node's credential goes with it: it must join again.
    st.manager.store().delete_node_credential(&node).await?;
    st.links.disconnect(&node);
    Ok(StatusCode::NO_CONTENT)
}

/// Moves a workspace to another node (admins only): stopped, snapshotted, restored there,
/// its old copy removed once the new one is in place, started again if it ran.
#[utoipa::path(post, path = "/v1/workspaces/{name}/move", params(("name" = String, Path)),
    request_body = MoveWorkspace,
    responses((status = 200, body = Workspace), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn move_workspace(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
    ApiJson(req): ApiJson<MoveWorkspace>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(
        st.manager
            .move_workspace(&caller, &name, req.node.as_deref())
            .await?,
    ))
}
