//! `GET /metrics` of a real server with a running busybox workspace, parsed with a
//! Prometheus text-format parser (openmetrics-parser): the workspace's series are there
//! with values that follow what it does, API requests land in the latency histogram
//! under their route template, and only admins may scrape.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::TestServer;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

type Expo = MetricsExposition<PrometheusType, PrometheusValue>;

fn base_addr(s: &TestServer) -> String {
    let info = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let url = info["url"].as_str().unwrap();
    url.strip_prefix("http://").unwrap().to_string()
}

/// `GET path` over a fresh connection: status, content type, body.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn scrape(addr: &str, token: &str) -> Expo {
    let (status, ctype, body) = get(addr, "/metrics", Some(token));
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    openmetrics_parser::prometheus::parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e:?}):\n{body}"))
}

/// The value of `family`'s sample whose labels include `labels`.
fn value(e: &Expo, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let f = e.families.get(family)?;
    f.iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            PrometheusValue::Summary(_) => f64::NAN,
        })
}

#[test]
fn admins_scrape_workspace_and_request_metrics() {
    let s = TestServer::start();
    s.load_busybox();
    let repo = common::git_repo(s.data_dir(), "spin");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "busybox",
        "--memory",
        "256M",
    ]);
    let id = s
        .workspaces()
        .into_iter()
        .find(|w| w["name"] == "spin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = base_addr(&s);
    let admin = std::fs::read_to_string(s.data_dir().join("token"))
        .unwrap()
        .trim()
        .to_string();
    let alice = s.ok(&["user", "add", "alice"]).trim().to_string();

    // Only admins.
    assert_eq!(get(&addr, "/metrics", None).0, 401);
    assert_eq!(get(&addr, "/metrics", Some("not-a-token")).0, 401);
    let (status, _, body) = get(&addr, "/metrics", Some(&alice));
    assert_eq!(status, 403, "{body}");

    let ws = [
        ("workspace", "spin"),
        ("id", id.as_str()),
        ("owner", "admin"),
    ];
    let m0 = scrape(&addr, &admin);
    let cpu0 = value(&m0, "hearth_workspace_cpu_usage_seconds_total", &ws).expect("cpu series");
    assert_eq!(
        value(&m0, "hearth_workspace_memory_limit_bytes", &ws),
        Some((256u64 << 20) as f64)
    );
    assert_eq!(
        value(&m0, "hearth_workspace_memory_high_bytes", &ws),
        Some(241_590_272.0),
        "90% of the limit, page aligned"
    );
    let mem = value(&m0, "hearth_workspace_memory_usage_bytes", &ws).unwrap();
    assert!(mem > 0.0 && mem < (256u64 << 20) as f64, "{mem}");
    assert_eq!(
        value(&m0, "hearth_workspace_oom_kills_total", &ws),
        Some(0.0)
    );
    assert!(value(&m0, "hearth_workspace_pids", &ws).unwrap() >= 1.0);
    assert!(value(&m0, "hearth_workspace_cpu_throttled_periods_total", &ws).is_some());
    assert!(value(&m0, "hearth_workspace_cpu_throttled_seconds_total", &ws).is_some());

    // About a second of CPU in the workspace shows in its usage.
    s.exec(
        "spin",
        &[
            "sh",
            "-c",
            // A fixed amount of work (about 1.8 s of CPU on this kind of machine), not
            // of wall time: on a loaded machine a 2 s loop got only 0.3 s of CPU.
            "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done",
        ],
    );
    // A request under a route with a parameter, and one no route takes.
    s.ok(&["inspect", "spin"]);
    assert_eq!(get(&addr, "/v1/no-such-route-xyz", Some(&admin)).0, 404);

    let m1 = scrape(&addr, &admin);
    let cpu1 = value(&m1, "hearth_workspace_cpu_usage_seconds_total", &ws).unwrap();
    assert!(cpu1 >= cpu0 + 0.5, "cpu {cpu0} -> {cpu1}");

    // The CPU controller (on by default) shows its decision and its own cost.
    assert_eq!(value(&m1, "hearth_workspace_cpu_class", &ws), Some(1.0));
    assert!(value(&m1, "hearth_workspace_cpu_weight", &ws).unwrap() >= 1.0);
    assert!(value(&m1, "hearth_cpu_controller_ticks_total", &[]).unwrap() > 0.0);

    let h = "hearth_http_request_duration_seconds";
    let inspects = value(
        &m1,
        h,
        &[
            ("route", "/v1/workspaces/{name}/inspect"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(inspects.unwrap_or(0.0) >= 1.0, "no inspect in {h}");
    let denied = value(&m1, h, &[("route", "/metrics"), ("status", "403")]);
    assert!(
        denied.unwrap_or(0.0) >= 1.0,
        "the refused scrape is not in {h}"
    );
    assert!(value(&m1, h, &[("route", "unmatched"), ("status", "404")]).unwrap_or(0.0) >= 1.0);
    // Raw paths never become labels.
    let (_, _, text) = get(&addr, "/metrics", Some(&admin));
    assert!(!text.contains("no-such-route-xyz"), "{text}");
    assert!(
        !text.contains("route=\"/v1/workspaces/spin"),
        "a raw path in a route label:\n{text}"
    );

    // A stopped workspace has no series.
    s.ok(&["stop", "spin"]);
    let m2 = scrape(&addr, &admin);
    assert_eq!(
        value(&m2, "hearth_workspace_cpu_usage_seconds_total", &ws),
        None
    );
}
