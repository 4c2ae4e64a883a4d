//! Listen addresses: syntax, replica expansion, and addresses that two sockets would both bind.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;

use super::ctx::{Ctx, MAX_REPLICAS};
use super::doc::KeyPath;
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
        if replicas > MAX_REPLICAS {
            // Reported by check_service; expanding them would exhaust memory.
            continue;
        }
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
    let control = ListenAddr::Unix(rec.config.init.control_socket.clone());
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for (j, later) in endpoints.iter().enumerate() {
        let here = later.at.to_string();
        if reported.contains(&here) {
            continue;
        }
        if later.addr == control {
            reported.insert(here);
            ctx.at(
                &later.at,
                &later.key,
                format!(
                    "{}{} is the control socket (init.control_socket)",
                    later.addr, later.replica
                ),
            );
            continue;
        }
        if let Some(earlier) = endpoints[..j].iter().find(|e| e.addr.overlaps(&later.addr)) {
            reported.insert(here);
            let message = if earlier.addr == later.addr {
                format!(
                    "address {}{} is already bound by {}{}",
                    later.addr, later.replica, earlier.key, earlier.replica
                )
            } else {
                format!(
                    "address {}{} overlaps {} of {}{}",
                    later.addr, later.replica, earlier.addr, earlier.key, earlier.replica
                )
            };
            ctx.at(&later.at, &later.key, message);
        }
    }
}
