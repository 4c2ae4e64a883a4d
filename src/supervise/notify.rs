//! The NOTIFY_SOCKET server: services tell us READY=1, STATUS=, STOPPING=1, WATCHDOG=1 and WATCHDOG_USEC=,
//! as they would tell systemd. The sender's pid comes from SCM_CREDENTIALS (checked by the kernel), so a
//! process can only speak for the service it belongs to.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    /// The sender's uid, from SCM_CREDENTIALS like the pid.
    pub uid: u32,
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
        match recv_one(fd.as_raw_fd(), &mut buf, |_| true) {
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
    let mut budget = SenderBudget::default();
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        // Everything queued, per wake-up: a flood costs one wake for many datagrams.
        let drained = socket.try_io(Interest::READABLE, || {
            for _ in 0..1024 {
                match recv_one(socket.as_raw_fd(), &mut buf, |uid| {
                    budget.allows(uid, Instant::now())
                }) {
                    Ok(Some(n)) => {
                        if tx.send(n).is_err() {
                            return Ok(false);
                        }
                    }
                    Ok(None) => {} // over its sender's budget, no credentials, or not text
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        });
        match drained {
            Ok(true) => tokio::task::yield_now().await,
            Ok(false) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!("notify socket: {e}"),
        }
    }
}

/// The socket is world-writable (services run as other users), so one sender could flood PID 1. Each
/// uid gets a token bucket: `BURST` messages at once, `PER_SECOND` after that; the rest is dropped
/// before the supervisor spends any work on it. A service says READY=1, STATUS= and WATCHDOG=1 a few
/// times a second at most.
#[derive(Default)]
struct SenderBudget {
    buckets: HashMap<u32, (f64, Instant)>,
    dropped: u64,
    last_report: Option<Instant>,
}

impl SenderBudget {
    const BURST: f64 = 200.0;
    const PER_SECOND: f64 = 100.0;
    /// More uids than this and the table starts afresh: bounded memory whatever the senders.
    const MAX_SENDERS: usize = 4096;

    fn allows(&mut self, uid: u32, now: Instant) -> bool {
        if self.buckets.len() >= Self::MAX_SENDERS && !self.buckets.contains_key(&uid) {
            self.buckets.clear();
        }
        let (tokens, since) = self.buckets.entry(uid).or_insert((Self::BURST, now));
        let refill = now.saturating_duration_since(*since).as_secs_f64() * Self::PER_SECOND;
        *tokens = (*tokens + refill).min(Self::BURST);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        self.dropped += 1;
        if self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_report = Some(now);
            tracing::warn!(
                "notify socket: uid {uid} sends more than {} messages a second; {} dropped so far",
                Self::PER_SECOND,
                self.dropped
            );
        }
        false
    }
}

/// One datagram, if its sender may be heard (`admit` decides by uid before the text is parsed).
fn recv_one(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
    mut admit: impl FnMut(u32) -> bool,
) -> io::Result<Option<Notification>> {
    let mut cmsg = nix::cmsg_space!(socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)?;
    let len = msg.bytes;
    let mut sender = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmCredentials(cred) = c {
            sender = Some((cred.pid(), cred.uid()));
        }
    }
    let Some((pid, uid)) = sender.filter(|(_, uid)| admit(*uid)) else {
        return Ok(None);
    };
    let Some(data) = iov.first().map(|s| &s[..len]) else {
        return Ok(None);
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(None);
    };
    Ok(Some(Notification {
        pid,
        uid,
        fields: parse_fields(text),
    }))
}

/// The real uid of `pid`, from /proc.
pub fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The process group of `pid`, to attribute messages from a service's children (gunicorn workers).
pub fn process_group_of(pid: i32) -> Option<i32> {
    stat_field(pid, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_has_a_budget_and_it_refills() {
        let mut budget = SenderBudget::default();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| budget.allows(65534, t0)).count();
        assert_eq!(allowed, SenderBudget::BURST as usize);
        assert!(budget.allows(0, t0), "another uid has its own budget");
        assert!(!budget.allows(65534, t0));
        let later = t0 + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| budget.allows(65534, later)).count();
        assert_eq!(refilled, 10, "100 a second, so 10 after 100 ms");
    }

    #[test]
    fn fields() {
        let f = parse_fields("READY=1\nSTATUS=serving 3 workers\nWATCHDOG_USEC=500000\n");
        let n = Notification {
            pid: 1,
            uid: 0,
            fields: f,
        };
        assert_eq!(n.get("READY"), Some("1"));
        assert_eq!(n.get("STATUS"), Some("serving 3 workers"));
        assert_eq!(n.get("WATCHDOG_USEC"), Some("500000"));
        assert_eq!(n.get("NOPE"), None);
    }
}
