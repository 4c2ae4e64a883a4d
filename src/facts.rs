//! Instance facts: who this instance is (names, IPs, instance id), discovered at boot so that nothing
//! host-specific is baked into the image. From IMDSv2 where there is one, else from the machine itself.
//!
//! The facts reach services as `STACKINIT_*` environment variables (Django reads
//! `STACKINIT_ALLOWED_HOSTS`) and the proxy as extra server names.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use serde::Serialize;

use crate::config::{Config, ImdsSpec};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub instance_id: Option<String>,
    pub private_ip: Option<String>,
    pub private_hostname: Option<String>,
    pub public_ip: Option<String>,
    pub public_hostname: Option<String>,
    /// The machine's own hostname and interface addresses, known even without IMDS.
    pub hostname: Option<String>,
    pub local_ips: Vec<String>,
    /// Where the facts came from: "imds" or "local".
    pub source: &'static str,
}

impl Facts {
    /// Every name and IP a client may use to reach this instance, deduplicated, in a stable order.
    pub fn allowed_hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let candidates = [
            &self.public_hostname,
            &self.private_hostname,
            &self.public_ip,
            &self.private_ip,
            &self.hostname,
        ];
        for c in candidates.into_iter().flatten() {
            for name in c.split_whitespace() {
                out.push(name.to_ascii_lowercase());
            }
        }
        out.extend(self.local_ips.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        out.retain(|h| !h.is_empty() && seen.insert(h.clone()));
        out
    }

    /// `allowed_hosts` and then the config's `[proxy] extra_server_names` (a load balancer's name, a custom
    /// domain): every name the app must accept. Lowercased and deduplicated.
    pub fn allowed_hosts_with(&self, config: &Config) -> Vec<String> {
        let mut out = self.allowed_hosts();
        let extra = config.proxy.iter().flat_map(|p| &p.extra_server_names);
        for name in extra.map(|n| n.to_ascii_lowercase()) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// The environment every service gets, for a stack running `config`.
    pub fn environment(&self, config: &Config) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                env.push((k.to_string(), v.clone()));
            }
        };
        put("STACKINIT_INSTANCE_ID", &self.instance_id);
        put("STACKINIT_PRIVATE_IP", &self.private_ip);
        put("STACKINIT_PRIVATE_HOSTNAME", &self.private_hostname);
        put("STACKINIT_PUBLIC_IP", &self.public_ip);
        put("STACKINIT_PUBLIC_HOSTNAME", &self.public_hostname);
        env.push((
            "STACKINIT_ALLOWED_HOSTS".into(),
            self.allowed_hosts_with(config).join(","),
        ));
        env
    }
}

/// Does this machine say it is EC2? (DMI vendor strings; Nitro and Xen instances both set one.)
fn looks_like_ec2() -> bool {
    [
        "/sys/devices/virtual/dmi/id/sys_vendor",
        "/sys/devices/virtual/dmi/id/board_vendor",
        "/sys/hypervisor/uuid",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .any(|v| v.contains("Amazon EC2") || v.to_ascii_lowercase().starts_with("ec2"))
}

/// Whether IMDS is to be asked at all: as configured, else when the machine says it is EC2.
pub fn imds_enabled(spec: &ImdsSpec) -> bool {
    spec.enabled.unwrap_or_else(looks_like_ec2)
}

/// The instance's user data (IMDSv2: a token, then `GET /latest/user-data`), at most `limit` bytes; `None`
/// when the instance was launched without any (404). Runs on a `LocalSet` (its connections are local tasks).
pub async fn user_data(spec: &ImdsSpec, limit: usize) -> Result<Option<String>, String> {
    let token = token(spec).await?;
    let (status, body) = exchange(
        spec,
        "GET",
        "/latest/user-data",
        ("x-aws-ec2-metadata-token", &token),
    )
    .await?;
    match status {
        200 if body.len() > limit => Err(format!(
            "user data is {} bytes, more than {limit}",
            body.len()
        )),
        200 => Ok(Some(body)),
        404 => Ok(None),
        other => Err(format!("GET /latest/user-data answered {other}")),
    }
}

/// Discover the facts: local ones always, IMDS ones when enabled. Never fails; never takes longer than
/// about six IMDS timeouts.
pub async fn discover(spec: &ImdsSpec) -> Facts {
    let mut facts = local_facts();
    let enabled = imds_enabled(spec);
    if !enabled {
        return facts;
    }
    match imds_facts(spec).await {
        Ok(remote) => {
            facts.instance_id = remote.instance_id;
            facts.private_ip = remote.private_ip;
            facts.private_hostname = remote.private_hostname;
            facts.public_ip = remote.public_ip;
            facts.public_hostname = remote.public_hostname;
            facts.source = "imds";
            tracing::info!(
                "instance facts from IMDS: {}",
                facts.allowed_hosts().join(", ")
            );
        }
        Err(e) => tracing::info!("no instance metadata ({e}); using local facts"),
    }
    facts
}

fn local_facts() -> Facts {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        // "(none)" is the kernel's placeholder before anyone sets a hostname: not a name to serve.
        .filter(|h| !h.is_empty() && h != "(none)");
    let mut local_ips = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(addr) = ifa.address else { continue };
            let ip: Option<IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            };
            match ip {
                Some(ip) if !ip.is_loopback() && !is_link_local(&ip) => {
                    local_ips.push(ip.to_string())
                }
                _ => {}
            }
        }
    }
    Facts {
        hostname,
        local_ips,
        source: "local",
        ..Facts::default()
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// One HTTP exchange with IMDS over a fresh connection.
async fn exchange(
    spec: &ImdsSpec,
    method: &str,
    path: &str,
    header: (&str, &str),
) -> Result<(u16, String), String> {
    let authority = spec
        .endpoint
        .strip_prefix("http://")
        .ok_or_else(|| {
            format!(
                "IMDS endpoint must be http://HOST[:PORT], not {:?}",
                spec.endpoint
            )
        })?
        .trim_end_matches('/')
        .to_string();
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let timeout: Duration = spec.timeout.0;
    let work = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority.as_str())
            .header(header.0, header.1)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{method} {path}: timed out after {timeout:?}"))?
}

/// An IMDSv2 session token.
async fn token(spec: &ImdsSpec) -> Result<String, String> {
    let (status, token) = exchange(
        spec,
        "PUT",
        "/latest/api/token",
        ("x-aws-ec2-metadata-token-ttl-seconds", "300"),
    )
    .await?;
    if status != 200 || token.is_empty() {
        return Err(format!("token request answered {status}"));
    }
    Ok(token)
}

async fn imds_facts(spec: &ImdsSpec) -> Result<Facts, String> {
    let token = token(spec).await?;
    let mut facts = Facts::default();
    for (key, slot) in [
        ("instance-id", &mut facts.instance_id),
        ("local-ipv4", &mut facts.private_ip),
        ("local-hostname", &mut facts.private_hostname),
        ("public-ipv4", &mut facts.public_ip),
        ("public-hostname", &mut facts.public_hostname),
    ] {
        let path = format!("/latest/meta-data/{key}");
        // A missing key (no public IP) is a 404: not an error, just not a fact.
        if let Ok((200, value)) =
            exchange(spec, "GET", &path, ("x-aws-ec2-metadata-token", &token)).await
        {
            if !value.is_empty() {
                *slot = Some(value);
            }
        }
    }
    if facts.instance_id.is_none() {
        return Err("IMDS gave no instance-id".into());
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_are_deduplicated_and_lowercased() {
        let f = Facts {
            private_ip: Some("10.0.0.5".into()),
            private_hostname: Some("IP-10-0-0-5.ec2.internal".into()),
            public_hostname: Some("ec2-3-4-5-6.compute-1.amazonaws.com".into()),
            local_ips: vec!["10.0.0.5".into()],
            ..Facts::default()
        };
        assert_eq!(
            f.allowed_hosts(),
            vec![
                "ec2-3-4-5-6.compute-1.amazonaws.com",
                "ip-10-0-0-5.ec2.internal",
                "10.0.0.5"
            ]
        );
        assert!(f
            .environment(&Config::default())
            .contains(&("STACKINIT_PRIVATE_IP".into(), "10.0.0.5".into())));
    }

    #[test]
    fn extra_server_names_add_to_the_allowed_hosts() {
        let f = Facts {
            private_ip: Some("10.0.0.5".into()),
            ..Facts::default()
        };
        let mut config = Config::default();
        config.proxy = Some(crate::config::ProxySpec {
            extra_server_names: vec!["My-ALB.elb.amazonaws.com".into(), "10.0.0.5".into()],
            ..Default::default()
        });
        let env = f.environment(&config);
        let allowed = env.iter().find(|(k, _)| k == "STACKINIT_ALLOWED_HOSTS");
        assert_eq!(allowed.unwrap().1, "10.0.0.5,my-alb.elb.amazonaws.com");
    }
}
