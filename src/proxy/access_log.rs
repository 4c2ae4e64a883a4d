//! The access log: nginx "combined" format plus request time, upstream time and queue time, one line per request
//! on stdout. The upstream time means nginx's `$upstream_response_time`: from the moment a replica is picked (its
//! connection begins, or a pooled one is taken) to the last byte of the upstream's response. The queue time is
//! the wait at the admission gate before a replica was picked, which nginx (without a queue) does not have.
//! Init pipes the proxy's stdout into `<logs_dir>/access.log` with lossless rotation.
//!
//! Lines are formatted straight into a buffer of the worker thread that served the request (no per-request
//! Strings, no lock: a connection lives on one worker, so its lines stay in order; the date is formatted once a
//! second) and batched: the first line of a burst wakes the worker's flush task, which runs after the current
//! batch of ready tasks, so a busy worker makes one write(2) for many requests and an idle one makes none. The
//! buffer holds whole lines only, and it is written under stdout's lock, so the workers' batches never
//! interleave within a line.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::{Method, Uri, Version};
use tokio::sync::Notify;

use super::body::{BoxError, ProxyBody};
use super::metrics::Tracked;
use super::upstream::InFlight;

/// Flush at once past this many buffered bytes.
const FLUSH_AT: usize = 64 * 1024;

/// The access log of the process; its lines are buffered per worker thread (see the module doc).
#[derive(Default)]
pub struct AccessLog {}

thread_local! {
    static WORKER: RefCell<WorkerLog> = RefCell::new(WorkerLog::default());
}

/// One worker's lines not yet written, and the task that writes them.
#[derive(Default)]
struct WorkerLog {
    pending: Pending,
    /// Wakes this worker's flush task when a burst starts; `None` until the first line.
    wake: Option<Arc<Notify>>,
}

#[derive(Default)]
struct Pending {
    buffer: Vec<u8>,
    /// `$time_local` of the second `date_secs`: formatting it per request would cost more than the rest.
    date_secs: u64,
    date: String,
}

impl AccessLog {
    pub fn new() -> Arc<AccessLog> {
        Arc::new(AccessLog::default())
    }

    /// The line of a request whose response ended at `ended`, into the calling worker's buffer (no handle to
    /// the log per request: its refcount was a cache line both workers wrote twice a request).
    fn push(entry: &Entry, bytes_sent: u64, ended: Instant) {
        push_with(|pending| pending.append(entry, bytes_sent, ended));
    }

    /// A request hyper refused before the handler saw it (a malformed or oversized head), answered by hyper with
    /// `status` and no body. Its request line is not known: logged as `"-"`, as nginx logs a request it could
    /// not read.
    pub fn rejected(&self, remote: &HeaderValue, status: u16) {
        push_with(|pending| pending.append_rejected(remote, status));
    }

    /// Write the calling worker's lines now.
    pub fn flush(&self) {
        flush_thread();
    }
}

fn push_with(append: impl FnOnce(&mut Pending)) {
    let mut append = Some(append);
    let pushed = WORKER.try_with(|worker| {
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return false;
        };
        if let Some(append) = append.take() {
            worker.push(append);
        }
        true
    });
    // The thread is exiting (its buffer is gone), or re-entered: this line is written on its own.
    if !pushed.unwrap_or(false) {
        if let Some(append) = append.take() {
            let mut pending = Pending::default();
            append(&mut pending);
            write_out(&mut pending.buffer);
        }
    }
}

impl WorkerLog {
    fn push(&mut self, append: impl FnOnce(&mut Pending)) {
        let was_empty = self.pending.buffer.is_empty();
        append(&mut self.pending);
        if self.pending.buffer.len() >= FLUSH_AT {
            write_out(&mut self.pending.buffer);
        } else if was_empty && !self.schedule_flush() {
            // Outside a runtime (unit tests, a worker shutting down) there is nothing to batch with.
            write_out(&mut self.pending.buffer);
        }
    }

    /// Wake (starting it the first time) the task that flushes after the current batch; false without a runtime.
    fn schedule_flush(&mut self) -> bool {
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        let wake = self.wake.get_or_insert_with(|| {
            let wake = Arc::new(Notify::new());
            let woken = Arc::clone(&wake);
            // Spawned on this worker's current-thread runtime: it runs on this thread, next to the buffer.
            tokio::spawn(async move {
                loop {
                    woken.notified().await;
                    // Let the other ready tasks of this tick log their lines first.
                    tokio::task::yield_now().await;
                    flush_thread();
                }
            });
            wake
        });
        wake.notify_one();
        true
    }
}

/// Write the calling thread's buffered lines (a worker at its end, or its flush task).
pub fn flush_thread() {
    let _ = WORKER.try_with(|worker| {
        if let Ok(mut worker) = worker.try_borrow_mut() {
            write_out(&mut worker.pending.buffer);
        }
    });
}

fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    // Whole lines under stdout's lock: another worker's batch goes before or after, never inside a line.
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(buffer).and_then(|_| out.flush()) {
        tracing::warn!("access log write failed: {e}");
    }
    buffer.clear();
}

/// What is known about a request when its response starts; completed with byte count and times at the end.
/// Everything is kept as received (cheap clones of shared bytes) and only formatted into the log buffer.
pub struct Entry {
    /// `$remote_addr`, already formatted (`unix:` for a unix-socket client).
    pub remote: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: u16,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub started: Instant,
    /// `None` for a request the proxy answered itself.
    pub upstream: Option<UpstreamTimes>,
}

/// A proxied request's two clocks.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimes {
    /// The wait for a replica (`$queue_time`).
    pub queued: Duration,
    /// `$upstream_response_time`; `None` when no replica was picked.
    pub upstream: Option<UpstreamClock>,
}

/// The upstream time, still running until the upstream's response body ends, or already known.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamClock {
    Since(Instant),
    Took(Duration),
}

impl UpstreamClock {
    /// The upstream time if it ended at `now`.
    fn elapsed_at(self, now: Instant) -> Duration {
        match self {
            UpstreamClock::Since(since) => now.saturating_duration_since(since),
            UpstreamClock::Took(took) => took,
        }
    }

    /// Stop a running clock: the upstream's response ended at `now`.
    fn stop(&mut self, now: Instant) {
        *self = UpstreamClock::Took(self.elapsed_at(now));
    }
}

impl Pending {
    /// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
    /// $request_time $upstream_response_time $queue_time`
    fn append(&mut self, entry: &Entry, bytes_sent: u64, ended: Instant) {
        self.start_line(&entry.remote);
        let out = &mut self.buffer;
        // Writes into a Vec cannot fail.
        // A method is a token (the `http` crate refuses anything else) and the version a fixed text: neither
        // has a byte to escape.
        out.extend_from_slice(entry.method.as_str().as_bytes());
        out.push(b' ');
        request_target_into(out, &entry.uri, entry.version);
        out.push(b' ');
        out.extend_from_slice(version_text(entry.version).as_bytes());
        out.extend_from_slice(b"\" ");
        decimal_into(out, u64::from(entry.status));
        out.push(b' ');
        decimal_into(out, bytes_sent);
        out.extend_from_slice(b" \"");
        escape_field(out, entry.referer.as_ref().map(HeaderValue::as_bytes));
        out.extend_from_slice(b"\" \"");
        escape_field(out, entry.user_agent.as_ref().map(HeaderValue::as_bytes));
        out.extend_from_slice(b"\" ");
        seconds_into(out, ended.saturating_duration_since(entry.started));
        out.push(b' ');
        let upstream = entry.upstream.as_ref();
        optional_seconds_into(
            out,
            upstream
                .and_then(|u| u.upstream)
                .map(|clock| clock.elapsed_at(ended)),
        );
        out.push(b' ');
        optional_seconds_into(out, upstream.map(|u| u.queued));
        out.push(b'\n');
    }

    /// `$remote_addr - - [$time_local] "`: the start of every line.
    fn start_line(&mut self, remote: &HeaderValue) {
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.date_secs || self.date.is_empty() {
            self.date_secs = secs;
            self.date = time_local(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        }
        self.buffer.extend_from_slice(remote.as_bytes());
        self.buffer.extend_from_slice(b" - - [");
        self.buffer.extend_from_slice(self.date.as_bytes());
        self.buffer.extend_from_slice(b"] \"");
    }

    /// The line of a request hyper refused: no request line, no body, no times worth measuring.
    fn append_rejected(&mut self, remote: &HeaderValue, status: u16) {
        self.start_line(remote);
        let _ = writeln!(self.buffer, "-\" {status} 0 \"-\" \"-\" 0.000 - -");
    }
}

/// The request target as nginx logs it: as sent on HTTP/1 (absolute-form included), the path on HTTP/2.
fn request_target_into(out: &mut Vec<u8>, uri: &Uri, version: Version) {
    let origin_form = uri.scheme().is_none() && uri.authority().is_none();
    if version == Version::HTTP_2 || origin_form {
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        escape_into(out, target.as_bytes());
    } else {
        escape_into(out, uri.to_string().as_bytes());
    }
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// nginx's `$request_time` style: seconds with millisecond resolution (truncated, as nginx does).
fn seconds_into(out: &mut Vec<u8>, t: Duration) {
    let ms = t.subsec_millis();
    decimal_into(out, t.as_secs());
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// A number in decimal, without `fmt` (its machinery cost more than the rest of the line).
fn decimal_into(out: &mut Vec<u8>, mut n: u64) {
    // Most numbers of a line are one digit (whole seconds, a small body's size): a push, not a copy.
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A time, or `-` when there is none.
fn optional_seconds_into(out: &mut Vec<u8>, t: Option<Duration>) {
    match t {
        Some(t) => seconds_into(out, t),
        None => out.push(b'-'),
    }
}

/// A header field: `-` when absent or empty.
fn escape_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) if !v.is_empty() => escape_into(out, v),
        _ => out.push(b'-'),
    }
}

/// nginx escapes `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn escape_into(out: &mut Vec<u8>, mut text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let escaped = |b: u8| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b);
    // Runs that need no escaping (nearly every field, whole) go in with one copy, not byte by byte.
    while let Some(at) = text.iter().position(|&b| escaped(b)) {
        out.extend_from_slice(&text[..at]);
        let b = text[at];
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]);
        text = &text[at + 1..];
    }
    out.extend_from_slice(text);
}

/// `$time_local` in UTC: `25/Nov/2026:15:41:09 +0000`.
pub fn time_local(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A response body that counts what it sends, keeps its request counted in flight on the upstream replica (and
/// its upstream connection leased), and writes the access log line when it ends or is dropped (a client that
/// hangs up is logged too).
pub struct LoggedBody {
    inner: ResponseBody,
    sent: u64,
    entry: Option<Entry>,
    _in_flight: Option<InFlight>,
    /// The request's counters: finished when the body ends, with the access log line.
    _tracked: Option<Tracked>,
    /// When the body ended, once it has: the one clock read its log line, lease and counters share.
    ended_at: Option<Instant>,
}

/// An upstream's body passed through as is, or one the proxy made itself; an enum rather than a box, so a
/// proxied response costs no allocation for its body.
pub enum ResponseBody {
    Upstream(Incoming),
    Local(ProxyBody),
}

/// A request's log line while its response has not started. If the client leaves first (hyper drops the
/// handler's future), the line is written as nginx writes it: status 499, no bytes, and `-` for the upstream
/// and queue times, which had not ended.
pub struct Unanswered(Option<Entry>);

impl Unanswered {
    /// `entry`'s status is set when the response starts.
    pub fn new(entry: Entry) -> Unanswered {
        Unanswered(Some(entry))
    }

    /// The response starts: its body writes the line, with `status` and `upstream`.
    fn answered(mut self, status: u16, upstream: Option<UpstreamTimes>) -> Option<Entry> {
        let mut entry = self.0.take()?;
        entry.status = status;
        entry.upstream = upstream;
        Some(entry)
    }
}

/// nginx's status for a request whose client closed the connection before the response.
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut entry) = self.0.take() {
            entry.status = CLIENT_CLOSED;
            entry.upstream = None;
            AccessLog::push(&entry, 0, Instant::now());
        }
    }
}

impl LoggedBody {
    /// The body of a response that has started, with `status`; the line is written when it ends.
    pub fn new(
        inner: ResponseBody,
        line: Unanswered,
        status: u16,
        upstream: Option<UpstreamTimes>,
        in_flight: Option<InFlight>,
    ) -> LoggedBody {
        LoggedBody {
            inner,
            sent: 0,
            entry: line.answered(status, upstream),
            _in_flight: in_flight,
            _tracked: None,
            ended_at: None,
        }
    }

    pub fn tracked(mut self, tracked: Tracked) -> LoggedBody {
        self._tracked = Some(tracked);
        self
    }
}

impl LoggedBody {
    /// The upstream's response is over (for an upstream body; a body the proxy made has no running clock).
    fn stop_upstream_clock(&mut self, now: Instant) {
        let clock = self.entry.as_mut().and_then(|e| e.upstream.as_mut());
        if let Some(UpstreamTimes {
            upstream: Some(clock),
            ..
        }) = clock
        {
            clock.stop(now);
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body dropped before its end (the client went away) ends now.
        let ended = self.ended_at.unwrap_or_else(Instant::now);
        if let Some(in_flight) = &mut self._in_flight {
            in_flight.ended_at(ended);
        }
        if let Some(tracked) = &mut self._tracked {
            tracked.ended_at(ended);
        }
        if let Some(entry) = self.entry.take() {
            AccessLog::push(&entry, self.sent, ended);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ResponseBody::Local(body) => Pin::new(body).poll_frame(cx),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        // hyper polls no further once `is_end_stream` says so: the last byte may come with the last frame.
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.is_end_stream(),
            Poll::Pending => false,
        };
        if ended && self.ended_at.is_none() {
            let now = Instant::now();
            self.ended_at = Some(now);
            self.stop_upstream_clock(now);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Local(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time_local_like_nginx() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_621_269);
        assert_eq!(time_local(t), "25/Nov/2026:15:41:09 +0000");
        assert_eq!(
            time_local(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
    }

    #[test]
    fn formats_a_combined_line() {
        let entry = Entry {
            remote: HeaderValue::from_static("127.0.0.9"),
            method: Method::GET,
            uri: Uri::from_static("/a?b=c"),
            version: Version::HTTP_11,
            status: 200,
            referer: None,
            user_agent: Some(HeaderValue::from_static("w\"rk")),
            started: Instant::now(),
            upstream: Some(UpstreamTimes {
                queued: Duration::from_millis(7),
                upstream: Some(UpstreamClock::Took(Duration::from_millis(1234))),
            }),
        };
        let mut pending = Pending::default();
        pending.append(&entry, 3, Instant::now());
        let line = String::from_utf8(pending.buffer).unwrap();
        let (head, rest) = line.split_once(" [").unwrap();
        assert_eq!(head, "127.0.0.9 - -");
        let (_, rest) = rest.split_once("] ").unwrap();
        // The request time depends on the machine; the rest is fixed.
        let (fixed, times) = rest.split_once("\" \"w\\x22rk\" ").unwrap();
        assert_eq!(fixed, "\"GET /a?b=c HTTP/1.1\" 200 3 \"-");
        let (request_time, upstream_and_queue) = times.split_once(' ').unwrap();
        assert!(request_time.parse::<f64>().is_ok(), "{request_time}");
        assert_eq!(upstream_and_queue, "1.234 0.007\n");
    }

    #[test]
    fn formats_a_rejected_request() {
        let mut pending = Pending::default();
        pending.append_rejected(&HeaderValue::from_static("127.0.0.9"), 414);
        let line = String::from_utf8(pending.buffer).unwrap();
        let (head, rest) = line.split_once(" [").unwrap();
        assert_eq!(head, "127.0.0.9 - -");
        assert_eq!(
            rest.split_once("] ").unwrap().1,
            "\"-\" 414 0 \"-\" \"-\" 0.000 - -\n"
        );
    }

    #[test]
    fn numbers_are_decimal() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 499, u64::MAX] {
            decimal_into(&mut out, n);
            out.push(b' ');
        }
        assert_eq!(out, b"0 7 10 499 18446744073709551615 ");
        out.clear();
        seconds_into(&mut out, Duration::from_millis(12_045));
        assert_eq!(out, b"12.045");
    }

    #[test]
    fn escapes_like_nginx() {
        let mut out = Vec::new();
        escape_into(&mut out, "a\"b\\c\u{7}".as_bytes());
        assert_eq!(out, b"a\\x22b\\x5Cc\\x07");
        out.clear();
        escape_field(&mut out, Some(b""));
        escape_field(&mut out, None);
        assert_eq!(out, b"--");
    }
}
