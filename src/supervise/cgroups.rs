//! A cgroup v2 per unit, under stackinit's own subtree: the machine's root cgroup as PID 1, the cgroup
//! systemd delegated to it (`Delegate=yes`) otherwise. A unit's processes join it before exec, so a
//! daemonising child cannot escape a stop (`cgroup.kill`), and its usage is read from it on demand.
//!
//! Where there is no cgroup2 mount, or it cannot be written, stackinit runs as before (process groups)
//! and only services that asked for a limit fail to start, with the reason.
#![forbid(unsafe_code)]

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::api::Usage;
use crate::config::ServiceSpec;

/// The subtree the units' cgroups live in, if cgroups can be used here.
#[derive(Debug, Default)]
pub struct Cgroups {
    root: Option<PathBuf>,
    /// The cgroup stackinit was started in, which hands controllers down to the units' subtree: the
    /// hierarchy's root as PID 1, or the one systemd delegated (`Delegate=yes`), which must then hold no
    /// process (stackinit moves itself into a leaf of it).
    parent: Option<PathBuf>,
}

impl Cgroups {
    /// Find the cgroup2 mount and this process's cgroup in it, and make the units' subtree there.
    pub fn discover(pid1: bool) -> Cgroups {
        let Some((mount, own)) = unified_mount().zip(own_cgroup()) else {
            info!("no cgroup v2 hierarchy; services are process groups only");
            return Cgroups::default();
        };
        let own_dir = mount.join(own.trim_start_matches('/'));
        let name = if pid1 {
            "stackinit".to_string()
        } else {
            format!("stackinit-{}", std::process::id())
        };
        let root = own_dir.join(name);
        if let Err(e) = fs::create_dir_all(&root) {
            info!(
                "no cgroups for services ({}: {e}); process groups only",
                root.display()
            );
            return Cgroups::default();
        }
        debug!("services' cgroups under {}", root.display());
        let parent = if own == "/" {
            Some(own_dir)
        } else {
            move_self_to_leaf(&own_dir)
        };
        let cgroups = Cgroups {
            root: Some(root),
            parent,
        };
        // Memory and task accounting for every unit, as systemd's defaults (MemoryAccounting=,
        // TasksAccounting=): status shows memory and pids, and an OOM kill is seen in the process's own
        // cgroup. Best effort: a hierarchy without them still runs services.
        for controller in ACCOUNTING {
            let _ = cgroups.enable_controller(controller);
        }
        cgroups
    }

    pub fn dir(&self, unit: &str) -> Option<PathBuf> {
        Some(self.root.as_ref()?.join(unit))
    }

    /// A fresh cgroup for one process of `unit` (`<unit>/<seq>`, below the unit's cgroup that carries its
    /// limits), and its `cgroup.procs` opened for the child to join before exec. Each process gets its
    /// own, so what a crashed process left behind can be killed without touching its replacement.
    /// None without cgroups; an error when a limit cannot be applied.
    pub fn prepare(
        &self,
        unit: &str,
        spec: &ServiceSpec,
        seq: u64,
    ) -> Result<Option<(PathBuf, fs::File)>, String> {
        let limits = limits_of(spec);
        let Some(dir) = self.dir(unit) else {
            return match limits.first() {
                Some((key, _, _)) => Err(format!(
                    "{key} needs a cgroup v2 hierarchy, and none is writable here"
                )),
                None => Ok(None),
            };
        };
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (key, file, value) in &limits {
            self.enable_controller(controller_of(file))
                .map_err(|why| format!("{key}: {why}"))?;
            fs::write(dir.join(file), value)
                .map_err(|e| format!("{key}: cannot write {value:?} to {file}: {e}"))?;
        }
        remove_empty_children(&dir);
        hand_down_controllers(&dir);
        let leaf = dir.join(seq.to_string());
        fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(leaf.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", leaf.display()))?;
        Ok(Some((leaf, procs)))
    }

    /// Make `controller` available to the units' cgroups, or say why it cannot be.
    fn enable_controller(&self, controller: &str) -> Result<(), String> {
        let Some(root) = &self.root else {
            return Err("no cgroup v2 hierarchy".into());
        };
        let enable = format!("+{controller}");
        if let Some(own) = &self.parent {
            // Our own cgroup first: it hands the controller to the units' subtree.
            let _ = fs::write(own.join("cgroup.subtree_control"), &enable);
        }
        let offered = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        if !offered.split_whitespace().any(|c| c == controller) {
            return Err(format!(
                "the {controller} controller is not available in {} (a cgroup v1 layout holds it?)",
                root.display()
            ));
        }
        fs::write(root.join("cgroup.subtree_control"), &enable)
            .map_err(|e| format!("cannot enable the {controller} controller: {e}"))
    }
}

/// Controllers enabled for every unit where the hierarchy offers them.
const ACCOUNTING: [&str; 2] = ["memory", "pids"];

/// Give a unit's process cgroups every controller the unit's cgroup has: the limits stay on the unit's
/// cgroup and cover them all, while each process's own cgroup counts its usage and its OOM kills
/// (`memory.events` exists only where the memory controller is on). The unit's cgroup holds no process
/// itself, so this is allowed; a controller that cannot be handed down only loses its per-process figures.
fn hand_down_controllers(dir: &Path) {
    let offered = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in offered.split_whitespace() {
        if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}")) {
            debug!("{}: cannot hand down {controller}: {e}", dir.display());
        }
    }
}

/// SIGKILL every process in a process's cgroup, however it daemonised.
pub fn kill(leaf: &Path) {
    match fs::write(leaf.join("cgroup.kill"), "1") {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot kill cgroup {}: {e}", leaf.display()),
    }
}

/// Whether processes are left in a cgroup.
pub fn populated(leaf: &Path) -> bool {
    fs::read_to_string(leaf.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
}

/// How many times the kernel's OOM killer struck in a cgroup (its `memory.events`).
pub fn oom_kills(leaf: &Path) -> u64 {
    fs::read_to_string(leaf.join("memory.events"))
        .ok()
        .and_then(|events| {
            events
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Send `signal` to every process in a cgroup (what a process group misses: daemonised children).
pub fn signal(leaf: &Path, signal: nix::sys::signal::Signal) {
    let procs = fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Remove a process's cgroup once it is empty.
pub fn remove(leaf: &Path) {
    if !populated(leaf) {
        let _ = fs::remove_dir(leaf);
    }
}

/// A process's usage, from its cgroup's files (read now: nothing is sampled in between).
pub fn usage(dir: &Path) -> Usage {
    let number = |file: &str| -> Option<u64> {
        fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
    };
    let cpu_usec = fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
    Usage {
        cpu_seconds: cpu_usec.map(|us: u64| us as f64 / 1e6),
        memory_bytes: number("memory.current"),
        memory_peak_bytes: number("memory.peak"),
        pids: number("pids.current"),
        oom_kills: dir.join("memory.events").exists().then(|| oom_kills(dir)),
    }
}

impl Cgroups {
    /// At exit: the units' cgroups and the subtree. A cgroup.kill is asynchronous, so what it killed may
    /// still be leaving: try again for up to half a second (at exit only) rather than leave them behind.
    pub async fn remove_all(&self) {
        let Some(root) = &self.root else { return };
        for _ in 0..20 {
            for unit in children(root) {
                remove_empty_children(&unit);
                let _ = fs::remove_dir(unit);
            }
            if fs::remove_dir(root).is_ok() || !root.exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        warn!("{} still holds processes; left in place", root.display());
    }
}

fn children(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Earlier processes' cgroups that nothing is left in.
fn remove_empty_children(dir: &Path) {
    for child in children(dir) {
        remove(&child);
    }
}

/// The limits a spec asks for: (config key, cgroup file, value written).
fn limits_of(spec: &ServiceSpec) -> Vec<(&'static str, &'static str, String)> {
    let mut limits = Vec::new();
    if let Some(bytes) = spec.memory_max {
        limits.push(("memory_max", "memory.max", bytes.0.to_string()));
    }
    if let Some(bytes) = spec.memory_high {
        limits.push(("memory_high", "memory.high", bytes.0.to_string()));
    }
    if let Some(weight) = spec.cpu_weight {
        limits.push(("cpu_weight", "cpu.weight", weight.to_string()));
    }
    if let Some(percent) = spec.cpu_max {
        // Percent of one CPU per 100 ms period, as systemd's CPUQuota=.
        let quota = u64::from(percent.0) * 1000;
        limits.push(("cpu_max", "cpu.max", format!("{quota} 100000")));
    }
    if let Some(pids) = spec.pids_max {
        limits.push(("pids_max", "pids.max", pids.to_string()));
    }
    if let Some(weight) = spec.io_weight {
        limits.push(("io_weight", "io.weight", format!("default {weight}")));
    }
    limits
}

/// `memory.max` -> `memory`.
fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// Under a delegated cgroup, stackinit moves itself into `<own>/supervisor`, so `<own>` holds no process
/// and may hand controllers down (cgroup v2's no-internal-process rule). Returns `<own>` when it did.
fn move_self_to_leaf(own: &Path) -> Option<PathBuf> {
    let leaf = own.join("supervisor");
    let moved = fs::create_dir_all(&leaf)
        .and_then(|()| fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()));
    match moved {
        Ok(()) => Some(own.to_path_buf()),
        Err(e) => {
            info!(
                "stays in {} ({e}); limits may not be available",
                own.display()
            );
            None
        }
    }
}

/// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` in a hybrid layout).
fn unified_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let fs_type = line.split(" - ").nth(1)?.split(' ').next()?;
        let mount_point = line.split(' ').nth(4)?;
        (fs_type == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// This process's cgroup in the unified hierarchy (the `0::` line of /proc/self/cgroup).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bytes, ServiceSpec};

    #[test]
    fn limits_map_to_cgroup_files_as_systemd_writes_them() {
        let spec = ServiceSpec {
            memory_max: Some(Bytes(64 << 20)),
            cpu_max: Some(crate::config::Percent(50)),
            pids_max: Some(100),
            io_weight: Some(200),
            ..ServiceSpec::default()
        };
        assert_eq!(
            limits_of(&spec),
            vec![
                ("memory_max", "memory.max", (64u64 << 20).to_string()),
                ("cpu_max", "cpu.max", "50000 100000".to_string()),
                ("pids_max", "pids.max", "100".to_string()),
                ("io_weight", "io.weight", "default 200".to_string()),
            ]
        );
        assert!(limits_of(&ServiceSpec::default()).is_empty());
        assert_eq!(controller_of("memory.max"), "memory");
    }

    #[test]
    fn without_cgroups_only_a_service_asking_for_a_limit_fails() {
        let none = Cgroups::default();
        assert!(matches!(
            none.prepare("app", &ServiceSpec::default(), 1),
            Ok(None)
        ));
        let limited = ServiceSpec {
            pids_max: Some(10),
            ..ServiceSpec::default()
        };
        let err = none.prepare("app", &limited, 1).expect_err("must refuse");
        assert!(
            err.starts_with("pids_max needs a cgroup v2 hierarchy"),
            "{err}"
        );
    }
}
