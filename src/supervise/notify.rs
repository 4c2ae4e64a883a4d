//! The NOTIFY_SOCKET server: services tell us READY=1, STATUS=, STOPPING=1, WATCHDOG=1 and WATCHDOG_USEC=,
//! as they would tell systemd. The sender's pid comes from SCM_CREDENTIALS (checked by the kernel), so a
//! process can only speak for the service it belongs to.
#![forbid(unsafe_code)]

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// One datagram from a service, already split into `KEY=VALUE` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub pid: i32,
    pub fields: Vec<(String, String)>,
}

impl Notification {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Bind the socket at `path` (world-writable: services run as other users; the pid check is what guards
/// it) and forward every message to `tx`. Also returns a second handle on the socket for `drain`.
pub fn serve(
    path: &Path,
    tx: mpsc::UnboundedSender<Notification>,
) -> io::Result<(PathBuf, OwnedFd)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, socket::sockopt::PassCred, &true)?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let drain_handle = fd.try_clone()?;
    let socket = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))?;
    tokio::task::spawn_local(receive(socket, tx));
    Ok((path.to_path_buf(), drain_handle))
}

/// Every message already queued on the socket, without waiting. The reaper takes these before it handles an
/// exit: a process that said MAINPID= and then exited must be seen to hand over before it is seen to end.
pub fn drain(fd: &OwnedFd) -> Vec<Notification> {
    let mut buf = vec![0u8; 4096];
    let mut messages = Vec::new();
    // Bounded: a sender flooding the socket cannot keep the reaper here.
    for _ in 0..256 {
        match recv_one(fd.as_raw_fd(), &mut buf) {
            Ok(Some(n)) => messages.push(n),
            Ok(None) => {}
            Err(_) => break, // EAGAIN: empty
        }
    }
    messages
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    stat_field(pid, 1)
}

/// Field `index` of /proc/PID/stat, counted after the command (which may contain spaces): 0 is the state,
/// 1 the parent pid, 2 the process group.
fn stat_field(pid: i32, index: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(index)?.parse().ok()
}

async fn receive(socket: UnixDatagram, tx: mpsc::UnboundedSender<Notification>) {
    let mut buf = vec![0u8; 4096];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_io(Interest::READABLE, || {
            recv_one(socket.as_raw_fd(), &mut buf)
        }) {
            Ok(Some(n)) => {
                if tx.send(n).is_err() {
                    return;
                }
            }
            Ok(None) => {} // no credentials or not text: ignore it
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("notify socket: {e}"),
        }
    }
}

fn recv_one(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Option<Notification>> {
    let mut cmsg = nix::cmsg_space!(socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let len = msg.bytes;
    let mut pid = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmCredentials(cred) = c {
            pid = Some(cred.pid());
        }
    }
    let Some(pid) = pid else { return Ok(None) };
    let Some(data) = iov.first().map(|s| &s[..len]) else {
        return Ok(None);
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(None);
    };
    Ok(Some(Notification {
        pid,
        fields: parse_fields(text),
    }))
}

/// The process group of `pid`, to attribute messages from a service's children (gunicorn workers).
pub fn process_group_of(pid: i32) -> Option<i32> {
    stat_field(pid, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let f = parse_fields("READY=1\nSTATUS=serving 3 workers\nWATCHDOG_USEC=500000\n");
        let n = Notification { pid: 1, fields: f };
        assert_eq!(n.get("READY"), Some("1"));
        assert_eq!(n.get("STATUS"), Some("serving 3 workers"));
        assert_eq!(n.get("WATCHDOG_USEC"), Some("500000"));
        assert_eq!(n.get("NOPE"), None);
    }
}
