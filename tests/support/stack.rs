//! [`Stack`]: the real binary as `stackinit run` on a config in its own temp dir, asked things through
//! the real CLI, and stopped with everything it started when it drops.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{descendants_of, kill9, temp_dir, wait_exit, wait_until, BIN};

/// A running `stackinit run` on its own temp dir. `{dir}` in the config is replaced by that dir.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
}

impl Stack {
    pub fn start(config: &str) -> Stack {
        Stack::start_with_env(config, &[])
    }

    /// With `env` set for stackinit (`NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` are removed
    /// otherwise, so a test never inherits the notify socket of whoever runs it).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Stack {
        Stack::start_under::<&str>(&[], config, env)
    }

    /// Through `wrapper` (a command that execs the rest of its arguments, like `setpriv ...`, `prlimit
    /// --nofile=1024:4096` or `env NAME=any-bytes`), so stackinit starts with what the wrapper changed;
    /// its pid is then stackinit's.
    pub fn start_under<W: AsRef<OsStr>>(
        wrapper: &[W],
        config: &str,
        env: &[(&str, &str)],
    ) -> Stack {
        let dir = temp_dir("stackinit-test");
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
        stack.spawn(wrapper, env);
        stack
    }

    fn spawn<W: AsRef<OsStr>>(&mut self, wrapper: &[W], env: &[(&str, &str)]) {
        let stderr =
            std::fs::File::create(self.dir.path().join("stackinit.stderr")).expect("stderr file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
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

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).expect("signal stackinit");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stackinit.stderr")).unwrap_or_default()
    }

    /// Run the CLI against this stack's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
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

    /// stackinit's exit status once it has exited, or `None` if it still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(self.child.as_mut()?, timeout)
    }

    /// Stop stackinit with SIGTERM and wait for it; returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if let Some(status) = wait_exit(&mut child, Duration::from_secs(20)) {
            return Some(status);
        }
        // stackinit did not stop in time (the failure under test, maybe): take its whole tree with it, or
        // its services would outlive the test as orphans.
        let tree = descendants_of(child.id());
        let _ = child.kill();
        for pid in tree {
            kill9(pid as i32);
        }
        child.wait().ok()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
