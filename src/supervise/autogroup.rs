//! A service's `nice` against the other services when the kernel groups processes by session
//! (`kernel.sched_autogroup_enabled = 1`, the default on Debian, Ubuntu and EC2's images).
//!
//! Every service is `setsid()`'d, so each is its own autogroup, and the scheduler weighs autogroups
//! against each other at the autogroup's nice, not at the processes' nice: a proxy at nice -5 next to
//! busy app workers would get no more CPU than any of them. So the child also sets its autogroup's
//! nice (`/proc/self/autogroup`, in `spawn.rs`, before exec); this module words the value and checks the
//! result from the parent, which can log.
//!
//! Autogroups only apply to processes outside any cpu-controlled cgroup: when a service sets `cpu_weight`
//! or `cpu_max`, the services' cgroups get the cpu controller, and then `cpu_weight` is what orders them.
#![forbid(unsafe_code)]

use nix::unistd::Pid;

/// What the child writes to `/proc/self/autogroup`.
pub fn nice_text(nice: i32) -> Vec<u8> {
    nice.to_string().into_bytes()
}

/// The nice of `/proc/PID/autogroup`'s text (`/autogroup-123 nice -5`).
pub fn parse_nice(text: &str) -> Option<i32> {
    text.split_once(" nice ")?.1.trim().parse().ok()
}

/// Whether the kernel schedules by autogroup now.
fn enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|v| v.trim() == "1")
}

/// The nice of a process's autogroup; `None` on a kernel without autogroups (or a process gone).
pub fn nice_of(pid: Pid) -> Option<i32> {
    parse_nice(&std::fs::read_to_string(format!("/proc/{pid}/autogroup")).ok()?)
}

/// Warn when a started child's autogroup did not get its `nice` while autogroups are in force (the child
/// cannot log; setting it is best effort there so that a kernel quirk does not keep a service down).
pub fn check(pid: Pid, name: &str, nice: i32) {
    match nice_of(pid) {
        Some(got) if got != nice && enabled() => tracing::warn!(
            "{name}: its autogroup stayed at nice {got}, not {nice}: against other services its nice does nothing"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_autogroup_line() {
        assert_eq!(parse_nice("/autogroup-6011 nice 0\n"), Some(0));
        assert_eq!(parse_nice("/autogroup-6015 nice -5\n"), Some(-5));
        assert_eq!(parse_nice("garbage"), None);
        assert_eq!(nice_text(-5), b"-5");
    }
}
