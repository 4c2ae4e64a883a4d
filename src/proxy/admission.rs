//! Admission to an upstream whose replicas are all busy: who gets the next free slot.
//!
//! With `max_in_flight` (sync workers: 1), requests beyond the replicas' room wait in the proxy. They wait in a
//! queue with two classes. A request to a path that has been slow (its learned cost is well above the
//! upstream's typical cost) ranks behind requests to fast paths, so a burst of slow reports cannot make every
//! page view wait 50 ms behind them: the head-of-line blocking a shared accept queue (nginx → gunicorn on one
//! socket) suffers. Within a class the order is arrival order. A slow request that has waited `AGE` ranks as
//! fast, so slow requests are delayed, never starved.
//!
//! Freed slots are handed on one waiter at a time (the best-ranked one not already woken), not to every waiter
//! at once: no thundering herd, and no waiter loses its place to a luckier one.
//!
//! Slow requests also never hold the last ready replica's slots (`slow_cap`): with 3 sync workers, at most 2 serve
//! slow paths at once, so a fast request finds a worker within about one fast request's time even while slow ones
//! pile up. A single replica has no such reserve.
#![forbid(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// After this long in the queue a slow request ranks with the fast ones (in arrival order, so ahead of them).
const AGE: Duration = Duration::from_secs(1);
/// Paths whose cost is learned (direct-mapped by hash: a collision just replaces the older path).
const COST_SLOTS: usize = 256;
/// A path is slow when its cost is this many times the upstream's typical (median) cost ...
const SLOW_FACTOR: f64 = 4.0;
/// ... and at least this long: a path that takes 0.4 ms next to 0.1 ms ones is not worth reordering.
const SLOW_FLOOR_US: f64 = 2_000.0;

/// One upstream's queue and learned costs, shared by its replicas (and carried over on reload).
#[derive(Default)]
pub struct Gate {
    inner: Mutex<Inner>,
}

struct Inner {
    waiters: Vec<Waiter>,
    next_id: u64,
    costs: Costs,
    /// Slow requests in flight on this upstream's replicas.
    slow_in_flight: usize,
    /// Most slow requests in flight at once (see the module comment).
    slow_cap: usize,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            waiters: Vec::new(),
            next_id: 0,
            costs: Costs::default(),
            slow_in_flight: 0,
            slow_cap: usize::MAX,
        }
    }
}

impl Inner {
    fn admits(&self, slow: bool) -> bool {
        !slow || self.slow_in_flight < self.slow_cap
    }

    /// Tell the best-ranked waiter not already told (and not `passed_from`) that may take a slot.
    fn wake_best(&mut self, passed_from: Option<u64>) {
        // Nobody waiting, as nearly always: no clock to read.
        if self.waiters.is_empty() {
            return;
        }
        let now = Instant::now();
        let slow_ok = self.admits(true);
        if let Some(w) = self
            .waiters
            .iter_mut()
            .filter(|w| !w.woken && Some(w.id) != passed_from && (slow_ok || !w.slow))
            .min_by_key(|w| w.rank(now))
        {
            w.woken = true;
            w.passed_on = passed_from.is_some();
            w.wake.notify_one();
        }
    }
}

struct Waiter {
    id: u64,
    arrived: Instant,
    slow: bool,
    /// Told a slot may be free and not yet back: the next free slot goes to someone else.
    woken: bool,
    /// Told by another waiter that could not use the slot: if it cannot either, it does not pass it on
    /// again (so two waiters that both tried the only free replica do not hand it back and forth).
    passed_on: bool,
    wake: Arc<Notify>,
}

impl Waiter {
    /// Lower ranks first: fast (or aged) before slow, then the earlier arrival.
    fn rank(&self, now: Instant) -> (bool, Instant) {
        (
            self.slow && now.duration_since(self.arrived) < AGE,
            self.arrived,
        )
    }
}

/// What the proxy knows about a request's cost before sending it.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    key: u64,
    pub slow: bool,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue itself stays consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cost class of a request for `path` (query excluded), from what earlier requests to it took.
    pub fn classify(&self, path: &str) -> Cost {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut hasher);
        let key = hasher.finish();
        let slow = self.lock().costs.is_slow(key);
        Cost { key, slow }
    }

    /// A request of this cost was sent to a replica.
    pub fn started(&self, cost: Cost) {
        if cost.slow {
            self.lock().slow_in_flight += 1;
        }
    }

    /// It ended, having held its replica this long (request sent to response body ended): learn its cost
    /// and hand the freed slot to the next waiter, under one lock.
    pub fn finished(&self, cost: Cost, held: Duration) {
        let mut inner = self.lock();
        if cost.slow {
            inner.slow_in_flight = inner.slow_in_flight.saturating_sub(1);
        }
        inner.costs.record(cost.key, held);
        inner.wake_best(None);
    }

    /// Whether a request of this cost may take a slot now (a slow one only below `slow_cap`).
    pub fn admits(&self, cost: Cost) -> bool {
        // A fast request is always admitted: no lock to read that.
        !cost.slow || self.lock().admits(true)
    }

    /// Set from the ready replicas and their `max_in_flight`: slow requests may fill every ready replica but
    /// one. `None`: no reserve (one replica, or no limit, so nobody waits for room).
    pub fn set_slow_cap(&self, cap: Option<usize>) {
        let mut inner = self.lock();
        let raised = cap.unwrap_or(usize::MAX) > inner.slow_cap;
        inner.slow_cap = cap.unwrap_or(usize::MAX);
        drop(inner);
        if raised {
            self.wake_all();
        }
    }

    /// Whether a new request may take a free slot now: nobody waiting ranks ahead of it.
    pub fn may_pass(&self, cost: Cost) -> bool {
        let inner = self.lock();
        // Nobody waiting, as nearly always: no clock to read.
        if inner.waiters.is_empty() {
            return true;
        }
        let now = Instant::now();
        let mine = (cost.slow, now);
        inner.waiters.iter().all(|w| w.rank(now) > mine)
    }

    /// Join the queue; the ticket leaves it when dropped.
    pub fn enqueue(self: &Arc<Gate>, cost: Cost) -> Ticket {
        let wake = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.waiters.push(Waiter {
            id,
            arrived: Instant::now(),
            slow: cost.slow,
            woken: false,
            passed_on: false,
            wake: Arc::clone(&wake),
        });
        Ticket {
            gate: Arc::clone(self),
            id,
            wake,
            served: false,
        }
    }

    /// A slot was freed: tell the best-ranked waiter not already told (that may take it).
    pub fn wake_one(&self) {
        self.wake_best(None);
    }

    fn wake_best(&self, passed_from: Option<u64>) {
        self.lock().wake_best(passed_from);
    }

    /// `free` slots are free: tell the best-ranked waiter not already told, unless every free slot is already
    /// promised to a waiter told of it (which has not run yet to take it).
    pub fn wake_for_unclaimed(&self, free: usize) {
        let mut inner = self.lock();
        let claimed = inner.waiters.iter().filter(|w| w.woken).count();
        if free > claimed {
            inner.wake_best(None);
        }
    }

    /// Room of unknown size appeared (a replica became ready, a limit changed): every waiter looks, best first.
    pub fn wake_all(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.waiters.sort_by_key(|w| w.rank(now));
        for w in inner.waiters.iter_mut().filter(|w| !w.woken) {
            w.woken = true;
            w.wake.notify_one();
        }
    }

    pub fn waiting(&self) -> usize {
        self.lock().waiters.len()
    }
}

/// A place in the queue.
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    wake: Arc<Notify>,
    served: bool,
}

impl Ticket {
    /// Wait until told that a slot may be free.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Told, but there was no slot for this request: wait for the next one, keeping the place.
    /// `room_left`: a slot is free that this request cannot use (it already tried that replica); it goes to
    /// the next waiter, unless this request was itself handed it by another that could not use it.
    pub fn not_served(&self, room_left: bool) {
        let pass = {
            let mut inner = self.gate.lock();
            let Some(w) = inner.waiters.iter_mut().find(|w| w.id == self.id) else {
                return;
            };
            w.woken = false;
            !std::mem::take(&mut w.passed_on)
        };
        if room_left && pass {
            self.gate.wake_best(Some(self.id));
        }
    }

    /// Got a slot: leave the queue.
    pub fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let was_woken = {
            let mut inner = self.gate.lock();
            let Some(i) = inner.waiters.iter().position(|w| w.id == self.id) else {
                return;
            };
            inner.waiters.remove(i).woken
        };
        // Leaving (timed out, client gone) while told of a slot: hand the slot on.
        if was_woken && !self.served {
            self.gate.wake_one();
        }
    }
}

/// How far a streaming median moves per sample (a factor).
const MEDIAN_STEP: f64 = 1.05;

/// Learned cost per path, and the upstream's typical cost.
struct Costs {
    /// Per path, a streaming median estimate (µs), set from its first sample. Not a mean: with a mean (it was
    /// an average weighted 1/4 to the newest), one fast request that took 40 ms on a busy box made `/` slow,
    /// so `/` requests queued behind the slow class for 100-150 ms until it decayed.
    slots: Vec<(u64, f64)>,
    /// A streaming median estimate (µs): moves a step towards each sample, so 1 slow request in 20 does not
    /// raise it the way it raises a mean.
    median_us: f64,
}

impl Default for Costs {
    fn default() -> Costs {
        Costs {
            slots: vec![(0, 0.0); COST_SLOTS],
            median_us: 0.0,
        }
    }
}

impl Costs {
    fn is_slow(&self, key: u64) -> bool {
        let (k, cost) = self.slots[(key % COST_SLOTS as u64) as usize];
        k == key && cost > SLOW_FLOOR_US && cost > SLOW_FACTOR * self.median_us
    }

    fn record(&mut self, key: u64, held: Duration) {
        let us = held.as_secs_f64() * 1e6;
        let slot = &mut self.slots[(key % COST_SLOTS as u64) as usize];
        if slot.0 == key && slot.1 > 0.0 {
            step_towards(&mut slot.1, us);
        } else {
            *slot = (key, us.max(1.0));
        }
        if self.median_us == 0.0 {
            self.median_us = us.max(1.0);
        } else {
            step_towards(&mut self.median_us, us);
        }
    }
}

/// One step of a streaming median: a fixed factor up or down, whatever the sample's size.
fn step_towards(estimate: &mut f64, sample: f64) {
    if sample > *estimate {
        *estimate *= MEDIAN_STEP;
    } else {
        *estimate /= MEDIAN_STEP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn(gate: &Gate, path: &str, ms: u64, times: usize) {
        for _ in 0..times {
            let cost = gate.classify(path);
            gate.started(cost);
            gate.finished(cost, Duration::from_millis(ms));
        }
    }

    #[tokio::test]
    async fn slow_requests_leave_a_replica_for_fast_ones() {
        let gate = Gate::new();
        learn(&gate, "/", 1, 40);
        learn(&gate, "/slow", 50, 3);
        gate.set_slow_cap(Some(2));
        let slow = gate.classify("/slow");
        gate.started(slow);
        gate.started(slow);
        assert!(
            !gate.admits(slow),
            "two slow in flight: the third replica is kept"
        );
        assert!(gate.admits(gate.classify("/")));
        let waiting_slow = gate.enqueue(slow);
        gate.wake_one();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting_slow.woken())
                .await
                .is_err(),
            "a slow waiter is not told of a slot it may not take"
        );
        gate.finished(slow, Duration::from_millis(50));
        tokio::time::timeout(Duration::from_millis(100), waiting_slow.woken())
            .await
            .expect("told once a slow request ended");
        waiting_slow.served();
    }

    #[test]
    fn a_path_much_slower_than_the_rest_is_slow() {
        let gate = Gate::new();
        assert!(!gate.classify("/report").slow, "unknown paths are fast");
        for _ in 0..20 {
            learn(&gate, "/", 1, 19);
            learn(&gate, "/report", 50, 1);
        }
        assert!(gate.classify("/report").slow);
        assert!(!gate.classify("/").slow);
    }

    #[test]
    fn one_slow_response_does_not_make_a_fast_path_slow() {
        // A busy box delays a fast request now and then; it must not move `/` into the slow class (where it
        // waited behind the real slow requests for 100-150 ms).
        let gate = Gate::new();
        for _ in 0..20 {
            learn(&gate, "/", 3, 19);
            learn(&gate, "/slow", 50, 1);
        }
        learn(&gate, "/", 60, 2);
        assert!(!gate.classify("/").slow);
        assert!(gate.classify("/slow").slow);
    }

    #[test]
    fn when_every_path_is_slow_none_is_ranked_behind() {
        let gate = Gate::new();
        for _ in 0..20 {
            learn(&gate, "/a", 50, 1);
            learn(&gate, "/b", 60, 1);
        }
        assert!(!gate.classify("/a").slow);
        assert!(!gate.classify("/b").slow);
    }

    #[tokio::test]
    async fn fast_waiters_are_told_before_earlier_slow_ones() {
        let gate = Gate::new();
        learn(&gate, "/", 1, 40);
        learn(&gate, "/slow", 50, 3);
        let slow = gate.enqueue(gate.classify("/slow"));
        let fast = gate.enqueue(gate.classify("/"));
        assert!(!gate.may_pass(gate.classify("/")), "a fast waiter is ahead");
        gate.wake_one();
        tokio::time::timeout(Duration::from_millis(100), fast.woken())
            .await
            .expect("the fast waiter is told first");
        // The fast one leaves without the slot (timed out, say): the slot goes on to the slow one.
        drop(fast);
        tokio::time::timeout(Duration::from_millis(100), slow.woken())
            .await
            .expect("the slot is handed on");
        slow.served();
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn a_slot_nobody_can_use_is_passed_on_once_not_back_and_forth() {
        // Both waiters already tried the one replica with room (its connect failed): the first passes the
        // slot to the second, which keeps it to itself; neither spins.
        let gate = Gate::new();
        let a = gate.enqueue(gate.classify("/"));
        let b = gate.enqueue(gate.classify("/"));
        gate.wake_one();
        a.woken().await;
        a.not_served(true);
        tokio::time::timeout(Duration::from_millis(100), b.woken())
            .await
            .expect("passed on to the next waiter");
        b.not_served(true);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a.woken())
                .await
                .is_err(),
            "not handed back"
        );
        // The next real event still reaches the first in line.
        gate.wake_one();
        tokio::time::timeout(Duration::from_millis(100), a.woken())
            .await
            .expect("a new slot goes to the first waiter");
    }

    #[tokio::test]
    async fn a_waiter_told_in_vain_keeps_its_place() {
        let gate = Gate::new();
        let first = gate.enqueue(gate.classify("/"));
        let second = gate.enqueue(gate.classify("/"));
        gate.wake_one();
        first.woken().await;
        first.not_served(false);
        gate.wake_one();
        tokio::time::timeout(Duration::from_millis(100), first.woken())
            .await
            .expect("still first in line");
        drop(second);
        first.served();
        assert_eq!(gate.waiting(), 0);
    }
}
