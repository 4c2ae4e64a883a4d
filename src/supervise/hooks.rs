//! What the supervisor tells the outside world about the stack as a whole (systemd's sd_notify).
//! Kept in one place so the event loop does not care whether anyone is listening.
#![forbid(unsafe_code)]

use crate::init::systemd;

pub fn status(summary: &str) {
    systemd::notify_status(summary);
}

pub fn ready(summary: &str) {
    systemd::notify_ready(summary);
}

pub fn reloading() {
    systemd::notify_reloading();
}

pub fn reloaded(summary: &str) {
    systemd::notify_ready(summary);
}

pub fn stopping() {
    systemd::notify_stopping();
}

pub fn watchdog() {
    systemd::notify_watchdog();
}

pub fn watchdog_interval() -> Option<std::time::Duration> {
    systemd::watchdog_interval()
}
