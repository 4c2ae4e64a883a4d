//! PID 1 duties: early boot, the fallback when the supervisor is lost, and the final shutdown.
//!
//! `main` is what runs as PID 1 (`stackinit` with no arguments, or `stackinit init` in a PID namespace). The
//! stack (`crate::stack::run`: the supervisor and its control server) does the real work: services, the one `waitpid(-1)` reaper, signals,
//! the power button and the ordered stop. Init wraps it so that PID 1 never exits or panics out: whatever
//! happens, it ends in `reboot(2)` on a machine, or in a clean exit in a namespace, and until then it reaps.
//!
//! Modules, one job each: `role` (what kind of PID 1), `console`, `mounts` (with `fstab`), `net` (lo, hostname), `reaper`
//! (reaping while no supervisor runs) and `shutdown`. The power button (`crate::power_button`) and sd_notify
//! (`crate::supervise::systemd_notify`) live with what uses them.

pub mod console;
pub mod fstab;
pub mod mounts;
pub mod net;
pub mod reaper;
pub mod role;
pub mod shutdown;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use console::{say, shout, Steps};
use mounts::Mounted;
use reaper::{PowerAction, SignalWatch};
use role::Role;

/// What PATH services get when the kernel started us with none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn main(config: crate::cli::ConfigArg) -> ExitCode {
    // Decide the role first: it needs /proc, which a real boot may have to mount.
    let mut mounted = Mounted::default();
    if std::process::id() == 1 {
        let _ = catch_unwind(AssertUnwindSafe(|| mounts::ensure_proc(&mut mounted)));
    }
    let role = Role::detect();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        boot_and_supervise(role, &mut mounted, config)
    }));
    let next = match outcome {
        Ok(next) => next,
        Err(_) => Next::Fallback("init crashed before or after the supervisor ran".into()),
    };
    finish(role, &mounted, next)
}

/// Where `boot_and_supervise` leaves PID 1.
enum Next {
    Shutdown(PowerAction),
    /// The supervisor is gone (or never started): reap until told to shut down.
    Fallback(String),
    /// Not PID 1: just exit with this code.
    Exit(u8),
}

fn boot_and_supervise(role: Role, mounted: &mut Mounted, config: crate::cli::ConfigArg) -> Next {
    let steps = Steps::begin("boot:");
    if role.does_early_boot() {
        early_boot(role, mounted, &steps);
    }
    raise_file_limit(role, &steps);
    let crate::config::Loaded {
        path: config_path,
        config,
        warnings,
    } = match crate::config::load_or_demo(&config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            shout(format_args!(
                "the config is invalid: {} error(s); no services will run",
                errors.len()
            ));
            for error in &errors {
                say(format_args!("config error: {error}"));
            }
            if !role.is_pid1() {
                return Next::Exit(1);
            }
            return Next::Fallback("no valid config".into());
        }
    };
    if let Some(refused) = config.user_data.as_ref().filter(|u| !u.errors.is_empty()) {
        shout(format_args!(
            "user data {} refused: the baked config runs without it",
            refused.path.display()
        ));
        for error in &refused.errors {
            say(format_args!("user data error: {error}"));
        }
    }
    if role.does_early_boot() {
        set_hostname(config.init.hostname.as_deref(), &steps);
        mounts::ensure_writable_dir(&config.init.logs_dir, mounted, &steps);
    }
    if let Err(e) = crate::stack::prepare_logging(&config.init) {
        shout(format_args!(
            "cannot set up {}: {e}; logging to the console only",
            config.init.logs_dir.display()
        ));
    }
    let options = crate::stack::StackOptions {
        config_path,
        config,
        warnings,
        pid1: role.is_pid1(),
    };
    match catch_unwind(AssertUnwindSafe(|| crate::stack::run(options))) {
        Ok(crate::supervise::Outcome::PowerOff) => Next::Shutdown(PowerAction::PowerOff),
        Ok(crate::supervise::Outcome::Reboot) => Next::Shutdown(PowerAction::Reboot),
        Ok(crate::supervise::Outcome::Exit(code)) if !role.is_pid1() => Next::Exit(code),
        Ok(crate::supervise::Outcome::Exit(code)) => Next::Fallback(format!(
            "the supervisor returned unexpectedly (exit code {code})"
        )),
        Err(_) if !role.is_pid1() => Next::Exit(70),
        Err(_) => Next::Fallback("the supervisor's main loop panicked".into()),
    }
}

/// Mounts, console, `lo`, Ctrl-Alt-Del routing, PATH: what a machine's PID 1 sets up before anything else.
fn early_boot(role: Role, mounted: &mut Mounted, steps: &Steps) {
    steps.step(format_args!(
        "stackinit {} starting as PID 1 ({role:?})",
        env!("CARGO_PKG_VERSION")
    ));
    mounts::early_mounts(mounted, steps);
    mounts::fstab_mounts(mounted, steps);
    if role == Role::Machine {
        console::attach_stdio_to_console();
        // The kernel then sends SIGINT to PID 1 on Ctrl-Alt-Del instead of rebooting on the spot.
        if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
            steps.step(format_args!("could not route Ctrl-Alt-Del to SIGINT: {e}"));
        }
    }
    if std::env::var_os("PATH").is_none() {
        // Still single-threaded here, so changing the environment is sound.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    match net::bring_up_loopback() {
        Ok(net::LoopbackState::BroughtUp) => steps.step(format_args!("brought up lo")),
        Ok(net::LoopbackState::AlreadyUp) => {}
        Err(e) => steps.step(format_args!("could not bring up lo: {e}")),
    }
}

/// The kernel's 1024 open files are too few for PID 1 and everything it forks (see `crate::nofile`).
/// Before the config is read: its checks count against the raised limit.
fn raise_file_limit(role: Role, steps: &Steps) {
    match crate::nofile::raise(role.is_pid1()) {
        Ok(raised) if raised.changed() => steps.step(format_args!("{raised}")),
        Ok(_) => {}
        Err(e) => steps.step(format_args!("{e}")),
    }
}

fn set_hostname(name: Option<&str>, steps: &Steps) {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return;
    };
    if !net::valid_hostname(name) {
        steps.step(format_args!(
            "not setting hostname {name:?}: not a valid host name"
        ));
        return;
    }
    match nix::unistd::sethostname(name) {
        Ok(()) => steps.step(format_args!("hostname set to {name}")),
        Err(e) => steps.step(format_args!("could not set hostname {name}: {e}")),
    }
}

/// Take PID 1 to its end. As PID 1 this never returns on a machine, and returns only after the final
/// shutdown in a namespace; every panic on the way lands back in the reaping fallback.
fn finish(role: Role, mounted: &Mounted, mut next: Next) -> ExitCode {
    loop {
        next = match next {
            Next::Exit(code) if !role.is_pid1() => return ExitCode::from(code),
            Next::Exit(code) => Next::Fallback(format!("asked to exit with code {code} as PID 1")),
            Next::Shutdown(action) => {
                match catch_unwind(AssertUnwindSafe(|| {
                    shutdown::final_shutdown(role, mounted, action)
                })) {
                    Ok(code) => return code,
                    Err(_) => Next::Fallback("the final shutdown panicked".into()),
                }
            }
            Next::Fallback(reason) if !role.is_pid1() => {
                say(format_args!("{reason}; exiting"));
                return ExitCode::from(70);
            }
            Next::Fallback(reason) => {
                match catch_unwind(AssertUnwindSafe(|| reap_forever(&reason))) {
                    Ok(action) => Next::Shutdown(action),
                    Err(_) => Next::Fallback(reason),
                }
            }
        };
    }
}

/// The minimal loop left when the supervisor is gone: reap every child (services keep running and die
/// unsupervised), and go to the final shutdown on SIGTERM/SIGPWR (power off) or SIGINT (reboot).
pub fn reap_forever(reason: &str) -> PowerAction {
    shout(format_args!("{reason}"));
    shout(format_args!(
        "FALLBACK: PID 1 keeps running and only reaps; services are no longer supervised. \
         SIGTERM powers off, SIGINT reboots."
    ));
    let watch = SignalWatch::install();
    let action = watch.reap_until_told();
    say(format_args!("fallback: got {action:?}"));
    action
}
