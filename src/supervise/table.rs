//! A hold on the supervisor's tables for the modules that carry out decisions (rollouts, process
//! reports): the units, the pid table and the timers, plus what they read. Machine events they imply go
//! to `events`, which the loop dispatches before it sleeps.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use nix::unistd::Pid;

use super::build::LogFiles;
use super::listeners::Listeners;
use super::state::Event;
use super::timers::Timers;
use super::unit::Unit;
use crate::config::Config;

/// What carrying out a decision may touch.
pub struct Table<'a> {
    pub units: &'a mut BTreeMap<String, Unit>,
    pub pids: &'a mut HashMap<Pid, String>,
    pub timers: &'a mut Timers,
    pub logs: &'a mut LogFiles,
    pub listeners: &'a Listeners,
    pub config: &'a Config,
    /// Machine events for the loop to dispatch.
    pub events: &'a mut VecDeque<(String, Event)>,
}

impl Table<'_> {
    /// Queue a machine event for the loop to dispatch.
    pub fn raise(&mut self, unit: &str, event: Event) {
        self.events.push_back((unit.to_string(), event));
    }
}
