//! HTTP and WebSocket client of the server's API: one typed method per route.
//!
//! It prints nothing; long operations report progress lines through a callback and exec
//! hands back the two halves of the session.

mod ports;
mod quotas;
pub use quotas::AuditFilter;
mod secrets;

use std::path::{Path, PathBuf};

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{
    BuildImage, ClientFrame, CreateJoinToken, CreatePrebuild, CreateUser, CreateWorkspace,
    DeletedWorkspace, DrainReport, EgressEdit, ErrorBody, ErrorInfo, ExecRequest, ForkWorkspace,
    FrameError, Image, JoinNode, JoinToken, LimitsRequest, LoadImage, MoveWorkspace, NewUser, Node,
    NodeCredential, NodeLabels, Prebuild, PrebuildRun, PrebuildRunLog, PullImage, RestoreWorkspace,
    ServerFrame, ServerInfo, Snapshot, StoreCheck, StoreGc, StoreGcReport, StoreUse, StreamLine,
    UpdateUser, User, Workspace, WorkspaceInspect, WorkspaceUpdate, SERVER_FILE, TOKEN_FILE,
};

/// What went wrong talking to the server. The messages are the ones users see.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach hearth server: cannot read {}: {source}: is `hearth server` running?", path.display())]
    NoServerFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {}: {source}", path.display())]
    BadServerFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read token {}: {source} (pass --token or set HEARTH_TOKEN)", path.display())]
    NoToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build http client: {0}")]
    Build(reqwest::Error),
    #[error("cannot reach hearth server at {0}: is `hearth server` running?")]
    Unreachable(String),
    #[error("request to {url} failed: {source}")]
    Request { url: String, source: reqwest::Error },
    /// The server refused the request with an API error.
    #[error("{}", .0.message)]
    Api(ErrorInfo),
    /// The server answered an error status without an API error body.
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot parse server reply: {0}")]
    Reply(String),
    #[error("connection to {url} failed: {reason}")]
    Connection { url: String, reason: String },
    #[error("server ended the reply without a result")]
    Truncated,
    #[error("bad server url {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("token is not a valid header value")]
    BadToken,
    #[error("cannot open exec session on {name}: {reason}")]
    ExecOpen { name: String, reason: String },
    #[error("server refused exec: {0}")]
    ExecRefused(u16),
    #[error("exec connection failed: {0}")]
    ExecConnection(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ClientError {
    /// The API error the server answered, if that is what this is.
    pub fn api(&self) -> Option<&ErrorInfo> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Percent-encodes a path segment (names are plain, image references may hold ':' or '/').
pub fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client of `url`, or of the server whose `server.json` is in `data_dir`; the token
    /// is read from the data dir when not given.
    pub fn new(data_dir: &Path, url: Option<&str>, token: Option<&str>) -> Result<Client> {
        let base = match url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let path = data_dir.join(SERVER_FILE);
                let bytes = std::fs::read(&path).map_err(|source| ClientError::NoServerFile {
                    path: path.clone(),
                    source,
                })?;
                let info: ServerInfo = serde_json::from_slice(&bytes)
                    .map_err(|source| ClientError::BadServerFile { path, source })?;
                info.url.trim_end_matches('/').to_string()
            }
        };
        let token = match token {
            Some(t) => t.trim().to_string(),
            None => {
                let path = data_dir.join(TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map_err(|source| ClientError::NoToken { path, source })?
                    .trim()
                    .to_string()
            }
        };
        let http = reqwest::Client::builder()
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client { base, token, http })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends with the token; an error status becomes [`ClientError::Api`] (or `Status`).
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                ClientError::Unreachable(self.base.clone())
            } else {
                ClientError::Request {
                    url: self.base.clone(),
                    source: e,
                }
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(ClientError::Api(e.error)),
            Err(_) => Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_string(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        resp.json()
            .await
            .map_err(|e| ClientError::Reply(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Self::json(self.send(self.http.get(self.url(path))).await?).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Self::json(self.send(self.http.post(self.url(path)).json(body)).await?).await
    }

    async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        Self::json(
            self.send(self.http.patch(self.url(path)).json(body))
                .await?,
        )
        .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.send(self.http.delete(self.url(path))).await?;
        Ok(())
    }

    /// Runs a streamed (ndjson) operation, handing each progress line to `progress`.
    async fn stream<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        mut progress: impl FnMut(&str),
    ) -> Result<T> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        self.lines(resp, &mut progress).await
    }

    /// The ndjson lines of a streamed answer: progress to `progress`, then the result.
    async fn lines<T: DeserializeOwned>(
        &self,
        resp: reqwest::Response,
        progress: &mut impl FnMut(&str),
    ) -> Result<T> {
        let mut chunks = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<StreamLine<T>>(&line)
                    .map_err(|e| ClientError::Reply(e.to_string()))?
                {
                    StreamLine::Progress(p) => progress(&p),
                    StreamLine::Result(v) => return Ok(v),
                    StreamLine::Error(e) => return Err(ClientError::Api(e)),
                }
            }
            match chunks.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    return Err(ClientError::Connection {
                        url: self.base.clone(),
                        reason: e.to_string(),
                    })
                }
                None => return Err(ClientError::Truncated),
            }
        }
    }

    pub async fn load_image(&self, req: &LoadImage, progress: impl FnMut(&str)) -> Result<Image> {
        self.stream("/v1/images/load", req, progress).await
    }

    /// Sends an image archive (`len` bytes read from `file`) in the request body for the
    /// server to load; answered once the image is loaded.
    pub async fn upload_image(
        &self,
        file: tokio::fs::File,
        len: u64,
        name: Option<&str>,
    ) -> Result<Image> {
        let mut req = self
            .http
            .post(self.url("/v1/images/upload"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(file_body(file));
        if let Some(n) = name {
            req = req.query(&[("name", n)]);
        }
        Self::json(self.send(req).await?).await
    }

    /// Sends a build context (a tar of `len` bytes read from `file`) to be built in the
    /// caller's builder workspace; the build's output goes to `progress`.
    pub async fn build_image(
        &self,
        file: tokio::fs::File,
        len: u64,
        req: &BuildImage,
        mut progress: impl FnMut(&str),
    ) -> Result<Image> {
        let http = self
            .http
            .post(self.url("/v1/images/build"))
            .query(req)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(file_body(file));
        let resp = self.send(http).await?;
        self.lines(resp, &mut progress).await
    }

    pub async fn pull_image(&self, req: &PullImage, progress: impl FnMut(&str)) -> Result<Image> {
        self.stream("/v1/images/pull", req, progress).await
    }

    pub async fn images(&self) -> Result<Vec<Image>> {
        self.get("/v1/images").await
    }

    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        self.delete(&format!("/v1/images/{}", enc(reference))).await
    }

    /// Creates and starts a workspace.
    pub async fn create(
        &self,
        req: &CreateWorkspace,
        progress: impl FnMut(&str),
    ) -> Result<Workspace> {
        self.stream("/v1/workspaces", req, progress).await
    }

    /// Builds a prebuild of a repository (`hearth prebuild`).
    pub async fn prebuild(
        &self,
        req: &CreatePrebuild,
        progress: impl FnMut(&str),
    ) -> Result<Prebuild> {
        self.stream("/v1/prebuilds", req, progress).await
    }

    /// The prebuilds the caller's `up` may start from, newest first.
    pub async fn prebuilds(&self) -> Result<Vec<Prebuild>> {
        self.get("/v1/prebuilds").await
    }

    /// Prebuild runs, newest first (with their outcome).
    pub async fn prebuild_runs(&self) -> Result<Vec<PrebuildRun>> {
        self.get("/v1/prebuild-runs").await
    }

    /// One prebuild run with its log (`hearth prebuild logs`).
    pub async fn prebuild_run(&self, id: &str) -> Result<PrebuildRunLog> {
        self.get(&format!("/v1/prebuild-runs/{}", enc(id))).await
    }

    /// Follows a prebuild run (`hearth prebuild logs -f`): its output so far, then as it is
    /// written, to `progress`; the run once it ended (ready or failed).
    pub async fn follow_prebuild_run(
        &self,
        id: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<PrebuildRun> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/prebuild-runs/{}", enc(id))))
                    .query(&[("follow", "true")]),
            )
            .await?;
        self.lines(resp, &mut progress).await
    }

    /// Removes a prebuild by its snapshot id (`hearth prebuild rm`).
    pub async fn remove_prebuild(&self, snapshot: &str) -> Result<()> {
        self.delete(&format!("/v1/prebuilds/{}", enc(snapshot)))
            .await
    }

    pub async fn workspaces(&self) -> Result<Vec<Workspace>> {
        self.get("/v1/workspaces").await
    }

    /// One page of [`Client::workspaces`]: at most `limit` names after `after`.
    pub async fn workspaces_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<Workspace>> {
        let mut path = format!("/v1/workspaces?limit={limit}");
        if let Some(a) = after {
            path.push_str("&after=");
            path.push_str(&enc(a));
        }
        self.get(&path).await
    }

    pub async fn workspace(&self, name: &str) -> Result<Workspace> {
        self.get(&format!("/v1/workspaces/{}", enc(name))).await
    }

    pub async fn inspect(&self, name: &str) -> Result<WorkspaceInspect> {
        self.get(&format!("/v1/workspaces/{}/inspect", enc(name)))
            .await
    }

    pub async fn start(&self, name: &str) -> Result<Workspace> {
        self.post(&format!("/v1/workspaces/{}/start", enc(name)), &())
            .await
    }

    pub async fn stop(&self, name: &str) -> Result<Workspace> {
        self.post(&format!("/v1/workspaces/{}/stop", enc(name)), &())
            .await
    }

    /// Removes a workspace; its snapshots are kept for the server's grace period unless
    /// `purge`.
    pub async fn remove(&self, name: &str, purge: bool) -> Result<()> {
        let q = if purge { "?purge=true" } else { "" };
        self.delete(&format!("/v1/workspaces/{}{q}", enc(name)))
            .await
    }

    /// Removed workspaces whose snapshots are still kept, newest removal first.
    pub async fn deleted(&self) -> Result<Vec<DeletedWorkspace>> {
        self.get("/v1/deleted-workspaces").await
    }

    pub async fn restore(&self, name: &str, req: &RestoreWorkspace) -> Result<Workspace> {
        self.post(
            &format!("/v1/deleted-workspaces/{}/restore", enc(name)),
            req,
        )
        .await
    }

    pub async fn set_limits(&self, name: &str, req: &LimitsRequest) -> Result<Workspace> {
        self.patch(&format!("/v1/workspaces/{}/limits", enc(name)), req)
            .await
    }

    /// Changes the settings `req` sets (the idle timeout).
    pub async fn update_workspace(&self, name: &str, req: &WorkspaceUpdate) -> Result<Workspace> {
        self.patch(&format!("/v1/workspaces/{}", enc(name)), req)
            .await
    }

    /// Edits the deny list; the server applies the edit under the workspace's lock, so
    /// concurrent edits all land.
    pub async fn edit_egress(&self, name: &str, edit: &EgressEdit) -> Result<Workspace> {
        self.patch(&format!("/v1/workspaces/{}/egress", enc(name)), edit)
            .await
    }

    /// The console output of the workspace's PID 1.
    pub async fn logs(&self, name: &str) -> Result<Vec<u8>> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/workspaces/{}/logs", enc(name)))),
            )
            .await?;
        let bytes = resp.bytes().await.map_err(|e| ClientError::Connection {
            url: self.base.clone(),
            reason: e.to_string(),
        })?;
        Ok(bytes.to_vec())
    }

    /// The console output and then what follows it as it is written, each chunk to `out`,
    /// until the workspace stops (the server ends the response) or `out` fails.
    pub async fn follow_logs(
        &self,
        name: &str,
        mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        let resp = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/workspaces/{}/logs", enc(name))))
                    .query(&[("follow", "true")]),
            )
            .await?;
        let mut chunks = resp.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ClientError::Connection {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
            if out(&chunk).is_err() {
                // stdout closed (`| head`): stop quietly, like tail -f.
                return Ok(());
            }
        }
        Ok(())
    }

    pub async fn ssh_keys(&self) -> Result<Vec<crate::SshKey>> {
        self.get("/v1/ssh-keys").await
    }

    pub async fn add_ssh_key(&self, req: &crate::AddSshKey) -> Result<crate::SshKey> {
        self.post("/v1/ssh-keys", req).await
    }

    /// Removes a key by id or fingerprint.
    pub async fn remove_ssh_key(&self, key: &str) -> Result<()> {
        self.delete(&format!("/v1/ssh-keys/{}", enc(key))).await
    }

    pub async fn ssh_info(&self) -> Result<crate::SshInfo> {
        self.get("/v1/ssh").await
    }

    pub async fn snapshot(&self, name: &str) -> Result<Snapshot> {
        self.post(&format!("/v1/workspaces/{}/snapshots", enc(name)), &())
            .await
    }

    pub async fn snapshots(&self, name: &str) -> Result<Vec<Snapshot>> {
        self.get(&format!("/v1/workspaces/{}/snapshots", enc(name)))
            .await
    }

    pub async fn store_use(&self, name: &str) -> Result<StoreUse> {
        self.get(&format!("/v1/workspaces/{}/store-usage", enc(name)))
            .await
    }

    pub async fn fork(&self, name: &str, req: &ForkWorkspace) -> Result<Workspace> {
        self.post(&format!("/v1/workspaces/{}/fork", enc(name)), req)
            .await
    }

    pub async fn store_fsck(&self) -> Result<StoreCheck> {
        self.post("/v1/store/fsck", &()).await
    }

    pub async fn store_gc(&self, req: &StoreGc) -> Result<StoreGcReport> {
        self.post("/v1/store/gc", req).await
    }

    /// The user this client's token belongs to.
    /// Makes a join token for a node on another host (admins).
    pub async fn create_join_token(&self, req: &CreateJoinToken) -> Result<JoinToken> {
        self.post("/v1/nodes/join-tokens", req).await
    }

    /// Exchanges a join token for the node's credential (no API token needed).
    pub async fn join_node(&self, req: &JoinNode) -> Result<NodeCredential> {
        self.post("/v1/nodes/join", req).await
    }

    pub async fn me(&self) -> Result<User> {
        self.get("/v1/me").await
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        self.get("/v1/users").await
    }

    /// Adds a user; the answer holds its token, which the server never shows again.
    pub async fn create_user(&self, req: &CreateUser) -> Result<NewUser> {
        self.post("/v1/users", req).await
    }

    /// Removes a user; its workspaces go to `reassign_to` (refused while it owns some
    /// and no heir is given).
    pub async fn remove_user(&self, name: &str, reassign_to: Option<&str>) -> Result<()> {
        let mut req = self
            .http
            .delete(self.url(&format!("/v1/users/{}", enc(name))));
        if let Some(heir) = reassign_to {
            req = req.query(&[("reassign_to", heir)]);
        }
        self.send(req).await?;
        Ok(())
    }

    /// Makes a user an admin or a plain user (admins only).
    pub async fn set_user_admin(&self, name: &str, admin: bool) -> Result<User> {
        self.patch(&format!("/v1/users/{}", enc(name)), &UpdateUser { admin })
            .await
    }

    /// Every node of the fleet (admins only).
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.get("/v1/nodes").await
    }

    /// Marks a node draining and moves its workspaces elsewhere.
    pub async fn drain_node(&self, name: &str) -> Result<DrainReport> {
        self.post(&format!("/v1/nodes/{}/drain", enc(name)), &())
            .await
    }

    /// Lets new workspaces go to a drained node again.
    pub async fn undrain_node(&self, name: &str) -> Result<Node> {
        self.post(&format!("/v1/nodes/{}/undrain", enc(name)), &())
            .await
    }

    /// Replaces a node's labels.
    pub async fn set_node_labels(&self, name: &str, labels: &NodeLabels) -> Result<Node> {
        let url = self.url(&format!("/v1/nodes/{}/labels", enc(name)));
        Self::json(self.send(self.http.put(url).json(labels)).await?).await
    }

    /// Forgets a node that holds no workspace.
    pub async fn remove_node(&self, name: &str) -> Result<()> {
        self.delete(&format!("/v1/nodes/{}", enc(name))).await
    }

    /// Moves a workspace to `node` (or where the scheduler puts it).
    pub async fn move_workspace(&self, name: &str, node: Option<&str>) -> Result<Workspace> {
        let req = MoveWorkspace {
            node: node.map(str::to_string),
        };
        self.post(&format!("/v1/workspaces/{}/move", enc(name)), &req)
            .await
    }

    /// `ws://` URL of a path on the server.
    fn ws_url(&self, path: &str) -> String {
        let base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        format!("{base}{path}")
    }

    /// A WebSocket upgrade request for `url` carrying the caller's token.
    fn ws_request(
        &self,
        url: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        let mut wsreq = url.into_client_request().map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        wsreq.headers_mut().insert(
            AUTHORIZATION,
            format!("Bearer {}", self.token)
                .parse()
                .map_err(|_| ClientError::BadToken)?,
        );
        Ok(wsreq)
    }

    /// Opens an exec session running `req` in workspace `name`.
    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<(ExecInput, ExecOutput)> {
        let url = self.ws_url(&format!("/v1/workspaces/{}/exec", enc(name)));
        let wsreq = self.ws_request(&url)?;
        let (ws, _) = match tokio_tungstenite::connect_async(wsreq).await {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().clone().unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(e) => ClientError::Api(e.error),
                    Err(_) => ClientError::ExecRefused(resp.status().as_u16()),
                });
            }
            Err(tungstenite::Error::Io(_)) => {
                return Err(ClientError::Unreachable(self.base.clone()))
            }
            Err(e) => {
                return Err(ClientError::ExecOpen {
                    name: name.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let (mut sink, stream) = ws.split();
        let first = serde_json::to_string(req).map_err(|e| ClientError::ExecOpen {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        sink.send(Message::Text(first.into()))
            .await
            .map_err(|e| ClientError::ExecConnection(format!("cannot send exec request: {e}")))?;
        Ok((ExecInput { sink }, ExecOutput { stream }))
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The client's side of an exec session: stdin, resizes, signals.
pub struct ExecInput {
    sink: futures_util::stream::SplitSink<Ws, Message>,
}

impl ExecInput {
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.sink
            .send(Message::Binary(frame.encode().into()))
            .await
            .map_err(|e| ClientError::ExecConnection(e.to_string()))
    }
}

/// The server's side of an exec session: output, then the exit code or an error.
pub struct ExecOutput {
    stream: futures_util::stream::SplitStream<Ws>,
}

impl ExecOutput {
    /// The next frame; `None` when the server closed the session.
    pub async fn next(&mut self) -> Option<Result<ServerFrame>> {
        loop {
            let data = match self.stream.next().await? {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) => return None,
                Ok(_) => continue,
                Err(e) => return Some(Err(ClientError::ExecConnection(e.to_string()))),
            };
            return Some(ServerFrame::decode(&data).map_err(ClientError::from));
        }
    }
}

/// A request body streamed from `file` in 1 MiB chunks.
fn file_body(file: tokio::fs::File) -> reqwest::Body {
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut f = file?;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("busybox:latest"), "busybox:latest");
        assert_eq!(enc("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn missing_server_json_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::new(dir.path(), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is `hearth server` running?"), "{err}");
    }
}
