//! Accept loops and client connections: HTTP/1.1 on plain listeners, HTTP/1.1 or HTTP/2 (by ALPN) over TLS.
//! Every worker runs an accept loop on each listener. Slowloris protection is the stream's head clock
//! (`idle_io`); idle connections end through `IdleTimeout`; a stop
//! request closes the listeners and lets each connection finish its in-flight requests.
#![forbid(unsafe_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::server::conn::http1;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use super::access_log::AccessLog;
use super::admitted;
use super::conn_limit::{Admission, Closed, ConnHandle, Counted};
use super::handler::ConnInfo;
use super::head_limits;
use super::idle_io::IdleTimeout;
use super::park::{self, Replay};
use super::peers::{Accepted, Peers, Stream};
use super::shared::Shared;
use super::tls::OneFill;

pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

pub struct BoundListener {
    pub listener: Listener,
    pub tls: bool,
    pub label: String,
}

/// Held by every connection task; the server is drained when the last clone is dropped.
pub type DrainGuard = mpsc::Sender<()>;

/// Run the accept loop of one listener until `stop` turns true. Each connection is served by the worker
/// serving the fewest (this one on a tie): workers woken for the same listener race for its connections,
/// and one that wins a burst would otherwise serve most of them while another core idles.
pub async fn accept_loop(
    bound: BoundListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    drain: DrainGuard,
    peers: Arc<Peers>,
) {
    loop {
        // At max_connections and the reserve, new connections wait in the backlog (conn_limit).
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = async {
                shared.conns.room().await;
                accept(&bound.listener).await
            } => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let accepted = Accepted {
                    stream,
                    remote,
                    tls: bound.tls,
                    load: peers.assign(),
                };
                if let Some(here) = peers.hand_off(accepted) {
                    serve_here(here, &shared, &drain);
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on a listener that stays readable.
                tracing::error!(listener = %bound.label, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::info!(listener = %bound.label, "stopped accepting");
}

/// Serve the connections other workers accepted for this one, until `stop` turns true.
pub async fn receive_loop(
    mut handed: mpsc::UnboundedReceiver<Accepted>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    drain: DrainGuard,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = handed.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
        };
        serve_here(accepted, &shared, &drain);
    }
}

/// Admit and serve a connection on this worker.
fn serve_here(accepted: Accepted, shared: &Arc<Shared>, drain: &DrainGuard) {
    let Accepted {
        stream,
        remote,
        tls,
        load,
    } = match accepted.with_stream(Stream::register) {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!("a connection handed to this worker failed: {e}");
            return;
        }
    };
    let admitted = shared.conns.admit();
    let (admission, handle) = (admitted.admission, admitted.handle);
    let conn = Conn {
        info: ConnInfo::new(remote, tls),
        tls,
        admission,
        handle,
    };
    let (shared, drain) = (Arc::clone(shared), drain.clone());
    let guard = admitted.guard;
    tokio::spawn(async move {
        match stream {
            Stream::Tcp(s) => connection(Counted::new(s, guard), conn, shared).await,
            Stream::Unix(s) => connection(Counted::new(s, guard), conn, shared).await,
            Stream::StdTcp(_) | Stream::StdUnix(_) => {}
        }
        drop(load);
        drop(drain);
    });
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, Option<std::net::SocketAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Stream::Tcp(s), Some(addr)))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), None))
        }
    }
}

/// A client connection: who it is from, and how `conn_limit` admitted it.
#[derive(Clone)]
struct Conn {
    info: ConnInfo,
    tls: bool,
    admission: Admission,
    handle: ConnHandle,
}

async fn connection<S>(stream: S, conn: Conn, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handle = conn.handle.clone();
    if conn.admission == Admission::Overflow {
        // In the reserve: one request, and out within RESERVE_LIFETIME whatever the client does.
        let served = serve(stream, conn, shared);
        let _ = tokio::time::timeout(admitted::RESERVE_LIFETIME, served).await;
    } else {
        serve(stream, conn, shared).await;
    }
    // An upgraded connection's stream lives on in its tunnel: it is not idle.
    handle.retire();
}

async fn serve<S>(stream: S, conn: Conn, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = shared.routes().settings.clone();
    let quiet_after = (!conn.tls).then_some(park::PARK_AFTER);
    let stream = IdleTimeout::with_head_clock(
        stream,
        settings.idle_timeout,
        conn.handle.requests(),
        settings.header_timeout,
        quiet_after,
    );
    if conn.tls {
        // Boxed: the TLS states are far larger than the plain path's, and would size every connection's task.
        Box::pin(serve_tls(stream, conn, shared, &settings)).await
    } else {
        serve_plain(Replay::new(stream), conn, shared, &settings).await
    }
}

async fn serve_tls<S>(
    stream: IdleTimeout<S>,
    conn: Conn,
    shared: Arc<Shared>,
    settings: &super::routes::Settings,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(config) = shared.tls.get() else {
        tracing::warn!("TLS connection but no certificate loaded");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut stream =
        match tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake failed: {e}");
                return;
            }
            Err(_) => return,
        };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        stream.get_mut().0.stop_head_clock();
        serve_http2(OneFill::new(stream), conn, shared, settings).await
    } else {
        serve_http1(OneFill::new(stream), conn, shared, settings).await
    }
}

/// hyper's HTTP/1 settings for a client connection.
fn http1_builder(settings: &super::routes::Settings, keep_alive: bool) -> http1::Builder {
    let mut builder = http1::Builder::new();
    // No hyper `max_header_size`: the limit is applied to the parsed request (head_limits.rs), which can tell a
    // long request line (414) from a large head (431). No hyper header timer either: the stream's own lazy
    // timer bounds each head (`IdleTimeout::with_head_clock`), without a timer armed per request.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head_limits::hyper_buffer(settings.max_header_size))
        // One flat buffer per write, not a writev of head and body: a response's head and its small body cost
        // half the user-space instructions to flush that way (callgrind: hyper's poll_flush 1,870 -> 850 Ir a
        // proxied request, both sides). A large body is copied once into the buffer, bounded by max_buf_size.
        .writev(false)
        .keep_alive(keep_alive);
    builder
}

/// What stopped a hyper connection of `serve_plain`.
enum Step {
    Ended(Option<hyper::Error>),
    Closing,
    Park,
}

/// A plain HTTP/1 connection, parked (`park`) whenever it is quiet between requests: hyper's state is dropped
/// and made anew when the next request's bytes arrive.
async fn serve_plain<S>(
    mut io: Replay<IdleTimeout<S>>,
    conn: Conn,
    shared: Arc<Shared>,
    settings: &super::routes::Settings,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // What the access log needs if hyper refuses a request itself (the handler then never sees it).
    let (log, remote) = (Arc::clone(&shared.log), conn.info.remote_addr.clone());
    let handle = conn.handle.clone();
    let keep_alive = conn.admission == Admission::Normal;
    let mut service = admitted::service(conn.info, conn.handle, conn.admission, shared);
    let closing = handle.closing();
    tokio::pin!(closing);
    loop {
        // Boxed: while parked, the task keeps none of it.
        let mut http = Box::new(
            http1_builder(settings, keep_alive)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let error = match next_step(&mut *http, &handle, closing.as_mut()).await {
            Step::Ended(error) => error,
            Step::Closing if handle.finishes_before_closing() => {
                Pin::new(&mut *http).graceful_shutdown();
                http.await.err()
            }
            Step::Closing => None,
            Step::Park => {
                // One statement: hyper's state and the box it was in are freed here, and nothing of them is
                // kept in this task's state across the wait below.
                let leftover = match unbox(http).into_parts() {
                    Some(parts) => {
                        (io, service) = (parts.io.into_inner(), parts.service);
                        parts.read_buf
                    }
                    None => return,
                };
                if leftover.is_empty() {
                    // Even empty, it holds hyper's 8 KiB read buffer.
                    drop(leftover);
                    if !io.wait(closing.as_mut()).await {
                        return;
                    }
                    handle.unpark();
                } else {
                    io.replay(leftover);
                }
                continue;
            }
        };
        return ended(error, &log, &remote);
    }
}

/// The value out of its box, the box freed at once (not when the binding that held it goes out of scope).
/// Boxed on purpose: the box is what is freed.
#[allow(clippy::boxed_local)]
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Poll a connection until it ends, must close, or is quiet enough to park. The connection first: it is what
/// wakes the task, nearly every time; parking is asked only once hyper has done all it could (its read
/// pending, everything written).
async fn next_step<F>(http: &mut F, handle: &ConnHandle, mut closing: Pin<&mut Closed<'_>>) -> Step
where
    F: Future<Output = hyper::Result<()>> + Unpin,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut *http).poll(cx) {
            return Poll::Ready(Step::Ended(result.err()));
        }
        if handle.parkable() {
            return Poll::Ready(Step::Park);
        }
        closing.as_mut().poll(cx).map(|()| Step::Closing)
    })
    .await
}

async fn serve_http1<S>(
    stream: S,
    conn: Conn,
    shared: Arc<Shared>,
    settings: &super::routes::Settings,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (log, remote) = (Arc::clone(&shared.log), conn.info.remote_addr.clone());
    let handle = conn.handle.clone();
    let keep_alive = conn.admission == Admission::Normal;
    let service = admitted::service(conn.info, conn.handle, conn.admission, shared);
    let conn = http1_builder(settings, keep_alive)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    // The connection first: it is what wakes the task, nearly every time.
    let error = tokio::select! {
        biased;
        result = conn.as_mut() => result.err(),
        _ = handle.closing() => if handle.finishes_before_closing() {
            conn.as_mut().graceful_shutdown();
            conn.await.err()
        } else {
            None
        },
    };
    ended(error, &log, &remote);
}

/// The access log line for a request hyper refused itself, and the debug line for how the connection ended.
fn ended(error: Option<hyper::Error>, log: &AccessLog, remote: &HeaderValue) {
    if let Some(status) = error.as_ref().and_then(rejected_status) {
        log.rejected(remote, status);
    }
    log_end(error);
}

/// The status hyper answered a request it refused with, if it answered one (its `on_error`): 431 for a head
/// past its buffer, 414 for a URI past its maximum, 400 for a malformed request line or header. Others (an
/// HTTP/2 preface on a plain listener, timeouts, I/O errors) get no response, so no log line either.
fn rejected_status(error: &hyper::Error) -> Option<u16> {
    if !error.is_parse() || error.is_parse_version_h2() {
        return None;
    }
    if error.is_parse_too_large() {
        // hyper has no accessor for its URI-too-long kind; its message is the only way to tell.
        return Some(if error.to_string().starts_with("URI too long") {
            414
        } else {
            431
        });
    }
    Some(400)
}

async fn serve_http2<S>(
    stream: S,
    conn: Conn,
    shared: Arc<Shared>,
    settings: &super::routes::Settings,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handle = conn.handle.clone();
    let service = admitted::service(conn.info, conn.handle, conn.admission, shared);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_size as u32);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        biased;
        result = conn.as_mut() => log_end(result.err()),
        _ = handle.closing() => if handle.finishes_before_closing() {
            conn.as_mut().graceful_shutdown();
            log_end(conn.await.err());
        },
    }
}

fn log_end(error: Option<hyper::Error>) {
    if let Some(e) = error {
        tracing::debug!("client connection ended: {e}");
    }
}

/// Resolves once the stop flag is set (or its sender is gone, which also means stop).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
