//! stackinit's own log: tracing to stderr and, when there is a logs dir, to `<logs_dir>/stackinit.log`
//! through the same rotating writer the services use (10 MB x 5).
#![forbid(unsafe_code)]

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use super::pump::{lock, SharedFile};
use super::rotating::RotatingFile;

pub const OWN_LOG_NAME: &str = "stackinit.log";
const OWN_LOG_MAX_BYTES: u64 = 10 << 20;
const OWN_LOG_BACKUPS: u32 = 5;

/// Hands tracing a writer on the shared rotating file; each event arrives as one `write` of whole lines.
#[derive(Clone)]
struct OwnLog {
    file: SharedFile,
}

struct OwnLogWriter<'a> {
    log: &'a OwnLog,
}

impl<'a> MakeWriter<'a> for OwnLog {
    type Writer = OwnLogWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        OwnLogWriter { log: self }
    }
}

impl Write for OwnLogWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let events = {
            let mut file = lock(&self.log.file);
            file.write_lines(buf);
            if file.has_events() {
                file.take_events()
            } else {
                Vec::new()
            }
        };
        // Not through tracing: that would come straight back here.
        for event in events {
            let _ = writeln!(io::stderr(), "stackinit: {event}");
        }
        // Problems are counted and reported above; tracing cannot do better with an error.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The file behind the log, so shutdown can close it (`close_own_log`).
static OWN_LOG_FILE: OnceLock<SharedFile> = OnceLock::new();

/// Close `<logs_dir>/stackinit.log` for good (from here on the own log goes to stderr only). True if it was open.
pub fn close_own_log() -> bool {
    match OWN_LOG_FILE.get() {
        Some(file) => {
            lock(file).close();
            true
        }
        None => false,
    }
}

/// Sets up stackinit's own log: stderr, plus `<logs_dir>/stackinit.log` when given. `level` is an
/// `EnvFilter` directive (`info`, `stackinit=debug,hyper=warn`); a bad one falls back to `info` and says so.
/// Never panics: an unwritable logs dir means stderr only, reported once. Only the first call installs.
pub fn init_tracing(logs_dir: Option<&Path>, level: &str) {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let (filter, bad_level) = match EnvFilter::try_new(level) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let mut file_problem = None;
    let file_layer = logs_dir.and_then(|dir| {
        let path = dir.join(OWN_LOG_NAME);
        match RotatingFile::open(&path, OWN_LOG_MAX_BYTES, OWN_LOG_BACKUPS) {
            Ok(file) => {
                let file: SharedFile = Arc::new(Mutex::new(file));
                let _ = OWN_LOG_FILE.set(Arc::clone(&file));
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(OwnLog { file }),
                )
            }
            Err(e) => {
                file_problem = Some(format!(
                    "cannot open {}: {e}; logging to stderr only",
                    path.display()
                ));
                None
            }
        }
    });
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    if let Err(e) = installed {
        let _ = writeln!(
            io::stderr(),
            "stackinit: tracing already set up elsewhere: {e}"
        );
        return;
    }
    if let Some(e) = bad_level {
        tracing::warn!("invalid log level {level:?} ({e}); using \"info\"");
    }
    if let Some(problem) = file_problem {
        tracing::warn!("{problem}");
    }
}
