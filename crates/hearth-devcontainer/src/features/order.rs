//! The installation order of the spec ("Dependency installation order algorithm") as the
//! reference CLI computes it: a worklist of the user's features and, recursively, their
//! `dependsOn` (equal features, i.e. same manifest digest and options, once); soft edges
//! from `installsAfter` to features that are in the list; then rounds, each taking the
//! features whose dependencies are installed, keeping those of the highest
//! `overrideFeatureInstallOrder` priority, sorted by the spec's stable order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::{unpack, FeatureMeta, FeatureSource, File, OciRef};
use crate::Error;

/// Most features (the user's and their dependencies) one configuration may install.
const MAX_FEATURES: usize = 100;

/// A feature to install, in order.
#[derive(Debug, Clone)]
pub struct Install {
    /// The reference as written in `features` or a `dependsOn`.
    pub user_id: String,
    pub oci: OciRef,
    /// `sha256:<hex>` of its manifest.
    pub manifest_digest: String,
    /// Its options as written (not yet defaulted).
    pub options: Value,
    pub meta: Arc<FeatureMeta>,
    pub files: Arc<Vec<File>>,
}

impl Install {
    /// `registry/namespace/id@sha256:...`, as the reference CLI reports it.
    pub fn canonical(&self) -> String {
        format!("{}@{}", self.oci.resource(), self.manifest_digest)
    }

    /// `[currentId or id, legacyIds...]`: the names this feature answers to.
    fn aliases(&self) -> Vec<&str> {
        let first = self.meta.current_id.as_deref().unwrap_or(&self.meta.id);
        std::iter::once(first)
            .chain(self.meta.legacy_ids.iter().map(String::as_str))
            .collect()
    }
}

struct Node {
    install: Install,
    /// (digest, options) of each `dependsOn` entry.
    deps: Vec<(String, Value)>,
    /// Each `installsAfter` entry: (its reference, its aliases).
    soft: Vec<(OciRef, Vec<String>)>,
    priority: usize,
}

/// A fetched feature: manifest digest, metadata, files.
type Entry = (String, Arc<FeatureMeta>, Arc<Vec<File>>);

/// Fetches each reference once.
struct Cache<'a> {
    source: &'a mut dyn FeatureSource,
    seen: HashMap<String, Entry>,
}

impl Cache<'_> {
    fn get(&mut self, r: &OciRef) -> Result<Entry, Error> {
        let key = r.pull_reference();
        if let Some(hit) = self.seen.get(&key) {
            return Ok(hit.clone());
        }
        let fetched = self.source.fetch(r)?;
        let files = unpack(&key, &fetched.tarball)?;
        let json = files
            .iter()
            .find(|f| f.path == "devcontainer-feature.json")
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .unwrap_or_default();
        let meta = FeatureMeta::parse(&key, &json)?;
        let hit = (fetched.manifest_digest, Arc::new(meta), Arc::new(files));
        self.seen.insert(key, hit.clone());
        Ok(hit)
    }
}

/// The features of `requested` (devcontainer.json's `features`) and their dependencies,
/// fetched through `source` and put in installation order; `override_order` is
/// `overrideFeatureInstallOrder`.
pub fn resolve(
    requested: &BTreeMap<String, Value>,
    override_order: &[String],
    source: &mut dyn FeatureSource,
) -> Result<Vec<Install>, Error> {
    let mut cache = Cache {
        source,
        seen: HashMap::new(),
    };
    let mut queue: VecDeque<(String, Value)> = requested
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut work: Vec<Node> = Vec::new();
    while let Some((user_id, options)) = queue.pop_front() {
        let oci = OciRef::parse(&user_id)?;
        let (digest, meta, files) = cache.get(&oci)?;
        if work.iter().any(|n| {
            n.install.manifest_digest == digest && options_cmp(&n.install.options, &options).is_eq()
        }) {
            continue;
        }
        if work.len() == MAX_FEATURES {
            return Err(Error::Feature {
                feature: user_id,
                message: format!(
                    "more than {MAX_FEATURES} features (with dependencies) to install"
                ),
            });
        }
        let mut deps = Vec::new();
        for (dep_id, dep_opts) in &meta.depends_on {
            let dep = OciRef::parse(dep_id).map_err(|e| Error::Feature {
                feature: user_id.clone(),
                message: format!("dependsOn: {e}"),
            })?;
            let (dep_digest, _, _) = cache.get(&dep)?;
            deps.push((dep_digest, dep_opts.clone()));
            queue.push_back((dep_id.clone(), dep_opts.clone()));
        }
        let mut soft = Vec::new();
        for after in &meta.installs_after {
            let r = OciRef::parse(after).map_err(|e| Error::Feature {
                feature: user_id.clone(),
                message: format!("installsAfter: {e}"),
            })?;
            let (_, after_meta, _) = cache.get(&r)?;
            let aliases = std::iter::once(
                after_meta
                    .current_id
                    .clone()
                    .unwrap_or_else(|| after_meta.id.clone()),
            )
            .chain(after_meta.legacy_ids.iter().cloned())
            .collect();
            soft.push((r, aliases));
        }
        work.push(Node {
            install: Install {
                user_id,
                oci,
                manifest_digest: digest,
                options,
                meta,
                files,
            },
            deps,
            soft,
            priority: 0,
        });
    }

    let n = override_order.len();
    for (i, id) in override_order.iter().enumerate() {
        let r = OciRef::parse(id).map_err(|e| Error::Feature {
            feature: id.clone(),
            message: format!("overrideFeatureInstallOrder: {e}"),
        })?;
        let mut found = false;
        for node in &mut work {
            if node.install.oci.resource() == r.resource() {
                node.priority = node.priority.max(n - i);
                found = true;
            }
        }
        if !found {
            return Err(Error::Feature {
                feature: id.clone(),
                message: "overrideFeatureInstallOrder names it, but it is not among the features to install".into(),
            });
        }
    }

    // Soft dependencies on features nobody installs do not hold anything back.
    let present: Vec<Install> = work.iter().map(|n| n.install.clone()).collect();
    for node in &mut work {
        node.soft
            .retain(|(r, aliases)| present.iter().any(|p| satisfies_soft(p, r, aliases)));
    }

    let mut order: Vec<Install> = Vec::new();
    while !work.is_empty() {
        let ready: Vec<usize> = (0..work.len())
            .filter(|&i| {
                let node = &work[i];
                node.deps.iter().all(|(d, o)| {
                    order
                        .iter()
                        .any(|p| p.manifest_digest == *d && options_cmp(&p.options, o).is_eq())
                }) && node
                    .soft
                    .iter()
                    .all(|(r, aliases)| order.iter().any(|p| satisfies_soft(p, r, aliases)))
            })
            .collect();
        let Some(top) = ready.iter().map(|&i| work[i].priority).max() else {
            let left: Vec<String> = work.iter().map(|n| n.install.user_id.clone()).collect();
            return Err(Error::Feature {
                feature: left.join(", "),
                message: "no installation order satisfies their dependsOn, installsAfter and overrideFeatureInstallOrder (a cycle?)".into(),
            });
        };
        let mut round: Vec<Node> = Vec::new();
        let mut rest: Vec<Node> = Vec::new();
        for (i, node) in work.into_iter().enumerate() {
            if ready.contains(&i) && node.priority == top {
                round.push(node);
            } else {
                rest.push(node);
            }
        }
        work = rest;
        round.sort_by(|a, b| stable_cmp(&a.install, &b.install));
        order.extend(round.into_iter().map(|n| n.install));
    }
    Ok(order)
}

/// Whether installing `p` meets a soft dependency on `r` (whose feature answers to
/// `aliases` in its namespace).
fn satisfies_soft(p: &Install, r: &OciRef, aliases: &[String]) -> bool {
    let resource = p.oci.resource();
    resource == r.resource()
        || aliases
            .iter()
            .any(|a| format!("{}/{}/{a}", r.registry, r.namespace) == resource)
}

/// The spec's "round stable sort", as the reference CLI orders features of one round.
fn stable_cmp(a: &Install, b: &Install) -> Ordering {
    if a.manifest_digest == b.manifest_digest && options_cmp(&a.options, &b.options).is_eq() {
        return Ordering::Equal;
    }
    let ns = |i: &Install| format!("{}/{}", i.oci.registry, i.oci.namespace);
    let c = collate(&ns(a), &ns(b));
    if c.is_ne() {
        return c;
    }
    let (aa, ba) = (a.aliases(), b.aliases());
    if !aa.iter().any(|x| ba.contains(x)) {
        let c = collate(&a.oci.id, &b.oci.id);
        if c.is_ne() {
            return c;
        }
    }
    if let (Some(ta), Some(tb)) = (&a.oci.tag, &b.oci.tag) {
        if ta != tb {
            return collate(ta, tb);
        }
    }
    options_cmp(&a.options, &b.options)
        .then_with(|| collate(&a.manifest_digest, &b.manifest_digest))
}

/// Options compared as the reference CLI compares them: fewer options first, then by
/// sorted names, then values; strings and booleans (false first) among themselves.
pub(crate) fn options_cmp(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::String(x), Value::String(y)) => collate(x, y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return x.len().cmp(&y.len());
            }
            // serde_json's map iterates in sorted order.
            for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                if ka != kb {
                    return collate(ka, kb);
                }
                let c = match (va, vb) {
                    (Value::String(s), Value::String(t)) => collate(s, t),
                    (Value::Bool(s), Value::Bool(t)) => s.cmp(t),
                    _ => Ordering::Equal,
                };
                if c.is_ne() {
                    return c;
                }
            }
            Ordering::Equal
        }
        _ => js_type(a).cmp(js_type(b)),
    }
}

/// JavaScript's `typeof`, whose names order mixed kinds.
fn js_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Null | Value::Array(_) | Value::Object(_) => "object",
    }
}

/// The ASCII punctuation and symbols in the order of the Unicode root collation, which
/// JavaScript's `localeCompare` (ICU) uses; they sort before digits, digits before
/// letters.
const PUNCTUATION: &str = "_-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$";

/// `localeCompare` of ICU's root locale for the strings feature references are made of:
/// first ignoring case (punctuation < digits < letters), then lowercase before uppercase.
/// Characters beyond ASCII sort after it, by code point.
pub(crate) fn collate(a: &str, b: &str) -> Ordering {
    fn primary(c: char) -> (u8, u32) {
        if c.is_whitespace() || c.is_control() {
            (0, c as u32)
        } else if let Some(i) = PUNCTUATION.find(c) {
            (1, i as u32)
        } else if c.is_ascii_digit() {
            (2, c as u32)
        } else if c.is_ascii_alphabetic() {
            (3, c.to_ascii_lowercase() as u32)
        } else {
            (4, c as u32)
        }
    }
    let p = a.chars().map(primary).cmp(b.chars().map(primary));
    p.then_with(|| {
        a.chars()
            .map(|c| c.is_ascii_uppercase())
            .cmp(b.chars().map(|c| c.is_ascii_uppercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Features in memory: reference -> (digest, devcontainer-feature.json).
    struct Registry(HashMap<String, (String, String)>, Vec<String>);

    impl FeatureSource for Registry {
        fn fetch(&mut self, r: &OciRef) -> Result<super::super::Fetched, Error> {
            self.1.push(r.pull_reference());
            let (digest, json) = self
                .0
                .get(&r.pull_reference())
                .ok_or_else(|| Error::Feature {
                    feature: r.to_string(),
                    message: "not found".into(),
                })?;
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in [
                ("devcontainer-feature.json", json.as_bytes()),
                ("install.sh", b"#!/bin/sh\n"),
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                b.append_data(&mut h, name, data).unwrap();
            }
            Ok(super::super::Fetched {
                manifest_digest: digest.clone(),
                tarball: b.into_inner().unwrap(),
            })
        }
    }

    fn registry(features: &[(&str, &str, Value)]) -> Registry {
        Registry(
            features
                .iter()
                .map(|(r, d, meta)| (r.to_string(), (format!("sha256:{d}"), meta.to_string())))
                .collect(),
            Vec::new(),
        )
    }

    fn order(reg: &mut Registry, features: Value, over: &[&str]) -> Result<Vec<String>, Error> {
        let requested: BTreeMap<String, Value> = serde_json::from_value(features).unwrap();
        let over: Vec<String> = over.iter().map(|s| s.to_string()).collect();
        Ok(resolve(&requested, &over, reg)?
            .iter()
            .map(|i| format!("{} {}", i.oci.id, i.options))
            .collect())
    }

    #[test]
    fn depends_on_comes_first_and_options_make_features_distinct() {
        let mut reg = registry(&[
            (
                "r.io/n/a:1",
                "aa",
                json!({"id": "a", "options": {"greeting": {"type": "string", "default": "hi"}}}),
            ),
            (
                "r.io/n/b:2",
                "bb",
                json!({"id": "b", "dependsOn": {"r.io/n/a:1": {"greeting": "from-b"}}}),
            ),
            (
                "r.io/n/c:latest",
                "cc",
                json!({"id": "c", "dependsOn": {"r.io/n/b:2": {}}}),
            ),
        ]);
        let got = order(
            &mut reg,
            json!({"r.io/n/c": {}, "r.io/n/a:1": {"loud": true}}),
            &[],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                r#"a {"greeting":"from-b"}"#,
                r#"a {"loud":true}"#,
                "b {}",
                "c {}"
            ]
        );
        // Each reference is fetched once however often it is named.
        let mut fetched = reg.1.clone();
        fetched.sort();
        fetched.dedup();
        assert_eq!(fetched.len(), reg.1.len());
    }

    #[test]
    fn installs_after_orders_only_features_that_are_installed() {
        let mut reg = registry(&[
            (
                "r.io/n/a:latest",
                "aa",
                json!({"id": "a", "installsAfter": ["r.io/n/z"]}),
            ),
            ("r.io/n/z:latest", "zz", json!({"id": "z"})),
            (
                "r.io/n/m:latest",
                "mm",
                json!({"id": "m", "installsAfter": ["r.io/n/q"]}),
            ),
            ("r.io/n/q:latest", "qq", json!({"id": "q"})),
        ]);
        let got = order(
            &mut reg,
            json!({"r.io/n/a": {}, "r.io/n/z": {}, "r.io/n/m": {}}),
            &[],
        )
        .unwrap();
        // z before a although a sorts first; q is not installed, so m is free.
        assert_eq!(got, ["m {}", "z {}", "a {}"]);
    }

    #[test]
    fn override_pulls_features_forward_but_not_past_dependencies() {
        let mut reg = registry(&[
            ("r.io/n/a:latest", "aa", json!({"id": "a"})),
            ("r.io/n/b:latest", "bb", json!({"id": "b"})),
            (
                "r.io/n/c:latest",
                "cc",
                json!({"id": "c", "dependsOn": {"r.io/n/a": {}}}),
            ),
        ]);
        let all = json!({"r.io/n/a": {}, "r.io/n/b": {}, "r.io/n/c": {}});
        assert_eq!(
            order(&mut reg, all.clone(), &[]).unwrap(),
            ["a {}", "b {}", "c {}"]
        );
        assert_eq!(
            order(&mut reg, all.clone(), &["r.io/n/b"]).unwrap(),
            ["b {}", "a {}", "c {}"]
        );
        // c cannot go before a; of the ready ones (a, b), b has the higher priority.
        assert_eq!(
            order(&mut reg, all.clone(), &["r.io/n/c", "r.io/n/b"]).unwrap(),
            ["b {}", "a {}", "c {}"]
        );
        assert_eq!(
            order(&mut reg, all.clone(), &["r.io/n/c", "r.io/n/a"]).unwrap(),
            ["a {}", "c {}", "b {}"]
        );
        let e = order(&mut reg, all, &["r.io/n/nope"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not among the features"), "{e}");
    }

    #[test]
    fn cycles_and_missing_features_are_errors() {
        let mut reg = registry(&[
            (
                "r.io/n/a:latest",
                "aa",
                json!({"id": "a", "dependsOn": {"r.io/n/b": {}}}),
            ),
            (
                "r.io/n/b:latest",
                "bb",
                json!({"id": "b", "installsAfter": ["r.io/n/a"]}),
            ),
        ]);
        let e = order(&mut reg, json!({"r.io/n/a": {}}), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("a cycle"), "{e}");
        let e = order(&mut reg, json!({"r.io/n/missing": {}}), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.io/n/missing:latest: not found"), "{e}");
    }

    #[test]
    fn collation_puts_punctuation_then_digits_then_letters() {
        // What node's `localeCompare` sorted this list into (node 20, ICU root locale).
        let expected = [
            "_",
            "-",
            ":",
            ".",
            "@",
            "/",
            "~",
            "$",
            "1",
            "a",
            "A",
            "a-b",
            "a:b",
            "a1",
            "ab",
            "b",
            "B",
            "ghcr.io/a",
            "ghcr.io/a_b",
            "ghcr.io/a-b",
            "ghcr.io/a.b",
            "ghcr.io/a1",
            "localhost:5000/x",
            "localhost/x",
            "sha256:0a",
            "sha256:0A",
        ];
        let mut v = expected.to_vec();
        v.reverse();
        v.sort_by(|a, b| collate(a, b));
        assert_eq!(v, expected);
    }

    #[test]
    fn options_order_like_the_reference() {
        assert!(options_cmp(&json!({"b": "x"}), &json!({"a": "x", "b": "y"})).is_lt());
        assert!(options_cmp(&json!({"greeting": "x"}), &json!({"loud": true})).is_lt());
        assert!(options_cmp(&json!({"v": false}), &json!({"v": true})).is_lt());
        assert!(options_cmp(&json!(true), &json!({})).is_lt());
        assert!(options_cmp(&json!({}), &json!("1.0")).is_lt());
    }
}
