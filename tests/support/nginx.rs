//! A real nginx (`/usr/sbin/nginx`) for differential tests: its own prefix and config, `daemon off`,
//! `master_process off`, on a loopback port; killed by pid when the guard drops.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

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
