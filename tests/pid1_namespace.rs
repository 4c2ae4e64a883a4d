//! stackinit as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc stackinit init`):
//! orphan reaping, ordered shutdown on SIGTERM and on the power button, early boot, and survival of a lost
//! main loop or a broken config. Needs root and util-linux (`unshare`, `nsenter`), and `ip` for one test.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{
    all_pids, children_of, nofile_of, poll_every, process_exists, process_state, wait_exit,
    Guarded, BIN,
};

/// A PID namespace running `stackinit init`; killed (with everything in it) when dropped.
struct Pid1 {
    unshare: Guarded,
    /// Host pid of the namespace's PID 1.
    host_pid: i32,
    dir: tempfile::TempDir,
}

/// Where PID 1 mounts fresh file systems in the early-boot test's namespace (src/init/mounts.rs): a test
/// directory below one of them would vanish for PID 1 and its services.
const MOUNTED_OVER: [&str; 5] = ["/tmp", "/run", "/dev", "/proc", "/sys"];

/// A fresh directory that PID 1 sees as the test does, wherever the checkout lives: in /var/tmp, which
/// early boot never mounts over (the target dir is no good: a checkout under /tmp puts it under /tmp).
fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("stackinit-pid1-")
        .tempdir_in("/var/tmp")
        .expect("temp dir in /var/tmp");
    let real = fs::canonicalize(dir.path()).expect("canonical test dir");
    assert!(
        !MOUNTED_OVER.iter().any(|m| real.starts_with(m)),
        "{} is below a mount point of early boot ({MOUNTED_OVER:?}): PID 1 would not see it",
        real.display()
    );
    dir
}

impl Pid1 {
    fn start(
        dir: tempfile::TempDir,
        config: &str,
        extra_unshare: &[&str],
        env: &[(&str, &str)],
    ) -> Pid1 {
        let config_path = dir.path().join("stackinit.toml");
        fs::write(&config_path, config).expect("write config");
        fs::create_dir_all(dir.path().join("input")).expect("input dir");
        let console = fs::File::create(dir.path().join("console.log")).expect("console file");
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(extra_unshare)
            .arg(BIN)
            .args(["init", "--config"])
            .arg(&config_path)
            .env("STACKINIT_NO_REBOOT", "1")
            .env("STACKINIT_INPUT_DIR", dir.path().join("input"))
            .env("STACKINIT_SOCKET", dir.path().join("control.sock"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console file"))
            .stderr(console);
        let unshare = Guarded::spawn(&mut command, "unshare (util-linux)");
        let children = format!("/proc/{0}/task/{0}/children", unshare.pid());
        let mut pid1 = Pid1 {
            unshare,
            host_pid: 0,
            dir,
        };
        pid1.host_pid = pid1.wait_for(
            "the namespace's PID 1 to appear",
            Duration::from_secs(10),
            || {
                fs::read_to_string(&children)
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            },
        );
        pid1
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn console(&self) -> String {
        fs::read_to_string(self.path("console.log")).unwrap_or_default()
    }

    /// Poll `check` until it gives a value; on timeout, fail with what PID 1 wrote on its console.
    fn wait_for<T>(&self, what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
        poll_every(Duration::from_millis(20), timeout, check).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}; console:\n{}",
                self.console()
            )
        })
    }

    fn wait_console(&self, needle: &str, timeout: Duration) {
        self.wait_for(&format!("{needle:?} on the console"), timeout, || {
            self.console().contains(needle).then_some(())
        });
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.host_pid), signal).expect("signal the namespace's PID 1");
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.unshare.child, timeout).unwrap_or_else(|| {
            panic!(
                "stackinit did not exit in {timeout:?}; console:\n{}",
                self.console()
            )
        })
    }

    /// Wait (30 s at most) for PID 1 to exit, which must be with success; its console.
    fn exit_cleanly(&mut self) -> String {
        let status = self.wait_exit(Duration::from_secs(30));
        let console = self.console();
        assert!(
            status.success(),
            "exit status {status}; console:\n{console}"
        );
        console
    }

    /// SIGTERM, then [`Pid1::exit_cleanly`].
    fn terminate(&mut self) -> String {
        self.signal(Signal::SIGTERM);
        self.exit_cleanly()
    }

    /// (processes, zombies) in the namespace, PID 1 included, seen from the host's /proc.
    fn census(&self) -> (usize, usize) {
        let Ok(ns) = fs::read_link(format!("/proc/{}/ns/pid", self.host_pid)) else {
            return (0, 0);
        };
        let states: Vec<char> = all_pids()
            .into_iter()
            .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() == Some(&ns))
            .filter_map(process_state)
            .collect();
        let zombies = states.iter().filter(|&&state| state == 'Z').count();
        (states.len(), zombies)
    }

    fn pid1_alive(&self) -> bool {
        process_exists(self.host_pid)
    }

    /// Run a shell snippet inside the namespace (a child of nsenter, so its orphans go to PID 1).
    fn run_inside(&self, script: &str) {
        let status = Command::new("nsenter")
            .args([
                "-t",
                &self.host_pid.to_string(),
                "-p",
                "--",
                "sh",
                "-c",
                script,
            ])
            .status()
            .expect("nsenter (util-linux) must be installed");
        assert!(status.success(), "nsenter sh -c {script:?}: {status}");
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        // SIGKILL to a namespace's PID 1 kills every process in it; the guard then reaps unshare.
        if self.host_pid > 0 && !self.unshare.exited() {
            let _ = kill(Pid::from_raw(self.host_pid), Signal::SIGKILL);
        }
    }
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `[init]` for a test: logs and control socket inside the test directory.
fn init_section(dir: &Path, extra: &str) -> String {
    format!(
        "[init]\nlogs_dir = \"{logs}\"\ncontrol_socket = \"{sock}\"\n{extra}\n",
        logs = dir.join("logs").display(),
        sock = dir.join("control.sock").display()
    )
}

/// A service that records its start, and on its stop signal appends its name to `stopped` and exits.
fn recording_service(dir: &Path, name: &str, after: &[&str]) -> String {
    let script = format!(
        "trap 'echo {name} >> {stopped}; exit 0' TERM; echo {name} >> {started}; \
         while :; do sleep 1 & wait $!; done",
        stopped = dir.join("stopped").display(),
        started = dir.join("started").display()
    );
    let after: Vec<String> = after.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[service.{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\nafter = [{}]\nstart_secs = \"200ms\"\nstop_grace = \"10s\"\n",
        after.join(", ")
    )
}

/// Three services in a chain: base <- app <- web. Stop order must be web, app, base.
fn chain_config(dir: &Path) -> String {
    [
        init_section(dir, ""),
        recording_service(dir, "base", &[]),
        recording_service(dir, "app", &["base"]),
        recording_service(dir, "web", &["app"]),
    ]
    .concat()
}

fn wait_all_started(pid1: &Pid1, count: usize) {
    pid1.wait_for("every service to start", Duration::from_secs(20), || {
        (lines(&pid1.path("started")).len() >= count).then_some(())
    });
    // Give the last one its start_secs so it counts as running before we stop it.
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn reaps_a_thousand_orphans_and_leaves_no_zombies() {
    let dir = test_dir();
    let done = dir.path().join("orphans-done");
    // Each `(sleep 0.2 &)` subshell exits at once, so its sleep is orphaned to PID 1 and dies 0.2 s later.
    let script = format!(
        "i=0; while [ $i -lt 1000 ]; do (sleep 0.2 &); i=$((i+1)); done; touch {}; exec sleep 1000",
        done.display()
    );
    let config = format!(
        "{}[service.orphans]\ncommand = [\"sh\", \"-c\", {script:?}]\nstart_secs = \"0s\"\n",
        init_section(dir.path(), "")
    );
    let mut pid1 = Pid1::start(dir, &config, &[], &[]);
    pid1.wait_for(
        "1000 orphans to be created",
        Duration::from_secs(60),
        || done.exists().then_some(()),
    );
    let made_at = Instant::now();
    // Every orphan has died 0.2 s after the last was made; all must be reaped, leaving only PID 1 and the
    // service's `sleep 1000`.
    let (processes, zombies) =
        pid1.wait_for("every orphan to be reaped", Duration::from_secs(15), || {
            let (processes, zombies) = pid1.census();
            (zombies == 0 && processes <= 3).then_some((processes, zombies))
        });
    eprintln!(
        "1000 orphans: namespace back to {processes} processes, {zombies} zombies, {:?} after the last was made",
        made_at.elapsed()
    );
    assert!(pid1.pid1_alive());
    pid1.terminate();
}

#[test]
fn sigterm_stops_services_in_reverse_dependency_order_and_exits_zero() {
    let dir = test_dir();
    let config = chain_config(dir.path());
    let mut pid1 = Pid1::start(dir, &config, &[], &[]);
    wait_all_started(&pid1, 3);
    assert_eq!(
        lines(&pid1.path("started")),
        ["base", "app", "web"],
        "start order"
    );
    let console = pid1.terminate();
    assert_eq!(
        lines(&pid1.path("stopped")),
        ["web", "app", "base"],
        "stop order; console:\n{console}"
    );
    // One console line per final step, each with its time.
    for step in [
        "final power-off sequence",
        "synced file systems",
        "exiting instead of power-off",
    ] {
        assert!(
            console.contains(step),
            "missing {step:?} in console:\n{console}"
        );
    }
    assert!(
        console.contains("shutdown: [   0."),
        "steps carry their time:\n{console}"
    );
    assert_eq!(pid1.census(), (0, 0), "nothing may survive PID 1");
}

#[test]
fn power_button_press_runs_the_same_ordered_shutdown() {
    let dir = test_dir();
    let fifo = dir.path().join("input/event0");
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let config = chain_config(dir.path());
    let mut pid1 = Pid1::start(dir, &config, &[], &[]);
    wait_all_started(&pid1, 3);
    // Opening for write without blocking fails (ENXIO) until stackinit has the FIFO open for reading.
    let mut device = pid1.wait_for(
        "stackinit to open the fake input device",
        Duration::from_secs(10),
        || {
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .ok()
        },
    );
    // struct input_event on x86_64: 16-byte timeval, u16 type, u16 code, i32 value.
    let event = |kind: u16, code: u16, value: i32| {
        let mut bytes = vec![0u8; 16];
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.extend_from_slice(&value.to_ne_bytes());
        bytes
    };
    const EV_SYN: u16 = 0;
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let press = [
        event(EV_KEY, KEY_POWER, 1),
        event(EV_SYN, 0, 0),
        event(EV_KEY, KEY_POWER, 0),
        event(EV_SYN, 0, 0),
    ];
    device.write_all(&press.concat()).unwrap();
    drop(device);
    let console = pid1.exit_cleanly();
    assert_eq!(
        lines(&pid1.path("stopped")),
        ["web", "app", "base"],
        "stop order; console:\n{console}"
    );
    assert!(
        console.contains("final power-off sequence"),
        "console:\n{console}"
    );
}

#[test]
fn a_panicking_main_loop_leaves_pid1_running_and_reaping() {
    let dir = test_dir();
    let config = [
        init_section(dir.path(), ""),
        recording_service(dir.path(), "worker", &[]),
    ]
    .concat();
    let mut pid1 = Pid1::start(dir, &config, &[], &[("STACKINIT_TEST_PANIC", "init-loop")]);
    pid1.wait_console("FALLBACK", Duration::from_secs(20));
    assert!(
        pid1.console().contains("injected failure"),
        "the panic is on the console:\n{}",
        pid1.console()
    );
    assert!(pid1.pid1_alive(), "PID 1 must survive its main loop");
    // Orphans created after the panic must still be reaped.
    pid1.run_inside("i=0; while [ $i -lt 300 ]; do (sleep 0.1 &); i=$((i+1)); done");
    pid1.wait_for(
        "orphans made after the panic to be reaped",
        Duration::from_secs(15),
        || {
            let (processes, zombies) = pid1.census();
            // PID 1, plus the still running but unsupervised worker (sh and its sleep).
            (zombies == 0 && processes <= 4).then_some(())
        },
    );
    assert!(pid1.pid1_alive());
    // The fallback still honours SIGTERM: everything is stopped and the namespace's PID 1 exits cleanly.
    let console = pid1.terminate();
    assert!(
        console.contains("final power-off sequence"),
        "console:\n{console}"
    );
    assert_eq!(
        lines(&pid1.path("stopped")),
        ["worker"],
        "the worker got its SIGTERM; console:\n{console}"
    );
}

#[test]
fn a_broken_config_leaves_pid1_reaping_and_says_why() {
    let dir = test_dir();
    let config = format!(
        "{}[service.web]\ncommand = [\"true\"]\nbogus_key = 1\n",
        init_section(dir.path(), "")
    );
    let mut pid1 = Pid1::start(dir, &config, &[], &[]);
    pid1.wait_console("FALLBACK", Duration::from_secs(10));
    let console = pid1.console();
    assert!(console.contains("config is invalid"), "console:\n{console}");
    assert!(
        console.contains("stackinit.toml:"),
        "errors name the file:\n{console}"
    );
    pid1.run_inside("i=0; while [ $i -lt 100 ]; do (sleep 0.1 &); i=$((i+1)); done");
    pid1.wait_for("orphans to be reaped", Duration::from_secs(15), || {
        (pid1.census() == (1, 0)).then_some(())
    });
    pid1.terminate();
}

#[test]
fn early_boot_mounts_sets_the_hostname_and_brings_up_lo() {
    let dir = test_dir();
    let config = [
        init_section(dir.path(), "hostname = \"pid1-test.example\""),
        recording_service(dir.path(), "base", &[]),
    ]
    .concat();
    // Own mount, UTS and network namespaces, so none of this touches the host.
    let mut pid1 = Pid1::start(
        dir,
        &config,
        &["--mount", "--uts", "--net"],
        &[("STACKINIT_EARLY_BOOT", "1")],
    );
    wait_all_started(&pid1, 1);
    let target = pid1.host_pid.to_string();
    let hostname = Command::new("nsenter")
        .args(["-t", &target, "-u", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hostname.stdout).trim(),
        "pid1-test.example"
    );
    let lo = Command::new("nsenter")
        .args(["-t", &target, "-n", "ip", "-o", "link", "show", "lo"])
        .output()
        .expect("ip (iproute2) must be installed");
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(lo.contains(",UP") || lo.contains("<UP"), "lo is up: {lo}");
    let mountinfo = fs::read_to_string(format!("/proc/{}/mountinfo", pid1.host_pid)).unwrap();
    for (mount_point, fs_type) in [
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/dev/shm", "tmpfs"),
        ("/proc", "proc"),
    ] {
        let found = mountinfo.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fs = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next());
            fields.get(4) == Some(&mount_point) && fs == Some(fs_type)
        });
        assert!(
            found,
            "{mount_point} ({fs_type}) in the namespace:\n{mountinfo}"
        );
    }
    pid1.terminate();
}

/// An ext4 file system in a file, attached to a loop device for the life of the test.
struct LoopDisk {
    device: String,
}

impl LoopDisk {
    fn new(image: &Path, uuid: &str, label: &str) -> LoopDisk {
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-U", uuid, "-L", label])
            .arg(image)
            .arg("8M")
            .status()
            .expect("mkfs.ext4 (e2fsprogs) must be installed");
        assert!(made.success(), "mkfs.ext4 failed");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("losetup (util-linux) must be installed");
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDisk { device }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

/// The file system type and source mounted at `mount_point` in `pid`'s mount namespace.
fn mounted_at(pid: i32, mount_point: &Path) -> Option<(String, String)> {
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let tail: Vec<&str> = line.split(" - ").nth(1)?.split(' ').collect();
        if Path::new(fields.get(4)?) != mount_point {
            return None;
        }
        Some((tail.first()?.to_string(), tail.get(1)?.to_string()))
    })
}

#[test]
fn early_boot_mounts_fstab_entries_by_uuid_and_label_and_goes_on_past_missing_ones() {
    let dir = test_dir();
    let root = fs::canonicalize(dir.path()).expect("canonical dir");
    let uuid = "3f1c2b4a-5d6e-4f70-8a9b-0c1d2e3f4a5b";
    let disk = LoopDisk::new(&root.join("data.img"), uuid, "stackdata");
    let logs_disk = LoopDisk::new(
        &root.join("logs.img"),
        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        "stacklogs",
    );
    let fstab = format!(
        "# an AMI's fstab: its data volume by UUID and by label, scratch space, and two that cannot mount
UUID={uuid}  {r}/data  ext4  defaults,nofail  0 2
LABEL=stacklogs  {r}/by-label  ext4  ro,noatime  0 2
tmpfs  {r}/scratch  tmpfs  size=1m,mode=0700,nosuid  0 0
LABEL=no-such-volume  {r}/optional  ext4  defaults,nofail  0 2
/dev/no-such-disk  {r}/required  ext4  defaults  0 2
/swapfile none swap sw 0 0
",
        r = root.display()
    );
    fs::write(root.join("fstab"), fstab).expect("write fstab");
    let config = [
        init_section(&root, ""),
        recording_service(&root, "base", &[]),
    ]
    .concat();
    let fstab_path = root.join("fstab").display().to_string();
    let mut pid1 = Pid1::start(
        dir,
        &config,
        &["--mount", "--uts", "--net"],
        &[
            ("STACKINIT_EARLY_BOOT", "1"),
            ("STACKINIT_FSTAB", &fstab_path),
        ],
    );
    // Boot went on past the entries that cannot mount: the service started.
    wait_all_started(&pid1, 1);
    let pid = pid1.host_pid;
    assert_eq!(
        mounted_at(pid, &root.join("data")),
        Some(("ext4".into(), disk.device.clone())),
        "{}",
        pid1.console()
    );
    assert_eq!(
        mounted_at(pid, &root.join("by-label")),
        Some(("ext4".into(), logs_disk.device.clone()))
    );
    assert_eq!(
        mounted_at(pid, &root.join("scratch")).map(|m| m.0),
        Some("tmpfs".into())
    );
    assert_eq!(mounted_at(pid, &root.join("optional")), None);
    let console = pid1.console();
    for said in [
        format!("mounted {}/data (UUID={uuid}, ext4)", root.display()),
        format!(
            "not mounted: {}/optional from LABEL=no-such-volume: no device with LABEL=no-such-volume (nofail)",
            root.display()
        ),
        format!(
            "could not mount {}/required from /dev/no-such-disk (fstab line 6)",
            root.display()
        ),
    ] {
        assert!(console.contains(&said), "console lacks {said:?}:\n{console}");
    }
    // The host saw none of it.
    assert_eq!(
        mounted_at(std::process::id() as i32, &root.join("data")),
        None
    );
    pid1.terminate();
}

/// Whether this process may raise hard limits (CAP_SYS_RESOURCE, bit 24 of CapEff); a container may
/// not grant it.
fn may_raise_hard_limits() -> bool {
    let status = fs::read_to_string("/proc/self/status").expect("proc status");
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff");
    caps & (1 << 24) != 0
}

/// Started with the kernel's 1024 soft limit, PID 1 raises its own soft limit to its hard limit, and the
/// hard limit to fs.nr_open where it may; its services keep 1024 under the raised hard limit.
#[test]
fn as_pid1_the_file_limit_is_raised_and_services_keep_their_soft_limit() {
    let dir = test_dir();
    let config = [
        init_section(dir.path(), ""),
        recording_service(dir.path(), "base", &[]),
    ]
    .concat();
    let hard = nofile_of(std::process::id()).1;
    let prlimit = format!("--nofile=1024:{hard}");
    // unshare's child is prlimit, which execs stackinit: PID 1 of the namespace.
    let mut pid1 = Pid1::start(dir, &config, &["prlimit", &prlimit], &[]);
    wait_all_started(&pid1, 1);
    let nr_open: u64 = fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("fs.nr_open")
        .trim()
        .parse()
        .expect("a number");
    let raised = if may_raise_hard_limits() {
        nr_open
    } else {
        hard
    };
    assert_eq!(nofile_of(pid1.host_pid as u32), (raised, raised), "PID 1");
    let service = children_of(pid1.host_pid as u32)
        .into_iter()
        .map(|(pid, _)| nofile_of(pid))
        .next()
        .expect("the service's process");
    assert_eq!(service, (1024, raised), "the service keeps the soft limit");
    pid1.wait_console(
        &format!("open file limit raised from 1024:{hard} to {raised}:{raised}"),
        Duration::from_secs(5),
    );
    pid1.terminate();
}

/// The image's user-data job under PID 1: the overlay it fetched is refused when init reloads with it, which
/// init says on its console (its stderr) with the error located in the overlay, and the baked config runs.
#[test]
fn a_refused_user_data_overlay_is_said_on_the_console() {
    let dir = test_dir();
    let source = dir.path().join("launch-user-data");
    fs::write(&source, "[service.web]\nreplicas = \"two\"\n").expect("user data");
    let imds = support::e2e::FakeImds::start_with_user_data(&[], Some(&source));
    let overlay = dir.path().join("user-data.toml");
    let config = format!(
        "{}[init.imds]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\ntimeout = \"5s\"\n\
         [service.user-data]\ncommand = [\"stackinit\", \"user-data\", \"--config\", \"{}\"]\noneshot = true\n\
         [service.web]\ncommand = [\"sleep\", \"100000\"]\nafter = [\"user-data\"]\nstart_secs = \"100ms\"\n",
        init_section(dir.path(), &format!("user_data = \"{}\"", overlay.display())),
        imds.port,
        dir.path().join("stackinit.toml").display(),
    );
    let mut pid1 = Pid1::start(dir, &config, &[], &[]);
    let expected = format!("{}:2:12: service.web.replicas", overlay.display());
    pid1.wait_console(
        &format!(
            "user data {} refused; running the baked config without it:\n{expected}",
            overlay.display()
        ),
        Duration::from_secs(20),
    );
    let socket = pid1.path("control.sock");
    let status = pid1.wait_for("web running", Duration::from_secs(15), || {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(&socket)
            .args(["status", "--json"])
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let web = json["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "web")?
            .clone();
        (web["state"] == "running").then_some(json)
    });
    assert_eq!(status["user_data"]["applied"], false, "{status}");
    pid1.terminate();
}
