//! API and lifecycle tests against an in-memory node.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use hearth_node::*;
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::api::router;
use crate::db::testdb::{on_both_backends, Backend, TestDb};
use crate::db::{now, Store, WorkspaceRecord};
use crate::manager::Manager;
use crate::state::{AppState, BODY_LIMIT};
use hearth_api::ExecRequest;
use hearth_api::*;

const TOKEN: &str = "0123456789abcdef";

#[derive(Default)]
struct FakeState {
    images: Vec<ImageSummary>,
    /// id -> running?
    workspaces: HashMap<String, bool>,
    removed: Vec<String>,
    fail_create: bool,
    fail_start: bool,
    /// References pulled, with the credentials given.
    pulls: Vec<(String, Option<RegistryAuth>)>,
    /// id -> the egress rules last applied by `set_egress` or `start`.
    egress: HashMap<String, Vec<String>>,
    fail_egress: bool,
    /// id -> the limits last applied by `set_limits`.
    limits: HashMap<String, Limits>,
    fail_limits: bool,
    /// Every exec request, as the node got it.
    execs: Vec<hearth_node::ExecRequest>,
}

#[derive(Default, Clone)]
struct FakeNode(Arc<Mutex<FakeState>>);

impl FakeNode {
    fn with_image(name: &str) -> FakeNode {
        let n = FakeNode::default();
        n.0.lock().unwrap().images.push(ImageSummary {
            id: format!("sha256:{}", "ab".repeat(32)),
            names: vec![format!("{name}:latest")],
            size: 1,
            layers: 1,
            loaded_at: now(),
            user: None,
        });
        n
    }
    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }
}

#[async_trait::async_trait]
impl NodeApi for FakeNode {
    async fn load_image(
        &self,
        path: PathBuf,
        name: Option<String>,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        progress
            .send(format!("reading {}", path.display()))
            .unwrap();
        let s = ImageSummary {
            id: format!("sha256:{}", "cd".repeat(32)),
            names: name.into_iter().collect(),
            size: 2,
            layers: 1,
            loaded_at: now(),
            user: None,
        };
        self.st().images.push(s.clone());
        Ok(s)
    }
    async fn check_pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<PullPlan, NodeError> {
        // As a node that asks the registry first: a missing image is refused here.
        if reference.contains("missing") {
            return Err(NodeError::NotFound(format!(
                "image {reference} not found in its registry"
            )));
        }
        Ok(PullPlan::new(reference, auth))
    }
    async fn pull_image(
        &self,
        plan: PullPlan,
        progress: Progress,
    ) -> Result<ImageSummary, NodeError> {
        let reference = plan.reference().to_string();
        let mut st = self.st();
        st.pulls.push((reference.clone(), plan.auth().cloned()));
        progress
            .send(format!("layer 1/1 sha256:00: pulling {reference}"))
            .unwrap();
        let s = ImageSummary {
            id: format!("sha256:{}", "ef".repeat(32)),
            names: vec![reference],
            size: 3,
            layers: 1,
            loaded_at: now(),
            user: None,
        };
        st.images.push(s.clone());
        Ok(s)
    }
    async fn images(&self) -> Result<Vec<ImageSummary>, NodeError> {
        Ok(self.st().images.clone())
    }
    async fn capacity(&self) -> Result<hearth_node::NodeCapacity, NodeError> {
        let n = u32::try_from(self.st().workspaces.len()).unwrap_or(u32::MAX);
        Ok(hearth_node::NodeCapacity {
            cpus: 4,
            memory_total: 16 << 30,
            memory_available: 8 << 30,
            disk_total: 100 << 30,
            disk_free: 50 << 30,
            disk_reserve: 0,
            workspaces: n,
            running: 0,
        })
    }
    async fn resolve_image(&self, r: &str) -> Result<ImageSummary, NodeError> {
        self.st()
            .images
            .iter()
            .find(|i| {
                i.id == r
                    || i.names
                        .iter()
                        .any(|n| n == r || n.split(':').next() == Some(r))
            })
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("image {r} not found")))
    }
    async fn remove_image(&self, r: &str, in_use: &[String]) -> Result<(), NodeError> {
        let img = self.resolve_image(r).await?;
        if in_use.contains(&img.id) {
            return Err(NodeError::Conflict(format!("image {r} is in use")));
        }
        self.st().images.retain(|i| i.id != img.id);
        Ok(())
    }
    async fn create(&self, spec: &WorkspaceSpec, progress: Progress) -> Result<(), NodeError> {
        progress.send(format!("cloning {}", spec.source)).unwrap();
        let mut st = self.st();
        if st.fail_create {
            return Err(NodeError::Invalid(format!("cannot clone {}", spec.source)));
        }
        st.workspaces.insert(spec.id.to_string(), false);
        Ok(())
    }
    async fn start(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        let mut st = self.st();
        if st.fail_start {
            return Err(NodeError::Internal("agent did not answer".into()));
        }
        let w = st
            .workspaces
            .get_mut(spec.id.as_str())
            .ok_or_else(|| NodeError::NotFound(spec.id.to_string()))?;
        *w = true;
        Ok(WorkspaceStatus {
            state: RunState::Running,
            pid: Some(1),
            ip: Some([10, 0, 0, 2].into()),
            paused: None,
        })
    }
    async fn stop(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        if let Some(w) = self.st().workspaces.get_mut(spec.id.as_str()) {
            *w = false;
        }
        Ok(())
    }
    async fn remove(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let mut st = self.st();
        st.workspaces.remove(spec.id.as_str());
        st.removed.push(spec.id.to_string());
        Ok(())
    }
    async fn status(&self, spec: &WorkspaceSpec) -> Result<WorkspaceStatus, NodeError> {
        Ok(match self.st().workspaces.get(spec.id.as_str()) {
            Some(true) => WorkspaceStatus {
                state: RunState::Running,
                pid: Some(1),
                ip: Some([10, 0, 0, 2].into()),
                paused: None,
            },
            Some(false) => WorkspaceStatus {
                state: RunState::Stopped,
                pid: None,
                ip: None,
                paused: None,
            },
            None => WorkspaceStatus {
                state: RunState::Missing,
                pid: None,
                ip: None,
                paused: None,
            },
        })
    }
    async fn set_limits(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let mut st = self.st();
        if st.fail_limits {
            return Err(NodeError::Conflict("uses more memory".into()));
        }
        st.limits.insert(spec.id.to_string(), spec.limits);
        Ok(())
    }
    async fn set_egress(&self, spec: &WorkspaceSpec) -> Result<(), NodeError> {
        let mut st = self.st();
        if st.fail_egress {
            return Err(NodeError::Internal("nft failed".into()));
        }
        st.egress
            .insert(spec.id.to_string(), spec.egress.deny_strings());
        Ok(())
    }
    async fn inspect(&self, spec: &WorkspaceSpec) -> Result<WorkspaceDetails, NodeError> {
        let st = self.status(spec).await?;
        if st.state == RunState::Missing {
            return Err(NodeError::NotFound(format!("no data for {}", spec.name)));
        }
        let running = st.state == RunState::Running;
        Ok(WorkspaceDetails {
            state: st.state,
            pid: st.pid,
            uid_base: spec.uid_base(),
            id_count: ID_RANGE,
            cgroups: if running {
                vec![PathBuf::from(format!(
                    "/sys/fs/cgroup/memory/t/{}",
                    spec.id
                ))]
            } else {
                Vec::new()
            },
            limits: spec.limits,
            network: None,
            egress: EgressDetails {
                deny: spec.egress.deny_strings(),
                node_deny: vec!["169.254.0.0/16".into()],
                rate: 100,
                burst: 500,
                max_conns: 4096,
            },
            usage: Usage {
                memory_bytes: running.then_some(4096),
                pids: running.then_some(1),
                disk_bytes: 8192,
                disk_size: 1 << 30,
                ..Usage::default()
            },
            paused: None,
            oom_kills: Vec::new(),
            cpu: None,
            hydration: None,
        })
    }
    async fn exec(
        &self,
        _: &WorkspaceSpec,
        req: hearth_node::ExecRequest,
    ) -> Result<ExecSession, NodeError> {
        self.st().execs.push(req.clone());
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        tokio::spawn(fake_agent(theirs));
        hearth_proto::client::exec_on(ours, &req)
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))
    }
    async fn logs(&self, _: &WorkspaceSpec) -> Result<Vec<u8>, NodeError> {
        Ok(b"booted\n".to_vec())
    }
    async fn reconcile(
        &self,
        known: &[WorkspaceSpec],
    ) -> Result<Vec<(WorkspaceId, WorkspaceStatus)>, NodeError> {
        let mut out = Vec::new();
        for s in known {
            out.push((s.id.clone(), self.status(s).await?));
        }
        Ok(out)
    }
    async fn teardown(&self) -> Result<(), NodeError> {
        Ok(())
    }
}

/// Speaks the agent protocol: echoes stdin to stdout, reports resizes, exits 42 at stdin EOF
/// and 128+n on signal n.
async fn fake_agent(stream: tokio::net::UnixStream) {
    use hearth_proto::{AgentMsg, ClientMsg, FrameBuf, Message, Request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = FrameBuf::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let msg = loop {
            if let Some(m) = buf.next_msg::<ClientMsg>().unwrap() {
                break m;
            }
            let n = rd.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend(&chunk[..n]);
        };
        let reply = match msg {
            ClientMsg::Request(Request::Exec(req)) if req.argv == ["fail"] => {
                vec![AgentMsg::Error("no such command".into())]
            }
            ClientMsg::Request(_) => vec![AgentMsg::Started { pid: 7 }],
            ClientMsg::Stdin(d) => vec![AgentMsg::Stdout(d)],
            ClientMsg::Resize { rows, cols } => {
                vec![AgentMsg::Stdout(format!("{rows}x{cols}").into_bytes())]
            }
            ClientMsg::StdinEof => vec![AgentMsg::Stderr(b"eof".to_vec()), AgentMsg::Exit(42)],
            ClientMsg::Signal(n) => vec![AgentMsg::Exit(128 + n)],
        };
        for m in reply {
            if wr.write_all(&m.encode().unwrap()).await.is_err() {
                return;
            }
        }
    }
}

on_both_backends!(
    routes_require_the_token,
    workspace_lifecycle,
    create_errors_leave_nothing_behind,
    reconcile_resolves_transitional_states,
    egress_policy_is_validated_persisted_and_applied,
    server_binds_writes_server_json_and_stops,
    failed_final_snapshot_keeps_the_workspace_stopped_and_says_why,
    limits_change_in_place_and_disks_only_grow,
    unknown_names_leave_no_state_behind,
    list_pages_by_name,
    servers_sharing_a_database_elect_one_leader,
    operations_of_gone_servers_are_taken_over,
);

/// Servers sharing a database: exactly one holds the leader lease (the background jobs),
/// a server with an embedded node is refused beside a live one, and a clean stop hands
/// the lease to the other at its next renewal.
async fn servers_sharing_a_database_elect_one_leader(b: Backend) {
    let db = TestDb::new(b);
    let bind = |sub: &str, node: Option<Arc<dyn NodeApi>>| {
        let data_dir = db.dir.path().join(sub);
        let cfg = crate::ServerConfig {
            data_dir: data_dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_rate: Default::default(),
            rate: Default::default(),
            upload_max: crate::uploads::DEFAULT_UPLOAD_MAX,
            ssh_listen: None,
            database: Some(db.database.clone()),
            node_url: None,
        };
        async move {
            let lock = crate::DataDirLock::acquire(&data_dir).unwrap();
            crate::Server::bind_fleet(lock, cfg, node).await
        }
    };
    let sa = bind("a", None).await.unwrap();
    let sb = bind("b", None).await.unwrap();
    assert!(sa.leadership().is_leader());
    assert!(!sb.leadership().is_leader());
    assert!(!sb.leadership().renew().await);
    assert!(sa.leadership().renew().await);
    assert_ne!(sa.leadership().id(), sb.leadership().id());
    let err = match bind("c", Some(Arc::new(FakeNode::default()))).await {
        Ok(_) => panic!("an embedded node beside live servers was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("--no-local-node"), "{err}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sa.serve(async move {
        let _ = rx.await;
    }));
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(sb.leadership().renew().await);
    assert!(sb.leadership().is_leader());
}

/// `GET /v1/workspaces?limit=N&after=NAME` pages through the same list as without, a
/// non-admin's pages hold only theirs, and bad paging is a 400.
async fn list_pages_by_name(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    for n in ["c", "a", "d", "b", "e"] {
        let (_, last) = h
            .stream(
                "/v1/workspaces",
                serde_json::json!({"source": "/src/x", "name": n}),
            )
            .await;
        assert!(matches!(last, StreamLine::Result(_)), "{last:?}");
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, all) = h.json(Method::GET, "/v1/workspaces", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&all), ["a", "b", "c", "d", "e"]);
    let (s, p1) = h.json(Method::GET, "/v1/workspaces?limit=2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&p1), ["a", "b"]);
    assert_eq!(p1[0]["state"], "running");
    let (_, p2) = h
        .json(Method::GET, "/v1/workspaces?limit=2&after=b", None)
        .await;
    assert_eq!(names(&p2), ["c", "d"]);
    let (_, p3) = h
        .json(Method::GET, "/v1/workspaces?limit=2&after=d", None)
        .await;
    assert_eq!(names(&p3), ["e"]);
    let (_, p4) = h
        .json(Method::GET, "/v1/workspaces?limit=2&after=e", None)
        .await;
    assert_eq!(names(&p4), Vec::<String>::new());
    // `after` alone is a page of the largest size.
    let (_, p5) = h.json(Method::GET, "/v1/workspaces?after=c", None).await;
    assert_eq!(names(&p5), ["d", "e"]);
    for bad in ["limit=0", "limit=1001", "limit=x"] {
        let (s, v) = h
            .json(Method::GET, &format!("/v1/workspaces?{bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let bob = users::add_user(&h, "bob", false).await;
    let (s, body) = h
        .call(Method::GET, "/v1/workspaces?limit=10", Some(&bob), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(names(&v), Vec::<String>::new());
}

struct Harness {
    _db: TestDb,
    node: FakeNode,
    manager: Arc<Manager>,
    app: axum::Router,
    auth: Arc<crate::auth::AuthState>,
}

/// A harness on SQLite, for tests of what the database does not see.
async fn harness(node: FakeNode) -> Harness {
    harness_on(Backend::Sqlite, node).await
}

async fn harness_on(b: Backend, node: FakeNode) -> Harness {
    harness_with(b, node, crate::ratelimit::RateLimit::default()).await
}

async fn harness_with(b: Backend, node: FakeNode, rate: crate::ratelimit::RateLimit) -> Harness {
    harness_of(b, node, rate, |store, node| {
        Arc::new(Manager::new(store, node))
    })
    .await
}

/// A harness whose manager can run work past a request (webhook prebuilds).
async fn shared_harness(b: Backend, node: FakeNode) -> Harness {
    harness_of(b, node, Default::default(), Manager::shared).await
}

async fn harness_of(
    b: Backend,
    node: FakeNode,
    rate: crate::ratelimit::RateLimit,
    make: impl FnOnce(Store, Arc<dyn NodeApi>) -> Arc<Manager>,
) -> Harness {
    let db = TestDb::new(b);
    let store = db.store().await;
    let manager = make(store, Arc::new(node.clone()));
    manager.ensure_first_admin(TOKEN).await.unwrap();
    let auth = Arc::new(crate::auth::AuthState::default());
    let app = app_of(manager.clone(), db.dir.path(), rate, auth.clone());
    Harness {
        _db: db,
        node,
        manager,
        app,
        auth,
    }
}

/// The API of a server of `manager`, its uploads under `dir`.
fn app_of(
    manager: Arc<Manager>,
    dir: &std::path::Path,
    rate: crate::ratelimit::RateLimit,
    auth: Arc<crate::auth::AuthState>,
) -> axum::Router {
    router(AppState {
        public_rate: crate::ratelimit::RateLimit::PUBLIC,
        manager,
        rate,
        uploads: crate::uploads::Uploads {
            dir: dir.join("uploads"),
            max: 1 << 20,
        },
        ssh: Default::default(),
        metrics: Default::default(),
        links: Arc::new(crate::links::Links::new(dir.join("uploads"))),
        auth,
    })
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(s) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(s))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    async fn json(
        &self,
        method: Method,
        uri: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (s, b) = self
            .call(method, uri, Some(TOKEN), body.map(|v| v.to_string()))
            .await;
        let v = if b.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&b).unwrap()
        };
        (s, v)
    }

    /// Runs a streamed operation and returns its progress lines and final line.
    async fn stream(
        &self,
        uri: &str,
        body: serde_json::Value,
    ) -> (Vec<String>, StreamLine<serde_json::Value>) {
        let (s, b) = self
            .call(Method::POST, uri, Some(TOKEN), Some(body.to_string()))
            .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let mut lines: Vec<StreamLine<serde_json::Value>> = b
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let last = lines.pop().unwrap();
        let progress = lines
            .into_iter()
            .map(|l| match l {
                StreamLine::Progress(p) => p,
                other => panic!("final line before the end: {other:?}"),
            })
            .collect();
        (progress, last)
    }

    /// Posts a request that must be refused before any stream starts: a JSON error body
    /// with a 4xx/5xx status.
    async fn refused(&self, uri: &str, body: serde_json::Value) -> (StatusCode, ErrorInfo) {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp.headers()[header::CONTENT_TYPE].clone();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{status}: {}",
            String::from_utf8_lossy(&b)
        );
        assert_eq!(ctype, "application/json");
        let e: ErrorBody = serde_json::from_slice(&b).unwrap();
        (status, e.error)
    }

    async fn names(&self) -> Vec<String> {
        let (_, v) = self.json(Method::GET, "/v1/workspaces", None).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn error_of(line: StreamLine<serde_json::Value>) -> ErrorInfo {
    match line {
        StreamLine::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn routes_require_the_token(b: Backend) {
    let h = harness_on(b, FakeNode::default()).await;
    for (m, uri) in [
        (Method::GET, "/v1/workspaces"),
        (Method::GET, "/v1/images"),
        (Method::POST, "/v1/workspaces/x/start"),
        (Method::DELETE, "/v1/workspaces/x"),
        (Method::GET, "/v1/workspaces/x/exec"),
    ] {
        for tok in [None, Some("wrong")] {
            let (s, b) = h.call(m.clone(), uri, tok, None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri}");
            let e: ErrorBody = serde_json::from_slice(&b).unwrap();
            assert_eq!(e.error.code, "unauthorized");
        }
    }
    let (s, _) = h
        .call(Method::GET, "/v1/workspaces", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    for uri in ["/v1/health", "/v1/openapi.json"] {
        let (s, _) = h.call(Method::GET, uri, None, None).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let h = harness(FakeNode::default()).await;
    let (s, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("get", "/v1/health"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/images"),
        ("post", "/v1/images/load"),
        ("post", "/v1/images/upload"),
        ("post", "/v1/images/pull"),
        ("delete", "/v1/images/{reference}"),
        ("get", "/v1/workspaces"),
        ("post", "/v1/workspaces"),
        ("get", "/v1/workspaces/{name}"),
        ("delete", "/v1/workspaces/{name}"),
        ("patch", "/v1/workspaces/{name}"),
        ("post", "/v1/workspaces/{name}/start"),
        ("post", "/v1/workspaces/{name}/stop"),
        ("get", "/v1/workspaces/{name}/inspect"),
        ("get", "/v1/workspaces/{name}/logs"),
        ("get", "/v1/workspaces/{name}/exec"),
        ("put", "/v1/workspaces/{name}/egress"),
        ("patch", "/v1/workspaces/{name}/egress"),
        ("patch", "/v1/workspaces/{name}/limits"),
        ("get", "/v1/workspaces/{name}/snapshots"),
        ("post", "/v1/workspaces/{name}/snapshots"),
        ("get", "/v1/workspaces/{name}/store-usage"),
        ("post", "/v1/workspaces/{name}/fork"),
        ("get", "/v1/deleted-workspaces"),
        ("post", "/v1/deleted-workspaces/{name}/restore"),
        ("get", "/v1/workspaces/{name}/ports"),
        ("put", "/v1/workspaces/{name}/ports/{port}"),
        ("post", "/v1/workspaces/{name}/ports/{port}/login"),
        ("get", "/v1/workspaces/{name}/ports/{port}/forward"),
        ("post", "/v1/store/fsck"),
        ("post", "/v1/store/gc"),
        ("get", "/v1/me"),
        ("get", "/v1/users"),
        ("post", "/v1/users"),
        ("delete", "/v1/users/{user}"),
        ("patch", "/v1/users/{user}"),
        ("get", "/v1/users/{user}/quota"),
        ("put", "/v1/users/{user}/quota"),
        ("delete", "/v1/users/{user}/quota"),
        ("get", "/v1/quotas"),
        ("put", "/v1/quotas/default"),
        ("get", "/v1/audit"),
        ("get", "/v1/ssh-keys"),
        ("post", "/v1/ssh-keys"),
        ("delete", "/v1/ssh-keys/{key}"),
        ("get", "/v1/ssh"),
        ("get", "/metrics"),
        ("get", "/v1/secrets"),
        ("put", "/v1/secrets/{key}"),
        ("delete", "/v1/secrets/{key}"),
        ("get", "/v1/me/dotfiles"),
        ("put", "/v1/me/dotfiles"),
        ("get", "/v1/prebuilds"),
        ("post", "/v1/prebuilds"),
        ("delete", "/v1/prebuilds/{snapshot}"),
        ("get", "/v1/prebuild-runs"),
        ("get", "/v1/prebuild-runs/{id}"),
        ("post", "/v1/hooks/{forge}"),
        ("post", "/v1/images/build"),
        ("get", "/v1/nodes"),
        ("delete", "/v1/nodes/{node}"),
        ("post", "/v1/nodes/{node}/drain"),
        ("post", "/v1/nodes/{node}/undrain"),
        ("put", "/v1/nodes/{node}/labels"),
        ("post", "/v1/workspaces/{name}/move"),
        ("post", "/v1/nodes/join-tokens"),
        ("post", "/v1/nodes/join"),
        ("get", "/v1/auth"),
        ("post", "/v1/session"),
        ("get", "/v1/session"),
        ("post", "/v1/session/logout"),
        ("post", "/v1/me/token"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut count = 0;
    for (_, item) in paths {
        count += item.as_object().unwrap().len();
    }
    assert_eq!(
        count,
        expected.len(),
        "{}",
        serde_json::to_string_pretty(paths).unwrap()
    );
    for (m, p) in expected {
        assert!(
            paths.get(p).and_then(|i| i.get(m)).is_some(),
            "{m} {p} missing"
        );
        // Every documented route is really served (an unknown route would be 404 "no such route").
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let uri = p
            .replace("{reference}", "nope")
            .replace("{name}", "nope")
            .replace("{user}", "nope")
            .replace("{forge}", "github");
        let (_, body) = h.call(method, &uri, Some(TOKEN), Some("{}".into())).await;
        assert!(
            !String::from_utf8_lossy(&body).contains("no such route"),
            "{m} {p}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["token"].is_object());
}

#[tokio::test]
async fn bodies_are_checked() {
    let h = harness(FakeNode::with_image("debian")).await;
    let (s, b) = h
        .call(
            Method::POST,
            "/v1/workspaces",
            Some(TOKEN),
            Some(r#"{"source":"/x","bogus":1}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let e: ErrorBody = serde_json::from_slice(&b).unwrap();
    assert!(e.error.message.contains("bogus"), "{}", e.error.message);
    let big = format!(r#"{{"source":"{}"}}"#, "a".repeat(BODY_LIMIT + 1));
    let (s, b) = h
        .call(Method::POST, "/v1/workspaces", Some(TOKEN), Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let e: ErrorBody = serde_json::from_slice(&b).unwrap();
    assert_eq!(e.error.code, "too_large");
    assert!(h.names().await.is_empty());
}

/// Bodies are JSON objects (serde's derive alone reads a struct from an array too), and a
/// number JSON Schema calls an integer (`5.0`) is one.
#[tokio::test]
async fn bodies_are_objects_and_integral_floats_are_integers() {
    let h = harness(FakeNode::with_image("debian")).await;
    let (s, e) = h
        .refused("/v1/store/gc", serde_json::json!([null, null]))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e.message.contains("JSON object"), "{}", e.message);
    let (s, e) = h
        .refused("/v1/store/gc", serde_json::json!({"keep_last": 2.5}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e.message.contains("2.5"), "{}", e.message);
    let (s, b) = h
        .call(
            Method::PATCH,
            "/v1/workspaces/nope/limits",
            Some(TOKEN),
            Some(r#"{"pids":64.0}"#.into()),
        )
        .await;
    // Parsed, then looked up: the workspace does not exist.
    assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));
}

async fn workspace_lifecycle(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    let (progress, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/My_Repo.git"}),
        )
        .await;
    let w: Workspace = match last {
        StreamLine::Result(v) => serde_json::from_value(v).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        progress
            .iter()
            .any(|p| p.contains("cloning /src/My_Repo.git")),
        "{progress:?}"
    );
    assert_eq!(w.name, "my-repo");
    assert_eq!(w.state, WorkspaceState::Running);
    assert_eq!(w.slot, 0);
    assert_eq!(w.id.len(), 12);
    assert!(w
        .id
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(w.ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(w.image_name.as_deref(), Some("debian:latest"));

    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/other", "name": "two"}),
        )
        .await;
    assert!(
        matches!(last, StreamLine::Result(ref v) if v["slot"] == 1),
        "{last:?}"
    );

    let (s, v) = h
        .json(Method::POST, "/v1/workspaces/my-repo/stop", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["ip"], serde_json::Value::Null);
    // Idempotent.
    let (s, v) = h
        .json(Method::POST, "/v1/workspaces/my-repo/stop", None)
        .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("stopped")));
    let (s, v) = h
        .json(Method::POST, "/v1/workspaces/my-repo/start", None)
        .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("running")));

    let (s, b) = h
        .call(
            Method::GET,
            "/v1/workspaces/my-repo/logs",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!((s, b), (StatusCode::OK, b"booted\n".to_vec()));

    // The image is in use.
    let (s, v) = h.json(Method::DELETE, "/v1/images/debian", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    let (s, _) = h.json(Method::DELETE, "/v1/workspaces/my-repo", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h.names().await, vec!["two"]);
    let (s, v) = h.json(Method::GET, "/v1/workspaces/my-repo", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(v["error"]["message"].as_str().unwrap().contains("my-repo"));

    // The freed slot is reused.
    let (_, last) = h
        .stream("/v1/workspaces", serde_json::json!({"source": "/third"}))
        .await;
    assert!(
        matches!(last, StreamLine::Result(ref v) if v["slot"] == 0),
        "{last:?}"
    );
}

async fn create_errors_leave_nothing_behind(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("busybox")).await;
    // Everything that can be known up front is a status, not a 200 with an error line.
    // No default image loaded.
    let (s, e) = h
        .refused("/v1/workspaces", serde_json::json!({"source": "/src/a"}))
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
    assert!(e.message.contains("--image"), "{}", e.message);

    let (s, e) = h
        .refused(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/a", "image": "nope"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(
        e.message,
        "image nope not found (hearth image ls lists loaded images)"
    );

    let (s, e) = h
        .refused(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/a", "image": "busybox", "name": "Bad_Name"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
    assert!(
        e.message.contains("invalid workspace name"),
        "{}",
        e.message
    );

    let ok = serde_json::json!({"source": "/src/a", "image": "busybox", "name": "a"});
    assert!(matches!(
        h.stream("/v1/workspaces", ok.clone()).await.1,
        StreamLine::Result(_)
    ));
    let (s, e) = h.refused("/v1/workspaces", ok).await;
    assert_eq!((s, e.code.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert!(
        e.message.contains("workspace a already exists"),
        "{}",
        e.message
    );

    for (body, why) in [
        (
            serde_json::json!({"source": "  "}),
            "source must not be empty",
        ),
        (
            serde_json::json!({"source": "/src/x", "image": "busybox", "limits": {"pids": 1u64 << 63}}),
            "pids",
        ),
    ] {
        let (s, e) = h.refused("/v1/workspaces", body).await;
        assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
        assert!(e.message.contains(why), "{}", e.message);
    }

    // Failures while the node works end the stream with an error line.
    h.node.st().fail_create = true;
    let e = error_of(
        h.stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/b", "image": "busybox"}),
        )
        .await
        .1,
    );
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("invalid", "cannot clone /src/b")
    );
    h.node.st().fail_create = false;
    h.node.st().fail_start = true;
    let e = error_of(
        h.stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/c", "image": "busybox"}),
        )
        .await
        .1,
    );
    assert_eq!(e.code, "internal");
    assert_eq!(h.names().await, vec!["a"]);
    let st = h.node.st();
    assert_eq!(st.workspaces.len(), 1, "node still has a failed workspace");
    assert_eq!(st.removed.len(), 2);
}

/// A workspace row of user admin (source `/s`), for tests that put rows in the store.
fn record(id: &str, name: &str, slot: u32, state: WorkspaceState) -> WorkspaceRecord {
    WorkspaceRecord {
        spec: WorkspaceSpec {
            id: WorkspaceId::new(id).unwrap(),
            name: name.into(),
            image: "sha256:x".into(),
            source: "/s".into(),
            slot,
            limits: Limits::default(),
            egress: EgressPolicy::default(),
            generation: 0,
        },
        state,
        error: None,
        created_at: now(),
        updated_at: now(),
        last_snapshot: None,
        snapshot_error: None,
        owner: "admin".into(),
        node: "local".into(),
        node_selector: Default::default(),
        last_snapshot_at: None,
        idle: Default::default(),
    }
}

/// The leader's takeover: operations whose server is gone (this one before a restart,
/// another that stopped heartbeating) are settled, a stop finished and a create cut
/// short removed; operations of live servers are left to them, by the takeover and by a
/// starting server's reconcile.
async fn operations_of_gone_servers_are_taken_over(b: Backend) {
    use WorkspaceState::{Creating, Running, Stopped, Stopping};
    let node = FakeNode::with_image("busybox");
    let h = harness_on(b, node.clone()).await;
    let store = h.manager.store();
    store.set_operator("aaaa");
    let (other, gone) = (h._db.store().await, h._db.store().await);
    other.set_operator("bbbb");
    gone.set_operator("cccc");
    let ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    store
        .register_server("aaaa", "http://a", None, ms)
        .await
        .unwrap();
    other
        .register_server("bbbb", "http://b", None, ms)
        .await
        .unwrap();
    // A stop and a create this server ran before it restarted.
    store
        .insert(&record("000000000001", "stopping", 1, Running))
        .await
        .unwrap();
    node.st().workspaces.insert("000000000001".into(), true);
    assert!(store
        .claim("000000000001", Running, Stopping)
        .await
        .unwrap());
    store
        .insert(&record("000000000002", "creating", 2, Creating))
        .await
        .unwrap();
    node.st().workspaces.insert("000000000002".into(), false);
    assert_eq!(store.orphan_own("aaaa").await.unwrap(), 2);
    // In flight on this server and on live bbbb; a start of cccc, which is gone.
    store
        .insert(&record("000000000003", "mine", 3, Creating))
        .await
        .unwrap();
    other
        .insert(&record("000000000004", "theirs", 4, Creating))
        .await
        .unwrap();
    gone.insert(&record("000000000005", "starting", 5, Stopped))
        .await
        .unwrap();
    assert!(gone
        .claim("000000000005", Stopped, WorkspaceState::Starting)
        .await
        .unwrap());
    node.st().workspaces.insert("000000000005".into(), true);

    h.manager.take_over_orphans().await;
    let after: HashMap<String, WorkspaceRecord> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.spec.name.clone(), r))
        .collect();
    assert_eq!(after["stopping"].state, Stopped);
    assert_eq!(node.st().workspaces.get("000000000001"), Some(&false));
    assert!(!after.contains_key("creating"), "{after:?}");
    assert!(!node.st().workspaces.contains_key("000000000002"));
    assert_eq!(after["starting"].state, Running);
    assert_eq!(after["mine"].state, Creating);
    assert_eq!(after["theirs"].state, Creating);
    let ops = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        store.operations().await.unwrap(),
        ops(&[("mine", "aaaa"), ("theirs", "bbbb")])
    );
    // A starting server's reconcile leaves bbbb's operation alone.
    h.manager.reconcile().await.unwrap();
    assert_eq!(store.get("theirs").await.unwrap().unwrap().state, Creating);
}

async fn reconcile_resolves_transitional_states(b: Backend) {
    let node = FakeNode::with_image("busybox");
    let h = harness_on(b, node.clone()).await;
    let store = h.manager.store();
    let rows = [
        record("000000000001", "creating", 1, WorkspaceState::Creating),
        record("000000000002", "starting", 2, WorkspaceState::Starting),
        record("000000000003", "stopping", 3, WorkspaceState::Stopping),
        record("000000000004", "removing", 4, WorkspaceState::Removing),
        record("000000000005", "gone", 5, WorkspaceState::Running),
    ];
    for r in &rows {
        store.insert(r).await.unwrap();
    }
    {
        let mut st = node.st();
        st.workspaces.insert("000000000001".into(), false);
        st.workspaces.insert("000000000002".into(), true);
        st.workspaces.insert("000000000003".into(), false);
        st.workspaces.insert("000000000004".into(), false);
    }
    h.manager.reconcile().await.unwrap();
    let after: HashMap<String, WorkspaceRecord> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.spec.name.clone(), r))
        .collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after["starting"].state, WorkspaceState::Running);
    assert_eq!(after["stopping"].state, WorkspaceState::Stopped);
    assert_eq!(after["gone"].state, WorkspaceState::Failed);
    assert!(after["gone"].error.is_some());
    let st = node.st();
    assert!(!st.workspaces.contains_key("000000000001"));
    assert!(!st.workspaces.contains_key("000000000004"));
}

#[tokio::test]
async fn image_load_streams_progress() {
    let h = harness(FakeNode::default()).await;
    let (progress, last) = h
        .stream(
            "/v1/images/load",
            serde_json::json!({"path": "/img/busybox", "name": "busybox"}),
        )
        .await;
    assert_eq!(progress, vec!["reading /img/busybox"]);
    assert!(
        matches!(last, StreamLine::Result(ref v) if v["names"][0] == "busybox"),
        "{last:?}"
    );
    let (s, e) = h
        .refused("/v1/images/load", serde_json::json!({"path": "rel/dir"}))
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
    let (s, v) = h.json(Method::GET, "/v1/images", None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, _) = h.json(Method::DELETE, "/v1/images/busybox", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.json(Method::DELETE, "/v1/images/busybox", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn image_pull_streams_progress_and_checks_credentials() {
    let h = harness(FakeNode::default()).await;
    let (progress, last) = h
        .stream(
            "/v1/images/pull",
            serde_json::json!({"reference": "127.0.0.1:5000/bb:1", "username": "u", "password": "p"}),
        )
        .await;
    assert_eq!(
        progress,
        vec!["layer 1/1 sha256:00: pulling 127.0.0.1:5000/bb:1"]
    );
    assert!(
        matches!(last, StreamLine::Result(ref v) if v["names"][0] == "127.0.0.1:5000/bb:1"),
        "{last:?}"
    );
    let auth = h.node.st().pulls[0].1.clone().unwrap();
    assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
    let (s, e) = h
        .refused(
            "/v1/images/pull",
            serde_json::json!({"reference": "127.0.0.1:5000/bb:1", "username": "u"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
    assert!(e.message.contains("username and password"), "{}", e.message);
    // The registry has no such image: a 404 before any stream.
    let (s, e) = h
        .refused(
            "/v1/images/pull",
            serde_json::json!({"reference": "127.0.0.1:5000/missing:1"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(
        h.node.st().pulls.len(),
        1,
        "a refused request reached the node's pull"
    );
}

#[tokio::test]
async fn up_pulls_missing_registry_images_only() {
    let h = harness(FakeNode::with_image("busybox")).await;
    let (progress, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/a", "image": "127.0.0.1:5000/other:1"}),
        )
        .await;
    assert!(
        progress
            .iter()
            .any(|p| p.contains("pulling 127.0.0.1:5000/other:1")),
        "{progress:?}"
    );
    let w: Workspace = match last {
        StreamLine::Result(v) => serde_json::from_value(v).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(w.image, format!("sha256:{}", "ef".repeat(32)));
    // Present now: a second up does not pull again.
    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/b", "image": "127.0.0.1:5000/other:1"}),
        )
        .await;
    assert!(matches!(last, StreamLine::Result(_)), "{last:?}");
    assert_eq!(h.node.st().pulls.len(), 1);

    // A plain name is never pulled; a registry image that cannot be pulled leaves nothing.
    let (s, e) = h
        .refused(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/c", "image": "nosuch"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, e) = h
        .refused(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/c", "image": "127.0.0.1:5000/missing:1"}),
        )
        .await;
    assert_eq!((s, e.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(h.node.st().pulls.len(), 1);
    assert_eq!(h.names().await, vec!["a", "b"]);
    assert!(h.node.st().removed.is_empty());
}

#[tokio::test]
async fn inspect_reports_node_details() {
    let h = harness(FakeNode::with_image("debian")).await;
    let (_, last) = h
        .stream("/v1/workspaces", serde_json::json!({"source": "/src/w"}))
        .await;
    assert!(matches!(last, StreamLine::Result(_)), "{last:?}");
    let (s, v) = h.json(Method::GET, "/v1/workspaces/w/inspect", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let i: WorkspaceInspect = serde_json::from_value(v).unwrap();
    assert_eq!(i.workspace.name, "w");
    assert_eq!(i.uid_range.first, i.workspace.uid_base);
    assert_eq!(i.uid_range.last, i.workspace.uid_base + 65535);
    assert_eq!(i.pid, Some(1));
    assert_eq!(i.usage.pids, Some(1));
    assert_eq!(i.cgroups.len(), 1);
    let (s, _) = h.json(Method::POST, "/v1/workspaces/w/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = h.json(Method::GET, "/v1/workspaces/w/inspect", None).await;
    let i: WorkspaceInspect = serde_json::from_value(v).unwrap();
    assert_eq!((i.pid, i.usage.pids), (None, None));
    assert!(i.cgroups.is_empty());
    let (s, v) = h
        .json(Method::GET, "/v1/workspaces/nope/inspect", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (_, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    for schema in [
        "WorkspaceInspect",
        "UsageInfo",
        "NetworkInfo",
        "IdRange",
        "PullImage",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing from the openapi document"
        );
    }
}

async fn egress_policy_is_validated_persisted_and_applied(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    // Bad input at create leaves nothing behind.
    for (deny, why) in [
        (serde_json::json!(["10.0.0.1/8"]), "did you mean 10.0.0.0/8"),
        (serde_json::json!(["nope"]), "not an IPv4 address"),
        (
            serde_json::json!((0..65)
                .map(|i| format!("10.0.{i}.0/24"))
                .collect::<Vec<_>>()),
            "too many egress rules: 65 (at most 64)",
        ),
    ] {
        let (s, e) = h
            .refused(
                "/v1/workspaces",
                serde_json::json!({"source": "/src/w", "egress": {"deny": deny}}),
            )
            .await;
        assert_eq!((s, e.code.as_str()), (StatusCode::BAD_REQUEST, "invalid"));
        assert!(e.message.contains(why), "{}", e.message);
    }
    assert!(h.names().await.is_empty());

    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/w", "egress": {"deny": ["192.0.2.7", "10.0.0.0/8"]}}),
        )
        .await;
    let StreamLine::Result(w) = last else {
        panic!("{last:?}")
    };
    assert_eq!(
        w["egress"]["deny"],
        serde_json::json!(["192.0.2.7/32", "10.0.0.0/8"])
    );

    // Replace: persisted, applied, shown by get and inspect.
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/workspaces/w/egress",
            Some(serde_json::json!({"deny": ["198.51.100.0/24:443/tcp"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["egress"]["deny"],
        serde_json::json!(["198.51.100.0/24:443/tcp"])
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        h.node.st().egress.get(&id).unwrap(),
        &vec!["198.51.100.0/24:443/tcp".to_string()]
    );
    let (_, v) = h.json(Method::GET, "/v1/workspaces/w/inspect", None).await;
    let i: WorkspaceInspect = serde_json::from_value(v).unwrap();
    assert_eq!(i.egress.deny, vec!["198.51.100.0/24:443/tcp"]);
    assert_eq!(i.egress.node_deny, vec!["169.254.0.0/16"]);

    // Bad input and a failing node change nothing.
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/workspaces/w/egress",
            Some(serde_json::json!({"deny": ["1.2.3.4:80/sctp"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tcp or udp"));
    let (s, _) = h
        .json(
            Method::PUT,
            "/v1/workspaces/w/egress",
            Some(serde_json::json!({"allow": ["0.0.0.0/0"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    h.node.st().fail_egress = true;
    let (s, _) = h
        .json(
            Method::PUT,
            "/v1/workspaces/w/egress",
            Some(serde_json::json!({"deny": []})),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    h.node.st().fail_egress = false;
    let (_, v) = h.json(Method::GET, "/v1/workspaces/w", None).await;
    assert_eq!(
        v["egress"]["deny"],
        serde_json::json!(["198.51.100.0/24:443/tcp"])
    );

    // Allow all; the record survives a new manager over the same database.
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/workspaces/w/egress",
            Some(serde_json::json!({"deny": []})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["egress"]["deny"], serde_json::json!([]));
    let rec = h.manager.store().get("w").await.unwrap().unwrap();
    assert!(rec.spec.egress.deny.is_empty());
    let (s, _) = h
        .json(
            Method::PUT,
            "/v1/workspaces/nope/egress",
            Some(serde_json::json!({"deny": []})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn data_dir_lock_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let lock = crate::DataDirLock::acquire(dir.path()).unwrap();
    let err = crate::DataDirLock::acquire(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("another hearth server"), "{err}");
    drop(lock);
    let _again = crate::DataDirLock::acquire(dir.path()).unwrap();

    let t = crate::ensure_token(dir.path()).unwrap();
    assert_eq!(t.len(), 64);
    assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(crate::ensure_token(dir.path()).unwrap(), t);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

async fn server_binds_writes_server_json_and_stops(b: Backend) {
    let db = TestDb::new(b);
    let dir = &db.dir;
    let node: Arc<dyn NodeApi> = Arc::new(FakeNode::default());
    let server = crate::Server::bind(
        crate::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_rate: Default::default(),
            rate: Default::default(),
            upload_max: crate::uploads::DEFAULT_UPLOAD_MAX,
            ssh_listen: None,
            database: Some(db.database.clone()),
            node_url: None,
        },
        node.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let info: crate::ServerInfo =
        serde_json::from_slice(&std::fs::read(dir.path().join("server.json")).unwrap()).unwrap();
    assert_eq!(info.url, format!("http://127.0.0.1:{}", addr.port()));
    // A second server on the same dir is refused while the first holds the lock.
    let second = crate::Server::bind(
        crate::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_rate: Default::default(),
            rate: Default::default(),
            upload_max: crate::uploads::DEFAULT_UPLOAD_MAX,
            ssh_listen: None,
            database: Some(db.database.clone()),
            node_url: None,
        },
        node,
    )
    .await;
    assert!(second.is_err());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!dir.path().join("server.json").exists());
}

#[tokio::test]
async fn exec_over_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{self, Message};

    let dir = tempfile::tempdir().unwrap();
    let node = FakeNode::with_image("busybox");
    // A running workspace, made before the server opens the database.
    {
        let store = Store::open(&dir.path().join("hearth.db")).await.unwrap();
        let mgr = Manager::new(store.clone(), Arc::new(node.clone()));
        let (ptx, _prx) = tokio::sync::mpsc::unbounded_channel();
        let req = CreateWorkspace {
            source: "/src/ws".into(),
            image: Some("busybox".into()),
            name: None,
            limits: Default::default(),
            egress: None,
            idle_timeout: None,
            devcontainer_config: None,
            branch: None,
            node_selector: None,
        };
        mgr.create(&crate::auth::Caller::admin(), req, ptx)
            .await
            .unwrap();
        store.close().await;
    }
    let server = crate::Server::bind(
        crate::ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_rate: Default::default(),
            rate: Default::default(),
            upload_max: crate::uploads::DEFAULT_UPLOAD_MAX,
            ssh_listen: None,
            database: None,
            node_url: None,
        },
        Arc::new(node.clone()),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let token = std::fs::read_to_string(dir.path().join("token")).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));

    let connect = |name: &str, tok: Option<&str>| {
        let mut req = format!("ws://{addr}/v1/workspaces/{name}/exec")
            .into_client_request()
            .unwrap();
        if let Some(t) = tok {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    match connect("ws", None).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    match connect("nope", Some(&token)).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }

    let (mut ws, _) = connect("ws", Some(&token)).await.unwrap();
    let req = ExecRequest {
        argv: vec!["cat".into()],
        ..Default::default()
    };
    ws.send(Message::Text(serde_json::to_string(&req).unwrap().into()))
        .await
        .unwrap();
    for f in [
        ClientFrame::Stdin(b"hello".to_vec()),
        ClientFrame::Resize { rows: 24, cols: 80 },
        ClientFrame::StdinEof,
    ] {
        ws.send(Message::Binary(f.encode().into())).await.unwrap();
    }
    let mut frames = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            Message::Binary(b) => frames.push(ServerFrame::decode(&b).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        frames,
        vec![
            ServerFrame::Stdout(b"hello".to_vec()),
            ServerFrame::Stdout(b"24x80".to_vec()),
            ServerFrame::Stderr(b"eof".to_vec()),
            ServerFrame::Exit(42),
        ]
    );

    // A command that cannot start comes back as an error frame.
    let (mut ws, _) = connect("ws", Some(&token)).await.unwrap();
    let req = ExecRequest {
        argv: vec!["fail".into()],
        ..Default::default()
    };
    ws.send(Message::Text(serde_json::to_string(&req).unwrap().into()))
        .await
        .unwrap();
    let msg = ws.next().await.unwrap().unwrap();
    let Message::Binary(b) = msg else {
        panic!("{msg:?}")
    };
    match ServerFrame::decode(&b).unwrap() {
        ServerFrame::Error(m) => assert!(m.contains("no such command"), "{m}"),
        other => panic!("{other:?}"),
    }

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

async fn failed_final_snapshot_keeps_the_workspace_stopped_and_says_why(b: Backend) {
    // FakeNode has no snapshot store, so every snapshot fails.
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/other", "name": "w"}),
        )
        .await;
    assert!(matches!(last, StreamLine::Result(_)), "{last:?}");
    let (s, v) = h.json(Method::POST, "/v1/workspaces/w/stop", None).await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("stopped")));
    assert!(
        v["snapshot_error"]
            .as_str()
            .is_some_and(|e| e.contains("no snapshot store")),
        "{v}"
    );
    assert!(v["last_snapshot"].is_null(), "{v}");
    let (s, _) = h
        .json(Method::POST, "/v1/workspaces/w/snapshots", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = h
        .json(
            Method::POST,
            "/v1/workspaces/w/fork",
            Some(serde_json::json!({"snapshot": "x", "name": "w2"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

async fn limits_change_in_place_and_disks_only_grow(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/w", "limits": {"disk_bytes": 1u64 << 30}}),
        )
        .await;
    let StreamLine::Result(w) = last else {
        panic!("{last:?}")
    };
    let id = w["id"].as_str().unwrap().to_string();
    let patch = |body: serde_json::Value| {
        let h = &h;
        async move {
            h.json(Method::PATCH, "/v1/workspaces/w/limits", Some(body))
                .await
        }
    };
    // Only what is named changes; the node gets the whole new set.
    let (s, v) = patch(serde_json::json!({"pids": 100, "disk_bytes": 2u64 << 30})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["limits"]["pids"], 100);
    assert_eq!(v["limits"]["disk_bytes"], 2u64 << 30);
    assert_eq!(v["limits"]["memory_bytes"], Limits::default().memory_bytes);
    let applied = h.node.st().limits.get(&id).copied().unwrap();
    assert_eq!((applied.pids, applied.disk_bytes), (100, 2 << 30));
    // Refused, nothing changed.
    for (body, why) in [
        (
            serde_json::json!({"disk_bytes": 1u64 << 30}),
            "disks only grow",
        ),
        (serde_json::json!({"pids": 3}), "pids 3 is out of range"),
        (serde_json::json!({"cpu": 3}), "unknown field"),
    ] {
        let (s, v) = patch(body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(why), "{body}: {m}");
    }
    // A node that refuses leaves the recorded limits as they were.
    h.node.st().fail_limits = true;
    let (s, v) = patch(serde_json::json!({"memory_bytes": 128u64 << 20})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    h.node.st().fail_limits = false;
    let (_, v) = h.json(Method::GET, "/v1/workspaces/w", None).await;
    assert_eq!(v["limits"]["memory_bytes"], Limits::default().memory_bytes);
    assert_eq!(v["limits"]["pids"], 100);
    let (s, _) = h
        .json(
            Method::PATCH,
            "/v1/workspaces/nope/limits",
            Some(serde_json::json!({"pids": 100})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn unknown_names_leave_no_state_behind(b: Backend) {
    let unlimited = crate::ratelimit::RateLimit {
        per_second: 0,
        burst: 0,
    };
    let h = harness_with(b, FakeNode::with_image("busybox"), unlimited).await;
    // Valid names that do not exist: answered 404, and no per-name lock outlives its request.
    for i in 0..1000 {
        let name = format!("ghost-{i}");
        for (m, uri) in [
            (Method::POST, format!("/v1/workspaces/{name}/start")),
            (Method::POST, format!("/v1/workspaces/{name}/stop")),
            (Method::DELETE, format!("/v1/workspaces/{name}")),
        ] {
            let (s, v) = h.json(m.clone(), &uri, None).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{m} {uri}: {v}");
        }
    }
    assert_eq!(h.manager.lock_count(), 0);

    // Names that can never exist are refused before the manager sees them, and the
    // answer does not echo 60 KB back.
    let long = "a".repeat(60 * 1024);
    for (m, uri) in [
        (Method::POST, format!("/v1/workspaces/{long}/start")),
        (Method::POST, format!("/v1/workspaces/{long}/stop")),
        (Method::DELETE, format!("/v1/workspaces/{long}")),
        (Method::GET, format!("/v1/workspaces/{long}")),
        (Method::POST, "/v1/workspaces/Bad_Name/start".to_string()),
        (Method::GET, "/v1/workspaces/-x/snapshots".to_string()),
    ] {
        let (s, b) = h.call(m.clone(), &uri, Some(TOKEN), None).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{m} {}",
            &uri[..40.min(uri.len())]
        );
        assert!(b.len() < 1024, "{} byte answer", b.len());
        let e: ErrorBody = serde_json::from_slice(&b).unwrap();
        assert_eq!(e.error.code, "invalid");
        assert!(
            e.error.message.contains("invalid workspace name"),
            "{}",
            e.error.message
        );
    }
    assert_eq!(h.manager.lock_count(), 0);

    // Real workspaces still work, and their locks go too.
    let (_, last) = h
        .stream(
            "/v1/workspaces",
            serde_json::json!({"source": "/src/a", "image": "busybox", "name": "a"}),
        )
        .await;
    assert!(matches!(last, StreamLine::Result(_)), "{last:?}");
    let (s, _) = h.json(Method::POST, "/v1/workspaces/a/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.json(Method::DELETE, "/v1/workspaces/a", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(h.manager.lock_count(), 0);
}

#[tokio::test]
async fn request_rate_is_limited_per_token() {
    let rate = crate::ratelimit::RateLimit {
        per_second: 1,
        burst: 5,
    };
    let h = harness_with(Backend::Sqlite, FakeNode::default(), rate).await;
    for i in 0..5 {
        let (s, _) = h
            .call(Method::GET, "/v1/workspaces", Some(TOKEN), None)
            .await;
        assert_eq!(s, StatusCode::OK, "request {i}");
    }
    let req = Request::builder()
        .uri("/v1/workspaces")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.error.code, "too_many_requests");
    // Bad tokens are refused as before (not counted against the holder's rate), and the
    // open routes stay open.
    let (s, _) = h
        .call(Method::GET, "/v1/workspaces", Some("wrong"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let r429 = &doc["paths"]["/v1/workspaces"]["get"]["responses"]["429"];
    assert!(r429["headers"]["Retry-After"].is_object(), "{r429}");
    assert!(doc["paths"]["/v1/health"]["get"]["responses"]["429"].is_null());
}

/// Open routes are limited per client address: the peer's, or behind a trusted proxy
/// the one it forwarded for; the API's own routes and health are not counted there.
#[tokio::test]
async fn open_routes_are_limited_per_client_address() {
    let h = harness(FakeNode::default()).await;
    let burst = crate::ratelimit::RateLimit::PUBLIC.burst;
    let get = |uri: &str, peer: &str, fwd: Option<&str>, token: Option<&str>| {
        let mut b = Request::builder().uri(uri);
        if let Some(f) = fwd {
            b = b.header("x-forwarded-for", f);
        }
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = b.body(Body::empty()).unwrap();
        let peer: std::net::SocketAddr = format!("{peer}:40000").parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let app = h.app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let retry = resp.headers().get(header::RETRY_AFTER).cloned();
            (resp.status(), retry)
        }
    };
    // Up to the burst, then refused (the refill during the loop is 10 a second).
    let mut ok = 0;
    loop {
        let (s, retry) = get("/v1/auth", "192.0.2.1", None, None).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry.is_some());
            break;
        }
        assert_eq!(s, StatusCode::OK);
        ok += 1;
        assert!(ok <= burst + 20, "no limit after {ok} requests");
    }
    assert!(ok >= burst, "limited after {ok}");
    assert_eq!(
        get("/v1/auth", "192.0.2.2", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get("/v1/workspaces", "192.0.2.1", None, Some(TOKEN))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        get("/v1/health", "192.0.2.1", None, None).await.0,
        StatusCode::OK
    );
    // A forwarded-for header from an untrusted peer changes nothing.
    let (s, _) = get("/v1/auth", "192.0.2.1", Some("198.51.100.9"), None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // From a trusted proxy, each forwarded-for client has its own bucket.
    h.manager
        .audit_settings()
        .set_trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]);
    let mut limited = false;
    for _ in 0..burst + 20 {
        let (s, _) = get("/v1/auth", "10.0.0.5", Some("198.51.100.7"), None).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
    }
    assert!(limited);
    let (s, _) = get("/v1/auth", "10.0.0.5", Some("198.51.100.8"), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn refusals_outside_handlers_are_json_and_documented() {
    let h = harness(FakeNode::default()).await;
    // A plain GET of the exec route (no WebSocket upgrade).
    let (s, b) = h
        .call(Method::GET, "/v1/workspaces/ws/exec", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let e: ErrorBody = serde_json::from_slice(&b).unwrap();
    assert!(e.error.message.contains("WebSocket upgrade"), "{e:?}");
    // A method the route does not take.
    let (s, b) = h.call(Method::PUT, "/v1/images", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let e: ErrorBody = serde_json::from_slice(&b).unwrap();
    assert_eq!(e.error.code, "method_not_allowed");
    // The document says so: 401 on every protected operation, the name rule on paths.
    let (_, b) = h.call(Method::GET, "/v1/openapi.json", None, None).await;
    let doc: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let start = &doc["paths"]["/v1/workspaces/{name}/start"]["post"];
    assert!(start["responses"]["401"].is_object(), "{start}");
    assert!(start["responses"]["400"].is_object(), "{start}");
    let name = &start["parameters"][0]["schema"];
    assert_eq!(name["maxLength"], 63, "{name}");
    assert!(name["pattern"].is_string(), "{name}");
    assert!(doc["paths"]["/v1/health"]["get"]["responses"]["401"].is_null());
    let create = &doc["paths"]["/v1/workspaces"]["post"]["responses"];
    assert!(
        create["413"].is_object() && create["400"].is_object(),
        "{create}"
    );
}

mod prebuilds;
mod sessions;
mod state;
mod users;

#[tokio::test]
async fn dashboard_is_served_with_its_headers() {
    let h = harness(FakeNode::default()).await;
    let get = |uri: &str, etag: Option<&str>| {
        let mut b = Request::builder().method(Method::GET).uri(uri);
        if let Some(t) = etag {
            b = b.header(header::IF_NONE_MATCH, t);
        }
        h.app.clone().oneshot(b.body(Body::empty()).unwrap())
    };
    // No token needed: the page signs in itself.
    let r = get("/", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let hd = r.headers().clone();
    assert_eq!(hd[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(hd[header::CACHE_CONTROL], "no-cache");
    assert_eq!(hd[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let csp = hd[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert!(std::str::from_utf8(&body).unwrap().contains("<html"));
    // Revalidation: the same ETag is a 304 without a body.
    let etag = hd[header::ETAG].to_str().unwrap().to_string();
    let r = get("/", Some(&etag)).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
    let r = get("/", Some("\"other\"")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Only what the build embedded exists: no path reaches the filesystem.
    for uri in [
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
        "/assets//etc/passwd",
        "/index.html/x",
    ] {
        let r = get(uri, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{uri}");
    }
    // Hashed assets of a built dashboard are immutable, with their own content type.
    if crate::web::BUILT {
        let html = String::from_utf8(body.to_vec()).unwrap();
        let js = html
            .split('"')
            .find(|p| p.starts_with("/assets/") && p.ends_with(".js"))
            .expect("index.html names its script");
        let r = get(js, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let ct = r.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.ends_with("javascript; charset=utf-8"), "{ct}");
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
    }
}

on_both_backends!(
    quotas_refuse_growth_past_them,
    concurrent_creates_cannot_both_take_the_last_slot,
    audit_records_mutations_and_users_see_their_own,
);

/// Adds user `name` through the API; its token.
async fn add_user(h: &Harness, name: &str) -> String {
    let (s, v) = h
        .json(
            Method::POST,
            "/v1/users",
            Some(serde_json::json!({ "name": name })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// A JSON call with `token`.
async fn json_as(
    h: &Harness,
    app: &axum::Router,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            b.body(Body::from(v.to_string())).unwrap()
        }
        None => b.body(Body::empty()).unwrap(),
    };
    let _ = h;
    let resp = app.clone().oneshot(req).await.unwrap();
    let s = resp.status();
    let streamed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(NDJSON.as_bytes()));
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    if streamed {
        // The stream's last line: `{"result": ...}` or `{"error": ...}`.
        let last = bytes
            .split(|c| *c == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap();
        return (s, serde_json::from_slice(last).unwrap());
    }
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (s, v)
}

async fn quotas_refuse_growth_past_them(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    let create = |name: &'static str| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/v1/workspaces",
                Some(TOKEN),
                Some(serde_json::json!({"source": "/src/x", "name": name}).to_string()),
            )
            .await
        }
    };
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/quotas/default",
            Some(serde_json::json!({"max_running": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(create("w1").await.0, StatusCode::OK);
    // Refused before the stream starts: a plain 403 that says which quota and by how much.
    let (s, body) = create("w2").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let e: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert_eq!(e.error.code, "quota_exceeded");
    assert!(
        e.error.message.starts_with(
            "running workspace quota of user admin exceeded: 1 in use + 1 requested > 1"
        ),
        "{}",
        e.error.message
    );
    assert!(h.manager.store().get("w2").await.unwrap().is_none());
    h.json(Method::POST, "/v1/workspaces/w1/stop", None).await;
    assert_eq!(create("w2").await.0, StatusCode::OK);
    let (s, v) = h.json(Method::POST, "/v1/workspaces/w1/start", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        h.manager.store().get("w1").await.unwrap().unwrap().state,
        WorkspaceState::Stopped
    );
    let (s, v) = h.json(Method::GET, "/v1/users/admin/quota", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["source"], "default");
    assert_eq!(v["usage"]["workspaces"], 2);
    assert_eq!(v["usage"]["running"], 1);
    assert_eq!(v["usage"]["memory_bytes"], Limits::default().memory_bytes);

    // A user's own quota replaces the default; memory counts on resize of a running one.
    let mem = Limits::default().memory_bytes;
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/users/admin/quota",
            Some(serde_json::json!({"memory_bytes": mem + (1 << 30)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["source"], "user");
    assert!(v["quota"]["max_running"].is_null());
    let (s, v) = h
        .json(
            Method::PATCH,
            "/v1/workspaces/w2/limits",
            Some(serde_json::json!({"memory_bytes": mem + (2 << 30)})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with(
            "memory quota of user admin exceeded: 4 GiB in use + 2 GiB requested > 5 GiB"
        ),
        "{v}"
    );
    let rec = h.manager.store().get("w2").await.unwrap().unwrap();
    assert_eq!(rec.spec.limits.memory_bytes, mem);
    let (s, _) = h
        .json(
            Method::PATCH,
            "/v1/workspaces/w2/limits",
            Some(serde_json::json!({"memory_bytes": mem + (1 << 30)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Over the limit now (lowered): what does not grow still goes through.
    h.json(
        Method::PUT,
        "/v1/users/admin/quota",
        Some(serde_json::json!({"memory_bytes": 1u64 << 30})),
    )
    .await;
    let (s, _) = h.json(Method::POST, "/v1/workspaces/w2/stop", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h.json(Method::DELETE, "/v1/users/admin/quota", None).await;
    assert_eq!((s, &v["source"]), (StatusCode::OK, &"default".into()));

    // Users read their own quota only; only admins set quotas.
    let bob = add_user(&h, "bob").await;
    let (s, v) = json_as(&h, &h.app, &bob, Method::GET, "/v1/users/bob/quota", None).await;
    assert_eq!((s, &v["quota"]["max_running"]), (StatusCode::OK, &1.into()));
    let (s, _) = json_as(&h, &h.app, &bob, Method::GET, "/v1/users/admin/quota", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = json_as(
        &h,
        &h.app,
        &bob,
        Method::PUT,
        "/v1/users/bob/quota",
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = json_as(&h, &h.app, &bob, Method::GET, "/v1/quotas", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h.json(Method::GET, "/v1/quotas", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["default"]["max_running"], 1);
    assert_eq!(v["users"].as_array().unwrap().len(), 2);
    for (uri, body) in [
        ("/v1/users/nobody/quota", serde_json::json!({})),
        (
            "/v1/users/bob/quota",
            serde_json::json!({"disk_bytes": u64::MAX}),
        ),
        ("/v1/users/bob/quota", serde_json::json!({"disk": 1})),
    ] {
        let (s, v) = h.json(Method::PUT, uri, Some(body)).await;
        assert!(
            s == StatusCode::NOT_FOUND || s == StatusCode::BAD_REQUEST,
            "{uri} {v}"
        );
    }
    // A removed user's quota goes with them.
    h.json(
        Method::PUT,
        "/v1/users/bob/quota",
        Some(serde_json::json!({"max_workspaces": 1})),
    )
    .await;
    let (s, _) = h.json(Method::DELETE, "/v1/users/bob", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let left = h.manager.store().quotas().await.unwrap();
    assert!(left.iter().all(|(u, _)| u != "bob"), "{left:?}");
}

/// Creates from two servers on one database, at once: no more than the quota get in,
/// the others are refused as over it.
async fn concurrent_creates_cannot_both_take_the_last_slot(b: Backend) {
    let h = harness_on(b, FakeNode::with_image("debian")).await;
    let carol = add_user(&h, "carol").await;
    let (s, v) = h
        .json(
            Method::PUT,
            "/v1/users/carol/quota",
            Some(serde_json::json!({"max_workspaces": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A second server: its own pool and manager (and creation lock) on the same database.
    let other = Arc::new(Manager::new(h._db.store().await, Arc::new(h.node.clone())));
    let app2 = router(AppState {
        manager: other,
        public_rate: Default::default(),
        rate: Default::default(),
        uploads: crate::uploads::Uploads {
            dir: h._db.dir.path().join("uploads"),
            max: 1 << 20,
        },
        ssh: Default::default(),
        metrics: Default::default(),
        links: Arc::new(crate::links::Links::new(h._db.dir.path().join("uploads"))),
        auth: Default::default(),
    });
    let mut tasks = Vec::new();
    for i in 0..8 {
        let app = if i % 2 == 0 { &h.app } else { &app2 };
        let body = serde_json::json!({"source": "https://git.example/x", "name": format!("c{i}")});
        tasks.push(json_as(
            &h,
            app,
            &carol,
            Method::POST,
            "/v1/workspaces",
            Some(body),
        ));
    }
    let results = futures_util::future::join_all(tasks).await;
    let mut made = 0;
    for (s, v) in &results {
        if *s == StatusCode::OK && v.get("result").is_some() {
            made += 1;
            continue;
        }
        // Refused up front (403) or, when the check under the lock caught it, as the
        // stream's last line.
        let code = v["error"]["code"].as_str().unwrap_or_default();
        assert_eq!(code, "quota_exceeded", "{s} {v}");
    }
    assert_eq!(made, 3, "{results:?}");
    let usage = h.manager.store().usage("carol").await.unwrap();
    assert_eq!(usage.workspaces, 3);
}

/// Polls the audit log (streamed calls are written once their body is gone).
async fn audit_until(
    h: &Harness,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    for _ in 0..500 {
        let (s, v) = h.json(Method::GET, "/v1/audit?limit=1000", None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let all = v.as_array().unwrap().clone();
        if pred(&all) {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the audit log never showed what was expected");
}

async fn audit_records_mutations_and_users_see_their_own(b: Backend) {
    let node = FakeNode::with_image("debian");
    let h = harness_on(b, node.clone()).await;
    let bob = add_user(&h, "bob").await;
    let (s, _) = h.json(Method::POST, "/v1/workspaces/nope/stop", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .call(
            Method::POST,
            "/v1/workspaces/nope/stop",
            Some("wrong"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.json(Method::GET, "/v1/workspaces", None).await;
    let (s, v) = json_as(
        &h,
        &h.app,
        &bob,
        Method::POST,
        "/v1/workspaces",
        Some(serde_json::json!({"source": "https://git.example/bobs"})),
    )
    .await;
    assert!(s == StatusCode::OK && v.get("result").is_some(), "{v}");
    node.st().fail_create = true;
    let (_, v) = json_as(
        &h,
        &h.app,
        &bob,
        Method::POST,
        "/v1/workspaces",
        Some(serde_json::json!({"source": "https://git.example/broken", "name": "broken"})),
    )
    .await;
    assert!(v.get("error").is_some(), "{v}");

    let all = audit_until(&h, |all| {
        all.iter()
            .any(|e| e["target"] == "broken" && e["ok"] == false)
    })
    .await;
    let one = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        all.iter()
            .find(|e| pred(e))
            .unwrap_or_else(|| panic!("{all:#?}"))
            .clone()
    };
    let e = one(&|e| e["status"] == 404);
    assert_eq!(e["user"], "admin");
    assert_eq!(e["action"], "POST /v1/workspaces/{name}/stop");
    assert_eq!(e["target"], "nope");
    assert_eq!(e["ok"], false);
    assert!(e["error"].as_str().unwrap().contains("not found"), "{e}");
    let e = one(&|e| e["status"] == 401);
    assert!(e["user"].is_null(), "{e}");
    let e = one(&|e| e["action"] == "POST /v1/users");
    assert_eq!((&e["target"], &e["ok"]), (&"bob".into(), &true.into()));
    let e = one(&|e| e["target"] == "bobs");
    assert_eq!((&e["user"], &e["ok"]), (&"bob".into(), &true.into()));
    let e = one(&|e| e["target"] == "broken");
    assert_eq!(e["user"], "bob");
    assert!(e["error"].as_str().unwrap().contains("cannot clone"), "{e}");
    assert!(all.iter().all(|e| e["action"] != "GET /v1/workspaces"));
    // Newest first.
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    // No token in any entry.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&bob) && !text.contains(TOKEN));

    // Bob sees his own only; filters and paging.
    let (s, v) = json_as(&h, &h.app, &bob, Method::GET, "/v1/audit", None).await;
    assert_eq!(s, StatusCode::OK);
    let mine = v.as_array().unwrap();
    assert_eq!(mine.len(), 2, "{v}");
    assert!(mine.iter().all(|e| e["user"] == "bob"));
    let (s, _) = json_as(&h, &h.app, &bob, Method::GET, "/v1/audit?user=admin", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = h
        .json(Method::GET, "/v1/audit?user=bob&limit=1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let page = v.as_array().unwrap();
    assert_eq!(page.len(), 1);
    let before = page[0]["id"].as_str().unwrap();
    let (_, v) = h
        .json(
            Method::GET,
            &format!("/v1/audit?user=bob&before={before}"),
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    for bad in [
        "since=yesterday",
        "limit=0",
        "limit=1001",
        "user=Bob",
        "what=1",
    ] {
        let (s, _) = h.json(Method::GET, &format!("/v1/audit?{bad}"), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (_, v) = h
        .json(Method::GET, "/v1/audit?since=2999-01-01T00:00:00Z", None)
        .await;
    assert_eq!(v, serde_json::json!([]));
    // Retention: entries older than it go at the gc.
    assert_eq!(
        h.manager
            .store()
            .prune_audit("2999-01-01T00:00:00Z")
            .await
            .unwrap() as usize,
        all.len()
    );
}
