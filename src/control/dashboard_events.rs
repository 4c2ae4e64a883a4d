//! `GET /v1/events`: the supervisor's status changes as a server-sent event stream.
//!
//! ```text
//! event: snapshot          data: {"services": [...], "draining": false}   (first, and after a lag)
//! event: health            data: {"healthy": true, "draining": false, "unhealthy": []}  (on change)
//! event: service           data: {"name": "web", "state": "running", ...}  (one per change)
//! : keepalive                                                              (every KEEPALIVE)
//! ```
//!
//! One task per open stream, woken by the supervisor's broadcast, by the draining flag (set on
//! shutdown without any status change), by its own keepalive timer, or by the client going away.
//! Nothing runs when nobody is connected.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::Response;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::reply::{with_content_type, ReplyBody};
use super::streams::{self, StreamPermit};
use crate::api::ApiError;
use crate::api::StatusReply;
use crate::supervise::handle::Handle;

/// Often enough that proxies and load balancers don't time an idle stream out.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Events buffered for a slow client before the task waits for it.
const BUFFERED_EVENTS: usize = 64;

/// The stream, or 503 when as many streams as allowed are open (`streams`).
pub(super) fn stream(handle: Handle) -> Result<Response<ReplyBody>, ApiError> {
    let permit = streams::open()?;
    let (tx, rx) = mpsc::channel(BUFFERED_EVENTS);
    tokio::spawn(feed(handle, tx));
    let body = ChannelBody {
        rx,
        _permit: permit,
    };
    let mut response = with_content_type(Response::new(body.boxed_unsync()), "text/event-stream");
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tell nginx-like proxies in front (SSH/SSM forwarding has none) not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Writes events into `tx` until the client goes away or the supervisor does.
async fn feed(handle: Handle, tx: mpsc::Sender<Bytes>) {
    // Subscribe before taking the snapshot, so no change falls between the two.
    let mut events = handle.subscribe_events();
    let mut draining = handle.watch_draining();
    let mut last_health = None;
    if !send_snapshot(&handle, &tx).await || !send_health(&handle, &tx, &mut last_health).await {
        return;
    }
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sent = tokio::select! {
            () = tx.closed() => return,
            event = events.recv() => match event {
                Ok(status) => send(&tx, &event_text("service", &status)).await,
                Err(RecvError::Lagged(_)) => send_snapshot(&handle, &tx).await,
                Err(RecvError::Closed) => return,
            },
            Ok(()) = draining.changed() => true,
            _ = keepalive.tick() => send(&tx, ": keepalive\n\n").await,
        };
        if !sent || !send_health(&handle, &tx, &mut last_health).await {
            return;
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, text: &str) -> bool {
    tx.send(Bytes::from(text.to_owned())).await.is_ok()
}

async fn send_snapshot(handle: &Handle, tx: &mpsc::Sender<Bytes>) -> bool {
    match handle.status(None).await {
        Ok(services) => {
            let reply = StatusReply {
                services,
                draining: handle.is_draining(),
                user_data: None,
            };
            send(tx, &event_text("snapshot", &reply)).await
        }
        Err(_) => false,
    }
}

/// A `health` event, if `/healthz`'s answer changed since the last one sent.
async fn send_health(handle: &Handle, tx: &mpsc::Sender<Bytes>, last: &mut Option<Health>) -> bool {
    let Ok(info) = handle.facts().await else {
        return false;
    };
    let now = health(handle.is_draining(), info.unhealthy);
    if last.as_ref() == Some(&now) {
        return true;
    }
    let text = event_text("health", &now);
    *last = Some(now);
    send(tx, &text).await
}

/// One SSE event. JSON has no raw newlines, so `data:` is a single line.
fn event_text(name: &str, value: &impl Serialize) -> String {
    let data = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    format!("event: {name}\ndata: {data}\n\n")
}

/// A response body fed by a channel; dropping it (the client left) closes the channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _permit: StreamPermit,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// `/healthz`'s answer, as the supervisor sees it: 200 exactly when `healthy`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub draining: bool,
    /// Critical services that are not ready.
    pub unhealthy: Vec<String>,
}

pub(super) fn health(draining: bool, unhealthy: Vec<String>) -> Health {
    Health {
        healthy: !draining && unhealthy.is_empty(),
        draining,
        unhealthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_data_line() {
        let text = event_text("service", &serde_json::json!({"name": "a\nb"}));
        assert_eq!(text, "event: service\ndata: {\"name\":\"a\\nb\"}\n\n");
    }
}
