//! Per-launch configuration from EC2 user data: `stackinit check --user-data FILE` before a launch, and at
//! boot the `stackinit user-data` job fetching the overlay from a fake IMDS, the stack reloading with it,
//! and a bad overlay reported (status, dashboard, the job's log) with the baked config left running whole.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::e2e::FakeImds;
use support::http::get;
use support::{free_port, temp_dir, wait_until, Stack, BIN};

const BAKED: &str = r#"[init]
logs_dir = "/tmp/stackinit-user-data-check-logs"

[service.app]
command = ["stackinit", "demo-worker"]
listen = "unix:/run/stackinit-test/app.sock"
replicas = 1
environment = { GREETING = "hello" }

[proxy]
listen = ["127.0.0.1:8080"]

[[proxy.server]]
server_name = ["baked.example"]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
"#;

fn check(config: &Path, user_data: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .arg("--user-data")
        .arg(user_data)
        .output()
        .expect("run stackinit check")
}

#[test]
fn check_user_data_validates_an_overlay_against_the_baked_config() {
    let dir = temp_dir("stackinit-user-data");
    let config = dir.path().join("stackinit.toml");
    std::fs::write(&config, BAKED).unwrap();
    let overlay = dir.path().join("user-data.toml");

    std::fs::write(
        &overlay,
        "[service.app]\nreplicas = 3\nenvironment = { STAGE = \"prod\" }\n\
         [service.worker]\ncommand = [\"stackinit\", \"demo-worker\"]\n\
         [proxy]\nextra_server_names = [\"my-alb-1.eu-west-1.elb.amazonaws.com\"]\n",
    )
    .unwrap();
    let ok = check(&config, &overlay);
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        said.contains(&format!(
            "with {}: ok (2 services, 4 processes, proxy)",
            overlay.display()
        )),
        "{said}"
    );

    // Every error, located in the overlay where it set the value; the baked file is fine.
    std::fs::write(
        &overlay,
        "# per launch\n[service.app]\nreplicas = \"three\"\nafter = [\"nothing\"]\n\
         [init]\ncontrol_socket = \"/tmp/x.sock\"\n",
    )
    .unwrap();
    let bad = check(&config, &overlay);
    assert!(!bad.status.success());
    let errors = String::from_utf8_lossy(&bad.stderr);
    let at = |prefix: &str| errors.lines().any(|l| l.starts_with(prefix));
    let o = overlay.display();
    assert!(at(&format!("{o}:3:12: service.app.replicas:")), "{errors}");
    assert!(
        at(&format!(
            "{o}:6:1: init.control_socket: [init] control_socket cannot be set per launch"
        )),
        "{errors}"
    );
    assert!(!errors.contains(&config.display().to_string()), "{errors}");

    std::fs::write(&overlay, "[service.app\nreplicas = 2\n").unwrap();
    let syntax = check(&config, &overlay);
    assert!(!syntax.status.success());
    assert!(
        String::from_utf8_lossy(&syntax.stderr).starts_with(&format!("{o}:1:")),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let missing = check(&config, &dir.path().join("nope.toml"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml:1:1: no such file"));

    // Plain `check` of a config whose `[init] user_data` holds an overlay that would be refused fails too.
    let with_path = dir.path().join("with-user-data.toml");
    std::fs::write(
        &with_path,
        BAKED.replacen("[init]\n", &format!("[init]\nuser_data = \"{o}\"\n"), 1),
    )
    .unwrap();
    let plain = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&with_path)
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success(), "{said}");
    assert!(
        said.contains("would be refused: the baked config would run without it"),
        "{said}"
    );
    assert!(said.starts_with(&format!("{o}:1:")), "{said}");
}

/// A stack whose `user-data` job fetches its overlay from a fake IMDS serving `user_data`; the app waits
/// for the job. Baked: one replica; a server for `*.ec2.internal` (where extra names go) and a default
/// server that answers 404.
struct Launch {
    stack: Stack,
    _imds: FakeImds,
    port: u16,
}

fn launch(user_data: &str) -> Launch {
    let files = temp_dir("stackinit-user-data-src");
    let source = files.path().join("user-data");
    std::fs::write(&source, user_data).unwrap();
    let imds = FakeImds::start_with_user_data(&[], Some(&source));
    let port = free_port();
    let stack = Stack::start(&format!(
        r#"user_data = "{{dir}}/user-data.toml"
[init.imds]
enabled = true
endpoint = "http://127.0.0.1:{imds}"
timeout = "5s"

[service.user-data]
command = ["stackinit", "user-data", "--config", "{{dir}}/stackinit.toml"]
oneshot = true
critical = false

[service.app]
command = ["stackinit", "demo-worker"]
listen = "unix:{{dir}}/app.sock"
after = ["user-data"]
start_secs = "100ms"

[proxy]
listen = ["127.0.0.1:{port}"]

[[proxy.server]]
server_name = ["*.ec2.internal"]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"

[[proxy.server]]
default = true
  [[proxy.server.location]]
  path = "/"
  return = 404
"#,
        imds = imds.port,
    ));
    let launched = Launch {
        stack,
        _imds: imds,
        port,
    };
    let settled = wait_until(Duration::from_secs(30), || {
        launched.stack.unit("user-data")["state"] == "exited" && app_ready(&launched.stack)
    });
    assert!(
        settled,
        "the job and the app never settled: {}\n{}",
        launched.stack.status(),
        launched.stack.stderr()
    );
    launched
}

/// Every unit of the app is ready.
fn app_ready(stack: &Stack) -> bool {
    let status = stack.status();
    let app: Vec<&serde_json::Value> = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter(|s| s["service"] == "app")
        .collect();
    !app.is_empty() && app.iter().all(|s| s["ready"] == true)
}

fn replicas(stack: &Stack) -> Vec<String> {
    stack.status()["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter(|s| s["service"] == "app")
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn job_log(stack: &Stack) -> String {
    let path = stack.unit("user-data")["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn an_overlay_from_imds_changes_replicas_and_a_server_name_and_another_launch_keeps_the_baked_config(
) {
    let with = launch(
        "# stackinit overlay\n[service.app]\nreplicas = 2\n\
         [proxy]\nextra_server_names = [\"launch.example\"]\n",
    );
    assert_eq!(replicas(&with.stack), ["app@0", "app@1"]);
    let status = with.stack.status();
    assert_eq!(status["user_data"]["applied"], true, "{status}");
    assert_eq!(
        get(with.port, "launch.example", "/").expect("GET").status,
        200,
        "the overlay's name reaches the app"
    );
    assert!(
        job_log(&with.stack).contains("applies"),
        "{}",
        job_log(&with.stack)
    );

    // A clone launched without user data: the baked config.
    let without = launch("");
    let without_empty = std::fs::read_to_string(without.stack.path("user-data.toml")).ok();
    assert_eq!(
        without_empty.as_deref(),
        Some(""),
        "empty user data is an empty overlay"
    );
    assert_eq!(replicas(&without.stack), ["app"]);
    assert_eq!(
        get(without.port, "launch.example", "/")
            .expect("GET")
            .status,
        404
    );
}

#[test]
fn a_bad_overlay_is_reported_and_the_baked_config_runs_with_none_of_it() {
    // One good change (replicas, a name) and one bad value: nothing of it may apply.
    let launched = launch(
        "[service.app]\nreplicas = 2\n\
         [proxy]\nextra_server_names = [\"launch.example\", \"*.wild\"]\n",
    );
    let overlay = launched.stack.path("user-data.toml");
    let expected = format!("{}:4:41: proxy.extra_server_names:", overlay.display());
    let status = launched.stack.status();
    let user_data = &status["user_data"];
    assert_eq!(user_data["applied"], false, "{status}");
    let errors: Vec<&str> = user_data["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        errors.len() == 1 && errors[0].starts_with(&expected),
        "{errors:?}"
    );
    // Give a half-applied overlay time to show itself.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(replicas(&launched.stack), ["app"]);
    assert_eq!(
        get(launched.port, "launch.example", "/")
            .expect("GET")
            .status,
        404
    );

    let table = launched.stack.cli(&["status"]);
    let said = String::from_utf8_lossy(&table.stdout);
    assert!(
        said.contains("refused; the baked config runs without it"),
        "{said}"
    );
    assert!(said.contains(&expected), "{said}");
    let log = job_log(&launched.stack);
    assert!(
        log.contains(&format!("user data error: {expected}")),
        "{log}"
    );
    assert!(log.contains("user data refused (1 error)"), "{log}");
    let facts = get(&launched.stack.socket, "localhost", "/v1/facts").expect("GET /v1/facts");
    assert_eq!(
        facts.json()["user_data"]["applied"],
        false,
        "{}",
        facts.text()
    );
    assert!(
        facts.text().contains("extra_server_names"),
        "{}",
        facts.text()
    );
}

/// systemd's EnvironmentFile=: read at each start, over `environment`, with comments and quotes; a `-` file
/// may be missing; a bad line stops the start and says FILE:LINE.
#[test]
fn environment_file_is_read_at_start_as_systemd_reads_it() {
    let stack = Stack::start(
        r#"
[service.show]
command = ["sh", "-c", "echo \"$A|$B|$C|$STACKINIT_SERVICE\""]
environment = { A = "from-config", B = "kept" }
environment_file = ["{dir}/app.env", "-{dir}/missing.env"]
oneshot = true
critical = false

[service.broken]
command = ["true"]
environment_file = "{dir}/bad.env"
oneshot = true
critical = false
autostart = false
"#,
    );
    // Written after the stack started: read at the start, not when the config was loaded.
    std::fs::write(
        stack.path("app.env"),
        "# per launch\nA=from-file\n; another comment\nC=\"two  words\"\n",
    )
    .unwrap();
    std::fs::write(stack.path("bad.env"), "OK=1\nthis is not an assignment\n").unwrap();
    let out = stack.cli(&["restart", "show"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = stack.path("logs/show.out.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("from-file|kept|two  words|show")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let _ = stack.cli(&["start", "broken"]);
    let expected = format!("{}:2: expected KEY=VALUE", stack.path("bad.env").display());
    assert!(
        wait_until(Duration::from_secs(10), || stack.unit("broken")["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&expected))),
        "{}",
        stack.unit("broken")
    );
}
