//! Lossless, size-rotated service logs fed through pipes that stackinit holds across restarts.
//!
//! API used by the supervisor (stable; internals may change):
//! - `ServiceLog::open(path, max_bytes, backups)` inside a tokio runtime: creates the pipe, opens the file,
//!   spawns the pump task. `child_fd()` is the write end a child gets as stdout/stderr.
//! - `subscribe()` gives a live feed of complete lines; `reopen()` reopens the file (SIGUSR1, logrotate);
//!   `set_limits()` applies a reload's new size limits; `close().await` drains and waits for the pump.
//!
//! Why nothing is lost: the ServiceLog keeps the pipe's write end open for its whole life, so the pipe (and
//! the bytes in it) survives every restart of the service, and the pump never sees end-of-file while the
//! ServiceLog exists. A line cut off by a crash waits in the pump until the next process finishes it (see
//! [`lines`] for the 64 KiB bound on such a line). Rotation only happens between lines ([`rotating`]).
//!
//! Write errors (disk full): one retry, then the chunk is dropped and counted, and the failure and the
//! recovery are each reported once through tracing. Dropping beats blocking: a pipe we stop draining would
//! block the service's next write to stdout forever.
//!
//! Notes for callers:
//! - File writes are plain `write(2)` calls on the runtime thread (page-cache writes; one per batch of up to
//!   256 KiB of lines). Measured: several hundred MB/s of 13-byte lines through one pump.
//! - A file's size is tracked by its own ServiceLog, so give two streams that name the same path one shared
//!   ServiceLog (dup its `child_fd()` onto both fd 1 and fd 2) rather than two.
//! - At shutdown call `close().await` for each log before the runtime stops, or the tail may be lost.
#![forbid(unsafe_code)]

pub mod dir;
mod files;
pub mod lines;
mod pump;
pub mod rotating;
pub mod tail;
mod tracing_setup;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

pub use dir::prepare_logs_dir;
pub use rotating::{backup_path, FileStats};
pub use tracing_setup::{close_own_log, init_tracing};

use pump::{lock, Pump, SharedFile};

/// Lines a subscriber may fall behind before it starts missing some (it gets `RecvError::Lagged`).
const SUBSCRIBER_BACKLOG: usize = 1024;
/// Pipe buffer we ask for as root, so a service can run ahead while stackinit is busy (the default 64 KiB
/// already sustains several hundred MB/s). Only as root: for other users the kernel counts pipe pages against
/// a per-user soft limit (`/proc/sys/fs/pipe-user-pages-soft`), and going over it shrinks every new pipe the
/// user makes. Best effort either way.
const ROOT_PIPE_SIZE: i32 = 1 << 20;

pub struct ServiceLog {
    path: PathBuf,
    /// Held for the ServiceLog's whole life: the pipe never ends while services come and go.
    write_end: OwnedFd,
    lines: pump::LineFeed,
    file: SharedFile,
    /// Dropping it tells the pump to drain and stop.
    shutdown: oneshot::Sender<()>,
    pump: JoinHandle<()>,
}

impl ServiceLog {
    /// Must be called inside a tokio runtime (with IO enabled); fails, rather than panics, outside one.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<ServiceLog> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            io::Error::other(format!("log {}: no tokio runtime: {e}", path.display()))
        })?;
        let file = Arc::new(Mutex::new(rotating::RotatingFile::open(
            path, max_bytes, backups,
        )?));
        // Both ends close on exec; the supervisor dup2()s the write end onto a child's fd 1/2, which clears
        // CLOEXEC on the copy. The write end stays blocking: children expect a blocking stdout.
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        if nix::unistd::geteuid().is_root() {
            let _ = fcntl(&read_end, FcntlArg::F_SETPIPE_SZ(ROOT_PIPE_SIZE));
        }
        // Sets O_NONBLOCK on the read end only, and registers it with the runtime's reactor.
        let receiver = {
            let _guard = runtime.enter();
            pipe::Receiver::from_owned_fd(read_end)?
        };
        // Made on first subscribe: a channel's slots are allocated up front (tens of KB per log), and
        // most logs never get a follower.
        let lines = pump::LineFeed::default();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let pump = Pump {
            pipe: receiver,
            file: file.clone(),
            lines: lines.clone(),
            shutdown: shutdown_rx,
        };
        let pump = runtime.spawn(pump.run());
        Ok(ServiceLog {
            path: path.to_path_buf(),
            write_end,
            lines,
            file,
            shutdown,
            pump,
        })
    }

    /// The pipe's write end, to dup2() onto a child's stdout or stderr.
    pub fn child_fd(&self) -> BorrowedFd<'_> {
        self.write_end.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A live feed of complete lines (each with its `'\n'`), published after they reach the file.
    /// A subscriber that falls more than 1024 lines behind gets `Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.lines
            .get_or_init(|| broadcast::channel(SUBSCRIBER_BACKLOG).0)
            .subscribe()
    }

    /// Reopens the file at the same path (SIGUSR1, after an external logrotate `mv`). Lines the pump has not
    /// written yet go to the new file. A failure is reported through tracing; writes keep retrying the open.
    pub fn reopen(&self) {
        let events = {
            let mut file = lock(&self.file);
            file.reopen();
            file.take_events()
        };
        pump::report(events);
    }

    /// New size limits, applied from the next line on. `max_bytes == 0` means no limit.
    pub fn set_limits(&self, max_bytes: u64, backups: u32) {
        lock(&self.file).set_limits(max_bytes, backups);
    }

    /// Bytes written, rotations, and write failures so far.
    pub fn stats(&self) -> FileStats {
        lock(&self.file).stats()
    }

    /// Closes our write end, lets the pump drain what is in the pipe (and the unfinished last line, with a
    /// `'\n'` added), and waits for it. Dropping a ServiceLog does the same without waiting; use this at
    /// shutdown so the runtime does not stop before the pump is done.
    pub async fn close(self) {
        let ServiceLog {
            write_end,
            shutdown,
            pump,
            ..
        } = self;
        drop(write_end);
        drop(shutdown);
        if let Err(e) = pump.await {
            tracing::error!("log pump ended abnormally: {e}");
        }
    }
}

impl std::fmt::Debug for ServiceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
