//! What every semantic check shares: the context (the spanned document, the recovered config and the
//! report), and the small checks that sections have in common (users, groups, nice, durations, sizes).
#![forbid(unsafe_code)]

use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::doc::KeyPath;
use super::sections::Recovered;
use super::{span_for, Report};
use crate::config::{Bytes, Secs};

/// Longest stop grace or drain we accept: anything longer is almost surely a unit mistake.
pub(super) const MAX_GRACE: Duration = Duration::from_secs(3600);
/// Smallest log file size before rotation; smaller would rotate on nearly every line.
pub(super) const MIN_LOG_BYTES: u64 = 1024;
/// Most replicas of one service: each is a process and a socket, so more is a typo. Unbounded,
/// `replicas = 4000000000` with a unix `listen` made the checker expand four billion socket paths: out of
/// memory in init on a reload (found while checking what the config fuzz target had not reached).
pub(super) const MAX_REPLICAS: u32 = 1000;

/// What every check needs: the document (for spans), the recovered config, and where errors go.
pub(super) struct Ctx<'a, 'i, 't> {
    pub root: &'a Spanned<DeValue<'i>>,
    pub rec: &'a Recovered,
    pub report: &'a mut Report<'t>,
}

impl Ctx<'_, '_, '_> {
    /// An error pointing at the value of `path` (or the nearest enclosing table), about key `path`.
    pub fn at_value(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.at(path, path, message);
    }

    /// An error pointing at the key `path` itself.
    pub fn at_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        let span = span_for(self.root, path, true);
        self.report.error(span.start, path, message);
    }

    /// An error pointing at the value of `target`, about key `key` (e.g. an array element of `key`).
    pub fn at(&mut self, target: &KeyPath, key: &KeyPath, message: impl Into<String>) {
        let span = span_for(self.root, target, false);
        self.report.error(span.start, key, message);
    }

    /// Whether `path` was dropped after a type error (already reported; its default must not be checked).
    pub fn dropped(&self, path: &KeyPath) -> bool {
        self.rec.is_dropped(path)
    }

    /// Whether a key directly in table `path` was dropped. A "missing key" error there would most likely
    /// repeat one already reported (`comand` instead of `command`), so such checks stay quiet.
    pub fn lost_a_key(&self, path: &KeyPath) -> bool {
        self.rec
            .dropped
            .iter()
            .any(|d| d.0.len() == path.0.len() + 1 && d.starts_with(path))
    }

    pub fn service_path(name: &str) -> KeyPath {
        KeyPath::root().key("service").key(name)
    }
}

/// `nice` (services and the proxy): -20 to 19, as setpriority(2) takes it.
pub(super) fn check_nice(ctx: &mut Ctx, key: &KeyPath, nice: Option<i32>) {
    if let Some(n) = nice {
        if !(-20..=19).contains(&n) {
            ctx.at_value(
                key,
                format!("nice {n} is out of range: -20 (first) to 19 (last)"),
            );
        }
    }
}

pub(super) fn check_max_duration(ctx: &mut Ctx, path: &KeyPath, value: Secs) {
    if value.0 > MAX_GRACE {
        ctx.at_value(path, format!("{value} is too long: at most 1 hour"));
    }
}

pub(super) fn check_min_log_bytes(ctx: &mut Ctx, path: &KeyPath, value: Bytes) {
    if value.0 < MIN_LOG_BYTES {
        ctx.at_value(
            path,
            format!("{value} is too small: log files rotate at 1KB or more"),
        );
    }
}

pub(super) fn check_user(ctx: &mut Ctx, path: &KeyPath, name: &str) {
    match nix::unistd::User::from_name(name) {
        Ok(Some(_)) => {}
        Ok(None) => ctx.at_value(
            path,
            format!("unknown user {name:?} (not in the passwd database)"),
        ),
        Err(e) => ctx.at_value(path, format!("cannot look up user {name:?}: {e}")),
    }
}

pub(super) fn check_group(ctx: &mut Ctx, path: &KeyPath, name: &str) {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(_)) => {}
        Ok(None) => ctx.at_value(
            path,
            format!("unknown group {name:?} (not in the group database)"),
        ),
        Err(e) => ctx.at_value(path, format!("cannot look up group {name:?}: {e}")),
    }
}
