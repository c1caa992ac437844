//! Priority rules: which scheduling class a workspace process gets, by how it was started
//! (the agent itself, an exec session with or without a terminal) and by the executable
//! it runs. Built-in defaults, optionally changed by a JSON file given to `hearth server`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

/// Longest `comm` the kernel keeps (TASK_COMM_LEN - 1): longer names are cut to this.
const COMM_LEN: usize = 15;

/// Compilers, linkers, build drivers and test runners. Their children inherit the class,
/// so a `make` or `cargo` makes everything under it batch. Interpreters and runtimes that
/// also run editors' language servers (`java`, `node`, `python`) are left out: they
/// inherit the class of what started them.
const BUILTIN_BATCH: &[&str] = &[
    // C, C++, assemblers and linkers
    "cc1",
    "cc1plus",
    "cc1obj",
    "cc1objplus",
    "f951",
    "lto1",
    "lto-wrapper",
    "collect2",
    "cc",
    "c++",
    "gcc",
    "g++",
    "clang",
    "clang++",
    "as",
    "ld",
    "ld.bfd",
    "ld.gold",
    "gold",
    "ld.lld",
    "lld",
    "mold",
    "ld.mold",
    // build drivers
    "make",
    "gmake",
    "ninja",
    "cmake",
    "meson",
    "bazel",
    "scons",
    // Rust, Go, JVM, .NET
    "rustc",
    "cargo",
    "go",
    "javac",
    "kotlinc",
    "scalac",
    "gradle",
    "mvn",
    "dotnet",
    // JavaScript toolchain
    "tsc",
    "esbuild",
    "webpack",
    "rollup",
    "vite",
    "babel",
    "swc",
    // test runners
    "pytest",
    "py.test",
    "jest",
    "vitest",
    "mocha",
    "ctest",
    "tox",
];

/// How a thread is scheduled inside its workspace's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedPolicy {
    /// SCHED_OTHER (CFS/EEVDF by nice).
    #[serde(alias = "normal")]
    Other,
    /// SCHED_BATCH: like other, but never preempts on wake-up.
    Batch,
    /// SCHED_IDLE: runs only when nothing else in the group wants the CPU.
    Idle,
}

impl SchedPolicy {
    pub fn as_raw(self) -> i32 {
        match self {
            SchedPolicy::Other => libc::SCHED_OTHER,
            SchedPolicy::Batch => libc::SCHED_BATCH,
            SchedPolicy::Idle => libc::SCHED_IDLE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SchedPolicy::Other => "other",
            SchedPolicy::Batch => "batch",
            SchedPolicy::Idle => "idle",
        }
    }
}

/// A priority class: nice value plus scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    #[serde(deserialize_with = "nice")]
    pub nice: i32,
    #[serde(default = "other")]
    pub policy: SchedPolicy,
}

fn other() -> SchedPolicy {
    SchedPolicy::Other
}

/// A nice value, refused (with the file position) outside -20..=19.
fn nice<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let n = i64::deserialize(d)?;
    if !(-20..=19).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "nice {n} is out of range (-20..=19)"
        )));
    }
    Ok(n as i32)
}

/// The class the agent itself runs in: above everything it starts, set from the host
/// (only host root may lower a nice value).
pub const AGENT: Class = Class {
    nice: -10,
    policy: SchedPolicy::Other,
};
/// Exec sessions with a terminal: a person typing.
pub const INTERACTIVE: Class = Class {
    nice: 0,
    policy: SchedPolicy::Other,
};
/// Exec sessions without a terminal and everything no rule names.
pub const DEFAULT: Class = INTERACTIVE;
/// Compilers and the like (see `ARCHITECTURE.md` for the measurement behind it).
pub const BATCH: Class = Class {
    nice: 19,
    policy: SchedPolicy::Idle,
};

/// The rules file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    classes: BTreeMap<String, Class>,
    #[serde(default)]
    started: Started,
    #[serde(default)]
    rules: Vec<Rule>,
    /// `false` drops the built-in executable rules (the file's rules are all there is).
    #[serde(default = "yes")]
    builtin_rules: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Started {
    #[serde(default = "agent_name")]
    agent: String,
    #[serde(default = "interactive_name")]
    exec_pty: String,
    #[serde(default = "default_name")]
    exec: String,
}

impl Default for Started {
    fn default() -> Self {
        Started {
            agent: agent_name(),
            exec_pty: interactive_name(),
            exec: default_name(),
        }
    }
}

fn agent_name() -> String {
    "agent".into()
}
fn interactive_name() -> String {
    "interactive".into()
}
fn default_name() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    /// Executable basenames: matched against the name the process was started by
    /// (`comm`) and the basename of the file it runs (`/proc/PID/exe`).
    exe: Vec<String>,
    class: String,
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("priority rules {path}: {message}")]
pub struct RulesError {
    pub path: String,
    pub message: String,
}

/// The resolved rules: classes by start kind and an executable-name lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityRules {
    /// The agent (workspace PID 1).
    pub agent: Class,
    /// Processes an exec session starts with a terminal.
    pub exec_pty: Class,
    /// Processes an exec session starts without a terminal.
    pub exec: Class,
    /// Executable basename -> (class name, class).
    by_exe: HashMap<Vec<u8>, (String, Class)>,
    /// The same keyed by the first 15 bytes, as `comm` holds them.
    by_comm: HashMap<Vec<u8>, (String, Class)>,
}

impl Default for PriorityRules {
    fn default() -> Self {
        Self::build(File {
            builtin_rules: true,
            ..Default::default()
        })
        .unwrap_or_else(|(_, m)| unreachable!("built-in rules are valid: {m}"))
    }
}

impl PriorityRules {
    /// Reads and checks a rules file; an error names the file and the line.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let err = |message: String| RulesError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// Parses the JSON text of a rules file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::build(file).map_err(|(needle, m)| match needle.and_then(|n| line_of(text, &n)) {
            Some(line) => format!("{m} at line {line}"),
            None => m,
        })
    }

    /// The class an exec'd program gets from its names, if a rule names it: the basename
    /// of its executable first, then the name it was started as (`comm`; a script's
    /// name, or a symlink's such as `cc`).
    pub fn for_exe(&self, comm: &[u8], exe_basename: Option<&[u8]>) -> Option<(&str, Class)> {
        exe_basename
            .and_then(|b| self.for_file(b))
            .or_else(|| self.for_comm(comm))
    }

    /// By the basename of the executable file.
    pub fn for_file(&self, basename: &[u8]) -> Option<(&str, Class)> {
        self.by_exe.get(basename).map(|(n, c)| (n.as_str(), *c))
    }

    /// By `comm`, which the kernel cuts to 15 bytes.
    pub fn for_comm(&self, comm: &[u8]) -> Option<(&str, Class)> {
        self.by_comm
            .get(&comm[..comm.len().min(COMM_LEN)])
            .map(|(n, c)| (n.as_str(), *c))
    }

    /// Whether any executable rule exists (no rules: no listener needed).
    pub fn has_exe_rules(&self) -> bool {
        !self.by_exe.is_empty()
    }

    /// On failure: the text to look for in the file (for its line) and the message.
    fn build(file: File) -> Result<Self, (Option<String>, String)> {
        let mut classes: BTreeMap<String, Class> = [
            ("agent", AGENT),
            ("interactive", INTERACTIVE),
            ("default", DEFAULT),
            ("batch", BATCH),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
        classes.extend(file.classes);
        let class = |name: &str| {
            classes.get(name).copied().ok_or_else(|| {
                (
                    Some(format!("\"{name}\"")),
                    format!(
                        "unknown class {name:?} (known: {})",
                        classes.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
        };
        let agent = class(&file.started.agent)?;
        let exec_pty = class(&file.started.exec_pty)?;
        let exec = class(&file.started.exec)?;
        // The agent starts sessions itself, in the workspace's user namespace: it can make
        // a child nicer than itself but never less nice.
        for (what, name, c) in [
            ("exec_pty", &file.started.exec_pty, exec_pty),
            ("exec", &file.started.exec, exec),
        ] {
            if c.nice < agent.nice {
                return Err((
                    Some(format!("\"{what}\"")),
                    format!(
                        "started.{what} uses class {name:?} with nice {}, below the agent's {}: \
                         the agent cannot raise a session above itself (raise the agent's class)",
                        c.nice, agent.nice
                    ),
                ));
            }
        }
        let mut rules = file.rules;
        if file.builtin_rules {
            rules.push(Rule {
                exe: BUILTIN_BATCH.iter().map(|s| s.to_string()).collect(),
                class: "batch".into(),
            });
        }
        let mut by_exe = HashMap::new();
        let mut by_comm = HashMap::new();
        for r in &rules {
            let c = class(&r.class)?;
            for name in &r.exe {
                if name.is_empty() || name.contains('/') || name.contains('\0') {
                    return Err((
                        Some(format!("\"{name}\"")),
                        format!("exe {name:?} is not a file name (no path, not empty)"),
                    ));
                }
                let b = name.as_bytes();
                // The first rule naming an executable wins.
                by_exe
                    .entry(b.to_vec())
                    .or_insert_with(|| (r.class.clone(), c));
                by_comm
                    .entry(b[..b.len().min(COMM_LEN)].to_vec())
                    .or_insert_with(|| (r.class.clone(), c));
            }
        }
        Ok(PriorityRules {
            agent,
            exec_pty,
            exec,
            by_exe,
            by_comm,
        })
    }
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let at = text.find(needle)?;
    Some(text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_make_compilers_batch() {
        let r = PriorityRules::default();
        assert_eq!(r.agent.nice, -10);
        assert_eq!(r.exec_pty, INTERACTIVE);
        assert_eq!(r.exec.nice, 0);
        for name in ["cc1", "cc1plus", "rustc", "cargo", "make", "ld.lld", "jest"] {
            assert_eq!(
                r.for_exe(name.as_bytes(), None),
                Some(("batch", BATCH)),
                "{name}"
            );
        }
        for name in ["bash", "sh", "vim", "java", "node", "python3", "cc1x"] {
            assert_eq!(r.for_exe(name.as_bytes(), None), None, "{name}");
        }
    }

    #[test]
    fn matches_by_exe_basename_when_comm_differs() {
        let r = PriorityRules::default();
        // A symlink `c-compiler -> gcc`: comm is the link's name, exe the target's.
        assert_eq!(
            r.for_exe(b"c-compiler", Some(b"gcc")).map(|(n, _)| n),
            Some("batch")
        );
        assert_eq!(r.for_exe(b"c-compiler", Some(b"bash")), None);
    }

    #[test]
    fn long_names_match_their_truncated_comm() {
        let r = PriorityRules::parse(
            r#"{"rules": [{"exe": ["x86_64-linux-gnu-gcc-12"], "class": "batch"}]}"#,
        )
        .unwrap();
        // The kernel keeps 15 bytes of the name in comm.
        assert!(r.for_exe(b"x86_64-linux-gn", None).is_some());
        assert!(r
            .for_exe(b"other", Some(b"x86_64-linux-gnu-gcc-12"))
            .is_some());
        assert!(r.for_exe(b"x86_64-linux", None).is_none());
    }

    #[test]
    fn file_rules_come_before_builtins_and_add_classes() {
        let r = PriorityRules::parse(
            r#"{
                "classes": {"low": {"nice": 5, "policy": "batch"}, "batch": {"nice": 10}},
                "started": {"exec": "low"},
                "rules": [
                    {"exe": ["cc1"], "class": "default"},
                    {"exe": ["my-indexer"], "class": "low"}
                ]
            }"#,
        )
        .unwrap();
        let low = Class {
            nice: 5,
            policy: SchedPolicy::Batch,
        };
        assert_eq!(r.exec, low);
        assert_eq!(r.exec_pty, INTERACTIVE);
        assert_eq!(r.for_exe(b"cc1", None), Some(("default", DEFAULT)));
        assert_eq!(r.for_exe(b"my-indexer", None), Some(("low", low)));
        // The file redefined the built-in batch class.
        let batch = Class {
            nice: 10,
            policy: SchedPolicy::Other,
        };
        assert_eq!(r.for_exe(b"rustc", None), Some(("batch", batch)));
    }

    #[test]
    fn builtin_rules_can_be_dropped() {
        let r = PriorityRules::parse(
            r#"{"builtin_rules": false, "rules": [{"exe": ["sleep"], "class": "batch"}]}"#,
        )
        .unwrap();
        assert!(r.for_exe(b"cc1", None).is_none());
        assert!(r.for_exe(b"sleep", None).is_some());
        let none = PriorityRules::parse(r#"{"builtin_rules": false}"#).unwrap();
        assert!(!none.has_exe_rules());
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let cases = [
            ("{\n  \"rules\": [\n    {\"exe\": [\"cc1\"], \"class\": \"fast\"}\n  ]\n}", "unknown class \"fast\"", 3),
            ("{\n  \"classes\": {\n    \"x\": {\"nice\": 25}\n  }\n}", "nice 25 is out of range", 3),
            ("{\n  \"rulez\": []\n}", "unknown field `rulez`", 2),
            ("{\n  \"rules\": [\n    {\"exe\": [\"/usr/bin/cc1\"], \"class\": \"batch\"}\n  ]\n}", "is not a file name", 3),
            ("{\n  \"classes\": {\"x\": {\"nice\": 0, \"policy\": \"fifo\"}}\n}", "unknown variant `fifo`", 2),
            ("{\n  \"rules\": [\n", "EOF", 3),
            (
                "{\n  \"started\": {\n    \"exec_pty\": \"default\", \"agent\": \"interactive\", \"exec\": \"default\"\n  }\n}",
                "",
                0,
            ),
            (
                "{\n  \"classes\": {\"rt\": {\"nice\": -15}},\n  \"started\": {\"exec_pty\": \"rt\"}\n}",
                "below the agent's -10",
                3,
            ),
        ];
        for (text, want, line) in cases {
            let got = PriorityRules::parse(text);
            if line == 0 {
                // Valid: a session class at or above the agent's nice.
                assert!(got.is_ok(), "{text}: {got:?}");
                continue;
            }
            let e = got.expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains(&format!("line {line}")), "{text}: {e}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prio.json");
        std::fs::write(&p, "{\"rules\": 1}").unwrap();
        let e = PriorityRules::load(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("priority rules {}: ", p.display())),
            "{e}"
        );
        assert!(e.contains("line 1"), "{e}");
        let e = PriorityRules::load(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }
}
