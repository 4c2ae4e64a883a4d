//! PID 1 duties: early mounts, orphan reaping, signals, the power button, orderly shutdown.

use std::process::ExitCode;

pub fn main(_config: crate::cli::ConfigArg) -> ExitCode {
    eprintln!("stackinit: init mode not built yet");
    ExitCode::FAILURE
}
