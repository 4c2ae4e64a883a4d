//! `stackinit run` under a fake systemd: a NOTIFY_SOCKET the test binds, with WATCHDOG_USEC set. The
//! messages must arrive in order: STATUS= and READY=1 once services are ready, WATCHDOG=1 at half the
//! watchdog period, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload, STOPPING=1 on SIGTERM.
//! Also checks the unit file with `systemd-analyze verify`.

mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{repo, temp_dir, wait_until, Stack, BIN};

/// One datagram from stackinit, and when it arrived.
struct Message {
    at: Instant,
    text: String,
}

impl Message {
    fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|line| line == assignment)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The fake systemd: collects every datagram on its socket, `notify.sock` in a temp dir of its own.
struct FakeSystemd {
    rx: mpsc::Receiver<Message>,
    seen: Vec<Message>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = temp_dir("stackinit-fake-systemd");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test is over and the receiver is gone.
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx
                    .send(Message {
                        at: Instant::now(),
                        text,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        FakeSystemd {
            rx,
            seen: Vec::new(),
            path,
            _dir: dir,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    /// Wait for a message with `assignment` (e.g. "READY=1") after index `from`; return its index.
    fn wait_for(&mut self, assignment: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen.iter().skip(from).position(|m| m.has(assignment)) {
                return from + i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(message) => self.seen.push(message),
                Err(_) => panic!(
                    "no {assignment} within {timeout:?}; got: {:?}",
                    self.texts()
                ),
            }
        }
    }

    /// Collect whatever arrives during `period`.
    fn collect_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while let Ok(message) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(message);
        }
    }

    fn texts(&self) -> Vec<&str> {
        self.seen.iter().map(|m| m.text.as_str()).collect()
    }
}

/// A service that writes its environment to `{dir}/NAME.env`, then sleeps.
fn sleeper(name: &str, after: &str) -> String {
    let script = format!("env > {{dir}}/{name}.env; while :; do sleep 1 & wait $!; done");
    format!(
        "[service.{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\nafter = [{after}]\nstart_secs = \"200ms\"\nstop_grace = \"5s\"\n"
    )
}

#[test]
fn notifications_arrive_in_order() {
    let mut systemd = FakeSystemd::bind();
    let mut stack = Stack::start_with_env(
        &[sleeper("db", ""), sleeper("web", "\"db\"")].concat(),
        &[
            ("NOTIFY_SOCKET", systemd.path()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    // Ready, with a status that says so, and a status before (or with) READY=1.
    let ready = systemd.wait_for("READY=1", 0, Duration::from_secs(20));
    let first_status = systemd
        .seen
        .iter()
        .position(|m| m.value("STATUS").is_some());
    assert!(
        first_status.is_some_and(|s| s <= ready),
        "STATUS= before READY=1: {:?}",
        systemd.texts()
    );
    let status_at_ready = systemd.seen[..=ready]
        .iter()
        .rev()
        .find_map(|m| m.value("STATUS"))
        .unwrap_or("");
    assert!(
        status_at_ready.contains("2/2 ready"),
        "status at READY=1: {status_at_ready:?}"
    );
    for env_file in ["db.env", "web.env"] {
        let env = fs::read_to_string(stack.path(env_file)).unwrap_or_default();
        assert!(
            !env.contains(systemd.path()),
            "systemd's NOTIFY_SOCKET leaked into a service"
        );
        assert!(
            !env.contains("WATCHDOG_USEC=400000"),
            "systemd's WATCHDOG_USEC leaked into a service"
        );
    }

    // Watchdog keep-alives at half of WATCHDOG_USEC (200 ms).
    let window_start = systemd.seen.len();
    systemd.collect_for(Duration::from_millis(1500));
    let pings: Vec<Instant> = systemd.seen[window_start..]
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect();
    assert!(
        (5..=11).contains(&pings.len()),
        "{} WATCHDOG=1 in 1.5 s, want about 7",
        pings.len()
    );
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(120) && median <= Duration::from_millis(300),
        "median gap between WATCHDOG=1 is {median:?}, want about 200 ms"
    );

    // A reload is bracketed by RELOADING=1 (with MONOTONIC_USEC) and READY=1.
    let before_reload = systemd.seen.len();
    let reload = stack.cli(&["reload"]);
    assert!(
        reload.status.success(),
        "stackinit reload: {}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let reloading = systemd.wait_for("RELOADING=1", before_reload, Duration::from_secs(10));
    let usec = systemd.seen[reloading]
        .value("MONOTONIC_USEC")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "RELOADING=1 carries MONOTONIC_USEC: {:?}",
        systemd.seen[reloading].text
    );
    systemd.wait_for("READY=1", reloading + 1, Duration::from_secs(10));

    // SIGTERM: STOPPING=1, then a clean exit.
    let before_stop = systemd.seen.len();
    stack.signal(Signal::SIGTERM);
    systemd.wait_for("STOPPING=1", before_stop, Duration::from_secs(10));
    let status = stack
        .wait_exit(Duration::from_secs(20))
        .expect("stackinit run did not exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn no_notify_socket_means_no_watchdog() {
    // Without NOTIFY_SOCKET there is nobody to ping, even if WATCHDOG_USEC is set.
    let mut stack = Stack::start_with_env(&sleeper("db", ""), &[("WATCHDOG_USEC", "400000")]);
    let env_file = stack.path("db.env");
    assert!(
        wait_until(Duration::from_secs(20), || env_file.exists()),
        "service never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM, and 20 s to exit (else it is killed, which is no success either).
    let status = stack.stop().expect("stackinit run");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = fs::read_to_string(repo().join("systemd/stackinit.service")).expect("the unit file");
    for required in [
        "Type=notify",
        "ExecStart=/usr/local/bin/stackinit run",
        "ExecReload=/usr/local/bin/stackinit reload",
        "KillMode=mixed",
        "TimeoutStopSec=90",
        "WatchdogSec=30",
        "Restart=always",
        "NotifyAccess=main",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == required),
            "unit lacks {required}"
        );
    }
    // verify checks that ExecStart exists, so point it at the binary under test.
    let dir = temp_dir("stackinit-unit");
    let path = dir.path().join("stackinit.service");
    fs::write(&path, unit.replace("/usr/local/bin/stackinit", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("stackinit.service"),
        "systemd-analyze verify: {stderr}"
    );
}
