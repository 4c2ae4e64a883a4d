//! The last steps after the supervisor has stopped every service in order: kill what is left, sync, unmount,
//! and power off or reboot (or, when PID 1 of a namespace, exit).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::console::{say, Steps};
use super::mounts::{self, Mounted};
use super::reaper::{Children, PowerAction, SignalWatch};
use super::role::Role;

/// How long processes get between SIGTERM and SIGKILL once the services are already stopped.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// SIGKILL cannot be caught, but a process in uninterruptible sleep can take a moment to die.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Run the final shutdown. On a machine this ends in `reboot(2)` and never returns; in a namespace it
/// returns the exit code for `main`.
pub fn final_shutdown(role: Role, mounted: &Mounted, action: PowerAction) -> ExitCode {
    let steps = Steps::begin("shutdown:");
    let watch = SignalWatch::install();
    steps.step(format_args!("final {} sequence", describe(action)));
    if role.is_pid1() {
        terminate_everything(&watch, &steps);
    }
    nix::unistd::sync();
    steps.step(format_args!("synced file systems"));
    if role != Role::Machine {
        steps.step(format_args!(
            "not the machine's PID 1: exiting instead of {}",
            describe(action)
        ));
        return ExitCode::SUCCESS;
    }
    // stackinit.log is the last file we hold open for writing: a root with a file open for writing cannot
    // be remounted read-only (EBUSY), and the next boot would replay the journal.
    if crate::logs::close_own_log() {
        steps.step(format_args!("closed stackinit's own log"));
    }
    mounts::unmount_and_remount_read_only(mounted, &steps);
    nix::unistd::sync();
    steps.step(format_args!("{} now", describe(action)));
    let mode = match action {
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let error = match reboot(mode) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // PID 1 must not exit: keep reaping and retry on the next signal.
    loop {
        say(format_args!(
            "reboot(2) failed: {error}; still running, reaping; send SIGTERM to retry"
        ));
        let retry = watch.reap_until_told();
        let _ = reboot(match retry {
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        });
    }
}

fn describe(action: PowerAction) -> &'static str {
    match action {
        PowerAction::PowerOff => "power-off",
        PowerAction::Reboot => "reboot",
    }
}

/// SIGTERM to every process but us, a grace period while reaping, then SIGKILL to the rest.
/// `kill(-1)` from PID 1 reaches every process of its PID namespace except itself (and no kernel threads).
fn terminate_everything(watch: &SignalWatch, steps: &Steps) {
    let (reaped, left) = watch.reap_until_gone(Instant::now());
    if left == Children::None {
        steps.step(format_args!("no processes left (reaped {reaped})"));
        return;
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    steps.step(format_args!("sent SIGTERM to all remaining processes"));
    let (reaped, left) = watch.reap_until_gone(Instant::now() + TERM_GRACE);
    if left == Children::None {
        steps.step(format_args!("all processes exited ({reaped} reaped)"));
        return;
    }
    steps.step(format_args!("{reaped} reaped; sending SIGKILL to the rest"));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    let (reaped, left) = watch.reap_until_gone(Instant::now() + KILL_WAIT);
    match left {
        Children::None => steps.step(format_args!("all processes killed ({reaped} reaped)")),
        Children::Some => steps.step(format_args!("some processes would not die; going on")),
    }
}
