//! Listening sockets owned by init and handed to children (invariant 4).
//!
//! They are bound once, before any child starts, and stay open across restarts, so a restarting
//! worker or proxy never refuses a connection: the kernel queues them on the backlog meanwhile.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr,
};
use nix::unistd::{Gid, Uid};

const BACKLOG: i32 = 1024;

pub use crate::config::values::ListenAddr;

pub use crate::config::values::replica_addresses;

/// A bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    pub addr: ListenAddr,
    pub fd: OwnedFd,
}

/// Who may connect to a unix socket: its owner and group, and its mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixPerms {
    pub owner: Option<Uid>,
    pub group: Option<Gid>,
    pub mode: u32,
}

pub fn bind(addr: &ListenAddr, perms: UnixPerms) -> io::Result<Listener> {
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match addr {
        ListenAddr::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            remove_stale_socket(path)?;
            let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None)?;
            socket::bind(fd.as_raw_fd(), &UnixAddr::new(path.as_path())?)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms.mode))?;
            if perms.owner.is_some() || perms.group.is_some() {
                nix::unistd::chown(path.as_path(), perms.owner, perms.group)?;
            }
            fd
        }
        ListenAddr::Tcp(sa) => {
            let family = if sa.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, flags, None)?;
            socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
            match sa {
                SocketAddr::V4(v4) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*v4))?,
                SocketAddr::V6(v6) => {
                    socket::setsockopt(&fd, socket::sockopt::Ipv6V6Only, &true)?;
                    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*v6))?
                }
            }
            fd
        }
    };
    socket::listen(
        &fd.as_fd(),
        socket::Backlog::new(BACKLOG).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(Listener {
        addr: addr.clone(),
        fd,
    })
}

/// A socket file left by a previous run would make bind fail with EADDRINUSE; anything else at that path
/// is not ours to delete.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_expansion() {
        assert_eq!(
            replica_addresses("unix:/run/x/app.sock", 1),
            vec!["unix:/run/x/app.sock"]
        );
        assert_eq!(
            replica_addresses("unix:/run/x/app.sock", 2),
            vec!["unix:/run/x/app@0.sock", "unix:/run/x/app@1.sock"]
        );
        assert_eq!(
            replica_addresses("127.0.0.1:8000", 3),
            vec!["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]
        );
        assert_eq!(
            replica_addresses("[::1]:80", 2),
            vec!["[::1]:80", "[::1]:81"]
        );
    }

    #[test]
    fn binds_unix_and_tcp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let l = bind(
            &ListenAddr::Unix(path.clone()),
            UnixPerms {
                mode: 0o660,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(l);
        // A stale socket file is replaced.
        bind(
            &ListenAddr::Unix(path),
            UnixPerms {
                mode: 0o600,
                ..Default::default()
            },
        )
        .unwrap();
        let t = bind(
            &ListenAddr::parse("127.0.0.1:0").unwrap(),
            UnixPerms::default(),
        )
        .unwrap();
        let _ = t;
    }
}
