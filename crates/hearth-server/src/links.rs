//! Nodes on other hosts: join tokens, node credentials, and the connections nodes dial
//! in (`GET /v1/nodes/connect`, upgraded to the `hearth_link` wire). The server is the
//! caller on that wire; a node's connection is only ever used through its
//! [`RemoteNode`], whose answers are checked like any other hostile input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hearth_api::{
    CreateJoinToken, ErrorBody, JoinNode, JoinToken, NodeCredential, JOIN_TOKEN_TTL,
    MAX_JOIN_TOKEN_TTL,
};
use hearth_link::RemoteNode;
use hyper_util::rt::TokioIo;

use crate::auth::{self, Admin};
use crate::db::JoinRefusal;
use crate::error::ApiError;
use crate::names;
use crate::state::{ApiJson, AppState};

enum Slot {
    /// Answered 101, the h2 handshake not done yet.
    Connecting(u64),
    Connected(u64, Arc<RemoteNode>),
}

/// The remote nodes connected now, by name: at most one connection per name.
pub struct Links {
    slots: Mutex<(u64, HashMap<String, Slot>)>,
    limits: hearth_link::Limits,
}

impl Links {
    /// Files nodes send (repository archives, exported images) go to `scratch`.
    pub fn new(scratch: PathBuf) -> Links {
        Links {
            slots: Mutex::new((0, HashMap::new())),
            limits: hearth_link::Limits::new(scratch),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Slot>)> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connected node `name`.
    pub fn get(&self, name: &str) -> Option<Arc<RemoteNode>> {
        match self.lock().1.get(name) {
            Some(Slot::Connected(_, n)) => Some(n.clone()),
            _ => None,
        }
    }

    /// Names of connected nodes, sorted.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .1
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Connected(..)))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Drops node `name`'s connection, if it has one (its credential was revoked).
    pub fn disconnect(&self, name: &str) {
        if let Some(n) = self.get(name) {
            n.disconnect();
        }
    }

    /// Holds `name` for a new connection; `None` while another holds it.
    fn reserve(&self, name: &str) -> Option<u64> {
        let mut g = self.lock();
        g.0 += 1;
        let id = g.0;
        match g.1.get(name) {
            Some(Slot::Connected(_, n)) if n.is_connected() => None,
            Some(Slot::Connecting(_)) => None,
            _ => {
                g.1.insert(name.to_string(), Slot::Connecting(id));
                Some(id)
            }
        }
    }

    fn set(&self, name: &str, id: u64, node: Arc<RemoteNode>) {
        let mut g = self.lock();
        if let Some(slot) = g.1.get_mut(name) {
            if matches!(slot, Slot::Connecting(i) if *i == id) {
                *slot = Slot::Connected(id, node);
            }
        }
    }

    /// Frees `name` if connection `id` still holds it.
    fn release(&self, name: &str, id: u64) {
        let mut g = self.lock();
        let ours = match g.1.get(name) {
            Some(Slot::Connecting(i)) | Some(Slot::Connected(i, _)) => *i == id,
            None => false,
        };
        if ours {
            g.1.remove(name);
        }
    }
}

/// Admin routes (behind the token check).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/nodes/join-tokens", post(create_join_token))
}

/// Routes a node calls, authenticated by what they carry (a join token, a credential).
pub(crate) fn public_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/nodes/join", post(join))
        .route(hearth_link::CONNECT_PATH, get(connect))
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Makes a join token (admins only): `hearth node --join-token T` exchanges it once for
/// a node credential. Shown this once; the server keeps its SHA-256.
#[utoipa::path(post, path = "/v1/nodes/join-tokens", request_body = CreateJoinToken,
    responses((status = 201, body = JoinToken), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn create_join_token(
    State(st): State<AppState>,
    Admin(caller): Admin,
    ApiJson(req): ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<JoinToken>), ApiError> {
    let ttl = req.ttl_seconds.unwrap_or(JOIN_TOKEN_TTL);
    if ttl == 0 || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::invalid(format!(
            "ttl_seconds must be within 1..={MAX_JOIN_TOKEN_TTL} (a week)"
        )));
    }
    if let Some(n) = &req.node {
        if !names::is_valid_name(n) {
            return Err(ApiError::invalid(names::invalid_name_message(n)));
        }
    }
    let token = auth::new_token();
    let expires = unix_now() + ttl as i64;
    st.manager
        .store()
        .insert_join_token(
            &auth::token_hash(&token),
            req.node.as_deref(),
            &caller.id,
            expires,
        )
        .await?;
    let expires_at = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| expires.to_string());
    Ok((
        StatusCode::CREATED,
        Json(JoinToken {
            token,
            expires_at,
            node: req.node,
        }),
    ))
}

/// Exchanges a join token for a node credential. The token works once; the credential
/// is the node's from then on (the server keeps its SHA-256).
#[utoipa::path(post, path = "/v1/nodes/join", request_body = JoinNode, security(()),
    responses((status = 201, body = NodeCredential), (status = 400, body = ErrorBody),
        (status = 401, description = "unknown, used or expired join token", body = ErrorBody),
        (status = 403, description = "the token is for another node name", body = ErrorBody),
        (status = 409, description = "a node of that name has joined", body = ErrorBody)))]
pub(crate) async fn join(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<JoinNode>,
) -> Result<(StatusCode, Json<NodeCredential>), ApiError> {
    if !names::is_valid_name(&req.name) {
        return Err(ApiError::invalid(names::invalid_name_message(&req.name)));
    }
    let credential = auth::new_token();
    let refused = st
        .manager
        .store()
        .join_node(
            &auth::token_hash(&req.token),
            &req.name,
            &auth::token_hash(&credential),
            unix_now(),
        )
        .await?;
    match refused {
        Ok(()) => {
            // A node that joined again (its data dir was lost) replaces its connection too.
            st.links.disconnect(&req.name);
            tracing::info!(node = req.name, "node joined");
            Ok((
                StatusCode::CREATED,
                Json(NodeCredential {
                    name: req.name,
                    credential,
                }),
            ))
        }
        Err(JoinRefusal::BadToken) => Err(ApiError::unauthorized(
            "join token is unknown, used or expired: make a new one with `hearth node token`",
        )),
        Err(JoinRefusal::OtherName(n)) => Err(ApiError::forbidden(format!(
            "this join token is for node {n}, not {}",
            req.name
        ))),
        Err(JoinRefusal::Taken) => Err(ApiError::conflict(format!(
            "node {0} has joined already: to replace its credential, join with a token made \
             for it (`hearth node token --node {0}`)",
            req.name
        ))),
    }
}

/// A node's connection (HTTP/1.1 upgrade to `hearth-node/1`); see `hearth_link`.
/// Authenticated by the node's credential, bound to its name; one connection per name.
/// Once up, the node is attached to the fleet (which fences it first) and heartbeats
/// with its capacity; when the connection ends it is detached.
pub(crate) async fn connect(State(st): State<AppState>, mut req: Request) -> Response {
    let (name, labels, id) = match accept(&st, req.headers()).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let links = st.links.clone();
    let fleet = st.manager.fleet().clone();
    let store = st.manager.store().clone();
    tokio::spawn(async move {
        let linked = async {
            let io = upgrade.await.map_err(|e| e.to_string())?;
            RemoteNode::handshake(&name, TokioIo::new(io), links.limits.clone())
                .await
                .map_err(|e| e.to_string())
        };
        let node = match linked.await {
            Ok(node) => Arc::new(node),
            Err(e) => {
                links.release(&name, id);
                tracing::warn!(node = name, error = e, "node connection failed to start");
                return;
            }
        };
        links.set(&name, id, node.clone());
        tracing::info!(node = name, "node connected");
        let api: Arc<dyn hearth_node::NodeApi> = node.clone();
        match fleet.attach(&name, labels, api.clone()).await {
            Ok(()) => fleet.pump(&name, api.clone(), crate::fleet::HEARTBEAT_EVERY),
            Err(e) => {
                tracing::warn!(node = name, error = %e, "node not attached");
                node.disconnect();
            }
        }
        tokio::select! {
            () = node.closed() => {}
            () = tell_servers(&store, &node) => {}
        }
        links.release(&name, id);
        if fleet.api(&name).is_ok_and(|a| Arc::ptr_eq(&a, &api)) {
            fleet.detach(&name);
        }
        tracing::info!(node = name, "node disconnected");
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(hearth_link::UPGRADE),
    );
    if let Some(id) = st
        .manager
        .server_id()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        h.insert(hearth_link::SERVER_ID_HEADER, id);
    }
    resp
}

/// Tells `node` which servers share the database, at once and whenever that changes
/// (checked every lease renewal), so it keeps a link to each: any server then reaches
/// every node itself, and a server's death cuts none of the others' links. Runs until
/// the connection ends (or for good, after a node too old to know the call).
async fn tell_servers(store: &crate::db::Store, node: &RemoteNode) {
    let mut told: Option<Vec<hearth_link::ServerAddr>> = None;
    loop {
        match store.live_servers(crate::leader::live_since()).await {
            Ok(rows) => {
                let list: Vec<hearth_link::ServerAddr> = rows
                    .into_iter()
                    .map(|r| hearth_link::ServerAddr {
                        id: r.id,
                        url: r.url,
                    })
                    .collect();
                if told.as_ref() != Some(&list) {
                    match node.tell_servers(&list).await {
                        Ok(()) => told = Some(list),
                        Err(e) if e.kind() == hearth_node::ErrorKind::Invalid => {
                            tracing::info!(node = node.name(), error = %e, "node cannot link to other servers");
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            tracing::debug!(node = node.name(), error = %e, "server list not told")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the live servers"),
        }
        tokio::time::sleep(crate::leader::RENEW_EVERY).await;
    }
}

/// Checks a connecting node and holds its name: the upgrade it asks for, its name, its
/// labels, its credential, no other connection of that name.
async fn accept(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<(String, crate::fleet::Labels, u64), ApiError> {
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade != Some(hearth_link::UPGRADE) {
        return Err(ApiError::invalid(format!(
            "a node connects with Upgrade: {} (this server speaks only that version)",
            hearth_link::UPGRADE
        )));
    }
    let name = headers
        .get(hearth_link::NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| names::is_valid_name(n))
        .ok_or_else(|| {
            ApiError::invalid("missing or invalid hearth-node header (the node's name)")
        })?
        .to_string();
    let labels = match headers.get(hearth_link::LABELS_HEADER) {
        None => crate::fleet::Labels::new(),
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::invalid("node labels must be ASCII KEY=VALUE"))?;
            let terms: Vec<&str> = v.split(',').filter(|t| !t.is_empty()).collect();
            crate::fleet::parse_labels(&terms)?
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <node credential>"))?;
    let stored = st.manager.store().node_credential_hash(&name).await?;
    if stored.as_deref() != Some(auth::token_hash(given).as_str()) {
        tracing::warn!(node = name, "node refused: wrong credential");
        return Err(ApiError::unauthorized(format!(
            "wrong credential for node {name} (or it never joined): join with a join token"
        )));
    }
    let id = st
        .links
        .reserve(&name)
        .ok_or_else(|| ApiError::conflict(format!("node {name} is already connected")))?;
    Ok((name, labels, id))
}
