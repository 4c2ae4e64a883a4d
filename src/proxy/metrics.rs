//! The proxy's counters, and the task that reports them to init on the state channel.
//!
//! Requests are counted on the hot path with atomics only: a request holds a handle (`Arc<Series>`) resolved
//! when the routing table was built, so it takes no lock and allocates nothing. Series are kept by name in one
//! registry, so counters survive a reload; series no routing table uses any more are dropped at the next report.
//!
//! Reporting wakes nothing while the proxy is idle: the first change after a report wakes the reporter, which
//! waits a second (gathering what else changes), then sends one snapshot. With no change it sleeps for good.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::protocol::{
    HistogramSnapshot, MetricsSnapshot, ProxyMessage, RequestSeries, UpstreamSeries,
    LATENCY_BUCKETS,
};

/// The least time between two reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The label of a server or upstream a request never got to.
pub const NONE: &str = "-";

/// The proxy's one registry (one process, one set of counters).
pub fn registry() -> &'static Registry {
    static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);
    &REGISTRY
}

#[derive(Default)]
pub struct Registry {
    requests: Mutex<HashMap<(String, String), Arc<Series>>>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamStats>>>,
    /// Requests refused or answered before a server was chosen (`/healthz`, a bad Host).
    unrouted: Arc<Series>,
    changed: Changed,
}

/// Set on the first change after a report; wakes the reporter then, and only then.
#[derive(Default)]
struct Changed {
    dirty: AtomicBool,
    wake: Notify,
}

impl Changed {
    fn mark(&self) {
        // Release: the reporter's Acquire swap then sees every count made before this mark.
        if !self.dirty.swap(true, std::sync::atomic::Ordering::Release) {
            self.wake.notify_one();
        }
    }
}

/// Counts of one server and upstream.
#[derive(Default)]
pub struct Series {
    classes: [AtomicU64; 5],
    in_flight: AtomicU64,
    duration: Histogram,
}

#[derive(Default)]
pub struct UpstreamStats {
    retries: AtomicU64,
    queue_wait: Histogram,
}

/// Bucket counts (not cumulative) and the sum in microseconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

impl Registry {
    /// The series of `server` and `upstream`, made on first use. Called when a routing table is built.
    pub fn series(&self, server: &str, upstream: &str) -> Arc<Series> {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry((server.to_string(), upstream.to_string()))
                .or_default(),
        )
    }

    /// The counters of an upstream service, made on first use.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamStats> {
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }

    pub fn unrouted(&self) -> Arc<Series> {
        Arc::clone(&self.unrouted)
    }

    /// Start counting a request in `series`; it finishes when the returned guard drops.
    pub fn start(&self, series: Arc<Series>, started: Instant) -> Tracked {
        series.in_flight.fetch_add(1, Relaxed);
        self.changed.mark();
        Tracked {
            series,
            started,
            status: None,
            ended: None,
        }
    }

    pub fn retried(&self, upstream: &UpstreamStats) {
        upstream.retries.fetch_add(1, Relaxed);
        self.changed.mark();
    }

    pub fn waited(&self, upstream: &UpstreamStats, wait: Duration) {
        upstream.queue_wait.observe(wait);
        self.changed.mark();
    }

    /// Every series still in use, forgetting those no routing table refers to any more.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut requests = Vec::new();
        {
            let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, s| Arc::strong_count(s) > 1);
            let unrouted = (NONE.to_string(), NONE.to_string());
            let all = map.iter().chain([(&unrouted, &self.unrouted)]);
            for ((server, upstream), s) in all {
                requests.push(RequestSeries {
                    server: server.clone(),
                    upstream: upstream.clone(),
                    classes: std::array::from_fn(|i| s.classes[i].load(Relaxed)),
                    in_flight: s.in_flight.load(Relaxed),
                    duration: s.duration.snapshot(),
                });
            }
        }
        let mut map = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| Arc::strong_count(s) > 1);
        let upstreams = map
            .iter()
            .map(|(name, s)| UpstreamSeries {
                upstream: name.clone(),
                retries: s.retries.load(Relaxed),
                queue_wait: s.queue_wait.snapshot(),
            })
            .collect();
        MetricsSnapshot {
            requests,
            upstreams,
        }
    }
}

/// A request being counted: in flight until dropped, then counted by its status class and duration.
/// A request dropped without a status (the client went away first) counts as 499, as nginx logs it.
pub struct Tracked {
    series: Arc<Series>,
    started: Instant,
    status: Option<u16>,
    /// When the response ended, if known (else the clock is read at drop).
    ended: Option<Instant>,
}

impl Tracked {
    pub fn ended_at(&mut self, now: Instant) {
        self.ended = Some(now);
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let class = usize::from(self.status.unwrap_or(499) / 100).clamp(1, 5) - 1;
        let s = &self.series;
        let ended = self.ended.unwrap_or_else(Instant::now);
        s.duration
            .observe(ended.saturating_duration_since(self.started));
        s.classes[class].fetch_add(1, Relaxed);
        s.in_flight.fetch_sub(1, Relaxed);
        registry().changed.mark();
    }
}

/// Start counting a request in a routing table's series, from `started` (when the proxy got it).
pub fn start(series: &Arc<Series>, started: Instant) -> Tracked {
    registry().start(Arc::clone(series), started)
}

/// Count a request that no server took (answered before one was chosen), from `started`.
pub fn unrouted(started: Instant) -> Tracked {
    let registry = registry();
    registry.start(registry.unrouted(), started)
}

/// Report to init on `channel` (a second fd of the state channel) for as long as init reads.
pub async fn report(registry: &'static Registry, mut channel: tokio::net::UnixStream) {
    loop {
        registry.changed.wake.notified().await;
        tokio::time::sleep(REPORT_INTERVAL).await;
        registry
            .changed
            .dirty
            .swap(false, std::sync::atomic::Ordering::Acquire);
        let message = ProxyMessage::Metrics(registry.snapshot());
        let Ok(mut line) = serde_json::to_vec(&message) else {
            continue;
        };
        line.push(b'\n');
        if let Err(e) = channel.write_all(&line).await {
            tracing::warn!("metrics to init: {e}; no more reports");
            return;
        }
    }
}

/// A second fd on the state channel, for `report`: the reader of init's messages keeps the first.
pub fn back_channel(channel: &tokio::net::UnixStream) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsFd;
    let fd = channel.as_fd().try_clone_to_owned()?;
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_request_counts_by_class_and_leaves_flight() {
        let reg = registry();
        let series = reg.series("metrics-test.example", "app");
        let mut tracked = start(&series, Instant::now());
        let find = |snap: &MetricsSnapshot| {
            snap.requests
                .iter()
                .find(|r| r.server == "metrics-test.example" && r.upstream == "app")
                .cloned()
                .unwrap()
        };
        assert_eq!(find(&reg.snapshot()).in_flight, 1);
        tracked.set_status(503);
        drop(tracked);
        drop(start(&series, Instant::now()));
        let row = find(&reg.snapshot());
        assert_eq!(row.in_flight, 0);
        assert_eq!(row.classes, [0, 0, 0, 1, 1]);
        assert_eq!(row.duration.buckets.iter().sum::<u64>(), 2);
        assert_eq!(row.duration.buckets.len(), LATENCY_BUCKETS.len() + 1);
        // Once no routing table holds it, the series is forgotten.
        drop(series);
        assert!(reg
            .snapshot()
            .requests
            .iter()
            .all(|r| r.server != "metrics-test.example"));
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1000));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let snap = h.snapshot();
        assert_eq!(snap.buckets[0], 1, "1 ms is in the le=0.001 bucket");
        assert_eq!(snap.buckets[4], 1, "30 ms is in the le=0.05 bucket");
        assert_eq!(snap.buckets[LATENCY_BUCKETS.len()], 1);
        assert!((snap.sum_seconds - 60.031).abs() < 1e-9);
    }
}
