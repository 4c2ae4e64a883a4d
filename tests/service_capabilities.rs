//! `capabilities` as a service gets them from a root stackinit: held (ambient) when it runs as another user,
//! and never silently left in the bounding set when stackinit cannot drop them (no CAP_SETPCAP).
//! Needs root.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{wait_until, Stack};

const WAIT: Duration = Duration::from_secs(10);

/// A service that writes its `/proc/self/status` capability lines (and uid) to `{dir}/out/NAME`.
fn reporting_service(name: &str, extra: &str) -> String {
    format!(
        r#"
[service.{name}]
command = ["sh", "-c", "until [ -w {{dir}}/out ]; do sleep 0.05; done; grep -E '^(Uid|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status > {{dir}}/out/{name}.tmp; mv {{dir}}/out/{name}.tmp {{dir}}/out/{name}; exec sleep 100000"]
start_secs = "100ms"
{extra}
"#
    )
}

/// Open `{dir}/out` to services that run as nobody; returns it.
fn open_output_dir(stack: &Stack) -> PathBuf {
    let out = stack.path("out");
    std::fs::create_dir(&out).expect("out dir");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod out");
    std::fs::set_permissions(stack.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod dir");
    out
}

/// The value of one `/proc/PID/status` field a service wrote.
fn field(out: &Path, service: &str, name: &str) -> String {
    let path = out.join(service);
    assert!(
        wait_until(WAIT, || path.exists()),
        "{service} never wrote its status"
    );
    let status = std::fs::read_to_string(&path).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: capabilities are only given by a root stackinit"
    );
}

#[test]
fn a_service_running_as_another_user_holds_the_capabilities_it_keeps() {
    require_root();
    let config = reporting_service(
        "binder",
        "user = \"nobody\"\ncapabilities = [\"CAP_NET_BIND_SERVICE\"]",
    ) + &reporting_service("plain", "user = \"nobody\"");
    let stack = Stack::start(&config);
    let out = open_output_dir(&stack);
    assert_eq!(field(&out, "binder", "Uid:"), "65534");
    // CAP_NET_BIND_SERVICE is bit 10: held (effective) and ambient, so the exec'd grep has it too.
    for set in ["CapEff:", "CapPrm:", "CapAmb:"] {
        assert_eq!(field(&out, "binder", set), "0000000000000400", "{set}");
    }
    assert_eq!(field(&out, "binder", "CapBnd:"), "0000000000000400");
    // Without `capabilities`, nothing at all.
    for set in ["CapEff:", "CapAmb:", "CapBnd:"] {
        assert_eq!(field(&out, "plain", set), "0000000000000000", "{set}");
    }
}

#[test]
fn without_cap_setpcap_a_root_service_that_would_keep_everything_does_not_start() {
    require_root();
    // stackinit without CAP_SETPCAP (bit 8) cannot shrink a service's bounding set.
    let config = reporting_service("rooted", "capabilities = [\"CAP_CHOWN\"]")
        + &reporting_service("unprivileged", "user = \"nobody\"");
    let stack = Stack::start_under(&["setpriv", "--bounding-set", "-setpcap"], &config, &[]);
    let out = open_output_dir(&stack);
    // The one that runs as nobody with no_new_privs loses everything at the setuid: it starts.
    assert_eq!(field(&out, "unprivileged", "CapEff:"), "0000000000000000");
    assert_eq!(field(&out, "unprivileged", "CapPrm:"), "0000000000000000");
    // The root one would have run with every capability left: refused, and the log says why.
    assert!(
        wait_until(WAIT, || stack.stderr().lines().any(|l| l
            .contains("cannot start rooted")
            && l.contains("lacks CAP_SETPCAP"))),
        "{}",
        stack.stderr()
    );
    assert_ne!(stack.state_of("rooted"), "running");
    assert!(
        !out.join("rooted").exists(),
        "the root service ran: {:?}",
        std::fs::read_to_string(out.join("rooted"))
    );
}
