//! The listening sockets init owns (invariant 4): which addresses the config wants and with what
//! permissions, the spare socket of each replicated service, binding, handing out free sockets to a
//! rollout's successor, reassigning after a reload, and closing what nobody uses any more.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use nix::unistd::Gid;
use tracing::{debug, error, warn};

use super::launch;
use super::sockets::{self, ListenAddr, Listener, UnixPerms};
use super::unit::{Place, Unit, UnitKind};
use crate::config::{Config, ServiceSpec};
use crate::proxy::protocol;

/// Bound sockets by address, as the config spells it.
#[derive(Default)]
pub struct Listeners {
    bound: HashMap<String, Rc<Listener>>,
}

/// Every address a replicated service may use, per service and per `listen` entry (in order): one per
/// replica plus the spare a surge needs.
pub fn replica_address_pools(config: &Config) -> BTreeMap<String, Vec<Vec<String>>> {
    config
        .service
        .iter()
        .filter(|(_, spec)| spec.replicas >= 2)
        .map(|(name, spec)| {
            let pools = spec
                .listen
                .iter()
                .flat_map(|l| l.to_vec())
                .map(|a| sockets::replica_addresses(&a, spec.replicas + 1))
                .collect();
            (name.clone(), pools)
        })
        .collect()
}

/// Who may connect to a service's unix sockets. The proxy connects as its own user, so the group is the
/// proxy's when there is one.
fn service_perms(spec: &ServiceSpec, proxy_group: Option<Gid>) -> UnixPerms {
    UnixPerms {
        owner: spec.user.as_deref().and_then(launch::uid_of),
        group: proxy_group.or_else(|| spec.group.as_deref().and_then(launch::gid_of)),
        mode: spec.listen_mode.0,
    }
}

/// The proxy's own listen addresses, plain and TLS.
pub fn proxy_addresses(config: &Config) -> Vec<String> {
    config
        .proxy
        .iter()
        .flat_map(|p| p.listen.iter().chain(p.tls.iter().flat_map(|t| &t.listen)))
        .cloned()
        .collect()
}

/// The addresses the units and the proxy need, with their permissions.
fn wanted<'u>(config: &Config, units: impl Iterator<Item = &'u Unit>) -> Vec<(String, UnixPerms)> {
    let proxy_group = proxy_group(config);
    let mut wanted: Vec<(String, UnixPerms)> = units
        .flat_map(|unit| {
            let perms = service_perms(&unit.spec, proxy_group);
            unit.listen.iter().map(move |a| (a.clone(), perms))
        })
        .collect();
    let public = UnixPerms {
        mode: 0o666,
        ..UnixPerms::default()
    };
    wanted.extend(proxy_addresses(config).into_iter().map(|a| (a, public)));
    wanted
}

fn proxy_group(config: &Config) -> Option<Gid> {
    config
        .proxy
        .as_ref()
        .and_then(|p| launch::primary_gid(&p.user, p.group.as_deref()))
}

/// The spare socket of each replicated service: the pool's addresses no unit wants and no other service
/// claims (a spare may collide with another service's addresses: then there is none).
fn spares(config: &Config, wanted: &[(String, UnixPerms)]) -> Vec<(String, UnixPerms)> {
    let proxy_group = proxy_group(config);
    let claimed: HashSet<String> = config
        .service
        .values()
        .flat_map(|s| {
            s.listen
                .iter()
                .flat_map(|l| l.to_vec())
                .flat_map(move |a| sockets::replica_addresses(&a, s.replicas.max(1)))
        })
        .collect();
    let mut spares = Vec::new();
    for (service, pools) in replica_address_pools(config) {
        let Some(spec) = config.service.get(&service) else {
            continue;
        };
        let perms = service_perms(spec, proxy_group);
        for addr in pools.into_iter().flatten() {
            if !wanted.iter().any(|(a, _)| *a == addr) && !claimed.contains(&addr) {
                spares.push((addr, perms));
            }
        }
    }
    spares
}

impl Listeners {
    pub fn fd(&self, addr: &str) -> Option<BorrowedFd<'_>> {
        self.bound.get(addr).map(|l| l.fd.as_fd())
    }

    /// The sockets a unit's process gets, each with its LISTEN_FDNAMES name: a service its own addresses
    /// (named after the service), the proxy its plain and TLS listeners.
    pub fn fds_for(&self, unit: &Unit, config: &Config) -> Vec<(BorrowedFd<'_>, String)> {
        let named = |addrs: &[String], name: &str| -> Vec<(BorrowedFd<'_>, String)> {
            addrs
                .iter()
                .filter_map(|a| self.fd(a))
                .map(|fd| (fd, name.to_string()))
                .collect()
        };
        match (unit.kind, &config.proxy) {
            (UnitKind::Service, _) => named(&unit.listen, &unit.service),
            (UnitKind::Proxy, Some(proxy)) => {
                let tls: Vec<String> = proxy.tls.iter().flat_map(|t| t.listen.clone()).collect();
                let mut fds = named(&proxy.listen, protocol::HTTP_FD_NAME);
                fds.extend(named(&tls, protocol::HTTPS_FD_NAME));
                fds
            }
            (UnitKind::Proxy, None) => Vec::new(),
        }
    }

    /// Bind every address the config and the units need that is not bound yet, and the spares. Returns
    /// the failures by address; a spare that cannot be bound is only a warning: that service's rollouts
    /// then stop each replica before starting its successor.
    pub fn bind<'u>(
        &mut self,
        config: &Config,
        units: impl Iterator<Item = &'u Unit>,
    ) -> HashMap<String, String> {
        let wanted = wanted(config, units);
        for (addr, perms) in spares(config, &wanted) {
            if let Err(e) = self.bind_one(&addr, perms) {
                warn!(
                    "cannot bind the spare socket {addr} ({e}); rolling restarts will stop each replica before starting the new one"
                );
            }
        }
        let mut failures = HashMap::new();
        for (addr, perms) in wanted {
            if let Err(e) = self.bind_one(&addr, perms) {
                let e = format!("cannot bind {addr}: {e}");
                error!("{e}");
                failures.insert(addr, e);
            }
        }
        failures
    }

    fn bind_one(&mut self, addr: &str, perms: UnixPerms) -> Result<(), String> {
        if self.bound.contains_key(addr) {
            return Ok(());
        }
        let parsed = ListenAddr::parse(addr).map_err(|e| e.to_string())?;
        let listener = sockets::bind(&parsed, perms).map_err(|e| e.to_string())?;
        debug!("bound {addr}");
        self.bound.insert(addr.to_string(), Rc::new(listener));
        Ok(())
    }

    /// The service's free socket(s): of its pool, those no unit of it holds (which one is free moves as
    /// rollouts go). None without `listen`, with one replica, or when the spare could not be bound.
    pub fn free_addresses<'u>(
        &self,
        config: &Config,
        service: &str,
        units: impl Iterator<Item = &'u Unit>,
    ) -> Option<Vec<String>> {
        let pools = replica_address_pools(config)
            .remove(service)
            .filter(|pools| !pools.is_empty())?;
        let used: HashSet<&String> = units
            .filter(|u| u.service == service)
            .flat_map(|u| u.listen.iter())
            .collect();
        pools
            .into_iter()
            .map(|pool| {
                pool.into_iter()
                    .find(|a| !used.contains(a) && self.bound.contains_key(a))
            })
            .collect()
    }

    /// Every bound address.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.bound.keys().map(String::as_str)
    }

    /// A second handle on the socket at `addr` (the same socket, as a child gets it).
    pub fn duplicate(&self, addr: &str) -> Option<OwnedFd> {
        self.bound.get(addr)?.fd.try_clone().ok()
    }

    /// Close sockets that no unit, no proxy address and no pool uses any more.
    pub fn retain_used<'u>(&mut self, config: &Config, units: impl Iterator<Item = &'u Unit>) {
        let mut used: HashSet<String> = units.flat_map(|u| u.listen.iter().cloned()).collect();
        used.extend(proxy_addresses(config));
        used.extend(
            replica_address_pools(config)
                .into_values()
                .flatten()
                .flatten(),
        );
        self.bound.retain(|addr, _| used.contains(addr));
    }
}

/// After a reload: a replica made fresh gets its configured address, which a rollout may have moved to
/// another replica that still runs; it takes a free one from its service's pool instead.
pub fn reassign_replica_addresses(config: &Config, units: &mut BTreeMap<String, Unit>) {
    let holds = |u: &Unit| u.pid.is_some() || u.place != Place::Member;
    for (service, pools) in replica_address_pools(config) {
        for (j, pool) in pools.iter().enumerate() {
            let mut taken: Vec<String> = units
                .values()
                .filter(|u| u.service == service && holds(u))
                .filter_map(|u| u.listen.get(j).cloned())
                .collect();
            for unit in units
                .values_mut()
                .filter(|u| u.service == service && !holds(u))
            {
                let Some(mine) = unit.listen.get(j).cloned() else {
                    continue;
                };
                if taken.contains(&mine) {
                    if let Some(free) = pool.iter().find(|a| !taken.contains(a)) {
                        unit.listen[j] = free.clone();
                    }
                }
                taken.push(unit.listen[j].clone());
            }
        }
    }
}
