//! The demo worker of the built-in stack: a minimal HTTP/1.1 server on the socket(s) init hands it.
//!
//! `GET /` names the replica (`$STACKINIT_REPLICA`) and pid; `/slow?ms=N` sleeps N ms first, which makes
//! load-balancing behaviour visible. SIGTERM stops accepting and finishes in-flight requests.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use crate::proxy::listen_fds::{self, SocketKind};
use crate::proxy::server::{stopped, Listener};

/// The longest `/slow` sleep honoured, so a typo can't park a worker for hours.
const MAX_SLOW_MS: u64 = 60_000;

pub fn worker_main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stackinit demo-worker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackinit demo-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let fds = listen_fds::take_from_env()?
        .ok_or("no LISTEN_FDS: the demo worker serves sockets init hands it")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut serving = 0;
    for inherited in fds {
        let listener = match listen_fds::socket_kind(&inherited.fd) {
            SocketKind::TcpListener => {
                let l = std::net::TcpListener::from(inherited.fd);
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Listener::Tcp(tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?)
            }
            SocketKind::UnixListener => {
                let l = std::os::unix::net::UnixListener::from(inherited.fd);
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Listener::Unix(tokio::net::UnixListener::from_std(l).map_err(|e| e.to_string())?)
            }
            _ => continue,
        };
        serving += 1;
        tokio::spawn(accept_loop(listener, stop_rx.clone(), drain_tx.clone()));
    }
    drop(drain_tx);
    if serving == 0 {
        return Err("none of the LISTEN_FDS is a listening socket".into());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), drain_rx.recv()).await;
    Ok(())
}

async fn accept_loop(listener: Listener, mut stop: watch::Receiver<bool>, drain: mpsc::Sender<()>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = async {
                match &listener {
                    Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                    Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                }
            } => accepted,
        };
        let conn = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("stackinit demo-worker: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let stop = stop.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            match conn {
                Conn::Tcp(s) => serve(s, stop).await,
                Conn::Unix(s) => serve(s, stop).await,
            }
            drop(drain);
        });
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn serve<S>(stream: S, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let replica = std::env::var("STACKINIT_REPLICA").unwrap_or_else(|_| "0".into());
    let pid = std::process::id();
    let (status, text) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            format!("stackinit demo worker: replica {replica}, pid {pid}\n"),
        ),
        "/slow" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(100)
                .min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (
                StatusCode::OK,
                format!("stackinit demo worker: replica {replica}, pid {pid}, slept {ms} ms\n"),
            )
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}
