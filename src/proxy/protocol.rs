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

// A message is built a few times per proxy lifetime; boxing the big variant would buy nothing.
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
