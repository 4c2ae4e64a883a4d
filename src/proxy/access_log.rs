//! The access log: nginx "combined" format plus request time and upstream time, one line per request on stdout.
//! Init pipes the proxy's stdout into `<logs_dir>/access.log` with lossless rotation.
//!
//! Lines are batched: the first line of a burst schedules one flush task, which runs after the current batch of
//! ready tasks, so a busy proxy makes one write(2) for many requests and an idle one makes none.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::body::{BoxError, ProxyBody};
use super::upstream::InFlight;

/// Flush at once past this many buffered bytes.
const FLUSH_AT: usize = 64 * 1024;

#[derive(Default)]
pub struct AccessLog {
    buffer: Mutex<Vec<u8>>,
}

impl AccessLog {
    pub fn new() -> Arc<AccessLog> {
        Arc::new(AccessLog::default())
    }

    fn push(self: &Arc<Self>, line: &str) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = buffer.is_empty();
        buffer.extend_from_slice(line.as_bytes());
        if buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        } else if was_empty {
            let log = Arc::clone(self);
            // Outside a runtime (unit tests) there is nothing to batch with: write at once.
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    log.flush();
                });
            } else {
                write_out(&mut buffer);
            }
        }
    }

    pub fn flush(&self) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        write_out(&mut buffer);
    }
}

fn write_out(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(buffer).and_then(|_| out.flush()) {
        tracing::warn!("access log write failed: {e}");
    }
    buffer.clear();
}

/// What is known about a request when its response starts; completed with byte count and times at the end.
pub struct Entry {
    pub log: Arc<AccessLog>,
    pub remote: Option<IpAddr>,
    pub request_line: String,
    pub status: u16,
    pub referer: String,
    pub user_agent: String,
    pub started: Instant,
    pub upstream_time: Option<Duration>,
}

impl Entry {
    fn write(&self, bytes_sent: u64) {
        let remote = self
            .remote
            .map_or_else(|| "unix:".to_string(), |ip| ip.to_canonical().to_string());
        let request_time = self.started.elapsed().as_secs_f64();
        let upstream = self
            .upstream_time
            .map_or_else(|| "-".to_string(), |t| format!("{:.3}", t.as_secs_f64()));
        let line = format!(
            "{remote} - - [{}] \"{}\" {} {bytes_sent} \"{}\" \"{}\" {request_time:.3} {upstream}\n",
            time_local(SystemTime::now()),
            escape(&self.request_line),
            self.status,
            escape(&self.referer),
            escape(&self.user_agent),
        );
        self.log.push(&line);
    }
}

/// nginx escapes `"`, `\` and bytes outside printable ASCII as `\xHH`.
fn escape(text: &str) -> String {
    if text.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\x{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
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

/// A response body that counts what it sends, keeps its request counted in flight on the upstream replica, and
/// writes the access log line when it ends or is dropped (a client that hangs up is logged too).
pub struct LoggedBody {
    inner: ProxyBody,
    sent: u64,
    entry: Option<Entry>,
    _in_flight: Option<InFlight>,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, entry: Entry, in_flight: Option<InFlight>) -> LoggedBody {
        LoggedBody {
            inner,
            sent: 0,
            entry: Some(entry),
            _in_flight: in_flight,
        }
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            entry.write(self.sent);
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
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    fn escapes_like_nginx() {
        assert_eq!(escape("a\"b\\c\u{7}"), "a\\x22b\\x5Cc\\x07");
        assert_eq!(escape(""), "-");
    }
}
