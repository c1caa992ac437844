//! `GET /metrics`: the Prometheus text format (prometheus-client), for admins.
//!
//! Per running workspace (labels `workspace`, `id`, `owner`): CPU time, throttling, CPU
//! pressure, memory use/limit/reclaim threshold, OOM kills, pids. Per API route: request
//! latency histograms labelled by the route as matched (`/v1/workspaces/{name}`, never the
//! raw path, so a scan of made-up paths adds no series), method and status. The
//! workspace series are built at each scrape from the node's counters, so a removed
//! workspace's series simply end.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::AppState;
use hearth_api::WorkspaceState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template; `unmatched` for requests no route took.
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkspaceLabels {
    workspace: String,
    id: String,
    owner: String,
}

/// The server's own metrics, alive as long as the server.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Histogram>,
}

/// 0.5 ms .. ~16 s in doublings: an inspect waits 200 ms for its CPU sample, a start
/// takes seconds, most requests a few milliseconds.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::new_with_constructor(request_histogram),
        }
    }
}

/// Middleware: times every request until its response head (a stream's body or a
/// WebSocket session is not in it).
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16().to_string(),
        })
        .observe(t0.elapsed().as_secs_f64());
    resp
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The series of one scrape, registered under their names.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
    ) -> Family<WorkspaceLabels, FloatGauge> {
        let f = Family::<WorkspaceLabels, FloatGauge>::default();
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, f.clone()),
            None => self.registry.register(name, help, f.clone()),
        }
        f
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
    ) -> Family<WorkspaceLabels, FloatCounter> {
        let f = Family::<WorkspaceLabels, FloatCounter>::default();
        match unit {
            Some(u) => self.registry.register_with_unit(name, help, u, f.clone()),
            None => self.registry.register(name, help, f.clone()),
        }
        f
    }
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text format (0.0.4)",
        content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, body = hearth_api::ErrorBody), (status = 403, body = hearth_api::ErrorBody)))]
pub async fn scrape(State(st): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let recs = st.manager.store().list().await?;
    let running: Vec<_> = recs
        .into_iter()
        .filter(|r| r.state == WorkspaceState::Running)
        .collect();
    let specs: Vec<_> = running.iter().map(|r| r.spec.clone()).collect();
    let samples = st.manager.node().metrics(&specs).await;

    let mut s = Scrape {
        registry: Registry::with_prefix("hearth"),
    };
    s.registry.register(
        "http_request_duration_seconds",
        "API request latency until the response head, by matched route, method and status",
        st.metrics.requests.clone(),
    );
    let cpu = s.counter(
        "workspace_cpu_usage",
        "CPU time used since the workspace started",
        Some(Unit::Seconds),
    );
    let thr_periods = s.counter(
        "workspace_cpu_throttled_periods",
        "CFS periods in which the workspace's CPU quota ran out",
        None,
    );
    let thr_time = s.counter(
        "workspace_cpu_throttled",
        "Time the workspace spent throttled by its CPU quota",
        Some(Unit::Seconds),
    );
    let psi = s.counter(
        "workspace_cpu_pressure_waiting",
        "PSI some: time in which at least one task of the workspace waited for a CPU",
        Some(Unit::Seconds),
    );
    let mem = s.gauge(
        "workspace_memory_usage",
        "Memory charged to the workspace (page cache included)",
        Some(Unit::Bytes),
    );
    let mem_limit = s.gauge(
        "workspace_memory_limit",
        "The workspace's hard memory limit",
        Some(Unit::Bytes),
    );
    let mem_high = s.gauge(
        "workspace_memory_high",
        "Where reclaim (and on cgroup v2 throttling) of the workspace's memory starts",
        Some(Unit::Bytes),
    );
    let ooms = s.counter(
        "workspace_oom_kills",
        "Processes the OOM killer killed in the workspace since it started",
        None,
    );
    let pids = s.gauge(
        "workspace_pids",
        "Processes and threads in the workspace",
        None,
    );

    for (rec, (id, m)) in running.iter().filter_map(|r| {
        samples
            .iter()
            .find(|(id, _)| *id == r.spec.id)
            .map(|x| (r, x))
    }) {
        let l = WorkspaceLabels {
            workspace: rec.spec.name.clone(),
            id: id.to_string(),
            owner: rec.owner.clone(),
        };
        let secs = |us: u64| us as f64 / 1e6;
        let set = |f: &Family<WorkspaceLabels, FloatGauge>, v: Option<u64>| {
            if let Some(v) = v {
                f.get_or_create(&l).set(v as f64);
            }
        };
        let add = |f: &Family<WorkspaceLabels, FloatCounter>, v: Option<f64>| {
            if let Some(v) = v {
                f.get_or_create(&l).inc_by(v);
            }
        };
        add(&cpu, m.cpu_usage_ns.map(|ns| ns as f64 / 1e9));
        add(&thr_periods, m.cpu.throttled_periods.map(|v| v as f64));
        add(&thr_time, m.cpu.throttled_us.map(secs));
        add(&psi, m.cpu.pressure_some_us.map(secs));
        set(&mem, m.memory.usage_bytes);
        set(&mem_limit, m.memory.limit_bytes);
        set(&mem_high, m.memory.high_bytes);
        add(&ooms, m.memory.oom_kills.map(|v| v as f64));
        set(&pids, m.pids);
    }

    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &s.registry)
        .map_err(|e| ApiError::internal(format!("cannot encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        out,
    )
        .into_response())
}
