//! Console output for PID 1.
//!
//! On EC2 the console is what "Get system log" shows, so every boot and shutdown step prints one line
//! there. Writes never panic (unlike `eprintln!`): a missing console must not take PID 1 down.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

/// Print `stackinit: MESSAGE` on stderr (the console when PID 1), ignoring write errors.
pub fn say(message: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "stackinit: {message}");
}

/// A message nobody should miss: the main loop is gone, or the config is broken.
pub fn shout(message: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "stackinit: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    );
    let _ = writeln!(err, "stackinit: !!! {message}");
    let _ = writeln!(
        err,
        "stackinit: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    );
}

/// Numbered steps of a sequence (boot, shutdown), each printed with the time since the sequence began.
pub struct Steps {
    what: &'static str,
    began: Instant,
}

impl Steps {
    pub fn begin(what: &'static str) -> Steps {
        Steps {
            what,
            began: Instant::now(),
        }
    }

    pub fn step(&self, message: fmt::Arguments<'_>) {
        let elapsed = self.began.elapsed();
        say(format_args!(
            "{} [{:>4}.{:03}s] {message}",
            self.what,
            elapsed.as_secs(),
            elapsed.subsec_millis()
        ));
    }
}

/// As PID 1 the kernel hands us fds 0-2 on /dev/console only if it could open it; make sure all three are
/// open, pointing at the console, so our log lines and the panic message reach "Get system log".
pub fn attach_stdio_to_console() {
    let missing: Vec<i32> = (0..3).filter(|fd| !fd_is_open(*fd)).collect();
    if missing.is_empty() {
        return;
    }
    let console = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
    {
        Ok(file) => file,
        Err(_) => return, // Nothing to attach to; writes to closed fds fail quietly.
    };
    let own = console.as_raw_fd();
    for fd in &missing {
        let result = match fd {
            0 => nix::unistd::dup2_stdin(&console),
            1 => nix::unistd::dup2_stdout(&console),
            _ => nix::unistd::dup2_stderr(&console),
        };
        let _ = result;
    }
    if own < 3 {
        // The console landed on one of the std fds itself: keep it open, and without close-on-exec, which
        // std set and dup2 would have cleared.
        let _ = nix::fcntl::fcntl(
            &console,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        );
        let _ = console.into_raw_fd();
    }
}

fn fd_is_open(fd: i32) -> bool {
    // /proc is mounted before this runs; without it assume open rather than clobber a valid fd.
    let proc_fd = format!("/proc/self/fd/{fd}");
    if !Path::new("/proc/self/fd").exists() {
        return true;
    }
    std::fs::symlink_metadata(proc_fd).is_ok()
}
