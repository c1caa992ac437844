//! The port proxy, `hearth ports`/`port`/`port-forward`, end to end: a real server, a
//! Debian workspace running a small perl server (tests/data/upstream.pl), curl and a
//! WebSocket client on the host.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{git_repo, repo_with, TestServer};

const UPSTREAM: &[u8] = include_bytes!("data/upstream.pl");

/// Where the server's port proxy listens, from `server.json`.
fn proxy_port(s: &TestServer) -> u16 {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.data_dir().join("server.json")).unwrap()).unwrap();
    let url = info["proxy"].as_str().expect("server.json names the proxy");
    url.rsplit(':').next().unwrap().parse().unwrap()
}

fn admin_token(s: &TestServer) -> String {
    std::fs::read_to_string(s.data_dir().join("token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Copies the upstream server into workspace `name` and runs it on `port`, bound to the
/// workspace's loopback only; returns once it listens.
fn run_upstream(s: &TestServer, name: &str, port: u16) {
    let out = s.hearth_stdin(
        &["exec", name, "--", "sh", "-c", "cat > /upstream.pl"],
        UPSTREAM,
    );
    assert!(out.status.success(), "{out:?}");
    let script = format!(
        "rm -f /tmp/ready-{port}; setsid -f perl /upstream.pl {port} 127.0.0.1 \
         >/tmp/upstream-{port}.log 2>&1 </dev/null; \
         for i in $(seq 100); do [ -e /tmp/ready-{port} ] && exit 0; sleep 0.1; done; \
         cat /tmp/upstream-{port}.log; exit 1"
    );
    s.exec(name, &["sh", "-c", &script]);
}

/// curl through the proxy at `host` (resolved to 127.0.0.1): (status, headers, body).
fn curl(port: u16, host: &str, path: &str, args: &[&str]) -> (u16, String, Vec<u8>) {
    curl_scheme("http", port, host, path, args)
}

fn curl_scheme(
    scheme: &str,
    port: u16,
    host: &str,
    path: &str,
    args: &[&str],
) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-o", "-", "-D"])
        .arg(&headers)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {host}{path}: {out:?}");
    let head = std::fs::read_to_string(&headers).unwrap();
    // The last status line: a `100 Continue` may come first.
    let status = head
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head, out.stdout)
}

/// sha256 by coreutils, not by the code under test.
fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn sha256_bytes(b: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = b.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn random_file(dir: &Path, mib: usize) -> std::path::PathBuf {
    let p = dir.join(format!("random-{mib}"));
    let st = Command::new("head")
        .args(["-c", &(mib << 20).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&p).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    p
}

/// Echoes through a WebSocket on the proxy: a text message and a 1 MiB binary one.
fn websocket_echo(port: u16, host: &str, token: Option<&str>) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = format!("ws://{host}:{port}/ws")
            .into_client_request()
            .unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(resp.status(), 101);
        ws.send(Message::Text("hello through the proxy".into()))
            .await
            .unwrap();
        let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::Binary(big.clone().into())).await.unwrap();
        match ws.next().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello through the proxy"),
            other => panic!("expected the text echo, got {other:?}"),
        }
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..], "binary echo differs"),
            other => panic!("expected the binary echo, got {other:?}"),
        }
        ws.close(None).await.unwrap();
        Ok(())
    })
}

#[test]
fn port_urls_reach_workspace_ports_for_their_owner_or_anyone_when_public() {
    let s = TestServer::start();
    s.load_debian();
    let repo = git_repo(s.data_dir(), "repo");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "debian",
        "--name",
        "web",
    ]);
    let p = proxy_port(&s);
    let admin = admin_token(&s);
    let host = "8080-web.localhost";
    let bearer = format!("Authorization: Bearer {admin}");

    // A port shows in `hearth ports` as soon as it listens (read when asked, no polling).
    let before: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ports", "web", "--json"])).unwrap();
    assert!(before.iter().all(|x| x["port"] != 8080), "{before:?}");
    run_upstream(&s, "web", 8080);
    let ports: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ports", "web", "--json"])).unwrap();
    let port = ports
        .iter()
        .find(|x| x["port"] == 8080)
        .unwrap_or_else(|| panic!("8080 not listed: {ports:?}"));
    assert_eq!(port["listening"], true);
    assert_eq!(port["visibility"], "private");
    assert_eq!(port["addresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(port["url"], format!("http://{host}:{p}/"));
    let table = s.ok(&["ports", "web"]);
    assert!(table.contains(&format!("http://{host}:{p}/")), "{table}");

    // Private (the default): anonymous is refused, a browser gets the login form.
    let (st, head, _) = curl(p, host, "/headers", &[]);
    assert_eq!(st, 401, "{head}");
    let (st, _, body) = curl(p, host, "/headers", &["-H", "Accept: text/html"]);
    assert_eq!(st, 401);
    assert!(String::from_utf8_lossy(&body).contains("action=\"/_hearth/login\""));

    // The owner's bearer token works; the upstream never sees it.
    let (st, _, body) = curl(p, host, "/headers", &["-H", &bearer, "-H", "X-App: kept"]);
    assert_eq!(st, 200);
    // (hyper sends header names in lower case)
    let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(!seen.contains(&admin), "token reached the upstream: {seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "{seen}"
    );
    assert!(seen.contains("x-app: kept"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains(&format!("host: {host}:{p}")),
        "{seen}"
    );
    assert!(
        seen.to_ascii_lowercase()
            .contains("x-forwarded-for: 127.0.0.1"),
        "{seen}"
    );

    // Login: the form post sets a host-only HttpOnly cookie; the cookie works and is
    // stripped (other cookies pass).
    let (st, head, _) = curl(
        p,
        host,
        "/_hearth/login",
        &[
            "--data-urlencode",
            &format!("token={admin}"),
            "--data-urlencode",
            "next=/headers",
        ],
    );
    assert_eq!(st, 303, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("location: /headers"),
        "{head}"
    );
    let cookie_line = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: hearth_port=")
        })
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Lax"));
    assert!(
        !cookie_line.to_ascii_lowercase().contains("domain="),
        "{cookie_line}"
    );
    let cookie = cookie_line["set-cookie: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string();
    let (st, _, body) = curl(
        p,
        host,
        "/headers",
        &["-H", &format!("Cookie: a=1; {cookie}; b=2")],
    );
    assert_eq!(st, 200);
    let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
    assert!(seen.contains("cookie: a=1; b=2"), "{seen}");
    assert!(!seen.contains("hearth_port"), "{seen}");
    // The cookie is for that host only.
    let (st, _, _) = curl(
        p,
        "8081-web.localhost",
        "/",
        &["-H", &format!("Cookie: {cookie}")],
    );
    assert_eq!(st, 401);
    // A login form posted from another site is refused (login CSRF).
    let (st, _, _) = curl(
        p,
        host,
        "/_hearth/login",
        &[
            "-H",
            "Origin: http://evil.example",
            "--data-urlencode",
            &format!("token={admin}"),
        ],
    );
    assert_eq!(st, 403);
    let (st, _, _) = curl(
        p,
        host,
        "/_hearth/login",
        &["--data-urlencode", "token=wrong"],
    );
    assert_eq!(st, 401);

    // Another user's token: 404, exactly as for a workspace that does not exist.
    let bob = s.ok(&["user", "add", "bob"]).trim().to_string();
    let bob_bearer = format!("Authorization: Bearer {bob}");
    let (st, _, bob_body) = curl(p, host, "/headers", &["-H", &bob_bearer]);
    assert_eq!(st, 404);
    let (st, _, none_body) = curl(p, "8080-nope.localhost", "/headers", &["-H", &bob_bearer]);
    assert_eq!(st, 404);
    assert_eq!(
        bob_body, none_body,
        "someone else's workspace looks like none"
    );
    let (st, _, _) = curl(
        p,
        host,
        "/_hearth/login",
        &["--data-urlencode", &format!("token={bob}")],
    );
    assert_eq!(st, 404);
    // Anonymous: 401 whether the workspace exists or not.
    let (st, _, _) = curl(p, "8080-nope.localhost", "/", &[]);
    assert_eq!(st, 401);
    let (st, _, _) = curl(p, "localhost", "/", &[]);
    assert_eq!(st, 404, "a host that names no port");

    // Bodies stream both ways: 64 MiB down, 32 MiB up, checked by sha256.
    let out = s.exec(
        "web",
        &[
            "sh",
            "-c",
            "head -c 67108864 /dev/urandom > /tmp/big && sha256sum /tmp/big",
        ],
    );
    let inside = out[..64].to_string();
    let (st, _, body) = curl(p, host, "/file/tmp/big", &["-H", &bearer]);
    assert_eq!(st, 200);
    assert_eq!(body.len(), 64 << 20);
    assert_eq!(sha256_bytes(&body), inside, "download through the proxy");
    let up = random_file(s.data_dir(), 32);
    let (st, _, body) = curl(
        p,
        host,
        "/upload",
        &[
            "-H",
            &bearer,
            "--data-binary",
            &format!("@{}", up.display()),
        ],
    );
    assert_eq!(st, 200);
    assert_eq!(String::from_utf8(body).unwrap().trim(), sha256_file(&up));

    // WebSocket upgrade: echoes through; refused without credentials.
    websocket_echo(p, host, Some(&admin)).unwrap();
    let err = websocket_echo(p, host, None).unwrap_err();
    assert!(err.contains("401"), "{err}");

    // Public: anyone; an Authorization header that is not Hearth's is the app's own.
    let out = s.ok(&["port", "web", "8080", "--public"]);
    assert!(out.contains(&format!("http://{host}:{p}/")), "{out}");
    let (st, _, body) = curl(
        p,
        host,
        "/headers",
        &["-H", "Authorization: Bearer app-own"],
    );
    assert_eq!(st, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .to_ascii_lowercase()
        .contains("authorization: bearer app-own"));
    websocket_echo(p, host, None).unwrap();
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ports", "web", "--json"])).unwrap();
    assert!(listed
        .iter()
        .any(|x| x["port"] == 8080 && x["visibility"] == "public"));
    s.ok(&["port", "web", "8080", "--private"]);
    let (st, _, _) = curl(p, host, "/headers", &[]);
    assert_eq!(st, 401);

    // Nothing listens: 502.
    let (st, _, body) = curl(p, "9999-web.localhost", "/", &["-H", &bearer]);
    assert_eq!(st, 502, "{}", String::from_utf8_lossy(&body));

    // port-forward through the real CLI: a local port carries bytes both ways.
    let mut fwd = Command::new(common::HEARTH)
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(["port-forward", "web", "8080:0"])
        .env_remove("HEARTH_URL")
        .env_remove("HEARTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(fwd.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let local: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {line:?}"));
    let fwd_up = random_file(s.data_dir(), 8);
    let result = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--data-binary"])
        .arg(format!("@{}", fwd_up.display()))
        .arg(format!("http://127.0.0.1:{local}/upload"))
        .output()
        .unwrap();
    let headers = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .arg(format!("http://127.0.0.1:{local}/headers"))
        .output()
        .unwrap();
    let _ = fwd.kill();
    let _ = fwd.wait();
    assert!(result.status.success(), "{result:?}");
    assert_eq!(
        String::from_utf8(result.stdout).unwrap().trim(),
        sha256_file(&fwd_up)
    );
    assert!(String::from_utf8_lossy(&headers.stdout).contains(&format!("Host: 127.0.0.1:{local}")));
    let err = s.fails(&["port-forward", "web", "8080:0:1"]);
    assert!(err.contains("REMOTE[:LOCAL]"), "{err}");

    // A stopped workspace: 503 for anyone else, started for its owner (whose server
    // inside is gone after the restart, so then 502).
    s.ok(&["port", "web", "8080", "--public"]);
    s.ok(&["stop", "web"]);
    let (st, head, _) = curl(p, host, "/headers", &[]);
    assert_eq!(st, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    let (st, _, _) = curl(p, host, "/headers", &["-H", &bearer]);
    assert_eq!(st, 502);
    let ws = s.workspaces();
    assert_eq!(ws[0]["state"], "running", "{ws:?}");
}

/// TLS with a wildcard certificate made here by openssl; plain HTTP is not served then.
#[test]
fn port_urls_over_tls_with_a_wildcard_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out: Output = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=*.dev.test"])
        .args(["-addext", "subjectAltName=DNS:*.dev.test"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{out:?}");
    let s = TestServer::start_with(&[
        "--domain",
        "dev.test",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    s.load_debian();
    let repo = git_repo(s.data_dir(), "repo");
    s.ok(&[
        "up",
        repo.to_str().unwrap(),
        "--image",
        "debian",
        "--name",
        "web",
    ]);
    run_upstream(&s, "web", 8080);
    let p = proxy_port(&s);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ports", "web", "--json"])).unwrap();
    assert!(
        listed
            .iter()
            .any(|x| x["url"] == format!("https://8080-web.dev.test:{p}/")),
        "{listed:?}"
    );
    let admin = admin_token(&s);
    let host = "8080-web.dev.test";
    let cacert = cert.to_str().unwrap();
    let bearer = format!("Authorization: Bearer {admin}");
    for http in ["--http1.1", "--http2"] {
        let (st, _, body) = curl_scheme(
            "https",
            p,
            host,
            "/headers",
            &["--cacert", cacert, http, "-H", &bearer],
        );
        assert_eq!(st, 200, "{http}");
        let seen = String::from_utf8(body).unwrap().to_ascii_lowercase();
        assert!(seen.contains("x-forwarded-proto: https"), "{seen}");
        assert!(!seen.contains(&admin), "{seen}");
    }
    // Under TLS the login cookie is Secure.
    let (st, head, _) = curl_scheme(
        "https",
        p,
        host,
        "/_hearth/login",
        &[
            "--cacert",
            cacert,
            "--data-urlencode",
            &format!("token={admin}"),
        ],
    );
    assert_eq!(st, 303);
    assert!(head.contains("; Secure"), "{head}");
    // A client that does not trust the certificate fails the handshake.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &format!("{host}:{p}:127.0.0.1"),
        ])
        .arg(format!("https://{host}:{p}/"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `hearth ports --json` of `name`, by port.
fn ports_by_number(
    s: &TestServer,
    name: &str,
) -> std::collections::BTreeMap<u64, serde_json::Value> {
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&s.ok(&["ports", name, "--json"])).unwrap();
    listed
        .into_iter()
        .map(|p| (p["port"].as_u64().unwrap(), p))
        .collect()
}

const PORTS_CONFIG: &str = r#"{
  "image": "debian",
  "forwardPorts": [8080, 9090, "db:5432"],
  "portsAttributes": {
    "8080": {"label": "App", "requireLocalPort": true},
    "9090": {"label": "Later"},
    "7000-7999": {"onAutoForward": "ignore"},
    "8443": {"label": "TLS app", "protocol": "https"}
  }
}"#;

/// devcontainer.json's forwardPorts and portsAttributes: forwarded ports are listed (with
/// their labels) before anything listens, an ignored port is neither listed nor proxied,
/// `protocol: https` makes the proxy speak TLS to the port (a real `openssl s_server`
/// with a self-signed certificate), another host's port and client-side attributes are
/// warned about.
#[test]
fn devcontainer_ports_are_listed_labelled_ignored_and_spoken_to_over_tls() {
    let s = TestServer::start();
    s.load_debian();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(src.path(), "app", &[(".devcontainer.json", PORTS_CONFIG)]);
    let out = s.hearth(&["up", repo.to_str().unwrap(), "--name", "web"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}\n{}", s.server_log());
    assert!(
        err.contains("forwardPorts \"db:5432\" is not forwarded"),
        "{err}"
    );
    assert!(err.contains("requireLocalPort has no effect"), "{err}");

    // Forwarded ports show before anything listens, with their labels.
    let ports = ports_by_number(&s, "web");
    for (port, label) in [(8080, "App"), (9090, "Later")] {
        let p = &ports[&port];
        assert_eq!(p["forwarded"], true, "{p}");
        assert_eq!(p["listening"], false, "{p}");
        assert_eq!(p["label"], label, "{p}");
        assert_eq!(p["protocol"], "http", "{p}");
    }
    assert!(!ports.contains_key(&5432), "{ports:?}");
    let table = s.ok(&["ports", "web"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("9090"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("Later") && row.contains("not listening"),
        "{table}"
    );

    // Listening: the forwarded port turns listening; an ignored one stays out.
    run_upstream(&s, "web", 8080);
    run_upstream(&s, "web", 7070);
    let ports = ports_by_number(&s, "web");
    assert_eq!(ports[&8080]["listening"], true, "{ports:?}");
    assert_eq!(ports[&8080]["label"], "App");
    assert!(!ports.contains_key(&7070), "{ports:?}");
    let p = proxy_port(&s);
    let bearer = format!("Authorization: Bearer {}", admin_token(&s));
    let (st, _, _) = curl(p, "8080-web.localhost", "/headers", &["-H", &bearer]);
    assert_eq!(st, 200);
    // The ignored port is refused through the proxy, even to its owner, and cannot be
    // made public; a port-forward (an explicit request) still reaches it.
    let (st, _, _) = curl(p, "7070-web.localhost", "/headers", &["-H", &bearer]);
    assert_eq!(st, 404);
    let e = s.fails(&["port", "web", "7070", "--public"]);
    assert!(e.contains("ignored by its devcontainer.json"), "{e}");

    // protocol https: a TLS server inside with a self-signed certificate (the host's
    // openssl; the image has its libraries), reached through the plain-HTTP proxy.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=inside"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "{out:?}");
    for (from, to) in [
        (std::path::PathBuf::from("/usr/bin/openssl"), "/tmp/openssl"),
        (cert, "/tmp/cert.pem"),
        (key, "/tmp/key.pem"),
    ] {
        let out = s.hearth_stdin(
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                &format!("cat > {to} && chmod 700 {to}"),
            ],
            &std::fs::read(from).unwrap(),
        );
        assert!(out.status.success(), "{out:?}");
    }
    s.exec(
        "web",
        &[
            "sh",
            "-c",
            "setsid -f /tmp/openssl s_server -accept 8443 -cert /tmp/cert.pem \
             -key /tmp/key.pem -www >/tmp/s_server.log 2>&1 </dev/null",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ports = ports_by_number(&s, "web");
        if ports.get(&8443).is_some_and(|p| p["listening"] == true) {
            assert_eq!(ports[&8443]["protocol"], "https");
            assert_eq!(ports[&8443]["label"], "TLS app");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "s_server never listened: {}",
            s.exec("web", &["cat", "/tmp/s_server.log"])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (st, head, body) = curl(p, "8443-web.localhost", "/", &["-H", &bearer]);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 200, "{head}{body}");
    // `-www` answers with its TLS session: proof the proxy spoke TLS to it.
    assert!(
        body.contains("Ciphers supported in s_server binary"),
        "{body}"
    );
    // Making an ignored port private is refused too (it is not listed to toggle).
    let e = s.fails(&["port", "web", "7070", "--private"]);
    assert!(e.contains("ignored"), "{e}");

    // The proxy keeps a workspace's settings parsed: one made again under the name, here
    // without a devcontainer.json, is proxied by its own (7070 is no longer ignored).
    s.ok(&["rm", "web"]);
    let plain = git_repo(src.path(), "plain");
    s.ok(&[
        "up",
        plain.to_str().unwrap(),
        "--name",
        "web",
        "--image",
        "debian",
    ]);
    run_upstream(&s, "web", 7070);
    let (st, _, body) = curl(p, "7070-web.localhost", "/headers", &["-H", &bearer]);
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
}
