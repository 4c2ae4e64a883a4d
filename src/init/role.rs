//! Which kind of PID 1 we are, which decides how far boot and shutdown go.
#![forbid(unsafe_code)]

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO` in the kernel, fixed since Linux 3.8).
const INITIAL_PID_NAMESPACE: &str = "pid:[4026531836]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a machine (kernel `init=`, a microVM): mounts, console, and `reboot(2)` at the end.
    Machine,
    /// PID 1 of a PID namespace or container (or told so with STACKINIT_NO_REBOOT=1): reaps and shuts down
    /// every process in the namespace, then exits instead of rebooting.
    Namespace,
    /// `stackinit init` from a shell: no PID 1 duties at all (killing "every process" would hit the host).
    NotPid1,
}

impl Role {
    pub fn detect() -> Role {
        if std::process::id() != 1 {
            return Role::NotPid1;
        }
        if std::env::var_os("STACKINIT_NO_REBOOT").is_some_and(|v| v == "1") {
            return Role::Namespace;
        }
        match std::fs::read_link("/proc/self/ns/pid") {
            Ok(link) if link.as_os_str() != INITIAL_PID_NAMESPACE => Role::Namespace,
            // The initial namespace, or /proc unreadable even after mounting it: a real boot.
            _ => Role::Machine,
        }
    }

    pub fn is_pid1(self) -> bool {
        self != Role::NotPid1
    }

    /// Mount file systems, set the hostname, bring up `lo`: on a machine, or in a namespace when a test asks
    /// with STACKINIT_EARLY_BOOT=1 (it must have its own mount, UTS and network namespaces).
    pub fn does_early_boot(self) -> bool {
        match self {
            Role::Machine => true,
            Role::Namespace => std::env::var_os("STACKINIT_EARLY_BOOT").is_some_and(|v| v == "1"),
            Role::NotPid1 => false,
        }
    }
}
