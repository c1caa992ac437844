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

/// Where a schema-valid request can still be refused with 400 for a reason no JSON Schema
/// can state, positive-data acceptance also expects 400 (each operation says why). Every
/// other operation must accept whatever its schema allows. One filter key per entry:
/// schemathesis ORs an entry's filters, so `include-path` beside `include-method` would
/// match every operation of that method (`include-name` is "METHOD /path").
const CONFIG: &str = r#"
# a join token that fits the schema is still one the server never made (401), or one made
# for another node name (403)
[[operations]]
include-name = "POST /v1/nodes/join"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409"]
# source/path must name an existing git repository / image on the server host; a create
# is refused (403) past the quota the fuzzer may have set with PUT /v1/quotas/default
[[operations]]
include-name-regex = "^POST /v1/(workspaces|images/load|prebuilds)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# since must be a time the server can read (RFC 3339); not every generator honours the
# date-time format
[[operations]]
include-name = "GET /v1/audit"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403"]

# the body is any bytes; only a real archive loads
[[operations]]
include-path = "/v1/images/upload"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "413"]

# webhooks are off without --webhook-secret-file (404); with it only a signed body is taken
[[operations]]
include-path = "/v1/hooks/{forge}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "413"]

# the builder image must be loaded, the name must be an image name, the body a tar
[[operations]]
include-path = "/v1/images/build"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "413"]

# username and password go together
[[operations]]
include-path = "/v1/images/pull"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# a retention policy must keep something (keep_last + keep_daily > 0)
[[operations]]
include-path = "/v1/store/gc"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# a dotfiles repository must be a git URL or an existing repository on the server host
[[operations]]
include-name = "PUT /v1/me/dotfiles"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# the key must parse as an OpenSSH public key (base64 of a well-formed key blob)
[[operations]]
include-name = "POST /v1/ssh-keys"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "409"]

# a user holds at most 64 secrets
[[operations]]
include-name = "PUT /v1/secrets/{key}"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409"]

# egress rules with host bits set or a backwards port range match the syntax pattern
[[operations]]
include-path = "/v1/workspaces/{name}/egress"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

# a token that fits the schema is still one the server never made (a browser sign-in)
[[operations]]
include-name = "POST /v1/session"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401"]

# the fuzzer calls with a bearer token, which has no browser session to show or end
[[operations]]
include-name = "GET /v1/session"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404"]

[[operations]]
include-name = "POST /v1/session/logout"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404"]

# the fuzzer is admin, whose token is the token file's and is not replaced through the API
[[operations]]
include-name = "POST /v1/me/token"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "409"]

"#;

#[test]
fn schemathesis_finds_no_contract_violation() {
    // Rate limit off: a fuzzer is a burst by design, and 429 is not what is under test.
    let s = TestServer::start_with(&["--api-rate", "0", "--public-rate", "0"]);
    let url = std::fs::read_to_string(s.data_dir().join("server.json")).unwrap();
    let url: serde_json::Value = serde_json::from_str(&url).unwrap();
    let base = url["url"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(s.data_dir().join("token")).unwrap();
    let config = s.data_dir().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(schemathesis())
        .current_dir(s.data_dir())
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["--checks", "all", "--seed", "1", "--max-examples", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // The exec and port-forward routes are WebSocket handshakes; an HTTP fuzzer cannot
        // speak them, and a plain GET is rightly refused (400, JSON), which schemathesis
        // would count as a rejected valid request. Exec's upgrade refusal is tested in
        // hearth-server's tests, port-forward end to end in tests/proxy.rs.
        .args(["--exclude-path", "/v1/workspaces/{name}/exec"])
        .args([
            "--exclude-path",
            "/v1/workspaces/{name}/ports/{port}/forward",
        ])
        .arg("--no-color")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/install-deps.sh --test installs it)",
                schemathesis()
            )
        });
    // The summary (cases generated, seed) shows with --nocapture.
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "schemathesis found contract violations:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
