//! Kubernetes-style probes (startup, readiness, liveness), each a timer-driven task per process.
//!
//! A probe task sleeps for its period, checks once, and reports to the supervisor; it never decides
//! anything itself. An idle stack with no probes has no such tasks and wakes zero times.
#![forbid(unsafe_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::sockets::ListenAddr;
use crate::config::{Probe, TcpProbeTarget};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProbeResult {
    pub unit: String,
    /// The pid the probe was started for; results for an older process are ignored.
    pub generation: i32,
    pub kind: ProbeKind,
    pub outcome: Result<(), String>,
}

/// What one check does.
#[derive(Clone, Debug)]
pub enum Check {
    Http {
        addr: ListenAddr,
        path: String,
        expect: u16,
    },
    Tcp {
        addr: ListenAddr,
    },
    /// Exec checks run through the supervisor (it owns fork and the reaper), so the task asks it.
    Exec {
        argv: Vec<String>,
    },
}

impl Check {
    /// Build the check for a probe of a unit whose first listen address is `own`.
    pub fn from_probe(probe: &Probe, own: Option<&str>) -> Result<Check, String> {
        let own_addr = || {
            own.ok_or_else(|| "probe needs the service to have `listen`".to_string())
                .and_then(ListenAddr::parse)
        };
        if let Some(path) = &probe.http {
            return Ok(Check::Http {
                addr: own_addr()?,
                path: path.clone(),
                expect: probe.expect,
            });
        }
        match &probe.tcp {
            Some(TcpProbeTarget::OwnSocket(true)) => return Ok(Check::Tcp { addr: own_addr()? }),
            Some(TcpProbeTarget::Address(a)) => {
                return Ok(Check::Tcp {
                    addr: ListenAddr::parse(a)?,
                })
            }
            _ => {}
        }
        if let Some(argv) = &probe.exec {
            return Ok(Check::Exec { argv: argv.clone() });
        }
        Err("probe has none of http, tcp, exec".into())
    }
}

/// A request from a probe task to run an exec check; the answer is the exit status (true = exit 0).
pub struct ExecRequest {
    pub unit: String,
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Stream for T {}

async fn connect(addr: &ListenAddr) -> std::io::Result<Box<dyn Stream>> {
    Ok(match addr {
        ListenAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        ListenAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
    })
}

/// GET `path` and compare the status code. A tiny HTTP/1.0 client: all a probe needs.
async fn http_check(addr: &ListenAddr, path: &str, expect: u16) -> Result<(), String> {
    let mut stream = connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: stackinit-probe\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if status == expect {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}, expected {expect}"))
    }
}

async fn check_once(
    unit: &str,
    check: &Check,
    timeout: Duration,
    exec: &mpsc::UnboundedSender<ExecRequest>,
) -> Result<(), String> {
    match check {
        Check::Http { addr, path, expect } => {
            tokio::time::timeout(timeout, http_check(addr, path, *expect))
                .await
                .unwrap_or_else(|_| Err(format!("GET {path}: timed out after {timeout:?}")))
        }
        Check::Tcp { addr } => match tokio::time::timeout(timeout, connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
        },
        Check::Exec { argv } => {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = ExecRequest {
                unit: unit.to_string(),
                argv: argv.clone(),
                timeout,
                reply,
            };
            if exec.send(request).is_err() {
                return Err("supervisor gone".into());
            }
            answer
                .await
                .unwrap_or_else(|_| Err("exec probe dropped".into()))
        }
    }
}

/// The probe loop for one process: initial delay, then check every period, reporting each result.
pub async fn run(
    unit: String,
    generation: i32,
    kind: ProbeKind,
    probe: Probe,
    check: Check,
    results: mpsc::UnboundedSender<ProbeResult>,
    exec: mpsc::UnboundedSender<ExecRequest>,
) {
    tokio::time::sleep(probe.initial_delay.0).await;
    loop {
        let outcome = check_once(&unit, &check, probe.timeout.0, &exec).await;
        let result = ProbeResult {
            unit: unit.clone(),
            generation,
            kind,
            outcome,
        };
        if results.send(result).is_err() {
            return;
        }
        tokio::time::sleep(probe.period.0.max(Duration::from_millis(10))).await;
    }
}

/// Consecutive results of one probe, with Kubernetes thresholds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Track {
    pub successes: u32,
    pub failures: u32,
    /// Passing, by the thresholds.
    pub passing: bool,
    pub last_error: Option<String>,
}

/// What a result means for the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    NowPassing,
    NowFailing,
}

impl Track {
    pub fn record(
        &mut self,
        ok: bool,
        error: Option<String>,
        success_threshold: u32,
        failure_threshold: u32,
    ) -> Verdict {
        if ok {
            self.successes += 1;
            self.failures = 0;
            self.last_error = None;
            if !self.passing && self.successes >= success_threshold.max(1) {
                self.passing = true;
                return Verdict::NowPassing;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            self.last_error = error;
            if self.failures >= failure_threshold.max(1)
                && (self.passing || self.failures == failure_threshold.max(1))
            {
                self.passing = false;
                return Verdict::NowFailing;
            }
        }
        Verdict::Unchanged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut t = Track::default();
        assert_eq!(t.record(false, Some("x".into()), 1, 3), Verdict::Unchanged);
        assert_eq!(t.record(false, None, 1, 3), Verdict::Unchanged);
        assert_eq!(t.record(false, None, 1, 3), Verdict::NowFailing);
        assert_eq!(t.record(false, None, 1, 3), Verdict::Unchanged);
        assert_eq!(t.record(true, None, 2, 3), Verdict::Unchanged);
        assert_eq!(t.record(true, None, 2, 3), Verdict::NowPassing);
        assert!(t.passing);
        assert_eq!(t.record(false, None, 2, 3), Verdict::Unchanged);
        assert!(t.passing, "one failure is below the threshold");
    }
}
