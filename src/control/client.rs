//! The CLI side of the control socket.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use crate::cli::Command;

pub fn main(_socket: &Path, _command: Command) -> ExitCode {
    eprintln!("stackinit: control client not built yet");
    ExitCode::FAILURE
}
