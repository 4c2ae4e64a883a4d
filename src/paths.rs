//! Default locations, which depend on whether we run as root.
#![forbid(unsafe_code)]

use std::path::PathBuf;

pub const DEFAULT_CONFIG: &str = "/etc/stackinit/stackinit.toml";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/stackinit/control.sock";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `/run/stackinit` for root; for other users `$XDG_RUNTIME_DIR/stackinit`, else `/tmp/stackinit-UID`.
pub fn runtime_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/stackinit");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("stackinit"),
        _ => PathBuf::from(format!("/tmp/stackinit-{}", nix::unistd::geteuid())),
    }
}

/// The control socket a client uses when neither `--socket` nor `$STACKINIT_SOCKET` is given.
pub fn default_control_socket() -> PathBuf {
    if is_root() {
        PathBuf::from(DEFAULT_CONTROL_SOCKET)
    } else {
        runtime_dir().join("control.sock")
    }
}

/// Where the demo stack keeps its logs: `/logs` for root, as on the AMI; under the runtime dir otherwise.
pub fn demo_logs_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/logs")
    } else {
        runtime_dir().join("logs")
    }
}
