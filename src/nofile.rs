//! RLIMIT_NOFILE, the open-file limit: raised for stackinit at start, kept for the services, counted
//! against by the config checks.
//!
//! The kernel starts PID 1 with 1024 soft / 4096 hard, and everything it forks inherits that: about 150
//! units' logs, or a proxy that stops accepting at 1000 connections. So stackinit raises its own soft
//! limit to the hard one, and as PID 1 (where no parent chose a limit) the hard one to `fs.nr_open`
//! first. Under `stackinit run` the hard limit is its parent's choice (systemd's `LimitNOFILE=`, a
//! shell's `ulimit -Hn`) and stays. Services keep the soft limit stackinit started with, with the raised
//! hard limit above it, as systemd gives its services 1024:524288: a program that uses select(2) breaks
//! on descriptors above 1023, and one that needs more raises its own soft limit or sets `nofile`.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The kernel's RLIMIT_NOFILE for PID 1 (fs/file.c: INR_OPEN_CUR, INR_OPEN_MAX); also what is assumed
/// when the limit cannot be read.
pub const KERNEL_DEFAULT: (u64, u64) = (1024, 4096);

/// (soft, hard) as this process has them now.
pub fn current() -> (u64, u64) {
    getrlimit(Resource::RLIMIT_NOFILE).unwrap_or(KERNEL_DEFAULT)
}

/// The limits before and after [`raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    pub before: (u64, u64),
    pub after: (u64, u64),
}

impl Raised {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (before, after) = (self.before, self.after);
        write!(
            f,
            "open file limit raised from {}:{} to {}:{} (services keep a soft limit of {})",
            before.0, before.1, after.0, after.1, before.0
        )
    }
}

/// The soft limit stackinit started with, once [`raise`] has changed it.
static STARTED_WITH: OnceLock<u64> = OnceLock::new();

/// Raise the soft limit to the hard limit; with `beyond_hard` (PID 1), the hard limit to `fs.nr_open`
/// first where permitted (CAP_SYS_RESOURCE). Call once, early, before any thread or child exists.
pub fn raise(beyond_hard: bool) -> Result<Raised, String> {
    let before = current();
    let mut hard = before.1;
    if beyond_hard {
        if let Some(ceiling) = nr_open().filter(|&n| n > hard) {
            // EPERM without CAP_SYS_RESOURCE: keep the hard limit we have.
            if setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok() {
                hard = ceiling;
            }
        }
    }
    if before.0 < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("cannot raise RLIMIT_NOFILE to {hard}: {e}"))?;
    }
    let after = current();
    if after.0 != before.0 {
        let _ = STARTED_WITH.set(before.0);
    }
    Ok(Raised { before, after })
}

/// The (soft, hard) limit a service gets when its config says nothing: the soft limit stackinit started
/// with and the hard limit it has now; None when [`raise`] changed nothing (the child inherits ours).
pub fn for_services() -> Option<(u64, u64)> {
    let soft = *STARTED_WITH.get()?;
    let hard = current().1;
    Some((soft.min(hard), hard))
}

/// The proxy's open-file limit when `[proxy] nofile` is unset: plenty for an instance's connections,
/// within init's own hard limit (which the proxy cannot exceed unless init is root).
pub fn proxy_default() -> u64 {
    PROXY_DEFAULT.min(current().1)
}

const PROXY_DEFAULT: u64 = 65536;

/// Files the proxy holds besides its client connections and their upstream connections: listeners,
/// the state channel, stdout and stderr, the runtime, static files being sent.
pub const PROXY_OVERHEAD: u64 = 64;

/// Connections the proxy accepts above its cap only to answer `/healthz` (see `proxy::conn_limit`).
pub const PROXY_RESERVE: u64 = 32;

/// The files `connections` need in the proxy: two each (the client's, and an upstream's while it is
/// proxied), the reserve's, and the overhead.
pub fn proxy_files_for(connections: u64) -> u64 {
    2 * connections + PROXY_RESERVE + PROXY_OVERHEAD
}

/// The most connections a proxy with `nofile` files can serve at once (the default `max_connections`).
pub fn proxy_connections(nofile: u64) -> u64 {
    (nofile.saturating_sub(PROXY_RESERVE + PROXY_OVERHEAD) / 2).max(1)
}

/// The most a child of this process can be given: `fs.nr_open` as root, else our hard limit.
pub fn ceiling() -> u64 {
    let hard = current().1;
    if nix::unistd::geteuid().is_root() {
        nr_open().map_or(hard, |n| n.max(hard))
    } else {
        hard
    }
}

/// `/proc/sys/fs/nr_open`: the most any process may have.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_get_nothing_special_until_a_raise_changed_something() {
        // The test process never calls raise(): its children inherit its limit.
        assert_eq!(for_services(), None);
        let (soft, hard) = current();
        assert!(soft <= hard);
        assert!(nr_open().is_some_and(|n| n >= 1024));
    }

    #[test]
    fn proxy_connections_and_files_agree() {
        assert_eq!(proxy_connections(1024), 464);
        assert_eq!(proxy_files_for(464), 1024);
        assert_eq!(proxy_connections(65536), 32720);
        assert_eq!(proxy_connections(10), 1);
    }
}
