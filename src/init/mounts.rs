//! Early-boot mounts and their undoing at shutdown.
//!
//! Mount only what is not mounted yet (an initramfs, a container runtime or the kernel may have done some),
//! remember what we mounted, and at shutdown unmount it in reverse and remount the rest read-only. Every step
//! works with a read-only root: nothing here writes to `/` except creating a missing mount point, which may
//! fail and is then reported.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::console::{shout, Steps};
use super::fstab::{self, FstabEntry, Plan, Spec};
use nix::sys::statvfs::{statvfs, FsFlags};

/// One line of `/proc/self/mountinfo`, the parts we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Parse `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE
/// SOURCE SUPER_OPTIONS`. Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_point = fields.nth(4)?;
    // Skip mount options and the optional fields up to the lone "-" separator.
    let mut rest = fields.skip_while(|f| *f != "-");
    rest.next()?;
    let fs_type = rest.next()?;
    let source = rest.next()?;
    Some(MountEntry {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fs_type: unescape_octal(fs_type),
        source: unescape_octal(source),
    })
}

/// The kernel writes space, tab, newline and backslash in mountinfo paths as `\040`-style octal escapes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table, or empty when /proc is not mounted.
pub fn current_mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

fn is_mount_point(path: &Path) -> bool {
    current_mounts().iter().any(|m| m.mount_point == path)
}

struct EarlyMount {
    target: &'static str,
    fs_type: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What a booting machine needs, in order (each parent before its children).
const EARLY_MOUNTS: [EarlyMount; 8] = [
    EarlyMount {
        target: "/proc",
        fs_type: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    EarlyMount {
        target: "/sys",
        fs_type: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    // The unified hierarchy, where systemd mounts it: each service's cgroup (limits, usage, a sure kill on
    // stop) lives here. Without it services are process groups only.
    EarlyMount {
        target: "/sys/fs/cgroup",
        fs_type: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
    EarlyMount {
        target: "/dev",
        fs_type: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    EarlyMount {
        target: "/dev/pts",
        fs_type: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=620,ptmxmode=666",
    },
    EarlyMount {
        target: "/dev/shm",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    EarlyMount {
        target: "/run",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    EarlyMount {
        target: "/tmp",
        fs_type: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// The file systems stackinit mounted itself, in mount order; shutdown undoes them in reverse.
#[derive(Debug, Default)]
pub struct Mounted {
    targets: Vec<PathBuf>,
}

impl Mounted {
    pub fn targets(&self) -> &[PathBuf] {
        &self.targets
    }
}

/// Mount /proc if it is missing: everything else (mount table, PID namespace check) reads it.
pub fn ensure_proc(mounted: &mut Mounted) {
    if Path::new("/proc/self/mountinfo").exists() {
        return;
    }
    if let Some(proc_mount) = EARLY_MOUNTS.first() {
        // A failure shows up later: the role check and early mounts report what is missing.
        let _ = mount_one(proc_mount, mounted);
    }
}

/// Mount everything in [`EARLY_MOUNTS`] that is not mounted yet, reporting each on the console.
pub fn early_mounts(mounted: &mut Mounted, steps: &Steps) {
    for early in &EARLY_MOUNTS {
        if is_mount_point(Path::new(early.target)) {
            continue;
        }
        match mount_one(early, mounted) {
            Ok(()) => steps.step(format_args!("mounted {} ({})", early.target, early.fs_type)),
            Err(e) => steps.step(format_args!(
                "could not mount {} ({}): {e}",
                early.target, early.fs_type
            )),
        }
    }
}

fn mount_one(early: &EarlyMount, mounted: &mut Mounted) -> Result<(), Errno> {
    let target = Path::new(early.target);
    // A read-only root may lack the directory; creating it then fails and mount reports ENOENT.
    let _ = std::fs::create_dir(target);
    let data = (!early.data.is_empty()).then_some(early.data);
    match mount(
        Some(early.fs_type),
        target,
        Some(early.fs_type),
        early.flags,
        data,
    ) {
        Ok(()) => {
            mounted.targets.push(target.to_path_buf());
            Ok(())
        }
        // Already mounted by someone else: fine.
        Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `/etc/fstab` (or `$STACKINIT_FSTAB`, for tests): the root remounted with its options, then every other
/// entry mounted, each reported on the console. A failure never stops boot.
pub fn fstab_mounts(mounted: &mut Mounted, steps: &Steps) {
    let path = std::env::var_os("STACKINIT_FSTAB")
        .map_or_else(|| PathBuf::from("/etc/fstab"), PathBuf::from);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    for entry in fstab::parse(&text) {
        match fstab::plan(&entry, is_mount_point(&entry.mount_point)) {
            Plan::Skip(_) => {}
            Plan::RemountRoot(flags) => remount_root(&entry, flags, steps),
            Plan::Mount => mount_entry(&entry, mounted, steps),
        }
    }
}

/// GRUB boots with `ro`; fstab says what the root should be. Remount only when that differs.
fn remount_root(entry: &FstabEntry, flags: MsFlags, steps: &Steps) {
    let read_only = statvfs(Path::new("/")).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY));
    let want_read_only = flags.contains(MsFlags::MS_RDONLY);
    if read_only == want_read_only {
        return;
    }
    let data = (!entry.options.data.is_empty()).then_some(entry.options.data.as_str());
    let how = if want_read_only {
        "read-only"
    } else {
        "read-write"
    };
    match mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | flags,
        data,
    ) {
        Ok(()) => steps.step(format_args!(
            "remounted / {how} (fstab line {})",
            entry.line
        )),
        Err(e) => shout(format_args!(
            "could not remount / {how} (fstab line {}): {e}",
            entry.line
        )),
    }
}

fn mount_entry(entry: &FstabEntry, mounted: &mut Mounted, steps: &Steps) {
    let target = &entry.mount_point;
    let result = fstab_source(&entry.spec).and_then(|source| {
        std::fs::create_dir_all(target)
            .map_err(|e| format!("cannot create the mount point: {e}"))?;
        let data = (!entry.options.data.is_empty()).then_some(entry.options.data.as_str());
        let fs_type = Some(entry.fs_type.as_str()).filter(|t| *t != "auto");
        mount(
            Some(source.as_str()),
            target,
            fs_type,
            entry.options.flags,
            data,
        )
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            mounted.targets.push(target.clone());
            steps.step(format_args!(
                "mounted {} ({}, {})",
                target.display(),
                entry.spec,
                entry.fs_type
            ));
        }
        Err(why) if entry.options.nofail => steps.step(format_args!(
            "not mounted: {} from {}: {why} (nofail)",
            target.display(),
            entry.spec
        )),
        Err(why) => shout(format_args!(
            "could not mount {} from {} (fstab line {}): {why}; boot goes on without it",
            target.display(),
            entry.spec,
            entry.line
        )),
    }
}

/// What mount(2) is given as the source: the device a UUID or label names, or the spec as written.
fn fstab_source(spec: &Spec) -> Result<String, String> {
    match spec {
        Spec::Path(path) => Ok(path.display().to_string()),
        Spec::Other(text) => Ok(text.clone()),
        Spec::Uuid(_) | Spec::Label(_) => fstab::find_device(spec)
            .map(|dev| dev.display().to_string())
            .ok_or_else(|| format!("no device with {spec}")),
    }
}

/// Make `dir` writable for logs on a read-only root: create it, and if the root refuses writes, put a tmpfs
/// on it (logs then live until power-off, which beats losing them at once). A separate volume mounted there
/// is left alone.
pub fn ensure_writable_dir(dir: &Path, mounted: &mut Mounted, steps: &Steps) {
    let _ = std::fs::create_dir_all(dir);
    match nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
        Ok(()) => return,
        Err(Errno::EROFS) => {}
        Err(e) => {
            steps.step(format_args!("{} is not usable: {e}", dir.display()));
            return;
        }
    }
    if is_mount_point(dir) {
        steps.step(format_args!(
            "{} is a read-only mount; logs cannot be written",
            dir.display()
        ));
        return;
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=0755")) {
        Ok(()) => {
            mounted.targets.push(dir.to_path_buf());
            steps.step(format_args!(
                "root is read-only: mounted a tmpfs on {}",
                dir.display()
            ));
        }
        Err(e) => steps.step(format_args!(
            "could not mount a tmpfs on {}: {e}",
            dir.display()
        )),
    }
}

/// Shutdown: unmount what we mounted, newest first (detaching busy ones), then remount `/` and every
/// block-device file system read-only so the disks are clean when the power goes.
pub fn unmount_and_remount_read_only(mounted: &Mounted, steps: &Steps) {
    for target in mounted.targets.iter().rev() {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => steps.step(format_args!("unmounted {}", target.display())),
            Err(Errno::EBUSY) => match umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => steps.step(format_args!("{} busy: detached lazily", target.display())),
                Err(e) => steps.step(format_args!("could not unmount {}: {e}", target.display())),
            },
            Err(e) => steps.step(format_args!("could not unmount {}: {e}", target.display())),
        }
    }
    let mut read_only: Vec<PathBuf> = current_mounts()
        .into_iter()
        .filter(|m| m.source.starts_with("/dev/") && m.mount_point != Path::new("/"))
        .map(|m| m.mount_point)
        .collect();
    // Children before parents, and the root last.
    read_only.reverse();
    read_only.push(PathBuf::from("/"));
    for target in read_only {
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        match mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
            Ok(()) => steps.step(format_args!("remounted {} read-only", target.display())),
            Err(e) => steps.step(format_args!(
                "could not remount {} read-only: {e}",
                target.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4010584k,mode=755
25 24 0:22 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 22 0:23 / /run rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
40 22 8:2 / /mnt/with\\040space rw,relatime shared:30 master:1 - ext4 /dev/sda2 rw
41 22 8:3 /sub /srv/back\\134slash rw - xfs /dev/sdb rw
garbage line
";

    #[test]
    fn parses_mount_points_types_and_sources() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[0],
            MountEntry {
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                source: "/dev/sda1".into()
            }
        );
        assert_eq!(mounts[3].mount_point, PathBuf::from("/dev/pts"));
        assert_eq!(mounts[3].fs_type, "devpts");
        // No optional fields at all before the separator.
        assert_eq!(mounts[4].fs_type, "tmpfs");
        assert_eq!(mounts[4].mount_point, PathBuf::from("/run"));
    }

    #[test]
    fn unescapes_octal_sequences_and_skips_several_optional_fields() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts[5].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(mounts[5].source, "/dev/sda2");
        assert_eq!(mounts[6].mount_point, PathBuf::from("/srv/back\\slash"));
        assert_eq!(unescape_octal("a\\011b\\012c"), "a\tb\nc");
    }

    #[test]
    fn malformed_lines_and_escapes_do_not_panic() {
        for line in [
            "",
            "1 2 3",
            "1 2 3 4 /x opts",
            "1 2 3 4 /x opts - ",
            "1 2 3 4 /x\\ - t s",
            "1 2 3 4 \\9 - a b",
        ] {
            let _ = parse_mountinfo(line);
        }
        assert_eq!(unescape_octal("end\\04"), "end\\04");
        assert_eq!(unescape_octal("\\777"), "\\777");
    }

    #[test]
    fn reads_this_process_mount_table() {
        let mounts = current_mounts();
        assert!(
            mounts.iter().any(|m| m.mount_point == Path::new("/")),
            "{mounts:?}"
        );
    }
}
