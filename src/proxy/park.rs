//! Parking an idle plain HTTP/1 client connection: what a keep-alive connection holds while it waits for its
//! next request, as nginx frees its header buffers between requests.
//!
//! hyper keeps an 8 KiB read buffer, an 8 KiB write buffer and a box the size of the service's future for as
//! long as its connection lives, used or not: 22 KiB of the proxy's ~24 KiB per idle keep-alive connection
//! (benches/proxy_idle_memory.sh). Once a connection has been quiet for a while between requests (`idle_io`
//! tells, `ConnHandle::parkable` decides), `server` takes the stream back from hyper (`into_parts`) and drops
//! the rest; the stream waits here for its next bytes, then a new hyper connection serves them (its end needs none). A busy
//! connection is never quiet, so the request path allocates nothing more.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};

use super::idle_io::IdleTimeout;

/// How long a connection stays quiet between requests before it is parked: far longer than the gap between a
/// busy client's requests (microseconds to a few milliseconds), so that one never pays for a new hyper
/// connection per request; short, because every connection that made a request within it holds hyper's
/// 20 KiB, and the heap keeps its peak (glibc returns no memory from inside its arenas).
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// A client stream that first gives back what hyper had read past its last request when it was parked
/// (a pipelined request's beginning), then reads on.
pub struct Replay<S> {
    inner: S,
    leftover: Bytes,
}

impl<S> Replay<S> {
    pub fn new(inner: S) -> Replay<S> {
        Replay {
            inner,
            leftover: Bytes::new(),
        }
    }

    /// Bytes to read again before the stream's own.
    pub fn replay(&mut self, leftover: Bytes) {
        self.leftover = leftover;
    }
}

impl<S: AsyncRead + Unpin> Replay<IdleTimeout<S>> {
    /// Resolves true once the parked stream has bytes to read (kept to be read again), false at its end, once
    /// it has been idle past its timeout or fails, or once `closing` resolves (a parked connection is idle:
    /// it closes at once). Its end needs no hyper connection to be found.
    pub async fn wait<C: Future<Output = ()>>(&mut self, mut closing: Pin<&mut C>) -> bool {
        std::future::poll_fn(|cx| {
            if closing.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            // On the stack while polled only: a parked task holds no buffer.
            let mut bytes = [0u8; 1024];
            let mut buf = ReadBuf::new(&mut bytes);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(false),
                Poll::Ready(Ok(())) => {
                    self.leftover = Bytes::copy_from_slice(buf.filled());
                    self.inner.watch_for_quiet();
                    Poll::Ready(true)
                }
                Poll::Ready(Err(_)) => Poll::Ready(false),
            }
        })
        .await
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.leftover.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.leftover.len().min(buf.remaining());
        buf.put_slice(&this.leftover[..n]);
        this.leftover.advance(n);
        if this.leftover.is_empty() {
            // An empty view would still hold the buffer it came from (hyper's 8 KiB).
            this.leftover = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

super::write_through::write_through!(Replay);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What hyper had read past its last request comes first, then the stream's own bytes.
    #[tokio::test(flavor = "current_thread")]
    async fn leftover_bytes_are_read_before_the_stream() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut stream = Replay::new(ours);
        stream.replay(Bytes::from_static(b"GET / HT"));
        theirs.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut read = Vec::new();
        let mut buf = [0u8; 3];
        while read.len() < 16 {
            let n = stream.read(&mut buf).await.unwrap();
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(read, b"GET / HTTP/1.1\r\n");
    }
}
