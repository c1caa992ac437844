//! Per-name operation locks that exist only while someone holds or waits for them, so
//! requests for names that do not exist never grow the server's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

type Map = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// Clones share the locks (a background task takes them as requests do).
#[derive(Default, Clone)]
pub(crate) struct NameLocks(Arc<Mutex<Map>>);

impl NameLocks {
    fn map(map: &Mutex<Map>) -> MutexGuard<'_, Map> {
        map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `name`'s lock; the entry is dropped with the last holder or waiter, also
    /// when a waiter is cancelled.
    pub(crate) async fn lock(&self, name: &str) -> NameGuard {
        let entry = {
            let mut map = Self::map(&self.0);
            Entry {
                mutex: map.entry(name.to_string()).or_default().clone(),
                name: name.to_string(),
                map: self.0.clone(),
            }
        };
        let held = entry.mutex.clone().lock_owned().await;
        NameGuard {
            _held: held,
            _entry: entry,
        }
    }

    /// Names with a holder or waiter now.
    pub(crate) fn len(&self) -> usize {
        Self::map(&self.0).len()
    }
}

/// Our claim on a map entry; removes it when no one else has one.
struct Entry {
    mutex: Arc<tokio::sync::Mutex<()>>,
    name: String,
    map: Arc<Mutex<Map>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Clones are only made under the map lock, so the count cannot rise meanwhile:
        // two (the map's and ours) means no one else holds or waits.
        let mut map = NameLocks::map(&self.map);
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.name);
        }
    }
}

/// Holds a name's lock; fields drop in order, so the mutex is released before the entry
/// is checked.
pub(crate) struct NameGuard {
    _held: OwnedMutexGuard<()>,
    _entry: Entry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn entries_live_only_while_used() {
        let locks = NameLocks::default();
        for i in 0..100 {
            let g = locks.lock(&format!("n{i}")).await;
            assert_eq!(locks.len(), 1);
            drop(g);
        }
        assert_eq!(locks.len(), 0);

        // A waiter keeps the entry; the holder leaving does not remove it.
        let g = locks.lock("a").await;
        let locks = Arc::new(locks);
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);

        // A cancelled waiter leaves nothing behind either.
        let g = locks.lock("b").await;
        let timed_out = tokio::time::timeout(Duration::from_millis(20), locks.lock("b")).await;
        assert!(timed_out.is_err());
        assert_eq!(locks.len(), 1);
        drop(g);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn serializes_one_name() {
        let locks = Arc::new(NameLocks::default());
        let inside = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("x").await;
                assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(locks.len(), 0);
    }
}
