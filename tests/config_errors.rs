//! `stackinit check --config FILE` on broken configs: every error must name FILE:LINE:COL, the key, and say
//! what is wrong. Each case is broken in exactly one way, so each must print exactly one error.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{temp_dir, BIN};

struct Case {
    name: &'static str,
    toml: &'static str,
    line: usize,
    col: usize,
    /// Dotted key path; empty for syntax errors, which print no key.
    key: &'static str,
    fragment: &'static str,
}

const fn case(
    name: &'static str,
    line: usize,
    col: usize,
    key: &'static str,
    fragment: &'static str,
    toml: &'static str,
) -> Case {
    Case {
        name,
        toml,
        line,
        col,
        key,
        fragment,
    }
}

const CASES: &[Case] = &[
    case(
        "syntax_unclosed_string",
        2,
        18,
        "",
        "invalid basic string, expected `\"`",
        r#"[init]
logs_dir = "/logs
"#,
    ),
    case(
        "syntax_duplicate_key",
        3,
        1,
        "",
        "duplicate key \"command\"",
        r#"[service.app]
command = ["a"]
command = ["b"]
"#,
    ),
    case(
        "unknown_section",
        1,
        2,
        "servce",
        "unknown section \"servce\" (did you mean \"service\"?)",
        r#"[servce.app]
command = ["a"]
"#,
    ),
    case(
        "unknown_service_key",
        3,
        3,
        "service.app.comand",
        "unknown key \"comand\" (did you mean \"command\"?)",
        r#"[service.app]
command = ["a"]
  comand = ["b"]
"#,
    ),
    case(
        "unknown_init_key",
        2,
        1,
        "init.log_dir",
        "unknown key \"log_dir\" (did you mean \"logs_dir\"?)",
        r#"[init]
log_dir = "/logs"
"#,
    ),
    case(
        "unknown_location_key",
        7,
        3,
        "proxy.server[0].location[0].paht",
        "unknown key \"paht\"",
        r#"[service.app]
command = ["a"]
listen = "127.0.0.1:18000"
[proxy]
[[proxy.server]]
  [[proxy.server.location]]
  paht = "/"
  upstream = "app"
"#,
    ),
    case(
        "bad_duration",
        3,
        14,
        "service.app.stop_grace",
        "invalid duration \"5 parsecs\"",
        r#"[service.app]
command = ["a"]
stop_grace = "5 parsecs"
"#,
    ),
    case(
        "bad_size",
        3,
        17,
        "service.app.log_max_bytes",
        "invalid size \"12XB\"",
        r#"[service.app]
command = ["a"]
log_max_bytes = "12XB"
"#,
    ),
    case(
        "command_not_array",
        2,
        11,
        "service.app.command",
        "expected an array, found string",
        r#"[service.app]
command = "gunicorn app:wsgi"
"#,
    ),
    case(
        "bad_restart_value",
        3,
        11,
        "service.app.restart",
        "unknown value \"sometimes\" (expected one of: always, on-failure, never)",
        r#"[service.app]
command = ["a"]
restart = "sometimes"
"#,
    ),
    case(
        "unknown_after",
        7,
        21,
        "service.web.after",
        "unknown service \"db\" (known: app, migrate, web)",
        r#"[service.app]
command = ["a"]
[service.migrate]
command = ["m"]
[service.web]
command = ["w"]
after = ["migrate", "db"]
"#,
    ),
    case(
        "dependency_cycle",
        9,
        10,
        "service.c.after",
        "dependency cycle: a -> b -> c -> a",
        r#"[service.a]
command = ["a"]
after = ["b"]
[service.b]
command = ["b"]
after = ["c"]
[service.c]
command = ["c"]
after = ["a"]
"#,
    ),
    case(
        "duplicate_tcp_listen_across_replicas",
        7,
        10,
        "service.web.listen",
        "127.0.0.1:8002 is already bound by service.app.listen (replica app@2)",
        r#"[service.app]
command = ["a"]
replicas = 3
listen = "127.0.0.1:8000"
[service.web]
command = ["w"]
listen = "127.0.0.1:8002"
"#,
    ),
    case(
        "duplicate_unix_listen_of_replica",
        7,
        10,
        "service.web.listen",
        "unix:/run/x/app@1.sock is already bound by service.app.listen (replica app@1)",
        r#"[service.app]
command = ["a"]
replicas = 2
listen = "unix:/run/x/app.sock"
[service.web]
command = ["w"]
listen = "unix:/run/x/app@1.sock"
"#,
    ),
    case(
        "proxy_listen_overlaps_service",
        5,
        11,
        "proxy.listen",
        "0.0.0.0:18080 overlaps 127.0.0.1:18080 of service.app.listen",
        r#"[service.app]
command = ["a"]
listen = "127.0.0.1:18080"
[proxy]
listen = ["0.0.0.0:18080"]
"#,
    ),
    case(
        "listen_hostname",
        3,
        11,
        "service.app.listen",
        "invalid address \"localhost:8000\"",
        r#"[service.app]
command = ["a"]
listen = ["localhost:8000"]
"#,
    ),
    case(
        "listen_relative_unix",
        3,
        10,
        "service.app.listen",
        "the unix socket path must be absolute",
        r#"[service.app]
command = ["a"]
listen = "unix:run/app.sock"
"#,
    ),
    case(
        "condition_relative_path",
        4,
        34,
        "service.job.condition_path_exists",
        "\"!done.stamp\" is not an absolute path",
        r#"[service.job]
command = ["a"]
oneshot = true
condition_path_exists = ["/etc", "!done.stamp"]
"#,
    ),
    case(
        "nice_out_of_range",
        3,
        8,
        "service.app.nice",
        "nice 25 is out of range: -20 (first) to 19 (last)",
        r#"[service.app]
command = ["a"]
nice = 25
"#,
    ),
    case(
        "unknown_user",
        3,
        8,
        "service.app.user",
        "unknown user \"no-such-user-x\"",
        r#"[service.app]
command = ["a"]
user = "no-such-user-x"
"#,
    ),
    case(
        "unknown_control_group",
        2,
        17,
        "init.control_group",
        "unknown group \"no-such-group-x\"",
        r#"[init]
control_group = "no-such-group-x"
"#,
    ),
    case(
        "unknown_proxy_user",
        2,
        8,
        "proxy.user",
        "unknown user \"no-such-user-x\"",
        r#"[proxy]
user = "no-such-user-x"
listen = ["127.0.0.1:18081"]
"#,
    ),
    case(
        "empty_command",
        2,
        11,
        "service.app.command",
        "command is empty",
        r#"[service.app]
command = []
"#,
    ),
    case(
        "missing_command",
        1,
        1,
        "service.app.command",
        "missing command",
        r#"[service.app]
replicas = 2
"#,
    ),
    case(
        "bad_stop_signal",
        3,
        15,
        "service.app.stop_signal",
        "unknown signal \"TERMINATE\"",
        r#"[service.app]
command = ["a"]
stop_signal = "TERMINATE"
"#,
    ),
    case(
        "bad_umask",
        3,
        9,
        "service.app.umask",
        "invalid octal mode \"0989\"",
        r#"[service.app]
command = ["a"]
umask = "0989"
"#,
    ),
    case(
        "bad_logs_mode",
        2,
        13,
        "init.logs_mode",
        "invalid octal mode \"rwxr-xr-x\"",
        r#"[init]
logs_mode = "rwxr-xr-x"
"#,
    ),
    case(
        "zero_replicas",
        3,
        12,
        "service.app.replicas",
        "replicas must be at least 1",
        r#"[service.app]
command = ["a"]
replicas = 0
"#,
    ),
    case(
        "oneshot_with_replicas",
        4,
        12,
        "service.job.replicas",
        "replicas must be 1 when oneshot = true",
        r#"[service.job]
command = ["a"]
oneshot = true
replicas = 2
"#,
    ),
    case(
        "probe_two_kinds",
        4,
        13,
        "service.app.readiness",
        "exactly one of http, tcp or exec, not http and exec",
        r#"[service.app]
command = ["a"]
listen = "127.0.0.1:18000"
readiness = { http = "/", exec = ["true"] }
"#,
    ),
    case(
        "http_probe_without_listen",
        3,
        22,
        "service.app.readiness.http",
        "the service has no listen",
        r#"[service.app]
command = ["a"]
readiness = { http = "/health" }
"#,
    ),
    case(
        "service_name_with_at",
        1,
        10,
        "service.\"app@1\"",
        "'@' is not allowed",
        r#"[service."app@1"]
command = ["a"]
"#,
    ),
    case(
        "service_named_proxy",
        1,
        10,
        "service.proxy",
        "reserved for the built-in proxy",
        r#"[service.proxy]
command = ["a"]
[proxy]
listen = ["127.0.0.1:18082"]
"#,
    ),
    case(
        "location_two_actions",
        5,
        3,
        "proxy.server[0].location[0]",
        "exactly one of upstream, root, alias or return, not root and return",
        r#"[proxy]
listen = ["127.0.0.1:18083"]
[[proxy.server]]
default = true
  [[proxy.server.location]]
  path = "/"
  root = "/srv"
  return = 404
"#,
    ),
    case(
        "location_path_without_slash",
        6,
        10,
        "proxy.server[0].location[0].path",
        "must start with '/'",
        r#"[proxy]
listen = ["127.0.0.1:18084"]
[[proxy.server]]
default = true
  [[proxy.server.location]]
  path = "static/"
  root = "/srv/static"
"#,
    ),
    case(
        "upstream_service_without_listen",
        8,
        14,
        "proxy.server[0].location[0].upstream",
        "service \"app\" has no listen address",
        r#"[service.app]
command = ["a"]
[proxy]
listen = ["127.0.0.1:18085"]
[[proxy.server]]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
"#,
    ),
    case(
        "two_default_servers",
        7,
        11,
        "proxy.server[1].default",
        "proxy.server[0] is already the default server",
        r#"[proxy]
listen = ["127.0.0.1:18086"]
[[proxy.server]]
server_name = ["a.example"]
default = true
[[proxy.server]]
default = true
server_name = ["b.example"]
"#,
    ),
    case(
        "server_name_wildcard_in_the_middle",
        4,
        35,
        "proxy.server[0].server_name",
        "a wildcard may only be `*.` at the start or `.*` at the end",
        r#"[proxy]
listen = ["127.0.0.1:18091"]
[[proxy.server]]
server_name = ["www.example.org", "www.*.org"]
  [[proxy.server.location]]
  path = "/"
  return = 204
"#,
    ),
    case(
        "redirect_without_3xx",
        7,
        14,
        "proxy.server[0].location[0].redirect",
        "redirect needs a 3xx return status",
        r#"[proxy]
listen = ["127.0.0.1:18087"]
[[proxy.server]]
  [[proxy.server.location]]
  path = "/old"
  return = 200
  redirect = "https://example.org/new"
"#,
    ),
    case(
        "exit_code_out_of_range",
        3,
        26,
        "service.app.success_exit_codes",
        "exit code 256 is out of range",
        r#"[service.app]
command = ["a"]
success_exit_codes = [0, 256]
"#,
    ),
    case(
        "log_max_bytes_too_small",
        3,
        17,
        "service.app.log_max_bytes",
        "too small: log files rotate at 1KB or more",
        r#"[service.app]
command = ["a"]
log_max_bytes = "512B"
"#,
    ),
    case(
        "shutdown_drain_too_long",
        2,
        18,
        "init.shutdown_drain",
        "too long: at most 1 hour",
        r#"[init]
shutdown_drain = "2h"
"#,
    ),
    case(
        "shutdown_timeout_zero",
        2,
        20,
        "init.shutdown_timeout",
        "shutdown_timeout must be more than 0",
        r#"[init]
shutdown_timeout = "0s"
"#,
    ),
    case(
        "proxy_nofile_too_few",
        3,
        10,
        "proxy.nofile",
        "nofile = 10 is too few for the proxy: at least 128",
        r#"[proxy]
listen = ["127.0.0.1:18090"]
nofile = 10
"#,
    ),
    case(
        "proxy_max_connections_over_nofile",
        4,
        19,
        "proxy.max_connections",
        "max_connections = 1000 needs 2096 open files in the proxy",
        r#"[proxy]
listen = ["127.0.0.1:18091"]
nofile = 1024
max_connections = 1000
"#,
    ),
    case(
        "proxy_workers_zero",
        3,
        11,
        "proxy.workers",
        "workers must be at least 1 (leave it out for one per core)",
        r#"[proxy]
listen = ["127.0.0.1:18092"]
workers = 0
"#,
    ),
    case(
        "proxy_workers_too_many",
        3,
        11,
        "proxy.workers",
        "workers = 1000 is too many: at most 256",
        r#"[proxy]
listen = ["127.0.0.1:18093"]
workers = 1000
"#,
    ),
    case(
        "bad_log_level",
        2,
        13,
        "init.log_level",
        "invalid log level \"verbose\"",
        r#"[init]
log_level = "verbose"
"#,
    ),
    case(
        "tls_missing_key",
        3,
        1,
        "proxy.tls",
        "missing required key \"key\"",
        r#"[proxy]
listen = ["127.0.0.1:18088"]
[proxy.tls]
listen = ["127.0.0.1:18443"]
cert = "/etc/ssl/stackinit.pem"
"#,
    ),
    case(
        "proxy_after_unknown",
        5,
        10,
        "proxy.after",
        "unknown service \"dhcp\" (known: app, proxy)",
        r#"[service.app]
command = ["a"]
[proxy]
listen = ["127.0.0.1:18089"]
after = ["dhcp"]
"#,
    ),
    case(
        "dashboard_short_token_off_loopback",
        3,
        19,
        "init.dashboard_token",
        "dashboard_token is 1 characters; a dashboard on 0.0.0.0:9001 can be reached from the network, so it needs at least 16",
        r#"[init]
dashboard = "0.0.0.0:9001"
dashboard_token = "x"
"#,
    ),
    case(
        "upgrade_bad_protocol",
        7,
        27,
        "proxy.server[0].location[0].upgrade",
        "\"web socket\" is not a protocol name",
        r#"[proxy]
listen = ["127.0.0.1:18089"]
[[proxy.server]]
  [[proxy.server.location]]
  path = "/"
  upstream = "127.0.0.1:9"
  upgrade = ["websocket", "web socket"]
"#,
    ),
    case(
        "upgrade_without_upstream",
        6,
        13,
        "proxy.server[0].location[0].upgrade",
        "upgrade only applies to a location with upstream",
        r#"[proxy]
listen = ["127.0.0.1:18089"]
[[proxy.server]]
  [[proxy.server.location]]
  path = "/"
  upgrade = ["websocket"]
  return = 204
"#,
    ),
];

fn check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("run stackinit check")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// The error lines `check` printed (everything but the final "N errors" summary).
fn error_lines(output: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    lines.pop(); // the summary
    lines
}

#[test]
fn broken_configs_report_file_line_col_key_and_message() {
    assert!(CASES.len() >= 20);
    let dir = temp_dir("stackinit-config-errors");
    let mut failures = Vec::new();
    for case in CASES {
        let path = write(dir.path(), case.name, case.toml);
        let output = check(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let key = if case.key.is_empty() {
            String::new()
        } else {
            format!("{}: ", case.key)
        };
        let prefix = format!("{}:{}:{}: {key}", path.display(), case.line, case.col);
        let lines = error_lines(&output);
        let ok = output.status.code() == Some(1)
            && stderr.trim_end().ends_with("\n1 error")
            && lines.len() == 1
            && lines[0].starts_with(&prefix)
            && lines[0][prefix.len()..].contains(case.fragment)
            // A syntax error has no key: the message follows the position directly.
            && (!case.key.is_empty() || !lines[0][prefix.len()..].starts_with(' '));
        if !ok {
            failures.push(format!(
                "{}: want `{prefix}...{}` (exit 1, one error), got exit {:?}:\n{stderr}",
                case.name,
                case.fragment,
                output.status.code()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_in_different_sections_are_all_reported() {
    let dir = temp_dir("stackinit-config-errors");
    let path = write(
        dir.path(),
        "three",
        r#"[init]
log_level = "loud"

[service.app]
command = ["a"]
stop_grace = "ten seconds"

[service.web]
command = ["w"]
after = ["nope"]

[proxy]
listen = ["127.0.0.1:18090"]
user = "nobody"
typo = 1
"#,
    );
    let output = check(&path);
    let file = path.display();
    let lines = error_lines(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let expected = [
        format!("{file}:2:13: init.log_level: invalid log level \"loud\""),
        format!("{file}:6:14: service.app.stop_grace: invalid duration \"ten seconds\""),
        format!("{file}:10:10: service.web.after: unknown service \"nope\""),
        format!("{file}:15:1: proxy.typo: unknown key \"typo\""),
    ];
    assert_eq!(lines.len(), expected.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want), "want `{want}...`, got `{line}`");
    }
    assert!(stderr.trim_end().ends_with("\n4 errors"), "{stderr}");
}

#[test]
fn several_errors_in_one_service_are_all_reported() {
    let dir = temp_dir("stackinit-config-errors");
    let path = write(
        dir.path(),
        "one_service",
        "[service.app]\ncommand = [\"a\"]\nbogus = 1\nreplicas = \"three\"\nstop_signal = \"NOPE\"\n",
    );
    let output = check(&path);
    let lines = error_lines(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains(":3:1: service.app.bogus: unknown key"),
        "{stderr}"
    );
    assert!(
        lines[1].contains(":4:12: service.app.replicas: expected a non-negative integer"),
        "{stderr}"
    );
    assert!(
        lines[2].contains(":5:15: service.app.stop_signal: unknown signal"),
        "{stderr}"
    );
}

/// The example config of the interface contract (shared/DESIGN.md), with `www-data` swapped for `nobody`
/// so it does not depend on the distribution's users.
const CONTRACT_EXAMPLE: &str = r#"[init]
logs_dir = "/logs"                              # created if missing
control_socket = "/run/stackinit/control.sock"

[service.migrate]                               # a job: runs once, must exit 0 before its dependents start
command = ["python3", "manage.py", "migrate", "--noinput"]
directory = "/srv/app"
oneshot = true

[service.app]
command = ["gunicorn", "--workers", "1", "mysite.wsgi:application"]
directory = "/srv/app"
user = "nobody"
environment = { DJANGO_SETTINGS_MODULE = "mysite.settings" }
replicas = 3                                    # app@0..app@2
listen = "unix:/run/stackinit/app.sock"         # bound by stackinit, passed in via LISTEN_FDS
after = ["migrate"]
restart = "always"                              # always | on-failure | never
stop_signal = "TERM"
stop_grace = "40s"
readiness = { http = "/", expect = 200 }
stdout = "/logs/app.out.log"                    # default <logs_dir>/<name>.out.log
stderr = "/logs/app.err.log"                    # default <logs_dir>/<name>.err.log
log_max_bytes = "50MB"
log_backups = 10

[proxy]
listen = ["0.0.0.0:80"]
user = "nobody"

[[proxy.server]]
server_name = ["*.compute.amazonaws.com", "*.compute-1.amazonaws.com", "*.compute.internal", "*.ec2.internal"]
default = true
  [[proxy.server.location]]
  path = "/static/"
  root = "/srv/app/static"
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
"#;

#[test]
fn contract_example_passes() {
    let dir = temp_dir("stackinit-config-errors");
    let path = write(dir.path(), "contract", CONTRACT_EXAMPLE);
    let output = check(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stdout.trim(),
        format!("{}: ok (2 services, 4 processes, proxy)", path.display())
    );
}

#[test]
fn built_in_demo_passes() {
    // The demo as `config --default` prints it must check clean ...
    let printed = Command::new(BIN)
        .args(["config", "--default"])
        .output()
        .expect("run stackinit config --default");
    assert!(printed.status.success());
    let dir = temp_dir("stackinit-config-errors");
    let path = write(
        dir.path(),
        "demo",
        &String::from_utf8_lossy(&printed.stdout),
    );
    let output = check(&path);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // ... and so must `check` with no --config, which uses it when there is no system config.
    let output = Command::new(BIN)
        .arg("check")
        .output()
        .expect("run stackinit check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if !Path::new("/etc/stackinit/stackinit.toml").exists() {
        assert!(stdout.starts_with("<built-in demo>: ok ("), "{stdout}");
    }
}

#[test]
fn unreadable_file_is_an_error() {
    let dir = temp_dir("stackinit-config-errors");
    let path = dir.path().join("missing.toml");
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr.starts_with(&format!("{}:1:1: cannot read config:", path.display())),
        "{stderr}"
    );
}
