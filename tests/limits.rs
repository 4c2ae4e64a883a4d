//! Limits that PID 1 meets and a shell does not, and neighbours that misbehave: the file limit, huge
//! configs, huge tails, a hostile environment, slow shutdowns, crowds of log followers and log files
//! swapped for symlinks. Each test runs the real binary and fails on the code before its fix.

mod support;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use support::*;

const LONG: &str = r#"command = ["sleep", "100000"]"#;

/// A variable that is not UTF-8 in stackinit's own environment reaches the services byte for byte
/// (it used to panic at the first spawn, so nothing started).
#[test]
fn a_non_utf8_environment_variable_is_passed_through() {
    let value = b"caf\xe9".to_vec();
    let launch = Launch {
        env: vec![("LEGACY_LATIN1".into(), OsString::from_vec(value.clone()))],
        ..Launch::default()
    };
    let stack = Stack::launch(
        r#"
[service.env]
command = ["sh", "-c", "printf '%s' \"$LEGACY_LATIN1\" > {dir}/seen; exec sleep 100000"]
start_secs = "0s"
"#,
        launch,
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
