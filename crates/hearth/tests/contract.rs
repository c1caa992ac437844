//! The API's answers on a real server and node: statuses decided before a stream starts,
//! host limits refused up front, image loads that cannot hang or leak the server's files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{git_repo, TestServer};

/// One HTTP/1.1 request with the server's token; returns the status and the body. The
/// read timeout fails a request that hangs instead of stalling the test.
fn call(srv: &TestServer, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(srv.data_dir().join("server.json")).unwrap())
            .unwrap();
    let url = info["url"].as_str().unwrap();
    let addr = url.strip_prefix("http://").unwrap();
    let token = std::fs::read_to_string(srv.data_dir().join("token")).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        token.trim(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{method} {path}: no complete answer: {e}"));
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn json(srv: &TestServer, method: &str, path: &str, body: serde_json::Value) -> (u16, String) {
    call(
        srv,
        method,
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// An oci-archive: the busybox OCI layout as one tarball.
fn busybox_archive(dir: &std::path::Path) -> Vec<u8> {
    let layout = common::images::busybox_image(dir);
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", &layout).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn image_loads_refuse_non_images_at_once_and_quote_nothing() {
    let srv = TestServer::start();
    let work = tempfile::tempdir().unwrap();

    let fifo = work.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (s, b) = json(
        &srv,
        "POST",
        "/v1/images/load",
        serde_json::json!({"path": fifo}),
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("it is a fifo"), "{b}");
    let (s, b) = json(
        &srv,
        "POST",
        "/v1/images/load",
        serde_json::json!({"path": "/dev/zero"}),
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("character device"), "{b}");
    let (s, b) = json(
        &srv,
        "POST",
        "/v1/images/load",
        serde_json::json!({"path": "/nonexistent/x.tar"}),
    );
    assert_eq!(s, 404, "{b}");

    let passwd = std::fs::read("/etc/passwd").unwrap();
    let (s, b) = json(
        &srv,
        "POST",
        "/v1/images/load",
        serde_json::json!({"path": "/etc/passwd"}),
    );
    assert_eq!(s, 400, "{b}");
    let (s2, b2) = call(
        &srv,
        "POST",
        "/v1/images/upload",
        "application/x-tar",
        &passwd,
    );
    assert_eq!(s2, 400, "{b2}");
    for answer in [&b, &b2] {
        for w in passwd.windows(8) {
            let w = String::from_utf8_lossy(w);
            assert!(
                !answer.contains(w.as_ref()),
                "answer quotes {w:?}: {answer}"
            );
        }
    }

    // The CLI uploads a file; the image is loaded and the upload is gone.
    let archive = busybox_archive(work.path());
    let file = work.path().join("busybox.tar");
    std::fs::write(&file, &archive).unwrap();
    let id = srv.ok(&["image", "load", file.to_str().unwrap(), "--name", "bb:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let ls: serde_json::Value = serde_json::from_str(&srv.ok(&["image", "ls", "--json"])).unwrap();
    assert!(ls.to_string().contains("bb:1"), "{ls}");
    let uploads = srv.data_dir().join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);

    // Truncated and garbage uploads: a clear 400, nothing kept.
    let (s, b) = call(
        &srv,
        "POST",
        "/v1/images/upload",
        "application/x-tar",
        &archive[..archive.len() / 2],
    );
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("the upload"), "{b}");
    let (s, b) = call(
        &srv,
        "POST",
        "/v1/images/upload",
        "application/x-tar",
        &[0x5a; 4096],
    );
    assert_eq!(s, 400, "{b}");
    let (s, b) = call(&srv, "POST", "/v1/images/upload", "application/x-tar", b"");
    assert_eq!(s, 400, "{b}");
    let trunc = work.path().join("trunc.tar");
    std::fs::write(&trunc, &archive[..archive.len() / 2]).unwrap();
    let err = srv.fails(&["image", "load", trunc.to_str().unwrap()]);
    assert!(err.contains("the upload"), "{err}");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    let ls: serde_json::Value = serde_json::from_str(&srv.ok(&["image", "ls", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
}

/// ext4 (the test data dir's filesystem here) holds files up to 16 TiB less a block.
const EXT4_SUPER_MAGIC: i64 = 0xef53;

#[test]
fn semantic_errors_and_host_limits_are_statuses_before_any_stream() {
    let srv = TestServer::start();
    let fs = nix::sys::statfs::statfs(srv.data_dir()).unwrap();
    assert_eq!(
        fs.filesystem_type().0 as i64,
        EXT4_SUPER_MAGIC,
        "this test needs its data dir (under $TMPDIR) on ext4, whose file size limit it checks"
    );
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "lim");
    let repo = repo.to_str().unwrap();
    let tib64: u64 = 64 << 40;

    for (body, status, why) in [
        (
            serde_json::json!({"source": ""}),
            400,
            "source must not be empty",
        ),
        (
            serde_json::json!({"source": repo, "image": "busybox", "limits": {"pids": 1u64 << 63}}),
            400,
            "pids",
        ),
        (
            serde_json::json!({"source": repo, "image": "busybox", "limits": {"disk_bytes": tib64}}),
            400,
            "does not fit",
        ),
        (
            serde_json::json!({"source": repo, "image": "nosuch"}),
            404,
            "nosuch",
        ),
    ] {
        let (s, b) = json(&srv, "POST", "/v1/workspaces", body.clone());
        assert_eq!(s, status, "{body}: {b}");
        let e: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
    assert!(srv.workspaces().is_empty());

    srv.ok(&["up", repo, "--image", "busybox", "--disk", "1G"]);
    let (s, b) = json(
        &srv,
        "POST",
        "/v1/workspaces",
        serde_json::json!({"source": repo, "image": "busybox"}),
    );
    assert_eq!(s, 409, "{b}");
    for disk in [tib64, (16u64 << 40) - 1] {
        let (s, b) = json(
            &srv,
            "PATCH",
            "/v1/workspaces/lim/limits",
            serde_json::json!({"disk_bytes": disk}),
        );
        assert_eq!(s, 400, "{b}");
        assert!(b.contains("does not fit"), "{b}");
    }
    // Nothing changed, and a size that fits still grows the disk.
    let (s, b) = json(
        &srv,
        "PATCH",
        "/v1/workspaces/lim/limits",
        serde_json::json!({"disk_bytes": 2u64 << 30}),
    );
    assert_eq!(s, 200, "{b}");
    let w: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(w["state"], "running", "{w}");
    srv.ok(&["rm", "lim"]);
}

/// A registry that answers 404 (manifest unknown) is a 404 with a JSON error body, on
/// pull and on create, before any stream starts; nothing is pulled or created.
#[test]
fn a_missing_registry_image_is_a_404_before_any_stream() {
    let srv = TestServer::start();
    let reg = common::registry::Registry::start();
    let layout = common::images::busybox_image(srv.data_dir());
    reg.push(&layout, "busybox:latest", "busybox:latest");
    let missing = format!("{}/nosuch:1", reg.addr());
    let missing_tag = format!("{}/busybox:nosuchtag", reg.addr());
    for reference in [&missing, &missing_tag] {
        let (status, body) = json(
            &srv,
            "POST",
            "/v1/images/pull",
            serde_json::json!({ "reference": reference }),
        );
        assert_eq!(status, 404, "{reference}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("not one JSON error body ({e}): {body}"));
        assert_eq!(v["error"]["code"], "not_found", "{body}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("not found in its registry"), "{msg}");
    }
    let src = tempfile::tempdir().unwrap();
    let repo = git_repo(src.path(), "pullme");
    let (status, body) = json(
        &srv,
        "POST",
        "/v1/workspaces",
        serde_json::json!({ "source": repo, "image": missing, "name": "pullme" }),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("{\"error\""), "{body}");
    assert!(srv.workspace_names().is_empty());
    // The image the registry has still streams and lands.
    let (status, body) = json(
        &srv,
        "POST",
        "/v1/images/pull",
        serde_json::json!({ "reference": format!("{}/busybox:latest", reg.addr()) }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"result\""), "{body}");
}
