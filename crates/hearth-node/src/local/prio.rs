//! The agent's priority class, set from the host (see `crate::priority`).

use super::Inner;
use crate::WorkspaceId;

impl Inner {
    /// Gives a running workspace's agent (host pid `pid`) its class. Idempotent: run at
    /// every start and re-attach. A failure leaves the workspace running at the class it
    /// inherited, so it is logged, not returned.
    pub(super) fn prioritize_agent(&self, id: &WorkspaceId, pid: u32) {
        let class = self.cfg.priority.agent;
        if let Err(e) = self.host.set_priority(pid, class) {
            tracing::warn!(%id, pid, nice = class.nice, "cannot set the agent's priority: {e}");
        }
    }

    /// [`Inner::prioritize_agent`] on re-attach, only for an agent that puts its sessions
    /// into their class: one started by an older node would hand its own priority to
    /// everything it runs until the workspace restarts.
    pub(super) fn reprioritize_agent(&self, id: &WorkspaceId, pid: u32) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let marker = format!("{}=", crate::priority::ENV_EXEC_PTY);
        let knows = environ
            .split(|b| *b == 0)
            .any(|kv| kv.starts_with(marker.as_bytes()));
        if knows {
            self.prioritize_agent(id, pid);
        } else {
            tracing::info!(%id, "agent started by an older node: its priority stays until the workspace restarts");
        }
    }

    /// What the agent reads to give its sessions their class before exec.
    pub(super) fn priority_env(&self) -> [String; 2] {
        use crate::priority::{agent_env, ENV_EXEC, ENV_EXEC_PTY};
        let p = &self.cfg.priority;
        [
            format!("{ENV_EXEC_PTY}={}", agent_env(p.exec_pty)),
            format!("{ENV_EXEC}={}", agent_env(p.exec)),
        ]
    }
}
