//! Listen addresses: syntax, replica expansion, and addresses that two sockets would both bind.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use super::ctx::Ctx;
use super::doc::KeyPath;
use super::limits;
use crate::config::values::ListenAddr;
use crate::config::OneOrMany;

/// One socket that init will bind, and the config entry it comes from.
struct Endpoint {
    addr: ListenAddr,
    /// The array element or value the address was written in.
    at: KeyPath,
    /// The key shown in messages (`service.app.listen`).
    key: KeyPath,
    /// ` (replica app@1)` when the address was derived for one replica of several.
    replica: String,
}

/// Parse every listen address (reporting bad syntax), expand replicas, and report addresses bound twice.
pub(super) fn check_listen_clashes(ctx: &mut Ctx) {
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let rec = ctx.rec;
    for (name, spec) in &rec.config.service {
        if !limits::expandable(spec) {
            continue; // over the replica bound: reported there, and too many to expand
        }
        let key = Ctx::service_path(name).key("listen");
        let entries: Vec<(KeyPath, String)> = match &spec.listen {
            None => Vec::new(),
            Some(OneOrMany::One(addr)) => vec![(key.clone(), addr.clone())],
            Some(OneOrMany::Many(addrs)) => addrs
                .iter()
                .enumerate()
                .map(|(i, a)| (key.index(i), a.clone()))
                .collect(),
        };
        let replicas = spec.replicas.max(1);
        for (at, text) in entries {
            let addr = match ListenAddr::parse(&text) {
                Ok(addr) => addr,
                Err(e) => {
                    ctx.at(&at, &key, e);
                    continue;
                }
            };
            match addr.for_replicas(replicas) {
                Ok(expanded) => {
                    for (i, addr) in expanded.into_iter().enumerate() {
                        let replica = if replicas > 1 {
                            format!(" (replica {name}@{i})")
                        } else {
                            String::new()
                        };
                        endpoints.push(Endpoint {
                            addr,
                            at: at.clone(),
                            key: key.clone(),
                            replica,
                        });
                    }
                }
                Err(e) => ctx.at(
                    &at,
                    &key,
                    format!("{text:?} with replicas = {replicas}: {e}"),
                ),
            }
        }
    }
    if let Some(proxy) = &rec.config.proxy {
        let key = KeyPath::root().key("proxy").key("listen");
        let mut lists = vec![(key, proxy.listen.clone())];
        if let Some(tls) = &proxy.tls {
            lists.push((
                KeyPath::root().key("proxy").key("tls").key("listen"),
                tls.listen.clone(),
            ));
        }
        for (key, list) in lists {
            if ctx.dropped(&key) {
                continue; // a default stands in for a value already reported as wrong
            }
            for (i, text) in list.iter().enumerate() {
                match ListenAddr::parse(text) {
                    Ok(addr) => endpoints.push(Endpoint {
                        addr,
                        at: key.index(i),
                        key: key.clone(),
                        replica: String::new(),
                    }),
                    Err(e) => ctx.at(&key.index(i), &key, e),
                }
            }
        }
    }
    report_clashes(ctx, &endpoints);
}

/// Each config entry that binds an address bound before it (or the control socket) is reported once,
/// naming the first endpoint it clashes with. One pass over the endpoints.
fn report_clashes(ctx: &mut Ctx, endpoints: &[Endpoint]) {
    let control = ListenAddr::Unix(ctx.rec.config.init.control_socket.clone());
    let mut taken = Taken::default();
    let mut reported: HashSet<String> = HashSet::new();
    for (j, later) in endpoints.iter().enumerate() {
        let earlier = taken.first_overlap(&later.addr).map(|i| &endpoints[i]);
        taken.record(&later.addr, j);
        let here = later.at.to_string();
        if reported.contains(&here) {
            continue;
        }
        let message = if later.addr == control {
            format!(
                "{}{} is the control socket (init.control_socket)",
                later.addr, later.replica
            )
        } else if let Some(earlier) = earlier {
            if earlier.addr == later.addr {
                format!(
                    "address {}{} is already bound by {}{}",
                    later.addr, later.replica, earlier.key, earlier.replica
                )
            } else {
                format!(
                    "address {}{} overlaps {} of {}{}",
                    later.addr, later.replica, earlier.addr, earlier.key, earlier.replica
                )
            }
        } else {
            continue;
        };
        reported.insert(here);
        ctx.at(&later.at, &later.key, message);
    }
}

/// The endpoints recorded so far, indexed so that the first one an address overlaps (see
/// `ListenAddr::overlaps`) is found without a scan.
#[derive(Default)]
struct Taken {
    unix: HashMap<PathBuf, usize>,
    /// By (IPv4?, port).
    tcp: HashMap<(bool, u16), Port>,
}

/// The endpoints on one TCP port: the first of all, the first on the unspecified address, by IP.
struct Port {
    first: usize,
    any: Option<usize>,
    by_ip: HashMap<IpAddr, usize>,
}

impl Taken {
    fn first_overlap(&self, addr: &ListenAddr) -> Option<usize> {
        match addr {
            ListenAddr::Unix(path) => self.unix.get(path).copied(),
            ListenAddr::Tcp(a) if a.port() == 0 => None,
            ListenAddr::Tcp(a) => {
                let port = self.tcp.get(&(a.is_ipv4(), a.port()))?;
                if a.ip().is_unspecified() {
                    return Some(port.first);
                }
                let same = port.by_ip.get(&a.ip()).copied();
                [same, port.any].into_iter().flatten().min()
            }
        }
    }

    /// Note endpoint `index` at `addr` (the first at each place is the one reported against).
    fn record(&mut self, addr: &ListenAddr, index: usize) {
        match addr {
            ListenAddr::Unix(path) => {
                self.unix.entry(path.clone()).or_insert(index);
            }
            ListenAddr::Tcp(a) if a.port() == 0 => {}
            ListenAddr::Tcp(a) => {
                let port = self.tcp.entry((a.is_ipv4(), a.port())).or_insert(Port {
                    first: index,
                    any: None,
                    by_ip: HashMap::new(),
                });
                if a.ip().is_unspecified() {
                    port.any.get_or_insert(index);
                }
                port.by_ip.entry(a.ip()).or_insert(index);
            }
        }
    }
}
