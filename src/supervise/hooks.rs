//! What the supervisor tells the outside world about the stack as a whole (systemd's sd_notify).
//! Kept in one place so the event loop does not care whether anyone is listening.
#![forbid(unsafe_code)]

pub fn status(summary: &str) {
    let _ = summary;
}

pub fn ready(summary: &str) {
    let _ = summary;
}

pub fn reloading() {}

pub fn reloaded() {}

pub fn stopping() {}
