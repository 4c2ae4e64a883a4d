//! Body types shared by the proxy: one boxed streaming body, small fixed bodies, and a size-limited request body.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, to clients and upstreams: streamed, never collected.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What went wrong with a client's request body while it streamed upstream, if anything. The upstream request
/// then fails too, and this says whose fault that was: the client's (413, 400), not the upstream's (502).
#[derive(Debug, Default)]
pub struct BodyFault(AtomicU8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// More than `client_max_body_size` (a chunked upload, whose size is not known up front).
    TooLarge,
    /// Malformed (a bad chunk), or cut off by the client.
    Broken,
}

impl BodyFault {
    pub fn get(&self) -> Option<Fault> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Fault::TooLarge),
            2 => Some(Fault::Broken),
            _ => None,
        }
    }

    fn set(&self, fault: Fault) {
        let code = match fault {
            Fault::TooLarge => 1,
            Fault::Broken => 2,
        };
        self.0.store(code, Ordering::Relaxed);
    }
}

/// A request body that fails once more than `limit` bytes have streamed through, and records in `fault` why
/// it failed (too large, or the client's body was malformed).
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    fault: Arc<BodyFault>,
}

#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than client_max_body_size")
    }
}

impl std::error::Error for BodyTooLarge {}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, fault: Arc<BodyFault>) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            fault,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.fault.set(Fault::TooLarge);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.set(Fault::Broken);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
