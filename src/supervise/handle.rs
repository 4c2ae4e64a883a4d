//! The supervisor's mailbox: how the control server (and init's signal handling) ask it to do things.
//!
//! Everything the supervisor does happens on its one event loop; other tasks only send it requests.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::api::{ActionReply, ApiError, DiffReply, DiffRequest, ReloadReply, ServiceStatus};
use crate::proxy::protocol::MetricsSnapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Where a service's log lives, and a live feed of the complete lines written to it from now on.
pub struct LogSource {
    pub path: PathBuf,
    pub lines: broadcast::Receiver<Bytes>,
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum Request {
    /// `name`: a service (`app`, all its replicas) or a replica (`app@1`); None for all.
    Status {
        name: Option<String>,
        reply: Reply<Vec<ServiceStatus>>,
    },
    Control {
        name: String,
        action: Action,
        /// Answer once the restart is over (every replica replaced and ready, or the rollout halted),
        /// not when it begins.
        wait: bool,
        reply: Reply<ActionReply>,
    },
    Reload {
        reply: Reply<ReloadReply>,
    },
    /// What a reload would do, without doing it; against `source` instead of the config file if given.
    Diff {
        source: Option<DiffRequest>,
        reply: Reply<DiffReply>,
    },
    Shutdown {
        reboot: bool,
        reply: Reply<ActionReply>,
    },
    Logs {
        name: String,
        stream: LogStream,
        reply: Reply<LogSource>,
    },
    /// The instance facts and the units that make `/healthz` fail (for the dashboard).
    Facts {
        reply: Reply<InstanceInfo>,
    },
}

/// Who this instance is, and what `/healthz` sees (besides the draining flag on the handle).
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceInfo {
    pub facts: crate::facts::Facts,
    /// Critical services that are not ready, by unit name: the same list the proxy's `/healthz` uses.
    pub unhealthy: Vec<String>,
    /// The user-data overlay of the running config, if any.
    pub user_data: Option<crate::api::UserDataStatus>,
}

/// A cheap, cloneable sender to the supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Request>,
    /// Set by whoever runs the shutdown sequence; read by `status` (`"draining": true`).
    draining: Arc<AtomicBool>,
    /// Every change of a unit's status, as the supervisor makes it (the event stream of the API).
    events: broadcast::Sender<ServiceStatus>,
    /// The draining flag again, for those who wait for it to change (the dashboard's event stream).
    draining_feed: Arc<watch::Sender<bool>>,
    /// The latest counters the proxy process reported (see `proxy_link`), for `/metrics`.
    proxy_metrics: ProxyMetricsFeed,
}

/// Where the proxy's latest metrics snapshot is kept: written by the channel to the proxy, read by scrapes.
pub type ProxyMetricsFeed = Arc<watch::Sender<Option<Arc<MetricsSnapshot>>>>;

fn gone() -> ApiError {
    ApiError {
        status: 503,
        message: "supervisor is shutting down".into(),
    }
}

impl Handle {
    pub fn new() -> (Handle, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Handle {
                tx,
                draining: Arc::default(),
                events: broadcast::channel(1024).0,
                draining_feed: Arc::new(watch::channel(false).0),
                proxy_metrics: Arc::new(watch::channel(None).0),
            },
            rx,
        )
    }

    /// Mark the instance as draining for shutdown (seen by every clone of this handle).
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.draining_feed.send_replace(draining);
    }

    /// A receiver that wakes whenever the draining flag is set or cleared.
    pub fn watch_draining(&self) -> watch::Receiver<bool> {
        self.draining_feed.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The proxy's latest reported counters; `None` before it reports (it reports after its first request).
    pub fn proxy_metrics(&self) -> Option<Arc<MetricsSnapshot>> {
        self.proxy_metrics.borrow().clone()
    }

    pub fn proxy_metrics_feed(&self) -> ProxyMetricsFeed {
        Arc::clone(&self.proxy_metrics)
    }

    /// A live feed of status changes: one `ServiceStatus` each time a unit's state, readiness, pid,
    /// restarts, reason or probe result changes. Subscribers that fall behind get `Lagged`.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ServiceStatus> {
        self.events.subscribe()
    }

    /// Used by the supervisor only.
    pub(crate) fn publish_event(&self, status: ServiceStatus) {
        let _ = self.events.send(status);
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn status(&self, name: Option<String>) -> Result<Vec<ServiceStatus>, ApiError> {
        self.ask(|reply| Request::Status { name, reply }).await
    }

    pub async fn control(&self, name: String, action: Action) -> Result<ActionReply, ApiError> {
        self.ask(|reply| Request::Control {
            name,
            action,
            wait: false,
            reply,
        })
        .await
    }

    /// `restart` that answers when the restart is over: `kubectl rollout status` for `stackinit`.
    pub async fn restart_and_wait(&self, name: String) -> Result<ActionReply, ApiError> {
        self.ask(|reply| Request::Control {
            name,
            action: Action::Restart,
            wait: true,
            reply,
        })
        .await
    }

    pub async fn reload(&self) -> Result<ReloadReply, ApiError> {
        self.ask(|reply| Request::Reload { reply }).await
    }

    pub async fn diff(&self, source: Option<DiffRequest>) -> Result<DiffReply, ApiError> {
        self.ask(|reply| Request::Diff { source, reply }).await
    }

    pub async fn shutdown(&self, reboot: bool) -> Result<ActionReply, ApiError> {
        self.ask(|reply| Request::Shutdown { reboot, reply }).await
    }

    pub async fn facts(&self) -> Result<InstanceInfo, ApiError> {
        self.ask(|reply| Request::Facts { reply }).await
    }

    pub async fn logs(&self, name: String, stream: LogStream) -> Result<LogSource, ApiError> {
        self.ask(|reply| Request::Logs {
            name,
            stream,
            reply,
        })
        .await
    }
}
