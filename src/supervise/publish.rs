//! What the supervisor tells others after each batch of events: the proxy (its routing config and who is
//! ready), the API's event stream, and systemd. What to say is computed by pure functions of the unit
//! table; the `Reporter` only remembers what it said last, so it says only what changed.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;
use tracing::info;

use super::handle::Handle;
use super::proxy_link::ProxyFeeds;
use super::systemd_notify;
use super::unit::{Place, Unit, UnitKind};
use crate::api::{ServiceStatus, State};
use crate::config::Config;
use crate::facts::Facts;
use crate::proxy::protocol::{ProxyRuntimeConfig, ProxyState, UpstreamReplica};

/// The proxy's routing config: its spec, and every service replica's address.
pub fn proxy_config<'u>(
    config: &Config,
    units: impl Iterator<Item = &'u Unit>,
    facts: &Facts,
) -> Option<ProxyRuntimeConfig> {
    let proxy = config.proxy.clone()?;
    let mut upstreams: BTreeMap<String, Vec<UpstreamReplica>> = BTreeMap::new();
    for u in units.filter(|u| u.kind == UnitKind::Service && !u.listen.is_empty()) {
        upstreams
            .entry(u.service.clone())
            .or_default()
            .push(UpstreamReplica {
                name: u.name.clone(),
                address: u.listen[0].clone(),
                max_in_flight: u.spec.max_in_flight,
            });
    }
    Some(ProxyRuntimeConfig {
        proxy,
        upstreams,
        extra_server_names: facts.allowed_hosts(),
        logs_dir: config.init.logs_dir.clone(),
    })
}

/// Critical services that are not ready: what makes `/healthz` answer 503 (the proxy's state and the
/// dashboard both use it). A replica a rolling restart is replacing (`rolling`), and its successor, do not
/// count: a deploy is not an outage, and a load balancer must not pull the instance for one. A halted
/// rollout ends that: a replica left down counts again.
pub fn unhealthy<'u>(units: impl Iterator<Item = &'u Unit>, rolling: &[&str]) -> Vec<String> {
    units
        .filter(|u| u.kind == UnitKind::Service && u.spec.critical && !u.is_ready())
        .filter(|u| u.is_member() && !rolling.contains(&u.name.as_str()))
        .map(|u| u.name.clone())
        .collect()
}

/// Who the proxy may route to, and what `/healthz` says.
pub fn proxy_state<'u>(
    draining: bool,
    units: impl Iterator<Item = &'u Unit>,
    unhealthy: Vec<String>,
) -> ProxyState {
    ProxyState {
        draining,
        ready: units
            .filter(|u| u.is_ready())
            .map(|u| u.name.clone())
            .collect(),
        unhealthy,
    }
}

/// "2/3 ready, 1 fatal" over the autostart units, and whether every one of them has settled.
pub fn stack_summary<'u>(units: impl Iterator<Item = &'u Unit>, stopping: bool) -> (String, bool) {
    let autostart: Vec<&Unit> = units
        .filter(|u| u.spec.autostart && u.place != Place::Successor)
        .collect();
    let ready = autostart.iter().filter(|u| u.is_ready()).count();
    let fatal = autostart
        .iter()
        .filter(|u| u.machine.state == State::Fatal)
        .count();
    let mut summary = format!("{ready}/{} ready", autostart.len());
    if fatal > 0 {
        summary.push_str(&format!(", {fatal} fatal"));
    }
    if stopping {
        summary = format!("stopping: {summary}");
    }
    (summary, ready + fatal == autostart.len())
}

/// The supervisor's outbox, and what it last said through it.
pub struct Reporter {
    pub handle: Handle,
    pub proxy_feeds: ProxyFeeds,
    /// The task writing to the current proxy process's state channel.
    pub proxy_writer: Option<JoinHandle<()>>,
    /// What was last published on the event stream per unit, to send only changes.
    published: HashMap<String, ServiceStatus>,
    /// The last STATUS= sent to systemd, so it is sent only when it changes.
    pub last_summary: String,
    stack_ready_sent: bool,
}

impl Reporter {
    pub fn new(handle: Handle) -> Reporter {
        Reporter {
            proxy_feeds: ProxyFeeds::new(handle.proxy_metrics_feed()),
            handle,
            proxy_writer: None,
            published: HashMap::new(),
            last_summary: String::new(),
            stack_ready_sent: false,
        }
    }

    /// A new state channel for a new proxy process; the old one's writer stops.
    pub fn connect_proxy(&mut self) -> Option<std::os::fd::OwnedFd> {
        match self.proxy_feeds.connect() {
            Ok((fd, task)) => {
                if let Some(old) = self.proxy_writer.replace(task) {
                    old.abort();
                }
                Some(fd)
            }
            Err(e) => {
                tracing::error!("cannot create the proxy's state channel: {e}");
                None
            }
        }
    }

    pub fn send_proxy_config(&self, config: Option<ProxyRuntimeConfig>) {
        if let Some(config) = config {
            self.proxy_feeds.config.send_replace(Some(Arc::new(config)));
        }
    }

    pub fn send_proxy_state(&self, state: ProxyState) {
        self.proxy_feeds.state.send_if_modified(|s| {
            let changed = *s != state;
            if changed {
                *s = state;
            }
            changed
        });
    }

    /// Send the status of every unit that changed since the last call (uptime does not count).
    pub fn send_events(&mut self, units: &BTreeMap<String, Unit>) {
        let now = Instant::now();
        for unit in units.values() {
            let mut status = unit.status(now);
            let uptime = status.uptime_secs.take();
            if self.published.get(&unit.name) != Some(&status) {
                self.published.insert(unit.name.clone(), status.clone());
                status.uptime_secs = uptime;
                self.handle.publish_event(status);
            }
        }
        self.published.retain(|name, _| units.contains_key(name));
    }

    /// STATUS= to systemd when the summary changes, and READY=1 once every autostart unit has settled.
    pub fn send_readiness(&mut self, summary: String, settled: bool) {
        if summary != self.last_summary {
            systemd_notify::notify_status(&summary);
            self.last_summary = summary.clone();
        }
        if !self.stack_ready_sent && settled {
            self.stack_ready_sent = true;
            info!("stack ready: {summary}");
            crate::fault::inject(crate::fault::INIT_LOOP);
            systemd_notify::notify_ready(&summary);
        }
    }
}
