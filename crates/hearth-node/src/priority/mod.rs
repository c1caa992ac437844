//! Process priorities inside workspaces (see ARCHITECTURE.md, "Process priorities").
//!
//! Only host root can raise a priority, so the node sets the agent's class from the host
//! at start and re-attach; the agent sets each session's class before exec (it is told
//! them through its environment); the exec listener gives programs a rule names their
//! class when they start.

mod apply;
mod connector;
mod rules;

pub use apply::set_class;
pub use connector::{ExecListener, PriorityStats};
pub use rules::{Class, PriorityRules, RulesError, SchedPolicy};

/// Environment variables that tell the agent its sessions' classes ("NICE POLICY").
pub const ENV_EXEC_PTY: &str = "HEARTH_PRIORITY_EXEC_PTY";
pub const ENV_EXEC: &str = "HEARTH_PRIORITY_EXEC";

/// `class` as the agent reads it from [`ENV_EXEC_PTY`] / [`ENV_EXEC`].
pub fn agent_env(class: Class) -> String {
    format!("{} {}", class.nice, class.policy.name())
}
