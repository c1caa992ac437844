//! The S3 test server (moto) and fresh buckets on it.

use std::time::Duration;

/// The S3 test server: `HEARTH_TEST_S3=http://IP:PORT`, else a `moto_server` this test
/// starts (and kills when dropped). Fails, never skips, when neither works.
pub struct Moto(Option<std::process::Child>, String);

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn reachable(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok()
}

/// A fresh bucket on the S3 test server, as the node's `--snapshot-s3` URL.
pub fn bucket() -> (Moto, String) {
    use std::io::{Read, Write};
    let moto = match std::env::var("HEARTH_TEST_S3") {
        Ok(ep) => Moto(None, ep),
        Err(_) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("HEARTH_TEST_S3 is unset and moto_server could not be started ({e}): scripts/install-deps.sh --test installs it"));
            Moto(Some(child), format!("http://127.0.0.1:{port}"))
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reachable(&moto.1) {
        assert!(
            std::time::Instant::now() < deadline,
            "no S3 server on {}",
            moto.1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bucket = format!("hearth-test-{:08x}", rand::random::<u32>());
    let mut s = std::net::TcpStream::connect(moto.1.trim_start_matches("http://")).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    let url = format!("{}/{bucket}", moto.1);
    (moto, url)
}
