//! `hearth up REPO` with a devcontainer.json: its image, environment, user and folder,
//! its lifecycle commands in the spec's order with their output in `up` and `hearth
//! logs`, a failing command failing `up`, and errors and warnings that point into the
//! file. Real server, real workspaces, real git repositories.

mod common;

use common::{repo_with, TestServer};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Position of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

const LIFECYCLE: &str = r#"// the whole lifecycle, each form
{
  "image": "busybox",
  "frobnicate": true,
  "containerEnv": {"GREETING": "hi ${localWorkspaceFolderBasename}", "ID": "${devcontainerId}"},
  "remoteEnv": {"REMOTE": "${containerEnv:GREETING}-remote"},
  "onCreateCommand": "echo oncreate $GREETING; echo oncreate >> order",
  "updateContentCommand": ["sh", "-c", "echo update >> order; echo update-out"],
  "postCreateCommand": {
    "a": "echo postcreate-a; echo postcreate >> order",
    "b": ["echo", "postcreate-b"],
  },
  "postStartCommand": "echo poststart $REMOTE; echo poststart >> order",
  "postAttachCommand": "echo attach; pwd",
}
"#;

#[test]
fn up_runs_the_lifecycle_in_order_and_applies_the_environment() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(
        src.path(),
        "proj",
        &[(".devcontainer/devcontainer.json", LIFECYCLE)],
    );

    // No --image: the file's.
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "up failed: {err}\n{}",
        srv.server_log()
    );
    assert!(
        err.contains(
            "warning: .devcontainer/devcontainer.json:4:3: unknown property frobnicate is ignored"
        ),
        "{err}"
    );
    // Each step's output, in the spec's order.
    let steps = [
        "onCreateCommand: oncreate hi proj",
        "updateContentCommand: update-out",
        "postCreateCommand a: postcreate-a",
        "postStartCommand: poststart hi proj-remote",
        "postAttachCommand: attach",
        "postAttachCommand: /workspace/proj",
    ];
    let at: Vec<usize> = steps.iter().map(|s| line_of(&err, s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "out of order: {at:?}\n{err}"
    );
    line_of(&err, "postCreateCommand b: postcreate-b");
    // The workspace folder was each command's working directory.
    assert_eq!(
        srv.exec("proj", &["cat", "/workspace/proj/order"]),
        "oncreate\nupdate\npostcreate\npoststart\n"
    );

    // The same output is in the console log.
    let logs = srv.ok(&["logs", "proj"]);
    for s in steps {
        line_of(&logs, s);
    }

    // Sessions get containerEnv and remoteEnv, and start in the workspace folder.
    assert_eq!(
        srv.exec("proj", &["sh", "-c", "echo $GREETING/$REMOTE; pwd"]),
        "hi proj/hi proj-remote\n/workspace/proj\n"
    );
    // ${devcontainerId} as the reference CLI computes it for this folder and file (its
    // devcontainerIdForLabels, run under node for these two labels).
    assert_eq!(
        srv.exec("proj", &["sh", "-c", "echo $ID"]),
        "0mjsvpce2e3p31nqj7qj7ma7b78gjpsugvr32g0da5l7b3df0tjp\n"
    );
    // What the request sets wins.
    assert_eq!(
        srv.ok(&[
            "exec",
            "proj",
            "-e",
            "GREETING=x",
            "-w",
            "/",
            "--",
            "sh",
            "-c",
            "echo $GREETING; pwd"
        ]),
        "x\n/\n"
    );

    // A restart runs postStartCommand again, and only it.
    srv.ok(&["stop", "proj"]);
    srv.ok(&["start", "proj"]);
    assert_eq!(
        srv.exec("proj", &["cat", "/workspace/proj/order"]),
        "oncreate\nupdate\npostcreate\npoststart\npoststart\n"
    );
    let logs = srv.ok(&["logs", "proj"]);
    assert_eq!(
        logs.matches("postStartCommand: poststart hi proj-remote")
            .count(),
        2,
        "{logs}"
    );
}

#[test]
fn a_failing_post_create_command_fails_up_with_its_exit_code() {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(
        src.path(),
        "broken",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox", "postCreateCommand": "echo about to fail; echo boom >&2; exit 7", "postStartCommand": "echo never"}"#,
        )],
    );
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: postCreateCommand failed with exit code 7"),
        "{err}"
    );
    assert!(
        last.contains("boom") && last.contains("about to fail"),
        "{err}"
    );
    assert!(!err.contains("never"), "a later step ran: {err}");
    // Kept for a look, marked failed, with the output in its log.
    let ws = srv.workspaces();
    assert_eq!(ws[0]["state"], "failed", "{ws:?}");
    let logs = srv.ok(&["logs", "broken"]);
    line_of(&logs, "postCreateCommand: boom");
    line_of(&logs, "postCreateCommand failed with exit code 7");
}

#[test]
fn config_errors_point_into_the_file_and_the_default_image_is_the_servers() {
    let srv = TestServer::start_with(&["--default-image", "busybox"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();

    // A JSONC syntax error names file, line and column; nothing is made.
    let repo = repo_with(
        src.path(),
        "syntax",
        &[(
            ".devcontainer/devcontainer.json",
            "{\n  // fine\n  \"image\": \"busybox\",\n  \"name\": ]\n}\n",
        )],
    );
    let e = srv.fails(&["up", repo.to_str().unwrap()]);
    assert!(
        e.starts_with("error: .devcontainer/devcontainer.json:4:11: "),
        "{e}"
    );
    assert!(srv.workspace_names().is_empty());

    // Several configurations and no choice: the names, and how to choose.
    let repo = repo_with(
        src.path(),
        "multi",
        &[
            (
                ".devcontainer/go/devcontainer.json",
                r#"{"image": "busybox"}"#,
            ),
            (".devcontainer/py/devcontainer.json", r#"{"image": "nope"}"#),
        ],
    );
    let e = srv.fails(&["up", repo.to_str().unwrap()]);
    assert!(
        e.contains("several devcontainer configurations (go, py): choose one with --config NAME"),
        "{e}"
    );
    let e = srv.fails(&["up", repo.to_str().unwrap(), "--config", "rs"]);
    assert!(e.contains("(the repository has: go, py)"), "{e}");
    // Not supported yet: refused, not ignored.
    let repo = repo_with(
        src.path(),
        "feat",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox", "features": {"ghcr.io/devcontainers/features/go:1": {}}}"#,
        )],
    );
    let e = srv.fails(&["up", repo.to_str().unwrap()]);
    assert!(
        e.contains("features (ghcr.io/devcontainers/features/go:1)"),
        "{e}"
    );
    let repo = repo_with(
        src.path(),
        "big",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox", "hostRequirements": {"memory": "64gb"}}"#,
        )],
    );
    let e = srv.fails(&["up", repo.to_str().unwrap(), "--memory", "1G"]);
    assert!(
        e.contains("needs 64.0 GiB of memory (hostRequirements.memory)"),
        "{e}"
    );
    assert!(srv.workspace_names().is_empty());

    // The file is read as an unprivileged uid, never as the server: a repository only
    // root can read is refused before anything is made, like its clone would be.
    let private = repo_with(
        src.path(),
        "private",
        &[(".devcontainer.json", r#"{"image": "busybox"}"#)],
    );
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let e = srv.fails(&["up", private.to_str().unwrap()]);
    assert!(
        e.contains("cannot read the devcontainer configuration of"),
        "{e}"
    );
    assert!(srv.workspace_names().is_empty());

    // A repository without one needs no --image either: the server's default.
    let plain = common::git_repo(src.path(), "plain");
    srv.ok(&["up", plain.to_str().unwrap()]);
    assert_eq!(
        srv.exec("plain", &["cat", "/workspace/plain/README.md"]),
        "hello from the repo\n"
    );
}
