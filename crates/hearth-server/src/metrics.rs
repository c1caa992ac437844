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
use crate::db::WorkspaceRecord;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    workspace: String,
    id: String,
    owner: String,
    class: String,
}

/// The CPU controller's decisions per workspace and its own cost (`NodeApi::cpu_views`,
/// `cpu_controller_stats`).
fn controller(
    s: &mut Scrape,
    running: &[WorkspaceRecord],
    views: Vec<(hearth_node::WorkspaceId, hearth_node::CpuView)>,
    stats: Option<hearth_node::CpuControllerStats>,
) {
    let class = Family::<ClassLabels, Gauge>::default();
    s.registry.register(
        "workspace_cpu_class",
        "The CPU controller's class for the workspace (1 for the current one)",
        class.clone(),
    );
    let weight = s.gauge(
        "workspace_cpu_weight",
        "CPU weight in force (cgroup v2 scale; v1 shares / 10.24)",
        None,
    );
    let quota = s.gauge(
        "workspace_cpu_quota_cores",
        "CFS quota in force, cores (absent: none)",
        None,
    );
    let idle = s.gauge(
        "workspace_cpu_idle",
        "1 while the workspace runs as SCHED_IDLE (cpu.idle)",
        None,
    );
    let budget = s.gauge(
        "workspace_cpu_budget",
        "CPU time the workspace may still use above the light rate before it is demoted",
        Some(Unit::Seconds),
    );
    let recent = s.gauge(
        "workspace_cpu_recent_cores",
        "CPU use over about the last second, cores",
        None,
    );
    for (id, v) in views {
        let Some(rec) = running.iter().find(|r| r.spec.id == id) else {
            continue;
        };
        let l = WorkspaceLabels {
            workspace: rec.spec.name.clone(),
            id: id.to_string(),
            owner: rec.owner.clone(),
        };
        class
            .get_or_create(&ClassLabels {
                workspace: l.workspace.clone(),
                id: l.id.clone(),
                owner: l.owner.clone(),
                class: v.class.as_str().to_string(),
            })
            .set(1);
        weight.get_or_create(&l).set(v.weight as f64);
        if let Some(q) = v.quota_millicores {
            quota.get_or_create(&l).set(q as f64 / 1000.0);
        }
        idle.get_or_create(&l).set(if v.idle { 1.0 } else { 0.0 });
        budget.get_or_create(&l).set(v.budget_ms as f64 / 1000.0);
        recent
            .get_or_create(&l)
            .set(v.usage_millicores as f64 / 1000.0);
    }
    if let Some(c) = stats {
        let cost = FloatCounter::default();
        cost.inc_by(c.cpu_ns as f64 / 1e9);
        s.registry.register_with_unit(
            "cpu_controller_cpu",
            "CPU time the node's CPU controller loop used since it started",
            Unit::Seconds,
            cost,
        );
        let ticks = Counter::<u64>::default();
        ticks.inc_by(c.ticks);
        s.registry
            .register("cpu_controller_ticks", "Control loop iterations", ticks);
        let n = Gauge::<i64>::default();
        n.set(c.workspaces as i64);
        s.registry
            .register("cpu_controller_workspaces", "Workspaces under control", n);
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

    let node = st.manager.node();
    controller(
        &mut s,
        &running,
        node.cpu_views(),
        node.cpu_controller_stats(),
    );

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller's decisions come out under the workspace's labels, in the text
    /// format, with the units converted.
    #[test]
    fn controller_decisions_and_cost_are_series() {
        let spec: hearth_node::WorkspaceSpec = serde_json::from_value(serde_json::json!({
            "id": "ab12", "name": "web", "image": "sha256:00", "source": "/r", "slot": 0,
            "limits": {"memory_bytes": 1, "pids": 1, "cpu_weight": 100}
        }))
        .unwrap();
        let rec = WorkspaceRecord {
            spec: spec.clone(),
            state: WorkspaceState::Running,
            error: None,
            created_at: String::new(),
            updated_at: String::new(),
            last_snapshot: None,
            snapshot_error: None,
            owner: "alice".into(),
            node: "local".into(),
            node_selector: Default::default(),
            last_snapshot_at: None,
            idle: Default::default(),
        };
        let view = hearth_node::CpuView {
            class: hearth_node::CpuClass::Batch,
            weight: 100,
            quota_millicores: Some(1500),
            idle: true,
            usage_millicores: 2000,
            budget_ms: 2500,
            throttled_us_total: 0,
            pressure_some_avg10: None,
            since: String::new(),
        };
        let stats = hearth_node::CpuControllerStats {
            ticks: 42,
            cpu_ns: 3_000_000_000,
            workspaces: 1,
            ..Default::default()
        };
        let mut s = Scrape {
            registry: Registry::with_prefix("hearth"),
        };
        let other = hearth_node::WorkspaceId::new("cd34").unwrap();
        controller(
            &mut s,
            &[rec],
            vec![(spec.id.clone(), view.clone()), (other, view)],
            Some(stats),
        );
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &s.registry).unwrap();
        let l = r#"workspace="web",id="ab12",owner="alice""#;
        for want in [
            format!("hearth_workspace_cpu_class{{{l},class=\"batch\"}} 1"),
            format!("hearth_workspace_cpu_weight{{{l}}} 100.0"),
            format!("hearth_workspace_cpu_quota_cores{{{l}}} 1.5"),
            format!("hearth_workspace_cpu_idle{{{l}}} 1.0"),
            format!("hearth_workspace_cpu_budget_seconds{{{l}}} 2.5"),
            format!("hearth_workspace_cpu_recent_cores{{{l}}} 2.0"),
            "hearth_cpu_controller_cpu_seconds_total 3.0".into(),
            "hearth_cpu_controller_ticks_total 42".into(),
            "hearth_cpu_controller_workspaces 1".into(),
        ] {
            assert!(out.lines().any(|x| x == want), "no {want:?} in:\n{out}");
        }
        // A view of a workspace the server does not know as running is left out.
        assert!(!out.contains("cd34"), "{out}");
    }
}
