//! `/etc/fstab` at boot, as systemd-remount-fs and local-fs.target do it: the root is remounted with the
//! options fstab gives it (GRUB boots Debian and Ubuntu with `ro`), then every other entry is mounted,
//! its device found by path, `UUID=` or `LABEL=`. An entry that cannot be mounted is reported on the
//! console and boot goes on (PID 1 has no emergency shell to drop to); `nofail` only makes that quiet.
//!
//! Parsing and the mount decisions are pure; the one side effect is `mount(2)`, and finding a device by
//! UUID or label reads the first 2 KiB of each block device (no udev runs under this PID 1).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

/// One line of fstab(5): `SPEC FILE VFSTYPE MNTOPS [FREQ [PASSNO]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FstabEntry {
    pub line: usize,
    pub spec: Spec,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub options: Options,
}

/// How an entry names its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    Path(PathBuf),
    Uuid(String),
    Label(String),
    /// A pseudo file system (`tmpfs`, `proc`...) or anything else passed to mount(2) as is.
    Other(String),
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Spec::Path(p) => write!(f, "{}", p.display()),
            Spec::Uuid(u) => write!(f, "UUID={u}"),
            Spec::Label(l) => write!(f, "LABEL={l}"),
            Spec::Other(o) => f.write_str(o),
        }
    }
}

/// The mount options split into mount(2) flags and the file system's own data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    /// Options the file system parses itself (`size=1m`, `mode=0700`, `errors=remount-ro`).
    pub data: String,
    pub nofail: bool,
    pub noauto: bool,
}

/// Parse fstab text; lines that are blank, comments or malformed are skipped.
pub fn parse(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| parse_line(i + 1, line))
        .collect()
}

fn parse_line(line_number: usize, line: &str) -> Option<FstabEntry> {
    let line = line.split('#').next()?.trim();
    let mut fields = line.split_whitespace();
    let (spec, file, fs_type) = (fields.next()?, fields.next()?, fields.next()?);
    let options = fields.next().unwrap_or("defaults");
    Some(FstabEntry {
        line: line_number,
        spec: parse_spec(&unescape(spec)),
        mount_point: PathBuf::from(unescape(file)),
        fs_type: fs_type.to_string(),
        options: parse_options(options),
    })
}

fn parse_spec(spec: &str) -> Spec {
    if let Some(uuid) = spec.strip_prefix("UUID=") {
        return Spec::Uuid(uuid.trim_matches('"').to_ascii_lowercase());
    }
    if let Some(label) = spec.strip_prefix("LABEL=") {
        return Spec::Label(label.trim_matches('"').to_string());
    }
    if spec.starts_with('/') {
        return Spec::Path(PathBuf::from(spec));
    }
    Spec::Other(spec.to_string())
}

/// fstab writes a space in a path as `\040` (and a tab as `\011`).
fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t")
}

pub fn parse_options(text: &str) -> Options {
    let mut options = Options {
        flags: MsFlags::empty(),
        data: String::new(),
        nofail: false,
        noauto: false,
    };
    let mut data = Vec::new();
    for option in text.split(',').filter(|o| !o.is_empty()) {
        let flag = match option {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "nofail" => {
                options.nofail = true;
                continue;
            }
            "noauto" => {
                options.noauto = true;
                continue;
            }
            // Defaults, the default's opposites, and options for mount(8) or systemd, not the kernel.
            "defaults" | "rw" | "suid" | "dev" | "exec" | "auto" | "atime" | "nouser" | "user"
            | "users" | "owner" | "_netdev" => continue,
            other if other.starts_with("x-") || other.starts_with("comment=") => continue,
            other => {
                data.push(other);
                continue;
            }
        };
        options.flags |= flag;
    }
    options.data = data.join(",");
    options
}

/// What boot does with an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The root file system: remount it with these flags (from `ro` to `rw` on a GRUB boot).
    RemountRoot(MsFlags),
    Mount,
    /// Swap, `noauto`, or a mount point already in use.
    Skip(&'static str),
}

/// Decide one entry. `mounted`: whether its mount point is a mount point already.
pub fn plan(entry: &FstabEntry, mounted: bool) -> Plan {
    if entry.fs_type == "swap" || entry.mount_point.as_os_str() == "none" {
        return Plan::Skip("swap");
    }
    if entry.options.noauto {
        return Plan::Skip("noauto");
    }
    if entry.mount_point == Path::new("/") {
        return Plan::RemountRoot(entry.options.flags);
    }
    if mounted {
        return Plan::Skip("already mounted");
    }
    Plan::Mount
}

/// The block device whose file system has this UUID or label, found by reading superblocks.
pub fn find_device(spec: &Spec) -> Option<PathBuf> {
    let wanted = |id: &FsIdentity| match spec {
        Spec::Uuid(uuid) => id.uuid.as_deref() == Some(uuid.as_str()),
        Spec::Label(label) => id.label.as_deref() == Some(label.as_str()),
        Spec::Path(_) | Spec::Other(_) => false,
    };
    let names = std::fs::read_dir("/sys/class/block").ok()?;
    names
        .filter_map(Result::ok)
        .map(|e| Path::new("/dev").join(e.file_name()))
        .find(|dev| read_identity(dev).is_some_and(|id| wanted(&id)))
}

/// A file system's UUID (lowercase, dashed) and label, as blkid shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsIdentity {
    pub uuid: Option<String>,
    pub label: Option<String>,
}

fn read_identity(device: &Path) -> Option<FsIdentity> {
    use std::io::Read;
    let mut head = vec![0u8; 2048];
    let mut file = std::fs::File::open(device).ok()?;
    file.read_exact(&mut head).ok()?;
    identity_of(&head)
}

/// The UUID and label in the first 2 KiB of a device: ext2/3/4 (superblock at 1024, magic 0xEF53) or
/// XFS (magic "XFSB" at 0).
pub fn identity_of(head: &[u8]) -> Option<FsIdentity> {
    let field = |from: usize, len: usize| head.get(from..from + len);
    if field(1024 + 56, 2) == Some(&[0x53, 0xEF]) {
        return Some(FsIdentity {
            uuid: field(1024 + 104, 16).map(format_uuid),
            label: field(1024 + 120, 16).and_then(label_text),
        });
    }
    if field(0, 4) == Some(b"XFSB") {
        return Some(FsIdentity {
            uuid: field(32, 16).map(format_uuid),
            label: field(108, 12).and_then(label_text),
        });
    }
    None
}

fn format_uuid(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn label_text(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UBUNTU: &str = "# /etc/fstab: static file system information.
LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,errors=remount-ro\t0 1
LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1
UUID=2F3A-11AB-77E0-4c1e-9d2b-0c4f5e6a7b8c /srv/data xfs defaults,nofail,x-systemd.device-timeout=5 0 2
tmpfs /tmp tmpfs size=64m,mode=1777,nosuid,nodev 0 0
/swapfile none swap sw 0 0
/dev/nvme1n1 /mnt/scratch\\040space ext4 noauto 0 0
broken line
";

    #[test]
    fn parses_the_shapes_ubuntu_and_cloud_images_write() {
        let entries = parse(UBUNTU);
        assert_eq!(entries.len(), 6, "{entries:#?}");
        assert_eq!(entries[0].spec, Spec::Label("cloudimg-rootfs".into()));
        assert_eq!(entries[0].mount_point, Path::new("/"));
        assert_eq!(entries[0].options.data, "discard,errors=remount-ro");
        assert_eq!(entries[0].line, 2);
        assert_eq!(
            entries[2].spec,
            Spec::Uuid("2f3a-11ab-77e0-4c1e-9d2b-0c4f5e6a7b8c".into())
        );
        assert!(entries[2].options.nofail);
        assert_eq!(entries[2].options.data, "");
        let tmp = &entries[3].options;
        assert_eq!(tmp.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(tmp.data, "size=64m,mode=1777");
        assert_eq!(entries[5].mount_point, Path::new("/mnt/scratch space"));
    }

    #[test]
    fn plans_a_root_remount_skips_swap_and_noauto_and_mounts_the_rest() {
        let entries = parse(UBUNTU);
        assert_eq!(plan(&entries[0], true), Plan::RemountRoot(MsFlags::empty()));
        assert_eq!(plan(&entries[2], false), Plan::Mount);
        assert_eq!(plan(&entries[3], true), Plan::Skip("already mounted"));
        assert_eq!(plan(&entries[4], false), Plan::Skip("swap"));
        assert_eq!(plan(&entries[5], false), Plan::Skip("noauto"));
        let ro_root = parse("/dev/vda1 / ext4 ro,noatime 0 1");
        assert_eq!(
            plan(&ro_root[0], true),
            Plan::RemountRoot(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME)
        );
    }

    #[test]
    fn reads_ext4_and_xfs_identities() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xEF]);
        ext4[1024 + 104..1024 + 120].copy_from_slice(&[
            0x2f, 0x3a, 0x11, 0xab, 0x77, 0xe0, 0x4c, 0x1e, 0x9d, 0x2b, 0x0c, 0x4f, 0x5e, 0x6a,
            0x7b, 0x8c,
        ]);
        ext4[1024 + 120..1024 + 125].copy_from_slice(b"stack");
        assert_eq!(
            identity_of(&ext4),
            Some(FsIdentity {
                uuid: Some("2f3a11ab-77e0-4c1e-9d2b-0c4f5e6a7b8c".into()),
                label: Some("stack".into()),
            })
        );
        let mut xfs = vec![0u8; 2048];
        xfs[..4].copy_from_slice(b"XFSB");
        xfs[108..112].copy_from_slice(b"data");
        assert_eq!(identity_of(&xfs).and_then(|i| i.label), Some("data".into()));
        assert_eq!(identity_of(&[0u8; 2048]), None);
        assert_eq!(identity_of(&[0u8; 10]), None);
    }
}
