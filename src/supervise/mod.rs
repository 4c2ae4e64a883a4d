//! The supervisor: one event loop that owns every service's state machine.
//!
//! - `state`: the pure state machine (state × event -> actions)
//! - `supervisor`: the event loop, the one reaper, scheduling, reload
//! - `spawn`/`launch`: fork/exec and what a child gets (the audited unsafe lives in `spawn`)
//! - `sockets`: listeners bound by init and handed to children
//! - `proxy_link`: the channel to the proxy process
//! - `handle`: the mailbox other tasks use

pub mod handle;
mod hooks;
pub mod launch;
mod notify;
pub mod probes;
mod proxy_link;
pub mod sockets;
pub mod spawn;
pub mod state;
mod supervisor;
pub mod unit;

use std::path::PathBuf;
use std::process::ExitCode;

pub use state::State;

use crate::config::Config;

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub config: Config,
    /// Running as the first process: signals mean power-off/reboot, and orphans come to us by nature.
    pub pid1: bool,
}

/// How a supervisor run ended: what init should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    PowerOff,
    Reboot,
    Exit(u8),
}

/// Run the supervisor until shutdown completes. Builds its own single-threaded runtime.
pub fn run(opts: RunOptions) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the event loop: {e}");
            return Outcome::Exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let (handle, requests) = handle::Handle::new();
        let socket = opts.config.init.control_socket.clone();
        let group = opts
            .config
            .init
            .control_group
            .as_deref()
            .and_then(launch::gid_of);
        if let Err(e) = crate::control::server::serve(&socket, group, handle.clone()).await {
            tracing::error!("cannot serve the control socket {}: {e}", socket.display());
            if !opts.pid1 {
                return Outcome::Exit(1);
            }
        }
        serve_dashboard(&opts.config.init, &handle).await;
        supervisor::Supervisor::new(opts, handle, requests)
            .run()
            .await
    })
}

/// The dashboard's optional TCP listener. A failure to bind is logged, never fatal: the stack matters
/// more than its web UI.
async fn serve_dashboard(init: &crate::config::InitSpec, handle: &handle::Handle) {
    let Some(text) = init.dashboard.as_deref() else {
        return;
    };
    let addr = match text.parse() {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!("dashboard address {text:?}: {e}");
            return;
        }
    };
    let auth = crate::control::dashboard::Auth::from_init(init);
    if let Err(e) = crate::control::dashboard::serve_tcp(addr, auth, handle.clone()).await {
        tracing::error!("cannot serve the dashboard: {e}");
    }
}

/// `stackinit run`: the supervisor in the foreground, not PID 1.
pub fn run_foreground(arg: crate::cli::ConfigArg) -> ExitCode {
    let (config_path, config) = match crate::config::load_or_demo(&arg) {
        Ok(found) => found,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = prepare_logging(&config.init) {
        eprintln!(
            "stackinit: cannot set up {}: {e}",
            config.init.logs_dir.display()
        );
        return ExitCode::FAILURE;
    }
    tracing::info!(
        "stackinit {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        config_path
            .as_ref()
            .map_or("the built-in demo".to_string(), |p| p.display().to_string())
    );
    match run(RunOptions {
        config_path,
        config,
        pid1: false,
    }) {
        Outcome::Exit(code) => ExitCode::from(code),
        Outcome::PowerOff | Outcome::Reboot => ExitCode::SUCCESS,
    }
}

/// `/logs` and stackinit's own log (stderr and `<logs_dir>/stackinit.log`). On error the own log still
/// goes to stderr, so PID 1 can carry on and say what is wrong.
pub fn prepare_logging(init: &crate::config::InitSpec) -> std::io::Result<()> {
    let prepared = prepare_logs_dir(init);
    let dir = prepared.is_ok().then_some(init.logs_dir.as_path());
    crate::logs::init_tracing(dir, &init.log_level);
    prepared
}

/// `/logs` with the owner and mode `[init]` asks for.
pub fn prepare_logs_dir(init: &crate::config::InitSpec) -> std::io::Result<()> {
    let mode = u32::from_str_radix(init.logs_mode.trim_start_matches("0o"), 8).unwrap_or(0o755);
    let owner = init.logs_user.as_deref().and_then(launch::uid_of);
    let group = init.logs_group.as_deref().and_then(launch::gid_of);
    crate::logs::prepare_logs_dir(&init.logs_dir, owner, group, mode)
}
