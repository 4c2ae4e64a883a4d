//! Sockets handed in by the parent through systemd-style socket activation (LISTEN_FDS from fd 3).
//!
//! This is the one place of the proxy that turns raw fd numbers into owned sockets.
#![allow(unsafe_code)] // audited: see the SAFETY comments

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

/// First inherited fd (sd_listen_fds).
const FIRST_FD: RawFd = 3;
/// More than this is surely a bogus environment, not a real handoff.
const MAX_FDS: usize = 1024;

/// One inherited fd with its LISTEN_FDNAMES name.
#[derive(Debug)]
pub struct InheritedFd {
    pub name: String,
    pub fd: OwnedFd,
}

/// What kind of socket an inherited fd is, found with getsockname/SO_TYPE rather than trusted from names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    TcpListener,
    UnixListener,
    UnixStream,
    Other,
}

/// Take the fds from LISTEN_FDS, if the environment is meant for this process (LISTEN_PID == getpid()).
/// Returns `Ok(None)` when there is no handoff at all. The variables are removed so children don't inherit them.
pub fn take_from_env() -> Result<Option<Vec<InheritedFd>>, String> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let pid = std::env::var("LISTEN_PID").unwrap_or_default();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    if pid.trim() != std::process::id().to_string() {
        return Err(format!(
            "LISTEN_PID={pid:?} is not this process ({}): the fds are not for us",
            std::process::id()
        ));
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count:?} is not a number"))?;
    if count > MAX_FDS {
        return Err(format!("LISTEN_FDS={count} is implausibly large"));
    }
    let names: Vec<&str> = if names.is_empty() {
        Vec::new()
    } else {
        names.split(':').collect()
    };
    let mut fds = Vec::with_capacity(count);
    for i in 0..count {
        let raw = FIRST_FD + i as RawFd;
        // An fd number that is not open would make from_raw_fd unsound: check it first.
        // SAFETY: F_GETFD only reads the flags of an fd number; no memory is passed or touched.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!(
                "inherited fd {raw} (LISTEN_FDS={count}) is not open: {e}"
            ));
        }
        // SAFETY: the fd is open (checked above), and LISTEN_PID names this process, so by the socket-activation
        // protocol nothing else in this process owns fds 3..3+LISTEN_FDS; each is taken exactly once here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let _ = nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let name = names.get(i).copied().unwrap_or("unknown").to_string();
        fds.push(InheritedFd { name, fd });
    }
    Ok(Some(fds))
}

/// Classify a socket by its address family and type.
pub fn socket_kind(fd: &OwnedFd) -> SocketKind {
    use std::os::fd::AsRawFd;
    let Ok(addr) = getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
        return SocketKind::Other;
    };
    let Ok(ty) = getsockopt(fd, sockopt::SockType) else {
        return SocketKind::Other;
    };
    let listening = getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
    match (addr.family(), ty, listening) {
        (Some(AddressFamily::Inet | AddressFamily::Inet6), SockType::Stream, true) => {
            SocketKind::TcpListener
        }
        (Some(AddressFamily::Unix), SockType::Stream, true) => SocketKind::UnixListener,
        (Some(AddressFamily::Unix), SockType::Stream, false) => SocketKind::UnixStream,
        _ => SocketKind::Other,
    }
}
