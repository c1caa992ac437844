//! S3 against a real S3-compatible server (moto) on loopback, with a fault-injecting proxy.
//!
//! `HEARTH_TEST_S3=http://127.0.0.1:PORT` selects a running server (see
//! `scripts/s3-test-server.sh`); when unset the test starts `moto_server` itself. It fails, not
//! skips, when neither works.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reachable(endpoint: &str) -> bool {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    TcpStream::connect_timeout(
        &addr.parse().expect("HEARTH_TEST_S3 must be http://IP:PORT"),
        Duration::from_secs(2),
    )
    .is_ok()
}

fn server() -> (String, Option<Moto>) {
    if let Ok(ep) = std::env::var("HEARTH_TEST_S3") {
        assert!(reachable(&ep), "HEARTH_TEST_S3={ep} is set but unreachable");
        return (ep, None);
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("HEARTH_TEST_S3 is unset and moto_server could not be started ({e}); run crates/hearth-snapshot/scripts/s3-test-server.sh"));
    let moto = Moto(child);
    let ep = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reachable(&ep) {
        assert!(
            Instant::now() < deadline,
            "moto_server did not come up on {ep}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (ep, Some(moto))
}

fn http(endpoint: &str, req: &str) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn create_bucket(endpoint: &str, bucket: &str) {
    let resp = http(endpoint, &format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
}

fn cfg(endpoint: &str, bucket: &str) -> S3Config {
    let mut c = S3Config::new(Some(endpoint.to_string()), bucket, "testing", "testing");
    c.prefix = "store".into();
    c.request_timeout = Duration::from_secs(3);
    c.max_retries = 10;
    c
}

/// Loopback proxy that, while `faulty`, breaks some connections: drops them after part of
/// the request went through, answers 503, or stalls past the client timeout (once).
struct Proxy {
    port: u16,
    faulty: Arc<AtomicBool>,
    injected: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn proxy(upstream: &str) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let faulty = Arc::new(AtomicBool::new(true));
    let injected = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let up = upstream.trim_start_matches("http://").to_string();
    let (f, inj, st) = (faulty.clone(), injected.clone(), stop.clone());
    let stalled = Arc::new(AtomicU32::new(0));
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            if st.load(Ordering::SeqCst) {
                break;
            }
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(&up) else {
                continue;
            };
            let mode = if f.load(Ordering::SeqCst) { n % 4 } else { 0 };
            if mode != 0 {
                inj.fetch_add(1, Ordering::SeqCst);
            }
            let stalled = stalled.clone();
            std::thread::spawn(move || match mode {
                // 503 for the first request, then close.
                2 => {
                    let mut c = client;
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = c.shutdown(Shutdown::Both);
                }
                // Stall once past the client timeout.
                3 if stalled.fetch_add(1, Ordering::SeqCst) == 0 => {
                    std::thread::sleep(Duration::from_secs(5));
                }
                // Pass through; mode 1 cuts the connection after some request bytes.
                _ => {
                    let limit = if mode == 1 {
                        3000 + (n * 7919) % 200_000
                    } else {
                        usize::MAX
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let back = std::thread::spawn(move || {
                        let (mut s2, mut c2) = (s2, c2);
                        let _ = std::io::copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(Shutdown::Both);
                    });
                    let (mut c, mut s) = (client, server);
                    let mut buf = vec![0u8; 16384];
                    let mut sent = 0usize;
                    while let Ok(k) = c.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        let k = k.min(limit.saturating_sub(sent));
                        if k == 0 || s.write_all(&buf[..k]).is_err() {
                            break;
                        }
                        sent += k;
                    }
                    let _ = s.shutdown(Shutdown::Both);
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = back.join();
                }
            });
        }
    });
    Proxy {
        port,
        faulty,
        injected,
        stop,
    }
}

#[test]
fn s3_against_moto() {
    let (endpoint, _moto) = server();
    let bucket = format!("hearth-test-{}", hex::encode(rand::random::<[u8; 6]>()));
    create_bucket(&endpoint, &bucket);
    let t = tmp();

    // Round trip of the full metadata tree, encrypted.
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, B1);
    let key = Key::generate();
    let store = Store::open_s3(cfg(&endpoint, &bucket), Some(key.clone())).unwrap();
    let s1 = snapshot(&store, "ws", &src, B1, None, None).unwrap();
    let dst = t.path().join("dst");
    restore(&store, &s1.id, &dst, B2, None).unwrap();
    assert_eq!(expected_after_restore(&src, B1), describe(&dst, B2));
    assert_eq!(list(&store, Some("ws")).unwrap().len(), 1);
    assert!(fsck(&store).unwrap().ok());

    // A multipart object (12 MiB over 5 MiB parts) reads back whole.
    let backend = S3Backend::open(cfg(&endpoint, &bucket)).unwrap();
    let big = bytes::Bytes::from(pseudo_random(12 * 1024 * 1024 + 3, 5));
    backend.put("tmp/multipart", big.clone()).unwrap();
    assert_eq!(backend.get("tmp/multipart", 1 << 30).unwrap(), big);
    assert!(matches!(
        backend.get("tmp/multipart", 1024),
        Err(BackendError::TooLarge { .. })
    ));
    backend.delete("tmp/multipart").unwrap();
    assert!(!backend.exists("tmp/multipart").unwrap());

    // Through a faulty proxy: retries to success, or a clean failure; either way a later
    // snapshot and restore are correct.
    let data = t.path().join("data");
    fs::create_dir(&data).unwrap();
    many_files(&data, 30, 99);
    fs::write(data.join("large"), pseudo_random(9 * 1024 * 1024, 3)).unwrap();
    let p = proxy(&endpoint);
    let mut fcfg = cfg(&format!("http://127.0.0.1:{}", p.port), &bucket);
    fcfg.multipart_threshold = 1024 * 1024;
    let faulty_store = Store::open_s3(fcfg, Some(key.clone())).unwrap();
    let first = snapshot(&faulty_store, "ws2", &data, 0, None, None);
    assert!(
        p.injected.load(Ordering::SeqCst) > 0,
        "the proxy injected no faults"
    );
    p.faulty.store(false, Ordering::SeqCst);
    if let Ok(info) = &first {
        let d = t.path().join("after-faults");
        restore(&faulty_store, &info.id, &d, 0, None).unwrap();
        assert_eq!(describe(&data, 0), describe(&d, 0));
    }
    let parent = first.as_ref().ok().map(|i| i.id.clone());
    fs::write(data.join("d1/f1"), b"changed after the faults").unwrap();
    let second = snapshot(&faulty_store, "ws2", &data, 0, parent.as_deref(), None).unwrap();
    let d = t.path().join("after-faults-2");
    restore(&store, &second.id, &d, 0, None).unwrap();
    assert_eq!(describe(&data, 0), describe(&d, 0));
    assert!(fsck(&store).unwrap().ok());
}
