//! The OpenAPI document is a contract: schemathesis (PyPI) fuzzes a real `hearth server`
//! from it with every check, a fixed seed and a bounded number of examples, and every
//! answer must match what the document says (status codes, content types, bodies) and
//! every schema-valid request must be accepted.

mod common;

use std::process::Command;

use common::TestServer;

/// `HEARTH_SCHEMATHESIS`, else `schemathesis` on PATH (scripts/install-deps.sh --test).
fn schemathesis() -> String {
    std::env::var("HEARTH_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into())
}

#[test]
#[ignore = "open: create answers 200 + ndjson error for out-of-range limits (harden's status-before-stream change fixes it), \
            integer fields refuse JSON floats like 5.0 that JSON Schema calls integers, and egress rules have no schema pattern yet"]
fn schemathesis_finds_no_contract_violation() {
    let s = TestServer::start();
    let url = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let url: serde_json::Value = serde_json::from_str(&url).unwrap();
    let base = url["url"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(s.data_dir().join("token")).unwrap();
    let out = Command::new(schemathesis())
        .current_dir(s.data_dir())
        .args(["run", &format!("{base}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["--checks", "all", "--seed", "1", "--max-examples", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // The exec route is a WebSocket handshake; an HTTP fuzzer cannot speak it, and a
        // plain GET is rightly refused (400, JSON), which schemathesis would count as a
        // rejected valid request. Its upgrade refusal is tested in hearth-server's tests.
        .args(["--exclude-path", "/v1/workspaces/{name}/exec"])
        .arg("--no-color")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/install-deps.sh --test installs it)",
                schemathesis()
            )
        });
    assert!(
        out.status.success(),
        "schemathesis found contract violations:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
