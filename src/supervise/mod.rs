//! The supervisor: one event loop that owns every service's state machine.
//!
//! - `state`: the pure state machine (state × event -> actions)
//! - `supervisor`: the event loop, the one reaper, scheduling, reload
//! - `spawn`/`launch`: fork/exec and what a child gets (the audited unsafe lives in `spawn`)
//! - `sockets`: listeners bound by init and handed to children
//! - `proxy_link`: the channel to the proxy process
//! - `handle`: the mailbox other tasks use
//! - `systemd_notify`: what the stack as a whole tells systemd (sd_notify)
//!
//! Nothing here starts the control server or watches the power button: `crate::stack` composes those
//! with the supervisor, so this module depends on neither `control` nor `init`.

mod autogroup;
mod build;
mod capabilities;
mod cgroups;
mod dry_run;
mod exec_probes;
mod hand_back;
pub mod handle;
mod health;
mod inbox;
pub mod launch;
mod leftovers;
mod listeners;
pub(crate) mod notify;
pub mod probes;
mod proxy_link;
mod publish;
mod reload;
mod reports;
mod requests;
mod rollout;
mod rollout_view;
mod rollouts;
mod schedule;
pub mod sockets;
pub mod spawn;
pub mod state;
mod supervisor;
pub mod systemd_notify;
mod table;
mod timers;
pub mod unit;
mod with_secrets;

use std::path::PathBuf;

pub use state::State;

use crate::config::Config;

pub struct RunOptions {
    pub config_path: Option<PathBuf>,
    pub config: Config,
    /// Running as the first process: signals mean power-off/reboot, and orphans come to us by nature.
    pub pid1: bool,
    /// Presses of the power button, when someone watches it: shut down as on SIGPWR.
    pub power_button: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

/// How a supervisor run ended: what init should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    PowerOff,
    Reboot,
    Exit(u8),
}

impl Outcome {
    /// What a request to shut down means: as PID 1 power-off or reboot, otherwise just exit.
    pub fn of_shutdown(pid1: bool, reboot: bool) -> Outcome {
        match (pid1, reboot) {
            (true, true) => Outcome::Reboot,
            (true, false) => Outcome::PowerOff,
            (false, _) => Outcome::Exit(0),
        }
    }
}

/// The supervisor's event loop, on the current (single-threaded) runtime's `LocalSet`, until shutdown
/// completes. `handle` and `requests` are the two ends of its mailbox.
pub async fn supervise(
    opts: RunOptions,
    handle: handle::Handle,
    requests: tokio::sync::mpsc::UnboundedReceiver<handle::Request>,
) -> Outcome {
    supervisor::Supervisor::new(opts, handle, requests)
        .run()
        .await
}
