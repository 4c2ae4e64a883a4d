//! The HTTP(S) proxy, run by init as the supervised child service `proxy` (`stackinit proxy`).

pub mod protocol;

use std::process::ExitCode;

pub fn main(_config: crate::cli::ConfigArg) -> ExitCode {
    eprintln!("stackinit: proxy not built yet");
    ExitCode::FAILURE
}
