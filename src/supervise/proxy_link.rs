//! The channel init gives the proxy: JSON lines over a socketpair, fed from watch channels.
//!
//! A writer task per proxy process sends the current config, then the current state, then every change.
//! Watch channels coalesce bursts, so a slow proxy only ever sees the latest state.
//! The other direction carries the proxy's metrics snapshots; init keeps the latest for `/metrics`. The proxy
//! is untrusted: a line, the series in it and each label are bounded, and a proxy that breaks a bound or the
//! format is not listened to again (its process keeps its config and state feed).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::handle::ProxyMetricsFeed;
use crate::proxy::protocol::{
    InitMessage, MetricsSnapshot, ProxyMessage, ProxyRuntimeConfig, ProxyState, LATENCY_BUCKETS,
};

/// The longest metrics line init reads from the proxy: a snapshot of `MAX_SERIES` series fits in it.
pub const MAX_LINE: usize = 1 << 20;
/// The most request and upstream series a snapshot may hold (a server and upstream pair makes one).
pub const MAX_SERIES: usize = 2000;
/// The longest server or upstream label (server names and service names are far shorter).
pub const MAX_LABEL: usize = 255;
/// The least time between two reports init reads: the proxy reports at most once a second, and one that
/// sends faster is slowed by the socket's backpressure instead of costing PID 1 a parse per line.
const MIN_GAP: std::time::Duration = std::time::Duration::from_millis(500);

pub struct ProxyFeeds {
    pub config: watch::Sender<Option<Arc<ProxyRuntimeConfig>>>,
    pub state: watch::Sender<ProxyState>,
    /// Where the proxy's metrics go.
    pub metrics: ProxyMetricsFeed,
}

impl ProxyFeeds {
    pub fn new(metrics: ProxyMetricsFeed) -> ProxyFeeds {
        ProxyFeeds {
            config: watch::channel(None).0,
            state: watch::channel(ProxyState::default()).0,
            metrics,
        }
    }

    /// A new channel for a new proxy process: returns the child's end and the writer task.
    pub fn connect(&self) -> io::Result<(OwnedFd, JoinHandle<()>)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let std_stream = std::os::unix::net::UnixStream::from(ours);
        std_stream.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(std_stream)?.into_split();
        let config = self.config.subscribe();
        let state = self.state.subscribe();
        let metrics = Arc::clone(&self.metrics);
        // One task for both directions, so replacing the proxy's channel (abort) ends both.
        let task = tokio::task::spawn_local(async move {
            tokio::select! {
                () = feed(write, config, state) => {}
                () = receive(read, metrics) => {}
            }
        });
        Ok((theirs, task))
    }
}

fn line(message: &InitMessage) -> Vec<u8> {
    let mut text = serde_json::to_vec(message).unwrap_or_default();
    text.push(b'\n');
    text
}

async fn feed(
    mut stream: OwnedWriteHalf,
    mut config: watch::Receiver<Option<Arc<ProxyRuntimeConfig>>>,
    mut state: watch::Receiver<ProxyState>,
) {
    let mut send_config = true;
    let mut send_state = true;
    loop {
        if send_config {
            let current = config.borrow_and_update().clone();
            if let Some(c) = current {
                if stream
                    .write_all(&line(&InitMessage::Config((*c).clone())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if send_state || send_config {
            let current = state.borrow_and_update().clone();
            if stream
                .write_all(&line(&InitMessage::State(current)))
                .await
                .is_err()
            {
                return;
            }
        }
        // Biased: when both changed, the config goes first (and the state after it). Readiness is by name,
        // and a rolling restart gives a replica's name to its successor on another socket: a state sent
        // ahead of its config would mark the old process's socket ready again, and requests would wait in
        // the backlog of a socket nobody serves.
        tokio::select! {
            biased;
            changed = config.changed() => { if changed.is_err() { return; } send_config = true; send_state = false; }
            changed = state.changed() => { if changed.is_err() { return; } send_config = false; send_state = true; }
        }
    }
}

/// Keep the proxy's latest metrics until it closes the channel. Returns at EOF (the proxy is gone); never
/// returns after a broken bound, so the feed goes on while nothing more is read.
async fn receive(read: OwnedReadHalf, sink: ProxyMetricsFeed) {
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    let mut ours: Option<Arc<MetricsSnapshot>> = None;
    loop {
        line.clear();
        let limited = (&mut reader).take(MAX_LINE as u64 + 1);
        let mut limited = std::pin::pin!(limited);
        let read = limited.read_until(b'\n', &mut line).await;
        if line.len() > MAX_LINE {
            tracing::warn!("proxy metrics: a line longer than {MAX_LINE} bytes; not reading more");
            return std::future::pending().await;
        }
        if !matches!(read, Ok(n) if n > 0) || line.last() != Some(&b'\n') {
            break;
        }
        match parse_metrics(&line) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                ours = Some(Arc::clone(&snapshot));
                sink.send_replace(Some(snapshot));
                tokio::time::sleep(MIN_GAP).await;
            }
            Err(e) => {
                tracing::warn!("proxy metrics: {e}; not reading more");
                return std::future::pending().await;
            }
        }
    }
    // The proxy is gone: its counters go with it, unless a newer proxy has reported since.
    sink.send_if_modified(|current| {
        let still_ours = matches!((&*current, &ours), (Some(c), Some(o)) if Arc::ptr_eq(c, o));
        if still_ours {
            *current = None;
        }
        still_ours
    });
}

/// One line from the proxy, checked against the bounds.
pub fn parse_metrics(line: &[u8]) -> Result<MetricsSnapshot, String> {
    let ProxyMessage::Metrics(snapshot) =
        serde_json::from_slice(line).map_err(|e| format!("bad message: {e}"))?;
    let series = snapshot.requests.len() + snapshot.upstreams.len();
    if series > MAX_SERIES {
        return Err(format!("{series} series, more than {MAX_SERIES}"));
    }
    let labels = snapshot
        .requests
        .iter()
        .flat_map(|r| [&r.server, &r.upstream])
        .chain(snapshot.upstreams.iter().map(|u| &u.upstream));
    for label in labels {
        if label.len() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err("a label too long or with control characters".into());
        }
    }
    let histograms = snapshot
        .requests
        .iter()
        .map(|r| &r.duration)
        .chain(snapshot.upstreams.iter().map(|u| &u.queue_wait));
    for h in histograms {
        if h.buckets.len() != LATENCY_BUCKETS.len() + 1 || !h.sum_seconds.is_finite() {
            return Err("a histogram without the agreed buckets".into());
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    fn runtime(logs: &str) -> Arc<ProxyRuntimeConfig> {
        Arc::new(ProxyRuntimeConfig {
            proxy: Default::default(),
            upstreams: Default::default(),
            extra_server_names: vec![],
            logs_dir: logs.into(),
        })
    }

    /// Reads one line of the proxy's end and names its message kind.
    async fn next_kind(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
    ) -> String {
        let line = lines.next_line().await.unwrap().unwrap();
        match serde_json::from_str::<InitMessage>(&line).unwrap() {
            InitMessage::Config(c) => format!("config {}", c.logs_dir.display()),
            InitMessage::State(s) => format!("state {:?}", Vec::from_iter(s.ready)),
        }
    }

    fn snapshot_line(series: usize, label: &str) -> Vec<u8> {
        use crate::proxy::protocol::{HistogramSnapshot, RequestSeries};
        let row = RequestSeries {
            server: label.into(),
            upstream: "app".into(),
            duration: HistogramSnapshot {
                buckets: vec![0; LATENCY_BUCKETS.len() + 1],
                sum_seconds: 0.0,
            },
            ..Default::default()
        };
        let snapshot = MetricsSnapshot {
            requests: vec![row; series],
            upstreams: vec![],
        };
        let mut line = serde_json::to_vec(&ProxyMessage::Metrics(snapshot)).unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn metrics_from_the_proxy_are_bounded() {
        assert!(parse_metrics(&snapshot_line(3, "a.example")).is_ok());
        assert!(parse_metrics(&snapshot_line(MAX_SERIES + 1, "a")).is_err());
        assert!(parse_metrics(&snapshot_line(1, &"x".repeat(MAX_LABEL + 1))).is_err());
        assert!(parse_metrics(&snapshot_line(1, "a\nb")).is_err());
        assert!(parse_metrics(b"{\"type\":\"metrics\"}\n").is_err());
        let short = String::from_utf8(snapshot_line(1, "a"))
            .unwrap()
            .replace("[0,0,0,0,0,0,0,0,0,0,0,0,0]", "[0]");
        assert!(parse_metrics(short.as_bytes()).is_err());
    }

    /// A proxy that keeps sending: init keeps only its latest snapshot; a line past the bound ends listening
    /// (the earlier snapshot stays); the proxy closing its end drops its snapshot.
    #[tokio::test(flavor = "current_thread")]
    async fn init_keeps_the_latest_snapshot_and_stops_reading_a_proxy_that_breaks_a_bound() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let sink: ProxyMetricsFeed = Arc::new(watch::channel(None).0);
                let feeds = ProxyFeeds::new(Arc::clone(&sink));
                let (theirs, task) = feeds.connect().unwrap();
                let mut proxy = std::os::unix::net::UnixStream::from(theirs);
                let mut seen = sink.subscribe();
                use std::io::Write;
                proxy.write_all(&snapshot_line(1, "one")).unwrap();
                proxy.write_all(&snapshot_line(2, "two")).unwrap();
                seen.wait_for(|s| s.as_ref().is_some_and(|s| s.requests.len() == 2))
                    .await
                    .unwrap();
                assert_eq!(sink.borrow().as_ref().unwrap().requests[0].server, "two");
                drop(proxy);
                seen.wait_for(Option::is_none).await.unwrap();
                task.await.unwrap();

                let (theirs, task) = feeds.connect().unwrap();
                let mut proxy = std::os::unix::net::UnixStream::from(theirs);
                proxy.write_all(&snapshot_line(1, "kept")).unwrap();
                seen.wait_for(Option::is_some).await.unwrap();
                let flood = vec![b'x'; MAX_LINE + 10];
                let writer = std::thread::spawn(move || {
                    let _ = proxy.write_all(&flood);
                    proxy
                });
                // Past the pause after a report, init reads the flood up to its bound and stops.
                tokio::time::sleep(MIN_GAP * 3).await;
                assert!(!task.is_finished(), "the feed to the proxy goes on");
                assert_eq!(sink.borrow().as_ref().unwrap().requests[0].server, "kept");
                task.abort();
                let _ = task.await;
                drop(writer.join());
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_config_and_a_state_published_together_arrive_config_first() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let feeds = ProxyFeeds::new(Arc::new(watch::channel(None).0));
                feeds.config.send_replace(Some(runtime("/one")));
                let (theirs, _task) = feeds.connect().unwrap();
                let std = std::os::unix::net::UnixStream::from(theirs);
                std.set_nonblocking(true).unwrap();
                let mut lines =
                    tokio::io::BufReader::new(tokio::net::UnixStream::from_std(std).unwrap())
                        .lines();
                assert_eq!(next_kind(&mut lines).await, "config /one");
                assert_eq!(next_kind(&mut lines).await, "state []");
                // A rollout's swap: the config (the name now on another socket) and the state naming it
                // ready change in the same tick. Many times, since an unbiased select picks at random.
                for round in 0..50 {
                    let logs = format!("/r{round}");
                    feeds.config.send_replace(Some(runtime(&logs)));
                    feeds.state.send_replace(ProxyState {
                        ready: [format!("app@{round}")].into(),
                        ..Default::default()
                    });
                    assert_eq!(next_kind(&mut lines).await, format!("config {logs}"));
                    assert_eq!(
                        next_kind(&mut lines).await,
                        format!("state [\"app@{round}\"]")
                    );
                }
            })
            .await;
    }
}
