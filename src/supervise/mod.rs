//! The supervisor: one event loop that owns every service's state machine.

pub mod handle;

use std::process::ExitCode;

pub fn run_foreground(_config: crate::cli::ConfigArg) -> ExitCode {
    eprintln!("stackinit: supervisor not built yet");
    ExitCode::FAILURE
}
