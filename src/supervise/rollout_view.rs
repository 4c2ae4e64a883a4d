//! The unit table as a rolling restart sees it (`rollout::RolloutView`): read-only.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Instant;

use super::listeners::Listeners;
use super::rollout::{ReplicaView, RolloutView};
use super::unit::Unit;
use crate::config::Config;

pub struct UnitsView<'a> {
    pub units: &'a BTreeMap<String, Unit>,
    pub listeners: &'a Listeners,
    pub config: &'a Config,
}

impl RolloutView for UnitsView<'_> {
    fn replica(&self, name: &str) -> Option<ReplicaView> {
        let u = self.units.get(name)?;
        let why = u.status(Instant::now()).reason;
        Some(ReplicaView {
            pid: u.pid.map(|p| p.as_raw()),
            ready: u.is_ready(),
            down: u.is_down(),
            why: why.unwrap_or_else(|| format!("state {}", u.machine.state.as_str())),
        })
    }

    fn free_addresses(&self, service: &str) -> Option<Vec<String>> {
        self.listeners
            .free_addresses(self.config, service, self.units.values())
    }
}
