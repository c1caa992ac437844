//! Which running workspaces are still alive, without reading their state files: a pidfd
//! per container init, learnt when a start or status read proved the pid is the
//! container's. A listing asks about hundreds at once with one poll(2).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::WorkspaceId;

#[derive(Default)]
pub(super) struct Liveness {
    inits: Mutex<HashMap<WorkspaceId, Init>>,
}

struct Init {
    pid: u32,
    /// Readable once the process has exited.
    fd: OwnedFd,
}

impl Liveness {
    /// Remembers `pid` as `id`'s init. `verify` must say again, after the pidfd is open,
    /// that `pid` is the container's, so a pid reused in between is never taken for it.
    /// Best effort: without a pidfd (old kernel, fd limit) the caller reads state files.
    pub(super) fn track(&self, id: &WorkspaceId, pid: u32, verify: impl FnOnce() -> bool) {
        let mut inits = self.inits.lock().unwrap_or_else(|p| p.into_inner());
        if inits.get(id).is_some_and(|i| i.pid == pid) {
            return;
        }
        let Some(p) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return;
        };
        match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
            Ok(fd) if verify() => {
                inits.insert(id.clone(), Init { pid, fd });
            }
            Ok(_) => {
                inits.remove(id);
            }
            Err(e) => {
                inits.remove(id);
                tracing::debug!(%id, pid, error = %e, "no pidfd; status reads state files");
            }
        }
    }

    pub(super) fn forget(&self, id: &WorkspaceId) {
        self.inits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// For each of `ids`: `Some(pid)` if its tracked init is alive, `None` if it is not
    /// tracked or has exited (those are forgotten; the caller reads their state).
    pub(super) fn alive<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a WorkspaceId>,
    ) -> Vec<Option<u32>> {
        let mut inits = self.inits.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<&WorkspaceId> = ids.into_iter().collect();
        let mut out = vec![None; ids.len()];
        let tracked: Vec<(usize, u32)> = ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| inits.get(*id).map(|init| (i, init.pid)))
            .collect();
        let exited: Vec<bool> = {
            let mut fds: Vec<PollFd> = tracked
                .iter()
                .filter_map(|(i, _)| inits.get(ids[*i]))
                .map(|init| PollFd::new(init.fd.as_fd(), PollFlags::POLLIN))
                .collect();
            if let Err(e) = nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                tracing::debug!(error = %e, "poll of workspace pidfds failed");
                return out;
            }
            fds.iter()
                .map(|f| f.revents().is_none_or(|r| !r.is_empty()))
                .collect()
        };
        for ((i, pid), gone) in tracked.into_iter().zip(exited) {
            if gone {
                inits.remove(ids[i]);
            } else {
                out[i] = Some(pid);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_inits_are_told_from_running_ones() {
        let live = Liveness::default();
        let (a, b, c) = (
            WorkspaceId::new("aa01").unwrap(),
            WorkspaceId::new("bb02").unwrap(),
            WorkspaceId::new("cc03").unwrap(),
        );
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut quick = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        live.track(&a, sleeper.id(), || true);
        live.track(&b, quick.id(), || true);
        // A pid the caller could not confirm is not taken.
        live.track(&c, sleeper.id(), || false);
        assert_eq!(
            live.alive([&a, &b, &c]),
            vec![Some(sleeper.id()), Some(quick.id()), None]
        );
        quick.kill().unwrap();
        quick.wait().unwrap();
        assert_eq!(live.alive([&a, &b]), vec![Some(sleeper.id()), None]);
        // An exited one is forgotten, so a later start can track its new init.
        assert!(!live.inits.lock().unwrap().contains_key(&b));
        live.forget(&a);
        assert_eq!(live.alive([&a]), vec![None]);
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
