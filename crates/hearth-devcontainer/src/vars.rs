//! The spec's variables, substituted as the reference CLI does (its
//! `variableSubstitution.ts`): in string values only (never keys), `${name}` or
//! `${name:arg:...}` up to the first `}` on the same line, in three passes at the times
//! the CLI runs them; a variable a pass does not know is left as written.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Error;

/// What the first pass (reading the configuration) knows.
pub struct Local<'a> {
    /// `${localWorkspaceFolder}`; left as written when `None`.
    pub local_workspace_folder: Option<&'a str>,
    /// `${containerWorkspaceFolder}` before its own substitution: the configuration's
    /// `workspaceFolder` when it has one, else the tool's default (see
    /// [`container_workspace_folder`]).
    pub container_workspace_folder: Option<String>,
    /// `${localEnv:NAME}` / `${env:NAME}`.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The configuration file's name, for messages.
    pub file: &'a str,
    /// The parsed file, so an error points at the string it is in (line 1, column 1
    /// without it).
    pub doc: Option<&'a crate::Document>,
}

/// `${containerWorkspaceFolder}` as the CLI takes it: the raw `workspaceFolder` string
/// when the configuration has one, else `default` (the CLI's is `/workspaces/<basename
/// of the local folder>`; Hearth's is where it clones, `/workspace/<repo>`).
pub fn container_workspace_folder(raw: &Value, default: &str) -> String {
    match raw.get("workspaceFolder") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => default.to_string(),
    }
}

/// First pass: `localEnv`/`env`, `localWorkspaceFolder[Basename]`,
/// `containerWorkspaceFolder[Basename]`.
pub fn substitute_local(value: &Value, ctx: &Local) -> Result<Value, Error> {
    // The CLI substitutes the container folder itself first, with the raw value in scope.
    let raw_folder = ctx.container_workspace_folder.clone();
    let first =
        |m: &str, name: &str, args: &[&str]| local(ctx, raw_folder.as_deref(), m, name, args);
    let locate = |ptr: &str, message: String| match ctx.doc {
        Some(doc) => doc.invalid(ptr, message),
        None => Error::Invalid {
            file: ctx.file.to_string(),
            line: 1,
            column: 1,
            message,
        },
    };
    let folder = match &raw_folder {
        Some(f) => Some(string(f, &first).map_err(|m| locate("/workspaceFolder", m))?),
        None => None,
    };
    let replace = |m: &str, name: &str, args: &[&str]| local(ctx, folder.as_deref(), m, name, args);
    walk(value, &replace, &mut String::new(), &locate)
}

fn local(
    ctx: &Local,
    folder: Option<&str>,
    matched: &str,
    name: &str,
    args: &[&str],
) -> Result<String, String> {
    Ok(match name {
        "env" | "localEnv" => lookup(ctx.env, args, matched)?,
        // Known only once the workspace runs, but a missing name is wrong already.
        "containerEnv" if args.is_empty() => return lookup(ctx.env, args, matched),
        "localWorkspaceFolder" => ctx.local_workspace_folder.unwrap_or(matched).to_string(),
        "localWorkspaceFolderBasename" => match ctx.local_workspace_folder {
            Some(f) => basename(f).to_string(),
            None => matched.to_string(),
        },
        "containerWorkspaceFolder" => folder.unwrap_or(matched).to_string(),
        "containerWorkspaceFolderBasename" => match folder {
            Some(f) => basename(f).to_string(),
            None => matched.to_string(),
        },
        _ => matched.to_string(),
    })
}

/// Second pass, when the container is made: `${devcontainerId}`.
pub fn substitute_devcontainer_id(value: &Value, id: &str) -> Value {
    let replace = |m: &str, name: &str, _: &[&str]| {
        Ok(if name == "devcontainerId" {
            id.to_string()
        } else {
            m.to_string()
        })
    };
    // This pass cannot fail: it raises no errors of its own.
    walk(value, &replace, &mut String::new(), &|_, m| {
        Error::Invalid {
            file: String::new(),
            line: 1,
            column: 1,
            message: m,
        }
    })
    .unwrap_or_else(|_| value.clone())
}

/// Third pass, once the container runs: `${containerEnv:NAME}` from its environment.
/// (A reference without a name was refused with its position by the first pass.)
pub fn substitute_container_env(
    value: &Value,
    env: &dyn Fn(&str) -> Option<String>,
    file: &str,
) -> Result<Value, Error> {
    let replace = |m: &str, name: &str, args: &[&str]| {
        if name == "containerEnv" {
            lookup(env, args, m)
        } else {
            Ok(m.to_string())
        }
    };
    walk(value, &replace, &mut String::new(), &|ptr, message| {
        Error::Invalid {
            file: file.to_string(),
            line: 1,
            column: 1,
            message: format!("{message} (at {ptr})"),
        }
    })
}

/// The CLI's `devcontainerIdForLabels`: SHA-256 of the labels as JSON with sorted keys,
/// as a base-32 number padded to 52 digits.
pub fn devcontainer_id(labels: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = labels.to_vec();
    sorted.sort();
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut map = serde_json::Map::new();
    for (k, v) in sorted {
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    let json = Value::Object(map).to_string();
    let hash = Sha256::digest(json.as_bytes());
    // Base 32 of a 256-bit number: 5 bits at a time from the least significant end.
    let mut digits = Vec::new();
    let mut n: Vec<u8> = hash.to_vec();
    while n.iter().any(|b| *b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 32) as u8;
            rem = cur % 32;
        }
        digits.push(char::from_digit(rem, 32).unwrap_or('0'));
    }
    while digits.len() < 52 {
        digits.push('0');
    }
    digits.iter().rev().collect()
}

/// The labels the CLI identifies a container by, for [`devcontainer_id`].
pub fn id_labels<'a>(local_folder: &'a str, config_file: &'a str) -> [(&'a str, &'a str); 2] {
    [
        ("devcontainer.local_folder", local_folder),
        ("devcontainer.config_file", config_file),
    ]
}

/// The CLI's message when a name is missing, as an error of the string it is in.
fn lookup(
    env: &dyn Fn(&str) -> Option<String>,
    args: &[&str],
    matched: &str,
) -> Result<String, String> {
    match args {
        [] => Err(format!(
            "'{matched}' can not be resolved because no environment variable name is given"
        )),
        [name, rest @ ..] => Ok(match env(name) {
            Some(v) => v,
            None => rest.first().map(|d| d.to_string()).unwrap_or_default(),
        }),
    }
}

/// node's `path.posix.basename`.
fn basename(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "";
    }
    t.rsplit('/').next().unwrap_or(t)
}

type Replace<'a> = dyn Fn(&str, &str, &[&str]) -> Result<String, String> + 'a;

/// Turns a variable's error message into an [`Error`] at the JSON pointer of its string.
type Locate<'a> = dyn Fn(&str, String) -> Error + 'a;

fn walk(v: &Value, replace: &Replace, ptr: &mut String, locate: &Locate) -> Result<Value, Error> {
    Ok(match v {
        Value::String(s) => Value::String(string(s, replace).map_err(|m| locate(ptr, m))?),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, e) in a.iter().enumerate() {
                let len = ptr.len();
                ptr.push_str(&format!("/{i}"));
                out.push(walk(e, replace, ptr, locate)?);
                ptr.truncate(len);
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, e) in o {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&crate::parse::escape(k));
                out.insert(k.clone(), walk(e, replace, ptr, locate)?);
                ptr.truncate(len);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// JavaScript's `s.replace(/\$\{(.*?)\}/g, ...)`: `.` stops at line breaks.
fn string(s: &str, replace: &Replace) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let close = after.find('}');
        let line_break = after.find(['\n', '\r', '\u{2028}', '\u{2029}']);
        match close {
            Some(j) if line_break.is_none_or(|b| b > j) => {
                let inner = &after[..j];
                let matched = &rest[i..i + 2 + j + 1];
                let mut parts = inner.split(':');
                let name = parts.next().unwrap_or("");
                let args: Vec<&str> = parts.collect();
                out.push_str(&rest[..i]);
                out.push_str(&replace(matched, name, &args)?);
                rest = &after[j + 1..];
            }
            _ => {
                // No match starting here: keep the `$` and look again from the next char.
                out.push_str(&rest[..i + 1]);
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(s: &str) -> String {
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        let ctx = Local {
            local_workspace_folder: Some("/src/proj"),
            container_workspace_folder: Some("/workspace/proj".into()),
            env: &env,
            file: "devcontainer.json",
            doc: None,
        };
        match substitute_local(&Value::String(s.into()), &ctx).unwrap() {
            Value::String(s) => s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn local_pass() {
        assert_eq!(sub("${localEnv:HOME}/x"), "/home/u/x");
        assert_eq!(sub("${env:HOME}"), "/home/u");
        assert_eq!(sub("${localEnv:NOPE}"), "");
        assert_eq!(sub("${localEnv:NOPE:dflt}"), "dflt");
        assert_eq!(sub("${localEnv:NOPE:a:b}"), "a");
        assert_eq!(sub("${localWorkspaceFolderBasename}"), "proj");
        assert_eq!(
            sub("${containerWorkspaceFolder}/.cache"),
            "/workspace/proj/.cache"
        );
        assert_eq!(sub("${containerEnv:PATH}"), "${containerEnv:PATH}");
        assert_eq!(sub("${devcontainerId}"), "${devcontainerId}");
        assert_eq!(sub("$${x}${"), "$${x}${");
        assert_eq!(sub("${a\n}${localEnv:HOME}"), "${a\n}/home/u");
    }

    #[test]
    fn missing_name_is_an_error() {
        let env = |_: &str| None;
        let ctx = Local {
            local_workspace_folder: None,
            container_workspace_folder: None,
            env: &env,
            file: "f",
            doc: None,
        };
        let e = substitute_local(&Value::String("${localEnv}".into()), &ctx).unwrap_err();
        assert!(
            e.to_string().contains("no environment variable name"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_name_is_an_error_at_its_string() {
        let text = "{\n  \"image\": \"x\",\n  \"containerEnv\": {\"A\": \"1\", \"B\": \"${localEnv}\"},\n  \"remoteEnv\": {\"C\": \"${containerEnv}\"}\n}";
        let doc = crate::Document::parse(".devcontainer.json", text).unwrap();
        let env = |_: &str| None;
        let ctx = Local {
            local_workspace_folder: None,
            container_workspace_folder: None,
            env: &env,
            file: ".devcontainer.json",
            doc: Some(&doc),
        };
        let e = substitute_local(&doc.value, &ctx).unwrap_err().to_string();
        assert_eq!(
            e,
            ".devcontainer.json:3:35: '${localEnv}' can not be resolved because no environment variable name is given"
        );
        let only_container = serde_json::json!({"remoteEnv": doc.value["remoteEnv"].clone()});
        let e = substitute_local(&only_container, &ctx)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(".devcontainer.json:4:22: '${containerEnv}'"),
            "{e}"
        );
        // In the folder, whose raw value is substituted first.
        let text = "{\"image\": \"x\",\n \"workspaceFolder\": \"/w/${env}\"}";
        let doc = crate::Document::parse("d.json", text).unwrap();
        let ctx = Local {
            container_workspace_folder: Some(container_workspace_folder(&doc.value, "/x")),
            doc: Some(&doc),
            file: "d.json",
            ..ctx
        };
        let e = substitute_local(&doc.value, &ctx).unwrap_err().to_string();
        assert!(e.starts_with("d.json:2:21: '${env}'"), "{e}");
    }

    #[test]
    fn keys_stay() {
        let env = |_: &str| Some("v".to_string());
        let ctx = Local {
            local_workspace_folder: None,
            container_workspace_folder: None,
            env: &env,
            file: "f",
            doc: None,
        };
        let v = serde_json::json!({"${localEnv:A}": "${localEnv:A}", "n": 1});
        assert_eq!(
            substitute_local(&v, &ctx).unwrap(),
            serde_json::json!({"${localEnv:A}": "v", "n": 1})
        );
    }

    #[test]
    fn container_env_pass() {
        let env = |k: &str| (k == "PATH").then(|| "/bin".to_string());
        let v = Value::String("${containerEnv:PATH}:/x ${containerEnv:NO:d}".into());
        assert_eq!(
            substitute_container_env(&v, &env, "f").unwrap(),
            Value::String("/bin:/x d".into())
        );
    }
}
