//! Small helpers for black-box tests: start the real binary on a config in a temp dir, ask it things
//! through the real CLI, and clean up even when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stackinit")
}

/// Poll `cond` until it holds or `timeout` passes. Test-side polling only; the product never polls.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `stackinit run` on its own temp dir. `{dir}` in the config is replaced by that dir.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Stack {
    pub fn start(config: &str) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("stackinit-test")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("control.sock");
        let full = format!(
            "[init]\nlogs_dir = \"{d}/logs\"\ncontrol_socket = \"{s}\"\nlog_level = \"debug\"\n{rest}",
            d = dir.path().display(),
            s = socket.display(),
            rest = config.replace("{dir}", &dir.path().display().to_string())
        );
        let config_path = dir.path().join("stackinit.toml");
        std::fs::write(&config_path, full).expect("write config");
        let mut stack = Stack {
            dir,
            config: config_path,
            socket,
            child: None,
        };
        stack.spawn();
        stack
    }

    fn spawn(&mut self) {
        let stderr =
            std::fs::File::create(self.dir.path().join("stackinit.stderr")).expect("stderr file");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start stackinit");
        self.child = Some(child);
        let socket = self.socket.clone();
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "control socket never appeared; stderr:\n{}",
            self.stderr()
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stackinit.stderr")).unwrap_or_default()
    }

    /// Run the CLI against this stack's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run CLI")
    }

    /// `status --json` as parsed JSON (`{"services": [...]}`).
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The status entry of one unit.
    pub fn unit(&self, name: &str) -> serde_json::Value {
        let status = self.status();
        status["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no unit {name} in {status}"))
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.unit(name)["pid"].as_i64().map(|p| p as i32)
    }

    pub fn state_of(&self, name: &str) -> String {
        self.unit(name)["state"].as_str().unwrap_or("").to_string()
    }

    /// Wait until `name` is in `state` (and ready, for running); panics with context otherwise.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let u = self.unit(name);
            u["state"] == state && (state != "running" || u["ready"] == true)
        });
        assert!(
            ok,
            "{name} never reached {state}: {}\nstderr:\n{}",
            self.unit(name),
            self.stderr()
        );
    }

    /// Stop stackinit with SIGTERM and wait for it; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                // stackinit did not stop in time (the failure under test, maybe): take its whole tree with
                // it, or its services would outlive the test as orphans.
                let tree = descendants_of(child.id());
                let _ = child.kill();
                for pid in tree {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
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
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent: u32 = fields.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if parent == ppid {
            out.push((pid, state));
        }
    }
    out
}

/// The fields of /proc/PID/stat after the command (which may contain spaces): [0] state, [1] parent pid,
/// [2] process group, ... [16] nice.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split(' ').map(String::from).collect())
}

/// The nice value of a running process.
pub fn nice_of(pid: i32) -> i32 {
    let fields = stat_fields(pid as u32).expect("process gone");
    fields[16].parse().expect("nice field")
}

pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}
