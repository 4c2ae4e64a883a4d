//! Limits that PID 1 meets and a shell does not, and neighbours that misbehave: the file limit, huge
//! configs, huge tails, a hostile environment, slow shutdowns, crowds of log followers and log files
//! swapped for symlinks. Each test runs the real binary and fails on the code before its fix.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use support::*;

const LONG: &str = r#"command = ["sleep", "100000"]"#;

/// Start stackinit with the open-file limit the kernel gives PID 1.
const PID1_NOFILE: [&str; 2] = ["prlimit", "--nofile=1024:4096"];

/// A variable that is not UTF-8 in stackinit's own environment reaches the services byte for byte
/// (it used to panic at the first spawn, so nothing started).
#[test]
fn a_non_utf8_environment_variable_is_passed_through() {
    let value = b"caf\xe9".to_vec();
    let assignment = OsString::from_vec([b"LEGACY_LATIN1=".as_slice(), &value].concat());
    // env(1) puts the variable in stackinit's environment and execs it.
    let stack = Stack::start_under(
        &[OsString::from("env"), assignment],
        r#"
[service.env]
command = ["sh", "-c", "printf '%s' \"$LEGACY_LATIN1\" > {dir}/seen; exec sleep 100000"]
start_secs = "0s"
"#,
        &[],
    );
    stack.wait_state("env", "running", Duration::from_secs(5));
    let seen = wait_for(
        "the service to write what it saw",
        Duration::from_secs(5),
        || {
            std::fs::read(stack.path("seen"))
                .ok()
                .filter(|s| !s.is_empty())
        },
    );
    assert_eq!(seen, value, "stderr:\n{}", stack.stderr());
}

/// Followers beyond the server's bound on streams get a clear refusal, so `status` always finds a
/// connection slot (64 followers used to take every slot, and `status` hung).
#[test]
fn status_answers_while_64_log_followers_are_connected() {
    let stack = Stack::start(&format!("[service.quiet]\n{LONG}\nstart_secs = \"0s\"\n"));
    stack.wait_state("quiet", "running", Duration::from_secs(5));
    let mut followers: Vec<Guarded> = (0..64)
        .map(|_| {
            let mut command = std::process::Command::new(BIN);
            command
                .arg("--socket")
                .arg(&stack.socket)
                .args(["logs", "--follow", "quiet"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            Guarded::spawn(&mut command, "stackinit logs --follow")
        })
        .collect();
    // Those over the bound are refused at once; the rest keep following.
    let refused = wait_for(
        "the followers over the bound to be refused",
        Duration::from_secs(10),
        || {
            let exited = followers
                .iter_mut()
                .map(Guarded::exited)
                .filter(|&e| e)
                .count();
            (exited >= 64 - 32).then_some(exited)
        },
    );
    let mut status = Guarded::spawn(
        std::process::Command::new(BIN)
            .arg("--socket")
            .arg(&stack.socket)
            .args(["status", "--json"])
            .stdout(std::process::Stdio::piped()),
        "stackinit status",
    );
    let started = std::time::Instant::now();
    let code = wait_exit(&mut status.child, Duration::from_secs(10));
    assert!(
        code.is_some_and(|c| c.success()),
        "status with {} followers connected: {code:?} after {:?}",
        64 - refused,
        started.elapsed()
    );
    let refusal = followers
        .iter_mut()
        .find_map(|f| f.exited().then_some(f))
        .map(Guarded::stderr_text)
        .unwrap_or_default();
    assert!(refusal.contains("too many streaming clients"), "{refusal}");
    assert_eq!(
        refused,
        64 - 32,
        "exactly the followers over the bound of 32 are refused"
    );
}

/// The CLI gives up on a control socket that never answers: after `--timeout`, and by default after
/// 10 s, with a message that says so (it used to wait forever).
#[test]
fn the_cli_gives_up_on_a_silent_socket() {
    let dir = temp_dir("stackinit-silent");
    let path = dir.path().join("control.sock");
    // Connections complete in the backlog and are never answered.
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(BIN);
        command.arg("--socket").arg(&path).args(args);
        run_timed(&mut command, Duration::from_secs(20))
    };
    let (code, stderr, took) = run(&["status", "--timeout", "1s"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "--timeout 1s took {took:?}");
    assert!(
        stderr.contains("no answer") && stderr.contains("1s"),
        "{stderr}"
    );
    let (code, stderr, took) = run(&["stop", "app"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(13),
        "the default timeout is 10 s: took {took:?}"
    );
}

/// The ordered shutdown ends by `init.shutdown_timeout` even when a service ignores its stop signal
/// and has an hour of grace: what is left is killed (it used to wait out the whole grace period).
#[test]
fn shutdown_ends_by_its_deadline_when_a_service_ignores_term() {
    let mut stack = Stack::start(
        r#"
shutdown_timeout = "2s"

[service.stubborn]
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
start_secs = "0s"
stop_grace = "1h"

[service.front]
command = ["sleep", "100000"]
start_secs = "0s"
after = ["stubborn"]
"#,
    );
    stack.wait_state("front", "running", Duration::from_secs(5));
    let stubborn = stack.pid_of("stubborn").expect("stubborn pid");
    let started = std::time::Instant::now();
    stack.signal(nix::sys::signal::Signal::SIGTERM);
    let status = stack.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(
        status.is_some(),
        "still running 10 s after SIGTERM:\n{}",
        stack.stderr()
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "shutdown took {took:?}, the deadline is 2 s"
    );
    assert!(
        !process_exists(stubborn),
        "the stubborn service outlived the shutdown"
    );
    let log = stack.stderr();
    assert!(
        log.contains("shutdown_timeout") && log.contains("stubborn"),
        "the log says the deadline passed and what was killed:\n{log}"
    );
}

/// `/proc/PID/status` field `name` in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

/// Four tails of every line of a 20 MB log at once stream it from the file: the whole log arrives and
/// PID 1's peak memory grows by a few MiB (it read each log whole into memory: 6 to 118 MiB).
#[test]
fn huge_tails_stream_with_bounded_memory() {
    // 200,000 lines of 100 bytes.
    let stack = Stack::start(&format!(
        r#"
[service.chatty]
command = ["sh", "-c", "yes {line} | head -n 200000; exec sleep 100000"]
start_secs = "0s"
"#,
        line = "x".repeat(99)
    ));
    let log = stack.path("logs/chatty.out.log");
    let size = 20_000_000;
    wait_for("the 20 MB log", Duration::from_secs(30), || {
        std::fs::metadata(&log)
            .ok()
            .filter(|m| m.len() >= size as u64)
    });
    let before = proc_kib(stack.pid(), "VmHWM");
    let path = "/v1/services/chatty/logs?lines=18446744073709551615";
    let lengths: Vec<usize> = std::thread::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| http::Request::new(&stack.socket, "GET", path).reply()))
            .collect();
        readers
            .into_iter()
            .map(|r| {
                let reply = r.join().expect("reader");
                assert_eq!(reply.status, 200, "{}", reply.text());
                reply.body.len()
            })
            .collect()
    });
    assert_eq!(lengths, vec![size; 4], "each tail is the whole log");
    let grown_mib = proc_kib(stack.pid(), "VmHWM").saturating_sub(before) / 1024;
    eprintln!("four 20 MB tails: PID 1's peak RSS grew by {grown_mib} MiB");
    assert!(
        grown_mib < 12,
        "peak RSS grew by {grown_mib} MiB for four 20 MB tails"
    );
}

/// A log file replaced by a symlink (as a service whose user may write in `logs_dir` can do) is never
/// followed: at a restart that service fails to start with the reason, and a reopen after the swap
/// writes nothing through the link. (Root used to create the link's target and fill it.)
#[test]
fn a_log_replaced_by_a_symlink_is_refused() {
    let logs = temp_dir("stackinit-hostile-logs");
    let target = logs.path().join("cron.d-x");
    let victim_log = logs.path().join("victim.out.log");
    std::os::unix::fs::symlink(&target, &victim_log).expect("plant the link");
    let stack = Stack::start(&format!(
        r#"
[service.victim]
{LONG}
start_secs = "0s"
stdout = "{victim}"

[service.ticker]
command = ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
start_secs = "0s"
stdout = "{ticker}"
"#,
        victim = victim_log.display(),
        ticker = logs.path().join("ticker.out.log").display(),
    ));
    stack.wait_state("ticker", "running", Duration::from_secs(5));
    let victim = wait_for("victim's reason", Duration::from_secs(10), || {
        let unit = stack.unit("victim");
        let refused = unit["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot open log"));
        refused.then_some(unit)
    });
    let reason = victim["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("victim.out.log") && reason.contains("symbolic link"),
        "{reason}"
    );
    assert!(victim["pid"].is_null(), "victim runs: {victim}");
    let out = stack.cli(&["logs", "victim"]);
    assert!(!out.status.success(), "logs of a refused log file: {out:?}");
    // Swapped while running: the reopen (SIGUSR1, as after logrotate) refuses it too.
    let ticker_log = logs.path().join("ticker.out.log");
    let target2 = logs.path().join("shadow-x");
    std::fs::remove_file(&ticker_log).expect("remove the ticker's log");
    std::os::unix::fs::symlink(&target2, &ticker_log).expect("plant the second link");
    stack.signal(nix::sys::signal::Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !target.exists() && !target2.exists(),
        "a link's target was created"
    );
    assert_eq!(stack.state_of("ticker"), "running");
    assert!(
        stack.stderr().contains("symbolic link"),
        "the refused reopen is logged:\n{}",
        stack.stderr()
    );
}

/// `stackinit check` on `config`: (exit code, stderr, how long it took).
fn check(config: &str) -> (Option<i32>, String, Duration) {
    let dir = temp_dir("stackinit-check");
    let path = dir.path().join("stackinit.toml");
    std::fs::write(&path, config).expect("write config");
    let mut command = std::process::Command::new(BIN);
    command.args(["check", "--config"]).arg(&path);
    let (code, stderr, took) = run_timed(
        command.stdout(std::process::Stdio::null()),
        Duration::from_secs(60),
    );
    (
        code,
        stderr.replace(&path.display().to_string(), "FILE"),
        took,
    )
}

/// A huge `replicas` is one error with FILE:LINE:COL, within a second (it ran past 10 s and aborted on
/// allocation failure); the biggest config within the bounds is checked within a second too.
#[test]
fn check_bounds_replicas_and_answers_within_a_second() {
    let (code, stderr, took) = check(
        "[service.app]\ncommand = [\"sleep\", \"1\"]\nreplicas = 100000000\nlisten = \"unix:/run/app.sock\"\n",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr
            .starts_with("FILE:3:12: service.app.replicas: replicas = 100000000 is more than 1024"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(1), "check took {took:?}");
    // Four services of 1024 replicas, each with its own sockets: 4096 units, 4100 addresses.
    let big: String = (0..4)
        .map(|i| {
            format!(
                "[service.s{i}]\ncommand = [\"sleep\", \"1\"]\nreplicas = 1024\n\
                 listen = \"unix:/run/s{i}/app.sock\"\nstdout = \"/logs/s{i}.log\"\nstderr = \"/logs/s{i}.log\"\n"
            )
        })
        .collect();
    let (code, stderr, took) = check(&big);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        took < Duration::from_secs(1),
        "check of 4096 units took {took:?}"
    );
    let (code, stderr, _) = check(&format!("{big}[service.one_more]\ncommand = [\"x\"]\n"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("4097 units in all is more than 4096"),
        "{stderr}"
    );
}

/// A reload whose logs and sockets cannot fit in init's open-file limit is refused with FILE:LINE and
/// changes nothing (adding 200 replicas past the limit made the supervisor panic).
#[test]
fn a_reload_that_cannot_fit_the_file_limit_is_refused() {
    let config = format!("[service.app]\n{LONG}\nstart_secs = \"0s\"\n");
    let stack = Stack::start_under(&["prlimit", "--nofile=512:512"], &config, &[]);
    stack.wait_state("app", "running", Duration::from_secs(5));
    let text = std::fs::read_to_string(&stack.config).expect("config");
    std::fs::write(
        &stack.config,
        format!("{text}\n[service.many]\n{LONG}\nreplicas = 200\n"),
    )
    .expect("write config");
    let out = stack.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the reload was accepted: {stderr}");
    assert!(
        stderr.contains("service.many.replicas") && stderr.contains("more than its limit of 512"),
        "{stderr}"
    );
    let services = stack.status()["services"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        services.len(),
        1,
        "a refused reload changes nothing: {services:?}"
    );
    assert_eq!(stack.state_of("app"), "running");
}

/// Started with PID 1's 1024:4096, stackinit raises its own soft limit to the hard one; services keep
/// the 1024 they would have had, under the raised hard limit, unless `nofile` says otherwise.
#[test]
fn the_file_limit_is_raised_for_init_and_kept_for_services() {
    let stack = Stack::start_under(
        &PID1_NOFILE,
        &format!(
            "[service.plain]\n{LONG}\nstart_secs = \"0s\"\n\n[service.wide]\n{LONG}\nstart_secs = \"0s\"\nnofile = 2048\n"
        ),
        &[],
    );
    stack.wait_state("wide", "running", Duration::from_secs(5));
    assert_eq!(nofile_of(stack.pid()), (4096, 4096), "stackinit itself");
    let plain = stack.pid_of("plain").expect("pid") as u32;
    assert_eq!(nofile_of(plain), (1024, 4096), "a service without nofile");
    let wide = stack.pid_of("wide").expect("pid") as u32;
    assert_eq!(
        nofile_of(wide),
        (2048, 2048),
        "a service with nofile = 2048"
    );
    assert!(
        stack
            .stderr()
            .contains("open file limit raised from 1024:4096 to 4096:4096"),
        "{}",
        stack.stderr()
    );
}

/// `count` connections to `addr` that send nothing.
fn idle_connections(addr: std::net::SocketAddr, count: usize) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect()
}

/// GET `path` with `Host: host` on a fresh connection, with 5 s to connect and to answer (an ALB's
/// health check timeout).
fn request(
    addr: std::net::SocketAddr,
    host: &'static str,
    path: &'static str,
) -> http::Request<'static> {
    http::Request::new(addr, "GET", path)
        .host(host)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
}

/// `/healthz` as a load balancer asks: by IP.
fn healthz(addr: std::net::SocketAddr) -> std::io::Result<http::Reply> {
    request(addr, "10.0.0.1", "/healthz").send()
}

/// With PID 1's 1024:4096 open files, the proxy takes 1100 idle connections and still answers a fresh
/// `/healthz` (it inherited 1024 files, stopped accepting, and the health check timed out).
#[test]
fn healthz_answers_with_1100_idle_connections_under_pid1_file_limits() {
    let port = free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let stack = Stack::start_under(
        &PID1_NOFILE,
        &format!(
            "[proxy]\nlisten = [\"{addr}\"]\n[[proxy.server]]\nserver_name = [\"t\"]\n  \
             [[proxy.server.location]]\n  path = \"/\"\n  return = 200\n"
        ),
        &[],
    );
    wait_for("the proxy's /healthz", Duration::from_secs(20), || {
        healthz(addr).ok().filter(|r| r.status == 200)
    });
    let idle = idle_connections(addr, 1100);
    let reply = healthz(addr).unwrap_or_else(|e| {
        panic!(
            "/healthz with 1100 idle connections: {e}\n{}",
            stack.stderr()
        )
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    let proxy = stack.pid_of("proxy").expect("proxy pid") as u32;
    assert_eq!(nofile_of(proxy), (4096, 4096), "the proxy's own limit");
    drop(idle);
}

/// Whether the other end closed `conn` (end of stream or reset) rather than leaving it quiet.
fn closed_by_peer(mut conn: &std::net::TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_millis(50))).ok();
    match std::io::Read::read(&mut conn, &mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A standalone proxy on a fresh port in front of `echo`, with `extra` in `[proxy]`.
fn proxy_with(
    dir: &std::path::Path,
    echo: &proxy::Echo,
    extra: &str,
) -> (proxy::ProxyProcess, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = format!(
        "[init]\nlogs_dir = \"{logs}\"\n[proxy]\nlisten = [\"{addr}\"]\n{extra}\n\
         [[proxy.server]]\nserver_name = [\"t\"]\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{up}\"\n",
        logs = dir.display(),
        up = echo.addr
    );
    (proxy::ProxyProcess::start(dir, &config, addr), addr)
}

/// At `max_connections`, a new connection takes the place of the one idle longest: 200 idle clients
/// against a cap of 50 keep neither `/healthz` nor a page out.
#[test]
fn at_max_connections_idle_connections_make_room() {
    let dir = temp_dir("stackinit-cap-idle");
    let echo = proxy::Echo::start("e");
    let (proxy, addr) = proxy_with(dir.path(), &echo, "max_connections = 50");
    let idle = idle_connections(addr, 200);
    let reply = healthz(addr).unwrap_or_else(|e| panic!("/healthz: {e}\n{}", proxy.stderr()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let page = request(addr, "t", "/").reply();
    assert_eq!(page.status, 200, "{}", page.text());
    // The oldest idle ones were closed for them; the proxy holds at most its cap.
    let closed = idle.iter().filter(|c| closed_by_peer(c)).count();
    assert!(
        closed >= 150,
        "only {closed} of 200 idle connections were closed at a cap of 50"
    );
}

/// With every connection busy at `max_connections`, a few more are accepted into a reserve that
/// answers `/healthz` (200: the instance is busy, not broken) and 503 to anything else; the busy
/// requests go on.
#[test]
fn with_every_connection_busy_the_reserve_answers_healthz() {
    use std::io::Write;
    let dir = temp_dir("stackinit-cap-busy");
    let echo = proxy::Echo::start("e");
    let (proxy, addr) = proxy_with(dir.path(), &echo, "max_connections = 10");
    let busy: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.write_all(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
                .expect("send");
            c
        })
        .collect();
    wait_for(
        "10 requests hanging at the upstream",
        Duration::from_secs(10),
        || (echo.requests.load(std::sync::atomic::Ordering::Relaxed) >= 10).then_some(()),
    );
    let reply = healthz(addr).unwrap_or_else(|e| panic!("/healthz: {e}\n{}", proxy.stderr()));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let page = request(addr, "t", "/").reply();
    assert_eq!(page.status, 503, "{}", page.text());
    assert_eq!(page.header("retry-after"), Some("1"));
    for c in &busy {
        assert!(!closed_by_peer(c), "a busy request was cut off");
    }
}
