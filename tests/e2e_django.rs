//! End to end, with real components: the sample Django project (app/) served by real gunicorn and by the
//! lean app/stackinit_wsgi.py, as replicas of `stackinit run`, behind stackinit's own proxy, with the
//! instance facts from a fake IMDS on loopback. The venv (pinned Django + gunicorn) comes from
//! scripts/test; without it these tests fail.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::e2e::{self, timed_get, AppServer, Events, FakeImds, Load, SeedConfig};
use support::http::Reply;
use support::{free_port, kill9, repo, wait_until, Stack};

const HELLO: &str = "Hello from Django";
/// Django's own answer to a Host outside ALLOWED_HOSTS (DEBUG = False).
const DJANGO_400: &str = "Bad Request (400)";

/// A running seed stack. Fields drop in order: the stack first, then the fake IMDS and the shared dir.
struct Seed {
    stack: Stack,
    imds: FakeImds,
    shared: tempfile::TempDir,
    addr: SocketAddr,
    replicas: u32,
    /// /healthz answers seen before the first 200 (503 while migrate, collectstatic and the replicas start).
    healthz_before_ready: Vec<u16>,
}

/// The instance's facts as the fake IMDS gives them: one region's name forms for 3.4.5.6 / 10.0.0.5.
struct Region {
    public_hostname: &'static str,
    private_hostname: &'static str,
}

const US_EAST_1: Region = Region {
    public_hostname: "ec2-3-4-5-6.compute-1.amazonaws.com",
    private_hostname: "ip-10-0-0-5.ec2.internal",
};
const EU_WEST_1: Region = Region {
    public_hostname: "ec2-3-4-5-6.eu-west-1.compute.amazonaws.com",
    private_hostname: "ip-10-0-0-5.eu-west-1.compute.internal",
};
const PUBLIC_IP: &str = "3.4.5.6";
const PRIVATE_IP: &str = "10.0.0.5";

impl Seed {
    fn start(server: AppServer, region: &Region) -> Seed {
        Seed::start_with(server, region, 3, "30s", "", None)
    }

    fn start_with(
        server: AppServer,
        region: &Region,
        replicas: u32,
        ready_timeout: &str,
        app_extra: &str,
        user_data: Option<&str>,
    ) -> Seed {
        let shared = e2e::shared_dir();
        // The launch's user data, served by the fake IMDS for the image's `user-data` job.
        let user_data_file = shared.path().join("launch-user-data");
        if let Some(text) = user_data {
            std::fs::write(&user_data_file, text).expect("user data");
        }
        let imds = FakeImds::start_with_user_data(
            &[
                ("instance-id", "i-0e2e0e2e0e2e0e2e0"),
                ("local-ipv4", PRIVATE_IP),
                ("local-hostname", region.private_hostname),
                ("public-ipv4", PUBLIC_IP),
                ("public-hostname", region.public_hostname),
            ],
            user_data.map(|_| user_data_file.as_path()),
        );
        let port = free_port();
        let config = SeedConfig {
            server,
            replicas,
            proxy_port: port,
            imds_port: imds.port,
            shared: shared.path(),
            app_extra: app_extra.to_string(),
            readiness: None,
            ready_timeout,
            proxy_extra: String::new(),
            user_data: user_data.is_some(),
        }
        .render();
        let stack = Stack::start(&config);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut seed = Seed {
            stack,
            imds,
            shared,
            addr,
            replicas,
            healthz_before_ready: Vec::new(),
        };
        seed.wait_healthy(Duration::from_secs(180));
        seed
    }

    /// Poll /healthz (any Host: it is answered before Host routing) until 200, recording what came before.
    fn wait_healthy(&mut self, timeout: Duration) {
        let mut seen = Vec::new();
        let ok = wait_until(timeout, || {
            match timed_get(self.addr, "10.9.9.9", "/healthz") {
                Ok(reply) if reply.status == 200 => true,
                Ok(Reply { status, .. }) => {
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                    false
                }
                Err(_) => false,
            }
        });
        assert!(
            ok,
            "/healthz never became 200 (seen {seen:?}); status: {}\nstderr:\n{}",
            self.stack.status(),
            self.stack.stderr()
        );
        // /healthz 200 means every replica is ready (never earlier: a load balancer would send traffic).
        for unit in self.app_units() {
            let u = self.stack.unit(&unit);
            assert_eq!(
                u["ready"], true,
                "/healthz said 200 before {unit} was ready: {u}"
            );
        }
        self.healthz_before_ready = seen;
    }

    fn app_units(&self) -> Vec<String> {
        (0..self.replicas).map(|i| format!("app@{i}")).collect()
    }

    fn pids(&self) -> Vec<Option<i32>> {
        self.app_units()
            .iter()
            .map(|u| self.stack.pid_of(u))
            .collect()
    }

    fn context(&self) -> String {
        let logs: String = self
            .app_units()
            .iter()
            .map(|u| {
                let path = self.stack.unit(u)["stderr"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {u} stderr (last lines, newest first):\n{}\n",
                    tail.join("\n")
                )
            })
            .collect();
        let access =
            std::fs::read_to_string(self.stack.path("logs/access.log")).unwrap_or_default();
        // Non-200 answers to the app, and slow requests (request time, the next-to-last field, over 2 s).
        let access_tail: Vec<&str> = access
            .lines()
            .filter(|l| !l.contains("/healthz"))
            .filter(|l| {
                let slow = l
                    .rsplit(' ')
                    .nth(1)
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(|t| t > 2.0);
                !l.contains("\" 200 ") || slow
            })
            .rev()
            .take(20)
            .collect();
        let proxy_log =
            std::fs::read_to_string(self.stack.path("logs/proxy.err.log")).unwrap_or_default();
        let proxy_warnings: Vec<&str> = proxy_log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(40)
            .collect();
        format!(
            "status: {}\n{logs}--- access log, non-200 or slower than 2 s (newest first):\n{}\n--- proxy warnings (first 40):\n{}\n--- stackinit stderr (last 60 lines):\n{}",
            self.stack.status(),
            access_tail.join("\n"),
            proxy_warnings.join("\n"),
            tail_lines(&self.stack.stderr(), 60)
        )
    }
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Test 1: the seed stack serves the Django page for the instance's own EC2 names and IPs; every other Host
/// reaches Django (the proxy's default server) and gets Django's 400, so nothing is wildcarded.
fn seed_stack_serves(server: AppServer, own: &Region, other: &Region) {
    let seed = Seed::start(server, own);
    // 503 while the jobs and replicas start, if the proxy was up early enough for us to see it.
    assert!(
        seed.healthz_before_ready.iter().all(|s| *s == 503),
        "before 200, /healthz answered {:?}",
        seed.healthz_before_ready
    );
    assert!(
        seed.healthz_before_ready.contains(&503),
        "never saw /healthz 503 before the replicas were ready (seen {:?})",
        seed.healthz_before_ready
    );
    // At the first 200, every replica is ready and both jobs are done.
    for unit in seed.app_units() {
        let u = seed.stack.unit(&unit);
        assert!(
            u["state"] == "running" && u["ready"] == true,
            "{unit} not ready at /healthz 200: {u}"
        );
    }
    for job in ["migrate", "collectstatic"] {
        let u = seed.stack.unit(job);
        assert_eq!(u["state"], "exited", "{job}: {u}");
        assert_eq!(u["last_exit"], "exit 0", "{job}: {u}");
    }
    assert!(seed.shared.path().join("db.sqlite3").exists(), "no db");
    // The proxy outranks the CPU-bound workers (init is root here): nice -5 against their 0.
    let nice = |unit: &str| support::nice_of(seed.stack.pid_of(unit).expect("pid"));
    assert_eq!(nice("proxy"), -5);
    assert_eq!(nice("app@0"), 0);

    for host in [
        own.public_hostname,
        own.private_hostname,
        PUBLIC_IP,
        PRIVATE_IP,
    ] {
        let (status, _, body) = timed_get(seed.addr, host, "/").expect("GET /").parts();
        assert_eq!(status, 200, "Host {host}: {body}\n{}", seed.context());
        assert!(body.contains(HELLO), "Host {host}: {body}");
        assert!(
            body.contains(&format!("<code class=\"host\">{host}</code>")),
            "Host {host} not echoed: {body}"
        );
    }
    // The other region's forms of the same IPs and a stranger: routed by the proxy (its wildcard server
    // names, or the default server), then refused by Django's ALLOWED_HOSTS.
    for host in [
        other.public_hostname,
        other.private_hostname,
        "evil.example.com",
    ] {
        let (status, _, body) = timed_get(seed.addr, host, "/").expect("GET /").parts();
        assert_eq!(
            status, 400,
            "Host {host} should be refused by Django: {body}"
        );
        assert!(
            body.contains(DJANGO_400),
            "Host {host}: not Django's 400: {body}"
        );
    }
    // /static/ is served by the proxy from the collected directory (Django itself, DEBUG = False, would 404).
    let (status, _, body) = timed_get(seed.addr, own.public_hostname, "/static/style.css")
        .expect("GET css")
        .parts();
    assert_eq!(status, 200, "{body}");
    let css = std::fs::read_to_string(e2e::app_dir().join("static/style.css")).expect("css");
    assert_eq!(body, css);
    assert!(seed.shared.path().join("staticfiles/style.css").exists());

    if server == AppServer::Gunicorn {
        // No --bind: gunicorn took the inherited unix socket (LISTEN_FDS with LISTEN_PID = its pid).
        let log =
            std::fs::read_to_string(seed.stack.unit("app@0")["stderr"].as_str().unwrap_or(""))
                .unwrap_or_default();
        assert!(
            log.contains("Listening at: unix:"),
            "gunicorn did not serve the inherited socket:\n{log}"
        );
    }
}

#[test]
fn seed_stack_with_gunicorn_serves_ec2_names_us_east_1() {
    seed_stack_serves(AppServer::Gunicorn, &US_EAST_1, &EU_WEST_1);
}

#[test]
fn seed_stack_with_lean_server_serves_ec2_names_eu_west_1() {
    seed_stack_serves(AppServer::Lean, &EU_WEST_1, &US_EAST_1);
}

const LOAD_CLIENTS: usize = 4;
const LOAD_PAUSE: Duration = Duration::from_millis(5);

fn report_failures(
    what: &str,
    report: &e2e::LoadReport,
    events: &Events,
    seed: &Seed,
) -> Option<String> {
    if report.failures.is_empty() {
        return None;
    }
    let list: Vec<String> = report
        .failures
        .iter()
        .take(20)
        .map(|f| format!("  {:>8.3}s {}", f.at.as_secs_f64(), f.what))
        .collect();
    Some(format!(
        "{what}: {} of {} requests failed:\n{}\nevents:\n{}\n{}",
        report.failures.len(),
        report.ok + report.failures.len() as u64,
        list.join("\n"),
        events.dump(),
        seed.context()
    ))
}

/// Test 2a: `kill -9` of a random replica process every 500 ms for 20 s under steady load: no failed GET.
fn kill9_under_load(server: AppServer) {
    // Each replica is killed about 13 times in 20 s. The default crash-loop backoff (doubling from
    // 100 ms to 30 s, reset after 60 s up) would soon park every replica for many seconds, which tests
    // the backoff, not routing; cap it so each kill is followed by a prompt restart. Everything else is
    // default: kills of replicas that had reached readiness are not failed starts, a replica killed
    // during start-up retries instead of giving up, and what was queued on a killed replica's socket is
    // handed back to the proxy and retried elsewhere.
    let seed = Seed::start_with(server, &US_EAST_1, 3, "30s", "backoff_max = \"1s\"", None);
    let events = Events::default();
    let load = Load::start(seed.addr, PRIVATE_IP, "/", HELLO, LOAD_CLIENTS, LOAD_PAUSE);
    let started = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    for round in 1..=40u32 {
        // On a fixed 500 ms schedule, however long `stackinit status` takes.
        let due = started + Duration::from_millis(500) * round;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let units = seed.app_units();
        let unit = &units[(rng % units.len() as u64) as usize];
        if let Some(pid) = seed.stack.pid_of(unit) {
            kill9(pid);
            kills += 1;
            events.push(load.elapsed(), format!("kill -9 {unit} pid {pid}"));
        } else {
            events.push(load.elapsed(), format!("{unit} has no pid (restarting)"));
        }
    }
    // Let the last restart settle while the load still runs, then every replica must be back.
    let back = wait_until(Duration::from_secs(60), || {
        seed.app_units()
            .iter()
            .all(|u| seed.stack.unit(u)["ready"] == true)
    });
    let report = load.finish();
    eprintln!(
        "kill -9 under load ({server:?}): {kills} kills, {} ok, {} failed",
        report.ok,
        report.failures.len()
    );
    if let Some(msg) = report_failures("kill -9 under load", &report, &events, &seed) {
        panic!("{msg}");
    }
    assert!(back, "replicas not all ready again: {}", seed.context());
    assert!(kills >= 25, "only {kills} kills");
    assert!(report.ok > 200, "too little load: {} ok", report.ok);
    if server == AppServer::Forked {
        // Every restart was a fork from the one template, which none of the kills touched.
        let template = seed.stack.unit("app-template");
        assert_eq!(template["restarts"], 0, "{template}");
        assert_eq!(template["state"], "running", "{template}");
        for unit in seed.app_units() {
            let pid = seed.stack.pid_of(&unit).expect("pid");
            let fields = support::stat_fields(pid as u32).expect("worker alive");
            assert_eq!(
                fields[1].parse::<u32>().unwrap(),
                seed.stack.pid(),
                "{unit}'s worker must be stackinit's child (one reaper)"
            );
            assert_ne!(
                fields[2].parse::<i64>().ok(),
                template["pid"].as_i64(),
                "{unit}'s worker must not share the template's process group"
            );
        }
    }
}

#[test]
fn kill9_every_500ms_under_load_gunicorn() {
    kill9_under_load(AppServer::Gunicorn);
}

#[test]
fn kill9_every_500ms_under_load_lean() {
    kill9_under_load(AppServer::Lean);
}

#[test]
fn kill9_every_500ms_under_load_forked_from_a_template() {
    kill9_under_load(AppServer::Forked);
}

/// Test 2b: `stackinit restart app` under steady load replaces every replica with no failed request.
fn rolling_restart_under_load(server: AppServer) {
    let seed = Seed::start(server, &US_EAST_1);
    let events = Events::default();
    let before = seed.pids();
    let load = Load::start(seed.addr, PRIVATE_IP, "/", HELLO, LOAD_CLIENTS, LOAD_PAUSE);
    std::thread::sleep(Duration::from_secs(1));
    let out = seed.stack.cli(&["restart", "app"]);
    events.push(
        load.elapsed(),
        format!(
            "restart app: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    );
    assert!(out.status.success(), "restart app failed: {out:?}");
    // A deploy is not an outage: /healthz stays 200 throughout, so a load balancer keeps the instance.
    let mut health_during = Vec::new();
    let replaced = wait_until(Duration::from_secs(120), || {
        match timed_get(seed.addr, "10.9.9.9", "/healthz").map(|r| (r.status, r.text())) {
            Ok((200, _)) => {}
            other => health_during.push(format!("{:.3}s {other:?}", load.elapsed().as_secs_f64())),
        }
        let now = seed.pids();
        let all_new = now.iter().zip(&before).all(|(n, b)| n.is_some() && n != b);
        all_new
            && seed
                .app_units()
                .iter()
                .all(|u| seed.stack.unit(u)["ready"] == true)
    });
    events.push(
        load.elapsed(),
        format!("replaced: {replaced}, pids {:?}", seed.pids()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let report = load.finish();
    eprintln!(
        "rolling restart under load ({server:?}): {} ok, {} failed",
        report.ok,
        report.failures.len()
    );
    if let Some(msg) = report_failures("rolling restart under load", &report, &events, &seed) {
        panic!("{msg}");
    }
    assert!(
        replaced,
        "not every replica was replaced (before {before:?}): {}",
        seed.context()
    );
    assert!(report.ok > 100, "too little load: {} ok", report.ok);
    assert!(
        health_during.is_empty(),
        "/healthz was not 200 during the rolling restart: {health_during:?}"
    );
}

#[test]
fn rolling_restart_under_load_gunicorn() {
    rolling_restart_under_load(AppServer::Gunicorn);
}

#[test]
fn rolling_restart_under_load_lean() {
    rolling_restart_under_load(AppServer::Lean);
}

#[test]
fn rolling_restart_under_load_forked_from_a_template() {
    rolling_restart_under_load(AppServer::Forked);
}

/// Test 3: a release whose readiness probe can never pass halts the rollout at its first replica; the old
/// replicas keep serving without a failed request, and status says why.
#[test]
fn broken_release_halts_rollout_and_old_replicas_keep_serving() {
    let seed = Seed::start_with(AppServer::Gunicorn, &US_EAST_1, 3, "8s", "", None);
    let events = Events::default();
    let before = seed.pids();
    let load = Load::start(seed.addr, PRIVATE_IP, "/", HELLO, LOAD_CLIENTS, LOAD_PAUSE);
    // The "new release": its readiness path 404s forever.
    let broken = SeedConfig {
        server: AppServer::Gunicorn,
        replicas: 3,
        proxy_port: seed.addr.port(),
        imds_port: seed.imds.port,
        shared: seed.shared.path(),
        app_extra: String::new(),
        readiness: Some(
            "readiness = { http = \"/no-such-page/\", expect = 200, period = \"1s\", timeout = \"2s\" }"
                .into(),
        ),
        ready_timeout: "8s",
        proxy_extra: String::new(),
        user_data: false,
    }
    .render();
    let text = std::fs::read_to_string(&seed.stack.config).expect("config");
    let header_end = text.find("\n[init.imds]").expect("rendered config");
    std::fs::write(
        &seed.stack.config,
        format!("{}{broken}", &text[..header_end]),
    )
    .expect("write config");
    std::thread::sleep(Duration::from_millis(500));
    let out = seed.stack.cli(&["reload"]);
    events.push(
        load.elapsed(),
        format!("reload: {}", String::from_utf8_lossy(&out.stdout).trim()),
    );
    assert!(out.status.success(), "reload failed: {out:?}");

    let mut halted_unit = None;
    let halted = wait_until(Duration::from_secs(60), || {
        for unit in seed.app_units() {
            let u = seed.stack.unit(&unit);
            if u["reason"]
                .as_str()
                .is_some_and(|r| r.contains("rollout halted"))
            {
                halted_unit = Some((unit, u));
                return true;
            }
        }
        false
    });
    events.push(load.elapsed(), format!("halted: {halted_unit:?}"));
    // Keep the load on a little longer: the halted state must be stable and still serving.
    std::thread::sleep(Duration::from_secs(3));
    let report = load.finish();
    eprintln!(
        "broken release under load: {} ok, {} failed; {halted_unit:?}",
        report.ok,
        report.failures.len()
    );
    if let Some(msg) = report_failures("broken release", &report, &events, &seed) {
        panic!("{msg}");
    }
    assert!(halted, "rollout never halted: {}", seed.context());
    let (unit, entry) = halted_unit.expect("halted unit");
    // The new release started beside the first replica and never became ready, so it never took its place:
    // all three replicas are the old processes, ready and serving, and the failed successor is gone.
    assert_eq!(entry["ready"], true, "{entry}");
    assert_eq!(seed.pids(), before, "no replica should have been replaced");
    for name in seed.app_units() {
        let u = seed.stack.unit(&name);
        assert_eq!(u["ready"], true, "{name}: {u}");
    }
    let successor_gone = wait_until(Duration::from_secs(15), || {
        !seed.stack.status()["services"]
            .as_array()
            .is_some_and(|all| {
                all.iter()
                    .any(|s| s["name"].as_str().is_some_and(|n| n.ends_with(".next")))
            })
    });
    assert!(
        successor_gone,
        "the failed successor still runs: {}",
        seed.stack.status()
    );
    // The human status shows the reason too.
    let out = seed.stack.cli(&["status", &unit]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout halted"),
        "`stackinit status {unit}` does not say why:\n{text}"
    );
    // And GETs after the halt still succeed.
    for _ in 0..10 {
        let (status, _, body) = timed_get(seed.addr, PRIVATE_IP, "/").expect("GET").parts();
        assert_eq!(status, 200, "{body}");
    }
}

/// Test 4: a notify service is ready only after its READY=1, and is restarted when its WATCHDOG=1 pings stop.
#[test]
fn notify_readiness_and_watchdog_restart() {
    let script = repo().join("tests/support/e2e_watchdog_service.py");
    let mut stack = Stack::start(&format!(
        r#"
[service.pinger]
command = ["python3", "{script}", "{{dir}}/starts", "1.5", "4"]
notify = true
watchdog = "1s"
restart = "always"
backoff_initial = "100ms"
"#,
        script = script.display()
    ));
    let starts = stack.path("starts");
    // Not ready before READY=1 (1.5 s after start), although the process runs.
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&starts)
            .is_ok_and(|s| !s.is_empty())),
        "pinger never started: {}",
        stack.stderr()
    );
    let first_start = Instant::now();
    let u = stack.unit("pinger");
    assert_eq!(u["ready"], false, "ready before READY=1: {u}");
    assert!(u["pid"].as_i64().is_some(), "{u}");
    stack.wait_state("pinger", "running", Duration::from_secs(10));
    let became_ready = first_start.elapsed();
    assert!(
        became_ready >= Duration::from_millis(1000),
        "ready after only {became_ready:?}: READY=1 is sent after 1.5 s"
    );
    let u = stack.unit("pinger");
    assert_eq!(u["status_text"], "pinging 4 times", "{u}");
    let first_pid = u["pid"].as_i64();
    assert_eq!(u["restarts"], 0, "{u}");

    // 4 pings at 250 ms, then silence: the 1 s watchdog fires about 2 s after READY.
    let mut reason_seen = None;
    let restarted = wait_until(Duration::from_secs(15), || {
        let u = stack.unit("pinger");
        if let Some(r) = u["reason"].as_str() {
            if r.contains("watchdog") {
                reason_seen = Some(r.to_string());
            }
        }
        u["restarts"].as_u64().unwrap_or(0) >= 1 && u["pid"].as_i64() != first_pid
    });
    assert!(
        restarted,
        "no watchdog restart: {}\n{}",
        stack.unit("pinger"),
        stack.stderr()
    );
    let fired_after = first_start.elapsed();
    assert!(
        fired_after >= Duration::from_millis(2500),
        "restarted after {fired_after:?}, before the pings stopped"
    );
    // The reason in status (caught while it showed, or still there) and in stackinit's log.
    let reason = reason_seen
        .or_else(|| stack.unit("pinger")["reason"].as_str().map(String::from))
        .unwrap_or_default();
    assert!(
        reason.contains("watchdog timeout") || stack.stderr().contains("watchdog timeout"),
        "no watchdog reason (status reason {reason:?}):\n{}",
        stack.stderr()
    );
    assert!(
        reason.contains("watchdog timeout"),
        "status never showed the watchdog reason (saw {reason:?}): {}",
        stack.unit("pinger")
    );
    // The replacement really started (it records its pid first thing).
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&starts)
            .is_ok_and(|s| s.lines().count() >= 2)),
        "no second start: {:?}",
        std::fs::read_to_string(&starts)
    );
    // Once the replacement runs, `reason` is clear again, but `last_restart` still says why it restarted.
    let last_restart = stack.unit("pinger")["last_restart"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        last_restart.starts_with("watchdog timeout"),
        "last_restart should keep the watchdog reason: {}",
        stack.unit("pinger")
    );
    // The hung process itself is gone (killed, not left behind).
    let old = first_pid.unwrap_or(0) as i32;
    assert!(
        wait_until(Duration::from_secs(15), || !support::process_exists(old)),
        "the hung process {old} is still alive"
    );
    stack.stop();
}

/// One HTTP/1.1 request from a chosen loopback source address (127.0.0.2 is a peer the proxy does not trust).
fn send_from(source: std::net::Ipv4Addr, to: SocketAddr, raw: &str) -> Reply {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("{to}: not IPv4")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )
    .expect("bind the client's source address");
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect to the proxy");
    let mut stream = std::net::TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(raw.as_bytes()).expect("send");
    support::http::read_reply(&mut std::io::BufReader::new(stream), false).expect("reply")
}

/// A request as an ALB forwards one that came in over HTTPS from 198.51.100.7.
fn through_alb(method: &str, host: &str, extra: &str) -> String {
    format!(
        "{method} /whoami/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\
         X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n{extra}\r\n"
    )
}

/// HTTPS at the load balancer, plain HTTP behind it, set up as the README says: from the launch's user data
/// (fetched from the fake IMDS by the image's `user-data` job before the app starts). With the ALB's
/// address in `trusted_proxies`, Django sees the request as secure (`SECURE_PROXY_SSL_HEADER`) and the
/// client the ALB saw, a POST with the page's `https://` Origin passes CSRF, and the ALB's DNS name and a
/// custom domain from `extra_server_names` pass `ALLOWED_HOSTS`. The same headers from a peer that is not
/// trusted are overwritten: not secure, its own address, and the POST fails CSRF's Origin check.
#[test]
fn https_at_a_trusted_alb_reaches_django_and_nobody_else_can_claim_it() {
    let alb_name = "my-alb-1234.us-east-1.elb.amazonaws.com";
    let domain = "www.example.com";
    let seed = Seed::start_with(
        AppServer::Lean,
        &US_EAST_1,
        2,
        "30s",
        "",
        Some(&format!(
            "[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\nextra_server_names = [\"{alb_name}\", \"{domain}\"]\n"
        )),
    );
    assert_eq!(
        seed.stack.status()["user_data"]["applied"],
        true,
        "{}",
        seed.stack.status()
    );
    let alb = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let stranger = std::net::Ipv4Addr::new(127, 0, 0, 2);

    let first = send_from(alb, seed.addr, &through_alb("GET", domain, ""));
    assert_eq!(first.status, 200, "{}\n{}", first.text(), seed.context());
    let page = first.json();
    assert_eq!(page["secure"], true, "{page}");
    assert_eq!(page["client"], "198.51.100.7", "{page}");
    assert_eq!(page["host"], domain, "{page}");
    let cookie = first
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("Django's CSRF cookie")
        .to_string();
    let token = page["csrf_token"].as_str().expect("token").to_string();
    let post_headers =
        format!("Origin: https://{domain}\r\nCookie: {cookie}\r\nX-CSRFToken: {token}\r\n");
    let post = send_from(alb, seed.addr, &through_alb("POST", domain, &post_headers));
    assert_eq!(post.status, 200, "POST through the ALB: {}", post.text());
    assert_eq!(post.json()["method"], "POST");

    let by_alb_name = send_from(alb, seed.addr, &through_alb("GET", alb_name, ""));
    assert_eq!(by_alb_name.status, 200, "{}", by_alb_name.text());
    assert_eq!(
        timed_get(seed.addr, "evil.example.com", "/")
            .expect("GET")
            .status,
        400,
        "a name nobody added is still Django's 400"
    );

    let spoofed = send_from(stranger, seed.addr, &through_alb("GET", domain, ""));
    assert_eq!(spoofed.status, 200, "{}", spoofed.text());
    assert_eq!(spoofed.json()["secure"], false, "{}", spoofed.text());
    assert_eq!(spoofed.json()["client"], "127.0.0.2", "{}", spoofed.text());
    let spoofed_post = send_from(
        stranger,
        seed.addr,
        &through_alb("POST", domain, &post_headers),
    );
    assert_eq!(
        spoofed_post.status,
        403,
        "an untrusted peer's https claim must not pass CSRF: {}",
        spoofed_post.text()
    );

    let access = std::fs::read_to_string(seed.stack.path("logs/access.log")).unwrap_or_default();
    assert!(
        access
            .lines()
            .any(|l| l.starts_with("198.51.100.7 ") && l.contains("\"POST /whoami/")),
        "the access log should show the ALB's client: {access}"
    );
}
