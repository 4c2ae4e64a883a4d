//! Black-box tests of supervision: the real binary, real processes, observed through the real CLI.

mod support;

use std::time::{Duration, Instant};

use support::*;

const LONG: &str = r#"command = ["sleep", "100000"]"#;

#[test]
fn restarts_after_kill_9_with_a_growing_backoff() {
    let stack = Stack::start(&format!(
        r#"
[service.worker]
{LONG}
start_secs = "0s"
backoff_initial = "200ms"
backoff_max = "10s"
backoff_reset = "1h"
start_limit = 100
"#
    ));
    stack.wait_state("worker", "running", Duration::from_secs(5));
    // Time from kill to a new pid, for four crashes in a row.
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let old = stack.pid_of("worker").expect("pid");
        let t0 = Instant::now();
        kill9(old);
        assert!(wait_until(Duration::from_secs(5), || stack
            .pid_of("worker")
            .is_some_and(|p| p != old)));
        gaps.push(t0.elapsed());
    }
    // First restart immediate; then 200 ms, 400 ms, 800 ms (±10 % jitter).
    assert!(
        gaps[0] < Duration::from_millis(150),
        "first restart should be immediate: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(175) && gaps[1] < Duration::from_millis(400),
        "{gaps:?}"
    );
    assert!(
        gaps[2] >= Duration::from_millis(355) && gaps[2] < Duration::from_millis(700),
        "{gaps:?}"
    );
    assert!(
        gaps[3] >= Duration::from_millis(715) && gaps[3] < Duration::from_millis(1300),
        "{gaps:?}"
    );
    let u = stack.unit("worker");
    assert_eq!(u["restarts"], 4, "{u}");
    assert_eq!(u["last_exit"], "signal KILL", "{u}");
    assert_eq!(u["last_restart"], "exited: signal KILL", "{u}");
}

#[test]
fn goes_fatal_after_the_start_limit_with_the_reason() {
    let stack = Stack::start(
        r#"
[service.broken]
command = ["sh", "-c", "echo cannot start >&2; exit 3"]
start_limit = 3
backoff_initial = "50ms"
# Giving up is a choice: by default a crash loop retries for ever (tests/faults.rs).
start_limit_action = "fatal"
"#,
    );
    stack.wait_state("broken", "fatal", Duration::from_secs(10));
    let u = stack.unit("broken");
    assert_eq!(u["ready"], false);
    assert_eq!(u["pid"], serde_json::Value::Null);
    assert_eq!(u["restarts"], 2, "{u}");
    assert!(
        u["reason"]
            .as_str()
            .unwrap_or("")
            .contains("start limit reached: 3 failed starts (last: exit 3)"),
        "{u}"
    );
    let err = std::fs::read_to_string(stack.path("logs/broken.err.log")).unwrap();
    assert_eq!(err.matches("cannot start").count(), 3, "{err}");
    // `start` clears fatal and tries again.
    let out = stack.cli(&["start", "broken"]);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(Duration::from_secs(5), || stack.unit("broken")
        ["restarts"]
        .as_u64()
        > Some(2)
        || stack.state_of("broken") != "fatal"));
}

#[test]
fn oneshot_job_gates_its_dependents_and_a_failed_job_blocks_them() {
    let stack = Stack::start(
        r#"
[service.migrate]
command = ["sh", "-c", "sleep 0.5; echo migrate-done >> {dir}/order"]
oneshot = true

[service.app]
command = ["sh", "-c", "echo app-start >> {dir}/order; exec sleep 100000"]
after = ["migrate"]
start_secs = "100ms"

[service.badjob]
command = ["false"]
oneshot = true
restart = "never"

[service.blocked]
command = ["sh", "-c", "echo blocked-start >> {dir}/order; exec sleep 100000"]
after = ["badjob"]
"#,
    );
    stack.wait_state("app", "running", Duration::from_secs(10));
    let order = std::fs::read_to_string(stack.path("order")).unwrap();
    assert_eq!(
        order, "migrate-done\napp-start\n",
        "the job must finish before its dependent starts"
    );
    let job = stack.unit("migrate");
    assert_eq!(job["state"], "exited");
    assert_eq!(job["ready"], true);
    assert_eq!(job["last_exit"], "exit 0");
    let blocked = stack.unit("blocked");
    assert_eq!(blocked["state"], "stopped", "{blocked}");
    assert!(
        blocked["reason"]
            .as_str()
            .unwrap_or("")
            .contains("waiting for badjob"),
        "{blocked}"
    );
    assert_eq!(stack.unit("badjob")["state"], "exited");
}

#[test]
fn a_job_whose_condition_does_not_hold_is_skipped_and_its_dependents_start() {
    // The config file stands in for the stamp an image build leaves after running the job.
    let stack = Stack::start(
        r#"
[service.migrate]
command = ["sh", "-c", "echo migrate-ran >> {dir}/order"]
oneshot = true
condition_path_exists = "!{dir}/stackinit.toml"

[service.collect]
command = ["sh", "-c", "echo collect-ran >> {dir}/order"]
oneshot = true
condition_path_exists = ["{dir}/stackinit.toml", "!{dir}/collected"]

[service.app]
command = ["sh", "-c", "echo app-start >> {dir}/order; exec sleep 100000"]
after = ["migrate", "collect"]
start_secs = "100ms"
"#,
    );
    stack.wait_state("app", "running", Duration::from_secs(10));
    let order = std::fs::read_to_string(stack.path("order")).unwrap();
    assert_eq!(order, "collect-ran\napp-start\n", "migrate must be skipped");
    let job = stack.unit("migrate");
    assert_eq!(job["state"], "exited", "{job}");
    assert_eq!(job["ready"], true, "a skipped job counts as done: {job}");
    assert_eq!(job["pid"], serde_json::Value::Null, "{job}");
    let reason = job["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("skipped") && reason.contains("stackinit.toml exists"),
        "{job}"
    );
    // Conditions are checked again at every start: the stamp is gone, so the job runs now.
    std::fs::write(stack.path("collected"), "").unwrap();
    let renamed = stack.path("stackinit.toml.moved");
    std::fs::rename(stack.path("stackinit.toml"), &renamed).unwrap();
    let out = stack.cli(&["start", "migrate"]);
    assert!(out.status.success(), "{out:?}");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(stack.path("order")).is_ok_and(|o| o.contains("migrate-ran"))
    }));
    std::fs::rename(&renamed, stack.path("stackinit.toml")).unwrap();
    let out = stack.cli(&["start", "collect"]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    let collect = stack.unit("collect");
    assert!(
        collect["reason"]
            .as_str()
            .is_some_and(|r| r.contains("collected exists")),
        "{collect}"
    );
    let order = std::fs::read_to_string(stack.path("order")).unwrap();
    assert_eq!(order.matches("collect-ran").count(), 1, "{order}");
}

#[test]
fn stop_kills_the_whole_process_group_after_the_grace_period() {
    let stack = Stack::start(
        r#"
[service.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 100000 & echo $! > {dir}/grandchild; wait"]
stop_grace = "500ms"
start_secs = "100ms"
"#,
    );
    stack.wait_state("stubborn", "running", Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || stack
        .path("grandchild")
        .exists()));
    let grandchild: i32 = std::fs::read_to_string(stack.path("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_exists(grandchild));
    let t0 = Instant::now();
    let out = stack.cli(&["stop", "stubborn"]);
    assert!(out.status.success(), "{out:?}");
    stack.wait_state("stubborn", "stopped", Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "TERM is ignored, so it takes the grace period: {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || !process_exists(grandchild)),
        "grandchild outlived its service"
    );
    assert!(stack.unit("stubborn")["reason"]
        .as_str()
        .unwrap_or("")
        .contains("killed"));
}

#[test]
fn a_crashed_main_process_leaves_its_workers_the_grace_period_to_finish() {
    // A forking server in miniature: a master with one worker that finishes its work on TERM (as a
    // gunicorn worker finishes its request) and one that ignores TERM.
    let stack = Stack::start(
        r#"
[service.forking]
command = ["sh", "-c", '''
sh -c 'trap "sleep 0.4; touch {dir}/finished-$$; exit 0" TERM; echo $$ >> {dir}/polite; while :; do sleep 0.05; done' &
sh -c 'trap "" TERM; echo $$ >> {dir}/stubborn; exec sleep 100000' &
echo $$ >> {dir}/main
wait
''']
start_secs = "100ms"
stop_grace = "1500ms"
"#,
    );
    stack.wait_state("forking", "running", Duration::from_secs(5));
    let first = |file: &str| -> i32 {
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(stack.path(file)).is_ok_and(|s| s.ends_with('\n'))
        }));
        let text = std::fs::read_to_string(stack.path(file)).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    };
    let (main, polite, stubborn) = (first("main"), first("polite"), first("stubborn"));
    kill9(main);
    let t0 = Instant::now();
    // The polite worker is told to stop and given the time it needs: its work is not cut off.
    assert!(
        wait_until(Duration::from_secs(5), || stack
            .path(&format!("finished-{polite}"))
            .exists()),
        "the worker was killed before it could finish"
    );
    assert!(wait_until(Duration::from_secs(2), || !process_exists(
        polite
    )));
    // The service itself restarts at once; it does not wait for the old group.
    assert!(wait_until(Duration::from_secs(2), || stack
        .pid_of("forking")
        .is_some_and(|p| p != main)));
    // The stubborn one is SIGKILLed when the grace period ends, not before and not never.
    assert!(
        process_exists(stubborn) || t0.elapsed() >= Duration::from_millis(1400),
        "killed before its grace period"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !process_exists(stubborn)),
        "a worker that ignores TERM outlived the grace period"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "killed after {:?}, before its grace period",
        t0.elapsed()
    );
}

#[test]
fn orphans_of_services_are_reaped_when_not_pid_1() {
    let stack = Stack::start(
        r#"
[service.forker]
command = ["sh", "-c", "for i in $(seq 50); do (sleep 0.2 &) ; done; echo spawned > {dir}/spawned; exec sleep 100000"]
"#,
    );
    assert!(wait_until(Duration::from_secs(10), || stack
        .path("spawned")
        .exists()));
    let me = stack.pid();
    // The 50 sleeps are re-parented to stackinit (subreaper) and must not stay zombies once they exit.
    assert!(
        wait_until(Duration::from_secs(5), || children_of(me)
            .iter()
            .filter(|(_, s)| *s == 'Z')
            .count()
            == 0
            && children_of(me).len() <= 2),
        "zombies or orphans remain under stackinit: {:?}",
        children_of(me)
    );
}

#[test]
fn reload_applies_only_the_difference_and_a_bad_config_changes_nothing() {
    let mut stack = Stack::start(&format!(
        r#"
[service.keep]
{LONG}
start_secs = "0s"

[service.change]
{LONG}
start_secs = "0s"

[service.remove]
{LONG}
start_secs = "0s"
"#
    ));
    for n in ["keep", "change", "remove"] {
        stack.wait_state(n, "running", Duration::from_secs(5));
    }
    let keep = stack.pid_of("keep");
    let change = stack.pid_of("change");
    let remove = stack.pid_of("remove").unwrap();
    let original = std::fs::read_to_string(&stack.config).unwrap();

    // A broken config: error names file:line:col, nothing changes.
    std::fs::write(
        &stack.config,
        original.replace("[service.change]", "[service.change]\nbogus_key = 1"),
    )
    .unwrap();
    let out = stack.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stackinit.toml:") && err.contains("bogus_key"),
        "{err}"
    );
    assert_eq!(stack.pid_of("keep"), keep);
    assert_eq!(stack.pid_of("change"), change);
    assert_eq!(stack.pid_of("remove"), Some(remove));

    // A good one: keep stays, change restarts, remove goes, add appears.
    let next = original
        .replace(
            "[service.change]\ncommand = [\"sleep\", \"100000\"]",
            "[service.change]\ncommand = [\"sleep\", \"200000\"]",
        )
        .replace("[service.remove]", "[service.add]");
    std::fs::write(&stack.config, next).unwrap();
    let out = stack.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    stack.wait_state("add", "running", Duration::from_secs(5));
    stack.wait_state("change", "running", Duration::from_secs(5));
    assert_eq!(
        stack.pid_of("keep"),
        keep,
        "an unchanged service keeps its process"
    );
    assert_ne!(
        stack.pid_of("change"),
        change,
        "a changed service is restarted"
    );
    assert!(wait_until(Duration::from_secs(5), || !stack.status()
        ["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "remove")));
    assert!(
        wait_until(Duration::from_secs(5), || !process_exists(remove)),
        "removed service still running"
    );
    stack.stop();
}

#[test]
fn status_prints_a_table_and_the_contract_json() {
    let stack = Stack::start(&format!(
        r#"
[service.web]
{LONG}
replicas = 2
start_secs = "0s"

[service.idle]
{LONG}
autostart = false
"#
    ));
    stack.wait_state("web@0", "running", Duration::from_secs(5));
    stack.wait_state("web@1", "running", Duration::from_secs(5));
    let status = stack.status();
    let services = status["services"].as_array().expect("services array");
    assert_eq!(services.len(), 3);
    for s in services {
        for key in ["name", "state", "ready", "pid", "restarts"] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
    }
    let idle = stack.unit("idle");
    assert_eq!(idle["state"], "stopped");
    assert_eq!(idle["pid"], serde_json::Value::Null);

    let table = stack.cli(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().next().unwrap_or("").contains("NAME"), "{text}");
    assert!(
        text.contains("web@0") && text.contains("web@1") && text.contains("running"),
        "{text}"
    );

    // `status NAME` exits non-zero when it isn't running, like supervisorctl.
    assert!(stack.cli(&["status", "web"]).status.success());
    assert!(!stack.cli(&["status", "idle"]).status.success());
    let unknown = stack.cli(&["status", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"));
}

#[test]
fn sigterm_stops_services_in_reverse_dependency_order_and_exits_0() {
    let mut stack = Stack::start(
        r#"
[service.db]
command = ["sh", "-c", "trap 'echo db-stop >> {dir}/stops; exit 0' TERM; while :; do sleep 0.05; done"]
start_secs = "100ms"

[service.app]
command = ["sh", "-c", "trap 'sleep 0.3; echo app-stop >> {dir}/stops; exit 0' TERM; while :; do sleep 0.05; done"]
after = ["db"]
start_secs = "100ms"
"#,
    );
    stack.wait_state("app", "running", Duration::from_secs(10));
    let status = stack.stop().expect("exit status");
    assert!(status.success(), "{status:?}");
    let stops = std::fs::read_to_string(stack.path("stops")).unwrap_or_default();
    assert_eq!(
        stops, "app-stop\ndb-stop\n",
        "dependents stop before what they depend on"
    );
}

#[test]
fn no_log_line_is_lost_split_or_duplicated_across_rotations_and_restarts() {
    const TOTAL: usize = 200_000;
    let stack = Stack::start(&format!(
        r#"
[service.chatty]
command = ["python3", "-c", """
import os, sys
counter = '{{dir}}/counter'
n = int(open(counter).read()) if os.path.exists(counter) else 0
if n >= {TOTAL}:
    os.execvp('sleep', ['sleep', '100000'])
end = min(n + 23000, {TOTAL})
w = sys.stdout.write
for i in range(n, end):
    w('line %06d %s\\n' % (i, 'x' * (i % 61)))
sys.stdout.flush()
open(counter, 'w').write(str(end))
sys.exit(1)
"""]
start_secs = "0s"
start_limit = 1000
backoff_initial = "10ms"
backoff_max = "20ms"
log_max_bytes = "256KB"
log_backups = 500
"#
    ));
    let counter = stack.path("counter");
    assert!(
        wait_until(Duration::from_secs(60), || std::fs::read_to_string(
            &counter
        )
        .is_ok_and(|c| c.trim() == TOTAL.to_string())),
        "writer never finished: {}",
        stack.stderr()
    );
    stack.wait_state("chatty", "running", Duration::from_secs(10));
    assert!(
        stack.unit("chatty")["restarts"].as_u64().unwrap_or(0) >= 8,
        "{}",
        stack.unit("chatty")
    );
    // Gather the files oldest first: .N .. .1, then the current one.
    let logs = stack.path("logs");
    let base = logs.join("chatty.out.log");
    let mut numbered: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("chatty.out.log.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    assert!(
        numbered.len() >= 10,
        "expected many rotations, got {}",
        numbered.len()
    );
    numbered.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut files: Vec<std::path::PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    files.push(base);
    let mut expected = 0usize;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            file.display()
        );
        assert!(
            text.len() as u64 <= 256 * 1024,
            "{} is over the limit",
            file.display()
        );
        for line in text.lines() {
            let want = format!("line {expected:06} {}", "x".repeat(expected % 61));
            assert_eq!(line, want, "in {}", file.display());
            expected += 1;
        }
    }
    assert_eq!(expected, TOTAL, "lines missing at the end");
}

/// A minimal HTTP server on the LISTEN_FDS socket (fd 3), answering `STATUS` to everything.
fn fd3_server(status: u16) -> String {
    format!(
        r#"command = ["python3", "-c", """
import os, socket
assert os.environ['LISTEN_PID'] == str(os.getpid()) and os.environ['LISTEN_FDS'] == '1'
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    try:
        c.recv(4096)
        c.sendall(b'HTTP/1.0 {status} X\\r\\nContent-Length: 2\\r\\n\\r\\nok')
    except OSError:
        pass  # a probe that gave up (timeout) closed its end
    c.close()
"""]"#
    )
}

fn ready_pids(stack: &Stack, prefix: &str) -> Vec<(String, Option<i64>, bool)> {
    stack.status()["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap_or("").starts_with(prefix))
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["pid"].as_i64(),
                s["ready"] == true,
            )
        })
        .collect()
}

/// `[service.web]`: 3 replicas of `fd3_server(200)` on `web@N.sock`, readiness probed every 100 ms, plus
/// the `extra` keys.
fn web_replicas(extra: &str) -> Stack {
    Stack::start(&format!(
        r#"
[service.web]
{}
replicas = 3
listen = "unix:{{dir}}/web.sock"
start_secs = "0s"
readiness = {{ http = "/", expect = 200, period = "100ms" }}
{extra}
"#,
        fd3_server(200)
    ))
}

/// Within `timeout`: exactly `n` units `web@...` listed (successors included), all ready.
fn all_web_ready(stack: &Stack, n: usize, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let now = ready_pids(stack, "web@");
        now.len() == n && now.iter().all(|(_, _, ready)| *ready)
    })
}

#[test]
fn rolling_restart_starts_each_new_replica_before_stopping_the_old_one() {
    let stack = web_replicas("");
    for i in 0..3 {
        stack.wait_state(&format!("web@{i}"), "running", Duration::from_secs(10));
    }
    assert!(all_web_ready(&stack, 3, Duration::from_secs(10)));
    let before = ready_pids(&stack, "web@");
    let out = stack.cli(&["restart", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rolling"),
        "{out:?}"
    );
    // Watch the rollout: a successor `web@N.next` starts beside each replica, and at every moment at
    // least three processes are ready (capacity never drops).
    let mut fewest_ready = usize::MAX;
    let mut successors = std::collections::BTreeSet::new();
    let done = wait_until(Duration::from_secs(20), || {
        let now = ready_pids(&stack, "web@");
        fewest_ready = fewest_ready.min(now.iter().filter(|(_, _, ready)| *ready).count());
        successors.extend(
            now.iter()
                .filter(|(name, _, _)| name.ends_with(".next"))
                .map(|(name, _, _)| name.clone()),
        );
        now.len() == 3
            && now
                .iter()
                .zip(&before)
                .all(|(n, b)| n.0 == b.0 && n.2 && n.1 != b.1)
    });
    assert!(
        done,
        "not all replicas were replaced: {:?} -> {}\n{}",
        before,
        stack.status(),
        stack.stderr()
    );
    assert_eq!(
        fewest_ready, 3,
        "a replica was out of service during the rollout"
    );
    assert!(
        !successors.is_empty(),
        "no successor was ever seen beside its replica"
    );
    for (name, pid, _) in &before {
        let pid = pid.expect("pid") as i32;
        assert!(
            wait_until(Duration::from_secs(5), || !process_exists(pid)),
            "{name}'s old process {pid} is still running"
        );
    }
}

/// The socket inode a replica serves (its fd 3, from LISTEN_FDS).
fn socket_of(pid: i64) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

#[test]
fn after_rollouts_move_sockets_around_a_new_replica_still_gets_its_own() {
    let stack = web_replicas("");
    assert!(
        all_web_ready(&stack, 3, Duration::from_secs(20)),
        "{}",
        stack.status()
    );
    // Two rollouts: each successor takes the free socket, so the replicas no longer sit on web@N.sock.
    for _ in 0..2 {
        let before = ready_pids(&stack, "web@");
        assert!(stack.cli(&["restart", "web"]).status.success());
        assert!(wait_until(Duration::from_secs(20), || {
            let now = ready_pids(&stack, "web@");
            now.len() == 3 && now.iter().zip(&before).all(|(n, b)| n.2 && n.1 != b.1)
        }));
    }
    // One replica more, and a release that never gets ready: the rollout halts at once, so the three old
    // processes stay on the sockets the rollouts left them, beside the new fourth replica.
    let four = std::fs::read_to_string(&stack.config)
        .unwrap()
        .replace("replicas = 3", "replicas = 4")
        .replace("HTTP/1.0 200", "HTTP/1.0 500");
    std::fs::write(&stack.config, four).unwrap();
    let out = stack.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let replicas = || -> Vec<i64> {
        ready_pids(&stack, "web@")
            .into_iter()
            .filter(|(name, _, _)| !name.ends_with(".next"))
            .filter_map(|(_, pid, _)| pid)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || replicas().len() == 4),
        "{}",
        stack.status()
    );
    let sockets: std::collections::BTreeSet<String> =
        replicas().into_iter().map(socket_of).collect();
    assert_eq!(sockets.len(), 4, "two replicas share a socket: {sockets:?}");
    assert!(
        sockets.iter().all(|s| s.starts_with("socket:")),
        "{sockets:?}"
    );
}

#[test]
fn stopping_a_service_mid_rollout_stops_its_successor_too() {
    let stack = web_replicas("");
    assert!(all_web_ready(&stack, 3, Duration::from_secs(10)));
    // The new release takes 3 s to become ready, so its first successor is caught mid-rollout.
    let slow = std::fs::read_to_string(&stack.config).unwrap().replace(
        "period = \"100ms\" }",
        "period = \"100ms\", initial_delay = \"3s\" }",
    );
    std::fs::write(&stack.config, slow).unwrap();
    assert!(stack.cli(&["reload"]).status.success());
    let successor = || {
        ready_pids(&stack, "web@")
            .into_iter()
            .find(|(name, _, _)| name.ends_with(".next"))
            .and_then(|(_, pid, _)| pid)
    };
    assert!(
        wait_until(Duration::from_secs(5), || successor().is_some()),
        "{}",
        stack.status()
    );
    let successor_pid = successor().unwrap() as i32;
    let out = stack.cli(&["stop", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = ready_pids(&stack, "web@");
            now.len() == 3 && now.iter().all(|(_, pid, _)| pid.is_none())
        }),
        "{}",
        stack.status()
    );
    assert!(
        !process_exists(successor_pid),
        "the successor outlived the stop"
    );
    // And it comes back as three replicas, with no rollout left over.
    assert!(stack.cli(&["start", "web"]).status.success());
    assert!(
        all_web_ready(&stack, 3, Duration::from_secs(15)),
        "{}",
        stack.status()
    );
}

#[test]
fn a_release_that_never_becomes_ready_halts_the_rollout() {
    let mut stack = web_replicas("ready_timeout = \"2s\"");
    for i in 0..3 {
        stack.wait_state(&format!("web@{i}"), "running", Duration::from_secs(10));
    }
    let before = ready_pids(&stack, "web@");
    // The new release answers 500: its readiness probe never passes.
    let broken = std::fs::read_to_string(&stack.config)
        .unwrap()
        .replace("HTTP/1.0 200", "HTTP/1.0 500");
    std::fs::write(&stack.config, broken).unwrap();
    let out = stack.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || stack.unit("web@0")["reason"]
            .as_str()
            .unwrap_or("")
            .contains("rollout halted")),
        "{}",
        stack.unit("web@0")
    );
    // The new process never took a replica's place: all three old ones still run and serve, and the
    // failed successor is stopped and gone from the table.
    assert!(
        wait_until(Duration::from_secs(10), || ready_pids(&stack, "web@")
            == before),
        "{} (before: {before:?})",
        stack.status()
    );
    let reason = stack.unit("web@0")["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        reason.contains("500"),
        "the reason names the failure: {reason}"
    );
    stack.stop();
}

#[test]
fn a_service_runs_with_the_user_groups_limits_and_capabilities_it_asks_for() {
    let stack = Stack::start(
        r#"
[service.locked]
command = ["sh", "-c", "until [ -w {dir}/out ]; do sleep 0.05; done; grep -E '^(Uid|Gid|Groups|CapBnd|CapEff|NoNewPrivs):' /proc/self/status > {dir}/out/locked.status; umask > {dir}/out/locked.umask; ulimit -n > {dir}/out/locked.nofile; pwd > {dir}/out/locked.pwd; echo $HOME $USER $STACKINIT_SERVICE $GREETING > {dir}/out/locked.env; exec sleep 100000"]
user = "nobody"
group = "nogroup"
umask = "0027"
nofile = 512
nice = -3
directory = "/tmp"
environment = { GREETING = "hi" }
start_secs = "100ms"

[service.netadmin]
command = ["sh", "-c", "until [ -w {dir}/out ]; do sleep 0.05; done; grep -E '^CapBnd:' /proc/self/status > {dir}/out/netadmin.status; exec sleep 100000"]
capabilities = ["CAP_NET_ADMIN", "net_raw"]
start_secs = "100ms"
"#,
    );
    // The service runs as nobody: open a world-writable output dir in the (0700) test dir for it.
    use std::os::unix::fs::PermissionsExt;
    let dir = stack.dir.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(stack.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    stack.wait_state("locked", "running", Duration::from_secs(5));
    stack.wait_state("netadmin", "running", Duration::from_secs(5));
    let nice = |name: &str| nice_of(stack.pid_of(name).expect("pid"));
    assert_eq!(nice("locked"), -3, "nice = -3 (set before dropping root)");
    assert_eq!(nice("netadmin"), 0);
    let written = |f: &str| std::fs::read_to_string(dir.join(f)).is_ok_and(|t| t.ends_with('\n'));
    assert!(wait_until(Duration::from_secs(5), || written("locked.env")
        && written("netadmin.status")));
    let status = std::fs::read_to_string(dir.join("locked.status")).expect("locked.status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        field("Uid:").as_deref(),
        Some("65534 65534 65534 65534"),
        "{status}"
    );
    assert_eq!(
        field("Gid:").as_deref(),
        Some("65534 65534 65534 65534"),
        "{status}"
    );
    assert_eq!(
        field("Groups:").as_deref(),
        Some("65534"),
        "supplementary groups come from the user: {status}"
    );
    assert_eq!(
        field("CapBnd:").as_deref(),
        Some("0000000000000000"),
        "{status}"
    );
    assert_eq!(
        field("CapEff:").as_deref(),
        Some("0000000000000000"),
        "{status}"
    );
    assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{status}");
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    assert_eq!(read("locked.umask"), "0027");
    assert_eq!(read("locked.nofile"), "512");
    assert_eq!(read("locked.pwd"), "/tmp");
    assert_eq!(read("locked.env"), "/nonexistent nobody locked hi");
    // Kept capabilities stay in the bounding set: NET_ADMIN is bit 12, NET_RAW bit 13.
    let bnd = read("netadmin.status");
    assert_eq!(
        bnd.split_whitespace().nth(1),
        Some("0000000000003000"),
        "{bnd}"
    );
}

/// The nice of a process's autogroup (`/proc/PID/autogroup`: `/autogroup-123 nice -5`).
fn autogroup_nice(pid: i32) -> i32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
        .expect("/proc/PID/autogroup: this test needs a kernel with CONFIG_SCHED_AUTOGROUP (Debian's, Ubuntu's, EC2's)");
    text.split_once(" nice ")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("autogroup line {text:?}"))
}

#[test]
fn a_services_nice_is_its_autogroups_nice_too() {
    // Each service is its own session, so with kernel.sched_autogroup_enabled = 1 the scheduler weighs it
    // against the others at its autogroup's nice: a nice only on the process would do nothing between services.
    let stack = Stack::start(&format!(
        "[service.urgent]\n{LONG}\nnice = -5\n[service.relaxed]\n{LONG}\nnice = 3\n[service.plain]\n{LONG}\n"
    ));
    for unit in ["urgent", "relaxed", "plain"] {
        stack.wait_state(unit, "running", Duration::from_secs(5));
    }
    let pid = |unit: &str| stack.pid_of(unit).expect("pid");
    assert_eq!(nice_of(pid("urgent")), -5);
    assert_eq!(autogroup_nice(pid("urgent")), -5);
    assert_eq!(autogroup_nice(pid("relaxed")), 3);
    assert_eq!(
        autogroup_nice(pid("plain")),
        0,
        "no nice: the autogroup is left alone"
    );
    assert!(
        !stack.stderr().contains("autogroup stayed"),
        "{}",
        stack.stderr()
    );
}
