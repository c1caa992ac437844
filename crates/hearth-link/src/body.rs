//! One call's bytes in each direction: a few head frames (arguments, progress lines, the
//! result), then, for calls that carry data, the raw data until the stream ends.
//!
//! A head frame is `[u8 kind][u32 big-endian length][payload]`. Its header is checked
//! against the caller's bound before the payload is buffered, so a peer cannot make us
//! hold more than that.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// The call and its arguments (JSON), the first frame of every request.
pub(crate) const ARGS: u8 = 1;
/// A progress line (UTF-8) of a long call.
pub(crate) const PROGRESS: u8 = 2;
/// The call's result (JSON); data, if the call has any, follows raw.
pub(crate) const OK: u8 = 3;
/// The call failed (JSON `WireError`); nothing follows.
pub(crate) const ERR: u8 = 4;

const HEADER: usize = 5;

/// Chunks in flight per direction beyond what h2's flow-control window holds.
const QUEUE: usize = 4;

/// Data is read and sent in pieces of this size.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A body fed from a channel: what one side writes, the other reads as it comes, and a
/// full channel makes the writer wait (h2 flow control does the rest).
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// The writing end of a [`ChannelBody`]; dropping every clone ends the body cleanly.
#[derive(Clone)]
pub(crate) struct Sender {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

/// The peer is gone (or stopped reading this stream).
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) fn channel() -> (Sender, ChannelBody) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Sender { tx }, ChannelBody { rx })
}

impl Sender {
    pub(crate) async fn frame(&self, kind: u8, payload: &[u8]) -> Result<(), Closed> {
        let len = u32::try_from(payload.len()).map_err(|_| Closed)?;
        let mut buf = BytesMut::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&[kind]);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(payload);
        self.data(buf.freeze()).await
    }

    pub(crate) async fn json<T: serde::Serialize>(&self, kind: u8, v: &T) -> Result<(), Closed> {
        // Serializing our own types to a Vec cannot fail (no maps with non-string keys).
        let bytes = serde_json::to_vec(v).map_err(|_| Closed)?;
        self.frame(kind, &bytes).await
    }

    pub(crate) async fn data(&self, b: Bytes) -> Result<(), Closed> {
        self.tx.send(Ok(b)).await.map_err(|_| Closed)
    }

    /// Ends the body with an error: the peer sees a reset stream, never a clean end, so a
    /// half-sent file is not taken for a whole one.
    pub(crate) async fn fail(&self, e: io::Error) {
        let _ = self.tx.send(Err(e)).await;
    }
}

/// Reads a peer's body: head frames, then raw data.
pub(crate) struct Reader<B> {
    body: B,
    buf: BytesMut,
    ended: bool,
}

impl<B> Reader<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub(crate) fn new(body: B) -> Reader<B> {
        Reader {
            body,
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// Reads one more piece into the buffer; false at the end of the body.
    async fn fill(&mut self) -> io::Result<bool> {
        while !self.ended {
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        e.to_string(),
                    ))
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        if !data.is_empty() {
                            self.buf.extend_from_slice(&data);
                            return Ok(true);
                        }
                    }
                }
            }
        }
        Ok(false)
    }

    /// The next head frame; `None` when the body ended before one began. A payload over
    /// `max` bytes is refused before it is read.
    pub(crate) async fn head(&mut self, max: usize) -> io::Result<Option<(u8, Bytes)>> {
        while self.buf.len() < HEADER {
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(truncated());
            }
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes is over the limit of {max}"),
            ));
        }
        while self.buf.len() < HEADER + len {
            if !self.fill().await? {
                return Err(truncated());
            }
        }
        self.buf.advance(HEADER);
        Ok(Some((kind, self.buf.split_to(len).freeze())))
    }

    /// The next piece of raw data (what was buffered past the head first); `None` at a
    /// clean end.
    pub(crate) async fn data(&mut self) -> io::Result<Option<Bytes>> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the stream ended inside a frame",
    )
}

/// Copies between a local socket and one h2 stream (its reader and sender) in both
/// directions, with half-closes passed on, until both directions are done. The peer
/// refusing more bytes ends only the upward copy; an error coming down drops the socket
/// whole, so its user sees the connection fail.
pub(crate) async fn pump<S, B>(sock: S, mut reader: Reader<B>, tx: Sender)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(sock);
    let up = async move {
        let mut buf = vec![0u8; CHUNK];
        let r = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if tx.data(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break Err(());
                    }
                }
                Err(_) => break Err(()),
            }
        };
        // Ends the peer's body now: an async block's captures live as long as the
        // future, which waits for the other direction too.
        drop(tx);
        r
    };
    let down = async move {
        while let Some(b) = reader.data().await.map_err(drop)? {
            wr.write_all(&b).await.map_err(drop)?;
        }
        wr.shutdown().await.map_err(drop)
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            // The peer no longer taking our bytes ends only this direction: what it already
            // sent (an exec's last output and exit code, a response's tail) must still
            // arrive, and the peer stops reading exactly when it has said its last word.
            _ = &mut up, if !up_done => up_done = true,
            // Our socket is gone: nobody is left to read what comes down.
            r = &mut down, if !down_done => { if r.is_err() { return } down_done = true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames split at every byte boundary come back whole, and data after the head is
    /// handed on raw.
    #[tokio::test]
    async fn head_frames_reassemble_and_data_follows() {
        let (tx, body) = channel();
        let writer = tokio::spawn(async move {
            let mut all = Vec::new();
            all.extend_from_slice(&[ARGS, 0, 0, 0, 3]);
            all.extend_from_slice(b"abc");
            all.extend_from_slice(&[OK, 0, 0, 0, 0]);
            all.extend_from_slice(b"raw tail");
            for b in all {
                tx.data(Bytes::copy_from_slice(&[b])).await.unwrap();
            }
        });
        let mut r = Reader::new(body);
        assert_eq!(r.head(16).await.unwrap(), Some((ARGS, Bytes::from("abc"))));
        assert_eq!(r.head(16).await.unwrap(), Some((OK, Bytes::new())));
        let mut tail = Vec::new();
        while let Some(d) = r.data().await.unwrap() {
            tail.extend_from_slice(&d);
        }
        assert_eq!(tail, b"raw tail");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn frames_over_the_bound_are_refused_before_their_payload() {
        let (tx, body) = channel();
        tx.data(Bytes::from_static(&[OK, 0xff, 0xff, 0xff, 0xff]))
            .await
            .unwrap();
        let mut r = Reader::new(body);
        let e = r.head(1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[tokio::test]
    async fn a_body_ending_inside_a_frame_is_an_error_and_a_failed_one_too() {
        let (tx, body) = channel();
        tx.data(Bytes::from_static(&[OK, 0, 0, 0, 9, 1]))
            .await
            .unwrap();
        drop(tx);
        let e = Reader::new(body).head(16).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let (tx, body) = channel();
        tx.data(Bytes::from_static(b"part")).await.unwrap();
        tx.fail(io::Error::other("disk gone")).await;
        let mut r = Reader::new(body);
        assert_eq!(r.data().await.unwrap(), Some(Bytes::from("part")));
        assert!(r.data().await.is_err());
    }

    /// The race behind a lost exit code: the node finishes a session and stops reading
    /// its input while the client still writes (stdin EOF). What the node sent last must
    /// still reach the local socket.
    #[tokio::test]
    async fn a_peer_that_stops_reading_still_delivers_what_it_sent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (up_tx, up_body) = channel();
        drop(up_body);
        let (down_tx, down_body) = channel();
        let (mut ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        ours.write_all(b"stdin eof").await.unwrap();
        let pump = tokio::spawn(pump(theirs, Reader::new(down_body), up_tx));
        // Sent after the upward copy has certainly failed.
        tokio::task::yield_now().await;
        down_tx.data(Bytes::from_static(b"exit 0")).await.unwrap();
        drop(down_tx);
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"exit 0");
        pump.await.unwrap();
    }
}
