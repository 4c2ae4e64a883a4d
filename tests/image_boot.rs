//! The golden image, built and booted for real through its firmware and bootloader (issues 6 and 13).
//!
//! `packer build -only=null.local` builds the local image with the binary under test (debootstrapped root,
//! cached under `/var/cache/stackinit-image` or `$STACKINIT_IMAGE_CACHE`, `image/install.sh` in a chroot),
//! as one GPT disk with GRUB for BIOS and UEFI; a second build makes the read-only-root variant. Clones are
//! copy-on-write overlays over a built disk, booted under QEMU TCG from NVMe, with user-mode networking
//! (`restrict=on`, HTTP and SSH forwarded from 127.0.0.1) and each its own fake IMDS reached through
//! `guestfwd` (tests/support/image_imds.py, spawned per guest connection), which also hands out the test's
//! SSH key as `public-keys/0/openssh-key`.
//!
//! First, two clones of one image: A through SeaBIOS, on a volume 512 MiB larger than the image and with a
//! second volume labelled `stackinit-data`; B through OVMF (UEFI). Both must boot GRUB's `ro` command line
//! into a read-write root (fstab), become healthy, serve the Django page under their own EC2 names and refuse
//! the other's, run sshd, chronyd and the serial getty, and let the test in over SSH with the key from IMDS
//! to run `stackinit status`. A must have grown its root and mounted the data volume; the two must differ
//! in host keys and machine id. Then A is booted again as the same instance (same disk, same IMDS) beside C,
//! a clone of the read-only variant: A keeps its host keys and machine id and its first-boot job does
//! nothing; C serves with a read-only root and its logs on a tmpfs. Every boot ends with the power button
//! (QMP `system_powerdown`): an ordered stop and a power-off within the drain + grace budget.
//!
//! Needs root, packer, qemu-system-x86, qemu-utils, ovmf, debootstrap, e2fsprogs, gdisk, dosfstools, mtools
//! and openssh-client (scripts/test installs them). A missing tool fails the test; it never skips. Every VM
//! is killed by pid and every temp dir removed, also when an assertion fails.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::http::get;
use support::{free_port, poll_every, repo, temp_dir, Guarded, BIN};

/// From QEMU start to `/healthz` 200. Quiet runs take 1–2 minutes under TCG; contended CI runs much longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// From `/healthz` 200 to every machine service (sshd, chronyd, the getty) running and ready.
const SERVICES_TIMEOUT: Duration = Duration::from_secs(300);
/// Power button to QEMU exit: the image's drain (25 s, for an ALB's health checks) + the longest stop_grace
/// (app, 40 s) + final shutdown, plus slack for TCG. A guest that ignores the button never exits and fails this.
const POWEROFF_BUDGET: Duration = Duration::from_secs(115);
/// How much larger than the image A's volume is: its first boot grows the root by this much.
const GROW_MIB: u64 = 512;
/// UEFI firmware for QEMU (Debian's `ovmf`): a single image, so no per-VM variable store is needed (the
/// disk boots by the removable-media path, with no NVRAM entry).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
const SSH_USER: &str = "admin";

const NAME_A: &str = "ec2-198-51-100-10.compute-1.amazonaws.com";
const NAME_B: &str = "ec2-203-0-113-20.us-west-2.compute.amazonaws.com";
const NAME_C: &str = "ec2-192-0-2-30.eu-west-1.compute.amazonaws.com";

/// The units every booted image must have running and ready.
const RUNNING: [&str; 8] = [
    "app@0",
    "app@1",
    "app@2",
    "proxy",
    "dhcp",
    "sshd",
    "chronyd",
    "console-getty",
];

fn require_tools() {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    let missing: Vec<&str> = [
        "packer",
        "qemu-system-x86_64",
        "qemu-img",
        "debootstrap",
        "mkfs.ext4",
        "sgdisk",
        "mkfs.fat",
        "mcopy",
        "ssh",
        "ssh-keygen",
        "ssh-keyscan",
        "python3",
        "haproxy",
    ]
    .into_iter()
    .filter(|tool| !dirs.iter().any(|d| d.join(tool).is_file()))
    .collect();
    assert!(
        missing.is_empty(),
        "missing tools for the image boot test: {missing:?} (apt-get install packer qemu-system-x86 \
         qemu-utils debootstrap e2fsprogs gdisk dosfstools mtools openssh-client; scripts/test does it)"
    );
    assert!(
        Path::new(OVMF).is_file(),
        "no UEFI firmware at {OVMF} (apt-get install ovmf; scripts/test does it)"
    );
    assert!(
        nix_is_root(),
        "the image build needs root (debootstrap, chroot, mounts)"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// `packer`, never phoning home (HashiCorp's checkpoint service): tests reach only loopback.
fn packer() -> Command {
    let mut cmd = Command::new("packer");
    cmd.current_dir(repo())
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1");
    cmd
}

/// A built disk and what the build says about it (`image.env`).
struct Image {
    disk: PathBuf,
    env: HashMap<String, String>,
}

impl Image {
    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("image.env has no {key}: {:?}", self.env))
    }
}

fn build_image(out: &Path, root_mode: &str) -> Image {
    build_image_of(out, root_mode, None)
}

/// `build_image` with another app than the sample (`-var app_dir=`).
fn build_image_of(out: &Path, root_mode: &str, app_dir: Option<&Path>) -> Image {
    // Outside the checkout by default: CI runs in a fresh clone each time, and the debootstrapped tree
    // (keyed by its inputs) is what makes a run take seconds instead of minutes.
    let cache = std::env::var_os("STACKINIT_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/stackinit-image"));
    let started = Instant::now();
    let output = packer()
        .args(["build", "-color=false", "-only=null.local"])
        .arg(format!("-var=binary={BIN}"))
        .arg(format!("-var=repo_dir={}", repo().display()))
        .arg(format!("-var=output_dir={}", out.display()))
        .arg(format!("-var=cache_dir={}", cache.display()))
        .arg("-var=boot_mode=pid1")
        .arg(format!("-var=root_mode={root_mode}"))
        .arg(format!(
            "-var=app_dir={}",
            app_dir.map(|d| d.display().to_string()).unwrap_or_default()
        ))
        .arg("packer/")
        .stdin(Stdio::null())
        .output()
        .expect("run packer");
    let log = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "packer build failed:\n{log}");
    eprintln!(
        "image ({root_mode} root) built in {:.0} s:\n{}",
        started.elapsed().as_secs_f64(),
        log.lines()
            .filter(|l| l.contains("build-local:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let env: HashMap<String, String> = std::fs::read_to_string(out.join("image.env"))
        .expect("image.env written")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    let image = Image {
        disk: out.join("disk.raw"),
        env,
    };
    // GRUB boots Debian's way, read-only with the root by UUID; fstab then decides.
    let cmdline = image.var("CMDLINE");
    let root = format!("root=UUID={} ro ", image.var("ROOT_UUID"));
    for needle in [root.as_str(), "init=/usr/local/bin/stackinit"] {
        assert!(cmdline.contains(needle), "{needle} in {cmdline}");
    }
    image
}

/// A clone's volume: a copy-on-write overlay over the built disk (which stays untouched), `grow_mib` larger.
fn clone_disk(image: &Image, path: &Path, grow_mib: u64) -> PathBuf {
    let size = std::fs::metadata(&image.disk).expect("disk.raw").len() + grow_mib * 1024 * 1024;
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&image.disk)
        .arg(path)
        .arg(size.to_string())
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img create failed");
    path.to_path_buf()
}

/// An empty ext4 volume labelled as the image's fstab expects of its optional data volume.
fn data_volume(path: &Path) -> PathBuf {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(64 * 1024 * 1024))
        .expect("data volume file");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "stackinit-data"])
        .arg(path)
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success(), "mkfs.ext4 of the data volume failed");
    path.to_path_buf()
}

/// The key the test logs in with; IMDS hands its public half to every clone.
struct SshKey {
    private: PathBuf,
    public: String,
}

impl SshKey {
    fn generate(dir: &Path) -> SshKey {
        let private = dir.join("id_ed25519");
        let status = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "image-boot-test",
                "-f",
            ])
            .arg(&private)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success(), "ssh-keygen failed");
        let public = std::fs::read_to_string(private.with_extension("pub"))
            .expect("public key")
            .trim()
            .to_string();
        SshKey { private, public }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    /// SeaBIOS, QEMU's default: GRUB's core.img from the BIOS boot partition.
    Bios,
    /// OVMF: GRUB's \EFI\BOOT\BOOTX64.EFI from the EFI system partition.
    Uefi,
}

struct VmSpec<'a> {
    name: &'static str,
    firmware: Firmware,
    disk: &'a Path,
    data: Option<&'a Path>,
    facts: serde_json::Value,
}

/// One QEMU guest. Dropping it kills QEMU by pid (if still running) and reaps it.
struct Vm {
    name: &'static str,
    qemu: Guarded,
    dir: PathBuf,
    http_port: u16,
    ssh_port: u16,
    key: PathBuf,
    started: Instant,
}

impl Vm {
    fn boot(spec: VmSpec, dir: &Path, key: &SshKey) -> Vm {
        Vm::boot_on(spec, dir, key, free_port())
    }

    /// `boot`, with HTTP forwarded from `http_port` (a load balancer is told the port before launch).
    fn boot_on(spec: VmSpec, dir: &Path, key: &SshKey, http_port: u16) -> Vm {
        let dir = dir.join(spec.name);
        std::fs::create_dir_all(&dir).expect("vm dir");
        let facts_path = dir.join("facts.json");
        std::fs::write(&facts_path, spec.facts.to_string()).expect("facts file");
        let imds = repo().join("tests/support/image_imds.py");
        let ssh_port = free_port();
        // QEMU option values split on commas; none of these paths may contain one.
        for p in [&dir, &imds, spec.disk] {
            assert!(
                !p.to_string_lossy().contains(','),
                "path with a comma: {p:?}"
            );
        }
        let netdev = format!(
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{http_port}-:80,\
             hostfwd=tcp:127.0.0.1:{ssh_port}-:22,\
             guestfwd=tcp:10.0.2.100:80-cmd:python3 {} {} {}",
            imds.display(),
            facts_path.display(),
            dir.join("imds.log").display()
        );
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "pc,accel=tcg", "-m", "1024", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-nodefaults"])
            .arg("-no-reboot");
        if spec.firmware == Firmware::Uefi {
            qemu.args(["-bios", OVMF]);
        }
        // EC2's Nitro disks are NVMe: the root first in the boot order, then any data volume.
        qemu.arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=none,id=root",
                spec.disk.display()
            ))
            .args(["-device", "nvme,drive=root,serial=root,bootindex=0"]);
        if let Some(data) = spec.data {
            qemu.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=data",
                    data.display()
                ))
                .args(["-device", "nvme,drive=data,serial=data"]);
        }
        let log = std::fs::File::create(dir.join("qemu.log")).expect("qemu log");
        qemu.args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ))
            // The serial console: everything it prints goes to console.log, and the test can type into it.
            .arg("-chardev")
            .arg(format!(
                "socket,id=console,path={},server=on,wait=off,logfile={}",
                dir.join("console.sock").display(),
                dir.join("console.log").display()
            ))
            .args(["-serial", "chardev:console"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        Vm {
            name: spec.name,
            qemu: Guarded::spawn(&mut qemu, "qemu-system-x86_64"),
            dir,
            http_port,
            ssh_port,
            key: key.private.clone(),
            started: Instant::now(),
        }
    }

    fn console(&self) -> String {
        let raw = std::fs::read(self.dir.join("console.log")).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&raw))
    }

    fn console_tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        let qemu = std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
        format!(
            "--- {} console (last 60 lines) ---\n{}\n--- qemu ---\n{qemu}",
            self.name,
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// `/healthz` 200 yet? Fails the test if the VM died or ran out of time.
    fn check_healthy(&mut self) -> Option<Duration> {
        if get(self.http_port, "localhost", "/healthz").is_ok_and(|r| r.status == 200) {
            return Some(self.started.elapsed());
        }
        assert!(
            !self.qemu.exited(),
            "{} exited before it was healthy\n{}",
            self.name,
            self.console_tail()
        );
        assert!(
            self.started.elapsed() < BOOT_TIMEOUT,
            "{} not healthy after {BOOT_TIMEOUT:?}\n{}",
            self.name,
            self.console_tail()
        );
        None
    }

    fn get(&self, host: &str, path: &str) -> (u16, String) {
        let reply = get(self.http_port, host, path).unwrap_or_else(|e| {
            panic!(
                "GET {path} (Host {host}) on {}: {e}\n{}",
                self.name,
                self.console_tail()
            )
        });
        (reply.status, reply.text())
    }

    /// `ssh admin@guest COMMAND` with the test's key: its stdout, or why it failed.
    fn try_ssh(&self, command: &str) -> Result<String, String> {
        let output = Command::new("ssh")
            .arg("-i")
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=60"])
            // Each clone has host keys of its own, made at its first boot: nothing to pin them to here.
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("{SSH_USER}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{}\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn ssh(&self, command: &str) -> String {
        self.try_ssh(command).unwrap_or_else(|e| {
            panic!(
                "{}: ssh {command:?} failed: {e}\n{}",
                self.name,
                self.console_tail()
            )
        })
    }

    /// `stackinit status --json` over SSH, once every unit of [`RUNNING`] is running and ready (sshd and the
    /// first-boot job come up after `/healthz`, and SSH itself is the first thing to wait for).
    fn wait_services(&self) -> Vec<serde_json::Value> {
        let mut last = String::new();
        let services = poll_every(Duration::from_secs(3), SERVICES_TIMEOUT, || {
            match self.try_ssh("stackinit status --json") {
                Ok(out) => last = out,
                Err(e) => {
                    last = e;
                    return None;
                }
            }
            let json: serde_json::Value = serde_json::from_str(&last).ok()?;
            let services = json["services"].as_array()?.clone();
            let up = |unit: &str| {
                services
                    .iter()
                    .any(|s| s["name"] == unit && s["state"] == "running" && s["ready"] == true)
            };
            RUNNING.iter().all(|u| up(u)).then_some(services)
        });
        services.unwrap_or_else(|| {
            panic!(
                "{}: not every one of {RUNNING:?} running and ready within {SERVICES_TIMEOUT:?}:\n{last}\n{}",
                self.name,
                self.console_tail()
            )
        })
    }

    /// Log in on the serial console (as on EC2's Serial Console) with `password`, run `command` in the login
    /// shell and log out; what the command printed, as the console showed it. The test reads all the while
    /// it is connected: a console nobody reads would block the guest's writes to it, PID 1's included.
    fn serial_login(&self, password: &str, command: &str) -> String {
        let mut console =
            UnixStream::connect(self.dir.join("console.sock")).expect("connect the serial console");
        console
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut seen = String::new();
        let mut read_until = |console: &mut UnixStream, wanted: &str, from: usize| -> usize {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 4096];
            loop {
                if let Some(at) = strip_ansi(&seen)[from..].find(wanted) {
                    return from + at + wanted.len();
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: no {wanted:?} on the serial console:\n{}",
                    self.name,
                    strip_ansi(&seen)
                );
                if let Ok(n) = std::io::Read::read(console, &mut buf) {
                    seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        };
        // The prompt was printed before anyone listened: an empty line makes agetty print it again.
        console.write_all(b"\n").expect("type");
        let at = read_until(&mut console, "login: ", 0);
        console
            .write_all(format!("{SSH_USER}\n").as_bytes())
            .expect("type");
        let at = read_until(&mut console, "Password: ", at);
        console
            .write_all(format!("{password}\n").as_bytes())
            .expect("type");
        let at = read_until(&mut console, "$ ", at);
        // The marker's exit code is expanded by the shell, so only the output (not the echoed line) has it.
        console
            .write_all(format!("{command}; echo serial-done-$?\n").as_bytes())
            .expect("type");
        let end = read_until(&mut console, "serial-done-0", at);
        console.write_all(b"exit\n").expect("type");
        strip_ansi(&seen)[at..end].to_string()
    }

    /// The ed25519 host key sshd presents (as a client sees it, not as a file says).
    fn host_key(&self) -> String {
        let output = Command::new("ssh-keyscan")
            .args([
                "-T",
                "60",
                "-t",
                "ed25519",
                "-p",
                &self.ssh_port.to_string(),
            ])
            .arg("127.0.0.1")
            .stderr(Stdio::null())
            .output()
            .expect("run ssh-keyscan");
        let text = String::from_utf8_lossy(&output.stdout);
        let key = text
            .lines()
            .find(|l| l.contains("ssh-ed25519"))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("{}: no ed25519 host key from ssh-keyscan", self.name));
        key.to_string()
    }

    fn press_power_button(&self) {
        let mut qmp = UnixStream::connect(self.dir.join("qmp.sock")).expect("connect QMP");
        qmp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut reader = BufReader::new(qmp.try_clone().expect("dup"));
        let mut greeting = String::new();
        reader.read_line(&mut greeting).expect("QMP greeting");
        assert!(greeting.contains("QMP"), "not QMP: {greeting}");
        for cmd in ["qmp_capabilities", "system_powerdown"] {
            writeln!(qmp, "{{\"execute\":\"{cmd}\"}}").expect("QMP write");
            loop {
                let mut reply = String::new();
                reader.read_line(&mut reply).expect("QMP reply");
                if reply.contains("\"return\"") {
                    break;
                }
                assert!(!reply.contains("\"error\""), "QMP {cmd}: {reply}");
            }
        }
    }

    /// Wait for QEMU to exit on its own; returns how long that took since `pressed`.
    fn wait_poweroff(&mut self, pressed: Instant, budget: Duration) -> Duration {
        let left = budget.saturating_sub(pressed.elapsed());
        poll_every(Duration::from_millis(100), left, || {
            self.qemu.exited().then(|| pressed.elapsed())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} did not power off within {budget:?} of the power button\n{}",
                self.name,
                self.console_tail()
            )
        })
    }
}

/// Wait until every VM answers `/healthz` 200; each one's time from its QEMU start.
/// Each VM fails the test itself once it dies or runs out of its BOOT_TIMEOUT.
fn wait_all_healthy<const N: usize>(mut vms: [&mut Vm; N]) -> [Duration; N] {
    let mut done: [Option<Duration>; N] = [None; N];
    let all = poll_every(Duration::from_millis(250), BOOT_TIMEOUT, || {
        for (vm, slot) in vms.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                *slot = vm.check_healthy();
            }
        }
        done.iter().all(Option::is_some).then_some(())
    });
    assert!(
        all.is_some(),
        "not every VM was healthy after {BOOT_TIMEOUT:?}"
    );
    done.map(|d| d.unwrap_or_default())
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn facts(public_name: &str, public_ip: &str, instance_id: &str, key: &SshKey) -> serde_json::Value {
    serde_json::json!({
        "instance-id": instance_id,
        "local-ipv4": "10.0.2.15",
        "local-hostname": "ip-10-0-2-15.ec2.internal",
        "public-ipv4": public_ip,
        "public-hostname": public_name,
        "public-keys/0/openssh-key": key.public,
    })
}

/// The Django page under its own name, a 400 under another clone's (ALLOWED_HOSTS comes from this
/// instance's IMDS facts), static files through the proxy, `/healthz` for any Host, facts read the
/// IMDSv2 way.
fn check_serves_own_name(vm: &Vm, own: &str, other: &str) {
    let (code, body) = vm.get(own, "/");
    let imds_log = std::fs::read_to_string(vm.dir.join("imds.log")).unwrap_or_default();
    assert_eq!(
        code,
        200,
        "{} under its own name {own}:\n{body}\nIMDS requests:\n{imds_log}\n{}",
        vm.name,
        vm.console_tail()
    );
    assert!(
        body.contains("Hello from Django") && body.contains(own),
        "{}: not the Django page for {own}:\n{body}",
        vm.name
    );
    let (code, body) = vm.get(other, "/");
    assert_eq!(
        code, 400,
        "{} must refuse the other clone's name {other}:\n{body}",
        vm.name
    );
    let (code, css) = vm.get(own, "/static/style.css");
    assert_eq!(
        code, 200,
        "{}: static file through the proxy:\n{css}",
        vm.name
    );
    // Load balancers send the instance's IP as Host: /healthz answers before any Host check.
    assert_eq!(vm.get("10.0.2.15", "/healthz").0, 200);
    assert!(
        imds_log.starts_with("PUT /latest/api/token 200")
            && imds_log.contains("GET /latest/meta-data/public-hostname 200"),
        "{}: facts not read with the IMDSv2 token flow:\n{imds_log}",
        vm.name
    );
}

/// `stackinit status` over SSH as the SSH user (group `stackinit`): the table a person reads, and the
/// JSON's jobs: migrate and collectstatic ran at build time (skipped at boot, still done for the app),
/// firstboot ran and succeeded.
fn check_status(vm: &Vm) {
    let services = vm.wait_services();
    let table = vm.ssh("stackinit status");
    for unit in RUNNING {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(unit))
            .unwrap_or_else(|| panic!("{}: no {unit} in `stackinit status`:\n{table}", vm.name));
        assert!(
            line.contains("running") && line.contains("yes"),
            "{}: {unit} not running and ready:\n{table}",
            vm.name
        );
    }
    let job = |name: &str| {
        services
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {name} in status --json", vm.name))
    };
    for name in ["migrate", "collectstatic"] {
        let s = job(name);
        assert!(
            s["state"] == "exited"
                && s["ready"] == true
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("skipped:") && r.contains("-at-build exists")),
            "{}: {name} should be skipped at boot (done at build): {s}",
            vm.name
        );
    }
    let firstboot = job("firstboot");
    assert!(
        firstboot["state"] == "exited" && firstboot["ready"] == true,
        "{}: firstboot did not succeed: {firstboot}\n{}",
        vm.name,
        vm.ssh("cat /logs/firstboot.out.log /logs/firstboot.err.log")
    );
}

/// Services added to a running guest's config for the cgroup checks, each started by hand. `daemon-test`
/// double-forks and its grandchild calls setsid: it leaves the service's process group and session.
const CGROUP_SERVICES: &str = r#"
[service.oom-test]
command = ["/usr/bin/python3", "-c", "import time\nb = b'x' * (200 << 20)\ntime.sleep(3600)"]
memory_max = "64MB"
autostart = false

[service.daemon-test]
command = ["/usr/bin/python3", "-c", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execvp('sleep', ['sleep', '3017'])\n    os._exit(0)\ntime.sleep(3600)"]
autostart = false

[service.cpu-capped]
command = ["/usr/bin/python3", "-c", "while True: pass"]
cpu_max = "20%"
autostart = false
"#;

/// Standard base64, to hand a file to the guest through an SSH command line.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One unit of `stackinit status --json`, and the guest's uptime in seconds when it was read.
fn guest_unit(vm: &Vm, name: &str) -> (f64, serde_json::Value) {
    let out = vm.ssh("cat /proc/uptime; stackinit status --json");
    let (uptime, json) = out.split_once('\n').expect("uptime, then status");
    let uptime: f64 = uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("/proc/uptime");
    let json: serde_json::Value = serde_json::from_str(json).expect("status --json");
    let unit = json["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{}: no {name} in status --json: {json}", vm.name));
    (uptime, unit)
}

/// How many processes run `sleep 3017` (the daemonised grandchild of `daemon-test`), and their cgroups.
fn daemons(vm: &Vm) -> (usize, String) {
    // The pattern does not match grep's own command line.
    let pids = vm.ssh("grep -las '^sleep.301[7]' /proc/[0-9]*/cmdline | cut -d/ -f3 || true");
    let pids: Vec<&str> = pids.split_whitespace().collect();
    let cgroups = pids
        .iter()
        .map(|p| vm.ssh(&format!("cat /proc/{p}/cgroup 2>/dev/null || true")))
        .collect();
    (pids.len(), cgroups)
}

/// Issue 16 in a guest where stackinit is PID 1 on a full cgroup v2 hierarchy: a memory limit ends in an
/// OOM kill that status names, a daemonised grandchild dies with its service's stop, and `cpu_max` holds a
/// busy loop to its share of the guest's one vCPU (unlimited, it would take nearly all of it).
fn check_cgroups(vm: &Vm) {
    vm.ssh(&format!(
        "echo {} | base64 -d | sudo tee -a /etc/stackinit/stackinit.toml >/dev/null && sudo stackinit reload",
        base64(CGROUP_SERVICES.as_bytes())
    ));

    vm.ssh("sudo stackinit start oom-test");
    let mut last = serde_json::Value::Null;
    let oom = poll_every(Duration::from_secs(2), Duration::from_secs(180), || {
        last = guest_unit(vm, "oom-test").1;
        last["last_exit"]
            .as_str()
            .filter(|e| e.starts_with("oom-killed"))
            .map(String::from)
    });
    assert_eq!(
        oom.as_deref(),
        Some("oom-killed (memory_max 64MB)"),
        "{}: oom-test was not OOM-killed at its memory_max: {last}\n{}",
        vm.name,
        vm.console_tail()
    );
    let table = vm.ssh("stackinit status");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("oom-test ") && l.contains("oom-killed")),
        "{}: the status table does not say oom-killed:\n{table}",
        vm.name
    );
    vm.ssh("sudo stackinit stop oom-test");

    vm.ssh("sudo stackinit start daemon-test");
    let found = poll_every(Duration::from_secs(1), Duration::from_secs(60), || {
        let (count, cgroups) = daemons(vm);
        (count == 1).then_some(cgroups)
    });
    let cgroups = found.unwrap_or_else(|| panic!("{}: daemon-test's daemon never ran", vm.name));
    assert!(
        cgroups.contains("/stackinit/daemon-test/"),
        "{}: the daemon is not in its service's cgroup: {cgroups}",
        vm.name
    );
    vm.ssh("sudo stackinit stop daemon-test");
    let gone = poll_every(Duration::from_secs(1), Duration::from_secs(30), || {
        (daemons(vm).0 == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "{}: the daemonised grandchild survived `stackinit stop daemon-test`: {:?}",
        vm.name,
        daemons(vm)
    );

    vm.ssh("sudo stackinit start cpu-capped");
    std::thread::sleep(Duration::from_secs(3));
    let sample = || {
        let (t, unit) = guest_unit(vm, "cpu-capped");
        let cpu = unit["usage"]["cpu_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no cgroup CPU usage in {unit}", vm.name));
        (t, cpu)
    };
    let (t0, cpu0) = sample();
    std::thread::sleep(Duration::from_secs(10));
    let (t1, cpu1) = sample();
    let share = (cpu1 - cpu0) / (t1 - t0);
    eprintln!(
        "{}: over {:.1} s of guest time, a busy loop with cpu_max 20% used {:.0}% of a CPU",
        vm.name,
        t1 - t0,
        share * 100.0
    );
    // Unlimited, the loop takes most of the otherwise idle vCPU (well over 30%); at least 10% shows it ran.
    assert!(
        (0.10..=0.30).contains(&share),
        "{}: the busy loop with cpu_max 20% used {:.0}% of the CPU, not 20% +- 10 points",
        vm.name,
        share * 100.0
    );
    vm.ssh("sudo stackinit stop cpu-capped");
}

/// What makes an instance itself: its host key (as sshd presents it) and its machine id.
#[derive(Debug, PartialEq)]
struct Identity {
    host_key: String,
    machine_id: String,
}

fn identity(vm: &Vm) -> Identity {
    let machine_id = vm.ssh("cat /etc/machine-id").trim().to_string();
    assert!(
        machine_id.len() == 32 && machine_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{}: not a machine id: {machine_id:?}",
        vm.name
    );
    Identity {
        host_key: vm.host_key(),
        machine_id,
    }
}

/// The last line the first-boot job wrote at this boot.
fn firstboot_said(vm: &Vm) -> String {
    vm.ssh("tail -n 1 /logs/firstboot.out.log")
        .trim()
        .to_string()
}

/// Root size in MiB as `df` sees it.
fn root_mib(vm: &Vm) -> u64 {
    let out = vm.ssh("df --output=size -BM / | tail -n 1");
    out.trim()
        .trim_end_matches('M')
        .parse()
        .unwrap_or_else(|_| panic!("{}: df said {out:?}", vm.name))
}

/// Power button on every VM at once, then each one's ordered stop and clean power-off.
fn power_off(vms: &mut [&mut Vm]) {
    let pressed: Vec<Instant> = vms
        .iter()
        .map(|vm| {
            let at = Instant::now();
            vm.press_power_button();
            at
        })
        .collect();
    for (vm, at) in vms.iter_mut().zip(pressed) {
        let took = vm.wait_poweroff(at, POWEROFF_BUDGET);
        eprintln!(
            "power button -> QEMU exit: {} {:.1} s",
            vm.name,
            took.as_secs_f64()
        );
        check_ordered_shutdown(vm);
    }
}

fn check_ordered_shutdown(vm: &Vm) {
    let console = vm.console();
    let stopped = |unit: &str| {
        console.contains(&format!("stopping {unit} "))
            && console
                .lines()
                .any(|l| l.contains(&format!("{unit} (pid")) && l.contains("ended"))
    };
    for unit in ["proxy", "app@0", "app@1", "app@2", "dhcp", "sshd"] {
        assert!(
            stopped(unit),
            "{}: no stop lines for {unit}\n{}",
            vm.name,
            vm.console_tail()
        );
    }
    assert!(
        console.contains("power button pressed") && console.contains("all services stopped"),
        "{}: shutdown was not the ordered one\n{}",
        vm.name,
        vm.console_tail()
    );
    // The proxy stops first (no new requests), the app after it.
    let proxy_at = console.find("stopping proxy ").unwrap_or(usize::MAX);
    let app_at = console.find("stopping app@0 ").unwrap_or(0);
    assert!(
        proxy_at < app_at,
        "{}: proxy must stop before the app\n{}",
        vm.name,
        vm.console_tail()
    );
    // Nothing left open for writing (stackinit.log closes last): the root is clean at power-off.
    assert!(
        console.contains("remounted / read-only")
            && !console.contains("could not remount / read-only"),
        "{}: / was not remounted read-only at shutdown\n{}",
        vm.name,
        vm.console_tail()
    );
    assert!(
        console.contains("reboot: Power down"),
        "{}: no power-off\n{}",
        vm.name,
        vm.console_tail()
    );
}

/// The tests that boot VMs take turns: two TCG guests at a time is what two cores can carry.
static VM_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn vm_turn() -> std::sync::MutexGuard<'static, ()> {
    VM_TESTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn golden_image_clones_boot_serve_their_own_names_and_power_off() {
    require_tools();
    let _turn = vm_turn();
    let tmp = temp_dir("stackinit-image-");
    let key = SshKey::generate(tmp.path());
    let image = build_image(&tmp.path().join("out"), "rw");
    let image_ro = build_image(&tmp.path().join("out-ro"), "ro");

    // ---- Two clones of one image: A through the BIOS, on a larger volume, with a data volume; B via UEFI.
    let disk_a = clone_disk(&image, &tmp.path().join("a.qcow2"), GROW_MIB);
    let data = data_volume(&tmp.path().join("data.img"));
    let facts_a = facts(NAME_A, "198.51.100.10", "i-0aaaaaaaaaaaaaaaa", &key);
    let spec_a = |name| VmSpec {
        name,
        firmware: Firmware::Bios,
        disk: &disk_a,
        data: Some(&data),
        facts: facts_a.clone(),
    };
    let mut a = Vm::boot(spec_a("a"), tmp.path(), &key);
    let disk_b = clone_disk(&image, &tmp.path().join("b.qcow2"), 0);
    let spec_b = VmSpec {
        name: "b",
        firmware: Firmware::Uefi,
        disk: &disk_b,
        data: None,
        facts: facts(NAME_B, "203.0.113.20", "i-0bbbbbbbbbbbbbbbb", &key),
    };
    let mut b = Vm::boot(spec_b, tmp.path(), &key);
    let [healthy_a, healthy_b] = wait_all_healthy([&mut a, &mut b]);
    eprintln!(
        "QEMU start -> /healthz 200: a (SeaBIOS) {:.1} s, b (OVMF) {:.1} s (two TCG guests at once)",
        healthy_a.as_secs_f64(),
        healthy_b.as_secs_f64()
    );
    check_serves_own_name(&a, NAME_A, NAME_B);
    check_serves_own_name(&b, NAME_B, NAME_A);
    check_status(&a);
    check_status(&b);
    check_cgroups(&b);

    // The serial console has a login prompt named after the instance; nobody has a password in the image,
    // so the test sets one over SSH (sudo) and logs in on the console.
    assert!(
        a.console().contains("ip-10-0-2-15 login:"),
        "a: no login prompt on the serial console\n{}",
        a.console_tail()
    );
    a.ssh("echo admin:serial-test-password | sudo chpasswd");
    let on_console = a.serial_login("serial-test-password", "stackinit status");
    assert!(
        on_console
            .lines()
            .any(|l| l.starts_with("proxy ") && l.contains("running")),
        "a: stackinit status on the serial console:\n{on_console}"
    );

    // Both went through GRUB, which boots with `ro`; the fstab root line made the root read-write.
    for vm in [&a, &b] {
        let console = vm.console();
        assert!(
            console.contains("Booting `stackinit")
                && console.contains("remounted / read-write (fstab line")
                && !console.contains("root is read-only"),
            "{}: not booted by GRUB into a read-write root\n{}",
            vm.name,
            vm.console_tail()
        );
    }
    assert_eq!(
        [&a, &b].map(|vm| vm.ssh("test -d /sys/firmware/efi && echo uefi || echo bios")),
        ["bios\n", "uefi\n"],
        "a booted through the BIOS, b through UEFI"
    );
    // fstab: the data volume by label where it is attached, quietly skipped (nofail) where it is not.
    assert!(
        a.console()
            .contains("mounted /srv/data (LABEL=stackinit-data, ext4)"),
        "a: data volume not mounted\n{}",
        a.console_tail()
    );
    assert!(
        b.console()
            .contains("not mounted: /srv/data from LABEL=stackinit-data")
            && b.console().contains("(nofail)"),
        "b: a missing nofail volume is reported and skipped\n{}",
        b.console_tail()
    );
    assert_eq!(
        a.ssh("findmnt -n -o SOURCE,FSTYPE /srv/data").trim(),
        "/dev/nvme1n1 ext4"
    );
    // The logs are on the root disk.
    assert_eq!(a.ssh("findmnt -n -o TARGET -T /logs").trim(), "/");

    // First boot: A's root grew to its larger volume, B's already filled its own.
    let image_root_mib: u64 = image.var("ROOT_MIB").parse().expect("ROOT_MIB");
    let (grown, same) = (root_mib(&a), root_mib(&b));
    assert!(
        grown > image_root_mib + GROW_MIB / 2 && same < image_root_mib,
        "a's root ({grown} MiB) grown by ~{GROW_MIB} MiB over the image's {image_root_mib} MiB, \
         b's ({same} MiB) not:\n{}",
        a.ssh("cat /logs/firstboot.out.log")
    );
    // Clones of one image differ in what makes them themselves.
    let (id_a, id_b) = (identity(&a), identity(&b));
    assert_ne!(id_a.host_key, id_b.host_key, "clones share a host key");
    assert_ne!(
        id_a.machine_id, id_b.machine_id,
        "clones share a machine id"
    );
    power_off(&mut [&mut a, &mut b]);
    drop(b);

    // ---- A again, the same instance on the same volume; beside it C, a clone of the read-only variant.
    let mut a2 = Vm::boot(spec_a("a-reboot"), tmp.path(), &key);
    let disk_c = clone_disk(&image_ro, &tmp.path().join("c.qcow2"), 0);
    let spec_c = VmSpec {
        name: "c",
        firmware: Firmware::Bios,
        disk: &disk_c,
        data: None,
        facts: facts(NAME_C, "192.0.2.30", "i-0cccccccccccccccc", &key),
    };
    let mut c = Vm::boot(spec_c, tmp.path(), &key);
    let [healthy_a2, healthy_c] = wait_all_healthy([&mut a2, &mut c]);
    eprintln!(
        "QEMU start -> /healthz 200: a again (SeaBIOS) {:.1} s, c (read-only root, SeaBIOS) {:.1} s",
        healthy_a2.as_secs_f64(),
        healthy_c.as_secs_f64()
    );
    check_serves_own_name(&a2, NAME_A, NAME_C);
    check_serves_own_name(&c, NAME_C, NAME_A);
    check_status(&a2);
    check_status(&c);
    assert_eq!(
        identity(&a2),
        id_a,
        "a reboot of the same instance keeps its host keys and machine id"
    );
    let said = firstboot_said(&a2);
    assert!(
        said.contains("i-0aaaaaaaaaaaaaaaa was set up at its first boot")
            && said.contains("nothing to do"),
        "a's first-boot job ran again on a reboot: {said}"
    );
    assert!(root_mib(&a2) > image_root_mib + GROW_MIB / 2);

    // Read-only root: C runs with / mounted ro (fstab says so), init put /logs on a tmpfs, the per-instance
    // state is on the tmpfs fstab gives it, and everything above passed.
    assert!(
        c.console()
            .contains("root is read-only: mounted a tmpfs on /logs"),
        "c was meant to boot with a read-only root\n{}",
        c.console_tail()
    );
    assert_eq!(
        c.ssh("findmnt -n -o OPTIONS / | cut -d, -f1; findmnt -n -o FSTYPE /var/lib/stackinit"),
        "ro\ntmpfs\n"
    );
    assert_ne!(identity(&c).machine_id, id_a.machine_id);
    assert!(
        !a2.console().contains("root is read-only"),
        "a has a writable root"
    );
    power_off(&mut [&mut a2, &mut c]);
}

#[test]
fn packer_template_validates_without_aws_credentials() {
    require_tools();
    let mut cmd = packer();
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    let output = cmd
        .args(["validate", "packer/"])
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .output()
        .expect("run packer validate");
    assert!(
        output.status.success(),
        "packer validate failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The sources exist: the AMI from a stock AMI is IMDSv2-only and ENA, and the local disk becomes an
    // AMI through amazon-import, IMDSv2-only too; the amazon plugin is declared for Packer >= 1.7.
    let read = |path: &str| std::fs::read_to_string(repo().join(path)).expect(path);
    let files = [
        read("packer/stackinit.pkr.hcl"),
        read("packer/require-imdsv2.sh"),
        read("packer/plugins/plugins.pkr.hcl"),
    ];
    for needle in [
        "source \"amazon-ebs\" \"ubuntu\"",
        "source \"null\" \"local\"",
        "source \"null\" \"ami\"",
        "post-processor \"amazon-import\"",
        "ena_support = true",
        "--http-tokens required",
        "--imds-support v2.0",
        "source  = \"github.com/hashicorp/amazon\"",
    ] {
        assert!(
            files.iter().any(|f| f.contains(needle)),
            "template lacks {needle}"
        );
    }
}

// ---- The fleet: clones behind a load balancer, scaled in and refreshed onto a new image ------------------

/// HAProxy as an ALB would be set up: health checks on `/healthz` (every 2 s with an ALB's 5 s timeout, out
/// after two failures, in after two passes: at most 14 s to notice a drain, within the image's 25 s), round robin, and no retries of a failed request (an ALB does not retry
/// either). Instances are registered with `enable server` once launched, as an Auto Scaling group does.
struct LoadBalancer {
    process: Guarded,
    port: u16,
    admin: PathBuf,
}

impl LoadBalancer {
    /// `slots`: (name, port); every one starts deregistered.
    fn start(dir: &Path, slots: &[(&str, u16)]) -> LoadBalancer {
        let (port, admin) = (free_port(), dir.join("haproxy-admin.sock"));
        let servers: String = slots
            .iter()
            .map(|(name, p)| format!("  server {name} 127.0.0.1:{p} check disabled\n"))
            .collect();
        let config = format!(
            "global\n  stats socket {admin} level admin\n  maxconn 512\n\
             defaults\n  mode http\n  retries 0\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
             frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend instances\n\
             backend instances\n  balance roundrobin\n\
             \x20 option httpchk\n  http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost\n\
             \x20 http-check expect status 200\n  timeout check 5s\n  default-server inter 2s fall 2 rise 2\n{servers}",
            admin = admin.display()
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("haproxy.cfg");
        let process = Guarded::spawn(
            Command::new("haproxy").arg("-db").arg("-f").arg(&path),
            "haproxy",
        );
        support::wait_for_port(([127, 0, 0, 1], port).into());
        LoadBalancer {
            process,
            port,
            admin,
        }
    }

    fn admin(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(&self.admin).expect("haproxy admin socket");
        writeln!(socket, "{command}").expect("haproxy admin write");
        let mut reply = String::new();
        std::io::Read::read_to_string(&mut socket, &mut reply).expect("haproxy admin read");
        reply
    }

    /// Register an instance and wait until its health checks have passed.
    fn register(&mut self, name: &str) {
        self.admin(&format!("enable server instances/{name}"));
        let up = poll_every(Duration::from_millis(250), Duration::from_secs(60), || {
            assert!(!self.process.exited(), "haproxy died");
            self.admin("show servers state instances")
                .lines()
                .find(|l| l.split_whitespace().nth(3) == Some(name))
                // srv_op_state 2 is "running" (UP).
                .filter(|l| l.split_whitespace().nth(5) == Some("2"))
                .map(|_| ())
        });
        assert!(
            up.is_some(),
            "{name} never passed the load balancer's checks:\n{}",
            self.admin("show servers state instances")
        );
    }
}

/// Steady load through the load balancer: two clients, each one request after another, every answer kept.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<Outcome>>>,
}

/// One request as its client saw it: when it started, and its status and body or why it failed.
struct Outcome {
    at: Instant,
    result: Result<(u16, String), String>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let at = Instant::now();
                        let result = get(port, "localhost", "/")
                            .map(|r| (r.status, r.text()))
                            .map_err(|e| e.to_string());
                        seen.push(Outcome { at, result });
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, clients }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<Outcome> = self
            .clients
            .into_iter()
            .flat_map(|c| c.join().expect("load client"))
            .collect();
        all.sort_by_key(|o| o.at);
        all
    }
}

/// Power button on one instance while the fleet serves: it drains (`/healthz` 503 while it still answers),
/// the load balancer takes it out, and it powers off. The wait is `powered_off`.
fn press_scale_in(vm: &Vm) -> Instant {
    vm.press_power_button();
    Instant::now()
}

fn powered_off(vm: &mut Vm, pressed: Instant) {
    let took = vm.wait_poweroff(pressed, POWEROFF_BUDGET);
    eprintln!(
        "fleet: {} powered off {:.1} s after the power button",
        vm.name,
        took.as_secs_f64()
    );
}

/// The instance-refresh story of issue 14, with a second app: two clones of the sample image behind a load
/// balancer under steady load; a new image (another app, laid out differently and baked from its manifest)
/// replaces them one by one (launch, healthy, registered, then the old one powered off); then a scale-in
/// powers one of the new ones off. Not one request may fail, and the new app must be what serves at the end.
#[test]
fn fleet_refreshes_onto_a_new_image_and_scales_in_without_a_failed_request() {
    require_tools();
    let _turn = vm_turn();
    let tmp = temp_dir("stackinit-fleet-");
    let key = SshKey::generate(tmp.path());
    let old_image = build_image(&tmp.path().join("old"), "rw");
    let storefront = repo().join("tests/fixtures/storefront");
    let new_image = build_image_of(&tmp.path().join("new"), "rw", Some(&storefront));

    // Each instance's HTTP port is chosen before launch, so the balancer knows all four slots from the start.
    let instances = [
        ("old1", &old_image, "i-0f1ee700000000001", "198.51.100.41"),
        ("old2", &old_image, "i-0f1ee700000000002", "198.51.100.42"),
        ("new1", &new_image, "i-0f1ee700000000003", "198.51.100.43"),
        ("new2", &new_image, "i-0f1ee700000000004", "198.51.100.44"),
    ]
    .map(|(name, image, id, ip)| (name, image, id, ip, port_below_ephemeral_range()));
    // new2 is launched with user data; new1, a clone of the same image, without.
    let user_data = |name: &str| (name == "new2").then_some(NEW2_USER_DATA);
    let mut lb = LoadBalancer::start(
        tmp.path(),
        &instances.map(|(name, _, _, _, port)| (name, port)),
    );
    let launch = |(name, image, id, ip, port): (&'static str, &Image, &str, &str, u16)| {
        let disk = clone_disk(image, &tmp.path().join(format!("{name}.qcow2")), 0);
        let public = format!("ec2-{}.compute-1.amazonaws.com", ip.replace('.', "-"));
        let spec = VmSpec {
            name,
            firmware: Firmware::Bios,
            disk: &disk,
            data: None,
            facts: with_user_data(facts(&public, ip, id, &key), user_data(name)),
        };
        Vm::boot_on(spec, tmp.path(), &key, port)
    };

    let mut fleet = vec![launch(instances[0]), launch(instances[1])];
    if let [a, b] = &mut fleet[..] {
        wait_all_healthy([a, b]);
    }
    for vm in &fleet {
        lb.register(vm.name);
    }
    let load = Load::start(lb.port);
    let steps = Instant::now();
    let step = |what: String| eprintln!("fleet [{:5.1} s] {what}", steps.elapsed().as_secs_f64());

    // Instance refresh, one at a time: a new instance is in service before an old one's power button, and
    // the next new one boots while that old one drains (as an Auto Scaling group's refresh does).
    let [old1, old2] = &mut fleet[..] else {
        unreachable!()
    };
    let mut new1 = launch(instances[2]);
    wait_all_healthy([&mut new1]);
    check_serves_storefront(&new1);
    lb.register("new1");
    step("new1 in service".into());
    let pressed = press_scale_in(old1);
    let mut new2 = launch(instances[3]);
    powered_off(old1, pressed);
    step("old1 scaled in".into());
    wait_all_healthy([&mut new2]);
    check_serves_storefront(&new2);
    lb.register("new2");
    step("new2 in service".into());
    check_user_data_applied(&new2, &new1);
    // The last old instance goes, and at the same time a scale-in takes one of the two new ones: new2 is
    // left to serve alone.
    let pressed = [press_scale_in(old2), press_scale_in(&new1)];
    powered_off(old2, pressed[0]);
    let refreshed = Instant::now();
    powered_off(&mut new1, pressed[1]);
    step("old2 and new1 scaled in; new2 serves alone".into());
    std::thread::sleep(Duration::from_secs(3));
    let outcomes = load.finish();

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !matches!(&o.result, Ok((200, _))))
        .map(|o| {
            let at = o.at.saturating_duration_since(steps).as_secs_f64();
            match &o.result {
                Ok((code, body)) => format!("[{at:.1} s] {code}: {}", body.trim()),
                Err(e) => format!("[{at:.1} s] {e}"),
            }
        })
        .collect();
    let served = |needle: &str| {
        outcomes
            .iter()
            .filter(|o| matches!(&o.result, Ok((200, body)) if body.contains(needle)))
            .count()
    };
    let (by_old, by_new) = (served("Hello from Django"), served("storefront on"));
    eprintln!(
        "fleet: {} requests through the balancer, {} failed; {by_old} by the old image, {by_new} by the new",
        outcomes.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the refresh and scale-in:\n{}",
        failed.join("\n")
    );
    assert!(by_old > 0 && by_new > 0, "both images must have served");
    let after_refresh = outcomes.iter().filter(|o| o.at > refreshed);
    assert!(
        after_refresh.clone().count() > 0
            && after_refresh
                .into_iter()
                .all(|o| matches!(&o.result, Ok((_, body)) if body.contains("storefront on"))),
        "once refreshed, only the new image serves"
    );
    let pressed = press_scale_in(&new2);
    powered_off(&mut new2, pressed);
}

/// A free loopback port to reserve for a VM launched later: below the kernel's ephemeral range, where no
/// `bind(0)` (the other VMs' SSH ports) and no outgoing connection (the load's thousands) can take it in the
/// meantime. A port chosen by `free_port` was taken by another VM's SSH forward before its own VM started.
fn port_below_ephemeral_range() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32768);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let start = 10000 + (std::process::id() % 1000) as u16 * 10;
    let port = (start..low)
        .chain(10000..start)
        .find(|p| !given.contains(p) && std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range");
    given.push(port);
    port
}

/// new2's launch overlay: a replica more and a custom domain, which its clone new1 must not have.
const NEW2_USER_DATA: &str =
    "[service.app]\nreplicas = 3\n\n[proxy]\nextra_server_names = [\"shop.example.com\"]\n";

fn with_user_data(mut facts: serde_json::Value, user_data: Option<&str>) -> serde_json::Value {
    if let Some(text) = user_data {
        facts["user-data"] = text.into();
    }
    facts
}

/// The overlay from `with`'s user data changed its replicas and names; `without`, a clone of the same image
/// launched without user data, kept the baked ones.
fn check_user_data_applied(with: &Vm, without: &Vm) {
    assert_eq!(
        with.get("shop.example.com", "/").0,
        200,
        "{}: the overlay's name",
        with.name
    );
    assert_eq!(
        without.get("shop.example.com", "/").0,
        400,
        "{}: a name it was not given",
        without.name
    );
    let replicas = |vm: &Vm| {
        poll_every(Duration::from_secs(3), SERVICES_TIMEOUT, || {
            let json: serde_json::Value =
                serde_json::from_str(&vm.try_ssh("stackinit status --json").ok()?).ok()?;
            let running = json["services"]
                .as_array()?
                .iter()
                .filter(|s| s["service"] == "app" && s["state"] == "running" && s["ready"] == true)
                .count();
            let applied = json["user_data"]["applied"].as_bool();
            Some((running, applied)).filter(|(n, _)| *n >= 2)
        })
        .unwrap_or_else(|| panic!("{}: no status over SSH\n{}", vm.name, vm.console_tail()))
    };
    assert_eq!(
        replicas(with),
        (3, Some(true)),
        "{}: 3 replicas from its user data",
        with.name
    );
    assert_eq!(
        replicas(without).0,
        2,
        "{}: the manifest's 2 replicas",
        without.name
    );
}

/// The second app, baked from its manifest: its page from its own WSGI callable, its static files as they
/// are (no collectstatic), its API.
fn check_serves_storefront(vm: &Vm) {
    let (code, body) = vm.get("localhost", "/");
    assert!(
        code == 200 && body.starts_with("storefront on"),
        "{}: {code} {body}\n{}",
        vm.name,
        vm.console_tail()
    );
    let (code, body) = vm.get("localhost", "/static/notice.txt");
    assert_eq!((code, body.as_str()), (200, "storefront static file\n"));
    let (code, body) = vm.get("localhost", "/api/items");
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"items": ["kettle", "teapot"]}"#)
    );
}
