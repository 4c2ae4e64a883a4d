//! A cgroup v2 per process: what a stop kills, what status reports, and a limit asked for where its
//! controller is missing. (This host's cgroup2 mount has no controllers: the limits themselves are
//! tested where a full hierarchy exists.)

mod support;

use std::time::Duration;

use support::*;

/// Where cgroup2 is mounted on this machine.
fn cgroup2_mount() -> String {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4).map(String::from))
        .expect("a cgroup2 mount")
}

/// Whether this machine's cgroup2 hierarchy offers `controller` to stackinit's services.
fn controller_available(controller: &str) -> bool {
    std::fs::read_to_string(format!("{}/cgroup.controllers", cgroup2_mount()))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == controller))
}

#[test]
fn a_daemonised_child_does_not_escape_a_stop() {
    // The child leaves the service's process group and session (setsid), as a daemon does.
    let stack = Stack::start(
        r#"
[service.forker]
command = ["sh", "-c", "setsid sh -c 'echo $$ > {dir}/daemon.pid; exec sleep 100000' & exec sleep 100000"]
start_secs = "0s"
"#,
    );
    stack.wait_state("forker", "running", Duration::from_secs(10));
    let daemon: i32 = wait_for("the daemon's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(stack.path("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    assert!(process_exists(daemon));
    let out = stack.cli(&["stop", "forker"]);
    assert!(out.status.success(), "{out:?}");
    stack.wait_state("forker", "stopped", Duration::from_secs(15));
    assert!(
        wait_until(Duration::from_secs(5), || !process_exists(daemon)),
        "the daemonised child {daemon} survived the stop"
    );
    // A clean exit leaves no cgroup of stackinit's behind.
    let subtree = stackinit_subtree(stack.pid());
    assert!(subtree.exists(), "{} was never made", subtree.display());
    let mut stack = stack;
    stack.stop();
    assert!(!subtree.exists(), "{} left behind", subtree.display());
}

/// Where `stackinit run` (pid `pid`) keeps its services' cgroups: beside this process's own.
fn stackinit_subtree(pid: u32) -> std::path::PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a unified cgroup");
    std::path::Path::new(&cgroup2_mount())
        .join(own.trim_start_matches('/'))
        .join(format!("stackinit-{pid}"))
}

#[test]
fn status_reports_the_cpu_time_of_each_process_tree() {
    let stack = Stack::start(
        r#"
[service.busy]
command = ["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 100000"]
"#,
    );
    let used = poll(Duration::from_secs(20), || {
        let status = stack.unit("busy");
        let cpu = status["usage"]["cpu_seconds"].as_f64()?;
        (cpu > 0.05).then_some(cpu)
    });
    assert!(
        used.is_some(),
        "no CPU time reported: {}",
        stack.unit("busy")
    );
}

#[test]
fn a_limit_without_its_controller_fails_that_service_only_and_says_why() {
    let stack = Stack::start(
        r#"
[service.limited]
command = ["sleep", "100000"]
memory_max = "64MB"

[service.plain]
command = ["sleep", "100000"]
"#,
    );
    stack.wait_state("plain", "running", Duration::from_secs(10));
    if controller_available("memory") {
        // A full cgroup v2 hierarchy: the limit is applied and the service runs.
        stack.wait_state("limited", "running", Duration::from_secs(10));
        return;
    }
    let reason = poll(Duration::from_secs(10), || {
        stack.unit("limited")["reason"].as_str().map(String::from)
    });
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("memory_max: the memory controller is not available"),
        "{}",
        stack.unit("limited")
    );
    assert_eq!(stack.unit("limited")["pid"], serde_json::Value::Null);
}
