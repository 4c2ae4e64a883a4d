//! What wakes the supervisor's loop besides its timers: signals, requests from other tasks, and the
//! reports of its own probe and notify tasks.
#![forbid(unsafe_code)]

use std::time::Instant;

use tokio::signal::unix::{signal as unix_signal, Signal as SignalStream, SignalKind};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use super::handle::Request;
use super::health::ProbeChannels;
use super::notify::Notification;
use super::probes::{ExecRequest, ProbeResult};

/// The signals the loop handles. One that cannot be watched is simply never received.
pub struct Signals {
    pub child: SignalStream,
    pub term: Option<SignalStream>,
    pub int: Option<SignalStream>,
    pub hup: Option<SignalStream>,
    pub usr1: Option<SignalStream>,
    pub pwr: Option<SignalStream>,
}

impl Signals {
    /// Watch them all; without SIGCHLD nothing could be reaped, so that one is required.
    pub fn watch() -> std::io::Result<Signals> {
        let watch = |kind| unix_signal(kind).ok();
        Ok(Signals {
            child: unix_signal(SignalKind::child())?,
            term: watch(SignalKind::terminate()),
            int: watch(SignalKind::interrupt()),
            hup: watch(SignalKind::hangup()),
            usr1: watch(SignalKind::user_defined1()),
            pwr: watch(SignalKind::from_raw(libc::SIGPWR)),
        })
    }
}

/// The loop's mailboxes.
pub struct Inbox {
    pub requests: UnboundedReceiver<Request>,
    pub probes: UnboundedReceiver<ProbeResult>,
    pub execs: UnboundedReceiver<ExecRequest>,
    pub notify: UnboundedReceiver<Notification>,
    pub notify_tx: UnboundedSender<Notification>,
    pub power_button: Option<UnboundedReceiver<()>>,
}

impl Inbox {
    /// The mailboxes, and the senders probe tasks report through.
    pub fn new(
        requests: UnboundedReceiver<Request>,
        power_button: Option<UnboundedReceiver<()>>,
    ) -> (Inbox, ProbeChannels) {
        let (results, probes) = mpsc::unbounded_channel();
        let (exec, execs) = mpsc::unbounded_channel();
        let (notify_tx, notify) = mpsc::unbounded_channel();
        let inbox = Inbox {
            requests,
            probes,
            execs,
            notify,
            notify_tx,
            power_button,
        };
        (inbox, ProbeChannels { results, exec })
    }
}

pub async fn recv_press(rx: &mut Option<UnboundedReceiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn recv(s: &mut Option<SignalStream>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}
