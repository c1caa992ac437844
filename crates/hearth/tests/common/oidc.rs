//! A real OpenID provider for the tests that sign in through one (tests/oidc.rs with a
//! scripted browser, tests/web.rs in Chromium): npm's `oidc-provider` run by
//! tests/data/oidc-provider/provider.mjs (node, with the modules scripts/install-deps.sh
//! --test installs), and a hearth server that signs in through it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TestServer;

pub const CLIENT_ID: &str = "hearth-test";
pub const CLIENT_SECRET: &str = "9c0d1e2f-secret-for-tests";

/// Where `oidc-provider` is installed: `HEARTH_OIDC_PROVIDER_MODULES`, else where
/// scripts/install-deps.sh --test puts it.
fn provider_modules() -> PathBuf {
    let dir = std::env::var_os("HEARTH_OIDC_PROVIDER_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/hearth-test-oidc/node_modules"));
    assert!(
        dir.join("oidc-provider").is_dir(),
        "oidc-provider is not installed in {}: run scripts/install-deps.sh --test (or set \
         HEARTH_OIDC_PROVIDER_MODULES)",
        dir.display()
    );
    dir
}

/// The provider process, killed on drop.
pub struct Provider {
    child: Child,
    pub issuer: String,
    _dir: tempfile::TempDir,
}

impl Provider {
    /// A provider with one client, hearth, which is sent back to `redirect_uri`.
    pub fn start(redirect_uri: &str) -> Provider {
        let modules = provider_modules();
        // ESM resolves packages next to the script: run a copy beside a node_modules link.
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/oidc-provider/provider.mjs"
        );
        std::fs::copy(script, dir.path().join("provider.mjs")).unwrap();
        std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
        let mut child = Command::new("node")
            .arg(dir.path().join("provider.mjs"))
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run node (scripts/install-deps.sh --test)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Drained to the end: a closed pipe would kill the provider at its next write.
            for _ in lines {}
        });
        let mut provider = Provider {
            child,
            issuer: String::new(),
            _dir: dir,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("the OIDC provider did not start");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the OIDC provider printed {line:?}: {e}"));
        provider.issuer = v["issuer"].as_str().unwrap().to_string();
        provider
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A provider and a hearth server that signs in through it (allowed: example.com and
/// example.org emails in group `staff`). The server listens on a port chosen before it
/// starts, since the provider must know hearth's callback URL.
pub struct OidcServer {
    pub server: TestServer,
    /// The server's API and dashboard URL, `http://127.0.0.1:PORT`.
    pub base: String,
    provider: Provider,
    _secret: tempfile::TempDir,
}

impl OidcServer {
    /// Starts both; `more` are further `hearth server` flags (e.g. `--token-login`).
    pub fn start(more: &[&str]) -> OidcServer {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let provider = Provider::start(&format!("{base}/auth/callback"));
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("client-secret");
        std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--listen",
            &listen,
            "--public-url",
            &base,
            "--oidc-issuer",
            &provider.issuer,
            "--oidc-client-id",
            CLIENT_ID,
            "--oidc-client-secret-file",
            secret_file.to_str().unwrap(),
            "--oidc-allowed-domains",
            "example.com,example.org",
            "--oidc-allowed-groups",
            "staff",
        ];
        args.extend_from_slice(more);
        let server = TestServer::start_with(&args);
        OidcServer {
            server,
            base,
            provider,
            _secret: secret,
        }
    }

    /// The identity provider's URL.
    pub fn issuer(&self) -> &str {
        &self.provider.issuer
    }
}
