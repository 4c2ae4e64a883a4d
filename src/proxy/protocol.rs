//! What init tells the proxy process, one JSON object per line, over the fd named `stackinit-state`.
//!
//! Init sends a `Config` first, then a `State` whenever readiness or draining changes, and a new `Config` on
//! reload. The proxy never guesses service health: it routes and answers `/healthz` from these messages.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ProxySpec;

/// The LISTEN_FDNAMES name of the channel fd.
pub const STATE_FD_NAME: &str = "stackinit-state";
/// LISTEN_FDNAMES names of the listeners: `http` for plain listeners, `https` for TLS ones, in config order.
pub const HTTP_FD_NAME: &str = "http";
pub const HTTPS_FD_NAME: &str = "https";

// A few messages per reload: their size difference does not matter, and boxing would change the contract.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InitMessage {
    Config(ProxyRuntimeConfig),
    State(ProxyState),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyRuntimeConfig {
    pub proxy: ProxySpec,
    /// Each service named as an upstream, with the address of every replica, in replica order.
    pub upstreams: BTreeMap<String, Vec<UpstreamReplica>>,
    /// Names discovered at boot (instance facts) that every server with an EC2 wildcard also answers to.
    pub extra_server_names: Vec<String>,
    pub logs_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamReplica {
    /// `app@0`, or `app` for a single-replica service.
    pub name: String,
    /// `unix:/run/stackinit/app@0.sock` or `127.0.0.1:8000`.
    pub address: String,
    /// The service's `max_in_flight`: requests beyond it wait in the proxy for a replica with room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    /// The instance is shutting down: `/healthz` answers 503.
    pub draining: bool,
    /// Replica names that are ready for traffic.
    pub ready: BTreeSet<String>,
    /// Critical services (or replicas) that are not ready; `/healthz` answers 503 while this is not empty.
    pub unhealthy: Vec<String>,
}

/// What the proxy tells init, one JSON object per line, on the same channel in the other direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProxyMessage {
    /// The proxy's counters, sent at most about once a second and only after something changed.
    Metrics(MetricsSnapshot),
}

/// Upper bounds (seconds) of the latency and queue-wait histogram buckets; a last `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Status classes in the order of `RequestSeries::classes`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters since the proxy process started (they restart from zero with it, as Prometheus counters may).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Per server (its first name, `_` without one, `-` before one is chosen) and upstream (`-` for none).
    pub requests: Vec<RequestSeries>,
    /// Per upstream service.
    pub upstreams: Vec<UpstreamSeries>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSeries {
    pub server: String,
    pub upstream: String,
    /// Finished requests by status class, in `STATUS_CLASSES` order.
    pub classes: [u64; 5],
    /// Requests started and not yet finished (their response still streaming).
    pub in_flight: u64,
    /// From the request head to the end of the response body.
    pub duration: HistogramSnapshot,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSeries {
    pub upstream: String,
    /// Requests sent again: to the next replica after a failed connect, or on a fresh connection.
    pub retries: u64,
    /// Waits in the admission queue for a ready replica with room, however they ended.
    pub queue_wait: HistogramSnapshot,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative: one per `LATENCY_BUCKETS` bound, then the `+Inf` bucket.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

/// The address of each replica, as init binds them (one socket per replica).
pub use crate::config::values::replica_addresses;

/// Replica names of a service, matching `replica_addresses`: `app` for one replica, else `app@0` .. `app@{N-1}`.
pub fn replica_names(service: &str, replicas: u32) -> Vec<String> {
    if replicas <= 1 {
        return vec![service.to_string()];
    }
    (0..replicas).map(|i| format!("{service}@{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses_expand_unix_and_tcp() {
        assert_eq!(
            replica_addresses("unix:/run/s/app.sock", 1),
            vec!["unix:/run/s/app.sock"]
        );
        assert_eq!(
            replica_addresses("unix:/run/s/app.sock", 3),
            vec![
                "unix:/run/s/app@0.sock",
                "unix:/run/s/app@1.sock",
                "unix:/run/s/app@2.sock"
            ]
        );
        assert_eq!(
            replica_addresses("unix:/run/s/app", 2),
            vec!["unix:/run/s/app@0", "unix:/run/s/app@1"]
        );
        assert_eq!(
            replica_addresses("127.0.0.1:8000", 2),
            vec!["127.0.0.1:8000", "127.0.0.1:8001"]
        );
        assert_eq!(
            replica_addresses("[::1]:8000", 2),
            vec!["[::1]:8000", "[::1]:8001"]
        );
        assert_eq!(replica_names("app", 2), vec!["app@0", "app@1"]);
        assert_eq!(replica_names("app", 1), vec!["app"]);
    }

    #[test]
    fn init_messages_round_trip_as_json_lines() {
        let msg = InitMessage::State(ProxyState {
            draining: true,
            ready: ["app@0".to_string()].into(),
            unhealthy: vec![],
        });
        let line = serde_json::to_string(&msg).unwrap();
        assert!(line.contains("\"type\":\"state\""));
        assert_eq!(serde_json::from_str::<InitMessage>(&line).unwrap(), msg);
    }
}
