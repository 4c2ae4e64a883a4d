//! The end-to-end tests with the real Django app: the test venv, a fake IMDS, the seed stack's config,
//! and a bounded load generator that counts every failed request (with its error).

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::http::{Reply, Request};
use super::{repo, temp_dir, Guarded};

pub fn app_dir() -> PathBuf {
    repo().join("app")
}

/// The venv with the pinned Django + gunicorn (made by scripts/test). Missing: the test fails, never skips.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("STACKINIT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/venv"));
    for tool in ["bin/python", "bin/gunicorn"] {
        assert!(
            venv.join(tool).exists(),
            "{} is missing: the end-to-end tests need the venv with app/requirements.txt \
             (run scripts/test once, or: python3 -m venv .cache/venv && .cache/venv/bin/pip install -r app/requirements.txt; \
             or point STACKINIT_TEST_VENV at one)",
            venv.join(tool).display()
        );
    }
    venv
}

/// A directory other users can enter (the proxy runs as `nobody` and must reach the app sockets and the
/// collected static files), removed on drop.
pub fn shared_dir() -> tempfile::TempDir {
    let dir = temp_dir("stackinit-e2e");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The fake IMDSv2 of tests/support/fake_imds.py on a free loopback port, with the given values.
pub struct FakeImds {
    pub port: u16,
    _child: Guarded,
}

impl FakeImds {
    pub fn start(values: &[(&str, &str)]) -> FakeImds {
        FakeImds::start_with_user_data(values, None)
    }

    /// Also serving `user_data` (read at each request) as the instance's user data.
    pub fn start_with_user_data(values: &[(&str, &str)], user_data: Option<&Path>) -> FakeImds {
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/fake_imds.py")).arg("0");
        if let Some(path) = user_data {
            cmd.arg("--user-data").arg(path);
        }
        for (k, v) in values {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        let mut guard = Guarded::spawn(
            cmd.stdout(Stdio::piped()).stderr(Stdio::null()),
            "fake_imds.py (python3)",
        );
        let stdout = guard.child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("fake IMDS port");
        let port = line.trim().parse().expect("fake IMDS prints its port");
        FakeImds {
            port,
            _child: guard,
        }
    }
}

/// Which server runs each replica.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AppServer {
    /// `gunicorn --workers 1 mysite.wsgi:application`, no --bind: it takes the LISTEN_FDS socket.
    Gunicorn,
    /// app/stackinit_wsgi.py: one process per replica, READY=1 once Django is loaded.
    Lean,
    /// app/stackinit_wsgi.py --template loads Django once (`app-template`); each replica is
    /// `stackinit fork-from`, which hands over to a worker forked from it (MAINPID=).
    Forked,
}

/// The seed stack as a stackinit config: migrate + collectstatic jobs, `replicas` app replicas, the proxy
/// with the EC2 wildcard names and /static/ by alias, facts from the fake IMDS. Sockets, db and static
/// files live in `shared`; `{dir}` (the stack's own dir) holds logs and the control socket.
pub struct SeedConfig<'a> {
    pub server: AppServer,
    pub replicas: u32,
    pub proxy_port: u16,
    pub imds_port: u16,
    pub shared: &'a Path,
    /// Extra keys for `[service.app]` (TOML lines), e.g. a different readiness probe.
    pub app_extra: String,
    /// Replaces the default readiness probe line when set.
    pub readiness: Option<String>,
    /// How long a replaced replica has to become ready in a rolling restart.
    pub ready_timeout: &'a str,
    /// Extra keys for `[proxy]` (TOML lines), e.g. `trusted_proxies`.
    pub proxy_extra: String,
    /// Run the image's `user-data` job (the overlay from the fake IMDS, at `{dir}/user-data.toml`) before
    /// the app's jobs, as app/stackinit.toml does.
    pub user_data: bool,
}

impl SeedConfig<'_> {
    pub fn render(&self) -> String {
        let venv = venv();
        let py = venv.join("bin/python");
        let app = app_dir();
        let shared = self.shared.display();
        let env = format!(
            "{{ DJANGO_SETTINGS_MODULE = \"mysite.settings\", STACKINIT_DB_PATH = \"{shared}/db.sqlite3\", \
             STACKINIT_STATIC_ROOT = \"{shared}/staticfiles\", PYTHONDONTWRITEBYTECODE = \"1\" }}"
        );
        let template_socket = format!("{shared}/app-template.sock");
        let (command, notify) = match self.server {
            AppServer::Gunicorn => (
                format!(
                    "[\"{}\", \"--workers\", \"1\", \"--graceful-timeout\", \"5\", \"mysite.wsgi:application\"]",
                    venv.join("bin/gunicorn").display()
                ),
                false,
            ),
            AppServer::Lean => (
                format!(
                    "[\"{}\", \"{}\", \"--no-access-log\", \"mysite.wsgi:application\"]",
                    py.display(),
                    app.join("stackinit_wsgi.py").display()
                ),
                true,
            ),
            AppServer::Forked => (
                format!("[\"stackinit\", \"fork-from\", \"{template_socket}\"]"),
                true,
            ),
        };
        let (template, app_after) = if self.server == AppServer::Forked {
            (
                format!(
                    r#"
[service.app-template]
command = ["{py}", "{wsgi}", "--template", "--warm-up", "/", "--no-access-log", "mysite.wsgi:application"]
directory = "{app}"
environment = {env}
listen = "unix:{template_socket}"
after = ["migrate", "collectstatic"]
notify = true
start_secs = "100ms"
"#,
                    py = py.display(),
                    wsgi = app.join("stackinit_wsgi.py").display(),
                    app = app.display(),
                ),
                r#"["app-template"]"#,
            )
        } else {
            (String::new(), r#"["migrate", "collectstatic"]"#)
        };
        let readiness = self.readiness.clone().unwrap_or_else(|| {
            "readiness = { http = \"/\", expect = 200, period = \"1s\", timeout = \"2s\" }".into()
        });
        let (user_data_init, user_data_job, jobs_after) = if self.user_data {
            (
                "user_data = \"{dir}/user-data.toml\"",
                "[service.user-data]\ncommand = [\"stackinit\", \"user-data\", \"--config\", \"{dir}/stackinit.toml\"]\noneshot = true\ncritical = false\n",
                "after = [\"user-data\"]",
            )
        } else {
            ("", "", "")
        };
        format!(
            r#"{user_data_init}
[init.imds]
enabled = true
endpoint = "http://127.0.0.1:{imds}"
timeout = "2s"

{user_data_job}
[service.migrate]
command = ["{py}", "manage.py", "migrate", "--noinput"]
directory = "{app}"
environment = {env}
oneshot = true
{jobs_after}

[service.collectstatic]
command = ["{py}", "manage.py", "collectstatic", "--noinput"]
directory = "{app}"
environment = {env}
oneshot = true
{jobs_after}

{template}
[service.app]
command = {command}
directory = "{app}"
environment = {env}
replicas = {replicas}
max_in_flight = 1
listen = "unix:{shared}/app.sock"
after = {app_after}
restart = "always"
notify = {notify}
{readiness}
stop_signal = "TERM"
stop_grace = "10s"
ready_timeout = "{ready_timeout}"
{extra}

[proxy]
listen = ["127.0.0.1:{port}"]
{proxy_extra}

[[proxy.server]]
server_name = ["*.compute.amazonaws.com", "*.compute-1.amazonaws.com", "*.compute.internal", "*.ec2.internal"]
default = true
  [[proxy.server.location]]
  path = "/static/"
  alias = "{shared}/staticfiles/"
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
"#,
            imds = self.imds_port,
            py = py.display(),
            app = app.display(),
            replicas = self.replicas,
            port = self.proxy_port,
            extra = self.app_extra,
            ready_timeout = self.ready_timeout,
            proxy_extra = self.proxy_extra,
        )
    }
}

/// A GET as the load sends it: a connect slower than 5 s or an answer slower than 15 s is a failure.
pub fn timed_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Reply> {
    Request::new(addr, "GET", path)
        .host(host)
        .header("User-Agent", "e2e")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .send()
}

pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One failed request of a load run: when (since the start), and what.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Duration,
    pub what: String,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failures: Vec<Failure>,
}

/// `clients` threads, each doing GET `path` (Host `host`) on fresh connections back to back, with `pause`
/// between requests so the load stays bounded. A request fails on a non-200, a body without `expect`,
/// or any connection error.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<(u64, Vec<Failure>)>>,
    started: Instant,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        host: &str,
        path: &str,
        expect: &str,
        clients: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let (host, path, expect) = (host.to_string(), path.to_string(), expect.to_string());
                thread::spawn(move || {
                    let (mut ok, mut failures) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match timed_get(addr, &host, &path) {
                            Ok(r) if r.status == 200 && r.text().contains(&expect) => ok += 1,
                            Ok(r) => failures.push(Failure {
                                at: started.elapsed(),
                                what: format!(
                                    "HTTP {}: {}",
                                    r.status,
                                    truncate(r.text().trim(), 300)
                                ),
                            }),
                            Err(e) => failures.push(Failure {
                                at: started.elapsed(),
                                what: e.to_string(),
                            }),
                        }
                        thread::sleep(pause);
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load {
            stop,
            threads,
            started,
        }
    }

    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for t in self.threads.drain(..) {
            if let Ok((ok, failures)) = t.join() {
                report.ok += ok;
                report.failures.extend(failures);
            }
        }
        report.failures.sort_by_key(|f| f.at);
        report
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A shared log of timestamped events (kills, state changes) to explain failures next to their times.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<(Duration, String)>>>);

impl Events {
    pub fn push(&self, at: Duration, what: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push((at, what));
        }
    }
    pub fn dump(&self) -> String {
        self.0
            .lock()
            .map(|v| {
                v.iter()
                    .map(|(t, w)| format!("  {:>8.3}s {w}", t.as_secs_f64()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}
