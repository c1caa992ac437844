//! The class (nice value and scheduling policy) of the processes sessions start.
//!
//! The node runs the agent at a high priority (a low nice value only host root can set)
//! and tells it each session kind's class in its environment; every child gets its class
//! before exec, so nothing inherits the agent's priority.

/// The node's variables (see hearth-node's `priority` module).
pub const ENV_EXEC_PTY: &str = "HEARTH_PRIORITY_EXEC_PTY";
pub const ENV_EXEC: &str = "HEARTH_PRIORITY_EXEC";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub nice: i32,
    pub policy: i32,
}

/// Without word from the node (an older node, a test): the kernel's defaults.
pub const DEFAULT: Class = Class {
    nice: 0,
    policy: libc::SCHED_OTHER,
};

/// The classes of sessions with and without a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClasses {
    pub pty: Class,
    pub pipes: Class,
}

impl Default for SessionClasses {
    fn default() -> Self {
        SessionClasses {
            pty: DEFAULT,
            pipes: DEFAULT,
        }
    }
}

/// Parses "NICE POLICY" (`0 other`, `10 batch`, `19 idle`).
pub fn parse(v: &str) -> Result<Class, String> {
    let mut it = v.split_whitespace();
    let nice = it
        .next()
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| (-20..=19).contains(n))
        .ok_or_else(|| format!("bad priority class {v:?}: no nice value in -20..=19"))?;
    let policy = match it.next() {
        None | Some("other") => libc::SCHED_OTHER,
        Some("batch") => libc::SCHED_BATCH,
        Some("idle") => libc::SCHED_IDLE,
        Some(p) => return Err(format!("bad priority class {v:?}: unknown policy {p:?}")),
    };
    Ok(Class { nice, policy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_nodes_format() {
        assert_eq!(parse("0 other"), Ok(DEFAULT));
        assert_eq!(
            parse("19 idle"),
            Ok(Class {
                nice: 19,
                policy: libc::SCHED_IDLE
            })
        );
        assert_eq!(parse("-5").map(|c| c.nice), Ok(-5));
        assert!(parse("20 other").is_err());
        assert!(parse("x").is_err());
        assert!(parse("0 fifo").is_err());
    }
}
