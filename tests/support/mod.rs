//! The test support kit. Every test binary that needs a helper says `mod support;` and gets all of it:
//! the binary under test, free ports, the one wait loop, guarded child processes, /proc readings and
//! [`Stack`] (a real `stackinit run`) here; [`http`] (the one HTTP client), [`proxy`] (a standalone proxy
//! and an echo upstream), [`nginx`], [`e2e`] (the Django app) and [`browser`] (WebDriver) beside it.
//! Whatever a helper starts is killed by pid when its guard drops, even when a test fails.
// Each test binary uses only part of the kit.
#![allow(dead_code)]

pub mod aws;
pub mod browser;
pub mod e2e;
pub mod http;
pub mod nginx;
pub mod proxy;
mod stack;

#[allow(unused_imports)] // like dead_code: not every binary starts a Stack
pub use stack::Stack;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The stackinit binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stackinit");

/// The checkout (the app, packer template and test scripts are read from it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A temp dir named `PREFIX...`, removed when it drops, pass or fail.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temp dir")
}

/// The one wait loop: call `check` every `every` until it gives a value, or `None` once `timeout` has
/// passed. Test-side polling only; the product never polls.
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_every`] 10 ms.
pub fn poll<T>(timeout: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(10), timeout, check)
}

/// Whether `cond` came to hold within `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(timeout, || cond().then_some(())).is_some()
}

/// [`poll`], failing the test if `check` gives nothing within `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(timeout, check).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// The exit status of `child` once it has exited, or `None` if it still runs after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll(timeout, || child.try_wait().ok().flatten())
}

/// Wait until something accepts connections on `addr` (20 s at most, else the test fails).
pub fn wait_for_port(addr: SocketAddr) {
    let accepts = poll_every(Duration::from_millis(20), Duration::from_secs(20), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(drop)
    });
    assert!(accepts.is_some(), "nothing listening on {addr} after 20 s");
}

/// A child process, killed (SIGKILL) and reaped when dropped if it still runs.
pub struct Guarded {
    pub child: Child,
}

impl Guarded {
    /// Start `command`; `what` names it if it cannot start.
    pub fn spawn(command: &mut Command, what: &str) -> Guarded {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guarded { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// SIGTERM, then up to `limit` for the exit status.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        wait_exit(&mut self.child, limit)
    }

    /// What it wrote to a piped stderr, read to the end (empty if stderr was not piped).
    pub fn stderr_text(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut text).ok();
        }
        text
    }
}

/// Run `command` (stderr piped, read once it exits: for short outputs) until it exits, or kill it after
/// `limit`: its exit code (None if killed or signalled), its stderr, and how long it ran.
pub fn run_timed(command: &mut Command, limit: Duration) -> (Option<i32>, String, Duration) {
    let mut child = Guarded::spawn(command.stderr(std::process::Stdio::piped()), "a command");
    let started = Instant::now();
    let status = wait_exit(&mut child.child, limit);
    let took = started.elapsed();
    (status.and_then(|s| s.code()), child.stderr_text(), took)
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Every process below `pid` (children, their children, ...).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, _) in children_of(parent) {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// Processes whose parent is `ppid`, with their state letter (from /proc).
pub fn children_of(ppid: u32) -> Vec<(u32, char)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| {
            let fields = stat_fields(pid)?;
            let parent: u32 = fields.get(1)?.parse().ok()?;
            (parent == ppid).then(|| (pid, state_of(&fields)))
        })
        .collect()
}

/// The fields of /proc/PID/stat after the command (which may contain spaces): [0] state, [1] parent pid,
/// [2] process group, ... [16] nice.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(String::from).collect())
}

fn state_of(fields: &[String]) -> char {
    fields.first().and_then(|s| s.chars().next()).unwrap_or('?')
}

/// The state letter of `pid` (`R`, `S`, `Z` for a zombie...), if it is there.
pub fn process_state(pid: u32) -> Option<char> {
    stat_fields(pid).map(|f| state_of(&f))
}

/// The nice value of a running process.
pub fn nice_of(pid: i32) -> i32 {
    let fields = stat_fields(pid as u32).expect("process gone");
    fields[16].parse().expect("nice field")
}

/// RLIMIT_NOFILE (soft, hard) of a running process.
pub fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("proc limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn process_exists(pid: i32) -> bool {
    process_state(pid as u32).is_some_and(|state| state != 'Z')
}

pub fn kill9(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// The CSRF token of a dashboard page (`<meta name="csrf-token" content="...">`).
pub fn csrf_token(page: &str) -> String {
    page.split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf token in the page")
        .to_string()
}
