//! The typed configuration: what Hearth acts on, checked with positions; everything
//! else becomes a [`Warning`] naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::parse::escape;
use crate::{Document, Error, Warning};

/// A lifecycle command in one of the spec's three forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A string: run by `/bin/sh -c`.
    Shell(String),
    /// An array: run directly, no shell.
    Exec(Vec<String>),
    /// An object: each named command runs at the same time; all must succeed.
    Parallel(Vec<(String, Command)>),
}

impl Command {
    /// The argv to run (`None` for the parallel form, or an empty command).
    pub fn argv(&self) -> Option<Vec<String>> {
        match self {
            Command::Shell(s) if !s.trim().is_empty() => {
                Some(vec!["/bin/sh".into(), "-c".into(), s.clone()])
            }
            Command::Exec(a) if !a.is_empty() => Some(a.clone()),
            _ => None,
        }
    }
}

/// The lifecycle steps run inside the workspace, in the spec's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LifecycleStep {
    #[serde(rename = "onCreateCommand")]
    OnCreate,
    #[serde(rename = "updateContentCommand")]
    UpdateContent,
    #[serde(rename = "postCreateCommand")]
    PostCreate,
    #[serde(rename = "postStartCommand")]
    PostStart,
    #[serde(rename = "postAttachCommand")]
    PostAttach,
}

impl LifecycleStep {
    pub const ALL: [LifecycleStep; 5] = [
        LifecycleStep::OnCreate,
        LifecycleStep::UpdateContent,
        LifecycleStep::PostCreate,
        LifecycleStep::PostStart,
        LifecycleStep::PostAttach,
    ];

    /// The property's name in devcontainer.json.
    pub fn property(self) -> &'static str {
        match self {
            LifecycleStep::OnCreate => "onCreateCommand",
            LifecycleStep::UpdateContent => "updateContentCommand",
            LifecycleStep::PostCreate => "postCreateCommand",
            LifecycleStep::PostStart => "postStartCommand",
            LifecycleStep::PostAttach => "postAttachCommand",
        }
    }
}

/// The five lifecycle commands and `waitFor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub commands: BTreeMap<LifecycleStep, Command>,
    /// The last step a tool waits for before it connects (default `updateContentCommand`).
    pub wait_for: Option<LifecycleStep>,
}

impl Lifecycle {
    pub fn get(&self, step: LifecycleStep) -> Option<&Command> {
        self.commands.get(&step)
    }

    /// `waitFor`, or its default.
    pub fn wait_for(&self) -> LifecycleStep {
        self.wait_for.unwrap_or(LifecycleStep::UpdateContent)
    }
}

/// `build`: an image made from a Dockerfile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// Repository-relative path, resolved against the configuration's directory.
    pub dockerfile: String,
    /// Repository-relative directory ("" is the root).
    pub context: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

/// One `forwardPorts` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardPort {
    /// A port of the workspace itself.
    Port(u16),
    /// `"host:port"`: a port of another host reachable from the workspace.
    Remote { host: String, port: u16 },
}

/// `portsAttributes` for one port (or range / pattern, the key as written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAttributes {
    pub label: Option<String>,
    /// `http` or `https`: what the port proxy speaks to the port.
    pub protocol: Option<String>,
    /// `notify`, `openBrowser`, `openBrowserOnce`, `openPreview`, `silent` or `ignore`.
    pub on_auto_forward: Option<String>,
}

impl PortAttributes {
    /// `self`'s values, and `other`'s where `self` has none.
    fn or(&self, other: &PortAttributes) -> PortAttributes {
        PortAttributes {
            label: self.label.clone().or_else(|| other.label.clone()),
            protocol: self.protocol.clone().or_else(|| other.protocol.clone()),
            on_auto_forward: self
                .on_auto_forward
                .clone()
                .or_else(|| other.on_auto_forward.clone()),
        }
    }

    /// `onAutoForward: ignore`: a port that is neither listed nor proxied.
    pub fn ignored(&self) -> bool {
        self.on_auto_forward.as_deref() == Some("ignore")
    }

    /// `protocol: https`: the workspace's port speaks TLS.
    pub fn https(&self) -> bool {
        self.protocol.as_deref() == Some("https")
    }
}

/// A `portsAttributes` key: a port, or an inclusive range `"FROM-TO"`; `None` for
/// anything else (VS Code matches those as patterns against process command lines).
fn port_key(key: &str) -> Option<(u16, u16)> {
    let num = |s: &str| {
        (!s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    let key = key.strip_prefix("localhost:").unwrap_or(key);
    match key.split_once('-') {
        Some((a, b)) => Some((num(a)?, num(b)?)).filter(|(a, b)| a <= b),
        None => num(key).map(|p| (p, p)),
    }
}

/// The values `protocol` and `onAutoForward` may take (the spec's enums).
const PROTOCOLS: &[&str] = &["http", "https"];
const ON_AUTO_FORWARD: &[&str] = &[
    "notify",
    "openBrowser",
    "openBrowserOnce",
    "openPreview",
    "silent",
    "ignore",
];

/// One `mounts` entry, as a Docker `--mount` string or its object form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    Text(String),
    Object {
        kind: Option<String>,
        source: Option<String>,
        target: String,
    },
}

/// `hostRequirements`: the least a workspace must have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRequirements {
    pub cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub storage_bytes: Option<u64>,
}

/// A devcontainer.json after substitution, as Hearth uses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Repository-relative path of the file.
    pub file: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub build: Option<Build>,
    /// Feature id -> options, as written.
    pub features: BTreeMap<String, Value>,
    /// `overrideFeatureInstallOrder`: feature ids (no version) to install first, in order.
    #[serde(default)]
    pub override_feature_install_order: Vec<String>,
    /// Docker Compose (`dockerComposeFile`) configurations are recognised, not run.
    pub compose: bool,
    pub container_env: BTreeMap<String, String>,
    /// `null` unsets a variable.
    pub remote_env: BTreeMap<String, Option<String>>,
    pub remote_user: Option<String>,
    pub container_user: Option<String>,
    pub update_remote_user_uid: Option<bool>,
    pub workspace_folder: Option<String>,
    pub forward_ports: Vec<ForwardPort>,
    pub ports_attributes: BTreeMap<String, PortAttributes>,
    pub other_ports_attributes: Option<PortAttributes>,
    pub mounts: Vec<Mount>,
    pub host_requirements: HostRequirements,
    pub customizations: Map<String, Value>,
    pub lifecycle: Lifecycle,
    pub override_command: Option<bool>,
    pub shutdown_action: Option<String>,
    /// What Hearth does not act on, each naming the property.
    pub warnings: Vec<Warning>,
}

/// Properties of the spec Hearth does not act on, with why.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "initializeCommand",
        "runs on the host, and hearth never runs repository commands on the server",
    ),
    ("runArgs", "docker run arguments have no hearth equivalent"),
    ("appPort", "use forwardPorts"),
    ("privileged", "workspaces are never privileged"),
    ("capAdd", "workspaces get a fixed capability set"),
    ("securityOpt", "workspaces get a fixed security profile"),
    ("init", "the hearth agent is always PID 1 and reaps"),
    (
        "userEnvProbe",
        "the environment is the image's, containerEnv and remoteEnv",
    ),
    (
        "workspaceMount",
        "the repository is always cloned into the workspace's own disk",
    ),
    ("service", "Docker Compose is not supported"),
    ("runServices", "Docker Compose is not supported"),
    ("dockerFile", "deprecated: use build.dockerfile"),
    ("context", "deprecated: use build.context"),
    (
        "extensions",
        "deprecated: use customizations.vscode.extensions",
    ),
    ("settings", "deprecated: use customizations.vscode.settings"),
    ("devPort", "deprecated and unused"),
];

struct Ctx<'a> {
    doc: &'a Document,
    warnings: Vec<Warning>,
}

impl Ctx<'_> {
    fn err(&self, ptr: &str, msg: impl Into<String>) -> Error {
        self.doc.invalid(ptr, msg)
    }

    fn warn(&mut self, ptr: &str, msg: impl Into<String>) {
        self.warnings.push(self.doc.warning(ptr, msg));
    }

    fn string(&self, v: &Value, ptr: &str, what: &str) -> Result<String, Error> {
        match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.err(ptr, format!("{what} must be a string"))),
        }
    }

    fn bool(&self, v: &Value, ptr: &str, what: &str) -> Result<bool, Error> {
        v.as_bool()
            .ok_or_else(|| self.err(ptr, format!("{what} must be true or false")))
    }

    fn object<'v>(
        &self,
        v: &'v Value,
        ptr: &str,
        what: &str,
    ) -> Result<&'v Map<String, Value>, Error> {
        v.as_object()
            .ok_or_else(|| self.err(ptr, format!("{what} must be an object")))
    }

    fn string_map(
        &self,
        v: &Value,
        ptr: &str,
        what: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut out = BTreeMap::new();
        for (k, e) in self.object(v, ptr, what)? {
            let p = format!("{ptr}/{}", escape(k));
            out.insert(k.clone(), self.string(e, &p, &format!("{what}.{k}"))?);
        }
        Ok(out)
    }
}

impl Config {
    /// The model of `value` (the document's value after substitution; positions come
    /// from `doc`).
    pub fn from_value(doc: &Document, value: &Value) -> Result<Config, Error> {
        let mut cx = Ctx {
            doc,
            warnings: Vec::new(),
        };
        let root = cx.object(value, "", "the configuration")?;
        let mut c = Config {
            file: doc.file.clone(),
            ..Config::default()
        };
        let config_dir = doc.file.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        for (key, v) in root {
            let ptr = format!("/{}", escape(key));
            let p = ptr.as_str();
            match key.as_str() {
                "$schema" => {}
                "name" => c.name = Some(cx.string(v, p, key)?),
                "image" => c.image = Some(cx.string(v, p, key)?),
                "build" => c.build = Some(build(&mut cx, v, p, config_dir)?),
                "features" => {
                    for (id, opts) in cx.object(v, p, key)? {
                        let fp = format!("{p}/{}", escape(id));
                        crate::features::OciRef::parse(id)
                            .map_err(|e| cx.doc.invalid_name(&fp, e.to_string()))?;
                        crate::features::check_value(opts)
                            .map_err(|m| cx.err(&fp, format!("feature {id}: {m}")))?;
                        c.features.insert(id.clone(), opts.clone());
                    }
                }
                "overrideFeatureInstallOrder" => {
                    let arr = v
                        .as_array()
                        .ok_or_else(|| cx.err(p, "overrideFeatureInstallOrder must be an array"))?;
                    for (i, e) in arr.iter().enumerate() {
                        c.override_feature_install_order.push(cx.string(
                            e,
                            &format!("{p}/{i}"),
                            "an overrideFeatureInstallOrder entry",
                        )?);
                    }
                }
                "dockerComposeFile" => {
                    c.compose = true;
                    cx.warn(
                        p,
                        "dockerComposeFile: Docker Compose configurations are not supported",
                    );
                }
                "containerEnv" => c.container_env = cx.string_map(v, p, key)?,
                "remoteEnv" => {
                    for (k, e) in cx.object(v, p, key)? {
                        let ep = format!("{p}/{}", escape(k));
                        let val = match e {
                            Value::Null => None,
                            other => Some(cx.string(other, &ep, &format!("remoteEnv.{k}"))?),
                        };
                        c.remote_env.insert(k.clone(), val);
                    }
                }
                "remoteUser" => c.remote_user = Some(cx.string(v, p, key)?),
                "containerUser" => c.container_user = Some(cx.string(v, p, key)?),
                "updateRemoteUserUID" => {
                    c.update_remote_user_uid = Some(cx.bool(v, p, key)?);
                    cx.warn(p, "updateRemoteUserUID has no effect: there is no local user whose uid to copy; hearth hands the repository to the remote user inside the workspace, and its user namespace maps workspace uids to the host");
                }
                "workspaceFolder" => {
                    let f = cx.string(v, p, key)?;
                    let f = workspace_folder(&f)
                        .map_err(|m| cx.err(p, format!("workspaceFolder {f:?} {m}")))?;
                    c.workspace_folder = Some(f);
                }
                "forwardPorts" => {
                    let arr = v
                        .as_array()
                        .ok_or_else(|| cx.err(p, "forwardPorts must be an array"))?;
                    for (i, e) in arr.iter().enumerate() {
                        let ep = format!("{p}/{i}");
                        let f = forward_port(&cx, e, &ep)?;
                        if let ForwardPort::Remote { host, port } = &f {
                            cx.warn(
                                &ep,
                                format!("forwardPorts \"{host}:{port}\" is not forwarded: the port proxy reaches only ports of the workspace itself (connect to {host}:{port} from inside it)"),
                            );
                        }
                        c.forward_ports.push(f);
                    }
                }
                "portsAttributes" => {
                    for (port, a) in cx.object(v, p, key)? {
                        let ap = format!("{p}/{}", escape(port));
                        if port_key(port).is_none() {
                            cx.warn(
                                &ap,
                                format!("portsAttributes {port:?} is ignored: hearth matches ports (\"3000\") and ranges (\"3000-3010\"), not patterns on process command lines"),
                            );
                        }
                        c.ports_attributes
                            .insert(port.clone(), attributes(&mut cx, a, &ap)?);
                    }
                }
                "otherPortsAttributes" => {
                    c.other_ports_attributes = Some(attributes(&mut cx, v, p)?)
                }
                "mounts" => {
                    let arr = v
                        .as_array()
                        .ok_or_else(|| cx.err(p, "mounts must be an array"))?;
                    for (i, e) in arr.iter().enumerate() {
                        c.mounts.push(mount(&cx, e, &format!("{p}/{i}"))?);
                    }
                    if !c.mounts.is_empty() {
                        cx.warn(
                            p,
                            "mounts are not supported yet: the workspace gets none of them",
                        );
                    }
                }
                "hostRequirements" => c.host_requirements = host_requirements(&mut cx, v, p)?,
                "customizations" => c.customizations = customizations(&mut cx, v, p)?,
                "waitFor" => {
                    let s = cx.string(v, p, key)?;
                    c.lifecycle.wait_for = Some(match s.as_str() {
                        "initializeCommand" | "onCreateCommand" => LifecycleStep::OnCreate,
                        "updateContentCommand" => LifecycleStep::UpdateContent,
                        "postCreateCommand" => LifecycleStep::PostCreate,
                        "postStartCommand" => LifecycleStep::PostStart,
                        _ => {
                            return Err(cx.err(
                                p,
                                format!("waitFor {s:?} must be one of initializeCommand, onCreateCommand, updateContentCommand, postCreateCommand, postStartCommand"),
                            ))
                        }
                    });
                }
                "overrideCommand" => {
                    let o = cx.bool(v, p, key)?;
                    c.override_command = Some(o);
                    if !o {
                        cx.warn(p, "overrideCommand false is not supported: the hearth agent is PID 1 and the image's command is not run");
                    }
                }
                "shutdownAction" => {
                    let s = cx.string(v, p, key)?;
                    if !matches!(s.as_str(), "none" | "stopContainer" | "stopCompose") {
                        return Err(cx.err(
                            p,
                            format!(
                                "shutdownAction {s:?} must be none, stopContainer or stopCompose"
                            ),
                        ));
                    }
                    cx.warn(p, "shutdownAction has no effect: workspaces stop with hearth stop or their idle timeout");
                    c.shutdown_action = Some(s);
                }
                other => {
                    if let Some(step) = LifecycleStep::ALL.iter().find(|s| s.property() == other) {
                        if let Some(cmd) = command(&cx, v, p, true)? {
                            c.lifecycle.commands.insert(*step, cmd);
                        }
                    } else if let Some((_, why)) = UNSUPPORTED.iter().find(|(k, _)| *k == other) {
                        cx.warn(p, format!("{other} is not supported and is ignored: {why}"));
                    } else {
                        cx.warn(p, format!("unknown property {other} is ignored"));
                    }
                }
            }
        }
        c.warnings = cx.warnings;
        Ok(c)
    }

    /// `customizations.vscode.extensions`: extension ids for an editor to install.
    pub fn vscode_extensions(&self) -> Vec<String> {
        self.customizations
            .get("vscode")
            .and_then(|v| v.get("extensions"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `customizations.vscode.settings`: settings for an editor to apply.
    pub fn vscode_settings(&self) -> Option<&Map<String, Value>> {
        self.customizations
            .get("vscode")
            .and_then(|v| v.get("settings"))
            .and_then(Value::as_object)
    }

    /// The attributes of `port`: an exact key's first, then each range containing it (in
    /// key order) for what is still unset, else `otherPortsAttributes`.
    pub fn port_attributes(&self, port: u16) -> PortAttributes {
        let mut exact = None;
        let mut ranges = Vec::new();
        for (key, a) in &self.ports_attributes {
            match port_key(key) {
                Some((from, to)) if from == to && from == port => exact = Some(a),
                Some((from, to)) if from <= port && port <= to => ranges.push(a),
                _ => {}
            }
        }
        if exact.is_none() && ranges.is_empty() {
            return self.other_ports_attributes.clone().unwrap_or_default();
        }
        exact
            .into_iter()
            .chain(ranges)
            .fold(PortAttributes::default(), |acc, a| acc.or(a))
    }

    /// The ports `forwardPorts` names in the workspace itself (other hosts' are not
    /// forwarded; parsing warned about them), in the file's order without repeats.
    pub fn forwarded_ports(&self) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for f in &self.forward_ports {
            if let ForwardPort::Port(p) = f {
                if !out.contains(p) {
                    out.push(*p);
                }
            }
        }
        out
    }

    /// The default user of exec sessions: `remoteUser`, else `containerUser`.
    pub fn exec_user(&self) -> Option<&str> {
        self.remote_user
            .as_deref()
            .or(self.container_user.as_deref())
    }
}

/// Top-level directories a workspace folder may not be in (the system's own trees).
const SYSTEM_TREES: &[&str] = &[
    "proc", "sys", "dev", "etc", "boot", "run", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
];

/// Directories a workspace folder may not be (it would replace them), though it may be
/// below them.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/include",
    "/usr/share",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/src",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/tmp",
    "/root",
    "/home",
    "/opt",
    "/srv",
    "/mnt",
    "/media",
];

/// `workspaceFolder` checked and normalised (no trailing or doubled `/`): the repository
/// appears there, so it must be an absolute path of its own, not a system directory;
/// `Err` completes "workspaceFolder \"...\" ...".
fn workspace_folder(f: &str) -> Result<String, String> {
    if !f.starts_with('/') {
        return Err("must be an absolute path".into());
    }
    if f.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    let parts: Vec<&str> = f.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("must not contain . or .. components".into());
    }
    let norm = format!("/{}", parts.join("/"));
    let system = match parts.first() {
        None => true,
        Some(top) => SYSTEM_TREES.contains(top) || SYSTEM_DIRS.contains(&norm.as_str()),
    };
    if system {
        return Err("is a system directory: the repository appears at the workspace folder, so it must be a directory of its own (like /workspaces/NAME or /src/NAME)".into());
    }
    if norm == "/workspace" {
        return Err("holds hearth's clone of the repository (/workspace/<repo>): name that folder, a folder in it, or another folder of its own".into());
    }
    Ok(norm)
}

/// `customizations`, kept whole; `vscode.extensions` and `vscode.settings` are checked
/// (an editor integration reads them through the API), every tool's entry gets a warning
/// saying what becomes of it.
fn customizations(cx: &mut Ctx, v: &Value, p: &str) -> Result<Map<String, Value>, Error> {
    let all = cx.object(v, p, "customizations")?.clone();
    for (tool, e) in &all {
        let tp = format!("{p}/{}", escape(tool));
        if tool != "vscode" {
            cx.warn(
                &tp,
                format!("customizations.{tool} is not used by hearth and is ignored"),
            );
            continue;
        }
        let vscode = cx.object(e, &tp, "customizations.vscode")?;
        if let Some(ext) = vscode.get("extensions") {
            let ep = format!("{tp}/extensions");
            let ok = ext
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string));
            if !ok {
                return Err(cx.err(
                    &ep,
                    "customizations.vscode.extensions must be an array of extension ids",
                ));
            }
        }
        if let Some(settings) = vscode.get("settings") {
            cx.object(
                settings,
                &format!("{tp}/settings"),
                "customizations.vscode.settings",
            )?;
        }
        cx.warn(
            &tp,
            "customizations.vscode: hearth installs no editor extensions itself; extensions and settings are shown by hearth inspect and the API for an editor to apply, the rest is ignored",
        );
    }
    Ok(all)
}

fn build(cx: &mut Ctx, v: &Value, p: &str, config_dir: &str) -> Result<Build, Error> {
    let mut b = Build::default();
    let mut dockerfile = None;
    let mut context = None;
    for (k, e) in cx.object(v, p, "build")? {
        let kp = format!("{p}/{}", escape(k));
        match k.as_str() {
            "dockerfile" => dockerfile = Some((cx.string(e, &kp, "build.dockerfile")?, kp)),
            "context" => context = Some((cx.string(e, &kp, "build.context")?, kp)),
            "args" => b.args = cx.string_map(e, &kp, "build.args")?,
            "target" => b.target = Some(cx.string(e, &kp, "build.target")?),
            "cacheFrom" | "options" => {
                cx.warn(&kp, format!("build.{k} is not supported and is ignored"))
            }
            other => cx.warn(&kp, format!("unknown property build.{other} is ignored")),
        }
    }
    // Both are relative to the configuration's directory, and must stay in the repository.
    let (df, df_ptr) = dockerfile.ok_or_else(|| cx.err(p, "build needs a dockerfile"))?;
    b.dockerfile = crate::normalize(config_dir, &df)
        .map_err(|e| cx.err(&df_ptr, format!("build.dockerfile {df:?}: {}", reason(&e))))?;
    b.context = match context {
        Some((ctx, ptr)) => crate::normalize(config_dir, &ctx)
            .map_err(|e| cx.err(&ptr, format!("build.context {ctx:?}: {}", reason(&e))))?,
        None => config_dir.to_string(),
    };
    Ok(b)
}

fn reason(e: &Error) -> String {
    match e {
        Error::Path { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn forward_port(cx: &Ctx, v: &Value, p: &str) -> Result<ForwardPort, Error> {
    let bad = || {
        cx.err(
            p,
            "a forwardPorts entry must be a port (1-65535) or \"host:port\"",
        )
    };
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(ForwardPort::Port)
            .ok_or_else(bad),
        Value::String(s) => {
            let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
            if host.is_empty() {
                return Err(bad());
            }
            Ok(if host == "localhost" || host == "127.0.0.1" {
                ForwardPort::Port(port)
            } else {
                ForwardPort::Remote {
                    host: host.to_string(),
                    port,
                }
            })
        }
        _ => Err(bad()),
    }
}

fn attributes(cx: &mut Ctx, v: &Value, p: &str) -> Result<PortAttributes, Error> {
    let mut a = PortAttributes::default();
    for (k, e) in cx.object(v, p, "port attributes")? {
        let kp = format!("{p}/{}", escape(k));
        match k.as_str() {
            "label" => a.label = Some(cx.string(e, &kp, k)?),
            "protocol" => a.protocol = Some(one_of(cx, e, &kp, k, PROTOCOLS)?),
            "onAutoForward" => a.on_auto_forward = Some(one_of(cx, e, &kp, k, ON_AUTO_FORWARD)?),
            "requireLocalPort" | "elevateIfNeeded" => {
                cx.bool(e, &kp, k)?;
                cx.warn(
                    &kp,
                    format!("{k} has no effect: ports are reached through the port proxy's URLs, not a local port on your machine"),
                );
            }
            other => cx.warn(&kp, format!("unknown port attribute {other} is ignored")),
        }
    }
    Ok(a)
}

/// A string that must be one of `allowed`.
fn one_of(cx: &Ctx, v: &Value, p: &str, what: &str, allowed: &[&str]) -> Result<String, Error> {
    let s = cx.string(v, p, what)?;
    if allowed.contains(&s.as_str()) {
        return Ok(s);
    }
    Err(cx.err(
        p,
        format!("{what} {s:?} must be one of {}", allowed.join(", ")),
    ))
}

fn mount(cx: &Ctx, v: &Value, p: &str) -> Result<Mount, Error> {
    match v {
        Value::String(s) => Ok(Mount::Text(s.clone())),
        Value::Object(o) => {
            let target = o
                .get("target")
                .and_then(Value::as_str)
                .ok_or_else(|| cx.err(p, "a mount needs a target"))?;
            Ok(Mount::Object {
                kind: o.get("type").and_then(Value::as_str).map(String::from),
                source: o.get("source").and_then(Value::as_str).map(String::from),
                target: target.to_string(),
            })
        }
        _ => Err(cx.err(p, "a mount must be a string or an object")),
    }
}

fn host_requirements(cx: &mut Ctx, v: &Value, p: &str) -> Result<HostRequirements, Error> {
    let mut h = HostRequirements::default();
    for (k, e) in cx.object(v, p, "hostRequirements")? {
        let kp = format!("{p}/{}", escape(k));
        match k.as_str() {
            "cpus" => {
                h.cpus = Some(e.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    cx.err(
                        &kp,
                        "hostRequirements.cpus must be a whole number of at least 1",
                    )
                })?)
            }
            "memory" => h.memory_bytes = Some(bytes(cx, e, &kp, "hostRequirements.memory")?),
            "storage" => h.storage_bytes = Some(bytes(cx, e, &kp, "hostRequirements.storage")?),
            "gpu" => cx.warn(
                &kp,
                "hostRequirements.gpu is not supported: workspaces have no GPUs",
            ),
            other => cx.warn(
                &kp,
                format!("unknown property hostRequirements.{other} is ignored"),
            ),
        }
    }
    Ok(h)
}

/// The schema's `^\d+([tgmk]b)?$` (any case), in bytes (units of 1024).
fn bytes(cx: &Ctx, v: &Value, p: &str, what: &str) -> Result<u64, Error> {
    let bad = || {
        cx.err(
            p,
            format!("{what} must be a size like \"8gb\" (a number and kb, mb, gb or tb)"),
        )
    };
    let s = v.as_str().ok_or_else(bad)?.to_ascii_lowercase();
    let (num, mult) = match s.len().checked_sub(2).map(|i| s.split_at(i)) {
        Some((n, "kb")) => (n, 1u64 << 10),
        Some((n, "mb")) => (n, 1 << 20),
        Some((n, "gb")) => (n, 1 << 30),
        Some((n, "tb")) => (n, 1 << 40),
        _ => (s.as_str(), 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// A lifecycle command; `top` allows the object (parallel) form. An empty one is `None`.
fn command(cx: &Ctx, v: &Value, p: &str, top: bool) -> Result<Option<Command>, Error> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(Command::Shell(s.clone()))),
        Value::Array(a) if a.is_empty() => Ok(None),
        Value::Array(a) => {
            let mut argv = Vec::new();
            for (i, e) in a.iter().enumerate() {
                argv.push(cx.string(e, &format!("{p}/{i}"), "a command's argument")?);
            }
            Ok(Some(Command::Exec(argv)))
        }
        Value::Object(o) if top => {
            let mut all = Vec::new();
            for (name, e) in o {
                if let Some(c) = command(cx, e, &format!("{p}/{}", escape(name)), false)? {
                    all.push((name.clone(), c));
                }
            }
            Ok((!all.is_empty()).then_some(Command::Parallel(all)))
        }
        _ => Err(cx.err(
            p,
            if top {
                "a lifecycle command must be a string, an array of strings or an object of them"
            } else {
                "a command in the object form must be a string or an array of strings"
            },
        )),
    }
}
