//! Who may use the control socket.
//!
//! The socket's mode (0660, group = `init.control_group`) is the first gate; SO_PEERCRED is the second,
//! so a socket whose mode was loosened by mistake still refuses strangers. Allowed: root, the uid
//! stackinit runs as (tests and unprivileged `stackinit run`), and members of the control group by
//! primary or supplementary gid. Everyone else is refused on every endpoint, read-only ones included.
#![forbid(unsafe_code)]

use std::fs;

use tokio::net::unix::UCred;

/// The access rule for one control socket.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    own_uid: u32,
    group: Option<u32>,
}

impl Policy {
    pub fn new(own_uid: u32, group: Option<u32>) -> Policy {
        Policy { own_uid, group }
    }

    /// Whether the peer with these credentials may use the control API.
    pub fn allows(&self, peer: &UCred) -> bool {
        self.allows_ids(peer.uid(), peer.gid(), || {
            peer.pid()
                .and_then(|pid| supplementary_groups(pid, peer.uid()))
        })
    }

    /// The rule itself; `supplementary` is consulted only when uid and primary gid don't decide it.
    fn allows_ids(
        &self,
        uid: u32,
        gid: u32,
        supplementary: impl FnOnce() -> Option<Vec<u32>>,
    ) -> bool {
        if uid == 0 || uid == self.own_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        if gid == group {
            return true;
        }
        match supplementary() {
            Some(groups) => groups.contains(&group),
            // The peer's process is not visible to us (another PID namespace, or it already exited):
            // fall back to the group's member list in the group database.
            None => listed_member(uid, group),
        }
    }
}

/// The supplementary groups of process `pid`, from `/proc/PID/status`, provided that process still
/// runs as `uid` (a guard against the pid having been reused since the peer connected).
fn supplementary_groups(pid: i32, uid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_groups(&status, uid)
}

fn parse_status_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| status.lines().find_map(|line| line.strip_prefix(name));
    // `Uid:` lists real, effective, saved and filesystem uids; SO_PEERCRED reports the effective one.
    let uids = field("Uid:")?;
    let effective = uids.split_whitespace().nth(1)?.parse::<u32>().ok()?;
    if effective != uid {
        return None;
    }
    field("Groups:")?
        .split_whitespace()
        .map(|gid| gid.parse::<u32>().ok())
        .collect()
}

fn listed_member(uid: u32, group: u32) -> bool {
    use nix::unistd::{Gid, Group, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(Some(group)) = Group::from_gid(Gid::from_raw(group)) else {
        return false;
    };
    group.mem.contains(&user.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcurl\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t1000\t1000\t1000\n\
                          Gid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t27 100 4242 \nNStgid:\t7\n";

    #[test]
    fn parses_groups_of_the_same_uid() {
        assert_eq!(parse_status_groups(STATUS, 1000), Some(vec![27, 100, 4242]));
    }

    #[test]
    fn ignores_a_process_that_now_runs_as_someone_else() {
        assert_eq!(parse_status_groups(STATUS, 1001), None);
    }

    #[test]
    fn empty_groups_line_is_no_groups() {
        let status = "Uid:\t5\t5\t5\t5\nGroups:\t\n";
        assert_eq!(parse_status_groups(status, 5), Some(vec![]));
    }

    #[test]
    fn root_and_own_uid_are_always_allowed() {
        let policy = Policy::new(1000, None);
        assert!(policy.allows_ids(0, 0, || None));
        assert!(policy.allows_ids(1000, 1000, || None));
        assert!(!policy.allows_ids(1001, 1001, || Some(vec![0, 1000])));
    }

    #[test]
    fn control_group_by_primary_or_supplementary_gid() {
        let policy = Policy::new(0, Some(4242));
        assert!(policy.allows_ids(65534, 4242, || None));
        assert!(policy.allows_ids(65534, 65534, || Some(vec![10, 4242])));
        assert!(!policy.allows_ids(65534, 65534, || Some(vec![10, 20])));
    }
}
