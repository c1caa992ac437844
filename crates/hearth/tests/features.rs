//! Devcontainer features from a real registry (Debian's `docker-registry` on loopback),
//! published with the reference CLI (`devcontainer features publish` of
//! `@devcontainers/cli`), which is also the oracle: its installation order
//! (`devcontainer features resolve-dependencies`) and the build context it generates
//! (captured from `devcontainer build` by a `docker` that only copies what it is asked to
//! build) against ours. Hostile artifacts are pushed by hand.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::registry::Registry;
use hearth_devcontainer::features::{self, Install};
use hearth_node::features::{plan, FeatureRequest, RegistrySource};
use serde_json::{json, Value};
use sha2::Digest;

/// The reference CLI keeps its scratch files in one place under /tmp: one run at a time.
static CLI: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the reference CLI (`devcontainer`) with `args`.
fn cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let _one = CLI.lock().unwrap_or_else(|p| p.into_inner());
    Command::new("devcontainer")
        .args(args)
        .output()
        .expect("run devcontainer (scripts/install-deps.sh --test installs @devcontainers/cli)")
}

/// Writes each feature (id, devcontainer-feature.json, install.sh) under `dir/src` and
/// publishes them all as `localhost:PORT/hearth/<id>` with the reference CLI.
fn publish(reg: &Registry, dir: &Path, features: &[(&str, Value, &str)]) {
    let src = dir.join("src");
    for (id, meta, install) in features {
        let d = src.join(id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("devcontainer-feature.json"), meta.to_string()).unwrap();
        std::fs::write(d.join("install.sh"), install).unwrap();
    }
    let registry = reg.localhost();
    let out = cli(&[
        "features".as_ref(),
        "publish".as_ref(),
        "-r".as_ref(),
        registry.as_ref(),
        "-n".as_ref(),
        "hearth".as_ref(),
        src.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&src).unwrap();
}

/// A folder holding `.devcontainer/devcontainer.json` with `config`.
fn folder(parent: &Path, name: &str, config: &Value) -> std::path::PathBuf {
    let ws = parent.join(name);
    std::fs::create_dir_all(ws.join(".devcontainer")).unwrap();
    std::fs::write(
        ws.join(".devcontainer/devcontainer.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    ws
}

/// The reference CLI's installation order: (`registry/ns/id@digest`, options).
fn reference_order(ws: &Path) -> Vec<(String, Value)> {
    let out = cli(&[
        "features".as_ref(),
        "resolve-dependencies".as_ref(),
        "--workspace-folder".as_ref(),
        ws.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "resolve-dependencies: {text}");
    // A mermaid graph comes first, then the JSON.
    let json = &text[text.find("\n{").expect("no JSON in the output") + 1..];
    let v: Value = serde_json::from_str(json).unwrap();
    v["installOrder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_string(), e["options"].clone()))
        .collect()
}

/// What the reference CLI writes for a feature build, per feature in RUN order: its
/// `devcontainer-features.env` as a map and the `ENV` lines before its RUN.
#[derive(Debug, PartialEq)]
struct Context {
    builtin: BTreeMap<String, String>,
    features: Vec<(BTreeMap<String, String>, Vec<String>)>,
}

/// `KEY=value` lines, the value unquoted (ours single-quote, the CLI double-quotes).
fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let v = if let Some(s) = v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
                s.replace("'\\''", "'")
            } else {
                v.trim_matches('"').to_string()
            };
            (k.to_string(), v)
        })
        .collect()
}

/// Reads a context (a directory) given its Dockerfile's text: the feature directories in
/// RUN order, each with the ENV lines since the previous RUN.
fn context(dockerfile: &str, read: &dyn Fn(&str) -> String) -> Context {
    let mut features = Vec::new();
    let mut envs = Vec::new();
    for line in dockerfile.lines() {
        if line.starts_with("ENV ") {
            envs.push(line.to_string());
        }
        if let Some(rest) = line.strip_prefix("RUN chmod -R 0755 /tmp/dev-container-features/") {
            let dir = rest.split_whitespace().next().unwrap();
            // Within a feature, the order of its ENV lines is its JSON's key order.
            envs.sort();
            features.push((
                env_map(&read(&format!("{dir}/devcontainer-features.env"))),
                std::mem::take(&mut envs),
            ));
        }
    }
    Context {
        builtin: env_map(&read("devcontainer-features.builtin.env")),
        features,
    }
}

/// The reference CLI's build context for `ws`: `devcontainer build` with a `docker` that
/// answers `inspect` for a root-user image and copies the directory of each `build -f`.
fn reference_context(ws: &Path, scratch: &Path) -> Context {
    let capture = scratch.join("captured");
    let docker = scratch.join("docker");
    std::fs::write(
        &docker,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  buildx) exit 1 ;;\n  version) echo 20.10.0 ;;\n  inspect) echo '[{{\"Id\":\"sha256:00\",\"Config\":{{\"User\":\"\",\"Env\":[],\"Labels\":{{}}}},\"Os\":\"linux\",\"Architecture\":\"amd64\"}}]' ;;\n  build) prev=; for a in \"$@\"; do [ \"$prev\" = -f ] && dir=$(dirname \"$a\"); prev=$a; done\n         cp -r \"$dir\" {}/ ;;\nesac\nexit 0\n",
            capture.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&capture).unwrap();
    let out = cli(&[
        "build".as_ref(),
        "--workspace-folder".as_ref(),
        ws.as_os_str(),
        "--docker-path".as_ref(),
        docker.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "devcontainer build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both builds copy the same directory: the features' content and Dockerfile.extended.
    let dir = std::fs::read_dir(&capture)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("Dockerfile.extended").is_file())
        .expect("no Dockerfile.extended captured");
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile.extended")).unwrap();
    context(&dockerfile, &|p| {
        std::fs::read_to_string(dir.join(p)).unwrap_or_default()
    })
}

/// Ours: the same folder's configuration, resolved through the registry.
fn ours(ws: &Path) -> (Vec<Install>, Context) {
    let text = std::fs::read_to_string(ws.join(".devcontainer/devcontainer.json")).unwrap();
    let found = hearth_devcontainer::Found {
        path: ".devcontainer/devcontainer.json".into(),
        text,
    };
    let loaded = hearth_devcontainer::load(&found, None, "/workspaces/x", &|_| None).unwrap();
    let installs = features::resolve(
        &loaded.config.features,
        &loaded.config.override_feature_install_order,
        &mut RegistrySource,
    )
    .unwrap();
    let req = FeatureRequest {
        features: loaded.config.features.clone(),
        override_order: loaded.config.override_feature_install_order.clone(),
        base_image: "debian".into(),
        container_user: None,
        remote_user: None,
    };
    let p = plan(&req, None, &mut RegistrySource).unwrap();
    assert_eq!(
        p.installs,
        installs.iter().map(Install::canonical).collect::<Vec<_>>()
    );
    let files = untar(&p.context);
    let ctx = context(&p.dockerfile, &|path| {
        String::from_utf8(files.get(path).cloned().unwrap_or_default()).unwrap()
    });
    (installs, ctx)
}

fn untar(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(bytes).entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
    }
    out
}

/// The features every case draws from.
fn catalogue(reg: &Registry) -> Vec<(&'static str, Value, &'static str)> {
    let r = reg.localhost();
    vec![
        (
            "a",
            json!({"id": "a", "version": "1.0.0", "name": "A",
                   "options": {"greeting": {"type": "string", "default": "hi"},
                               "loud": {"type": "boolean", "default": false}},
                   "containerEnv": {"A_HOME": "/opt/a", "PATH": "/opt/a/bin:${PATH}"}}),
            "#!/bin/sh\necho \"a $GREETING $LOUD\" >> /features.log\n",
        ),
        (
            "b",
            json!({"id": "b", "version": "2.1.0", "name": "B",
                   "dependsOn": {format!("{r}/hearth/a:1"): {"greeting": "from-b"}},
                   "postCreateCommand": "echo b-postcreate $A_HOME >> /features.log"}),
            "#!/bin/sh\necho b >> /features.log\n",
        ),
        (
            "c",
            json!({"id": "c", "version": "1.0.0", "name": "C",
                   "installsAfter": [format!("{r}/hearth/b")]}),
            "#!/bin/sh\necho c >> /features.log\n",
        ),
        (
            "d",
            json!({"id": "d", "version": "1.0.0", "name": "D",
                   "options": {"version": {"type": "string", "enum": ["1.2", "latest"], "default": "latest"},
                               "node-flavor": {"type": "string", "proposals": ["lts"], "default": "lts"}}}),
            "#!/bin/sh\necho \"d $VERSION $NODE_FLAVOR\" >> /features.log\n",
        ),
        (
            "e",
            json!({"id": "e", "version": "3.0.0", "name": "E"}),
            "#!/bin/sh\necho e >> /features.log\n",
        ),
    ]
}

#[test]
fn order_options_and_context_match_the_reference_cli() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    publish(&reg, dir.path(), &catalogue(&reg));
    let r = reg.localhost();
    let cases = [
        json!({"image": "debian", "features": {
            format!("{r}/hearth/b:2"): {},
            format!("{r}/hearth/a:1"): {"loud": true},
            format!("{r}/hearth/c"): {},
            format!("{r}/hearth/d:1"): "1.2",
            format!("{r}/hearth/e:3.0.0"): {},
        }}),
        json!({"image": "debian", "features": {
            format!("{r}/hearth/b:2"): {},
            format!("{r}/hearth/c:latest"): {},
            format!("{r}/hearth/e"): {},
        }, "overrideFeatureInstallOrder": [format!("{r}/hearth/e"), format!("{r}/hearth/c")]}),
        // installsAfter b, which nobody installs: no constraint.
        json!({"image": "debian", "features": {
            format!("{r}/hearth/c:1"): {},
            format!("{r}/hearth/a:1.0"): {"greeting": "it's $(not run)"},
        }}),
    ];
    for (i, case) in cases.iter().enumerate() {
        let ws = folder(dir.path(), &format!("ws{i}"), case);
        let expected = reference_order(&ws);
        let (installs, ctx) = ours(&ws);
        let got: Vec<(String, Value)> = installs
            .iter()
            .map(|i| (i.canonical(), i.options.clone()))
            .collect();
        assert_eq!(got, expected, "order of case {i}");
        let scratch = dir.path().join(format!("scratch{i}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let reference = reference_context(&ws, &scratch);
        assert_eq!(
            reference.features.len(),
            expected.len(),
            "case {i}: {reference:?}"
        );
        assert_eq!(ctx, reference, "context of case {i}");
        if i == 0 {
            // The spec's own example: defaults, the string shorthand for `version`, names
            // upper-cased with '-' as '_'.
            let d = &ctx.features[installs.iter().position(|f| f.oci.id == "d").unwrap()].0;
            let want: BTreeMap<String, String> = [("VERSION", "1.2"), ("NODE_FLAVOR", "lts")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
            assert_eq!(d, &want);
            assert_eq!(ctx.builtin["_REMOTE_USER"], "root");
        }
    }
}

/// Pushes a feature-shaped artifact by hand: `config_type` config, one layer `layer`.
fn push_raw(reg: &Registry, repo: &str, tag: &str, config_type: &str, layer: &[u8]) {
    let base = format!("http://{}/v2/{repo}", reg.addr());
    let blob = |data: &[u8]| -> (String, usize) {
        let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(data)));
        let resp = ureq::post(&format!("{base}/blobs/uploads/"))
            .call()
            .unwrap();
        let loc = resp.header("location").unwrap().to_string();
        let url = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", reg.addr())
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        ureq::put(&format!("{url}{sep}digest={digest}"))
            .send_bytes(data)
            .unwrap();
        (digest, data.len())
    };
    let (cd, cs) = blob(b"{}");
    let (ld, ls) = blob(layer);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_type, "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.devcontainers.layer.v1+tar", "digest": ld, "size": ls}],
    });
    ureq::put(&format!("{base}/manifests/{tag}"))
        .set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send_string(&manifest.to_string())
        .unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A tar whose entries have raw names (the tar crate's builder refuses `..`).
fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_and_refused_features_fail_with_their_name() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let meta = br#"{"id":"x","version":"1.0.0","name":"X"}"#;
    push_raw(
        &reg,
        "hearth/escape",
        "1",
        "application/vnd.devcontainers",
        &raw_tar(&[
            ("devcontainer-feature.json", meta),
            ("install.sh", b"#!/bin/sh\n"),
            ("../../../../tmp/hearth-feature-escape", b"pwned"),
        ]),
    );
    push_raw(
        &reg,
        "hearth/image",
        "1",
        "application/vnd.oci.image.config.v1+json",
        &raw_tar(&[("devcontainer-feature.json", meta), ("install.sh", b"")]),
    );
    publish(
        &reg,
        dir.path(),
        &[(
            "dind",
            json!({"id": "dind", "version": "1.0.0", "name": "DinD", "privileged": true,
                   "mounts": [{"source": "x", "target": "/var/lib/docker", "type": "volume"}]}),
            "#!/bin/sh\n",
        )],
    );
    let a = reg.addr();
    let l = reg.localhost();
    for (feature, says) in [
        (format!("{a}/hearth/escape:1"), "climbs out of the feature"),
        (format!("{a}/hearth/image:1"), "not a devcontainer feature"),
        (
            format!("{l}/hearth/dind:1"),
            "sets privileged, which hearth refuses",
        ),
        (format!("{a}/hearth/missing:1"), "404"),
    ] {
        let req = FeatureRequest {
            features: [(feature.clone(), json!({}))].into(),
            base_image: "debian".into(),
            ..FeatureRequest::default()
        };
        let e = plan(&req, None, &mut RegistrySource)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{feature}: {e}");
        assert!(e.contains(&format!("feature {feature}")), "{feature}: {e}");
    }
    assert!(!Path::new("/tmp/hearth-feature-escape").exists());
}

/// A git repository `parent/name` holding a devcontainer.json with `config` and `files`.
fn repo(parent: &Path, name: &str, config: &Value, files: &[(&str, &str)]) -> std::path::PathBuf {
    let json = serde_json::to_string_pretty(config).unwrap();
    let mut all = vec![(".devcontainer/devcontainer.json", json.as_str())];
    all.extend_from_slice(files);
    common::repo_with(parent, name, &all)
}

#[test]
fn up_installs_features_in_dependency_order_and_runs_their_commands() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    publish(&reg, dir.path(), &catalogue(&reg));
    let srv = common::TestServer::start();
    srv.load_busybox();
    srv.load_builder();
    let r = reg.localhost();
    // b depends on a (with an option); the user asks only for b and d.
    let config = json!({
        "image": "busybox",
        "features": {format!("{r}/hearth/b:2"): {}, format!("{r}/hearth/d:1"): {"version": "1.2"}},
        "postCreateCommand": "echo user-postcreate >> /features.log",
    });
    let src = tempfile::tempdir().unwrap();
    let proj = repo(src.path(), "proj", &config, &[]);
    let out = srv.hearth(&["up", proj.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "up failed: {err}\n{}",
        srv.server_log()
    );
    assert!(err.contains("installing 3 feature(s) on busybox"), "{err}");
    assert!(err.contains("GREETING=from-b"), "{err}");
    // Installed in rounds: a and d (sorted by name), then b, which depends on a; then
    // the feature's postCreateCommand before the configuration's.
    assert_eq!(
        srv.exec("proj", &["cat", "/features.log"]),
        "a from-b false\nd 1.2 lts\nb\nb-postcreate /opt/a\nuser-postcreate\n"
    );
    // containerEnv is the image's environment, ${PATH} expanded by the builder.
    let env = srv.exec("proj", &["env"]);
    assert!(env.lines().any(|l| l == "A_HOME=/opt/a"), "{env}");
    assert!(
        env.lines().any(|l| l.starts_with("PATH=/opt/a/bin:/")),
        "{env}"
    );

    // The same features on the same image: built once.
    let out = srv.hearth(&["up", proj.to_str().unwrap(), "--name", "again"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "second up failed: {err}");
    assert!(err.contains("features already built on busybox"), "{err}");
    assert_eq!(
        srv.exec("again", &["cat", "/features.log"]),
        "a from-b false\nd 1.2 lts\nb\nb-postcreate /opt/a\nuser-postcreate\n"
    );
}

#[test]
fn up_refuses_a_feature_it_cannot_install_before_making_anything() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    publish(
        &reg,
        dir.path(),
        &[(
            "dind",
            json!({"id": "dind", "version": "1.0.0", "name": "DinD", "capAdd": ["SYS_ADMIN"]}),
            "#!/bin/sh\n",
        )],
    );
    let srv = common::TestServer::start();
    srv.load_busybox();
    let src = tempfile::tempdir().unwrap();
    for (name, feature, says) in [
        ("local", "./my-feature".to_string(), "local features"),
        (
            "dind",
            format!("{}/hearth/dind:1", reg.localhost()),
            "sets capAdd, which hearth refuses",
        ),
    ] {
        let proj = repo(
            src.path(),
            name,
            &json!({"image": "busybox", "features": {feature.clone(): {}}}),
            &[],
        );
        let out = srv.hearth(&["up", proj.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{name}: up succeeded");
        assert!(err.contains(says), "{name}: {err}");
        assert!(err.contains(&format!("feature {feature}")), "{name}: {err}");
        let ls = srv.ok(&["ls"]);
        assert!(!ls.contains(name), "{name} left a workspace: {ls}");
    }
}

#[test]
fn up_installs_features_on_a_dockerfile_built_image_with_every_lifecycle_command() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    publish(&reg, dir.path(), &catalogue(&reg));
    let srv = common::TestServer::start();
    srv.load_busybox();
    srv.load_builder();
    let src = tempfile::tempdir().unwrap();
    let log = |step: &str| format!("echo {step} >> /features.log");
    let proj = repo(
        src.path(),
        "built",
        &json!({
            "build": {"dockerfile": "Dockerfile"},
            "features": {format!("{}/hearth/b:2", reg.localhost()): {}},
            "onCreateCommand": log("oncreate"),
            "updateContentCommand": log("update"),
            "postCreateCommand": log("postcreate"),
            "postStartCommand": log("poststart"),
            "postAttachCommand": log("postattach"),
        }),
        &[(
            ".devcontainer/Dockerfile",
            "FROM busybox\nRUN echo built > /etc/built\n",
        )],
    );
    let out = srv.hearth(&["up", proj.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "up failed: {err}\n{}",
        srv.server_log()
    );
    // The features went on the image the Dockerfile built.
    assert!(
        err.contains("installing 2 feature(s) on devcontainer/built:"),
        "{err}"
    );
    assert_eq!(srv.exec("built", &["cat", "/etc/built"]), "built\n");
    assert_eq!(
        srv.exec("built", &["cat", "/features.log"]),
        "a from-b false\nb\noncreate\nupdate\nb-postcreate /opt/a\npostcreate\npoststart\npostattach\n"
    );
}

/// A prebuild of a configuration with a Dockerfile and a feature: `up` starts on the
/// prebuild's image (no build, no feature install) with the feature's lifecycle commands;
/// a commit that changes the Dockerfile does not match, and `up` builds again.
#[test]
fn up_starts_from_a_prebuild_of_a_dockerfile_and_feature_config() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    publish(
        &reg,
        dir.path(),
        &[(
            "tool",
            json!({"id": "tool", "version": "1.0.0", "name": "Tool",
                   "postCreateCommand": "echo tool-postcreate >> /features.log"}),
            "#!/bin/sh\necho tool >> /features.log\n",
        )],
    );
    let srv = common::TestServer::start();
    srv.load_busybox();
    srv.load_builder();
    let src = tempfile::tempdir().unwrap();
    let log = |step: &str| format!("echo {step}-ran; echo {step} >> /features.log");
    let proj = repo(
        src.path(),
        "pbuilt",
        &json!({
            "build": {"dockerfile": "Dockerfile"},
            "features": {format!("{}/hearth/tool:1", reg.localhost()): {}},
            "onCreateCommand": log("oncreate"),
            "updateContentCommand": log("update"),
            "postCreateCommand": log("postcreate"),
        }),
        &[(
            ".devcontainer/Dockerfile",
            "FROM busybox\nRUN echo v1 > /etc/built\n",
        )],
    );
    let r = proj.to_str().unwrap();

    let out = srv.hearth(&["prebuild", r]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    assert!(err.contains("building devcontainer/prebuild-"), "{err}");
    assert!(err.contains("installing 1 feature(s)"), "{err}");
    assert!(err.contains("onCreateCommand: oncreate-ran"), "{err}");
    let list: Vec<Value> = serde_json::from_str(&srv.ok(&["prebuilds", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let snap = list[0]["snapshot"].as_str().unwrap().to_string();
    let image = list[0]["image"].as_str().unwrap().to_string();

    // From the prebuild: nothing built or installed, the prebuild's files and image, the
    // feature's postCreateCommand before the configuration's.
    let out = srv.hearth(&["up", r]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    assert!(
        err.contains(&format!("starting from prebuild {snap}")),
        "{err}"
    );
    assert!(err.contains("using the prebuild's image"), "{err}");
    for not in [
        "building ",
        "feature(s)",
        "oncreate-ran",
        "update-ran",
        "cloning",
    ] {
        assert!(!err.contains(not), "{not} in:\n{err}");
    }
    assert_eq!(srv.exec("pbuilt", &["cat", "/etc/built"]), "v1\n");
    assert_eq!(
        srv.exec("pbuilt", &["cat", "/features.log"]),
        "tool\noncreate\nupdate\ntool-postcreate\npostcreate\n"
    );
    let ws: Value = serde_json::from_str(&srv.ok(&["inspect", "pbuilt", "--json"])).unwrap();
    assert_eq!(ws["workspace"]["image"], image.as_str(), "{ws}");
    // The prebuild keeps its image.
    let e = srv.fails(&["image", "rm", &image]);
    assert!(e.contains("is used by a workspace"), "{e}");
    srv.ok(&["rm", "pbuilt"]);
    let e = srv.fails(&["image", "rm", &image]);
    assert!(e.contains(&format!("kept for prebuild(s) {snap}")), "{e}");

    // A changed Dockerfile: no match, built again.
    common::commit_files(
        &proj,
        &[(
            ".devcontainer/Dockerfile",
            "FROM busybox\nRUN echo v2 > /etc/built\n",
        )],
    );
    let out = srv.hearth(&["up", r, "--name", "changed"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}\n{}", srv.server_log());
    assert!(!err.contains("starting from prebuild"), "{err}");
    assert!(err.contains("building devcontainer/changed:"), "{err}");
    assert!(err.contains("onCreateCommand: oncreate-ran"), "{err}");
    assert_eq!(srv.exec("changed", &["cat", "/etc/built"]), "v2\n");
}
