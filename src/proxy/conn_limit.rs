//! The proxy's connection cap (`max_connections`, nginx's `worker_connections`), and how `/healthz`
//! stays answerable at it.
//!
//! Every client connection costs a file, and a proxied one a second (its upstream connection); the proxy
//! has `nofile` of them. Without a cap, 1000 idle connections used up PID 1's inherited 1024: accept(2)
//! failed, and a load balancer's fresh `/healthz` connection waited in the backlog until it timed out.
//! What happens at the cap, decided here:
//!
//! 1. A new connection closes the connection that has been idle longest (no request in progress,
//!    nothing left to write: kept alive, or never used) and takes its place, as nginx reuses its idle
//!    keep-alive connections. Idle connections cost nothing to drop, so a crowd of them (or of slowloris
//!    clients between requests) cannot keep anyone out.
//! 2. With none idle, every connection is busy with a request: the new one is accepted into a small
//!    reserve (`PROXY_RESERVE`, kept out of `max_connections` in the file budget, as nginx keeps
//!    `worker_connections` below its file limit) and gets one request, within a few seconds: `/healthz`
//!    is answered as usual (the instance is busy, not broken), anything else gets 503 with Retry-After.
//! 3. With the reserve full too, nothing more is accepted until a connection ends: the backlog holds them.
//!
//! A connection's file is counted from accept to close, by a guard inside its stream, so an upgraded
//! connection (WebSocket) still counts while its tunnel runs, and is never taken for idle.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Connections accepted above the cap to answer `/healthz` (see the module doc).
pub const RESERVE: usize = crate::nofile::PROXY_RESERVE as usize;

/// `max_connections`, or what the proxy's own open-file limit holds (see `crate::nofile`).
pub fn cap_for(spec: &crate::config::ProxySpec) -> usize {
    let soft = crate::nofile::current().0;
    let cap = spec
        .max_connections
        .map_or_else(|| crate::nofile::proxy_connections(soft), u64::from);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// The open connections of one proxy process, shared by its accept loops and connections.
pub struct ConnLimit {
    table: Mutex<Table>,
    /// A connection closed: an accept loop waiting for room may go on.
    freed: Notify,
    /// The proxy is stopping: every connection is told to close (set under the table's lock).
    stopping: AtomicBool,
}

#[derive(Default)]
struct Table {
    cap: usize,
    open: usize,
    next_id: u64,
    /// Orders idle connections by when they became idle.
    next_seq: u64,
    conns: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    /// Idle connections, longest idle first, as (sequence number, id). A connection that stops being idle
    /// stays queued (its entry's `idle_since` no longer matches) until `prune` or an eviction drops it: two
    /// updates per request cost no tree rebalancing or allocation.
    idle: VecDeque<(u64, u64)>,
    /// Whether the cap was reached (logged once per episode).
    at_cap: bool,
}

struct Entry {
    requests: u32,
    idle_since: Option<u64>,
    /// Told to close for a new connection: never idle again.
    evicting: bool,
    conn: Arc<ConnState>,
}

/// How a just-accepted connection is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// Above the cap, in the reserve: one request, `/healthz` or 503.
    Overflow,
}

/// What a connection task holds: its admission, the guard its stream carries, and the handle.
pub struct Admitted {
    pub admission: Admission,
    pub guard: FileGuard,
    pub handle: ConnHandle,
}

/// Shared between a connection's stream, its task and its requests.
struct ConnState {
    id: u64,
    /// Raised when the connection must close: its place is wanted, or the proxy is stopping.
    closing: Closing,
    /// Bytes written and not yet flushed: the connection is still answering.
    unflushed: AtomicBool,
    /// Requests begun, and in progress, for the stream's head clock (`idle_io`): read without the table's lock.
    begun: AtomicU64,
    open: AtomicU32,
    /// The stream moved nothing for a while with no request in progress (`idle_io`): the task may park.
    quiet: AtomicBool,
    /// The last request came with a body: hyper may still be reading it, so its state must stay.
    body: AtomicBool,
}

impl super::idle_io::Requests for ConnState {
    fn awaiting_head(&self) -> Option<u64> {
        (self.open.load(Ordering::Relaxed) == 0).then(|| self.begun.load(Ordering::Relaxed))
    }

    fn quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }
}

impl ConnLimit {
    pub fn new(cap: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            table: Mutex::new(Table {
                cap: cap.max(1),
                ..Table::default()
            }),
            freed: Notify::new(),
            stopping: AtomicBool::new(false),
        })
    }

    /// Tell every connection, open or yet to be admitted, to close: the proxy is stopping.
    pub fn stop_all(&self) {
        let table = self.lock();
        self.stopping.store(true, Ordering::Relaxed);
        for entry in table.conns.values() {
            entry.conn.closing.raise();
        }
    }

    /// A new `max_connections` (a reload); open connections stay.
    pub fn set_cap(&self, cap: usize) {
        self.lock().cap = cap.max(1);
        self.freed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once fewer than `max_connections` + the reserve are open, so one more may be accepted.
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let table = self.lock();
                if table.open < table.cap + RESERVE {
                    return;
                }
            }
            freed.await;
        }
    }

    /// Count a just-accepted connection, and decide how it is served (see the module doc).
    pub fn admit(self: &Arc<ConnLimit>) -> Admitted {
        let mut table = self.lock();
        let admission = if table.open < table.cap {
            table.at_cap = false;
            Admission::Normal
        } else if let Some(victim) = table.longest_idle() {
            victim.closing.raise();
            Admission::Normal
        } else {
            if !std::mem::replace(&mut table.at_cap, true) {
                tracing::warn!(
                    max_connections = table.cap,
                    "every connection is busy: new ones get /healthz answered, 503 otherwise"
                );
            }
            Admission::Overflow
        };
        let id = table.next_id;
        table.next_id += 1;
        table.open += 1;
        let conn = Arc::new(ConnState {
            id,
            closing: Closing::default(),
            unflushed: AtomicBool::new(false),
            begun: AtomicU64::new(0),
            open: AtomicU32::new(0),
            quiet: AtomicBool::new(false),
            body: AtomicBool::new(false),
        });
        // A new connection waits for its first request: idle, but the last one to be taken for it.
        let entry = Entry {
            requests: u32::from(admission == Admission::Overflow),
            idle_since: None,
            evicting: false,
            conn: Arc::clone(&conn),
        };
        table.conns.insert(id, entry);
        if admission == Admission::Normal {
            table.mark_idle(id);
        }
        // Checked under the lock `stop_all` holds: a connection is either in its table or told here.
        if self.stopping.load(Ordering::Relaxed) {
            conn.closing.raise();
        }
        drop(table);
        Admitted {
            admission,
            guard: FileGuard {
                limit: Arc::clone(self),
                conn: Arc::clone(&conn),
            },
            handle: ConnHandle {
                limit: Arc::clone(self),
                conn,
            },
        }
    }

    fn release(&self, id: u64) {
        let mut table = self.lock();
        if table.conns.remove(&id).is_some() {
            // Its place in the idle queue is stale now, and goes at the next prune or eviction.
            table.open -= 1;
        }
        drop(table);
        self.freed.notify_one();
    }

    fn request_started(&self, id: u64) {
        let mut table = self.lock();
        let Some(entry) = table.conns.get_mut(&id) else {
            return;
        };
        entry.requests += 1;
        entry.idle_since = None;
    }

    fn request_ended(&self, id: u64) {
        let mut table = self.lock();
        let Some(entry) = table.conns.get_mut(&id) else {
            return;
        };
        entry.requests = entry.requests.saturating_sub(1);
        if entry.requests == 0 && !entry.evicting {
            table.mark_idle(id);
        }
    }

    fn serving(&self, id: u64) -> bool {
        self.lock().conns.get(&id).is_some_and(|e| e.requests > 0)
    }
}

/// Connection ids are sequential: one multiplication spreads them, where the default SipHash cost more than
/// the rest of a request's bookkeeping.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Table {
    fn mark_idle(&mut self, id: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.conns.get_mut(&id) {
            entry.idle_since = Some(seq);
            self.idle.push_back((seq, id));
            self.prune();
        }
    }

    /// Whether a queued (sequence, id) still stands for an idle connection.
    fn is_current(&self, (seq, id): (u64, u64)) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|e| e.idle_since == Some(seq))
    }

    /// Drop the queue's stale places once they outnumber the connections: amortized, the queue stays
    /// within a few times the open connections however many requests they make.
    fn prune(&mut self) {
        if self.idle.len() > 2 * self.conns.len() + 64 {
            let mut idle = std::mem::take(&mut self.idle);
            idle.retain(|&place| self.is_current(place));
            self.idle = idle;
        }
    }

    /// Take the connection idle longest out of the idle set (it is about to close). One still writing
    /// its last response is not idle yet and stays.
    fn longest_idle(&mut self) -> Option<Arc<ConnState>> {
        while self
            .idle
            .front()
            .is_some_and(|&place| !self.is_current(place))
        {
            self.idle.pop_front();
        }
        let index = self.idle.iter().position(|&(seq, id)| {
            self.conns.get(&id).is_some_and(|e| {
                e.idle_since == Some(seq) && !e.conn.unflushed.load(Ordering::Relaxed)
            })
        })?;
        let (_, id) = self.idle.remove(index)?;
        let entry = self.conns.get_mut(&id)?;
        entry.idle_since = None;
        entry.evicting = true;
        Some(Arc::clone(&entry.conn))
    }
}

/// Counts a connection's file from accept to close; it lives in the connection's stream.
pub struct FileGuard {
    limit: Arc<ConnLimit>,
    conn: Arc<ConnState>,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        self.limit.release(self.conn.id);
    }
}

/// A connection task's view of its entry: requests in progress, and the call to close when idle.
#[derive(Clone)]
pub struct ConnHandle {
    limit: Arc<ConnLimit>,
    conn: Arc<ConnState>,
}

impl ConnHandle {
    /// A request began; it counts until the guard (held by its response body) is dropped.
    pub fn request(&self) -> RequestGuard {
        self.conn.begun.fetch_add(1, Ordering::Relaxed);
        self.conn.open.fetch_add(1, Ordering::Relaxed);
        self.limit.request_started(self.conn.id);
        RequestGuard {
            handle: self.clone(),
        }
    }

    /// Whether the request just begun came with a body (see [`Self::parkable`]).
    pub fn body_follows(&self, body: bool) {
        self.conn.body.store(body, Ordering::Relaxed);
    }

    /// The connection has been quiet (`idle_io`) and is idle between requests: nothing in progress, nothing
    /// left to write, and no request body hyper may still be reading. Its HTTP/1 state can then be let go
    /// (`server`'s parking). Clears the quiet mark: one answer per quiet spell. One atomic load on a busy
    /// connection.
    pub fn parkable(&self) -> bool {
        let conn = &self.conn;
        if !conn.quiet.load(Ordering::Relaxed) {
            return false;
        }
        conn.quiet.store(false, Ordering::Relaxed);
        conn.open.load(Ordering::Relaxed) == 0
            && !conn.unflushed.load(Ordering::Relaxed)
            && !conn.body.load(Ordering::Relaxed)
    }

    /// A parked connection has bytes to read: a quiet mark from its wait is stale.
    pub fn unpark(&self) {
        self.conn.quiet.store(false, Ordering::Relaxed);
    }

    /// Resolves when the connection must close: the proxy is stopping ([`Self::stopping`]), or a new
    /// connection needs its place (close it at once unless [`Self::serving`]).
    pub fn closing(&self) -> Closed<'_> {
        Closed {
            closing: &self.conn.closing,
            registered: None,
        }
    }

    /// The proxy is stopping: finish the requests in progress, then close.
    fn stopping(&self) -> bool {
        self.limit.stopping.load(Ordering::Relaxed)
    }

    /// A request is in progress (one that began just as the connection was chosen to close).
    fn serving(&self) -> bool {
        self.limit.serving(self.conn.id)
    }

    /// Told to close ([`Self::closing`]), the connection shuts down gracefully, letting requests in progress
    /// finish, when the proxy is stopping or a request has just begun; an idle connection whose place is
    /// wanted is closed (dropped) at once.
    pub fn finishes_before_closing(&self) -> bool {
        self.stopping() || self.serving()
    }

    /// What the connection's stream reads to time its request heads.
    pub fn requests(&self) -> Arc<dyn super::idle_io::Requests> {
        Arc::clone(&self.conn) as Arc<dyn super::idle_io::Requests>
    }

    /// Its HTTP serving is over but its stream may live on (an upgrade's tunnel): never idle again.
    pub fn retire(&self) {
        self.limit.request_started(self.conn.id);
    }
}

/// Told once, for good, that a connection must close. Its task waits on it without a lock on each poll (a
/// `Notify` took one each time the connection's task woke, twice a request).
#[derive(Default)]
struct Closing {
    raised: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Closing {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

/// Resolves once its connection is told to close (see [`ConnHandle::closing`]).
pub struct Closed<'a> {
    closing: &'a Closing,
    /// The waker left with `closing`: while it still wakes this task, a poll only reads the flag.
    registered: Option<Waker>,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.is_raised() {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        *self.closing.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        self.registered = Some(cx.waker().clone());
        // Raised between the first look and the waker being left: `raise` found no waker to wake.
        if self.closing.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One request in progress on a connection.
pub struct RequestGuard {
    handle: ConnHandle,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.handle.conn.open.fetch_sub(1, Ordering::Relaxed);
        self.handle.limit.request_ended(self.handle.conn.id);
    }
}

/// A client stream that carries its connection's [`FileGuard`] and tells whether it has bytes written
/// but not flushed (a response still going out is not idle).
pub struct Counted<S> {
    inner: S,
    conn: Arc<ConnState>,
    _guard: FileGuard,
}

impl<S> Counted<S> {
    pub fn new(inner: S, guard: FileGuard) -> Counted<S> {
        Counted {
            inner,
            conn: Arc::clone(&guard.conn),
            _guard: guard,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.conn.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.conn.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            self.conn.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn open(limit: &Arc<ConnLimit>) -> Admitted {
        limit.admit()
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let limit = ConnLimit::new(2);
        let first = open(&limit);
        let second = open(&limit);
        let busy = first.handle.request();
        drop(busy); // first is idle again, after second: second is now the longest idle
        let third = open(&limit);
        assert_eq!(third.admission, Admission::Normal);
        // second was told to close; first was not.
        assert!(second.told_to_close());
        assert!(!first.told_to_close());
    }

    #[test]
    fn many_requests_keep_the_idle_queue_small_and_its_order_right() {
        let limit = ConnLimit::new(2);
        let first = open(&limit);
        let second = open(&limit);
        for _ in 0..10_000 {
            drop(second.handle.request());
            drop(first.handle.request());
        }
        assert!(limit.lock().idle.len() <= 2 * 2 + 64 + 1, "the queue grows");
        // second went idle before first did: it is the one to close.
        let third = open(&limit);
        assert_eq!(third.admission, Admission::Normal);
        assert!(second.told_to_close());
        assert!(!first.told_to_close());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stop_tells_open_connections_and_any_admitted_after() {
        let limit = ConnLimit::new(4);
        let open_one = open(&limit);
        let handle = open_one.handle.clone();
        let waiting = tokio::spawn(async move {
            handle.closing().await;
            handle.stopping()
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "told to close before the stop");
        limit.stop_all();
        let stopping = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(
            stopping.unwrap().unwrap(),
            "the waiting connection was not woken as stopping"
        );
        assert!(
            open(&limit).told_to_close(),
            "a connection admitted after the stop"
        );
    }

    #[test]
    fn with_every_connection_busy_the_reserve_takes_overflow_until_full() {
        let limit = ConnLimit::new(1);
        let only = open(&limit);
        let _busy = only.handle.request();
        let mut overflow = Vec::new();
        for _ in 0..RESERVE {
            let admitted = open(&limit);
            assert_eq!(admitted.admission, Admission::Overflow);
            overflow.push(admitted);
        }
        assert_eq!(limit.lock().open, 1 + RESERVE);
        // No room until one closes; then exactly as many as closed.
        drop(overflow.pop());
        assert_eq!(limit.lock().open, RESERVE);
        drop(only);
        assert_eq!(limit.lock().open, RESERVE - 1);
    }

    #[test]
    fn a_connection_still_writing_or_retired_is_not_taken_for_idle() {
        let limit = ConnLimit::new(1);
        let writing = open(&limit);
        writing.handle.conn.unflushed.store(true, Ordering::Relaxed);
        assert_eq!(open(&limit).admission, Admission::Overflow);
        writing
            .handle
            .conn
            .unflushed
            .store(false, Ordering::Relaxed);
        writing.handle.retire();
        assert_eq!(open(&limit).admission, Admission::Overflow);
    }

    #[test]
    fn a_quiet_connection_parks_only_with_nothing_left_to_do() {
        use super::super::idle_io::Requests;
        let limit = ConnLimit::new(4);
        let admitted = open(&limit);
        let handle = &admitted.handle;
        assert!(!handle.parkable(), "parked without being quiet");
        handle.conn.quiet();
        assert!(handle.parkable(), "a quiet idle connection");
        assert!(!handle.parkable(), "parked twice for one quiet spell");
        let request = handle.request();
        handle.conn.quiet();
        assert!(!handle.parkable(), "parked with a request in progress");
        drop(request);
        handle.body_follows(true);
        handle.conn.quiet();
        assert!(
            !handle.parkable(),
            "parked with a body hyper may be reading"
        );
        handle.body_follows(false);
        handle.conn.unflushed.store(true, Ordering::Relaxed);
        handle.conn.quiet();
        assert!(!handle.parkable(), "parked with a response not flushed");
    }

    impl Admitted {
        /// Whether this connection has been told to close.
        fn told_to_close(&self) -> bool {
            let closed = self.handle.closing();
            tokio::pin!(closed);
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            closed.as_mut().poll(&mut cx).is_ready()
        }
    }
}
