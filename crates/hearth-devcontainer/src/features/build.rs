//! The build context that installs features on an image, laid out as the reference CLI
//! lays it out: `devcontainer-features.builtin.env` (`_CONTAINER_USER`, `_REMOTE_USER`,
//! and their homes found in the image), one directory per feature holding its files, its
//! options as `devcontainer-features.env` and the wrapper `devcontainer-features-install.sh`
//! that sources both and runs `install.sh`; the Dockerfile copies and runs them one
//! feature per layer, each after `ENV` lines of its `containerEnv`.

use std::collections::BTreeMap;

use super::{File, Install};
use crate::{Error, Lifecycle};

/// Where the features go inside the image (the reference CLI's path).
const FEATURES_DIR: &str = "/tmp/dev-container-features";

/// A feature's option name as an environment variable, as the spec converts it:
/// `str.replace(/[^\w_]/g, '_').replace(/^[\d_]+/g, '_').toUpperCase()` (one `_` per
/// UTF-16 unit, as JavaScript counts).
pub fn env_name(option: &str) -> String {
    let mut s = String::new();
    for c in option.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            s.push(c);
        } else {
            s.extend(std::iter::repeat_n('_', c.len_utf16()));
        }
    }
    let lead = s
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'_')
        .count();
    if lead > 0 {
        s.replace_range(..lead, "_");
    }
    s.to_ascii_uppercase()
}

/// A build context for the features, ready for a Dockerfile builder.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub dockerfile: String,
    /// A tar of the context, the Dockerfile included as `Dockerfile`.
    pub tar: Vec<u8>,
    /// `containerEnv` of every feature, later ones winning: the image's config has them.
    pub container_env: BTreeMap<String, String>,
    /// Each feature's lifecycle commands, labelled, in installation order.
    pub lifecycle: Vec<(String, Lifecycle)>,
    /// What to tell the user: each feature and its options, and anything odd about them.
    pub notes: Vec<String>,
}

impl BuildContext {
    /// The context installing `installs` (in order) on `base`; the image's processes run
    /// as `image_user` (`user[:group]`) afterwards, `container_user` and `remote_user`
    /// (names or uids) are what the features are told.
    pub fn new(
        base: &str,
        installs: &[Install],
        container_user: &str,
        remote_user: &str,
        image_user: &str,
    ) -> Result<BuildContext, Error> {
        if base.is_empty() || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Feature {
                feature: "(all)".into(),
                message: format!("base image {base:?} cannot be named in a Dockerfile"),
            });
        }
        for (what, user) in [
            ("containerUser", container_user),
            ("remoteUser", remote_user),
            ("the image's user", image_user),
        ] {
            // The image's may be `user:group`.
            if !user.split(':').all(plain_user) || user.split(':').count() > 2 {
                return Err(Error::Feature {
                    feature: "(all)".into(),
                    message: format!("{what} {user:?} is not a user name features can be given (letters, digits, '.', '_', '-')"),
                });
            }
        }
        let mut tar = Tar::default();
        let builtin = format!(
            "_CONTAINER_USER={}\n_REMOTE_USER={}\n",
            quote(container_user),
            quote(remote_user)
        );
        tar.file(
            "devcontainer-features.builtin.env",
            builtin.as_bytes(),
            false,
        );
        let builtin_path = format!("{FEATURES_DIR}/devcontainer-features.builtin.env");
        let mut df = format!(
            "FROM {base}\nUSER root\nCOPY devcontainer-features.builtin.env {FEATURES_DIR}/\nRUN echo \"_CONTAINER_USER_HOME=$( {})\" >> {builtin_path} && \\\n    echo \"_REMOTE_USER_HOME=$( {})\" >> {builtin_path}\n",
            home_of(container_user),
            home_of(remote_user),
        );
        let mut container_env = BTreeMap::new();
        let mut lifecycle = Vec::new();
        let mut notes = Vec::new();
        for (i, install) in installs.iter().enumerate() {
            let label = install.oci.pull_reference();
            let dir = format!("{}_{}", install.oci.id, i + 1);
            let super::OptionEnv { env, notes: odd } =
                install.meta.env(&label, &install.options)?;
            notes.push(format!(
                "feature {label} ({}){}",
                install.manifest_digest,
                if env.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        env.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                }
            ));
            notes.extend(odd);
            for File {
                path,
                executable,
                data,
            } in install.files.iter()
            {
                if matches!(
                    path.as_str(),
                    "devcontainer-features.env" | "devcontainer-features-install.sh"
                ) {
                    continue;
                }
                tar.file(&format!("{dir}/{path}"), data, *executable);
            }
            let env_lines: Vec<String> = env
                .iter()
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect();
            let mut env_file = env_lines.join("\n");
            env_file.push('\n');
            tar.file(
                &format!("{dir}/devcontainer-features.env"),
                env_file.as_bytes(),
                false,
            );
            tar.file(
                &format!("{dir}/devcontainer-features-install.sh"),
                wrapper(install, &label, &env_lines).as_bytes(),
                true,
            );
            for (k, v) in &install.meta.container_env {
                if !env_key(k) {
                    return Err(Error::Feature {
                        feature: label,
                        message: format!("containerEnv name {k:?} is not a variable name"),
                    });
                }
                if v.contains(['\n', '\r']) {
                    return Err(Error::Feature {
                        feature: label,
                        message: format!("containerEnv.{k} holds a line break"),
                    });
                }
                // As the reference CLI writes them: `$` stays live, so PATH=/x:${PATH} works.
                df.push_str(&format!(
                    "ENV {k}=\"{}\"\n",
                    v.replace('\\', "\\\\").replace('"', "\\\"")
                ));
                container_env.insert(k.clone(), v.clone());
            }
            let target = format!("{FEATURES_DIR}/{dir}");
            df.push_str(&format!(
                "COPY {dir}/ {target}/\nRUN chmod -R 0755 {target} && cd {target} && ./devcontainer-features-install.sh\n"
            ));
            if !install.meta.lifecycle.commands.is_empty() {
                lifecycle.push((
                    format!("feature {}", install.oci.id),
                    install.meta.lifecycle.clone(),
                ));
            }
        }
        df.push_str(&format!("USER {image_user}\n"));
        tar.file("Dockerfile", df.as_bytes(), false);
        Ok(BuildContext {
            dockerfile: df,
            tar: tar.finish(),
            container_env,
            lifecycle,
            notes,
        })
    }
}

/// The wrapper the reference CLI runs for a feature: a banner, the environment, then
/// `install.sh`; a failure names the feature.
fn wrapper(install: &Install, label: &str, env_lines: &[String]) -> String {
    let m = &install.meta;
    let q = |s: Option<&str>| quote(s.unwrap_or(""));
    let failed = format!(
        "ERROR: Feature \"{}\" ({}) failed to install!{}",
        m.name.as_deref().unwrap_or("Unknown"),
        label,
        m.documentation_url
            .as_deref()
            .map(|d| format!(
                " Look at the documentation at {d} for help troubleshooting this error."
            ))
            .unwrap_or_default()
    );
    let options: Vec<String> = env_lines.iter().map(|l| format!("    {l}")).collect();
    format!(
        "#!/bin/sh\nset -e\n\non_exit () {{\n\t[ $? -eq 0 ] && exit\n\techo {}\n}}\n\ntrap on_exit EXIT\n\n\
echo ===========================================================================\n\
echo {}\necho {}\necho {}\necho {}\necho {}\necho 'Options       :'\necho {}\n\
echo ===========================================================================\n\n\
set -a\n. ../devcontainer-features.builtin.env\n. ./devcontainer-features.env\nset +a\n\nchmod +x ./install.sh\n./install.sh\n",
        quote(&failed),
        quote(&format!("Feature       : {}", m.name.as_deref().unwrap_or("Unknown"))),
        quote(&format!("Description   : {}", m.description.as_deref().unwrap_or(""))),
        quote(&format!("Id            : {label}")),
        quote(&format!("Version       : {}", m.version.as_deref().unwrap_or(""))),
        quote(&format!("Documentation : {}", m.documentation_url.as_deref().unwrap_or(""))),
        q(Some(&options.join("\n"))),
    )
}

/// `s` as one single-quoted shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn plain_user(u: &str) -> bool {
    !u.is_empty()
        && !u.starts_with('-')
        && u.len() <= 64
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A shell pipeline printing the home directory of `user` (a name or uid) in the image,
/// with or without `getent`. It starts with `(`: inside `$( ... )` keep a space before it,
/// or the shell reads `$((` as arithmetic.
fn home_of(user: &str) -> String {
    let re = user.replace('.', "\\.");
    format!(
        "(getent passwd {user} 2>/dev/null || grep -E '^{re}:|^[^:]*:[^:]*:{re}:' /etc/passwd || true) | head -n 1 | cut -d: -f6"
    )
}

/// A tar built in memory with fixed owners and times, so the same features make the same
/// context (and the builder's cache holds).
#[derive(Default)]
struct Tar {
    entries: BTreeMap<String, (Vec<u8>, bool)>,
}

impl Tar {
    fn file(&mut self, path: &str, data: &[u8], executable: bool) {
        self.entries
            .insert(path.to_string(), (data.to_vec(), executable));
    }

    fn finish(self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.entries.keys() {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.insert(parent.to_string());
                p = parent;
            }
        }
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(size);
            h
        };
        // Paths were checked when the features were unpacked; writing to a Vec cannot fail.
        for d in &dirs {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            let _ = b.append_data(&mut h, format!("{d}/"), std::io::empty());
        }
        for (path, (data, exec)) in &self.entries {
            let mut h = header(
                tar::EntryType::Regular,
                if *exec { 0o755 } else { 0o644 },
                data.len() as u64,
            );
            let _ = b.append_data(&mut h, path, data.as_slice());
        }
        b.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_names_become_variables_as_the_spec_says() {
        assert_eq!(env_name("version"), "VERSION");
        assert_eq!(env_name("installZsh"), "INSTALLZSH");
        assert_eq!(env_name("node-version"), "NODE_VERSION");
        assert_eq!(env_name("2fast"), "_FAST");
        assert_eq!(env_name("__x"), "_X");
        assert_eq!(env_name("a.b c"), "A_B_C");
        assert_eq!(env_name("é"), "_");
        assert_eq!(env_name("😀x"), "_X");
    }

    #[test]
    fn quoting_keeps_values_literal() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's $(x)"), "'it'\\''s $(x)'");
    }
}

#[cfg(test)]
mod context_tests {
    use std::io::Read;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::features::{FeatureMeta, OciRef};

    fn install(id: &str, meta: serde_json::Value, options: serde_json::Value) -> Install {
        let oci = OciRef::parse(&format!("r.io/n/{id}:1")).unwrap();
        Install {
            user_id: oci.to_string(),
            meta: Arc::new(FeatureMeta::parse(id, &meta.to_string()).unwrap()),
            files: Arc::new(vec![
                File {
                    path: "install.sh".into(),
                    executable: true,
                    data: b"#!/bin/sh\n".to_vec(),
                },
                // A feature's own copy of a generated file is replaced, not kept.
                File {
                    path: "devcontainer-features.env".into(),
                    executable: false,
                    data: b"EVIL=1\n".to_vec(),
                },
            ]),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            oci,
            options,
        }
    }

    fn files(tar: &[u8]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for e in tar::Archive::new(tar).entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            out.insert(path, s);
        }
        out
    }

    #[test]
    fn one_copy_and_run_per_feature_after_its_env() {
        let a = install(
            "a",
            json!({"id": "a", "options": {"v": {"type": "string", "default": "1"}},
                   "containerEnv": {"A_HOME": "/opt/\"a\"", "PATH": "/opt/a/bin:${PATH}"}}),
            json!({"v": "it's"}),
        );
        let b = install(
            "b",
            json!({"id": "b", "postStartCommand": "echo hi"}),
            json!({}),
        );
        let ctx = BuildContext::new("busybox:latest", &[a, b], "root", "dev", "1000:1000").unwrap();
        let df = &ctx.dockerfile;
        assert!(df.starts_with("FROM busybox:latest\nUSER root\n"), "{df}");
        assert!(df.ends_with("USER 1000:1000\n"), "{df}");
        // `$( (` is a command substitution; `$((` would be arithmetic.
        assert!(
            df.contains("_REMOTE_USER_HOME=$( (getent passwd dev "),
            "{df}"
        );
        let env = df
            .find("ENV A_HOME=\"/opt/\\\"a\\\"\"\nENV PATH=\"/opt/a/bin:${PATH}\"\n")
            .unwrap();
        let run_a = df
            .find("RUN chmod -R 0755 /tmp/dev-container-features/a_1 &&")
            .unwrap();
        let run_b = df
            .find("RUN chmod -R 0755 /tmp/dev-container-features/b_2 &&")
            .unwrap();
        assert!(env < run_a && run_a < run_b, "{df}");
        let f = files(&ctx.tar);
        assert_eq!(f["Dockerfile"], *df);
        assert_eq!(f["a_1/devcontainer-features.env"], "V='it'\\''s'\n");
        assert_eq!(f["b_2/devcontainer-features.env"], "\n");
        assert_eq!(
            f["devcontainer-features.builtin.env"],
            "_CONTAINER_USER='root'\n_REMOTE_USER='dev'\n"
        );
        assert!(
            f["a_1/devcontainer-features-install.sh"].contains(". ./devcontainer-features.env\n")
        );
        assert_eq!(ctx.container_env["A_HOME"], "/opt/\"a\"");
        assert_eq!(ctx.lifecycle.len(), 1);
        assert_eq!(ctx.lifecycle[0].0, "feature b");
    }

    #[test]
    fn refuses_what_would_break_the_dockerfile() {
        let ok = || install("a", json!({"id": "a"}), json!({}));
        for (base, user, says) in [
            ("busybox\nRUN x", "root", "cannot be named"),
            ("busybox", "ro ot", "not a user name"),
            ("busybox", "-r", "not a user name"),
        ] {
            let e = BuildContext::new(base, &[ok()], user, user, "root")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{base:?} {user:?}: {e}");
        }
        for (env, says) in [
            (json!({"A\nRUN x": "1"}), "not a variable name"),
            (json!({"A": "1\nRUN x"}), "line break"),
        ] {
            let bad = install("a", json!({"id": "a", "containerEnv": env}), json!({}));
            let e = BuildContext::new("busybox", &[bad], "root", "root", "root")
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
