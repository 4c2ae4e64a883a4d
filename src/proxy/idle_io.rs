//! A connection wrapper that fails reads and writes once nothing has moved for a timeout: the idle timeout of
//! client connections, and nginx's `proxy_read_timeout`/`proxy_send_timeout` (between two successive reads or
//! writes) on upstream connections.
//!
//! On an HTTP/1 client connection the same timer also bounds how long a request head may take to arrive
//! (`header_timeout`, slowloris), in place of hyper's header read timer, which armed and dropped a timer for
//! every request (2–3 % of the proxy's instructions per request).
//!
//! It also tells a client connection when it has been quiet (nothing moved for a while, no request in
//! progress), so that its task can let go of its HTTP/1 state until the next request (`server`'s parking).
//!
//! The timer is lazy: progress only records an Instant, and the sleep is re-armed when it fires early, so a busy
//! connection costs no timer operations per read or write.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    last_progress: Instant,
    sleep: Pin<Box<Sleep>>,
    /// The waker the sleep last registered, as armed (see `check`); `None` until then and after a reset.
    armed_for: Option<Waker>,
    head: Option<HeadClock>,
}

/// What a client connection's service tells its stream: whether it waits for a request head, and which.
pub trait Requests: Send + Sync {
    /// `Some(n)` while no request is in progress, `n` being how many have begun on the connection.
    fn awaiting_head(&self) -> Option<u64>;
    /// Nothing moved for the quiet time while awaiting a head.
    fn quiet(&self);
}

/// The time the current request head has had: from accept for the first, from its first byte for later
/// ones (the wait between keep-alive requests is the idle timeout's), as nginx's `client_header_timeout`.
struct HeadClock {
    requests: Arc<dyn Requests>,
    timeout: Duration,
    /// Which head (requests begun before it) started arriving when.
    started: Option<(u64, Instant)>,
    /// How long nothing may move while awaiting a head before `Requests::quiet` is told; `None`: never.
    quiet_after: Option<Duration>,
    /// The sleep found the connection busy once already since it was last quiet: it looks again in a
    /// second, not every quiet time (a busy connection's timer fires once a second).
    busy: bool,
    /// When a request in progress moves nothing (a WebSocket or a long poll left open), the next look is this
    /// far off, doubled at each look up to the head timeout: such a connection's timer fires about as rarely
    /// as it did before parking existed, not once a second for the request's life.
    silent_request_recheck: Duration,
}

/// How often a busy connection, or one with a request in progress, is looked at for quiet.
const QUIET_RECHECK: Duration = Duration::from_secs(1);

impl HeadClock {
    fn on_bytes(&mut self, now: Instant) {
        if let Some(head) = self.requests.awaiting_head() {
            if self.started.is_none_or(|(h, _)| h != head) {
                self.started = Some((head, now));
            }
        }
    }

    /// Tell `Requests::quiet` if the connection is, and when to look again (far off once told: a quiet
    /// connection is parked, and `IdleTimeout::watch_for_quiet` brings the look back when it wakes).
    fn quiet_check(&mut self, now: Instant, quiet: Instant) -> Instant {
        let far = now + QUIET_RECHECK.max(self.timeout);
        if now < quiet {
            // Moved since the sleep was armed: once at the quiet time, then a second apart while busy.
            let again = if self.busy {
                now + QUIET_RECHECK
            } else {
                quiet
            };
            self.busy = true;
            self.silent_request_recheck = QUIET_RECHECK;
            return again;
        }
        if self.requests.awaiting_head().is_none() {
            // A request in progress and nothing moving: looked at less and less often.
            let again = now + self.silent_request_recheck;
            self.silent_request_recheck =
                (self.silent_request_recheck * 2).min(QUIET_RECHECK.max(self.timeout));
            return again;
        }
        self.busy = false;
        self.requests.quiet();
        far
    }

    fn deadline(&self) -> Option<Instant> {
        let head = self.requests.awaiting_head()?;
        let (h, since) = self.started?;
        (h == head).then(|| since + self.timeout)
    }
}

impl<S> IdleTimeout<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last_progress: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            armed_for: None,
            head: None,
        }
    }

    /// A client connection whose request heads must each arrive within `header_timeout`, and which is told
    /// when it has been quiet for `quiet_after`.
    pub fn with_head_clock(
        inner: S,
        timeout: Duration,
        requests: Arc<dyn Requests>,
        header_timeout: Duration,
        quiet_after: Option<Duration>,
    ) -> Self {
        let mut this = IdleTimeout::new(inner, timeout);
        let now = this.last_progress;
        let mut first = (now + header_timeout).min(now + timeout);
        if let Some(quiet) = quiet_after {
            first = first.min(now + quiet);
        }
        this.sleep.as_mut().reset(first);
        this.head = Some(HeadClock {
            requests,
            timeout: header_timeout,
            started: Some((0, now)),
            quiet_after,
            busy: false,
            silent_request_recheck: QUIET_RECHECK,
        });
        this
    }

    /// A parked connection woke (`park`): it is told again once it has been quiet for its quiet time.
    pub fn watch_for_quiet(&mut self) {
        let Some(after) = self.head.as_mut().and_then(|head| {
            head.busy = false;
            head.quiet_after
        }) else {
            return;
        };
        let quiet = Instant::now() + after;
        if quiet < self.sleep.deadline() {
            self.sleep.as_mut().reset(quiet);
            self.armed_for = None;
        }
    }

    /// No head clock (an HTTP/2 connection, whose streams hyper times itself).
    pub fn stop_head_clock(&mut self) {
        self.head = None;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when an operation is pending: Err once the connection has been idle too long, or a request
    /// head has taken too long.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // Armed for this task and not fired: the timer will wake it, so polling the sleep again (most of this
        // wrapper's cost per pending read, several a request) is skipped; so is a clock read.
        if self
            .armed_for
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
            && !self.sleep.is_elapsed()
        {
            return Ok(());
        }
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                if !self
                    .armed_for
                    .as_ref()
                    .is_some_and(|waker| waker.will_wake(cx.waker()))
                {
                    self.armed_for = Some(cx.waker().clone());
                }
                return Ok(());
            }
            let now = Instant::now();
            let mut next = self.last_progress + self.timeout;
            if now >= next {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past its timeout",
                ));
            }
            if let Some(head) = &mut self.head {
                if let Some(deadline) = head.deadline() {
                    if now >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head not received within header_timeout",
                        ));
                    }
                    next = next.min(deadline);
                }
                // A head that starts later ends later than this: the sleep is never past a deadline.
                next = next.min(now + head.timeout);
                if let Some(after) = head.quiet_after {
                    next = next.min(head.quiet_check(now, self.last_progress + after));
                }
            }
            self.sleep.as_mut().reset(next);
            self.armed_for = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                this.progressed();
                if buf.filled().len() > before {
                    if let Some(head) = &mut this.head {
                        head.on_bytes(this.last_progress);
                    }
                }
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                this.progressed();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => match this.check(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => {
                this.progressed();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection's requests as the stream sees them: one in progress or none, and whether told quiet.
    #[derive(Default)]
    struct Flags {
        serving: AtomicBool,
        quiet: AtomicBool,
    }

    impl Requests for Flags {
        fn awaiting_head(&self) -> Option<u64> {
            (!self.serving.load(Ordering::Relaxed)).then_some(1)
        }

        fn quiet(&self) {
            self.quiet.store(true, Ordering::Relaxed);
        }
    }

    /// Silence while a request is in progress is not quiet; once it has ended, silence for the quiet time is
    /// told (the connection may then be parked).
    #[tokio::test(flavor = "current_thread")]
    async fn silence_awaiting_a_head_is_told_quiet_and_silence_during_a_request_is_not() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let flags = Arc::new(Flags::default());
        flags.serving.store(true, Ordering::Relaxed);
        let long = Duration::from_secs(60);
        let quiet = Some(Duration::from_millis(50));
        let mut stream = IdleTimeout::with_head_clock(ours, long, flags.clone(), long, quiet);
        let mut buf = [0u8; 8];
        let wait = Duration::from_millis(300);
        assert!(tokio::time::timeout(wait, stream.read(&mut buf))
            .await
            .is_err());
        assert!(
            !flags.quiet.load(Ordering::Relaxed),
            "told during a request"
        );
        flags.serving.store(false, Ordering::Relaxed);
        // Looked at again within a second of the request's end.
        let _ = tokio::time::timeout(Duration::from_millis(1500), stream.read(&mut buf)).await;
        assert!(flags.quiet.load(Ordering::Relaxed), "not told once quiet");
    }

    /// A request that stays open with nothing moving (a WebSocket, a long poll) does not wake its task once a
    /// second for its whole life: the looks for quiet back off to the head timeout's pace.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_request_in_progress_is_looked_at_less_and_less_often() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let flags = Arc::new(Looks::default());
        flags.flags.serving.store(true, Ordering::Relaxed);
        let (hour, head_timeout) = (Duration::from_secs(3600), Duration::from_secs(60));
        let quiet = Some(Duration::from_millis(100));
        let mut stream =
            IdleTimeout::with_head_clock(ours, hour, flags.clone(), head_timeout, quiet);
        let mut buf = [0u8; 8];
        // Ten minutes of a silent request (paused time: the runtime jumps from one timer to the next).
        let silent = Duration::from_secs(600);
        assert!(tokio::time::timeout(silent, stream.read(&mut buf))
            .await
            .is_err());
        // Each look asks twice whether a head is awaited. Once a second would be 600 looks (1,200 asks); backing
        // off to a minute apart is 15.
        let asks = flags.asks.load(Ordering::Relaxed);
        assert!(asks < 60, "{} looks in 10 minutes", asks / 2);
    }

    /// Counts how often the stream asks whether the connection awaits a head (twice per look for quiet).
    #[derive(Default)]
    struct Looks {
        flags: Flags,
        asks: std::sync::atomic::AtomicUsize,
    }

    impl Requests for Looks {
        fn awaiting_head(&self) -> Option<u64> {
            self.asks.fetch_add(1, Ordering::Relaxed);
            self.flags.awaiting_head()
        }

        fn quiet(&self) {
            self.flags.quiet();
        }
    }

    /// Reads that keep arriving keep the connection open past its timeout; once they stop, it ends within
    /// about the timeout (the timer re-armed after each early firing, polled again only when due).
    #[tokio::test(flavor = "current_thread")]
    async fn progress_keeps_a_connection_and_silence_ends_it() {
        let timeout = Duration::from_millis(100);
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut stream = IdleTimeout::new(ours, timeout);
        let writer = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                theirs.write_all(b"x").await.unwrap();
            }
            theirs
        });
        let mut buf = [0u8; 8];
        for _ in 0..6 {
            assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        }
        let _theirs = writer.await.unwrap();
        let silent = Instant::now();
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = silent.elapsed();
        assert!(waited >= timeout - Duration::from_millis(5), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
