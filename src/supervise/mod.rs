//! The supervisor: one event loop that owns every service's state machine.
//!
//! TEMPORARY STUB on the `init` branch, only so that PID-1 code compiles and its paths can be exercised
//! (start services in `after` order, reap, signals, power button, reverse-order stop, sd_notify hooks).
//! The lead's real supervisor replaces this whole file at merge: take theirs.

pub mod handle;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub config: crate::config::Config,
    pub pid1: bool,
}

#[derive(Debug)]
pub enum Outcome {
    PowerOff,
    Reboot,
    Exit(u8),
}

pub fn run_foreground(config: crate::cli::ConfigArg) -> ExitCode {
    match crate::config::load_or_demo(&config) {
        Ok((config_path, config)) => match run(RunOptions {
            config_path,
            config,
            pid1: false,
        }) {
            Outcome::Exit(code) => ExitCode::from(code),
            _ => ExitCode::SUCCESS,
        },
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn start_order(config: &crate::config::Config) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < config.service.len() {
        let before = order.len();
        for (name, spec) in &config.service {
            if !order.contains(name) && spec.after.iter().all(|a| order.contains(a)) {
                order.push(name.clone());
            }
        }
        if order.len() == before {
            break;
        }
    }
    order
}

pub fn run(opts: RunOptions) -> Outcome {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Outcome::Exit(1);
    };
    runtime.block_on(supervise(opts))
}

async fn supervise(opts: RunOptions) -> Outcome {
    use crate::init::systemd;
    let Ok(mut chld) = signal(SignalKind::child()) else {
        return Outcome::Exit(1);
    };
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return Outcome::Exit(1);
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return Outcome::Exit(1);
    };
    let Ok(mut pwr) = signal(SignalKind::from_raw(libc::SIGPWR)) else {
        return Outcome::Exit(1);
    };
    if !opts.pid1 {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    let (press_tx, mut press_rx) = tokio::sync::mpsc::unbounded_channel();
    if crate::init::power_button::wanted(opts.pid1) {
        crate::init::power_button::spawn_watcher(press_tx);
    }
    let order = start_order(&opts.config);
    systemd::notify_status(&format!("starting: 0/{} ready", order.len()));
    let mut pids: HashMap<String, Pid> = HashMap::new();
    for name in &order {
        let spec = &opts.config.service[name];
        let Some((program, args)) = spec.command.split_first() else {
            continue;
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(&spec.environment)
            .stdin(Stdio::null())
            .process_group(0);
        command
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        if let Ok(child) = command.spawn() {
            pids.insert(name.clone(), Pid::from_raw(child.id() as i32));
        }
        // Stand-in for readiness gating.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    systemd::notify_ready(&format!("{}/{} ready", pids.len(), order.len()));
    let watchdog = systemd::watchdog_interval();
    let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut exited: Vec<Pid> = Vec::new();
    let outcome = loop {
        tokio::select! {
            _ = chld.recv() => reap(&mut exited),
            _ = term.recv() => break if opts.pid1 { Outcome::PowerOff } else { Outcome::Exit(0) },
            _ = pwr.recv() => break if opts.pid1 { Outcome::PowerOff } else { Outcome::Exit(0) },
            _ = int.recv() => break if opts.pid1 { Outcome::Reboot } else { Outcome::Exit(0) },
            Some(()) = press_rx.recv() => break Outcome::PowerOff,
            _ = ticker.tick() => if watchdog.is_some() { systemd::notify_watchdog() },
        }
    };
    systemd::notify_stopping();
    tokio::time::sleep(opts.config.init.shutdown_drain.0).await;
    for name in order.iter().rev() {
        let Some(pid) = pids.get(name).copied() else {
            continue;
        };
        if exited.contains(&pid) {
            continue;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + opts.config.service[name].stop_grace.0;
        while !exited.contains(&pid) {
            tokio::select! {
                _ = chld.recv() => reap(&mut exited),
                _ = tokio::time::sleep_until(deadline) => { let _ = killpg(pid, Signal::SIGKILL); }
            }
        }
        let _ = killpg(pid, Signal::SIGKILL);
    }
    outcome
}

fn reap(exited: &mut Vec<Pid>) {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        match status.pid() {
            Some(pid) => exited.push(pid),
            None => break,
        }
        if matches!(status, WaitStatus::StillAlive) {
            break;
        }
    }
}
