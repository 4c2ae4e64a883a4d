//! `GET /metrics`: the supervisor's view in the Prometheus text format (prometheus-client encodes it),
//! built afresh from a status snapshot at each scrape, so nothing is counted or woken between scrapes.
//! Served on the control socket and on the dashboard's TCP listener, with its credentials.
#![forbid(unsafe_code)]

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::{ServiceStatus, State};

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

/// The text a scrape gets. `healthy`/`draining`: what `/healthz` says now.
pub fn render(services: &[ServiceStatus], healthy: bool, draining: bool) -> String {
    let mut registry = Registry::with_prefix("stackinit");
    register_units(&mut registry, services);
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
}
