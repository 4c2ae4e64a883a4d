//! `GET /v1/services/NAME/logs?stream=stdout|stderr&lines=N&follow=1`: the last N lines of a log, then
//! with `follow` every new complete line, as a chunked body until the client goes away.
//!
//! The tail is never held whole. `logs::tail::locate` finds where it starts, and a task reads it in
//! 64 KiB chunks into a channel of two, waiting while the client is slow; so any `lines`, even every
//! line of a 50 MB log, costs PID 1 a few chunks per client (it used to read the whole log into memory
//! for each request: four tails of a 20 MB log took PID 1 from 6 to 118 MiB).
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::Response;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use super::reply::{with_content_type, ReplyBody};
use super::streams::{self, StreamPermit};
use crate::api::ApiError;
use crate::logs::tail::{self, Range};
use crate::supervise::handle::{Handle, LogStream};

/// Bytes read from the file at a time.
const CHUNK: u64 = 64 * 1024;
/// Chunks read ahead of a slow client.
const CHUNKS_AHEAD: usize = 2;

pub(super) async fn logs(
    handle: &Handle,
    name: String,
    stream: LogStream,
    lines: usize,
    follow: bool,
) -> Result<Response<ReplyBody>, ApiError> {
    let permit = follow.then(streams::open).transpose()?;
    // The supervisor subscribes us to the live feed before it answers and the tail is located after,
    // so no line falls between the two (one written in between may show up twice).
    let source = handle.logs(name, stream).await?;
    let path = source.path.clone();
    // A follower gets an unfinished last line from the feed once it is complete.
    let located = tokio::task::spawn_blocking(move || locate(&path, lines, follow)).await;
    let ranges = match located {
        Ok(Ok(ranges)) => ranges,
        Ok(Err(err)) => {
            return Err(internal(format!(
                "cannot read {}: {err}",
                source.path.display()
            )))
        }
        Err(_) => {
            return Err(internal(format!(
                "reading {} failed",
                source.path.display()
            )))
        }
    };
    let body = LogBody {
        tail: Some(read_ahead(ranges)),
        next: follow.then(|| next_line(source.lines)),
        _permit: permit,
    };
    Ok(with_content_type(
        Response::new(body.boxed_unsync()),
        "text/plain",
    ))
}

/// A log file that doesn't exist yet has no lines.
fn locate(path: &Path, lines: usize, complete: bool) -> io::Result<Vec<Range>> {
    match tail::locate(path, lines, complete) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// The ranges' bytes, a chunk at a time, read off the runtime thread while the client keeps up.
fn read_ahead(ranges: Vec<Range>) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::spawn(async move {
        for range in ranges {
            if !send_range(range, &tx).await {
                return;
            }
        }
    });
    rx
}

/// False when the client has gone or the file could not be read (the client is told, in the text).
async fn send_range(range: Range, tx: &mpsc::Sender<Bytes>) -> bool {
    let newline_after = range.newline_after;
    let (start, end) = (range.start, range.end);
    let file = Arc::new(range.file);
    let mut at = start;
    while at < end {
        let len = CHUNK.min(end - at);
        let file = Arc::clone(&file);
        let read = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0; len as usize];
            file.read_exact_at(&mut chunk, at).map(|()| chunk)
        })
        .await;
        let chunk = match read {
            Ok(Ok(chunk)) => Bytes::from(chunk),
            Ok(Err(err)) => Bytes::from(format!("[stackinit: reading the log failed: {err}]\n")),
            Err(_) => Bytes::from_static(b"[stackinit: reading the log failed]\n"),
        };
        let complete = chunk.len() as u64 == len;
        if tx.send(chunk).await.is_err() || !complete {
            return false;
        }
        at += len;
    }
    !newline_after || tx.send(Bytes::from_static(b"\n")).await.is_ok()
}

type NextLine =
    Pin<Box<dyn Future<Output = (broadcast::Receiver<Bytes>, Result<Bytes, RecvError>)> + Send>>;

fn next_line(mut lines: broadcast::Receiver<Bytes>) -> NextLine {
    Box::pin(async move {
        let line = lines.recv().await;
        (lines, line)
    })
}

/// The tail, then (following) each new line as its own chunk. Dropped (and so unsubscribed) when the
/// client goes away; a follow ends when the log itself goes away (service removed).
struct LogBody {
    tail: Option<mpsc::Receiver<Bytes>>,
    next: Option<NextLine>,
    /// A follower's place among the streams.
    _permit: Option<StreamPermit>,
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(tail) = self.tail.as_mut() {
            match ready!(tail.poll_recv(cx)) {
                Some(chunk) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => self.tail = None,
            }
        }
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (lines, line) = ready!(next.as_mut().poll(cx));
        let chunk = match line {
            Ok(line) => with_newline(line),
            Err(RecvError::Lagged(skipped)) => Bytes::from(format!(
                "[stackinit: {skipped} lines skipped: this reader fell behind]\n"
            )),
            Err(RecvError::Closed) => {
                self.next = None;
                return Poll::Ready(None);
            }
        };
        self.next = Some(next_line(lines));
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn with_newline(line: Bytes) -> Bytes {
    if line.ends_with(b"\n") {
        return line;
    }
    let mut owned = Vec::with_capacity(line.len() + 1);
    owned.extend_from_slice(&line);
    owned.push(b'\n');
    Bytes::from(owned)
}

fn internal(message: String) -> ApiError {
    ApiError {
        status: 500,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_get_a_newline() {
        assert_eq!(
            with_newline(Bytes::from_static(b"a")),
            Bytes::from_static(b"a\n")
        );
        assert_eq!(
            with_newline(Bytes::from_static(b"a\n")),
            Bytes::from_static(b"a\n")
        );
    }
}
