//! Telling systemd how we are doing when it runs us as `Type=notify` (systemd/stackinit.service).
//!
//! The supervisor calls these from its loop. Each is a no-op without `$NOTIFY_SOCKET` (one env lookup),
//! never panics, and only logs at debug level when systemd cannot be reached: a lost notification must never
//! disturb supervision. Note that the variables must not leak into services: the supervisor builds their
//! environment without NOTIFY_SOCKET/WATCHDOG_USEC/WATCHDOG_PID from ours.
#![forbid(unsafe_code)]

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// A STATUS= value must stay one line: a newline would start another assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// Every autostart service is ready: `STATUS=<status>` then `READY=1`, e.g. `notify_ready("3/3 ready")`.
/// Also used to end a reload (after [`notify_reloading`]).
pub fn notify_ready(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Status(&status), NotifyState::Ready]);
}

/// A one-line summary shown by `systemctl status`, e.g. "starting: 1/3 ready".
pub fn notify_status(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Status(&status)]);
}

/// A reload began. systemd 253+ (`Type=notify-reload`) needs MONOTONIC_USEC with it; older ones ignore it.
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutdown began (drain, then stopping services).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// Keep-alive for `WatchdogSec=`; call every [`watchdog_interval`].
pub fn notify_watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to call [`notify_watchdog`]: half of `$WATCHDOG_USEC`, when the watchdog is meant for us
/// (`$WATCHDOG_PID` unset or our pid). `None`: no watchdog, or no NOTIFY_SOCKET to send it to.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    half_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn half_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        assert_eq!(
            half_watchdog(Some("400000"), None, 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            half_watchdog(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(half_watchdog(Some("400000"), Some("8"), 7), None);
        assert_eq!(half_watchdog(Some("400000"), Some("junk"), 7), None);
        assert_eq!(half_watchdog(None, Some("7"), 7), None);
        assert_eq!(half_watchdog(Some("0"), None, 7), None);
        assert_eq!(half_watchdog(Some("-5"), None, 7), None);
        assert_eq!(half_watchdog(Some("soon"), None, 7), None);
    }

    #[test]
    fn status_stays_on_one_line() {
        assert_eq!(one_line("2/2 ready\nREADY=1\r"), "2/2 ready READY=1 ");
    }
}
