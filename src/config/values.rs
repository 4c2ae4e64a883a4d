//! Typed forms of string config values: listen addresses, signal names, octal modes, log filters and
//! capability names. The checks use them to validate, and the code that acts on the config uses the same
//! functions so both agree on what a value means.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;

/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// A socket address as written in `listen`/`upstream`: `unix:/abs/path`, `IP:PORT` or `[v6]:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

impl ListenAddr {
    /// Parse `unix:/abs/path`, `IP:PORT` or `[v6]:PORT`. Host names are refused: sockets are bound before
    /// the network (and DNS) is up.
    pub fn parse(text: &str) -> Result<ListenAddr, String> {
        let expected = "expected \"unix:/absolute/path\", \"IP:PORT\" or \"[IPv6]:PORT\"";
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "invalid address {text:?}: the unix socket path must be absolute"
                ));
            }
            if path.contains('\0') {
                return Err(format!(
                    "invalid address {text:?}: the path contains a NUL byte"
                ));
            }
            if path.ends_with('/') {
                return Err(format!(
                    "invalid address {text:?}: the path names a directory"
                ));
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(format!(
                    "invalid address {text:?}: unix socket paths are limited to {MAX_UNIX_PATH} bytes"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        SocketAddr::from_str(text)
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("invalid address {text:?}: {expected}"))
    }

    /// The addresses the replicas of a service bind, in replica order. With one replica the address is used
    /// as written. With N: `/x/app.sock` becomes `/x/app@0.sock` .. `/x/app@{N-1}.sock`, and TCP port P
    /// becomes P .. P+N-1 (port 0 stays 0: each replica gets its own ephemeral port).
    pub fn for_replicas(&self, replicas: u32) -> Result<Vec<ListenAddr>, String> {
        if replicas <= 1 {
            return Ok(vec![self.clone()]);
        }
        (0..replicas).map(|i| self.for_replica(i)).collect()
    }

    /// The address replica `index` binds when a service has more than one replica.
    pub fn for_replica(&self, index: u32) -> Result<ListenAddr, String> {
        match self {
            ListenAddr::Unix(path) => {
                let replica = replica_socket_path(path, index);
                if replica.as_os_str().len() > MAX_UNIX_PATH {
                    return Err(format!(
                        "the socket path of replica {index}, {}, is longer than {MAX_UNIX_PATH} bytes",
                        replica.display()
                    ));
                }
                Ok(ListenAddr::Unix(replica))
            }
            ListenAddr::Tcp(addr) if addr.port() == 0 => Ok(self.clone()),
            ListenAddr::Tcp(addr) => {
                let port = u16::try_from(u32::from(addr.port()) + index).map_err(|_| {
                    format!(
                        "replica {index} would need port {}, above 65535",
                        u32::from(addr.port()) + index
                    )
                })?;
                Ok(ListenAddr::Tcp(SocketAddr::new(addr.ip(), port)))
            }
        }
    }

    /// Whether binding both would fail with EADDRINUSE. IPv4 and IPv6 never clash: listeners set
    /// IPV6_V6ONLY, as nginx does, so `0.0.0.0:80` and `[::]:80` can coexist. Port 0 never clashes.
    pub fn overlaps(&self, other: &ListenAddr) -> bool {
        match (self, other) {
            (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
            (ListenAddr::Tcp(a), ListenAddr::Tcp(b)) => {
                a.port() != 0
                    && a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }
            _ => false,
        }
    }
}

/// The address strings of each replica of a service with `listen` and `replicas`, as init binds them and
/// the proxy routes to them. The checker refuses addresses that do not expand, so the fallback (the
/// address as written) is never used for a valid config.
pub fn replica_addresses(listen: &str, replicas: u32) -> Vec<String> {
    match ListenAddr::parse(listen).and_then(|a| a.for_replicas(replicas)) {
        Ok(addrs) => addrs.iter().map(|a| a.to_string()).collect(),
        Err(_) => vec![listen.to_string(); replicas.max(1) as usize],
    }
}

/// `/x/app.sock` -> `/x/app@1.sock`; `/x/app` -> `/x/app@1`.
pub fn replica_socket_path(path: &Path, index: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}@{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}@{index}"),
    };
    path.with_file_name(name)
}

/// A signal name: `TERM`, `SIGTERM`, `term`, ... (any signal nix knows).
pub fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("unknown signal {text:?} (use a name like TERM, INT, QUIT, HUP, KILL, USR1, USR2 or WINCH)")
    })
}

/// An octal file mode or umask such as `"0755"` or `"022"`, at most `max`.
pub fn parse_octal(text: &str, max: u32) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let valid = !digits.is_empty()
        && digits.len() <= 4
        && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if valid && mode <= max => Ok(mode),
        _ => Err(format!(
            "invalid octal mode {text:?}: expected octal digits up to {max:04o}, like \"0755\""
        )),
    }
}

/// A tracing level (`error` .. `trace`, `off`) or an `EnvFilter` directive list such as `info,stackinit=debug`.
/// A bare word that is not a level is refused, though `EnvFilter` would take it as a target name: it is far
/// more likely a typo (`verbose`, `warning`) than a target.
pub fn check_log_level(text: &str) -> Result<(), String> {
    let levels = ["error", "warn", "info", "debug", "trace", "off"];
    let usage = "use error, warn, info, debug, trace, or a filter like \"info,stackinit=debug\"";
    if levels.contains(&text.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    // ASCII only, so no byte offset can fall inside a character: tracing-subscriber 0.3.23 slices each
    // directive by the offsets of its trimmed copy, and panics on leading whitespace before a non-ASCII
    // character (`log_level = " [\u{fffd}{="`, found by the config fuzz target), which would take down
    // the supervisor in PID 1 on a reload. Levels are words and targets module paths: ASCII anyway.
    if !text.is_ascii() {
        return Err(format!(
            "invalid log level {text:?}: only ASCII characters ({usage})"
        ));
    }
    // No span or field filters (`[span{field=value}]`): EnvFilter compiles a field's value into a DFA,
    // which for `[{b=3......................}]` (from a config fuzz target timeout) was still building
    // after two minutes: on the supervisor's one thread on a reload, and in init_tracing at boot. Levels
    // per target are what a service manager's log needs.
    if text.contains('[') {
        return Err(format!(
            "invalid log level {text:?}: span and field filters ([...]) are not supported ({usage})"
        ));
    }
    if !text.contains('=') && !text.contains(',') {
        return Err(format!("invalid log level {text:?} ({usage})"));
    }
    // Each bare directive in a list must be a level too, for the same reason.
    for directive in text.split(',').map(str::trim) {
        if !directive.contains('=') && !levels.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level {text:?}: {directive:?} is not a level ({usage})"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(drop)
        .map_err(|e| format!("invalid log filter {text:?}: {e}"))
}

/// A capability name: `CAP_NET_ADMIN`, `net_admin`, or `ALL`.
pub fn parse_capability(text: &str) -> Result<Option<caps::Capability>, String> {
    let upper = text.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(None);
    }
    let name = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    caps::Capability::from_str(&name).map(Some).map_err(|_| {
        format!("unknown capability {text:?} (use names like \"CAP_NET_BIND_SERVICE\" or \"ALL\")")
    })
}

/// One `trusted_proxies` entry, as nginx's `set_real_ip_from`: an address (`10.0.0.5`), a network
/// (`10.0.0.0/8`, `2001:db8::/32`) or `unix:` (every unix-socket client). No host names: the proxy
/// would have to resolve them, and a name that resolves differently tomorrow changes who is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedSource {
    Unix,
    Net { addr: IpAddr, prefix: u8 },
}

impl TrustedSource {
    pub fn parse(text: &str) -> Result<TrustedSource, String> {
        let expected = "expected an address, an address/prefix (CIDR) or \"unix:\"";
        if text == "unix:" {
            return Ok(TrustedSource::Unix);
        }
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("invalid address {text:?}: {expected}"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= bits && !p.starts_with('+') => n,
                _ => {
                    return Err(format!(
                        "invalid prefix length in {text:?}: expected 0 to {bits}"
                    ))
                }
            },
        };
        // Canonical form (an IPv4-mapped IPv6 address is its IPv4 address) so a match compares like with like.
        let addr = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => {
                return TrustedSource::parse(&format!("{}/{}", addr.to_canonical(), prefix - 96))
            }
            other => other,
        };
        Ok(TrustedSource::Net { addr, prefix })
    }

    /// Whether a peer is this source. `None` is a unix-socket peer.
    pub fn contains(&self, peer: Option<IpAddr>) -> bool {
        match (self, peer) {
            (TrustedSource::Unix, None) => true,
            (TrustedSource::Net { addr, prefix }, Some(ip)) => match (addr, ip.to_canonical()) {
                (IpAddr::V4(net), IpAddr::V4(ip)) => {
                    same_prefix(u32::from(*net).into(), u32::from(ip).into(), *prefix, 32)
                }
                (IpAddr::V6(net), IpAddr::V6(ip)) => {
                    same_prefix(u128::from(*net), u128::from(ip), *prefix, 128)
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let host_bits = bits - u32::from(prefix);
    if host_bits >= bits {
        return true;
    }
    (a ^ b) >> host_bits == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_sources_match_as_set_real_ip_from() {
        let net = TrustedSource::parse("10.0.0.0/8").unwrap();
        assert!(net.contains(Some("10.200.1.2".parse().unwrap())));
        assert!(!net.contains(Some("11.0.0.1".parse().unwrap())));
        assert!(!net.contains(None));
        // A v4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        assert!(net.contains(Some("::ffff:10.1.1.1".parse().unwrap())));
        let one = TrustedSource::parse("192.0.2.7").unwrap();
        assert!(one.contains(Some("192.0.2.7".parse().unwrap())));
        assert!(!one.contains(Some("192.0.2.8".parse().unwrap())));
        let all = TrustedSource::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(Some("203.0.113.1".parse().unwrap())));
        assert!(!all.contains(Some("::1".parse().unwrap())));
        let v6 = TrustedSource::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(Some("2001:db8:1::5".parse().unwrap())));
        assert!(!v6.contains(Some("2001:db9::5".parse().unwrap())));
        let mapped = TrustedSource::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(mapped, net);
        assert!(TrustedSource::parse("unix:").unwrap().contains(None));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "example.com",
            "10.0.0.0/+8",
            "::/129",
            "",
        ] {
            assert!(TrustedSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_syntax() {
        assert_eq!(
            ListenAddr::parse("unix:/run/a.sock"),
            Ok(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert!(matches!(
            ListenAddr::parse("127.0.0.1:80"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(matches!(
            ListenAddr::parse("[::1]:80"),
            Ok(ListenAddr::Tcp(_))
        ));
        assert!(ListenAddr::parse("unix:run/a.sock").is_err());
        assert!(ListenAddr::parse("localhost:80").is_err());
        assert!(ListenAddr::parse("127.0.0.1").is_err());
        assert!(ListenAddr::parse("::1:80").is_err());
    }

    #[test]
    fn replica_expansion() {
        let unix = ListenAddr::parse("unix:/x/app.sock").unwrap();
        assert_eq!(unix.for_replicas(1).unwrap(), vec![unix.clone()]);
        assert_eq!(
            unix.for_replicas(2).unwrap(),
            vec![
                ListenAddr::Unix("/x/app@0.sock".into()),
                ListenAddr::Unix("/x/app@1.sock".into())
            ]
        );
        let tcp = ListenAddr::parse("127.0.0.1:8000").unwrap();
        let ports: Vec<String> = tcp
            .for_replicas(3)
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            ports,
            ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"]
        );
        assert!(ListenAddr::parse("127.0.0.1:65535")
            .unwrap()
            .for_replicas(2)
            .is_err());
    }

    #[test]
    fn overlaps() {
        let p = |s| ListenAddr::parse(s).unwrap();
        assert!(p("0.0.0.0:80").overlaps(&p("127.0.0.1:80")));
        assert!(!p("0.0.0.0:80").overlaps(&p("[::]:80")));
        assert!(!p("127.0.0.1:80").overlaps(&p("127.0.0.2:80")));
        assert!(!p("127.0.0.1:0").overlaps(&p("127.0.0.1:0")));
    }

    #[test]
    fn small_values() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigwinch"), Ok(Signal::SIGWINCH));
        assert!(parse_signal("TERMINATE").is_err());
        assert_eq!(parse_octal("0022", 0o777), Ok(0o22));
        assert!(parse_octal("0898", 0o777).is_err());
        assert!(parse_octal("", 0o777).is_err());
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("info,stackinit=debug").is_ok());
        assert!(check_log_level("verbose").is_err());
        // fuzz/regressions/config/log-level-panics-tracing-subscriber: refused, not a panic.
        assert!(check_log_level(" [\u{fffd}{=").is_err());
        assert!(check_log_level("info, [\u{e9}]=debug").is_err());
        // fuzz/regressions/config/log-level-field-regex-hangs: refused at once, no DFA is built.
        let started = std::time::Instant::now();
        assert!(check_log_level("[{b=3......................}]").is_err());
        assert!(check_log_level("stackinit[span]=debug").is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(parse_capability("net_admin").unwrap().is_some());
        assert!(parse_capability("CAP_FLY").is_err());
    }
}
