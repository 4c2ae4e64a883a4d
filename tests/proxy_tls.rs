//! TLS with a certificate generated in the test (rcgen), HTTP/2 and HTTP/1.1 by ALPN (checked with curl), and a
//! certificate reload (SIGHUP re-reads the config in standalone mode) that keeps open requests alive.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::proxy::{Echo, ProxyProcess};
use support::{free_port, wait_for_port};

fn write_cert(dir: &Path, name: &str) -> std::path::PathBuf {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
    let ca = dir.join(format!("ca-{name}.pem"));
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    ca
}

/// curl over TLS to `name` (resolved to 127.0.0.1); returns (http_version, status, body).
fn curl(
    addr: SocketAddr,
    name: &str,
    ca: &Path,
    path: &str,
    http2: bool,
) -> (String, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{}:127.0.0.1", addr.port()))
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-w", "\n%{http_version} %{http_code}"])
        .arg(format!("https://{name}:{}{path}", addr.port()))
        .output()
        .expect("curl is installed");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {} {}",
        out,
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, tail) = out.rsplit_once('\n').unwrap();
    let (version, status) = tail.split_once(' ').unwrap();
    (version.to_string(), status.to_string(), body.to_string())
}

#[test]
fn tls_h2_and_h1_with_certificate_reload() {
    let echo = Echo::start("e");
    let dir = tempfile::tempdir().unwrap();
    let ca_old = write_cert(dir.path(), "localhost");
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[init]\nlogs_dir = \"{d}\"\n[proxy]\nlisten = [\"{plain}\"]\n[proxy.tls]\nlisten = [\"{tls}\"]\n\
         cert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n\
         [[proxy.server]]\nserver_name = [\"localhost\", \"new.test\"]\n  [[proxy.server.location]]\n  path = \"/\"\n  upstream = \"{}\"\n",
        echo.addr,
        d = dir.path().display()
    );
    let proxy = ProxyProcess::start(dir.path(), &config, plain);
    wait_for_port(tls);

    let (version, status, body) = curl(tls, "localhost", &ca_old, "/h2", true);
    assert_eq!((version.as_str(), status.as_str()), ("2", "200"));
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers = seen["headers"].as_array().unwrap();
    let has = |k: &str, v: &str| headers.iter().any(|h| h[0] == k && h[1] == v);
    assert!(has("x-forwarded-proto", "https"), "{body}");
    assert!(
        has("host", &format!("localhost:{}", tls.port())),
        "h2 :authority becomes Host: {body}"
    );
    let (version, status, _) = curl(tls, "localhost", &ca_old, "/h1", false);
    assert_eq!((version.as_str(), status.as_str()), ("1.1", "200"));
    let (version, status, _) = curl(tls, "localhost", &ca_old, "/healthz", true);
    assert_eq!((version.as_str(), status.as_str()), ("2", "200"));

    // A request in flight across the reload must finish.
    let ca_for_thread = ca_old.clone();
    let in_flight =
        std::thread::spawn(move || curl(tls, "localhost", &ca_for_thread, "/slow?ms=1500", true));
    std::thread::sleep(Duration::from_millis(300));
    let ca_new = write_cert(dir.path(), "new.test");
    proxy.process.signal(nix::sys::signal::Signal::SIGHUP);
    let (_, status, _) = in_flight.join().unwrap();
    assert_eq!(status, "200", "request open during the reload");
    let mut served_new = false;
    for _ in 0..100 {
        let ok = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--cacert"])
            .arg(&ca_new)
            .arg("--resolve")
            .arg(format!("new.test:{}:127.0.0.1", tls.port()))
            .arg(format!("https://new.test:{}/", tls.port()))
            .status()
            .unwrap()
            .success();
        if ok {
            served_new = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served_new,
        "new certificate not served after reload: {}",
        proxy.stderr()
    );
}
