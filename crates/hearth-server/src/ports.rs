//! Port routes: what listens in a workspace, port visibility, and port-forward.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use hearth_api::{ErrorBody, Port, PortLogin, SetPort};
use hearth_node::NodeError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::manager::ports::parse_port;
use crate::names;
use crate::state::{ApiJson, AppState, WsName};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/workspaces/{name}/ports", get(list_ports))
        .route("/v1/workspaces/{name}/ports/{port}", put(set_port))
        .route("/v1/workspaces/{name}/ports/{port}/login", post(port_login))
        .route(
            "/v1/workspaces/{name}/ports/{port}/forward",
            get(forward_port),
        )
}

/// The workspace name and port of a `{name}/ports/{port}` path, checked.
fn name_port(Path((name, port)): Path<(String, String)>) -> Result<(String, u16), ApiError> {
    if !names::is_valid_name(&name) {
        return Err(ApiError::invalid(names::invalid_name_message(&name)));
    }
    Ok((name, parse_port(&port)?))
}

/// Ports listening inside the workspace now (read from its network namespace when
/// asked) and ports given a visibility, with their proxy URLs.
#[utoipa::path(get, path = "/v1/workspaces/{name}/ports", params(("name" = String, Path)),
    responses((status = 200, body = Vec<Port>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_ports(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    WsName(name): WsName,
) -> Result<Json<Vec<Port>>, ApiError> {
    Ok(Json(st.manager.ports(&caller, &name).await?))
}

/// Makes a port public (anyone may open its URL) or private (its owner and admins).
#[utoipa::path(put, path = "/v1/workspaces/{name}/ports/{port}",
    params(("name" = String, Path), ("port" = u16, Path, minimum = 1, maximum = 65535)),
    request_body = SetPort,
    responses((status = 200, body = Port), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_port(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    ApiJson(req): ApiJson<SetPort>,
) -> Result<Json<Port>, ApiError> {
    let (name, port) = name_port(path.map_err(|r| ApiError::invalid(r.body_text()))?)?;
    Ok(Json(
        st.manager
            .set_port(&caller, &name, port, req.visibility)
            .await?,
    ))
}

/// A link that logs the browser opening it in to the port's URL, good for a minute: how
/// the dashboard opens a private port for people who have no API token at hand.
#[utoipa::path(post, path = "/v1/workspaces/{name}/ports/{port}/login",
    params(("name" = String, Path), ("port" = u16, Path, minimum = 1, maximum = 65535)),
    responses((status = 200, body = PortLogin), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the server runs no port proxy", body = ErrorBody)))]
pub(crate) async fn port_login(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<PortLogin>, ApiError> {
    let (name, port) = name_port(path.map_err(|r| ApiError::invalid(r.body_text()))?)?;
    Ok(Json(st.manager.port_login(&caller, &name, port).await?))
}

/// Forwards one TCP connection to `port` inside the workspace over a WebSocket (see
/// `hearth_api::ports` for the framing). The connection is made before the upgrade, so
/// a stopped workspace (409) or a port nothing listens on (409) is a status, not a
/// closed socket.
#[utoipa::path(get, path = "/v1/workspaces/{name}/ports/{port}/forward",
    params(("name" = String, Path), ("port" = u16, Path, minimum = 1, maximum = 65535)),
    responses((status = 101, description = "switching to the port-forward WebSocket"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn forward_port(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let (name, port) = name_port(path.map_err(|r| ApiError::invalid(r.body_text()))?)?;
    let ws = ws.map_err(|rej| {
        ApiError::invalid(format!(
            "port-forward needs a WebSocket upgrade: {}",
            rej.body_text()
        ))
    })?;
    let rec = st.manager.forward_target(&caller, &name).await?;
    let stream = match st.manager.connect_port(&rec.spec, port).await {
        Ok(s) => s,
        Err(NodeError::Connect { source, .. }) => {
            return Err(ApiError::conflict(format!(
                "nothing listens on port {port} in workspace {name} ({source})"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let session = st.manager.activity().session(rec.spec.id.as_str());
    Ok(ws.on_upgrade(move |socket| async move {
        let _session = session;
        pump(socket, stream).await;
        tracing::debug!(workspace = name, port, "port-forward ended");
    }))
}

/// Copies bytes between the WebSocket and the TCP connection until both sides are done.
async fn pump(socket: WebSocket, stream: tokio::net::TcpStream) {
    let (mut tcp_r, mut tcp_w) = stream.into_split();
    let (mut sink, mut source) = socket.split();
    let up = async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if b.is_empty() => {
                    let _ = tcp_w.shutdown().await;
                }
                Message::Binary(b) => {
                    let written = tcp_w.write_all(&b).await;
                    if written.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp_r.read(&mut buf).await {
                Ok(0) => {
                    // The app closed its side: say so, keep the socket for the client's.
                    let _ = sink.send(Message::Binary(Vec::new().into())).await;
                    break;
                }
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return sink;
                    }
                }
                Err(_) => break,
            }
        }
        sink
    };
    tokio::pin!(up, down);
    let mut sink = tokio::select! {
        // The client closed or went away: nothing more to deliver.
        _ = &mut up => return,
        sink = &mut down => sink,
    };
    up.await;
    let _ = sink.close().await;
}
