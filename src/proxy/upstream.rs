//! Upstreams: replicas, their keep-alive connection pools, fewest-in-flight choice, and forwarding with retries.
//!
//! Each replica has its own socket, so the proxy (not the kernel's accept queue) decides which worker gets a
//! request: the ready replica with the fewest requests in flight. A sync worker serving a slow request then never
//! gets a second one while another worker is idle. When every replica is at its `max_in_flight`, requests wait
//! at the upstream's gate (admission.rs), fast paths first.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use super::admission::{Cost, Gate};
use super::answer::Answer;
use super::body::{BodyFault, Fault, ProxyBody};
use super::idle_io::IdleTimeout;
use super::metrics;

/// Idle keep-alive connections kept per replica and worker (nginx tuned: `keepalive 64`, per worker too).
const MAX_IDLE_PER_REPLICA: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Address {
    /// `unix:/path` or `IP:PORT` (`[v6]:PORT`).
    pub fn parse(text: &str) -> Option<Address> {
        if let Some(path) = text.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| Address::Unix(PathBuf::from(path)));
        }
        text.parse().ok().map(Address::Tcp)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One upstream process (or address) and its pool of idle connections.
pub struct Replica {
    pub name: String,
    pub address: Address,
    in_flight: AtomicUsize,
    /// Most requests in flight at once (`max_in_flight`); 0: no limit.
    limit: AtomicUsize,
    ready: AtomicBool,
    /// Idle connections, a pool per worker: a connection's task runs on the worker that opened it, so a
    /// request sent on it by another worker would wake that worker's core for every read and write.
    idle: Box<[Mutex<Vec<SendRequest<ProxyBody>>>]>,
    /// The service's gate: told when this replica frees a slot or becomes ready.
    gate: Arc<Gate>,
}

impl Replica {
    pub fn new(name: String, address: Address, ready: bool, gate: Arc<Gate>) -> Arc<Replica> {
        Arc::new(Replica {
            name,
            address,
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            ready: AtomicBool::new(ready),
            idle: (0..super::peers::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            gate,
        })
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    pub fn set_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::Relaxed);
        if ready {
            if !was {
                self.gate.wake_all();
            }
        } else {
            // A replica on its way out should not keep sockets to it open.
            for pool in self.idle.iter() {
                lock(pool).clear();
            }
        }
    }

    pub fn set_limit(&self, limit: Option<u32>) {
        self.limit
            .store(limit.map_or(0, |l| l.max(1) as usize), Ordering::Relaxed);
        self.gate.wake_all();
    }

    /// How many more requests it may take now (`usize::MAX` without a `max_in_flight`).
    fn free_slots(&self) -> usize {
        match self.limit.load(Ordering::Relaxed) {
            0 => usize::MAX,
            limit => limit.saturating_sub(self.in_flight()),
        }
    }

    /// Below its `max_in_flight`, so it may take another request now.
    fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.in_flight() < limit
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The calling worker's pool (uncontended: only that worker takes from it and gives back to it).
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<ProxyBody>>> {
        lock(&self.idle[super::peers::current() % self.idle.len()])
    }

    /// A pooled connection ready for a request, most recently used first. Closed ones are dropped; ones whose
    /// previous response the connection task has not finished yet stay pooled for a later request.
    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock_idle();
        while let Some(i) = idle.iter().rposition(|s| s.is_ready() || s.is_closed()) {
            let sender = idle.swap_remove(i);
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Put a connection back once its response has ended (no task per request: the lease returns it on drop).
    fn give_back(&self, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() || !self.is_ready() {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < MAX_IDLE_PER_REPLICA {
            idle.push(sender);
        }
    }

    async fn connect(&self, settings: &ForwardSettings) -> Result<SendRequest<ProxyBody>, Failure> {
        let idle = settings.response_timeout;
        let handshake = async {
            match &self.address {
                Address::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    let _ = stream.set_nodelay(true);
                    handshake(IdleTimeout::new(stream, idle)).await
                }
                Address::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    handshake(IdleTimeout::new(stream, idle)).await
                }
            }
        };
        match tokio::time::timeout(settings.connect_timeout, handshake).await {
            Ok(Ok(sender)) => Ok(sender),
            Ok(Err(e)) => Err(Failure::Connect(match &self.address {
                Address::Unix(path) if crate::unix_reach::is_permission_denied(&e) => {
                    format!(
                        "{}: {e}: {}",
                        self.address,
                        super::refusal::why_refused(path)
                    )
                }
                _ => format!("{}: {e}", self.address),
            })),
            Err(_) => Err(Failure::ConnectTimeout(format!(
                "{}: connect timed out",
                self.address
            ))),
        }
    }
}

fn lock<T>(pool: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned pool only means a panic elsewhere while holding it; the Vec itself is still valid.
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handshake<S>(stream: S) -> std::io::Result<SendRequest<ProxyBody>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        // Flat writes, as toward clients (server.rs): cheaper for the small requests nearly every one is.
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Counts a request as in flight on its replica until dropped (at the end of the response body), and holds the
/// upstream connection the response came on until then, to put it back in the pool.
pub struct InFlight {
    replica: Arc<Replica>,
    connection: Option<SendRequest<ProxyBody>>,
    cost: Cost,
    since: Instant,
    /// When the response ended, if the body that holds this lease read the clock for it (else read at drop).
    ended: Option<Instant>,
}

impl InFlight {
    /// The response ended at `now`: the slot is counted as held until then.
    pub fn ended_at(&mut self, now: Instant) {
        self.ended = Some(now);
    }

    /// Counted from `since`, when the request was sent (or about to be).
    fn new(replica: &Arc<Replica>, cost: Cost, since: Instant) -> InFlight {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        replica.gate.started(cost);
        InFlight {
            replica: Arc::clone(replica),
            connection: None,
            cost,
            since,
            ended: None,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Learns the cost and hands the slot to the next waiter.
        let ended = self.ended.unwrap_or_else(Instant::now);
        self.replica
            .gate
            .finished(self.cost, ended.saturating_duration_since(self.since));
        if let Some(sender) = self.connection.take() {
            self.replica.give_back(sender);
        }
    }
}

/// A named group of replicas that locations proxy to.
pub struct Upstream {
    pub name: String,
    pub replicas: Vec<Arc<Replica>>,
    /// Where requests wait while no replica is ready or has room; shared with the replicas.
    gate: Arc<Gate>,
    /// Rotates the starting point among equally loaded replicas, so ties spread round-robin.
    next: AtomicUsize,
    /// Retries and queue waits, counted by the upstream's name (so they survive a reload).
    stats: Arc<metrics::UpstreamStats>,
}

/// Why forwarding failed, mapped to the status the client gets.
#[derive(Debug)]
pub enum Failure {
    NoReadyReplica,
    Connect(String),
    ConnectTimeout(String),
    ResponseTimeout,
    /// The client's request body failed while it streamed upstream (see `BodyFault`).
    ClientBody(Fault),
    Upstream(String),
}

impl Failure {
    pub fn status(&self) -> hyper::StatusCode {
        use hyper::StatusCode;
        match self {
            Failure::ConnectTimeout(_) | Failure::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::ClientBody(Fault::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            // nginx reads the whole body before it connects upstream, and answers a malformed one with 400.
            Failure::ClientBody(Fault::Broken) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoReadyReplica => f.write_str("no ready replica"),
            Failure::Connect(e) | Failure::ConnectTimeout(e) | Failure::Upstream(e) => {
                f.write_str(e)
            }
            Failure::ResponseTimeout => f.write_str("upstream response timed out"),
            Failure::ClientBody(Fault::TooLarge) => f.write_str("request body too large"),
            Failure::ClientBody(Fault::Broken) => {
                f.write_str("the client's request body was malformed or cut off")
            }
        }
    }
}

/// What forwarding needs besides the request.
pub struct ForwardSettings {
    /// When the proxy got the request: the queue wait is bounded from it, and a request sent at once is
    /// counted on its replica from it (no clock read of its own).
    pub began: Instant,
    pub connect_timeout: Duration,
    /// Longest wait for a replica that is ready and has room.
    pub queue_timeout: Duration,
    /// Longest wait for the upstream between two successive reads or writes (nginx `proxy_read_timeout`), so
    /// also for the response to start. It also ends pooled connections idle that long.
    pub response_timeout: Duration,
}

/// Whether an upstream request failed because its connection's `IdleTimeout` ran out.
fn timed_out(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Where a forwarded request's time went before its response: waiting at the gate for a replica (the queue
/// time), and whether any replica was picked (only then is there an upstream time, as nginx logs `-` for a
/// request that never reached an upstream).
#[derive(Debug, Default, Clone, Copy)]
pub struct Waited {
    pub queued: Duration,
    pub picked: bool,
}

/// A response from a replica, with the guard that keeps it counted as in flight.
pub struct Forwarded {
    pub response: Response<Incoming>,
    pub in_flight: InFlight,
    pub replica: Arc<Replica>,
}

impl Upstream {
    /// `gate` must be the one the replicas were made with.
    pub fn new(name: String, replicas: Vec<Arc<Replica>>, gate: Arc<Gate>) -> Upstream {
        Upstream {
            stats: metrics::registry().upstream(&name),
            name,
            replicas,
            gate,
            next: AtomicUsize::new(0),
        }
    }

    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The ready replica with the fewest requests in flight, skipping those already tried. `None` too for a slow
    /// request while slow ones hold all but one replica (see admission.rs).
    pub fn pick(&self, tried: &[usize], cost: Cost) -> Option<usize> {
        let count = self.replicas.len();
        if count == 0 || !self.gate.admits(cost) {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut best: Option<(usize, usize)> = None;
        for offset in 0..count {
            let i = (start + offset) % count;
            let replica = &self.replicas[i];
            if !replica.is_ready() || !replica.has_room() || tried.contains(&i) {
                continue;
            }
            let load = replica.in_flight();
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((i, load));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Free slots on the ready replicas.
    fn free_slots(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.is_ready())
            .fold(0, |sum, r| sum.saturating_add(r.free_slots()))
    }

    /// Whether some ready replica has room (for a fast request, which any slot admits).
    fn has_room(&self) -> bool {
        self.replicas.iter().any(|r| r.is_ready() && r.has_room())
    }

    /// The slow-request cap for the gate: every ready replica's `max_in_flight` but one replica's.
    pub fn update_slow_cap(&self) {
        let limits: Vec<usize> = self
            .replicas
            .iter()
            .filter(|r| r.is_ready())
            .map(|r| r.limit.load(Ordering::Relaxed))
            .collect();
        let cap = (limits.len() >= 2 && !limits.contains(&0))
            .then(|| limits.iter().sum::<usize>() - limits.iter().max().copied().unwrap_or(0));
        self.gate.set_slow_cap(cap);
    }

    /// The next replica to try, waiting at the gate until `deadline` for one to become ready or have room
    /// while an untried replica exists. `None`: every replica was tried, or the wait ran out.
    async fn pick_or_wait(
        &self,
        tried: &[usize],
        cost: Cost,
        deadline: tokio::time::Instant,
    ) -> Option<usize> {
        if self.gate.may_pass(cost) {
            if let Some(index) = self.pick(tried, cost) {
                return Some(index);
            }
        }
        if tried.len() >= self.replicas.len() {
            return None;
        }
        let ticket = self.gate.enqueue(cost);
        let queued = Instant::now();
        let waited = || metrics::registry().waited(&self.stats, queued.elapsed());
        // A slot may have been freed after the pick above, with nobody waiting to be told: take it. But not a
        // slot already promised to a waiter that has been told and not yet run: waking ourselves for it let
        // every new arrival overtake that waiter, again and again (fast requests waited 100-150 ms behind
        // later ones under a steady load).
        self.gate.wake_for_unclaimed(self.free_slots());
        loop {
            // Checked here too: a stored wake-up makes `woken` ready at once, and no path may loop without
            // ever reaching the deadline.
            if tokio::time::Instant::now() >= deadline
                || tokio::time::timeout_at(deadline, ticket.woken())
                    .await
                    .is_err()
            {
                waited();
                return None;
            }
            if let Some(index) = self.pick(tried, cost) {
                ticket.served();
                waited();
                return Some(index);
            }
            // The free slot (if any) is on a replica this request already tried: the next waiter may use it.
            ticket.not_served(self.has_room());
        }
    }

    /// `pick_or_wait`, with the time it took added to `waited`.
    async fn timed_pick(
        &self,
        tried: &[usize],
        cost: Cost,
        deadline: tokio::time::Instant,
        waited: &mut Waited,
    ) -> Option<usize> {
        // A slot free now, with nobody ahead: no wait to time (two clock reads a request saved).
        if self.gate.may_pass(cost) {
            if let Some(index) = self.pick(tried, cost) {
                waited.picked = true;
                return Some(index);
            }
        }
        let since = Instant::now();
        // Boxed: the wait (a timer, a ticket) is rare, and inline it would grow every request's future.
        let picked = Box::pin(self.pick_or_wait(tried, cost, deadline)).await;
        waited.queued += since.elapsed();
        waited.picked |= picked.is_some();
        picked
    }

    /// Send the `pending` request to a replica. A failed connect moves on to the next replica whatever the method; a request
    /// lost on a connection that broke before any response byte is retried only when `rebuild` can make it again
    /// (idempotent, no body). `body` says whether the client's request body failed (too large, malformed).
    /// `waited` gets the time spent waiting for replicas, set even when forwarding fails. `pending` holds the
    /// request until it is sent: borrowed, not moved in, so this future (which every proxied request makes)
    /// does not hold a second copy of it.
    pub async fn forward(
        &self,
        pending: &mut Option<Request<ProxyBody>>,
        rebuild: Option<&(dyn Fn() -> Request<ProxyBody> + Sync)>,
        settings: &ForwardSettings,
        body: &BodyFault,
        waited: &mut Waited,
    ) -> Result<Forwarded, Failure> {
        let mut tried = Tried::default();
        let path = pending.as_ref().map_or("/", |request| request.uri().path());
        let cost = self.gate.classify(path);
        let mut last = Failure::NoReadyReplica;
        let deadline = tokio::time::Instant::from_std(settings.began) + settings.queue_timeout;
        // Bounded: each round tries a replica not tried before (plus one stale-pool retry per replica).
        while let Some(index) = self
            .timed_pick(tried.as_slice(), cost, deadline, waited)
            .await
        {
            if !tried.as_slice().is_empty() {
                metrics::registry().retried(&self.stats);
            }
            tried.push(index);
            let replica = &self.replicas[index];
            let sent_at_once = tried.as_slice().len() == 1 && waited.queued.is_zero();
            let since = if sent_at_once {
                settings.began
            } else {
                Instant::now()
            };
            let mut in_flight = InFlight::new(replica, cost, since);
            let mut pooled = replica.take_idle();
            let mut fresh_tries = 0;
            loop {
                let was_pooled = pooled.is_some();
                let mut sender = match pooled.take() {
                    Some(sender) => sender,
                    // Boxed, as a rare path (a pooled connection is the rule) that would grow every request's
                    // future by the size of a connect and a handshake.
                    None => match Box::pin(replica.connect(settings)).await {
                        Ok(sender) => sender,
                        Err(failure) => {
                            tracing::warn!(upstream = %self.name, replica = %replica.name, "{failure}");
                            last = failure;
                            break;
                        }
                    },
                };
                let Some(request) = pending.take().or_else(|| rebuild.map(|r| r())) else {
                    return Err(last);
                };
                // The response timeout lives in the connection (`IdleTimeout`): no timer per request. The
                // request stays in flight until the replica answers, even if its client leaves (answer.rs).
                let answer = Answer::new(sender.try_send_request(request), (in_flight, sender));
                let (answered, (held_in_flight, sender)) = answer.await;
                in_flight = held_in_flight;
                match answered {
                    Ok(response) => {
                        // An upgraded connection belongs to its tunnel; any other goes back to the pool when
                        // the response ends.
                        if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                            in_flight.connection = Some(sender);
                        }
                        return Ok(Forwarded {
                            response,
                            in_flight,
                            replica: Arc::clone(replica),
                        });
                    }
                    Err(mut e) => {
                        if let Some(fault) = body.get() {
                            return Err(Failure::ClientBody(fault));
                        }
                        if timed_out(e.error()) {
                            return Err(Failure::ResponseTimeout);
                        }
                        let failure =
                            Failure::Upstream(format!("{}: {}", replica.address, e.error()));
                        tracing::warn!(upstream = %self.name, replica = %replica.name, "{failure}");
                        last = failure;
                        if let Some(unsent) = e.take_message() {
                            // Never written (the pooled connection had closed): safe to send again, any method.
                            *pending = Some(unsent);
                            fresh_tries += 1;
                            if fresh_tries <= 1 {
                                metrics::registry().retried(&self.stats);
                                continue;
                            }
                            break;
                        }
                        if rebuild.is_none() {
                            return Err(last);
                        }
                        // Idempotent and bodyless: a kept-alive connection the upstream closed under us is
                        // retried once on a fresh connection, then on the next replica.
                        fresh_tries += 1;
                        if was_pooled && fresh_tries <= 1 {
                            metrics::registry().retried(&self.stats);
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The replicas a request has tried, in order: the usual few on the stack, not a Vec allocated per request.
#[derive(Default)]
struct Tried {
    inline: [usize; 8],
    len: usize,
    /// All of them, once there are more than `inline` holds.
    spilled: Vec<usize>,
}

impl Tried {
    fn push(&mut self, index: usize) {
        if self.spilled.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = index;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(index);
    }

    fn as_slice(&self) -> &[usize] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize) -> Upstream {
        let gate = Gate::new();
        let replicas = (0..n)
            .map(|i| {
                Replica::new(
                    format!("app@{i}"),
                    Address::parse(&format!("unix:/x/{i}")).unwrap(),
                    true,
                    Arc::clone(&gate),
                )
            })
            .collect();
        Upstream::new("app".into(), replicas, gate)
    }

    #[test]
    fn picks_fewest_in_flight_among_ready() {
        let up = upstream(3);
        let cost = up.gate().classify("/");
        let _a = InFlight::new(&up.replicas[0], cost, Instant::now());
        let _b = InFlight::new(&up.replicas[1], cost, Instant::now());
        assert_eq!(up.pick(&[], cost), Some(2));
        up.replicas[2].set_ready(false);
        let picked = up.pick(&[], cost).unwrap();
        assert!(picked == 0 || picked == 1);
        assert_eq!(up.pick(&[0, 1], cost), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_told_of_a_slot_keeps_it_from_a_later_arrival() {
        let up = Arc::new(upstream(1));
        up.replicas[0].set_limit(Some(1));
        let cost = up.gate().classify("/");
        let busy = InFlight::new(&up.replicas[0], cost, Instant::now());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let first = tokio::spawn({
            let up = Arc::clone(&up);
            async move { up.pick_or_wait(&[], cost, deadline).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(up.gate().waiting(), 1, "the first request waits");
        // The slot is freed and promised to the first waiter, whose task has not run yet when another arrives.
        drop(busy);
        let later = tokio::time::timeout(
            Duration::from_millis(200),
            up.pick_or_wait(&[], cost, deadline),
        )
        .await;
        assert!(later.is_err(), "the later arrival took the promised slot");
        assert_eq!(first.await.unwrap(), Some(0));
    }

    #[test]
    fn tried_keeps_every_replica_in_order_past_its_inline_room() {
        let mut tried = Tried::default();
        for i in 0..20 {
            tried.push(i * 3);
        }
        let expected: Vec<usize> = (0..20).map(|i| i * 3).collect();
        assert_eq!(tried.as_slice(), expected.as_slice());
    }

    #[test]
    fn ties_rotate() {
        let up = upstream(3);
        let cost = up.gate().classify("/");
        let picks: std::collections::BTreeSet<usize> =
            (0..3).filter_map(|_| up.pick(&[], cost)).collect();
        assert_eq!(picks.len(), 3);
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("unix:/a/b"),
            Some(Address::Unix("/a/b".into()))
        );
        assert_eq!(
            Address::parse("127.0.0.1:80"),
            Some(Address::Tcp("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(Address::parse("app"), None);
        assert_eq!(Address::parse("unix:"), None);
    }
}
