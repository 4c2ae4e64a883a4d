//! What a root-started service's `capabilities` mean, decided before fork (spawn.rs carries it out):
//!
//! - the bounding set keeps only the listed capabilities (`ALL`: every one), for any user;
//! - a service that runs as another user also *holds* them: they are raised in its ambient set (systemd's
//!   `AmbientCapabilities=`), so they survive the setuid and its exec. Before, `capabilities` for a
//!   non-root `user` did nothing: a uid change clears every capability, and nothing gave them back.
//!
//! Shrinking the bounding set needs CAP_SETPCAP. Without it (a root init in a container that lacks it),
//! a service that keeps uid 0, or that may gain privileges by exec (`no_new_privs = false`), would run with
//! every capability left in the set: that is refused with the reason, never ignored. A non-root service
//! with `no_new_privs` loses what it does not keep at the setuid and cannot regain anything by exec, so the
//! bounding set has nothing left to limit there, and it starts.
#![forbid(unsafe_code)]

use std::collections::HashSet;

use caps::Capability;

use crate::config::values::parse_capability;

/// Capability numbers for spawn.rs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapPlan {
    /// To drop from the bounding set (PR_CAPBSET_DROP), each one there now.
    pub drop_bounding: Vec<u32>,
    /// To hold after the uid change: permitted, effective, inheritable and ambient.
    pub ambient: Vec<u32>,
}

/// What the decision needs to know about the service and about init itself.
pub struct Situation<'a> {
    /// The service's `capabilities`.
    pub keep: &'a [String],
    /// Init's bounding set now.
    pub bounding: &'a HashSet<Capability>,
    /// Whether init has CAP_SETPCAP (needed to shrink the bounding set).
    pub can_setpcap: bool,
    /// Whether the service keeps uid 0 (no `user`, or `user = "root"`).
    pub runs_as_root: bool,
    pub no_new_privs: bool,
}

pub fn plan(s: &Situation) -> Result<CapPlan, String> {
    let mut kept: HashSet<Capability> = HashSet::new();
    let mut all = false;
    for name in s.keep {
        match parse_capability(name)? {
            Some(cap) => {
                kept.insert(cap);
            }
            None => all = true,
        }
    }
    let numbers = |filter: &dyn Fn(&Capability) -> bool| -> Vec<u32> {
        let mut n: Vec<u32> = s
            .bounding
            .iter()
            .filter(|c| filter(c))
            .map(|c| u32::from(c.index()))
            .collect();
        n.sort_unstable();
        n
    };
    let mut drop_bounding = numbers(&|c| !all && !kept.contains(c));
    let ambient = if s.runs_as_root {
        Vec::new()
    } else {
        numbers(&|c| all || kept.contains(c))
    };
    if !drop_bounding.is_empty() && !s.can_setpcap {
        if s.runs_as_root || !s.no_new_privs {
            return Err(format!(
                "cannot limit its capabilities to {:?}: stackinit lacks CAP_SETPCAP, so the bounding set cannot \
                 shrink, and this service {} (give stackinit CAP_SETPCAP, or run it as another user with \
                 no_new_privs = true)",
                s.keep,
                if s.runs_as_root {
                    "runs as root"
                } else {
                    "may gain privileges by exec (no_new_privs = false)"
                }
            ));
        }
        drop_bounding.clear();
    }
    Ok(CapPlan {
        drop_bounding,
        ambient,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> HashSet<Capability> {
        caps.iter().copied().collect()
    }

    fn situation<'a>(keep: &'a [String], bounding: &'a HashSet<Capability>) -> Situation<'a> {
        Situation {
            keep,
            bounding,
            can_setpcap: true,
            runs_as_root: false,
            no_new_privs: true,
        }
    }

    #[test]
    fn a_non_root_service_holds_what_it_keeps() {
        let bounding = set(&[
            Capability::CAP_CHOWN,
            Capability::CAP_NET_BIND_SERVICE,
            Capability::CAP_SETPCAP,
        ]);
        let keep = ["net_bind_service".to_string()];
        let p = plan(&situation(&keep, &bounding)).unwrap();
        assert_eq!(p.ambient, [10]);
        assert_eq!(p.drop_bounding, [0, 8]);
        let root = Situation {
            runs_as_root: true,
            ..situation(&keep, &bounding)
        };
        assert_eq!(
            plan(&root).unwrap().ambient,
            Vec::<u32>::new(),
            "root has them anyway"
        );
        let all = ["ALL".to_string()];
        let p = plan(&situation(&all, &bounding)).unwrap();
        assert!(p.drop_bounding.is_empty());
        assert_eq!(p.ambient, [0, 8, 10]);
        assert_eq!(
            plan(&situation(&[], &bounding)).unwrap().ambient,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn without_setpcap_a_root_service_is_refused_not_left_with_everything() {
        let bounding = set(&[Capability::CAP_CHOWN, Capability::CAP_SYS_ADMIN]);
        let keep_all = ["ALL".to_string()];
        // (keep, runs_as_root, no_new_privs) -> may it start without CAP_SETPCAP?
        for (keep, runs_as_root, no_new_privs, starts) in [
            (&[][..], true, true, false),
            (&[][..], false, false, false),
            // Non-root with no_new_privs: nothing left to limit.
            (&[][..], false, true, true),
            // Nothing to drop: no CAP_SETPCAP needed.
            (&keep_all[..], true, true, true),
        ] {
            let result = plan(&Situation {
                can_setpcap: false,
                runs_as_root,
                no_new_privs,
                ..situation(keep, &bounding)
            });
            assert_eq!(
                result.is_ok(),
                starts,
                "{keep:?} {runs_as_root} {no_new_privs}"
            );
            if let Err(e) = result {
                assert!(e.contains("CAP_SETPCAP"), "{e}");
            }
        }
    }
}
