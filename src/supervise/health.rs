//! What a unit's current process shows about itself, and what follows from it: probe tasks started per
//! process, probe results recorded against their thresholds, and the notify socket's messages (READY=1,
//! STATUS=, WATCHDOG=1, MAINPID=). Each function updates one unit and returns what the loop must do.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use super::notify::{self, Notification};
use super::probes::{self, Check, ExecRequest, ProbeKind, ProbeResult, Verdict};
use super::unit::Unit;
use crate::config::{Probe, ServiceSpec};

/// Where probe tasks report.
#[derive(Clone)]
pub struct ProbeChannels {
    pub results: UnboundedSender<ProbeResult>,
    pub exec: UnboundedSender<ExecRequest>,
}

/// The probes that run first: the startup probe if there is one, else readiness (and liveness).
pub fn first_probe(spec: &ServiceSpec) -> ProbeKind {
    if spec.startup.is_some() {
        ProbeKind::Startup
    } else {
        ProbeKind::Readiness
    }
}

fn probe_spec(spec: &ServiceSpec, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Startup => spec.startup.as_ref(),
        ProbeKind::Readiness => spec.readiness.as_ref(),
        ProbeKind::Liveness => spec.liveness.as_ref(),
    }
}

/// Start the probe tasks for the current process: the startup probe alone, or readiness and liveness.
pub fn start_probes(unit: &mut Unit, phase: ProbeKind, channels: &ProbeChannels) {
    let Some(pid) = unit.pid else { return };
    let phase = match phase {
        ProbeKind::Startup if unit.spec.startup.is_none() => ProbeKind::Readiness,
        other => other,
    };
    let kinds: &[ProbeKind] = match phase {
        ProbeKind::Startup => &[ProbeKind::Startup],
        _ => &[ProbeKind::Readiness, ProbeKind::Liveness],
    };
    for &kind in kinds {
        let Some(probe) = probe_spec(&unit.spec, kind).cloned() else {
            continue;
        };
        match Check::from_probe(&probe, unit.listen.first().map(|s| s.as_str())) {
            Ok(check) => {
                let task = tokio::task::spawn_local(probes::run(
                    unit.name.clone(),
                    pid.as_raw(),
                    kind,
                    probe,
                    check,
                    channels.results.clone(),
                    channels.exec.clone(),
                ));
                unit.health.probe_tasks.push(task);
            }
            Err(e) => {
                error!("{}: {} probe: {e}", unit.name, kind.as_str());
                unit.health.last_probe = Some(format!("{}: {e}", kind.as_str()));
            }
        }
    }
}

/// What a probe result asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Nothing,
    /// The startup probe passed: readiness and liveness probes take over.
    StartReadiness,
    /// A startup or liveness probe failed its threshold: restart, for this reason.
    Restart(String),
}

/// Record a result for `unit`'s current process (the caller checked the pid).
pub fn on_probe_result(unit: &mut Unit, result: ProbeResult) -> ProbeOutcome {
    let Some(probe) = probe_spec(&unit.spec, result.kind).cloned() else {
        return ProbeOutcome::Nothing;
    };
    let track = match result.kind {
        ProbeKind::Startup => &mut unit.health.startup,
        ProbeKind::Readiness => &mut unit.health.readiness,
        ProbeKind::Liveness => &mut unit.health.liveness,
    };
    let error = result.outcome.clone().err();
    let verdict = track.record(
        error.is_none(),
        error.clone(),
        probe.success_threshold,
        probe.failure_threshold,
    );
    let kind = result.kind.as_str();
    unit.health.last_probe = Some(match &error {
        None => format!("{kind} ok"),
        Some(e) => format!("{kind}: {e}"),
    });
    let name = &unit.name;
    let error = error.unwrap_or_default();
    match (result.kind, verdict) {
        (ProbeKind::Startup, Verdict::NowPassing) => {
            for t in unit.health.probe_tasks.drain(..) {
                t.abort();
            }
            info!("{name}: startup probe passed");
            ProbeOutcome::StartReadiness
        }
        (ProbeKind::Startup | ProbeKind::Liveness, Verdict::NowFailing) => {
            let why = format!("{kind} probe failed: {error}");
            warn!("{name}: {why}; restarting");
            ProbeOutcome::Restart(why)
        }
        (ProbeKind::Readiness, Verdict::NowPassing) => {
            info!("{name}: ready (readiness probe passed)");
            ProbeOutcome::Nothing
        }
        (ProbeKind::Readiness, Verdict::NowFailing) => {
            warn!("{name}: not ready: {error}");
            ProbeOutcome::Nothing
        }
        _ => ProbeOutcome::Nothing,
    }
}

/// What a notify message asks of the loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NotifyOutcome {
    /// MAINPID= from the main process, naming another pid.
    pub main_pid: Option<i32>,
    /// READY=1 from a notify service: its probes start now.
    pub start_probes: Option<ProbeKind>,
    /// The watchdog deadline moves to now + this (READY=1 with none armed, WATCHDOG=1, WATCHDOG_USEC=),
    /// or is cleared (`Some(None)`).
    pub watchdog: Option<Option<Duration>>,
}

/// Apply `message`, sent by `unit`'s main process or one of its group. `watchdog_armed`: whether the
/// unit's watchdog deadline is running.
pub fn on_notification(
    unit: &mut Unit,
    message: &Notification,
    watchdog_armed: bool,
) -> NotifyOutcome {
    let mut outcome = NotifyOutcome {
        main_pid: message
            .get("MAINPID")
            .and_then(|v| v.trim().parse::<i32>().ok())
            .filter(|new| *new != message.pid)
            .filter(|_| unit.pid.is_some_and(|p| p.as_raw() == message.pid)),
        ..NotifyOutcome::default()
    };
    let health = &mut unit.health;
    if message.get("READY") == Some("1") && !health.notified_ready {
        health.notified_ready = true;
        info!("{}: READY=1", unit.name);
        if !watchdog_armed {
            outcome.watchdog = health.watchdog.map(Some);
        }
        if unit.spec.notify {
            outcome.start_probes = Some(first_probe(&unit.spec));
        }
    }
    if let Some(status) = message.get("STATUS") {
        health.status_text = Some(status.to_string());
    }
    if let Some(usec) = message
        .get("WATCHDOG_USEC")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        health.watchdog = (usec > 0).then(|| Duration::from_micros(usec));
    }
    if message.get("WATCHDOG") == Some("1") || message.get("WATCHDOG_USEC").is_some() {
        outcome.watchdog = Some(health.watchdog);
    }
    if message.get("STOPPING") == Some("1") {
        info!("{}: STOPPING=1", unit.name);
    }
    outcome
}

/// The unit a notify message comes from: the one whose main process sent it, or whose process group
/// the sender is in (a forking server's worker).
pub fn sender_unit(units: &BTreeMap<String, Unit>, sender: i32) -> Option<String> {
    let group = notify::process_group_of(sender);
    units
        .values()
        .find(|u| {
            u.pid.is_some_and(|p| p.as_raw() == sender)
                || (u.pid.is_some() && u.pgid.map(|g| g.as_raw()) == group)
        })
        .map(|u| u.name.clone())
}

/// The process group a new main pid's unit may signal as a whole: its own, unless another unit's
/// process leads it (`leads_a_unit`): a worker still in its template's group would take the template
/// down with it. Then only the process itself is signalled.
pub fn own_group(new_main: i32, leads_a_unit: impl Fn(i32) -> bool) -> Option<i32> {
    let group = notify::process_group_of(new_main)?;
    if group != new_main && leads_a_unit(group) {
        warn!("main pid {new_main} is in another service's process group {group}; only it will be signalled");
        return None;
    }
    Some(group)
}
