//! The demo worker of the built-in stack: a minimal HTTP server on the socket init hands it.
#![forbid(unsafe_code)]

use std::process::ExitCode;

pub fn worker_main() -> ExitCode {
    eprintln!("stackinit: demo worker not built yet");
    ExitCode::FAILURE
}
