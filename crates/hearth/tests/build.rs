//! Dockerfile builds: `hearth up` of a repository whose devcontainer.json has `build`
//! (multi-stage, build args, target), `hearth image build` with podman's cache between
//! builds, a failing `RUN` failing `up` with its exit code and log, and `RUN` steps that
//! reach for the host finding only the builder workspace. Real server, real builder
//! workspace (podman inside it), real git repositories.

mod common;

use std::path::{Path, PathBuf};

use common::TestServer;

/// The builder image tar: `HEARTH_TEST_BUILDER`, else scripts/test.sh's cache. A missing
/// one fails the test, saying how to make it.
fn builder_tar() -> PathBuf {
    let path = std::env::var_os("HEARTH_TEST_BUILDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/hearth-images/test/builder.tar"));
    assert!(
        path.is_file(),
        "builder image {} missing: run scripts/test.sh, or scripts/make-image.sh builder FILE \
         and set HEARTH_TEST_BUILDER",
        path.display()
    );
    path
}

/// A server with busybox (the bases below) and the builder image loaded.
fn server() -> TestServer {
    let srv = TestServer::start();
    srv.load_busybox();
    srv.ok(&[
        "image",
        "load",
        builder_tar().to_str().unwrap(),
        "--name",
        "hearth-builder",
    ]);
    srv
}

/// Writes `files` (path, text) into `dir`.
fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const MULTI_STAGE: &str = r#"ARG BASE=busybox
FROM ${BASE} AS base
ARG GREETING=unset
RUN echo "$GREETING from the build" > /etc/greeting

FROM base AS final
COPY README.md /opt/readme
RUN echo final > /etc/stage

FROM base AS later
RUN echo later > /etc/stage && exit 9
"#;

#[test]
fn a_devcontainer_dockerfile_builds_and_a_failing_run_fails_up() {
    let srv = server();
    let src = tempfile::tempdir().unwrap();
    let repo = common::repo_with(
        src.path(),
        "proj",
        &[
            (
                ".devcontainer/devcontainer.json",
                r#"{
  // Relative to this file: the Dockerfile beside it, the context the repository root.
  "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"GREETING": "hello"}, "target": "final"},
  "postCreateCommand": "cat /etc/greeting"
}"#,
            ),
            (".devcontainer/Dockerfile", MULTI_STAGE),
        ],
    );
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "up failed: {err}\n{}",
        srv.server_log()
    );
    // The build's own output streamed to up, then the lifecycle ran on its image.
    assert!(err.contains("build: "), "{err}");
    assert!(
        err.contains("postCreateCommand: hello from the build"),
        "{err}"
    );
    // The target stage, with the build arg and the context's file; the later stage (which
    // would fail) was not built.
    assert_eq!(
        srv.exec(
            "proj",
            &["cat", "/etc/greeting", "/etc/stage", "/opt/readme"]
        ),
        "hello from the build\nfinal\nhello from the repo\n"
    );
    let images = srv.ok(&["image", "ls"]);
    assert!(images.contains("devcontainer/proj:"), "{images}");
    // The builder is a workspace of its own, out of the listing, with the build in its log.
    assert_eq!(srv.workspace_names(), vec!["proj"]);
    let logs = srv.ok(&["logs", "builder-admin"]);
    assert!(logs.contains("from the build"), "{logs}");
    // The workspace's own log has how its image was made, too.
    let logs = srv.ok(&["logs", "proj"]);
    assert!(
        logs.contains("how this workspace's image was made"),
        "{logs}"
    );
    assert!(
        logs.contains("build: [1/2] STEP 1/3: FROM busybox AS base"),
        "{logs}"
    );
    assert!(logs.contains("end of the image's build log"), "{logs}");
    // Its name is not for users to take.
    let e = srv.fails(&["up", repo.to_str().unwrap(), "--name", "builder-x"]);
    assert!(e.contains("reserved for builder workspaces"), "{e}");

    // A RUN that fails: up fails with its exit code and output, and leaves no workspace.
    let broken = common::repo_with(
        src.path(),
        "broken",
        &[
            (
                ".devcontainer.json",
                r#"{"build": {"dockerfile": "Dockerfile"}}"#,
            ),
            (
                "Dockerfile",
                "FROM busybox\nRUN echo about to fail && exit 3\n",
            ),
        ],
    );
    let out = srv.hearth(&["up", broken.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the build failed with exit code 3"),
        "{err}"
    );
    assert!(last.contains("about to fail"), "{err}");
    assert_eq!(srv.workspace_names(), vec!["proj"]);
    let logs = srv.ok(&["logs", "builder-admin"]);
    assert!(logs.contains("about to fail"), "{logs}");
}

#[test]
fn image_build_reuses_the_cache_and_run_steps_never_reach_the_host() {
    let srv = server();
    let ctx = tempfile::tempdir().unwrap();
    let df = "FROM busybox\nRUN echo step-one-ran && echo one > /one\nRUN echo two > /two\n";
    write(ctx.path(), &[("Dockerfile", df)]);
    let dir = ctx.path().to_str().unwrap();
    let out = srv.hearth(&["image", "build", dir, "--name", "app:1"]);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "build failed: {err}\n{}",
        srv.server_log()
    );
    assert!(err.lines().any(|l| l == "build: step-one-ran"), "{err}");
    // podman's storage in the builder is a directory of the builder's disk, not its
    // overlay root: native overlayfs, whose diff of a layer reads only what it changed.
    let status = srv.exec(
        "builder-admin",
        &["podman", "info", "--format", "{{.Store.GraphStatus}}"],
    );
    assert!(status.contains("Native Overlay Diff:true"), "{status}");
    assert!(status.contains("Backing Filesystem:btrfs"), "{status}");
    // busybox's layers are in the store already: only the two new ones come over.
    assert!(err.contains("\nsending 2 of "), "{err}");

    // One line changed: the steps before it come from podman's cache and do not run.
    write(
        ctx.path(),
        &[("Dockerfile", &df.replace("echo two", "echo TWO"))],
    );
    let out = srv.hearth(&["image", "build", dir, "--name", "app:2"]);
    let err = stderr(&out);
    assert!(out.status.success(), "rebuild failed: {err}");
    assert!(
        !err.lines().any(|l| l == "build: step-one-ran"),
        "the cached step ran again: {err}"
    );
    let cached = err.lines().filter(|l| l.contains("Using cache")).count();
    assert!(cached >= 1, "no cached step reported: {err}");
    // Only the changed step's layer is sent and unpacked; the store had the others.
    assert!(err.contains("\nsending 1 of "), "{err}");
    assert_eq!(err.matches(" unpacked (").count(), 1, "{err}");
    let src = tempfile::tempdir().unwrap();
    let repo = common::git_repo(src.path(), "app");
    srv.ok(&["up", repo.to_str().unwrap(), "--image", "app:2"]);
    assert_eq!(srv.exec("app", &["cat", "/one", "/two"]), "one\nTWO\n");

    // RUN steps that reach for the host: they run as the builder's unprivileged ids and
    // what they write lands in the image, never on the host.
    let marker = format!("hearth-hostile-{}", std::process::id());
    let hostile = format!(
        "FROM busybox\n\
         RUN echo \"uidmap: $(cat /proc/self/uid_map)\"; echo pwned > /tmp/{marker}; \
         echo pwned > /{marker}; echo pwned > /proc/1/root/tmp/{marker}\n"
    );
    write(ctx.path(), &[("Dockerfile.hostile", &hostile)]);
    let out = srv.hearth(&[
        "image",
        "build",
        dir,
        "-f",
        ctx.path().join("Dockerfile.hostile").to_str().unwrap(),
        "--name",
        "hostile",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "hostile build failed: {err}");
    for path in [format!("/tmp/{marker}"), format!("/{marker}")] {
        assert!(!Path::new(&path).exists(), "{path} written on the host");
    }
    assert_eq!(srv.ok(&["image", "ls"]).matches("hostile").count(), 1);
    let map = err
        .lines()
        .find_map(|l| l.strip_prefix("build: uidmap: "))
        .unwrap_or_else(|| panic!("no uid map in {err}"));
    let host_root: u64 = common::uid_base(map);
    assert!(
        host_root >= 1 << 20,
        "root in the build is host uid {host_root}: {err}"
    );
    // Paths outside the context are refused before anything runs.
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), &[("Dockerfile", "FROM busybox\n")]);
    let e = srv.fails(&[
        "image",
        "build",
        dir,
        "-f",
        outside.path().join("Dockerfile").to_str().unwrap(),
        "--name",
        "x",
    ]);
    assert!(e.contains("is not inside"), "{e}");
}

/// Blob, layer and image files of the server's image store.
fn store_files(srv: &TestServer) -> Vec<String> {
    let root = srv.data_dir().join("images");
    let mut out = Vec::new();
    for sub in ["blobs/sha256", "layers", "images"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            out.push(format!(
                "{sub}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out.push(std::fs::read_to_string(root.join("names.json")).unwrap());
    out.sort();
    out
}

/// Stands in for a builder whose root a `RUN` step took over: `podman save` still runs,
/// then the layout it wrote is tampered with as /etc/hostile says.
const HOSTILE_PODMAN: &str = r#"#!/bin/sh
/usr/bin/podman.real "$@" || exit
[ "$1" = save ] || exit 0
L=/var/lib/hearth-build/layout
m=$(sed 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/' $L/index.json)
last=$(sed 's/.*"digest":"sha256:\([0-9a-f]*\)","size":[0-9]*}\].*/\1/' $L/blobs/sha256/$m)
case $(cat /etc/hostile) in
digest) printf X | dd of=$L/blobs/sha256/$last bs=1 seek=600 conv=notrunc 2>/dev/null ;;
size)
  sed 's/"size":[0-9]*}\]/"size":99999999999999}]/' $L/blobs/sha256/$m > /tmp/m
  h=$(sha256sum /tmp/m | cut -c1-64); n=$(wc -c < /tmp/m); mv /tmp/m $L/blobs/sha256/$h
  sed -i "s/$m/$h/; s/\"size\":[0-9]*/\"size\":$n/" $L/index.json ;;
esac
"#;

#[test]
fn a_builder_sending_a_bad_layer_is_refused_and_the_store_is_unchanged() {
    let srv = server();
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().to_str().unwrap();
    write(
        ctx.path(),
        &[("Dockerfile", "FROM busybox\nRUN echo 1 > /rev\n")],
    );
    srv.ok(&["image", "build", dir, "--name", "good:1"]);
    srv.exec(
        "builder-admin",
        &["mv", "/usr/bin/podman", "/usr/bin/podman.real"],
    );
    let out = srv.hearth_stdin(
        &[
            "exec",
            "builder-admin",
            "--",
            "sh",
            "-c",
            "cat > /usr/bin/podman && chmod 755 /usr/bin/podman",
        ],
        HOSTILE_PODMAN.as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let before = store_files(&srv);
    let images = srv.ok(&["image", "ls"]);

    for (rev, mode, want) in [
        (2, "digest", "digest mismatch"),
        (3, "size", "--upload-max"),
    ] {
        srv.exec(
            "builder-admin",
            &["sh", "-c", &format!("echo {mode} > /etc/hostile")],
        );
        write(
            ctx.path(),
            &[(
                "Dockerfile",
                &format!("FROM busybox\nRUN echo {rev} > /rev\n"),
            )],
        );
        let e = srv.fails(&["image", "build", dir, "--name", "bad:1"]);
        assert!(e.contains(want), "{mode}: {e}");
        assert_eq!(store_files(&srv), before, "{mode}: the store changed");
        assert_eq!(srv.ok(&["image", "ls"]), images, "{mode}");
    }
}
