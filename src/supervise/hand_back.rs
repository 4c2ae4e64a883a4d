//! Requests queued on a replica's socket while no process will accept them soon (the replica is in
//! backoff, fatal or stopped) go back to the proxy: each queued connection is accepted and closed at
//! once, so the proxy sees it end before any response and retries an idempotent request on another
//! replica, instead of leaving it to the upstream timeout (nginx's `proxy_next_upstream error`).
//!
//! A task per idle socket waits for connections on its own handle of the socket (epoll, no polling) and
//! is stopped the moment a process holds the socket again.
#![allow(unsafe_code)] // audited: one epoll registration (see the SAFETY comment)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{accept4, SockFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use tracing::debug;

use super::listeners::{self, Listeners};
use super::state::State;
use super::unit::Unit;
use crate::config::Config;

/// At most this many connections per wake-up, so that PID 1 stays responsive under a flood.
const MAX_PER_WAKE: usize = 256;

/// The sockets being handed back, by address.
#[derive(Default)]
pub struct HandBack {
    watching: HashMap<String, JoinHandle<()>>,
}

impl HandBack {
    /// Watch exactly the `idle` addresses: new ones start (with a handle from `duplicate`), those no
    /// longer idle stop.
    pub fn watch(&mut self, idle: &[&str], duplicate: impl Fn(&str) -> Option<OwnedFd>) {
        self.watching.retain(|addr, task| {
            let keep = idle.contains(&addr.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for addr in idle {
            if self.watching.contains_key(*addr) {
                continue;
            }
            if let Some(fd) = duplicate(addr) {
                let task = tokio::task::spawn_local(hand_back_forever(addr.to_string(), fd));
                self.watching.insert(addr.to_string(), task);
            }
        }
    }
}

/// The sockets no process will accept on soon: bound, not the proxy's own, and held by no unit whose
/// process runs or starts (backoff, fatal, stopped, or a rollout's free socket).
pub fn idle_addresses<'a>(
    units: &BTreeMap<String, Unit>,
    listeners: &'a Listeners,
    config: &Config,
) -> Vec<&'a str> {
    let held: HashSet<&str> = units
        .values()
        .filter(|u| u.pid.is_some() || u.machine.state == State::Starting)
        .flat_map(|u| u.listen.iter().map(String::as_str))
        .collect();
    let proxy = listeners::proxy_addresses(config);
    listeners
        .addresses()
        .filter(|a| !held.contains(a) && !proxy.iter().any(|p| p == a))
        .collect()
}

impl Drop for HandBack {
    fn drop(&mut self) {
        for task in self.watching.values() {
            task.abort();
        }
    }
}

async fn hand_back_forever(addr: String, fd: OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same for as long as it is
    // registered; nothing else closes or replaces it.
    let Ok(socket) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else {
        return;
    };
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return;
        };
        let handed = hand_back_queue(ready.get_inner().as_fd());
        if handed < MAX_PER_WAKE {
            ready.clear_ready();
        }
        if handed > 0 {
            debug!("{addr}: handed {handed} queued connections back to the proxy");
        }
        tokio::task::yield_now().await;
    }
}

/// Accept and close what waits in the queue now. `poll` first: the socket is shared with the processes
/// that serve it, so it stays blocking and a bare `accept` could wait.
fn hand_back_queue(fd: BorrowedFd<'_>) -> usize {
    let mut handed = 0;
    while handed < MAX_PER_WAKE {
        let mut pending = [PollFd::new(fd, PollFlags::POLLIN)];
        if !matches!(poll(&mut pending, PollTimeout::ZERO), Ok(1)) {
            break;
        }
        match accept4(fd, SockFlag::SOCK_CLOEXEC) {
            Ok(connection) => drop(connection),
            Err(_) => break,
        }
        handed += 1;
    }
    handed
}
