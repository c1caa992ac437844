//! Our substitution against the reference implementation: `devcontainer
//! read-configuration` of `@devcontainers/cli` (pinned in scripts/install-deps.sh) on
//! fixture repositories, compared field by field with [`hearth_devcontainer::load`].
//!
//! The CLI looks for an existing container with `docker ps` first; the test hands it a
//! `docker` that lists none, so no engine is needed and nothing it reports comes from
//! image metadata.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The environment both sides see for `${localEnv:...}`.
const ENV: &[(&str, &str)] = &[
    ("HEARTH_T_NAME", "hearth"),
    ("HEARTH_T_EMPTY", ""),
    ("HEARTH_T_COLON", "a:b"),
];

/// (fixture, config path, text, --config NAME or none)
const FIXTURES: &[(&str, &str, &str)] = &[
    (
        "all-vars",
        ".devcontainer/devcontainer.json",
        r#"// every variable, in values only
{
  "name": "${localWorkspaceFolderBasename}-${localEnv:HEARTH_T_NAME}",
  "image": "busybox:${localEnv:HEARTH_T_MISSING:latest}",
  "containerEnv": {
    "LOCAL": "${localWorkspaceFolder}",
    "BASE": "${localWorkspaceFolderBasename}",
    "CWF": "${containerWorkspaceFolder}",
    "CWFB": "${containerWorkspaceFolderBasename}",
    "ENV": "${env:HEARTH_T_NAME}",
    "EMPTY": "${localEnv:HEARTH_T_EMPTY:default}",
    "MISSING": "${localEnv:HEARTH_T_MISSING}",
    "DEFAULT": "${localEnv:HEARTH_T_MISSING:fallback}",
    "DEFAULT_COLON": "${localEnv:HEARTH_T_MISSING:x:y}",
    "VALUE_COLON": "${localEnv:HEARTH_T_COLON}",
    "CONTAINER": "${containerEnv:PATH}",
    "ID": "${devcontainerId}",
    "UNKNOWN": "${nope} ${localEnv:HEARTH_T_NAME}",
    "ODD": "$${localEnv:HEARTH_T_NAME} ${ ${}",
    "TWO": "${localEnv:HEARTH_T_NAME}${localEnv:HEARTH_T_NAME}",
    "${localEnv:HEARTH_T_NAME}": "keys stay",
  },
  "remoteEnv": {"PATH": "${containerEnv:PATH}:${containerWorkspaceFolder}/bin", "UNSET": null},
  "forwardPorts": [3000, "db:${localEnv:HEARTH_T_MISSING:5432}"],
  "portsAttributes": {"3000": {"label": "${localWorkspaceFolderBasename} web", "protocol": "https", "onAutoForward": "ignore"}, "9000-9009": {"label": "${localEnv:HEARTH_T_NAME}"}},
  "otherPortsAttributes": {"label": "other ${containerWorkspaceFolderBasename}", "onAutoForward": "silent"},
  "customizations": {"vscode": {"extensions": ["a.${localEnv:HEARTH_T_NAME}"], "n": [1, true, null, {"deep": "${localWorkspaceFolderBasename}"}]}},
}
"#,
    ),
    (
        "workspace-folder",
        ".devcontainer.json",
        r#"{
  "image": "debian",
  "workspaceFolder": "/src/${localWorkspaceFolderBasename}",
  "postCreateCommand": ["ls", "${containerWorkspaceFolder}", "${containerWorkspaceFolderBasename}"],
  "postStartCommand": "cd ${containerWorkspaceFolder} && echo ${localEnv:HEARTH_T_NAME}",
  "onCreateCommand": {"a": "echo ${localWorkspaceFolder}", "b": ["echo", "${containerWorkspaceFolder}"]},
  "mounts": ["source=${localWorkspaceFolder}/cache,target=${containerWorkspaceFolder}/cache,type=bind"],
}
"#,
    ),
    (
        "named",
        ".devcontainer/py/devcontainer.json",
        r#"{
  "image": "python",
  "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"V": "${localEnv:HEARTH_T_NAME}"}},
  "hostRequirements": {"cpus": 2, "memory": "4gb"},
  "waitFor": "postCreateCommand",
  "unknownThing": "${localWorkspaceFolderBasename}",
}
"#,
    ),
];

fn cli() -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("devcontainer");
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!(
        "the reference CLI `devcontainer` is not in PATH: install it with \
         `npm install -g @devcontainers/cli@0.89.0` (scripts/install-deps.sh --test does)"
    );
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

/// What the CLI reads: `configuration` without its own bookkeeping, and the workspace
/// folder.
fn reference(cli: &str, dir: &Path, config: &str) -> (Value, String) {
    let fake = dir.parent().unwrap().join("docker");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(cli)
        .arg("read-configuration")
        .arg("--workspace-folder")
        .arg(dir)
        .arg("--config")
        .arg(dir.join(config))
        .arg("--docker-path")
        .arg(&fake)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .envs(ENV.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "devcontainer read-configuration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut conf = v["configuration"].clone();
    conf.as_object_mut().unwrap().remove("configFilePath");
    let folder = v["workspace"]["workspaceFolder"]
        .as_str()
        .unwrap()
        .to_string();
    (conf, folder)
}

/// Every leaf of `v` by JSON pointer.
fn leaves(v: &Value, ptr: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, e) in o {
                leaves(e, format!("{ptr}/{k}"), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, e) in a.iter().enumerate() {
                leaves(e, format!("{ptr}/{i}"), out);
            }
        }
        other => {
            out.insert(ptr, other.clone());
        }
    }
}

#[test]
fn substitution_matches_the_reference_cli() {
    let cli = cli();
    let env: BTreeMap<&str, &str> = ENV.iter().copied().collect();
    let lookup = |k: &str| env.get(k).map(|v| v.to_string());
    for (name, path, text) in FIXTURES {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(format!("proj-{name}"));
        std::fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        std::fs::write(dir.join(path), text).unwrap();
        git(&dir, &["init", "-q"]);
        let (want, want_folder) = reference(&cli, &dir, path);

        let local = dir.to_str().unwrap();
        let found = hearth_devcontainer::Found {
            path: path.to_string(),
            text: text.to_string(),
        };
        let default = format!("/workspaces/proj-{name}");
        let got = hearth_devcontainer::load(&found, Some(local), &default, &lookup)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got.container_workspace_folder, want_folder,
            "{name}: workspace folder"
        );

        let (mut w, mut g) = (BTreeMap::new(), BTreeMap::new());
        leaves(&want, String::new(), &mut w);
        leaves(&got.value, String::new(), &mut g);
        for (ptr, wv) in &w {
            assert_eq!(g.get(ptr), Some(wv), "{name}: {ptr}");
        }
        for ptr in g.keys() {
            assert!(w.contains_key(ptr), "{name}: {ptr} is ours only");
        }
        // Sanity: the comparison saw substituted values, not just copies of the input.
        assert!(w.len() > 5, "{name}: {w:?}");
    }
}

#[test]
fn a_missing_variable_name_fails_like_the_cli() {
    let cli = cli();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    std::fs::create_dir_all(&dir).unwrap();
    let text = r#"{"image": "x", "name": "${localEnv}"}"#;
    std::fs::write(dir.join(".devcontainer.json"), text).unwrap();
    git(&dir, &["init", "-q"]);
    let fake = tmp.path().join("docker");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new(&cli)
        .args(["read-configuration", "--workspace-folder"])
        .arg(&dir)
        .arg("--docker-path")
        .arg(&fake)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the CLI accepted ${{localEnv}}");
    let found = hearth_devcontainer::Found {
        path: ".devcontainer.json".into(),
        text: text.into(),
    };
    let e = hearth_devcontainer::load(&found, None, "/w", &|_| None).unwrap_err();
    assert!(
        e.to_string().contains("no environment variable name"),
        "{e}"
    );
}
