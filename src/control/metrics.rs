//! `GET /metrics`: the supervisor's view in the Prometheus text format (prometheus-client encodes it),
//! built afresh from a status snapshot at each scrape, so nothing is counted or woken between scrapes.
//! The proxy's series come from the latest snapshot the proxy process reported (`supervise::proxy_link`).
//! Served on the control socket and on the dashboard's TCP listener, with its credentials.
#![forbid(unsafe_code)]

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::api::{ServiceStatus, State};
use crate::proxy::protocol::{HistogramSnapshot, MetricsSnapshot, LATENCY_BUCKETS, STATUS_CLASSES};

/// A unit and the service it belongs to, as every per-unit series is labelled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitLabels {
    unit: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    unit: String,
    service: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    unit: String,
    service: String,
    probe: String,
}

const STATES: [State; 7] = [
    State::Stopped,
    State::Starting,
    State::Running,
    State::Backoff,
    State::Stopping,
    State::Exited,
    State::Fatal,
];

/// The text a scrape gets. `healthy`/`draining`: what `/healthz` says now; `proxy`: the proxy's latest report.
pub fn render(
    services: &[ServiceStatus],
    healthy: bool,
    draining: bool,
    proxy: Option<&MetricsSnapshot>,
) -> String {
    let mut registry = Registry::with_prefix("stackinit");
    register_units(&mut registry, services);
    register_usage(&mut registry, services);
    if let Some(snapshot) = proxy {
        register_proxy(&mut registry, snapshot);
    }
    let healthz = Gauge::<i64>::default();
    healthz.set(i64::from(healthy));
    registry.register(
        "healthz_healthy",
        "1 when /healthz answers 200 (every critical service ready, not draining)",
        healthz,
    );
    let drain = Gauge::<i64>::default();
    drain.set(i64::from(draining));
    registry.register(
        "draining",
        "1 while the instance drains for shutdown",
        drain,
    );
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would only mean a bug in a label value.
    if encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

fn register_units(registry: &mut Registry, services: &[ServiceStatus]) {
    let state = Family::<StateLabels, Gauge>::default();
    let ready = Family::<UnitLabels, Gauge>::default();
    let restarts = Family::<UnitLabels, Gauge>::default();
    let uptime = Family::<UnitLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let probe = Family::<ProbeLabels, Gauge>::default();
    for s in services {
        let unit = UnitLabels {
            unit: s.name.clone(),
            service: s.service.clone(),
        };
        for candidate in STATES {
            let labels = StateLabels {
                unit: s.name.clone(),
                service: s.service.clone(),
                state: candidate.as_str().to_string(),
            };
            state
                .get_or_create(&labels)
                .set(i64::from(s.state == candidate));
        }
        ready.get_or_create(&unit).set(i64::from(s.ready));
        restarts.get_or_create(&unit).set(i64::from(s.restarts));
        uptime
            .get_or_create(&unit)
            .set(s.uptime_secs.unwrap_or(0.0));
        if let Some((kind, ok)) = s.probe.as_deref().and_then(probe_result) {
            let labels = ProbeLabels {
                unit: s.name.clone(),
                service: s.service.clone(),
                probe: kind.to_string(),
            };
            probe.get_or_create(&labels).set(i64::from(ok));
        }
    }
    registry.register("service_state", "1 for the unit's current state", state);
    registry.register("service_ready", "1 when the unit is ready", ready);
    // A gauge: it counts restarts since the unit was created, and a reload may recreate it.
    registry.register(
        "service_restarts",
        "restarts since the unit was created",
        restarts,
    );
    registry.register(
        "service_uptime_seconds",
        "seconds since the current process started",
        uptime,
    );
    registry.register(
        "service_probe_success",
        "1 when the unit's latest probe passed",
        probe,
    );
}

/// cgroup usage, for the units that have a cgroup (none where cgroups are not available).
fn register_usage(registry: &mut Registry, services: &[ServiceStatus]) {
    let cpu = Family::<UnitLabels, Counter<f64, AtomicU64>>::default();
    let memory = Family::<UnitLabels, Gauge>::default();
    let peak = Family::<UnitLabels, Gauge>::default();
    let pids = Family::<UnitLabels, Gauge>::default();
    let ooms = Family::<UnitLabels, Counter>::default();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for s in services {
        let Some(usage) = &s.usage else { continue };
        let unit = UnitLabels {
            unit: s.name.clone(),
            service: s.service.clone(),
        };
        if let Some(v) = usage.cpu_seconds {
            cpu.get_or_create(&unit).inc_by(v);
        }
        if let Some(v) = usage.memory_bytes {
            memory.get_or_create(&unit).set(gauge(v));
        }
        if let Some(v) = usage.memory_peak_bytes {
            peak.get_or_create(&unit).set(gauge(v));
        }
        if let Some(v) = usage.pids {
            pids.get_or_create(&unit).set(gauge(v));
        }
        if let Some(v) = usage.oom_kills {
            ooms.get_or_create(&unit).inc_by(v);
        }
    }
    registry.register(
        "service_cpu_seconds",
        "CPU time used by the unit's cgroup (cpu.stat usage_usec)",
        cpu,
    );
    registry.register(
        "service_memory_bytes",
        "memory used by the unit's cgroup now (memory.current)",
        memory,
    );
    registry.register(
        "service_memory_peak_bytes",
        "the most memory the unit's cgroup used (memory.peak)",
        peak,
    );
    registry.register(
        "service_pids",
        "processes and threads in the unit's cgroup (pids.current)",
        pids,
    );
    registry.register(
        "service_oom_kills",
        "processes the OOM killer killed in the unit's cgroup (memory.events)",
        ooms,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: String,
    upstream: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    server: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// A histogram the proxy already counted: its buckets are encoded as they came.
#[derive(Clone, Debug, Default)]
struct Counted(std::sync::OnceLock<HistogramSnapshot>);

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let Some(h) = self.0.get() else {
            return Ok(());
        };
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(h.buckets.iter().copied()).collect();
        let count = h.buckets.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(h.sum_seconds, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn register_proxy(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    let requests = Family::<RequestLabels, Counter>::default();
    let duration = Family::<RouteLabels, Counted>::default();
    let in_flight = Family::<RouteLabels, Gauge>::default();
    for r in &snapshot.requests {
        let route = RouteLabels {
            server: r.server.clone(),
            upstream: r.upstream.clone(),
        };
        for (class, n) in STATUS_CLASSES.iter().zip(r.classes) {
            let labels = RequestLabels {
                server: r.server.clone(),
                upstream: r.upstream.clone(),
                class: (*class).to_string(),
            };
            requests.get_or_create(&labels).inc_by(n);
        }
        in_flight
            .get_or_create(&route)
            .set(i64::try_from(r.in_flight).unwrap_or(i64::MAX));
        // A label pair the proxy repeats keeps its first histogram.
        let _ = duration.get_or_create(&route).0.set(r.duration.clone());
    }
    let retries = Family::<UpstreamLabels, Counter>::default();
    let queue_wait = Family::<UpstreamLabels, Counted>::default();
    for u in &snapshot.upstreams {
        let labels = UpstreamLabels {
            upstream: u.upstream.clone(),
        };
        retries.get_or_create(&labels).inc_by(u.retries);
        let _ = queue_wait
            .get_or_create(&labels)
            .0
            .set(u.queue_wait.clone());
    }
    registry.register(
        "proxy_requests",
        "requests the proxy finished, by server, upstream (- for none) and status class",
        requests,
    );
    registry.register_with_unit(
        "proxy_request_duration",
        "from the request head to the end of the response body",
        Unit::Seconds,
        duration,
    );
    registry.register(
        "proxy_in_flight",
        "requests started and not yet finished",
        in_flight,
    );
    registry.register_with_unit(
        "proxy_queue_wait",
        "waits in the admission queue for a ready replica with room",
        Unit::Seconds,
        queue_wait,
    );
    registry.register(
        "proxy_retries",
        "requests sent again, to another replica or on a fresh connection",
        retries,
    );
}

/// `"readiness ok"` -> (readiness, true); `"liveness: GET /: 500"` -> (liveness, false).
fn probe_result(text: &str) -> Option<(&str, bool)> {
    if let Some(kind) = text.strip_suffix(" ok") {
        return Some((kind, true));
    }
    text.split_once(':').map(|(kind, _)| (kind, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, state: State, ready: bool, probe: Option<&str>) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            service: "app".into(),
            replica: Some(0),
            state,
            ready,
            pid: Some(42),
            restarts: 3,
            uptime_secs: Some(12.5),
            last_exit: None,
            reason: None,
            oneshot: false,
            stdout: "/logs/a".into(),
            stderr: "/logs/b".into(),
            probe: probe.map(String::from),
            status_text: None,
            last_restart: None,
            usage: None,
        }
    }

    #[test]
    fn renders_state_readiness_restarts_probes_and_health() {
        let text = render(
            &[
                unit("app@0", State::Running, true, Some("readiness ok")),
                unit("app@1", State::Backoff, false, Some("liveness: GET /: 500")),
            ],
            false,
            false,
            None,
        );
        for line in [
            r#"stackinit_service_state{unit="app@0",service="app",state="running"} 1"#,
            r#"stackinit_service_state{unit="app@1",service="app",state="running"} 0"#,
            r#"stackinit_service_state{unit="app@1",service="app",state="backoff"} 1"#,
            r#"stackinit_service_ready{unit="app@0",service="app"} 1"#,
            r#"stackinit_service_restarts{unit="app@1",service="app"} 3"#,
            r#"stackinit_service_uptime_seconds{unit="app@0",service="app"} 12.5"#,
            r#"stackinit_service_probe_success{unit="app@0",service="app",probe="readiness"} 1"#,
            r#"stackinit_service_probe_success{unit="app@1",service="app",probe="liveness"} 0"#,
            "stackinit_healthz_healthy 0",
            "stackinit_draining 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn renders_the_proxys_series_and_cgroup_usage() {
        use crate::proxy::protocol::{RequestSeries, UpstreamSeries};
        let mut buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        buckets[2] = 3;
        buckets[LATENCY_BUCKETS.len()] = 1;
        let histogram = HistogramSnapshot {
            buckets,
            sum_seconds: 12.5,
        };
        let snapshot = MetricsSnapshot {
            requests: vec![RequestSeries {
                server: "a.example".into(),
                upstream: "app".into(),
                classes: [0, 3, 0, 1, 0],
                in_flight: 2,
                duration: histogram.clone(),
            }],
            upstreams: vec![UpstreamSeries {
                upstream: "app".into(),
                retries: 4,
                queue_wait: histogram,
            }],
        };
        let mut web = unit("app@0", State::Running, true, None);
        web.usage = Some(crate::api::Usage {
            cpu_seconds: Some(1.5),
            memory_bytes: Some(4096),
            memory_peak_bytes: Some(8192),
            pids: Some(3),
            oom_kills: Some(1),
        });
        let text = render(&[web], true, false, Some(&snapshot));
        for line in [
            r#"stackinit_proxy_requests_total{server="a.example",upstream="app",class="2xx"} 3"#,
            r#"stackinit_proxy_requests_total{server="a.example",upstream="app",class="4xx"} 1"#,
            r#"stackinit_proxy_request_duration_seconds_bucket{le="0.01",server="a.example",upstream="app"} 3"#,
            r#"stackinit_proxy_request_duration_seconds_bucket{le="+Inf",server="a.example",upstream="app"} 4"#,
            r#"stackinit_proxy_request_duration_seconds_count{server="a.example",upstream="app"} 4"#,
            r#"stackinit_proxy_request_duration_seconds_sum{server="a.example",upstream="app"} 12.5"#,
            r#"stackinit_proxy_in_flight{server="a.example",upstream="app"} 2"#,
            r#"stackinit_proxy_retries_total{upstream="app"} 4"#,
            r#"stackinit_proxy_queue_wait_seconds_count{upstream="app"} 4"#,
            r#"stackinit_service_cpu_seconds_total{unit="app@0",service="app"} 1.5"#,
            r#"stackinit_service_memory_bytes{unit="app@0",service="app"} 4096"#,
            r#"stackinit_service_memory_peak_bytes{unit="app@0",service="app"} 8192"#,
            r#"stackinit_service_pids{unit="app@0",service="app"} 3"#,
            r#"stackinit_service_oom_kills_total{unit="app@0",service="app"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
