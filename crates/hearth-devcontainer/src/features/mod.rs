//! Dev container features (containers.dev "Features"): references, their
//! `devcontainer-feature.json`, option resolution, the installation order, and the build
//! context that installs them on top of an image the way the reference CLI does (one
//! `RUN` per feature, its `containerEnv` as `ENV` before it).
//!
//! Nothing here touches the network or the filesystem: artifacts come through
//! [`FeatureSource`] (the node implements it with its registry client), tarballs are read
//! in memory into checked [`File`]s, and the build context is a tar in memory, so a
//! hostile feature can name any path it likes and nothing is written anywhere.

mod build;
mod order;
mod reference;
mod unpack;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use build::{env_name, BuildContext};
pub use order::{resolve, Install};
pub use reference::OciRef;
pub use unpack::{unpack, File, MAX_ENTRIES, MAX_UNPACKED_BYTES};

use crate::{Command, Document, Error, Lifecycle, LifecycleStep};

/// Largest feature artifact fetched (its layers, compressed).
pub const MAX_ARTIFACT_BYTES: u64 = 32 << 20;

/// `application/vnd.devcontainers`: the config media type of a feature's manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.devcontainers";

/// Where features come from: a registry (the node's client), fetched by reference.
pub trait FeatureSource {
    /// The artifact `r` names: its manifest digest (`sha256:<hex>`) and its one layer, the
    /// feature's tarball (tar or tgz).
    fn fetch(&mut self, r: &OciRef) -> Result<Fetched, Error>;
}

/// What [`FeatureSource::fetch`] returns.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub manifest_digest: String,
    pub tarball: Vec<u8>,
}

/// One option a feature declares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptionSpec {
    /// `"string"` or `"boolean"`.
    pub kind: String,
    pub default: Option<Value>,
    /// Allowed values (strings), when the feature restricts them.
    #[serde(default)]
    pub allowed: Vec<String>,
}

/// A feature's `devcontainer-feature.json`, the parts Hearth uses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureMeta {
    pub id: String,
    pub version: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub documentation_url: Option<String>,
    pub options: BTreeMap<String, OptionSpec>,
    pub container_env: BTreeMap<String, String>,
    /// Reference -> options, as in devcontainer.json's `features`.
    pub depends_on: BTreeMap<String, Value>,
    pub installs_after: Vec<String>,
    pub legacy_ids: Vec<String>,
    pub current_id: Option<String>,
    pub deprecated: bool,
    /// Lifecycle commands the feature contributes (run before the configuration's own).
    pub lifecycle: Lifecycle,
}

/// Properties that would change how the container runs, which Hearth does not allow, and
/// why; a feature that sets one is refused.
const REFUSED: &[(&str, &str)] = &[
    ("privileged", "workspaces are never privileged"),
    ("capAdd", "workspaces get a fixed capability set"),
    ("securityOpt", "workspaces get a fixed security profile"),
    ("mounts", "hearth does not add mounts to workspaces"),
    ("init", "the hearth agent is always PID 1"),
    (
        "entrypoint",
        "the hearth agent is PID 1 and runs no image entrypoint",
    ),
];

impl FeatureMeta {
    /// Parses `devcontainer-feature.json` (JSONC, like devcontainer.json) of the feature
    /// `feature` (its reference, for messages).
    pub fn parse(feature: &str, text: &str) -> Result<FeatureMeta, Error> {
        let file = format!("{feature}/devcontainer-feature.json");
        let doc = Document::parse(&file, text)?;
        let bad = |ptr: &str, msg: String| doc.invalid(ptr, msg);
        let root = doc
            .value
            .as_object()
            .ok_or_else(|| bad("", "must be an object".into()))?;
        let string = |k: &str| -> Result<Option<String>, Error> {
            match root.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(&format!("/{k}"), format!("{k} must be a string"))),
            }
        };
        let strings = |k: &str| -> Result<Vec<String>, Error> {
            match root.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            bad(&format!("/{k}"), format!("{k} must be an array of strings"))
                        })
                    })
                    .collect(),
                Some(_) => Err(bad(&format!("/{k}"), format!("{k} must be an array"))),
            }
        };
        let mut meta = FeatureMeta {
            id: string("id")?.ok_or_else(|| bad("", "it has no id".into()))?,
            version: string("version")?,
            name: string("name")?,
            description: string("description")?,
            documentation_url: string("documentationURL")?,
            installs_after: strings("installsAfter")?,
            legacy_ids: strings("legacyIds")?,
            current_id: string("currentId")?,
            deprecated: root.get("deprecated").and_then(Value::as_bool) == Some(true),
            ..FeatureMeta::default()
        };
        if let Some(v) = root.get("options") {
            let opts = v
                .as_object()
                .ok_or_else(|| bad("/options", "options must be an object".into()))?;
            for (name, spec) in opts {
                let ptr = format!("/options/{}", crate::parse::escape(name));
                meta.options
                    .insert(name.clone(), option_spec(spec).map_err(|m| bad(&ptr, m))?);
            }
        }
        if let Some(v) = root.get("containerEnv") {
            let env = v
                .as_object()
                .ok_or_else(|| bad("/containerEnv", "containerEnv must be an object".into()))?;
            for (k, e) in env {
                let ptr = format!("/containerEnv/{}", crate::parse::escape(k));
                let e = e
                    .as_str()
                    .ok_or_else(|| bad(&ptr, format!("containerEnv.{k} must be a string")))?;
                meta.container_env.insert(k.clone(), e.to_string());
            }
        }
        if let Some(v) = root.get("dependsOn") {
            let deps = v
                .as_object()
                .ok_or_else(|| bad("/dependsOn", "dependsOn must be an object".into()))?;
            for (k, opts) in deps {
                let ptr = format!("/dependsOn/{}", crate::parse::escape(k));
                check_value(opts).map_err(|m| bad(&ptr, m))?;
                meta.depends_on.insert(k.clone(), opts.clone());
            }
        }
        for (prop, why) in REFUSED {
            let set = match root.get(*prop) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(Value::Object(o)) => !o.is_empty(),
                Some(Value::String(s)) => !s.trim().is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(Error::Feature {
                    feature: feature.to_string(),
                    message: format!("it sets {prop}, which hearth refuses: {why}"),
                });
            }
        }
        for step in LifecycleStep::ALL {
            if let Some(v) = root.get(step.property()) {
                let ptr = format!("/{}", step.property());
                if let Some(cmd) = command(v).map_err(|m| bad(&ptr, m))? {
                    meta.lifecycle.commands.insert(step, cmd);
                }
            }
        }
        Ok(meta)
    }

    /// The feature's options as environment variables: every declared default, overridden
    /// by what the user gave (`value` as written in `features` or `dependsOn`: an object of
    /// options, a string for the `version` option, or `true`), names converted as the
    /// spec says. A value the feature's `enum` does not allow, a non-boolean for a
    /// boolean option or a value that is neither string nor boolean is an error;
    /// undeclared options are passed on, as the reference CLI does, and reported.
    pub fn env(&self, feature: &str, value: &Value) -> Result<OptionEnv, Error> {
        let err = |message: String| Error::Feature {
            feature: feature.to_string(),
            message,
        };
        let mut chosen: BTreeMap<String, Value> = self
            .options
            .iter()
            .filter_map(|(k, o)| o.default.clone().map(|d| (k.clone(), d)))
            .collect();
        match value {
            Value::Object(user) => {
                for (k, v) in user {
                    chosen.insert(k.clone(), v.clone());
                }
            }
            Value::String(s) if self.options.contains_key("version") => {
                chosen.insert("version".into(), Value::String(s.clone()));
            }
            Value::String(_) | Value::Bool(_) | Value::Null => {}
            other => return Err(err(format!("its options must be an object, not {other}"))),
        }
        let mut notes = Vec::new();
        let mut out = Vec::new();
        for (k, v) in &chosen {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(err(format!(
                        "option {k} must be a string or a boolean, not {other}"
                    )))
                }
            };
            match self.options.get(k) {
                None => notes.push(format!(
                    "feature {feature}: option {k} is not one it declares; it is passed on as {}",
                    env_name(k)
                )),
                Some(spec) if spec.kind == "boolean" && text != "true" && text != "false" => {
                    return Err(err(format!(
                        "option {k} is a boolean: give true or false, not {text:?}"
                    )))
                }
                Some(spec) if !spec.allowed.is_empty() && !spec.allowed.contains(&text) => {
                    return Err(err(format!(
                        "option {k} must be one of {}, not {text:?}",
                        spec.allowed.join(", ")
                    )))
                }
                Some(_) => {}
            }
            out.push((env_name(k), text));
        }
        Ok(OptionEnv { env: out, notes })
    }
}

/// A feature's options as [`FeatureMeta::env`] resolved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionEnv {
    /// (variable, value), sorted by option name.
    pub env: Vec<(String, String)>,
    /// Warnings for the user (options the feature does not declare).
    pub notes: Vec<String>,
}

fn option_spec(v: &Value) -> Result<OptionSpec, String> {
    let o = v.as_object().ok_or("an option must be an object")?;
    let kind = match o.get("type").and_then(Value::as_str) {
        Some(k @ ("string" | "boolean")) => k.to_string(),
        Some(other) => return Err(format!("option type {other:?} must be string or boolean")),
        None => return Err("an option needs a type (string or boolean)".into()),
    };
    let allowed = match o.get("enum") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err("enum must hold strings".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("enum must be an array".into()),
    };
    let default = match o.get("default") {
        None | Some(Value::Null) => None,
        Some(d @ (Value::String(_) | Value::Bool(_))) => Some(d.clone()),
        Some(_) => return Err("default must be a string or a boolean".into()),
    };
    Ok(OptionSpec {
        kind,
        default,
        allowed,
    })
}

/// A feature's value in `features` / `dependsOn`: an object of strings and booleans, a
/// string (the `version` option) or a boolean.
pub(crate) fn check_value(v: &Value) -> Result<(), String> {
    match v {
        Value::String(_) | Value::Bool(_) => Ok(()),
        Value::Object(o) => {
            for (k, e) in o {
                if !matches!(e, Value::String(_) | Value::Bool(_)) {
                    return Err(format!("option {k} must be a string or a boolean"));
                }
            }
            Ok(())
        }
        _ => Err("a feature's options must be an object, a string or a boolean".into()),
    }
}

/// A lifecycle command of a feature, in the same three forms as devcontainer.json's.
fn command(v: &Value) -> Result<Option<Command>, String> {
    fn one(v: &Value) -> Result<Option<Command>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(Command::Shell(s.clone()))),
            Value::Array(a) if a.is_empty() => Ok(None),
            Value::Array(a) => a
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .ok_or("a command's arguments must be strings".to_string())
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|argv| Some(Command::Exec(argv))),
            _ => Err("a command must be a string or an array of strings".into()),
        }
    }
    match v {
        Value::Object(o) => {
            let mut all = Vec::new();
            for (name, e) in o {
                if let Some(c) = one(e)? {
                    all.push((name.clone(), c));
                }
            }
            Ok((!all.is_empty()).then_some(Command::Parallel(all)))
        }
        other => one(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(v: Value) -> Result<FeatureMeta, Error> {
        FeatureMeta::parse("r.io/n/x:1", &v.to_string())
    }

    #[test]
    fn options_default_validate_and_convert() {
        let m = meta(json!({"id": "x", "options": {
            "version": {"type": "string", "enum": ["1", "2"], "default": "2"},
            "install-tools": {"type": "boolean", "default": true},
            "free": {"type": "string", "proposals": ["a"]},
        }}))
        .unwrap();
        let env = |v: Value| m.env("f", &v);
        assert_eq!(
            env(json!({})).unwrap().env,
            [
                ("INSTALL_TOOLS".to_string(), "true".to_string()),
                ("VERSION".into(), "2".into())
            ]
        );
        // The string shorthand is the version; booleans may be written as strings.
        let r = env(json!("1")).unwrap();
        assert!(r.env.contains(&("VERSION".into(), "1".into())));
        let r = env(json!({"install-tools": "false", "free": "zz", "extra": "x"})).unwrap();
        assert!(r.env.contains(&("INSTALL_TOOLS".into(), "false".into())));
        assert!(r.env.contains(&("FREE".into(), "zz".into())));
        assert!(r.env.contains(&("EXTRA".into(), "x".into())));
        assert_eq!(r.notes.len(), 1);
        assert!(
            r.notes[0].contains("option extra is not one it declares"),
            "{:?}",
            r.notes
        );
        for (v, says) in [
            (json!({"version": "3"}), "must be one of 1, 2"),
            (json!({"install-tools": "yes"}), "is a boolean"),
            (json!({"free": 3}), "must be a string or a boolean"),
            (json!([1]), "must be an object"),
        ] {
            let e = env(v.clone()).unwrap_err().to_string();
            assert!(e.starts_with("feature f: ") && e.contains(says), "{v}: {e}");
        }
    }

    #[test]
    fn refuses_what_would_weaken_the_workspace() {
        for (prop, v) in [
            ("privileged", json!(true)),
            ("capAdd", json!(["SYS_ADMIN"])),
            ("securityOpt", json!(["seccomp=unconfined"])),
            (
                "mounts",
                json!([{"source": "x", "target": "/y", "type": "volume"}]),
            ),
            ("init", json!(true)),
            ("entrypoint", json!("/usr/local/share/start.sh")),
        ] {
            let mut m = json!({"id": "x"});
            m[prop] = v;
            let e = meta(m).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "feature r.io/n/x:1: it sets {prop}, which hearth refuses"
                )),
                "{e}"
            );
        }
        // Unset, false or empty is no request.
        let m = meta(json!({"id": "x", "privileged": false, "capAdd": [], "mounts": []})).unwrap();
        assert_eq!(m.id, "x");
        let e = meta(json!({"name": "no id"})).unwrap_err().to_string();
        assert!(e.contains("it has no id"), "{e}");
    }
}
