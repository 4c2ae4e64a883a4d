//! The composition root: the supervisor, the control server, the dashboard and the power button, put
//! together on one single-threaded runtime. PID 1 (`init`) and `stackinit run` both start the stack here,
//! so `supervise` never has to know about `control` or `init`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use crate::config::InitSpec;
use crate::supervise::handle::Handle;
use crate::supervise::{launch, Outcome, RunOptions};

/// What the stack is started with; the power button is watched here when `pid1` (or a test) asks for it.
pub struct StackOptions {
    pub config_path: Option<std::path::PathBuf>,
    pub config: crate::config::Config,
    /// What `stackinit check` would warn about, logged once the stack starts.
    pub warnings: Vec<crate::config::ConfigError>,
    pub pid1: bool,
}

/// Run the stack until shutdown completes. Builds its own single-threaded runtime.
pub fn run(opts: StackOptions) -> Outcome {
    for warning in &opts.warnings {
        tracing::warn!("config: {warning}");
    }
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
        let (handle, requests) = Handle::new();
        if let Err(e) = serve_control(&opts.config.init, &handle).await {
            if !opts.pid1 {
                return Outcome::Exit(1);
            }
            tracing::error!("{e}");
        }
        serve_dashboard(&opts.config.init, &handle).await;
        let power_button = crate::power_button::wanted(opts.pid1).then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            crate::power_button::spawn_watcher(tx);
            rx
        });
        let options = RunOptions {
            config_path: opts.config_path,
            config: opts.config,
            pid1: opts.pid1,
            power_button,
        };
        crate::supervise::supervise(options, handle, requests).await
    })
}

/// The control socket. Not serving it is fatal for `stackinit run` (nobody could stop it cleanly), not for
/// PID 1 (the services matter more).
async fn serve_control(init: &InitSpec, handle: &Handle) -> Result<(), String> {
    let socket = &init.control_socket;
    let group = init.control_group.as_deref().and_then(launch::gid_of);
    crate::control::server::serve(socket, group, handle.clone())
        .await
        .map_err(|e| {
            let message = format!("cannot serve the control socket {}: {e}", socket.display());
            tracing::error!("{message}");
            message
        })
}

/// The dashboard's optional TCP listener. A failure to bind is logged, never fatal: the stack matters
/// more than its web UI.
async fn serve_dashboard(init: &InitSpec, handle: &Handle) {
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

/// `stackinit run`: the stack in the foreground, not PID 1.
pub fn run_foreground(arg: crate::cli::ConfigArg) -> ExitCode {
    // Before the config is read: its checks count against the raised limit. The hard limit is the
    // parent's choice (systemd's LimitNOFILE=, ulimit -Hn) and stays.
    let raised = crate::nofile::raise(false);
    let crate::config::Loaded {
        path: config_path,
        config,
        warnings,
    } = match crate::config::load_or_demo(&arg) {
        Ok(found) => found,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if let Some(refused) = config.user_data.as_ref().filter(|u| !u.errors.is_empty()) {
        eprintln!(
            "stackinit: user data {} refused; the baked config runs without it:\n{}",
            refused.path.display(),
            refused.errors.join("\n")
        );
    }
    if let Err(e) = prepare_logging(&config.init) {
        eprintln!(
            "stackinit: cannot set up {}: {e}",
            config.init.logs_dir.display()
        );
        return ExitCode::FAILURE;
    }
    match raised {
        Ok(raised) if raised.changed() => tracing::info!("{raised}"),
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    tracing::info!(
        "stackinit {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        config_path
            .as_ref()
            .map_or("the built-in demo".to_string(), |p| p.display().to_string())
    );
    match run(StackOptions {
        config_path,
        config,
        warnings,
        pid1: false,
    }) {
        Outcome::Exit(code) => ExitCode::from(code),
        Outcome::PowerOff | Outcome::Reboot => ExitCode::SUCCESS,
    }
}

/// `/logs` and stackinit's own log (stderr and `<logs_dir>/stackinit.log`). On error the own log still
/// goes to stderr, so PID 1 can carry on and say what is wrong.
pub fn prepare_logging(init: &InitSpec) -> std::io::Result<()> {
    let owner = init.logs_user.as_deref().and_then(launch::uid_of);
    let group = init.logs_group.as_deref().and_then(launch::gid_of);
    let prepared = crate::logs::prepare_logs_dir(&init.logs_dir, owner, group, init.logs_mode.0);
    let dir = prepared.is_ok().then_some(init.logs_dir.as_path());
    crate::logs::init_tracing(dir, &init.log_level);
    prepared
}
