//! Why the proxy cannot reach an upstream's unix socket, in its error log: once when a config arrives (a 0700
//! directory on the way, a socket it may not write), and with each 502 that a refused connect caused. Without
//! it the log said only "Permission denied", and the access log a bare 502.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::refusal::explain;
use super::routes::{Action, Routes};
use super::upstream::Address;
use crate::unix_reach;

/// Log an error for each upstream socket this process cannot reach, naming the directory (or socket) in the
/// way and the user the proxy runs as. Sockets that do not exist yet (a service still starting) are skipped.
pub fn report_unreachable(routes: &Routes) {
    let mut blocked = BTreeSet::new();
    for path in unix_sockets(routes) {
        if let Some(denied) = unix_reach::check_as_me(&path) {
            // Replicas share a directory: one line for it, naming the first of its sockets.
            if blocked.insert(denied.path.clone()) {
                tracing::error!("cannot reach unix:{}: {}", path.display(), explain(&denied));
            }
        }
    }
}

/// Every unix socket a location proxies to.
fn unix_sockets(routes: &Routes) -> BTreeSet<PathBuf> {
    routes
        .servers
        .iter()
        .flat_map(|server| &server.actions)
        .filter_map(|action| match action {
            Action::Proxy(to) => Some(&to.upstream.replicas),
            _ => None,
        })
        .flatten()
        .filter_map(|replica| match &replica.address {
            Address::Unix(path) => Some(path.clone()),
            Address::Tcp(_) => None,
        })
        .collect()
}
