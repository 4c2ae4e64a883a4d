//! An upstream socket the proxy's user cannot reach (the seed's `app.sock` in Ubuntu's 0750 home directory):
//! `check`, startup and the proxy's own log name the directory and the user, and each 502 says why.
//! Needs root (the proxy runs as `nobody` only when init is root).

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::http::get;
use support::{free_port, temp_dir, wait_for_port, wait_until, Stack, BIN};

#[test]
fn a_socket_in_a_directory_the_proxy_user_cannot_search_is_named_everywhere() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: the proxy runs as nobody only under a root init"
    );
    let port = free_port();
    // Like Ubuntu's home directories: 0750, so nobody (in no group of its owner) cannot search it.
    let home = temp_dir("stackinit-home");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let home_dir = home.path().display().to_string();
    let stack = Stack::start(&format!(
        r#"
[service.app]
command = ["stackinit", "demo-worker"]
listen = "unix:{home_dir}/app.sock"
start_secs = "100ms"

[proxy]
listen = ["127.0.0.1:{port}"]
user = "nobody"

[[proxy.server]]
server_name = ["t"]
  [[proxy.server.location]]
  path = "/"
  upstream = "app"
"#
    ));
    let named = |text: &str| {
        text.contains(&format!("directory {home_dir} is 0750 root:root"))
            && text.contains("nobody (uid 65534)")
    };

    // `check` warns, at the config's line, and still passes (an ACL it cannot see may allow it).
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&stack.config)
        .output()
        .expect("run check");
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    let warning = said
        .lines()
        .find(|l| l.contains("warning:"))
        .unwrap_or_else(|| panic!("no warning from check:\n{said}"));
    assert!(
        warning.contains("stackinit.toml:")
            && warning.contains("proxy.server[0].location[0].upstream")
            && named(warning),
        "{warning}"
    );
    // Startup logs the same warning.
    assert!(
        wait_until(Duration::from_secs(5), || stack
            .stderr()
            .lines()
            .any(|l| l.contains("warning:") && named(l))),
        "no warning at startup:\n{}",
        stack.stderr()
    );

    // The proxy, as nobody, finds it for itself when its config arrives, and says why with each 502.
    stack.wait_state("app", "running", Duration::from_secs(10));
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)));
    let proxy_log =
        || std::fs::read_to_string(stack.path("logs/proxy.err.log")).unwrap_or_default();
    let proxy_says = |what: &str, fragment: &str| {
        assert!(
            wait_until(Duration::from_secs(10), || proxy_log()
                .lines()
                .any(|l| l.contains(fragment) && named(l))),
            "the proxy did not say {what}:\n{}",
            proxy_log()
        );
    };
    proxy_says(
        "at startup why it cannot reach the socket",
        "cannot reach unix:",
    );
    let reply = get(port, "t", "/").expect("a reply");
    assert_eq!(reply.status, 502);
    proxy_says("why the request got 502", "Permission denied");
}
