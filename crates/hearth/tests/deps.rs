//! The dependency rule between Hearth's own crates (ARCHITECTURE.md, "Allowed dependencies"),
//! checked against `cargo metadata`: a crate may depend only on the Hearth crates its row
//! names. Dev-dependencies are not checked (tests may reach anything below them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Every Hearth crate and the Hearth crates it may depend on. Keep in step with
/// ARCHITECTURE.md.
const ALLOWED: &[(&str, &[&str])] = &[
    // The binary: CLI verbs over the API crate, `hearth server` links the server and node.
    (
        "hearth",
        &[
            "hearth-api",
            "hearth-server",
            "hearth-node",
            "hearth-link",
            "hearth-proto",
        ],
    ),
    // The control plane: HTTP, the database, the API's wire types; nodes through NodeApi.
    (
        "hearth-server",
        &[
            "hearth-api",
            "hearth-node",
            "hearth-link",
            "hearth-proto",
            "hearth-devcontainer",
        ],
    ),
    // Wire types and the HTTP client: what the CLI (and later other clients) build on.
    ("hearth-api", &["hearth-proto"]),
    // The control plane <-> node wire: NodeApi over one connection the node dials.
    ("hearth-link", &["hearth-node", "hearth-proto"]),
    // The node: the only crate that puts the host crates together.
    (
        "hearth-node",
        &[
            "hearth-image",
            "hearth-runtime",
            "hearth-cgroups",
            "hearth-net",
            "hearth-proto",
            "hearth-snapshot",
            "hearth-disk",
            "hearth-types",
            "hearth-devcontainer",
        ],
    ),
    // The PID-1 agent, a small static binary: the protocol only.
    ("hearth-agent", &["hearth-proto"]),
    // Leaves: each does one host job and depends on no other Hearth crate but the
    // shared value types.
    ("hearth-image", &[]),
    ("hearth-runtime", &[]),
    ("hearth-cgroups", &["hearth-types"]),
    ("hearth-net", &["hearth-types"]),
    ("hearth-snapshot", &[]),
    ("hearth-disk", &[]),
    ("hearth-proto", &[]),
    // devcontainer.json: parse, model, variables; reads repositories, runs only `git`.
    ("hearth-devcontainer", &[]),
    // Values every crate shares (the workspace id), checked once; below the leaves.
    ("hearth-types", &[]),
];

/// Our crates and their non-dev dependencies on workspace members.
fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let packages = meta["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("package name").to_owned();
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|d| members.contains(*d))
                .map(str::to_owned)
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn hearth_crates_depend_only_on_what_the_rule_allows() {
    let graph = workspace_graph();
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(c, deps)| (*c, deps.iter().copied().collect()))
        .collect();
    let mut problems = Vec::new();
    for (krate, deps) in &graph {
        let Some(ok) = allowed.get(krate.as_str()) else {
            problems.push(format!(
                "{krate} is not in the dependency rule: add its row to ALLOWED in \
                 crates/hearth/tests/deps.rs and to ARCHITECTURE.md (\"Allowed dependencies\")"
            ));
            continue;
        };
        for dep in deps {
            if !ok.contains(dep.as_str()) {
                problems.push(format!(
                    "{krate} depends on {dep}, which the rule does not allow (ARCHITECTURE.md, \
                     \"Allowed dependencies\"); move the code, or change the rule in both places"
                ));
            }
        }
    }
    for krate in allowed.keys() {
        if !graph.contains_key(*krate) {
            problems.push(format!(
                "ALLOWED names {krate}, which is not a workspace crate: remove its row here and \
                 in ARCHITECTURE.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rule_has_no_cycles() {
    // A cycle would make the layering meaningless (cargo refuses real ones, but a table
    // that allows one invites it).
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    fn visit<'a>(
        c: &'a str,
        allowed: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
    ) -> Option<String> {
        if path.contains(&c) {
            path.push(c);
            return Some(path.join(" -> "));
        }
        path.push(c);
        for d in allowed.get(c).copied().unwrap_or_default() {
            if let Some(cycle) = visit(d, allowed, path) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    for c in allowed.keys() {
        if let Some(cycle) = visit(c, &allowed, &mut Vec::new()) {
            panic!("the dependency rule allows a cycle: {cycle}");
        }
    }
}
