//! Reaping for the times when the supervisor is not running: after a config error, after the supervisor's
//! loop was lost, and during final shutdown. The supervisor owns the one `waitpid(-1)` while it runs; these
//! functions are only called once it has returned (or never started), so they are the only reaper then.
//!
//! Event driven: SIGCHLD, SIGTERM, SIGINT and SIGPWR are blocked and read from a signalfd, so waiting is a
//! `poll(2)` with the remaining time as timeout, never a sleep loop.
#![forbid(unsafe_code)]

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// What a signal asks PID 1 to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// Map a signal to its meaning for PID 1: SIGTERM and SIGPWR power off, SIGINT (Ctrl-Alt-Del) reboots.
pub fn action_for(signal: Signal) -> Option<PowerAction> {
    match signal {
        Signal::SIGTERM | Signal::SIGPWR => Some(PowerAction::PowerOff),
        Signal::SIGINT => Some(PowerAction::Reboot),
        _ => None,
    }
}

/// Whether any children are left after reaping everything that has exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Children {
    Some,
    None,
}

/// Reap every child that has exited, without blocking.
pub fn reap_exited() -> (usize, Children) {
    let mut reaped = 0;
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::StillAlive) => return (reaped, Children::Some),
            Ok(_) => reaped += 1,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return (reaped, Children::None),
            // Not expected from waitpid(-1); treat as "someone may be left" and let the caller wait.
            Err(_) => return (reaped, Children::Some),
        }
    }
}

/// The signals PID 1 waits for outside the supervisor, as a signalfd.
pub struct SignalWatch {
    fd: Option<SignalFd>,
}

impl SignalWatch {
    /// Block SIGCHLD/SIGTERM/SIGINT/SIGPWR in this thread and read them from a signalfd. Should that fail,
    /// the watch still works for timed waits; it just cannot wake early.
    pub fn install() -> SignalWatch {
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGPWR,
        ] {
            mask.add(signal);
        }
        if mask.thread_block().is_err() {
            return SignalWatch { fd: None };
        }
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
        SignalWatch { fd }
    }

    /// Wait until a signal arrives or `timeout` passes (`None`: no limit); return the signals received.
    pub fn wait(&self, timeout: Option<Duration>) -> Vec<Signal> {
        let Some(fd) = &self.fd else {
            // Degraded: no signalfd. Sleep out the timeout (or a long while); reaping resumes afterwards.
            std::thread::sleep(timeout.unwrap_or(Duration::from_secs(60)));
            return Vec::new();
        };
        let poll_timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(_) => {}
        }
        let mut signals = Vec::new();
        while let Ok(Some(info)) = fd.read_signal() {
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                signals.push(signal);
            }
        }
        signals
    }

    /// Reap until SIGTERM/SIGPWR/SIGINT arrives; return what it asks for. Never returns otherwise.
    pub fn reap_until_told(&self) -> PowerAction {
        loop {
            reap_exited();
            for signal in self.wait(None) {
                if let Some(action) = action_for(signal) {
                    return action;
                }
            }
        }
    }

    /// Reap until no child is left or `deadline` passes. Returns how many were reaped and whether any are left.
    pub fn reap_until_gone(&self, deadline: Instant) -> (usize, Children) {
        let mut total = 0;
        loop {
            let (reaped, left) = reap_exited();
            total += reaped;
            let now = Instant::now();
            if left == Children::None || now >= deadline {
                return (total, left);
            }
            // Any signal (SIGCHLD, or a TERM we ignore while already shutting down) just means "look again".
            self.wait(Some(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_power_actions() {
        assert_eq!(action_for(Signal::SIGTERM), Some(PowerAction::PowerOff));
        assert_eq!(action_for(Signal::SIGPWR), Some(PowerAction::PowerOff));
        assert_eq!(action_for(Signal::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(action_for(Signal::SIGCHLD), None);
        assert_eq!(action_for(Signal::SIGHUP), None);
    }
}
