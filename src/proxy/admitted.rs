//! Serving what `conn_limit` admitted: each request counted on its connection until its response body
//! has gone out (a connection with a request in progress is never taken for idle), and a connection
//! accepted into the reserve answered for `/healthz` only, with 503 for anything else.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Either;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::{service_fn, Service};
use hyper::{Request, Response, StatusCode};

use super::access_log::LoggedBody;
use super::body::{full, BoxError, ProxyBody};
use super::conn_limit::{Admission, ConnHandle, RequestGuard};
use super::handler::{self, ConnInfo};
use super::healthz;
use super::shared::Shared;

/// How long a connection in the reserve may take to send its request and get its answer: a load
/// balancer's health check takes milliseconds, and the reserve must turn over.
pub const RESERVE_LIFETIME: Duration = Duration::from_secs(5);

/// The service of one client connection: the handler, each request counted on the connection.
pub fn service(
    info: ConnInfo,
    handle: ConnHandle,
    admission: Admission,
    shared: Arc<Shared>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<CountedBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<CountedBody>, Infallible>> + Send,
> {
    service_fn(move |req: Request<Incoming>| {
        let request = handle.request();
        handle.body_follows(!req.body().is_end_stream());
        respond(req, info.clone(), Arc::clone(&shared), request, admission)
    })
}

/// The handler's response, with `request` counted until its body is done; in the reserve, only
/// `/healthz` reaches the handler.
async fn respond(
    req: Request<Incoming>,
    info: ConnInfo,
    shared: Arc<Shared>,
    request: RequestGuard,
    admission: Admission,
) -> Result<Response<CountedBody>, Infallible> {
    if admission == Admission::Overflow && req.uri().path() != healthz::PATH {
        let response = busy().map(Either::Right);
        return Ok(response.map(|inner| CountedBody::new(inner, request)));
    }
    let response = handler::handle(req, info, shared).await?;
    Ok(response.map(|body| CountedBody::new(Either::Left(body), request)))
}

/// 503 for a request on a connection in the reserve: every connection is busy.
fn busy() -> Response<ProxyBody> {
    let mut response = Response::new(full("every connection is busy; try again\n"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A response body that keeps its request counted on the connection until it is done or dropped.
pub struct CountedBody {
    inner: Inner,
    _request: RequestGuard,
}

/// The handler's logged body, or the reserve's own 503 (`Either` delegates every call to the one it holds).
type Inner = Either<LoggedBody, ProxyBody>;

impl CountedBody {
    fn new(inner: Inner, request: RequestGuard) -> CountedBody {
        CountedBody {
            inner,
            _request: request,
        }
    }
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
