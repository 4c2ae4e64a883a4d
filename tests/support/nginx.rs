//! A real nginx (`/usr/sbin/nginx`) for differential tests: its own prefix and config, `daemon off`,
//! `master_process off`, on a loopback port; killed by pid when the guard drops.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::http::raw_request;
use super::{wait_for_port, Guarded};

pub const NGINX: &str = "/usr/sbin/nginx";

/// `http_body` is the inside of the `http {}` block.
pub fn start_nginx(dir: &Path, http_body: &str, wait_on: SocketAddr) -> Guarded {
    assert!(
        Path::new(NGINX).exists(),
        "{NGINX} is missing: apt-get install nginx-light"
    );
    std::fs::create_dir_all(dir.join("logs")).expect("nginx logs dir");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/cb;\n  proxy_temp_path {dir}/pt;\n\
         fastcgi_temp_path {dir}/ft;\n  uwsgi_temp_path {dir}/ut;\n  scgi_temp_path {dir}/st;\n{http_body}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("write nginx.conf");
    let guard = Guarded::spawn(
        Command::new(NGINX)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nginx.stderr")).expect("nginx.stderr")),
        "nginx",
    );
    wait_for_port(wait_on);
    guard
}

/// What a request ended in, for comparing nginx with stackinit: the status and, for a 200, which echo
/// upstream answered (its `id`), or else the start of the body (a static file).
pub fn outcome(addr: SocketAddr, raw: &[u8]) -> String {
    match raw_request(addr, raw) {
        Ok(reply) if reply.status == 200 => {
            match serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(String::from))
            {
                Some(id) => format!("200 {id}"),
                None => format!(
                    "200 {:?}",
                    reply.text().chars().take(40).collect::<String>()
                ),
            }
        }
        Ok(reply) => format!("{}", reply.status),
        Err(e) => format!("error {}", e.kind()),
    }
}

/// `GET PATH` with `host` as the Host header (none if None), closing the connection after the reply.
pub fn request_for(host: &Option<Vec<u8>>, path: &str, version: &str) -> Vec<u8> {
    let mut raw = format!("GET {path} HTTP/{version}\r\n").into_bytes();
    if let Some(h) = host {
        raw.extend_from_slice(b"Host: ");
        raw.extend_from_slice(h);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    raw
}
