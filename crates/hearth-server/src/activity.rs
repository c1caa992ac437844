//! When each workspace was last used, and how many sessions are open on it now.
//!
//! The one place activity is recorded: proxied requests and port-forwards (and later
//! SSH and exec sessions) report here, and idle auto-stop reads [`Activity::idle_for`]
//! and [`Activity::open_sessions`]. In memory only: after a restart every workspace
//! counts as active from the server's start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy)]
struct Entry {
    last: Instant,
    last_wall: SystemTime,
    open: usize,
}

/// Keyed by workspace id (a name can be reused after `rm`).
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    map: Mutex<HashMap<String, Entry>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            map: Mutex::default(),
        }
    }
}

impl Activity {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves the map consistent (single inserts).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records activity on workspace `id` now.
    pub fn touch(&self, id: &str) {
        let now = (Instant::now(), SystemTime::now());
        self.map()
            .entry(id.to_string())
            .and_modify(|e| (e.last, e.last_wall) = now)
            .or_insert(Entry {
                last: now.0,
                last_wall: now.1,
                open: 0,
            });
    }

    /// Opens a session (a WebSocket, a forwarded connection, a streamed body) on `id`: the
    /// workspace counts as in use until the guard drops, which is also recorded as
    /// activity.
    pub fn session(self: &Arc<Self>, id: &str) -> Session {
        self.touch(id);
        if let Some(e) = self.map().get_mut(id) {
            e.open += 1;
        }
        Session {
            activity: self.clone(),
            id: id.to_string(),
        }
    }

    /// Sessions open on `id` now.
    pub fn open_sessions(&self, id: &str) -> usize {
        self.map().get(id).map_or(0, |e| e.open)
    }

    /// How long since `id` was last active (or since the server started, if never).
    pub fn idle_for(&self, id: &str) -> Duration {
        let last = self.map().get(id).map_or(self.started, |e| e.last);
        last.elapsed()
    }

    /// Wall-clock time of the last activity on `id` since the server started.
    pub fn last_active(&self, id: &str) -> Option<SystemTime> {
        self.map().get(id).map(|e| e.last_wall)
    }

    /// Forgets a removed workspace.
    pub fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// An open session; see [`Activity::session`].
#[derive(Debug)]
pub struct Session {
    activity: Arc<Activity>,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        let now = (Instant::now(), SystemTime::now());
        if let Some(e) = self.activity.map().get_mut(&self.id) {
            e.open = e.open.saturating_sub(1);
            (e.last, e.last_wall) = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_count_and_touch() {
        let a = Arc::new(Activity::default());
        assert_eq!(a.open_sessions("w"), 0);
        assert!(a.last_active("w").is_none());
        let s1 = a.session("w");
        let s2 = a.session("w");
        assert_eq!(a.open_sessions("w"), 2);
        assert!(a.last_active("w").is_some());
        std::thread::sleep(Duration::from_millis(20));
        assert!(a.idle_for("w") >= Duration::from_millis(20));
        // Closing is activity: idle since the close, not since the open. (Measured
        // against a clock read before the close, so a slow machine cannot fail it.)
        let before_close = Instant::now();
        drop(s1);
        assert_eq!(a.open_sessions("w"), 1);
        let idle = a.idle_for("w");
        assert!(idle <= before_close.elapsed(), "closing is activity");
        drop(s2);
        assert_eq!(a.open_sessions("w"), 0);
        assert_eq!(a.open_sessions("other"), 0);
        a.forget("w");
        assert!(a.last_active("w").is_none());
    }
}
