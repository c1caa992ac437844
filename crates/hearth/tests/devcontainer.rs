//! `hearth up REPO` with a devcontainer.json: its image, environment, user and folder,
//! its lifecycle commands in the spec's order with their output in `up` and `hearth
//! logs`, a failing command failing `up`, and errors and warnings that point into the
//! file. Real server, real workspaces, real git repositories.

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo_with, TestServer};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A server with busybox loaded and a repository `name` whose `.devcontainer.json` is
/// `config` (the temporary directory holds the repository).
fn busybox_repo(name: &str, config: &str) -> (TestServer, tempfile::TempDir, std::path::PathBuf) {
    let srv = TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(src.path(), name, &[(".devcontainer.json", config)]);
    (srv, src, repo)
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
            r#"{"image": "busybox", "features": {"./go": {}}}"#,
        )],
    );
    let e = srv.fails(&["up", repo.to_str().unwrap()]);
    assert!(
        e.contains(".devcontainer.json:1:35: feature ./go: local features"),
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
        e.contains(".devcontainer.json:1:53: needs 64.0 GiB of memory (hostRequirements.memory)"),
        "{e}"
    );
    // CPUs: against the workspace's --cpus, else the node's cores (not the server's).
    let cpus = repo_with(
        src.path(),
        "cpus",
        &[(
            ".devcontainer.json",
            "{\"image\": \"busybox\",\n \"hostRequirements\": {\"cpus\": 2}}",
        )],
    );
    let e = srv.fails(&["up", cpus.to_str().unwrap(), "--cpus", "1.5"]);
    assert!(
        e.contains(".devcontainer.json:2:31: needs 2 CPUs (hostRequirements.cpus) but the workspace would get 1.5 (--cpus): pass --cpus 2"),
        "{e}"
    );
    let many = repo_with(
        src.path(),
        "many",
        &[(
            ".devcontainer.json",
            r#"{"image": "busybox", "hostRequirements": {"cpus": 4096}}"#,
        )],
    );
    let e = srv.fails(&["up", many.to_str().unwrap()]);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        e.contains(&format!(
            "needs 4096 CPUs (hostRequirements.cpus) but the node has {cores} CPUs"
        )),
        "{e}"
    );
    assert!(srv.workspace_names().is_empty());
    // Enough with its --cpus: made.
    srv.ok(&["up", cpus.to_str().unwrap(), "--cpus", "2"]);
    srv.ok(&["rm", "cpus"]);

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

/// Polls `hearth logs NAME` until `needle` shows `count` times (the background steps
/// and postAttachCommand write there after the call that started them returned).
fn wait_in_logs(srv: &TestServer, name: &str, needle: &str, count: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = srv.ok(&["logs", name]);
        if logs.matches(needle).count() >= count {
            return logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not {count} times in the logs of {name}:\n{logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn wait_for_returns_early_and_attaching_runs_post_attach() {
    let (srv, _src, repo) = busybox_repo(
        "early",
        r#"{
              "image": "busybox",
              "waitFor": "onCreateCommand",
              "onCreateCommand": "echo first; echo oncreate >> order",
              "updateContentCommand": "echo update-out; echo update >> order",
              "postCreateCommand": "sleep 1; echo postcreate-out; echo postcreate >> order",
              "postStartCommand": "echo poststart-out; echo poststart >> order",
              "postAttachCommand": "echo attached-out",
            }"#,
    );
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, "onCreateCommand: first");
    line_of(
        &err,
        "waitFor reached: updateContentCommand, postCreateCommand, postStartCommand, \
         postAttachCommand go on in the background (hearth logs early)",
    );
    // `up` did not wait for them: none of their output is in its own.
    for later in [
        "update-out",
        "postcreate-out",
        "poststart-out",
        "attached-out",
    ] {
        assert!(!err.contains(later), "{later} in up's output:\n{err}");
    }
    // They hold the workspace's lock while they run: a stop waits for them, and they all
    // ran, in the spec's order, with their output in the console log.
    srv.ok(&["stop", "early"]);
    let logs = srv.ok(&["logs", "early"]);
    let at: Vec<usize> = [
        "onCreateCommand: first",
        "updateContentCommand: update-out",
        "postCreateCommand: postcreate-out",
        "postStartCommand: poststart-out",
        "postAttachCommand: attached-out",
    ]
    .iter()
    .map(|s| line_of(&logs, s))
    .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}\n{logs}");
    srv.ok(&["start", "early"]);
    assert_eq!(
        srv.exec("early", &["cat", "/workspace/early/order"]),
        "oncreate\nupdate\npostcreate\npoststart\npoststart\n"
    );

    // A terminal session is an attach: postAttachCommand runs again (beside it); a
    // session without a terminal is not.
    srv.ok(&["exec", "early", "--", "true"]);
    let out = srv.hearth(&["exec", "-t", "early", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_in_logs(&srv, "early", "postAttachCommand: attached-out", 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let logs = srv.ok(&["logs", "early"]);
    assert_eq!(
        logs.matches("postAttachCommand: attached-out").count(),
        2,
        "{logs}"
    );
}

/// `git -C repo ARGS` with a committer; returns stdout, trimmed.
fn git_in(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Commits a new file `NEWS` (the devcontainer.json unchanged); returns the commit.
fn news_commit(repo: &Path) -> String {
    std::fs::write(repo.join("NEWS"), "news\n").unwrap();
    git_in(repo, &["add", "NEWS"]);
    git_in(repo, &["commit", "-qm", "news"]);
    git_in(repo, &["rev-parse", "HEAD"])
}

const PREBUILT: &str = r#"{
  "image": "busybox",
  "onCreateCommand": "echo oncreate-ran; mkdir -p /opt && echo tool > /opt/tool; echo oncreate >> order",
  "updateContentCommand": "echo update-ran; echo update >> order",
  "postCreateCommand": "echo postcreate >> order",
  "postStartCommand": "echo poststart >> order",
}"#;

#[test]
fn up_starts_from_a_matching_prebuild() {
    let (srv, src, repo) = busybox_repo("pb", PREBUILT);
    let r = repo.to_str().unwrap();
    let head = git_in(&repo, &["rev-parse", "HEAD"]);

    // The prebuild runs onCreate and updateContent only, and leaves no workspace.
    let out = srv.hearth(&["prebuild", r]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, "onCreateCommand: oncreate-ran");
    line_of(&err, "updateContentCommand: update-ran");
    assert!(!err.contains("postCreateCommand"), "{err}");
    assert!(srv.workspace_names().is_empty());
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&srv.ok(&["prebuilds", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["commit"], head.as_str());
    assert_eq!(list[0]["branch"], serde_json::Value::Null);
    assert_eq!(list[0]["config_file"], ".devcontainer.json");
    let snap = list[0]["snapshot"].as_str().unwrap().to_string();
    assert!(srv.ok(&["prebuilds"]).contains(&snap));

    // `up` restores it instead of cloning and running those steps, then goes on.
    let out = srv.hearth(&["up", r]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, &format!("starting from prebuild {snap}"));
    for not in ["cloning", "oncreate-ran", "update-ran"] {
        assert!(!err.contains(not), "{not} in:\n{err}");
    }
    assert_eq!(
        srv.exec("pb", &["cat", "/workspace/pb/order", "/opt/tool"]),
        "oncreate\nupdate\npostcreate\npoststart\ntool\n"
    );
    // The files are the workspace's own (owners mapped into its range), the clone works.
    assert_eq!(
        srv.exec(
            "pb",
            &[
                "stat",
                "-c",
                "%u:%g",
                "/opt/tool",
                "/workspace/pb/.git/HEAD"
            ]
        ),
        "0:0\n0:0\n"
    );

    // A newer commit with the same config: the prebuild is an ancestor, but bringing it up
    // to date needs git in the image, which busybox lacks: `up` says so and clones.
    news_commit(&repo);
    let out = srv.hearth(&["up", r, "--name", "pb1"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, &format!("starting from prebuild {snap}"));
    line_of(&err, "does the image have git?");
    line_of(&err, "cloning instead");
    line_of(&err, "onCreateCommand: oncreate-ran");
    assert_eq!(
        srv.exec("pb1", &["cat", "/workspace/pb/NEWS", "/workspace/pb/order"]),
        "news\noncreate\nupdate\npostcreate\npoststart\n"
    );

    // A config that differs (another image setting, here a new env) does not match: cloned.
    std::fs::write(
        repo.join(".devcontainer.json"),
        PREBUILT.replace("\"image\"", "\"containerEnv\": {\"A\": \"1\"}, \"image\""),
    )
    .unwrap();
    git_in(&repo, &["commit", "-qam", "env"]);
    let out = srv.hearth(&["up", r, "--name", "pb2"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("starting from prebuild"), "{err}");
    line_of(&err, "onCreateCommand: oncreate-ran");

    // A branch's prebuild serves `up --branch` of that branch, and the clone is on it.
    git_in(&repo, &["checkout", "-qb", "dev"]);
    std::fs::write(repo.join("DEV"), "dev\n").unwrap();
    git_in(&repo, &["add", "DEV"]);
    git_in(&repo, &["commit", "-qm", "dev"]);
    git_in(&repo, &["checkout", "-q", "main"]);
    srv.ok(&["prebuild", r, "--branch", "dev"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&srv.ok(&["prebuilds", "--json"])).unwrap();
    assert_eq!(list[0]["branch"], "dev", "{list:?}");
    let out = srv.hearth(&["up", r, "--branch", "dev", "--name", "pbdev"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    line_of(
        &err,
        &format!(
            "starting from prebuild {}",
            list[0]["snapshot"].as_str().unwrap()
        ),
    );
    assert_eq!(
        srv.exec(
            "pbdev",
            &["cat", "/workspace/pb/DEV", "/workspace/pb/.git/HEAD"]
        ),
        "dev\nref: refs/heads/dev\n"
    );

    // Refused before anything runs: a branch name git would take as an option, a
    // repository without a devcontainer.json.
    let e = srv.fails(&["prebuild", r, "--branch=--upload-pack=touch /tmp/x"]);
    assert!(e.contains("invalid branch name"), "{e}");
    let plain = common::git_repo(src.path(), "plain");
    let e = srv.fails(&["prebuild", plain.to_str().unwrap()]);
    assert!(e.contains("has no devcontainer.json"), "{e}");
    assert_eq!(srv.workspace_names(), ["pb", "pb1", "pb2", "pbdev"]);

    // `prebuild rm`: only its owner or an admin; then `up` no longer starts from it.
    let dev = list[0]["snapshot"].as_str().unwrap().to_string();
    let bob = srv.ok(&["user", "add", "bob"]).trim().to_string();
    let e = srv.fails(&["--token", &bob, "prebuild", "rm", &dev]);
    assert!(e.contains("only they or an admin may remove it"), "{e}");
    let e = srv.fails(&["prebuild", "rm", &"0".repeat(32)]);
    assert!(e.contains("no prebuild 00000000"), "{e}");
    assert_eq!(
        srv.ok(&["prebuild", "rm", &dev]).trim(),
        format!("prebuild {dev} removed")
    );
    let left: Vec<serde_json::Value> =
        serde_json::from_str(&srv.ok(&["prebuilds", "--json"])).unwrap();
    assert!(
        left.iter().all(|p| p["snapshot"] != dev.as_str()),
        "{left:?}"
    );
    assert!(
        left.iter().any(|p| p["snapshot"] == snap.as_str()),
        "{left:?}"
    );
    let out = srv.hearth(&["up", r, "--branch", "dev", "--name", "pbdev2"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("starting from prebuild"), "{err}");
    let e = srv.fails(&["prebuild", "rm", &dev]);
    assert!(e.contains("no prebuild"), "{e}");
}

/// `up` of a commit newer than the prebuild's: the commits since come in as a bundle,
/// are merged in the workspace by its own git, and `updateContentCommand` runs again.
#[test]
fn up_brings_an_older_prebuild_up_to_date() {
    let srv = TestServer::start();
    srv.load_debian();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(
        src.path(),
        "deb",
        &[(".devcontainer.json", &PREBUILT.replace("busybox", "debian"))],
    );
    let r = repo.to_str().unwrap();
    srv.ok(&["prebuild", r]);
    let head = news_commit(&repo);

    let out = srv.hearth(&["up", r]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, "starting from prebuild");
    line_of(&err, "fetching the commits since the prebuild");
    line_of(&err, "updateContentCommand: update-ran");
    assert!(!err.contains("oncreate-ran"), "{err}");
    assert!(!err.contains("cloning"), "{err}");
    assert_eq!(
        srv.exec(
            "deb",
            &["sh", "-c", "cd /workspace/deb && cat NEWS order && git rev-parse HEAD && git status --porcelain"]
        ),
        format!("news\noncreate\nupdate\nupdate\npostcreate\npoststart\n{head}\n?? order\n")
    );
}

/// HMAC-SHA256 of `body` with `key`, hex, as openssl computes it.
fn hmac_hex(key: &str, body: &str) -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            "printf %s \"$1\" | openssl dgst -sha256 -hmac \"$2\"",
            "sh",
            body,
            key,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit(' ').next().unwrap().to_string()
}

/// POSTs `body` to the server's `path` with `headers`; returns (status, body).
fn post(srv: &TestServer, path: &str, headers: &[String], body: &str) -> (u16, String) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(srv.data_dir().join("server.json")).unwrap())
            .unwrap();
    let url = format!("{}{path}", info["url"].as_str().unwrap());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        "POST",
        "-w",
        "\n%{http_code}",
        "--data-binary",
        body,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(out.status.success(), "curl: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// A forge whose push webhook the tests deliver, as it sends one.
#[derive(Clone, Copy, Debug)]
enum Forge {
    GitHub,
    Gitea,
    GitLab,
}

impl Forge {
    fn path(self) -> &'static str {
        match self {
            Forge::GitHub => "/v1/hooks/github",
            Forge::Gitea => "/v1/hooks/gitea",
            Forge::GitLab => "/v1/hooks/gitlab",
        }
    }

    /// The push event's body: `branch` of repository `url` now at `after`.
    fn push_body(self, url: &str, branch: &str, after: &str) -> String {
        let repo = serde_json::json!({"clone_url": url, "default_branch": branch});
        let gitlab = serde_json::json!({"git_http_url": url, "default_branch": branch});
        let (key, repo) = match self {
            Forge::GitLab => ("project", gitlab),
            _ => ("repository", repo),
        };
        serde_json::json!({"ref": format!("refs/heads/{branch}"), "after": after, key: repo})
            .to_string()
    }

    /// The event header and the proof of the secret (`secret` signs `body`, or is the
    /// token) as the forge sends them.
    fn headers(self, secret: &str, body: &str) -> Vec<String> {
        match self {
            Forge::GitHub => vec![
                "X-GitHub-Event: push".into(),
                format!("X-Hub-Signature-256: sha256={}", hmac_hex(secret, body)),
            ],
            Forge::Gitea => vec![
                "X-Gitea-Event: push".into(),
                format!("X-Gitea-Signature: {}", hmac_hex(secret, body)),
            ],
            Forge::GitLab => vec![
                "X-Gitlab-Event: Push Hook".into(),
                format!("X-Gitlab-Token: {secret}"),
            ],
        }
    }
}

const HOOK_SECRET: &str = "a-webhook-secret-for-tests";

/// A server taking webhooks with [`HOOK_SECRET`], busybox loaded, and a repository `name`
/// with `config` prebuilt once (`hearth prebuild`).
fn hooked_repo(
    name: &str,
    config: &str,
) -> (TestServer, [tempfile::TempDir; 2], std::path::PathBuf) {
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, format!("{HOOK_SECRET}\n")).unwrap();
    let srv = TestServer::start_with(&["--webhook-secret-file", secret_file.to_str().unwrap()]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(src.path(), name, &[(".devcontainer.json", config)]);
    srv.ok(&["prebuild", repo.to_str().unwrap()]);
    (srv, [secrets, src], repo)
}

/// Delivers a push of `repo`'s current branch at its HEAD through `forge`'s webhook,
/// with the right secret; returns (status, body) and the commit pushed.
fn deliver_head(srv: &TestServer, forge: Forge, repo: &Path) -> ((u16, String), String) {
    let head = git_in(repo, &["rev-parse", "HEAD"]);
    let branch = git_in(repo, &["symbolic-ref", "--short", "HEAD"]);
    let body = forge.push_body(repo.to_str().unwrap(), &branch, &head);
    let got = post(srv, forge.path(), &forge.headers(HOOK_SECRET, &body), &body);
    (got, head)
}

fn prebuild_list(srv: &TestServer) -> Vec<serde_json::Value> {
    serde_json::from_str(&srv.ok(&["prebuilds", "--json"])).unwrap()
}

fn run_list(srv: &TestServer) -> Vec<serde_json::Value> {
    serde_json::from_str(&srv.ok(&["prebuild", "runs", "--json"])).unwrap()
}

/// Waits (up to 2 minutes) for the newest prebuild run at `commit` to end; returns it.
fn wait_for_run(srv: &TestServer, commit: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let runs = run_list(srv);
        if let Some(r) = runs.iter().find(|r| r["commit"] == commit) {
            if r["state"] != "running" {
                return r.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finished run at {commit}: {runs:?}\n{}",
            srv.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A webhook signed (or carrying the token) wrongly, or not at all, is refused, and
/// nothing is built for it.
fn refused_unless_signed(srv: &TestServer, forge: Forge, repo: &Path) {
    let head = git_in(repo, &["rev-parse", "HEAD"]);
    let branch = git_in(repo, &["symbolic-ref", "--short", "HEAD"]);
    let body = forge.push_body(repo.to_str().unwrap(), &branch, &head);
    let (runs, prebuilds) = (run_list(srv), prebuild_list(srv));
    let wrong = forge.headers("not-the-webhook-secret", &body);
    let (code, text) = post(srv, forge.path(), &wrong, &body);
    assert_eq!(code, 401, "{forge:?}: {text}");
    assert!(text.contains("webhook refused"), "{forge:?}: {text}");
    let (code, text) = post(srv, forge.path(), &wrong[..1], &body);
    assert_eq!(code, 401, "{forge:?} unsigned: {text}");
    // Signed right, but for another body: the signature covers the body.
    if !matches!(forge, Forge::GitLab) {
        let other = forge.headers(HOOK_SECRET, &body.replace(&head, &"1".repeat(40)));
        let (code, text) = post(srv, forge.path(), &other, &body);
        assert_eq!(code, 401, "{forge:?}: {text}");
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        run_list(srv),
        runs,
        "{forge:?}: a refused webhook started a run"
    );
    assert_eq!(prebuild_list(srv), prebuilds);
    assert!(srv.workspace_names().is_empty());
}

#[test]
fn a_signed_push_webhook_refreshes_the_prebuild() {
    let (srv, _dirs, repo) = hooked_repo("hooked", PREBUILT);
    let r = repo.to_str().unwrap();
    news_commit(&repo);
    refused_unless_signed(&srv, Forge::GitHub, &repo);
    // A push to a repository nobody prebuilt starts nothing.
    let head = git_in(&repo, &["rev-parse", "HEAD"]);
    let branch = git_in(&repo, &["symbolic-ref", "--short", "HEAD"]);
    let other = Forge::GitHub.push_body("/nowhere/else", &branch, &head);
    let (code, text) = post(
        &srv,
        Forge::GitHub.path(),
        &Forge::GitHub.headers(HOOK_SECRET, &other),
        &other,
    );
    assert_eq!((code, text.as_str()), (202, r#"{"started":[],"runs":[]}"#));

    // Signed: the prebuild of that branch is made again, at the pushed commit.
    let ((code, text), head) = deliver_head(&srv, Forge::GitHub, &repo);
    assert_eq!(code, 202, "{text}");
    let started: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(started["started"], serde_json::json!([r]));
    let run = wait_for_run(&srv, &head);
    assert_eq!(run["state"], "ready", "{run}\n{}", srv.server_log());
    assert_eq!(run["trigger"], "webhook");
    let list = prebuild_list(&srv);
    assert_eq!(list[0]["commit"], head.as_str(), "{list:?}");
    assert_eq!(list[0]["snapshot"], run["snapshot"]);
    assert_eq!(list.len(), 2, "{list:?}");
    // The same delivery again (a forge's redelivery, or a replay by someone who saw it):
    // that commit is prebuilt, nothing starts.
    let ((code, text), _) = deliver_head(&srv, Forge::GitHub, &repo);
    assert_eq!((code, text.as_str()), (202, r#"{"started":[],"runs":[]}"#));
}

/// Waits (up to 2 minutes) for prebuild run `id` to end; returns it.
fn wait_for_run_id(srv: &TestServer, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let runs = run_list(srv);
        if let Some(r) = runs.iter().find(|r| r["id"] == id) {
            if r["state"] != "running" {
                return r.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} did not end: {runs:?}\n{}",
            srv.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The webhook runs at `commit`, their ids sorted.
fn webhook_runs_at(srv: &TestServer, commit: &str) -> Vec<String> {
    let mut ids: Vec<String> = run_list(srv)
        .iter()
        .filter(|r| r["trigger"] == "webhook" && r["commit"] == commit)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// A forge's redelivery of a push (the same signed body, the same delivery id) is
/// answered as the first delivery was, naming the same run, and starts none: while that
/// run goes, after it, and after a server restart. Another delivery of the same push (a
/// new id) is handled: a run. The pushed commit's onCreateCommand fails, so no prebuild
/// of it stops a run: only the delivery id does.
#[test]
fn a_redelivered_push_webhook_starts_no_second_run() {
    let (mut srv, _dirs, repo) = hooked_repo("redelivered", PREBUILT);
    let r = repo.to_str().unwrap();
    std::fs::write(
        repo.join(".devcontainer.json"),
        PREBUILT.replace("echo oncreate-ran;", "echo oncreate-ran; exit 3;"),
    )
    .unwrap();
    git_in(&repo, &["commit", "-qam", "break onCreateCommand"]);
    let head = git_in(&repo, &["rev-parse", "HEAD"]);
    let branch = git_in(&repo, &["symbolic-ref", "--short", "HEAD"]);
    let body = Forge::GitHub.push_body(r, &branch, &head);
    let signed = Forge::GitHub.headers(HOOK_SECRET, &body);
    let delivery = |id: &str| {
        let mut h = signed.clone();
        h.push(format!("X-GitHub-Delivery: {id}"));
        h
    };
    let d1 = delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958");

    let (code, first) = post(&srv, Forge::GitHub.path(), &d1, &body);
    assert_eq!(code, 202, "{first}");
    let answer: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(answer["started"], serde_json::json!([r]));
    let id1 = answer["runs"][0].as_str().unwrap().to_string();
    // Sent again at once (a retry) while its run goes.
    assert_eq!(
        post(&srv, Forge::GitHub.path(), &d1, &body),
        (202, first.clone())
    );
    let run = wait_for_run_id(&srv, &id1);
    assert_eq!(run["state"], "failed", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("exit code 3"),
        "{run}"
    );
    // Sent again after the run, and after a restart of the server.
    assert_eq!(
        post(&srv, Forge::GitHub.path(), &d1, &body),
        (202, first.clone())
    );
    srv.stop();
    srv.spawn();
    assert_eq!(
        post(&srv, Forge::GitHub.path(), &d1, &body),
        (202, first.clone())
    );
    assert_eq!(webhook_runs_at(&srv, &head), std::slice::from_ref(&id1));
    assert!(srv.workspace_names().is_empty());

    // Another delivery of the same push is handled.
    let (code, text) = post(
        &srv,
        Forge::GitHub.path(),
        &delivery("0f3c2b1a-cc78-11e3-81ab-4c9367dc0958"),
        &body,
    );
    assert_eq!(code, 202, "{text}");
    let second: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(second["started"], serde_json::json!([r]));
    let id2 = second["runs"][0].as_str().unwrap().to_string();
    assert_ne!(id2, id1);
    assert_eq!(wait_for_run_id(&srv, &id2)["state"], "failed");
    let mut both = vec![id1, id2];
    both.sort();
    assert_eq!(webhook_runs_at(&srv, &head), both);
    // A seen id with another body is no redelivery; an id that is not one is refused.
    let other = body.replace(&head, &"1".repeat(40));
    let mut h = Forge::GitHub.headers(HOOK_SECRET, &other);
    h.push(d1.last().unwrap().clone());
    let (code, text) = post(&srv, Forge::GitHub.path(), &h, &other);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("another body"), "{text}");
    let (code, text) = post(&srv, Forge::GitHub.path(), &delivery("../../x"), &body);
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("x-github-delivery must be 1 to 100"),
        "{text}"
    );
    assert_eq!(webhook_runs_at(&srv, &head), both);
    assert!(srv.workspace_names().is_empty());
}

/// Kills a background CLI when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, read in a thread, awaited one needle at a time.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle` (up to 2 minutes; lines before it are skipped).
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(e) => panic!("{needle:?} never came ({e}); got {:?}", self.seen),
            }
        }
    }

    /// Whether the output ended (the child closed it).
    fn ended(&self) -> bool {
        matches!(
            self.rx.recv_timeout(std::time::Duration::from_secs(120)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

/// A running prebuild's output is seen while it runs (`hearth prebuild logs RUN`, its
/// lines and state `running`), and `hearth prebuild logs -f RUN` follows it: what is
/// written after, until the run ends, then how it ended. Its onCreateCommand prints a
/// line and waits for a file the test makes in the prebuild's workspace.
#[test]
fn prebuild_logs_show_a_running_prebuild_and_follow_it_to_its_end() {
    let (srv, _src, repo) = busybox_repo(
        "watched",
        r#"{
  "image": "busybox",
  "onCreateCommand": "echo waiting-for-go; i=0; while [ ! -e /tmp/go ] && [ $i -lt 1500 ]; do sleep 0.1; i=$((i+1)); done; echo went",
  "updateContentCommand": "echo update-ran"
}"#,
    );
    let r = repo.to_str().unwrap();
    let mut build = Killed(srv.spawn_cli(&["prebuild", r]));
    // Its run, under way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let id = loop {
        let runs = run_list(&srv);
        if let Some(run) = runs.first() {
            assert_eq!(run["state"], "running", "{run}\n{}", srv.server_log());
            break run["id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no run");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // Its log while it waits: the line it printed, the run still running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let logs = srv.ok(&["prebuild", "logs", &id]);
        if logs.contains("onCreateCommand: waiting-for-go") {
            line_of(&logs, "(cli), running");
            assert!(!logs.contains("went"), "{logs}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the running prebuild's log never showed its line:\n{logs}\n{}",
            srv.server_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Followed: the log so far, then the rest as it comes, then the outcome.
    let mut follow = Killed(
        srv.command(&["prebuild", "logs", "-f", &id])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = Lines::of(&mut follow.0);
    lines.wait_for("(cli), running");
    lines.wait_for("onCreateCommand: waiting-for-go");
    let ws = srv
        .workspace_names()
        .into_iter()
        .find(|n| n.starts_with("prebuild-"))
        .expect("the prebuild's workspace");
    srv.exec(&ws, &["touch", "/tmp/go"]);
    lines.wait_for("onCreateCommand: went");
    lines.wait_for("updateContentCommand: update-ran");
    lines.wait_for(&format!("prebuild run {id} ready, finished "));
    let made = lines.wait_for("prebuild ");
    assert!(lines.ended(), "the follow went on after the end");
    let status = follow.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let status = build.0.wait().unwrap();
    assert!(status.success(), "hearth prebuild: {status:?}");
    let list = prebuild_list(&srv);
    assert_eq!(
        made,
        format!("prebuild {}", list[0]["snapshot"].as_str().unwrap())
    );

    // Followed once ended: all of it, and it ends by itself.
    let out = srv.ok(&["prebuild", "logs", "--follow", &id]);
    let at = line_of(&out, "onCreateCommand: waiting-for-go");
    assert!(line_of(&out, "onCreateCommand: went") > at, "{out}");
    line_of(&out, &format!("prebuild run {id} ready"));
    // --json is the run as it is; with --follow it is refused.
    let out = srv.hearth(&["prebuild", "logs", "-f", "--json", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// Without a devcontainer.json, sessions run as the image's `USER` (here `dev`, uid 1000),
/// and the clone is that user's too, so they can write their own checkout. Handed over
/// once (a file root made later stays root's across a restart and in a fork), symlinks in
/// it changed themselves, never what they point at.
#[test]
fn the_image_user_owns_the_repository_without_a_devcontainer_json() {
    let srv = TestServer::start();
    srv.load_busybox_dev();
    let src = tempfile::tempdir().unwrap();
    let repo = common::git_repo(src.path(), "proj");
    std::os::unix::fs::symlink("/etc", repo.join("etc-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.join("passwd-link")).unwrap();
    common::commit_files(&repo, &[("sub/file", "x\n")]);
    let out = srv.hearth(&["up", repo.to_str().unwrap(), "--image", "busybox-dev"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, "handing /workspace/proj to uid 1000:1000");
    assert_eq!(
        srv.exec(
            "proj",
            &[
                "sh",
                "-c",
                "id -un; pwd; echo more >> README.md && touch new sub/new && echo wrote; \
                 stat -c %U . .git .git/index README.md sub sub/file etc-link passwd-link; \
                 stat -c %U /etc /etc/passwd /workspace"
            ]
        ),
        "dev\n/workspace/proj\nwrote\n\
         dev\ndev\ndev\ndev\ndev\ndev\ndev\ndev\n\
         root\nroot\nroot\n"
    );
    // Once: what root makes in the repository later stays root's, across a restart.
    srv.ok(&[
        "exec",
        "proj",
        "-u",
        "0",
        "--",
        "touch",
        "/workspace/proj/by-root",
    ]);
    srv.ok(&["stop", "proj"]);
    srv.ok(&["start", "proj"]);
    let owners = "stat -c %U README.md new by-root";
    assert_eq!(srv.exec("proj", &["sh", "-c", owners]), "dev\ndev\nroot\n");
    // A fork keeps its snapshot's owners.
    srv.ok(&["stop", "proj"]);
    let snap = srv.workspace("proj")["last_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    srv.ok(&["fork", "proj", "--snapshot", &snap, "--name", "proj2"]);
    assert_eq!(
        srv.exec(
            "proj2",
            &["sh", "-c", &format!("cd /workspace/proj && {owners}")]
        ),
        "dev\ndev\nroot\n"
    );
}

/// A non-root `remoteUser` (Debian's `nobody`) gets the repository (it writes it and runs
/// git in it, as with the reference CLI's bind mount), and a `workspaceFolder` outside
/// `/workspace` holds it: lifecycle commands and sessions start there, across a restart.
#[test]
fn the_remote_user_owns_the_repository_at_its_workspace_folder() {
    let srv = TestServer::start();
    srv.load_debian();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(
        src.path(),
        "proj",
        &[(
            ".devcontainer.json",
            r#"{
  "image": "debian",
  "remoteUser": "nobody",
  "workspaceFolder": "/src/app/",
  "containerEnv": {"LOCAL": "${localWorkspaceFolder}", "CONTAINER": "${containerWorkspaceFolder}"},
  "onCreateCommand": "pwd > /tmp/where && id -un >> /tmp/where && echo made > made-on-create",
  "postCreateCommand": "git status --porcelain && echo post-create-ok",
  "postStartCommand": "pwd >> /tmp/starts",
  "customizations": {"vscode": {"extensions": ["rust-lang.rust-analyzer"], "settings": {"editor.tabSize": 2}}, "jetbrains": {}}
}"#,
        )],
    );
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, "linking /src/app to /workspace/proj");
    line_of(
        &err,
        "customizations.jetbrains is not used by hearth and is ignored",
    );
    // What an editor integration needs, in inspect (and the API's workspace view).
    let i: serde_json::Value =
        serde_json::from_str(&srv.ok(&["inspect", "proj", "--json"])).unwrap();
    assert_eq!(
        i["devcontainer"],
        serde_json::json!({
            "file": ".devcontainer.json",
            "workspace_folder": "/src/app",
            "user": "nobody",
            "vscode_extensions": ["rust-lang.rust-analyzer"],
            "vscode_settings": {"editor.tabSize": 2}
        })
    );
    let text = srv.ok(&["inspect", "proj"]);
    assert!(text.contains("rust-lang.rust-analyzer"), "{text}");
    line_of(&err, "postCreateCommand: ?? made-on-create");
    line_of(&err, "postCreateCommand: post-create-ok");
    assert_eq!(
        srv.exec("proj", &["cat", "/tmp/where"]),
        "/src/app\nnobody\n"
    );
    // Sessions start there, as the remote user, who owns and can use the repository.
    assert_eq!(
        srv.exec(
            "proj",
            &[
                "sh",
                "-c",
                "pwd; id -un; cat README.md; echo more >> README.md; \
                 stat -c %U /workspace/proj /workspace/proj/.git/index made-on-create; \
                 git status --porcelain; echo $LOCAL $CONTAINER"
            ]
        ),
        // (${containerWorkspaceFolder} is the value as written, as the reference CLI has it.)
        "/src/app\nnobody\nhello from the repo\nnobody\nnobody\nnobody\n M README.md\n?? made-on-create\n/workspace/proj /src/app/\n"
    );
    srv.ok(&["stop", "proj"]);
    srv.ok(&["start", "proj"]);
    assert_eq!(
        srv.exec("proj", &["cat", "/tmp/starts"]),
        "/src/app\n/src/app\n"
    );
    assert_eq!(
        srv.exec("proj", &["sh", "-c", "pwd; ls"]),
        "/src/app\nREADME.md\nmade-on-create\n"
    );
    // A fork is the same devcontainer: its sessions run as the remote user, in the
    // folder, with the environment; its create-time steps are not run again.
    srv.ok(&["stop", "proj"]);
    let snap = srv.workspace("proj")["last_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    srv.ok(&["fork", "proj", "--snapshot", &snap, "--name", "proj2"]);
    assert_eq!(
        srv.exec(
            "proj2",
            &["sh", "-c", "pwd; id -un; echo $CONTAINER; cat /tmp/where"]
        ),
        "/src/app\nnobody\n/src/app/\n/src/app\nnobody\n"
    );
    let i: serde_json::Value =
        serde_json::from_str(&srv.ok(&["inspect", "proj2", "--json"])).unwrap();
    assert_eq!(i["devcontainer"]["user"], "nobody", "{i}");

    // A folder the image already fills is refused at the first step, saying why.
    let full = repo_with(
        src.path(),
        "full",
        &[(
            ".devcontainer.json",
            r#"{"image": "debian", "workspaceFolder": "/var/lib/dpkg"}"#,
        )],
    );
    let e = srv.fails(&["up", full.to_str().unwrap()]);
    assert!(
        e.contains("workspaceFolder /var/lib/dpkg is a directory of the image that is not empty"),
        "{e}"
    );
    // And a system directory before anything is made, pointing into the file.
    let sys = repo_with(
        src.path(),
        "sys",
        &[(
            ".devcontainer.json",
            "{\"image\": \"debian\",\n \"workspaceFolder\": \"/etc\"}",
        )],
    );
    let e = srv.fails(&["up", sys.to_str().unwrap()]);
    assert!(
        e.contains(".devcontainer.json:2:21: workspaceFolder \"/etc\" is a system directory"),
        "{e}"
    );
    assert!(!srv.workspace_names().contains(&"sys".to_string()));
}

/// `hearth logs -f` follows the console: a background lifecycle step's output and a line
/// written to PID 1's output later arrive while it runs, and it ends when the workspace
/// stops; on a stopped workspace it prints the log and ends at once.
#[test]
fn logs_follow_streams_until_the_workspace_stops() {
    use std::io::{BufRead, BufReader};
    let (srv, _src, repo) = busybox_repo(
        "follow",
        r#"{
              "image": "busybox",
              "waitFor": "onCreateCommand",
              "onCreateCommand": "echo created",
              "postCreateCommand": "sleep 2; echo background-done"
            }"#,
    );
    let out = srv.hearth(&["up", repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = srv
        .command(&["logs", "-f", "follow"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(l) => seen.push(l),
                Err(e) => panic!("{needle:?} never followed ({e}); got {seen:?}"),
            }
        }
    };
    // The log so far, then the background step's output as it is written.
    wait_for("onCreateCommand: created");
    wait_for("postCreateCommand: background-done");
    // Something written to the console now (PID 1's stdout) arrives too.
    srv.exec("follow", &["sh", "-c", "echo written-later > /proc/1/fd/1"]);
    wait_for("written-later");
    // A stop ends the follower, successfully.
    srv.ok(&["stop", "follow"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("logs -f did not end after the stop");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    reader.join().unwrap();
    assert!(status.success(), "{status:?}");

    // Stopped: the log, and the command ends by itself.
    let out = srv.hearth(&["logs", "-f", "follow"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("written-later"));
}

/// Gitea (HMAC-SHA256 of the body, bare hex) and GitLab (the secret as a token) through
/// the real server: refused without the secret, else the prebuild is made again.
#[test]
fn gitea_and_gitlab_push_webhooks_refresh_the_prebuild() {
    let (srv, _dirs, repo) = hooked_repo("forges", PREBUILT);
    let r = repo.to_str().unwrap();
    for (i, forge) in [Forge::Gitea, Forge::GitLab].into_iter().enumerate() {
        std::fs::write(repo.join("NEWS"), format!("news {i}\n")).unwrap();
        git_in(&repo, &["add", "NEWS"]);
        git_in(&repo, &["commit", "-qm", "news"]);
        refused_unless_signed(&srv, forge, &repo);
        let ((code, text), head) = deliver_head(&srv, forge, &repo);
        assert_eq!(code, 202, "{forge:?}: {text}");
        let started: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(started["started"], serde_json::json!([r]), "{forge:?}");
        let run = wait_for_run(&srv, &head);
        assert_eq!(
            run["state"],
            "ready",
            "{forge:?}: {run}\n{}",
            srv.server_log()
        );
        assert_eq!(run["trigger"], "webhook");
        let list = prebuild_list(&srv);
        assert_eq!(list[0]["commit"], head.as_str(), "{forge:?}: {list:?}");
        assert_eq!(list.len(), i + 2, "{list:?}");
    }
}

/// A webhook's prebuild whose `onCreateCommand` fails is seen by its owner: `hearth
/// prebuilds` shows the run failed with the exit code and output, `hearth prebuild logs`
/// its output; a later good push makes a prebuild again.
#[test]
fn a_failing_webhook_prebuild_shows_in_prebuilds() {
    let (srv, _dirs, repo) = hooked_repo("flaky", PREBUILT);
    let runs = run_list(&srv);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (&runs[0]["state"], &runs[0]["trigger"]),
        (&"ready".into(), &"cli".into()),
        "{runs:?}"
    );

    std::fs::write(
        repo.join(".devcontainer.json"),
        PREBUILT.replace(
            "echo oncreate-ran;",
            "echo oncreate-ran; echo about-to-break >&2; exit 3;",
        ),
    )
    .unwrap();
    git_in(&repo, &["commit", "-qam", "break onCreateCommand"]);
    let ((code, text), bad) = deliver_head(&srv, Forge::GitHub, &repo);
    assert_eq!(code, 202, "{text}");
    let run = wait_for_run(&srv, &bad);
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["trigger"], "webhook");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("onCreateCommand failed with exit code 3")
            && error.contains("about-to-break"),
        "{error}"
    );
    assert!(run["finished_at"].is_string(), "{run}");
    // `hearth prebuilds`: the prebuild of before is still the one `up` uses, and the
    // latest run of the repository says it failed, and why.
    let shown = srv.ok(&["prebuilds"]);
    let id = run["id"].as_str().unwrap();
    let line = shown
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no run {id} in:\n{shown}"));
    for want in [
        "webhook",
        "failed",
        "exit code 3",
        "about-to-break",
        &bad[..12],
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    assert_eq!(prebuild_list(&srv).len(), 1);
    // Its output, as `hearth prebuild` would have printed it.
    let logs = srv.ok(&["prebuild", "logs", id]);
    line_of(&logs, "webhook), failed");
    line_of(&logs, &format!("commit {bad}"));
    line_of(&logs, "onCreateCommand: oncreate-ran");
    line_of(&logs, "onCreateCommand: about-to-break");
    line_of(&logs, "error: onCreateCommand failed with exit code 3");
    assert!(srv.workspace_names().is_empty());
    // Nobody else's: another user sees neither the run nor its log.
    let bob = srv.ok(&["user", "add", "bob"]).trim().to_string();
    let e = srv.fails(&["--token", &bob, "prebuild", "logs", id]);
    assert!(e.contains("no prebuild run"), "{e}");
    let theirs: Vec<serde_json::Value> =
        serde_json::from_str(&srv.ok(&["--token", &bob, "prebuild", "runs", "--json"])).unwrap();
    assert!(theirs.is_empty(), "{theirs:?}");

    // Fixed: the next push makes a prebuild again.
    std::fs::write(repo.join(".devcontainer.json"), PREBUILT).unwrap();
    git_in(&repo, &["commit", "-qam", "fix onCreateCommand"]);
    let ((code, text), good) = deliver_head(&srv, Forge::GitHub, &repo);
    assert_eq!(code, 202, "{text}");
    let run = wait_for_run(&srv, &good);
    assert_eq!(run["state"], "ready", "{run}\n{}", srv.server_log());
    let list = prebuild_list(&srv);
    assert_eq!(list[0]["commit"], good.as_str(), "{list:?}");
    assert_eq!(list[0]["snapshot"], run["snapshot"]);
    let shown = srv.ok(&["prebuilds"]);
    let line = shown
        .lines()
        .find(|l| l.starts_with(run["id"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no run in:\n{shown}"));
    assert!(line.contains("ready"), "{line}");
    // The failure stays in the runs' history.
    let all = run_list(&srv);
    assert_eq!(
        all.iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ready", "failed", "ready"],
        "{all:?}"
    );
}

/// Prebuilds follow the snapshot retention: with `--snapshot-keep-last 2` only the two
/// newest of a repository's prebuilds stay listed (the rows of the ones the store dropped
/// go), the newest is the one `up` starts from, and a workspace started from one that
/// was dropped since keeps its files.
#[test]
fn old_prebuilds_follow_the_snapshot_retention() {
    let srv = TestServer::start_with(&["--snapshot-keep-last", "2", "--snapshot-keep-daily", "0"]);
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    let repo = repo_with(src.path(), "kept", &[(".devcontainer.json", PREBUILT)]);
    let r = repo.to_str().unwrap();
    // A file past the lazy-restore size, so the workspace below fills it from the prebuild.
    let config = PREBUILT.replace(
        "echo oncreate >> order",
        "echo oncreate >> order; head -c 1048576 /dev/urandom > /opt/big; md5sum /opt/big > /opt/big.md5",
    );
    std::fs::write(repo.join(".devcontainer.json"), &config).unwrap();
    git_in(&repo, &["commit", "-qam", "big file"]);

    srv.ok(&["prebuild", r]);
    let first = prebuild_list(&srv)[0]["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // In use: a workspace started from the first prebuild.
    let out = srv.hearth(&["up", r, "--name", "user1"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, &format!("starting from prebuild {first}"));

    let mut made = vec![first.clone()];
    for i in 0..3 {
        std::fs::write(repo.join("NEWS"), format!("news {i}\n")).unwrap();
        git_in(&repo, &["add", "NEWS"]);
        git_in(&repo, &["commit", "-qm", "news"]);
        srv.ok(&["prebuild", r]);
        made.push(
            prebuild_list(&srv)[0]["snapshot"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The two newest are kept, newest first; the older rows are gone.
    let list = prebuild_list(&srv);
    let kept: Vec<&str> = list
        .iter()
        .map(|p| p["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [made[3].as_str(), made[2].as_str()], "{list:?}");
    let shown = srv.ok(&["prebuilds"]);
    for old in &made[..2] {
        assert!(
            !shown.contains(&format!(" {old} ")),
            "{old} still listed:\n{shown}"
        );
    }
    // `up` of the head starts from the newest.
    let out = srv.hearth(&["up", r, "--name", "user2"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    line_of(&err, &format!("starting from prebuild {}", made[3]));
    // The workspace started from the dropped first prebuild still has its files, the
    // large one whole, after a store gc that deletes the dropped snapshots' chunks.
    srv.ok(&["store", "gc"]);
    assert_eq!(
        srv.exec(
            "user1",
            &[
                "sh",
                "-c",
                "md5sum -c /opt/big.md5 && cat /workspace/kept/order"
            ]
        ),
        "/opt/big: OK\noncreate\nupdate\npostcreate\npoststart\n"
    );
}
