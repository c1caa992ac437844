//! Finding, parsing and modelling devcontainer.json, against real directories and real
//! git repositories.

use std::path::Path;
use std::process::Command;

use hearth_devcontainer::{
    find, load, Command as Cmd, DirRepo, Error, ForwardPort, GitRepo, LifecycleStep, Repo,
};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn none(_: &str) -> Option<String> {
    None
}

fn load_text(text: &str) -> Result<hearth_devcontainer::Loaded, Error> {
    let found = hearth_devcontainer::Found {
        path: ".devcontainer/devcontainer.json".into(),
        text: text.into(),
    };
    load(&found, Some("/src/proj"), "/workspace/proj", &none)
}

#[test]
fn jsonc_comments_and_trailing_commas() {
    let l = load_text(
        "// top\n{\n  /* block */ \"image\": \"debian\", // tail\n  \"forwardPorts\": [3000, \"db:5432\",],\n}\n",
    )
    .unwrap();
    assert_eq!(l.config.image.as_deref(), Some("debian"));
    assert_eq!(
        l.config.forward_ports,
        vec![
            ForwardPort::Port(3000),
            ForwardPort::Remote {
                host: "db".into(),
                port: 5432
            }
        ]
    );
    // Another host's port cannot be proxied: kept in the model, warned about.
    let w: Vec<String> = l.config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            ".devcontainer/devcontainer.json:4:26: forwardPorts \"db:5432\" is not forwarded"
        ),
        "{w:?}"
    );
    assert_eq!(l.config.forwarded_ports(), vec![3000]);
}

#[test]
fn ports_attributes_match_ports_and_ranges() {
    let l = load_text(
        r#"{
  "image": "x",
  "forwardPorts": [3000, "localhost:8080", 3000],
  "portsAttributes": {
    "3000": {"label": "web", "protocol": "https"},
    "3000-3010": {"label": "range", "onAutoForward": "ignore", "requireLocalPort": true},
    "localhost:5000": {"label": "five"},
    "9000-9001": {"onAutoForward": "silent", "elevateIfNeeded": false},
    ".+node.+": {"label": "pattern"}
  },
  "otherPortsAttributes": {"onAutoForward": "ignore", "label": "other"}
}"#,
    )
    .unwrap();
    let c = &l.config;
    assert_eq!(c.forwarded_ports(), vec![3000, 8080]);
    // The exact key first, a range for what it leaves unset.
    let a = c.port_attributes(3000);
    assert_eq!(
        (
            a.label.as_deref(),
            a.protocol.as_deref(),
            a.ignored(),
            a.https()
        ),
        (Some("web"), Some("https"), true, true)
    );
    let a = c.port_attributes(3005);
    assert_eq!(
        (a.label.as_deref(), a.ignored(), a.https()),
        (Some("range"), true, false)
    );
    assert_eq!(c.port_attributes(5000).label.as_deref(), Some("five"));
    assert_eq!(
        c.port_attributes(9001).on_auto_forward.as_deref(),
        Some("silent")
    );
    // Matched by nothing: otherPortsAttributes.
    let a = c.port_attributes(4000);
    assert_eq!((a.label.as_deref(), a.ignored()), (Some("other"), true));
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    for needle in [
        ":6:64: requireLocalPort has no effect",
        ":8:46: elevateIfNeeded has no effect",
        ":9:5: portsAttributes \".+node.+\" is ignored",
    ] {
        assert!(
            w.iter().any(|m| m.contains(needle)),
            "{needle} not in {w:?}"
        );
    }
    assert_eq!(w.len(), 3, "{w:?}");

    // Values outside the spec's enums are errors that point at them.
    let e =
        load_text(r#"{"image": "x", "portsAttributes": {"1": {"protocol": "ftp"}}}"#).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("protocol \"ftp\" must be one of http, https"),
        "{e}"
    );
    let e = load_text(r#"{"image": "x", "otherPortsAttributes": {"onAutoForward": "loud"}}"#)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("onAutoForward \"loud\" must be one of notify, openBrowser"),
        "{e}"
    );
    let e = load_text(r#"{"image": "x", "portsAttributes": {"1": {"requireLocalPort": "yes"}}}"#)
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("requireLocalPort must be true or false"),
        "{e}"
    );
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let e = load_text("{\n  \"image\": \"debian\"\n  \"name\": \"x\"\n}\n").unwrap_err();
    let Error::Syntax {
        file, line, column, ..
    } = &e
    else {
        panic!("{e}");
    };
    assert_eq!(
        (file.as_str(), *line, *column),
        (".devcontainer/devcontainer.json", 2, 20)
    );
    assert!(
        e.to_string()
            .starts_with(".devcontainer/devcontainer.json:2:20: expected comma"),
        "{e}"
    );
}

#[test]
fn json5_extras_are_refused() {
    assert!(matches!(
        load_text("{'image': 'x'}"),
        Err(Error::Syntax { .. })
    ));
    assert!(matches!(
        load_text("{image: \"x\"}"),
        Err(Error::Syntax { .. })
    ));
    assert!(matches!(load_text("[]"), Err(Error::Invalid { .. })));
    assert!(matches!(load_text(""), Err(Error::Invalid { .. })));
}

#[test]
fn wrong_type_names_its_position() {
    let e = load_text("{\n  \"containerEnv\": {\n    \"A\": 1\n  }\n}").unwrap_err();
    assert_eq!(
        e.to_string(),
        ".devcontainer/devcontainer.json:3:10: containerEnv.A must be a string"
    );
}

#[test]
fn unknown_and_unsupported_properties_are_warned_about() {
    let l = load_text(
        "{\n \"image\": \"x\",\n \"frobnicate\": 1,\n \"runArgs\": [\"--gpus\"],\n \"hostRequirements\": {\"gpu\": true, \"cpus\": 2, \"memory\": \"4gb\"}\n}",
    )
    .unwrap();
    let w: Vec<String> = l.config.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.contains(
            &".devcontainer/devcontainer.json:3:2: unknown property frobnicate is ignored"
                .to_string()
        ),
        "{w:?}"
    );
    assert!(w.iter().any(|m| m.starts_with(".devcontainer/devcontainer.json:4:2: runArgs is not supported")), "{w:?}");
    assert!(
        w.iter()
            .any(|m| m.contains("hostRequirements.gpu is not supported")),
        "{w:?}"
    );
    assert_eq!(l.config.host_requirements.cpus, Some(2));
    assert_eq!(l.config.host_requirements.memory_bytes, Some(4 << 30));
}

#[test]
fn workspace_folder_is_checked_and_normalised() {
    let folder = |f: &str| {
        load_text(&format!(
            "{{\n  \"image\": \"x\",\n  \"workspaceFolder\": {f:?}\n}}"
        ))
        .map(|l| l.container_workspace_folder)
        .map_err(|e| e.to_string())
    };
    assert_eq!(folder("/src/app/").unwrap(), "/src/app");
    assert_eq!(folder("//src//app").unwrap(), "/src/app");
    assert_eq!(folder("/usr/src/app").unwrap(), "/usr/src/app");
    assert_eq!(
        folder("/workspace/proj/sub").unwrap(),
        "/workspace/proj/sub"
    );
    for (bad, why) in [
        ("src/app", "must be an absolute path"),
        ("/", "is a system directory"),
        ("/proc/self", "is a system directory"),
        ("/etc", "is a system directory"),
        ("/dev/shm/x", "is a system directory"),
        ("/sys", "is a system directory"),
        ("/usr", "is a system directory"),
        ("/home/", "is a system directory"),
        ("/src/../etc", "must not contain . or .."),
        ("/workspace", "holds hearth's clone"),
    ] {
        let e = folder(bad).unwrap_err();
        assert!(
            e.starts_with(&format!(
                ".devcontainer/devcontainer.json:3:22: workspaceFolder {bad:?} {why}"
            )),
            "{bad}: {e}"
        );
    }
}

#[test]
fn customizations_are_kept_and_warned_about() {
    let l = load_text(
        "{\n \"image\": \"x\",\n \"customizations\": {\n  \"vscode\": {\"extensions\": [\"rust-lang.rust-analyzer\"], \"settings\": {\"editor.tabSize\": 2}},\n  \"jetbrains\": {\"backend\": \"IntelliJ\"}\n }\n}",
    )
    .unwrap();
    assert_eq!(l.config.vscode_extensions(), ["rust-lang.rust-analyzer"]);
    assert_eq!(
        l.config.vscode_settings().unwrap()["editor.tabSize"],
        serde_json::json!(2)
    );
    let w: Vec<String> = l.config.warnings.iter().map(ToString::to_string).collect();
    assert!(
        w.contains(&".devcontainer/devcontainer.json:5:3: customizations.jetbrains is not used by hearth and is ignored".to_string()),
        "{w:?}"
    );
    assert!(
        w.iter().any(|m| m.starts_with(".devcontainer/devcontainer.json:4:3: customizations.vscode: hearth installs no editor extensions itself; extensions and settings are shown by hearth inspect")),
        "{w:?}"
    );
    let e = load_text("{\"customizations\": {\"vscode\": {\"extensions\": \"a.b\"}}}").unwrap_err();
    assert_eq!(
        e.to_string(),
        ".devcontainer/devcontainer.json:1:46: customizations.vscode.extensions must be an array of extension ids"
    );
}

#[test]
fn feature_references_and_variables_name_their_position() {
    let e =
        load_text("{\n \"image\": \"x\",\n \"features\": {\n  \"./local\": {}\n }\n}").unwrap_err();
    assert!(
        e.to_string()
            .starts_with(".devcontainer/devcontainer.json:4:3: feature ./local: local features"),
        "{e}"
    );
    let e = load_text("{\n \"image\": \"x\",\n \"features\": {\"ghcr.io/x\": {}}\n}").unwrap_err();
    assert!(
        e.to_string()
            .starts_with(".devcontainer/devcontainer.json:3:15: feature ghcr.io/x: expected"),
        "{e}"
    );
    let e = load_text("{\n \"image\": \"x\",\n \"name\": \"${localEnv}\"\n}").unwrap_err();
    assert_eq!(
        e.to_string(),
        ".devcontainer/devcontainer.json:3:10: '${localEnv}' can not be resolved because no environment variable name is given"
    );
}

#[test]
fn hostile_sizes_and_nesting_are_refused() {
    let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
    let e = load_text(&deep).unwrap_err();
    assert!(e.to_string().contains("nested deeper than 64"), "{e}");
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    assert!(matches!(load_text(&huge), Err(Error::TooLarge { .. })));
    let d = tempfile::tempdir().unwrap();
    write(d.path(), ".devcontainer.json", &huge);
    let repo = DirRepo::open(d.path()).unwrap();
    assert!(matches!(find(&repo, None), Err(Error::TooLarge { .. })));
}

#[test]
fn lifecycle_forms() {
    let l = load_text(
        r#"{
  "onCreateCommand": "echo a && echo b",
  "updateContentCommand": ["make", "deps"],
  "postCreateCommand": {"one": "echo 1", "two": ["echo", "2"]},
  "postStartCommand": "",
  "postAttachCommand": ["true"],
  "waitFor": "postCreateCommand"
}"#,
    )
    .unwrap();
    let lc = &l.config.lifecycle;
    assert_eq!(
        lc.get(LifecycleStep::OnCreate),
        Some(&Cmd::Shell("echo a && echo b".into()))
    );
    assert_eq!(
        lc.get(LifecycleStep::UpdateContent),
        Some(&Cmd::Exec(vec!["make".into(), "deps".into()]))
    );
    assert_eq!(
        lc.get(LifecycleStep::PostCreate),
        Some(&Cmd::Parallel(vec![
            ("one".into(), Cmd::Shell("echo 1".into())),
            ("two".into(), Cmd::Exec(vec!["echo".into(), "2".into()])),
        ]))
    );
    assert_eq!(lc.get(LifecycleStep::PostStart), None);
    assert_eq!(lc.wait_for(), LifecycleStep::PostCreate);
    let e = load_text(r#"{"postCreateCommand": {"a": {"b": "c"}}}"#).unwrap_err();
    assert!(
        e.to_string().contains("1:29: a command in the object form"),
        "{e}"
    );
}

#[test]
fn build_paths_stay_in_the_repository() {
    let l = load_text(r#"{"build": {"dockerfile": "Dockerfile", "context": ".."}}"#).unwrap();
    let b = l.config.build.unwrap();
    assert_eq!(
        (b.dockerfile.as_str(), b.context.as_str()),
        (".devcontainer/Dockerfile", "")
    );
    for bad in [
        r#"{"build": {"dockerfile": "../../Dockerfile"}}"#,
        r#"{"build": {"dockerfile": "/etc/passwd"}}"#,
        r#"{"build": {"dockerfile": "D", "context": "../.."}}"#,
    ] {
        let e = load_text(bad).unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{bad}: {e}");
    }
}

#[test]
fn find_in_a_directory() {
    let d = tempfile::tempdir().unwrap();
    let repo = DirRepo::open(d.path()).unwrap();
    assert_eq!(find(&repo, None).unwrap(), None);
    write(
        d.path(),
        ".devcontainer/py/devcontainer.json",
        "{\"name\": \"py\"}",
    );
    assert_eq!(
        find(&repo, None).unwrap().unwrap().path,
        ".devcontainer/py/devcontainer.json"
    );
    write(
        d.path(),
        ".devcontainer/go/devcontainer.json",
        "{\"name\": \"go\"}",
    );
    let e = find(&repo, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the repository has several devcontainer configurations (go, py): choose one with --config NAME"
    );
    assert_eq!(
        find(&repo, Some("go")).unwrap().unwrap().text,
        "{\"name\": \"go\"}"
    );
    let e = find(&repo, Some("rust")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no devcontainer configuration named rust (the repository has: go, py)"
    );
    assert!(find(&repo, Some("..")).is_err());
    write(d.path(), ".devcontainer.json", "{}");
    assert_eq!(
        find(&repo, None).unwrap().unwrap().path,
        ".devcontainer.json"
    );
    write(d.path(), ".devcontainer/devcontainer.json", "{}");
    assert_eq!(
        find(&repo, None).unwrap().unwrap().path,
        ".devcontainer/devcontainer.json"
    );
}

#[test]
fn directory_symlinks_out_of_the_repository_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.json", "{\"image\": \"stolen\"}");
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.json"),
        d.path().join(".devcontainer.json"),
    )
    .unwrap();
    let repo = DirRepo::open(d.path()).unwrap();
    let e = find(&repo, None).unwrap_err();
    assert!(
        e.to_string().contains("resolves outside the repository"),
        "{e}"
    );
    std::fs::create_dir(d.path().join(".devcontainer")).unwrap();
    std::os::unix::fs::symlink("../../x", d.path().join(".devcontainer/devcontainer.json"))
        .unwrap();
    assert!(find(&repo, None).is_err());
    // Inside is fine.
    write(d.path(), "cfg/real.json", "{\"image\": \"ok\"}");
    std::fs::remove_file(d.path().join(".devcontainer/devcontainer.json")).unwrap();
    std::os::unix::fs::symlink(
        "../cfg/real.json",
        d.path().join(".devcontainer/devcontainer.json"),
    )
    .unwrap();
    assert_eq!(
        find(&repo, None).unwrap().unwrap().text,
        "{\"image\": \"ok\"}"
    );
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

fn git_cmd() -> Box<dyn Fn() -> Command + Send + Sync> {
    Box::new(|| {
        let mut c = Command::new("git");
        c.env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        c
    })
}

#[test]
fn git_tree_reading_follows_symlinks_only_inside() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    git(s, &["init", "-q"]);
    write(s, "cfg/a.json", "{\"image\": \"a\"}");
    write(
        s,
        ".devcontainer/py/devcontainer.json",
        "{\"image\": \"py\"}",
    );
    std::fs::create_dir_all(s.join(".devcontainer/rs")).unwrap();
    std::os::unix::fs::symlink(
        "../../cfg/a.json",
        s.join(".devcontainer/rs/devcontainer.json"),
    )
    .unwrap();
    std::fs::create_dir_all(s.join(".devcontainer/esc")).unwrap();
    std::os::unix::fs::symlink(
        "../../../etc/passwd",
        s.join(".devcontainer/esc/devcontainer.json"),
    )
    .unwrap();
    std::fs::create_dir_all(s.join(".devcontainer/abs")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.join(".devcontainer/abs/devcontainer.json"))
        .unwrap();
    git(s, &["add", "-A"]);
    git(s, &["commit", "-qm", "x"]);
    // A later working-tree change is not what the commit holds.
    write(
        s,
        ".devcontainer/py/devcontainer.json",
        "{\"image\": \"dirty\"}",
    );

    let dest = tempfile::tempdir().unwrap();
    let repo =
        GitRepo::clone_tip(s.to_str().unwrap(), &dest.path().join("r.git"), git_cmd()).unwrap();
    assert_eq!(repo.commit().len(), 40);
    assert_eq!(
        repo.subdirs(".devcontainer").unwrap(),
        vec!["abs", "esc", "py", "rs"]
    );
    assert_eq!(
        find(&repo, Some("py")).unwrap().unwrap().text,
        "{\"image\": \"py\"}"
    );
    assert_eq!(
        find(&repo, Some("rs")).unwrap().unwrap().text,
        "{\"image\": \"a\"}"
    );
    for name in ["esc", "abs"] {
        let e = find(&repo, Some(name)).unwrap_err();
        assert!(
            e.to_string().contains("outside the repository"),
            "{name}: {e}"
        );
    }
    // Without a choice: four candidates, of which two are unreadable; the listing names
    // only readable ones.
    let e = find(&repo, None).unwrap_err();
    assert!(e.to_string().contains("(py, rs)"), "{e}");
    assert_eq!(repo.read("nope/x", 10).unwrap(), None);
    assert!(matches!(
        repo.read("cfg/a.json", 3),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn devcontainer_id_matches_the_cli() {
    // Expected value printed by the CLI's own algorithm (devcontainerIdForLabels) under
    // node for these labels.
    let id = hearth_devcontainer::vars::devcontainer_id(&hearth_devcontainer::vars::id_labels(
        "/workspace/proj",
        "/workspace/proj/.devcontainer/devcontainer.json",
    ));
    assert_eq!(id, EXPECTED_ID);
}

const EXPECTED_ID: &str = "0mjsvpce2e3p31nqj7qj7ma7b78gjpsugvr32g0da5l7b3df0tjp";
