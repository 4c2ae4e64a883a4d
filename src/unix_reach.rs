//! Whether a user can connect to a unix socket: connect(2) needs search (x) permission on every directory of
//! the socket's path and write permission on the socket itself. The seed's `app.sock` lived in Ubuntu's 0750
//! home directory, where nginx's www-data could not reach it, and every request was a bare 502.
//!
//! Two ways to ask: `check` (for `stackinit check` and startup: another user's access, judged from owners and
//! mode bits, so an ACL that grants more is not seen) and `check_as_me` (the proxy, as the user it runs as:
//! access(2), which the kernel answers with ACLs and all).
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags, Gid, Group, Uid, User};

/// A user and the groups it acts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub name: String,
    pub uid: u32,
    /// Primary and supplementary groups.
    pub gids: Vec<u32>,
}

impl Who {
    /// `user` as a service started by root gets it: its primary group (or `group`) and the groups that list it.
    pub fn of_user(user: &str, group: Option<&str>) -> Option<Who> {
        let entry = User::from_name(user).ok().flatten()?;
        let gid = match group {
            Some(g) => Group::from_name(g).ok().flatten()?.gid,
            None => entry.gid,
        };
        let name = CString::new(user).ok()?;
        let mut gids: Vec<u32> = nix::unistd::getgrouplist(&name, gid)
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        gids.push(gid.as_raw());
        Some(Who {
            name: user.to_string(),
            uid: entry.uid.as_raw(),
            gids,
        })
    }

    /// This process's effective user and groups.
    pub fn current() -> Who {
        let uid = Uid::effective();
        let mut gids: Vec<u32> = nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        gids.push(Gid::effective().as_raw());
        Who {
            name: user_name(uid.as_raw()),
            uid: uid.as_raw(),
            gids,
        }
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user {} (uid {})", self.name, self.uid)
    }
}

/// The permission bits a file grants one class of users: read 4, write 2, search/execute 1.
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

/// The path component that keeps a user from a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub path: PathBuf,
    pub directory: bool,
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, needs) = if self.directory {
            ("directory", "search (x)")
        } else {
            ("socket", "write (w)")
        };
        write!(
            f,
            "{what} {} is {:04o} {}:{}, which gives it no {needs} permission",
            self.path.display(),
            self.mode & 0o7777,
            user_name(self.owner),
            group_name(self.group),
        )
    }
}

/// Whether `mode` (owned by `owner`:`group`) grants `who` the permission `bit` (`WRITE` or `SEARCH`), by the
/// kernel's rule: the owner's bits for the owner, else the group's for a member, else the others'. Root may.
fn grants(who: &Who, mode: u32, owner: u32, group: u32, bit: u32) -> bool {
    if who.uid == 0 {
        return true;
    }
    let shift = if who.uid == owner {
        6
    } else if who.gids.contains(&group) {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

/// The permissions a socket will have when it is bound later: mode, owner, group.
#[derive(Clone, Copy, Debug)]
pub struct SocketPerms {
    pub mode: u32,
    pub owner: u32,
    pub group: u32,
}

/// What keeps `who` from `socket`, judged from owners and mode bits: the first existing directory on the way
/// it may not search, else the socket (`will_be`, or the file there now) it may not write. Directories that
/// do not exist yet are not judged (init creates them, searchable, when it binds).
pub fn check(socket: &Path, who: &Who, will_be: Option<SocketPerms>) -> Option<Denied> {
    for dir in directories_of(socket) {
        let Ok(meta) = std::fs::metadata(dir) else {
            return None;
        };
        if !grants(who, meta.mode(), meta.uid(), meta.gid(), SEARCH) {
            return Some(denied(dir, true, meta.mode(), meta.uid(), meta.gid()));
        }
    }
    let perms = will_be.or_else(|| {
        let meta = std::fs::metadata(socket).ok()?;
        Some(SocketPerms {
            mode: meta.mode(),
            owner: meta.uid(),
            group: meta.gid(),
        })
    })?;
    (!grants(who, perms.mode, perms.owner, perms.group, WRITE))
        .then(|| denied(socket, false, perms.mode, perms.owner, perms.group))
}

/// What keeps this process from `socket`, asked of the kernel (access(2) with the real ids, which a service's
/// setuid made the same as the effective ones). `None` when nothing does, or when a part does not exist.
pub fn check_as_me(socket: &Path) -> Option<Denied> {
    let refused = |path: &Path, flags| access(path, flags).err() == Some(nix::errno::Errno::EACCES);
    let described = |path: &Path, directory| {
        std::fs::metadata(path)
            .ok()
            .map(|m| denied(path, directory, m.mode(), m.uid(), m.gid()))
    };
    for dir in directories_of(socket) {
        if refused(dir, AccessFlags::X_OK) {
            return described(dir, true);
        }
    }
    if refused(socket, AccessFlags::W_OK) {
        return described(socket, false);
    }
    None
}

/// `/`, `/home`, `/home/ubuntu` for `/home/ubuntu/app.sock`: every directory a lookup passes through.
fn directories_of(socket: &Path) -> Vec<&Path> {
    let mut dirs: Vec<&Path> = socket
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    dirs.reverse();
    dirs
}

fn denied(path: &Path, directory: bool, mode: u32, owner: u32, group: u32) -> Denied {
    Denied {
        path: path.to_path_buf(),
        directory,
        mode,
        owner,
        group,
    }
}

fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn group_name(gid: u32) -> String {
    Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// Whether an I/O error is a refused permission (EACCES), the error connect(2) gives for all of the above.
pub fn is_permission_denied(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EACCES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, gids: &[u32]) -> Who {
        Who {
            name: "w".into(),
            uid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn the_kernel_picks_one_class_of_bits() {
        let nobody = who(65534, &[65534]);
        // Ubuntu's home directory: 0750 ubuntu:ubuntu.
        assert!(!grants(&nobody, 0o750, 1000, 1000, SEARCH));
        assert!(grants(&who(33, &[33, 1000]), 0o750, 1000, 1000, SEARCH));
        assert!(grants(&nobody, 0o755, 1000, 1000, SEARCH));
        // The owner's bits apply to the owner even when the others' would allow more.
        assert!(!grants(&who(1000, &[1000]), 0o070, 1000, 1000, SEARCH));
        assert!(grants(&who(0, &[0]), 0o700, 1000, 1000, SEARCH));
        // A socket 0660 root:nogroup: the group writes, the others do not.
        assert!(grants(&nobody, 0o660, 0, 65534, WRITE));
        assert!(!grants(&who(1000, &[1000]), 0o660, 0, 65534, WRITE));
    }

    #[test]
    fn names_the_first_directory_in_the_way() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = who(4242, &[4242]);
        let socket = home.join("app.sock");
        let found = check(&socket, &stranger, None).expect("home is 0700");
        assert_eq!(found.path, home);
        assert!(found.directory);
        assert!(found.to_string().contains("is 0700"), "{found}");
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(check(&socket, &stranger, None), None, "no socket yet");
        let private = SocketPerms {
            mode: 0o600,
            owner: 0,
            group: 0,
        };
        let found = check(&socket, &stranger, Some(private)).expect("0600 socket");
        assert!(!found.directory);
        // Parts that do not exist yet are not judged.
        assert_eq!(check(&home.join("later/app.sock"), &stranger, None), None);
    }

    #[test]
    fn directories_in_lookup_order() {
        assert_eq!(
            directories_of(Path::new("/home/ubuntu/app.sock")),
            [
                Path::new("/"),
                Path::new("/home"),
                Path::new("/home/ubuntu")
            ]
        );
    }
}
