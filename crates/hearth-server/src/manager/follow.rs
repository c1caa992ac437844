//! Following output as it is written (`hearth logs -f`, `hearth prebuild logs -f`): a task
//! reads its source every [`FOLLOW_POLL`] and sends what is new to a channel that the
//! route streams as its (chunked) body, until the source is done or the client goes.
//! Polling, not a subscription: the writer may be another server (a node's console, a
//! prebuild run of another server of the database).

use std::future::Future;

use bytes::Bytes;
use tokio::sync::mpsc;

/// How often a follower reads its source for more.
pub(crate) const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// One read of a followed source.
pub(crate) struct Read {
    /// What is new since the last read (may be empty).
    pub chunk: Vec<u8>,
    /// Nothing comes after this read (the workspace stopped, the run ended).
    pub done: bool,
    /// More is waiting already: read again at once.
    pub more: bool,
}

/// Something followed.
pub(crate) trait Source: Send + 'static {
    /// What came since the last read; `None` ends the follow (the source went away or
    /// cannot be read).
    fn read(&mut self) -> impl Future<Output = Option<Read>> + Send;
}

/// Streams `first`, then what `source` reads, to the receiver returned; ends after a
/// read that is done (and has no more waiting), when a read fails, or when the receiver
/// is dropped (the client went away).
pub(crate) fn follow(first: Read, mut source: impl Source) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut read = first;
        loop {
            if !read.chunk.is_empty() && tx.send(Bytes::from(read.chunk)).await.is_err() {
                return;
            }
            if read.done && !read.more {
                return;
            }
            if !read.more {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
            read = match source.read().await {
                Some(r) => r,
                None => return,
            };
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts up to `end` in reads of at most `batch`, each marked done from `done_at` on.
    struct Counter {
        next: u8,
        end: u8,
        batch: u8,
        done_at: u8,
        reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Source for Counter {
        async fn read(&mut self) -> Option<Read> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let to = self.end.min(self.next + self.batch);
            let chunk: Vec<u8> = (self.next..to).collect();
            self.next = to;
            Some(Read {
                more: chunk.len() == usize::from(self.batch),
                done: self.next >= self.done_at,
                chunk,
            })
        }
    }

    #[tokio::test]
    async fn reads_until_done_and_drained_then_ends() {
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let src = Counter {
            next: 0,
            end: 10,
            batch: 4,
            done_at: 0,
            reads: reads.clone(),
        };
        // Done from the start, but full batches are read on until one is not full.
        let first = Read {
            chunk: vec![],
            done: true,
            more: true,
        };
        let mut rx = follow(first, src);
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// Never done; says when the follow dropped it (its task ended).
    struct Endless(Option<tokio::sync::oneshot::Sender<()>>);

    impl Source for Endless {
        async fn read(&mut self) -> Option<Read> {
            Some(Read {
                chunk: b"x".to_vec(),
                done: false,
                more: false,
            })
        }
    }

    impl Drop for Endless {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_gone_receiver_ends_the_follow() {
        let (tx, ended) = tokio::sync::oneshot::channel();
        let first = Read {
            chunk: vec![],
            done: false,
            more: false,
        };
        let mut rx = follow(first, Endless(Some(tx)));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"x"[..]));
        drop(rx);
        // (The bound only keeps a broken follow from hanging the test.)
        tokio::time::timeout(std::time::Duration::from_secs(60), ended)
            .await
            .expect("the follow ends once nobody reads it")
            .unwrap();
    }
}
