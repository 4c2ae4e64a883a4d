//! fork + exec of service processes.
//!
//! Everything the child needs (argv, envp, credentials, fd plan) is prepared in the parent; between fork and
//! exec the child only makes async-signal-safe libc calls and never allocates, so forking from a process
//! that has other threads (tokio's blocking pool) is sound. This is one of the few audited `unsafe` spots.
//!
//! `LISTEN_PID` must equal the child's own pid (gunicorn ignores LISTEN_FDS otherwise), so its envp slot
//! points at a buffer the child fills in after fork.
#![allow(unsafe_code)] // audited: fork/exec (see the SAFETY comments)

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::unistd::{Gid, Pid, Uid};

use super::capabilities::CapPlan;

/// Who the child runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
}

/// A fully resolved description of one process to start.
pub struct Command<'a> {
    pub program: PathBuf,
    pub argv: Vec<String>,
    /// Bytes, not text: stackinit's own environment may hold any bytes, and passes them on as they are.
    pub env: Vec<(OsString, OsString)>,
    pub directory: Option<PathBuf>,
    pub credentials: Option<Credentials>,
    pub umask: Option<u32>,
    /// RLIMIT_NOFILE (soft, hard); None: inherited.
    pub nofile: Option<(u64, u64)>,
    pub nice: Option<i32>,
    pub no_new_privs: bool,
    /// Capabilities to drop from the bounding set and to hold after the uid change (capabilities.rs).
    pub capabilities: CapPlan,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// Passed as fds 3.. with LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID.
    pub listen_fds: Vec<(BorrowedFd<'a>, String)>,
    /// The `cgroup.procs` of the cgroup the child joins before anything else.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
}

/// Which step failed in the child, reported through the exec-error pipe.
const STEPS: [&str; 18] = [
    "reset signals",
    "setsid",
    "set up file descriptors",
    "umask",
    "set RLIMIT_NOFILE",
    "chdir",
    "drop capabilities",
    "setgroups",
    "setgid",
    "setuid",
    "set no_new_privs",
    "exec",
    "setpriority",
    "keep capabilities across setuid",
    "set capabilities",
    "raise ambient capabilities",
    "join its cgroup",
    "set its autogroup's nice",
];

/// capset(2)'s header and data, version 3 (64-bit sets as two 32-bit halves).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The capset data that makes exactly `caps` permitted, effective and inheritable (inheritable is what
/// PR_CAP_AMBIENT_RAISE requires).
fn cap_data(caps: &[u32]) -> [CapData; 2] {
    let mut data = [CapData::default(); 2];
    for &cap in caps {
        let (half, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        if let Some(d) = data.get_mut(half) {
            d.effective |= bit;
            d.permitted |= bit;
            d.inheritable |= bit;
        }
    }
    data
}

#[derive(Debug)]
pub struct SpawnError {
    pub step: &'static str,
    pub error: io::Error,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

/// Find `name` in `path_var` the way execvp would; names with a '/' are used as they are.
pub fn resolve_program(name: &str, path_var: &str, directory: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let path = match directory {
            Some(dir) if !name.starts_with('/') => dir.join(name),
            _ => PathBuf::from(name),
        };
        return is_executable(&path).then_some(path);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

/// Start the process. Returns its pid once exec succeeded, or why it failed (the failed child has then
/// already exited; its pid is in the error's `pid` so the reaper can route its status).
/// The program, its argv and its environment (with LISTEN_FDS and LISTEN_FDNAMES; LISTEN_PID is
/// written by the child) as C strings.
fn c_strings(cmd: &Command<'_>) -> io::Result<(CString, Vec<CString>, Vec<CString>)> {
    let program = cstring(cmd.program.as_os_str().as_bytes())?;
    let argv: Vec<CString> = cmd
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::with_capacity(cmd.env.len() + 3);
    for (k, v) in &cmd.env {
        env.push(cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
    }
    if !cmd.listen_fds.is_empty() {
        env.push(cstring(
            format!("LISTEN_FDS={}", cmd.listen_fds.len()).as_bytes(),
        )?);
        let names: Vec<&str> = cmd.listen_fds.iter().map(|(_, n)| n.as_str()).collect();
        env.push(cstring(
            format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
        )?);
    }
    Ok((program, argv, env))
}

pub fn spawn(cmd: &Command<'_>) -> Result<Pid, (Option<Pid>, SpawnError)> {
    let prep = |error: io::Error| {
        (
            None,
            SpawnError {
                step: "prepare",
                error,
            },
        )
    };
    // --- everything allocated before fork ---
    let (program, argv, env) = c_strings(cmd).map_err(prep)?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    // "LISTEN_PID=" + up to 20 digits + NUL, filled in by the child.
    let mut listen_pid_buf = [0u8; 40];
    let listen_pid_prefix = b"LISTEN_PID=";
    listen_pid_buf[..listen_pid_prefix.len()].copy_from_slice(listen_pid_prefix);
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    if !cmd.listen_fds.is_empty() {
        env_ptrs.push(listen_pid_buf.as_ptr().cast());
    }
    env_ptrs.push(std::ptr::null());
    let listen_pid_ptr: *mut u8 = listen_pid_buf.as_mut_ptr();

    let directory = match &cmd.directory {
        Some(d) => Some(cstring(d.as_os_str().as_bytes()).map_err(prep)?),
        None => None,
    };
    let groups: Vec<libc::gid_t> = cmd
        .credentials
        .as_ref()
        .map(|c| c.groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    let devnull: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(prep)?
        .into();

    // fd plan: target fd -> source fd.
    let mut sources: Vec<RawFd> = vec![
        devnull.as_raw_fd(),
        cmd.stdout.as_raw_fd(),
        cmd.stderr.as_raw_fd(),
    ];
    sources.extend(cmd.listen_fds.iter().map(|(fd, _)| fd.as_raw_fd()));
    let fd_count = sources.len() as RawFd;
    let mut high = vec![-1 as RawFd; sources.len()];

    let ambient_data = cap_data(&cmd.capabilities.ambient);
    let autogroup_nice = cmd
        .nice
        .map(super::autogroup::nice_text)
        .unwrap_or_default();
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| prep(e.into()))?;

    // SAFETY: after fork the child runs only `child_after_fork`, which makes async-signal-safe libc calls on
    // memory prepared above (no allocation, no locks) and ends in execve or _exit.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err((
            None,
            SpawnError {
                step: "fork",
                error: e.into(),
            },
        )),
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: see above; all pointers point into buffers that the (copied) parent stack keeps alive.
            unsafe {
                child_after_fork(ChildPlan {
                    program: program.as_ptr(),
                    argv: argv_ptrs.as_ptr(),
                    envp: env_ptrs.as_ptr(),
                    listen_pid: if cmd.listen_fds.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        listen_pid_ptr
                    },
                    listen_pid_offset: listen_pid_prefix.len(),
                    directory: directory.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
                    sources: &sources,
                    high: &mut high,
                    fd_count,
                    umask: cmd.umask,
                    nofile: cmd.nofile,
                    nice: cmd.nice,
                    autogroup_nice: &autogroup_nice,
                    drop_caps: &cmd.capabilities.drop_bounding,
                    ambient: &cmd.capabilities.ambient,
                    ambient_data: &ambient_data,
                    credentials: cmd
                        .credentials
                        .as_ref()
                        .map(|c| (c.uid.as_raw(), c.gid.as_raw())),
                    groups: &groups,
                    no_new_privs: cmd.no_new_privs,
                    cgroup_fd: cmd.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
                    err_fd: err_write.as_raw_fd(),
                })
            }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(err_write);
            match child_report(err_read) {
                Some(error) => Err((Some(child), error)),
                None => {
                    if let Some(nice) = cmd.nice {
                        super::autogroup::check(child, &cmd.program.to_string_lossy(), nice);
                    }
                    Ok(child)
                }
            }
        }
    }
}

/// What the child wrote on the error pipe before it could exec: the step that failed and its errno. The
/// read blocks only until the child execs (the pipe closes) or reports a failure: microseconds.
fn child_report(err_read: OwnedFd) -> Option<SpawnError> {
    let mut report = [0u8; 8];
    let mut got = 0;
    let mut file = std::fs::File::from(err_read);
    while got < report.len() {
        match io::Read::read(&mut file, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if got < report.len() {
        return None;
    }
    let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    Some(SpawnError {
        step: STEPS.get(step).copied().unwrap_or("exec"),
        error: io::Error::from_raw_os_error(errno),
    })
}

struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    listen_pid: *mut u8,
    listen_pid_offset: usize,
    directory: *const libc::c_char,
    sources: &'a [RawFd],
    high: &'a mut [RawFd],
    fd_count: RawFd,
    umask: Option<u32>,
    nofile: Option<(u64, u64)>,
    nice: Option<i32>,
    /// The nice as text for `/proc/self/autogroup`; empty: leave the autogroup alone.
    autogroup_nice: &'a [u8],
    drop_caps: &'a [u32],
    ambient: &'a [u32],
    ambient_data: &'a [CapData; 2],
    credentials: Option<(libc::uid_t, libc::gid_t)>,
    groups: &'a [libc::gid_t],
    no_new_privs: bool,
    /// `cgroup.procs` to write "0" to (the calling process joins), or -1.
    cgroup_fd: RawFd,
    err_fd: RawFd,
}

/// Write `/proc/self/autogroup`. Best effort: a kernel without autogroups has no such file, and the parent
/// checks the result and warns. A rate-limited write (EAGAIN) is retried for up to about 120 ms.
/// Async-signal-safe.
///
/// # Safety
/// Only in the child after fork.
unsafe fn set_autogroup_nice(text: &[u8]) {
    // SAFETY: open, write, nanosleep and close are async-signal-safe; the path is a NUL-terminated literal,
    // `text` a live buffer of its length, `pause` a valid timespec.
    unsafe {
        let fd = libc::open(
            c"/proc/self/autogroup".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        for _ in 0..12 {
            if libc::write(fd, text.as_ptr().cast(), text.len()) >= 0
                || *libc::__errno_location() != libc::EAGAIN
            {
                break;
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        libc::close(fd);
    }
}

/// Report `step` and errno to the parent and exit. Async-signal-safe.
///
/// # Safety
/// Only in the child after fork; `err_fd` is the error pipe's write end.
unsafe fn fail(err_fd: RawFd, step: usize) -> ! {
    // SAFETY: errno is this thread's; `write` and `_exit` are async-signal-safe and get a
    // valid buffer of its length.
    unsafe {
        let errno = *libc::__errno_location();
        let mut report = [0u8; 8];
        report[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        report[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_fd, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

/// Runs in the child between fork and exec. Only async-signal-safe calls; never returns.
///
/// # Safety
/// Only in the child after fork, with `plan` built from buffers prepared before fork.
unsafe fn child_after_fork(plan: ChildPlan<'_>) -> ! {
    // SAFETY: the caller's contract: this runs in the child between fork and exec, every pointer
    // in `plan` points into buffers the parent prepared before fork (the child's copy keeps them alive), and
    // every call below is async-signal-safe (no allocation, no locks).
    unsafe {
        let err = plan.err_fd;
        // 0: signals. The parent ignores SIGPIPE (Rust's runtime) and may block others; exec keeps both.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            fail(err, 0);
        }
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        // 1: own session and process group, so stop can signal the whole group and no terminal is shared.
        if libc::setsid() < 0 {
            fail(err, 1);
        }
        // 16: its own cgroup, before the fd plan can reuse the descriptor's number; children it forks
        // from here on are born in it.
        if plan.cgroup_fd >= 0 && libc::write(plan.cgroup_fd, b"0".as_ptr().cast(), 1) != 1 {
            fail(err, 16);
        }
        // 2: fds. Move every source above the target range first, so no dup2 clobbers a later source.
        let base = plan.fd_count + 3;
        for (i, &src) in plan.sources.iter().enumerate() {
            let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, base.max(err + 1));
            if fd < 0 {
                fail(err, 2);
            }
            plan.high[i] = fd;
        }
        for (target, &fd) in plan.high.iter().enumerate() {
            // dup2 clears FD_CLOEXEC on the target, so exactly these survive exec.
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(err, 2);
            }
        }
        // Close anything else a parent leaked without CLOEXEC (best effort; the error pipe is CLOEXEC).
        libc::syscall(
            libc::SYS_close_range,
            plan.fd_count as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        if !plan.listen_pid.is_null() {
            write_decimal(
                plan.listen_pid.add(plan.listen_pid_offset),
                libc::getpid() as u64,
            );
        }
        // 3, 4, 5
        if let Some(mask) = plan.umask {
            libc::umask(mask as libc::mode_t);
        }
        if let Some((soft, hard)) = plan.nofile {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                fail(err, 4);
            }
        }
        // 12: before dropping privileges, which a negative nice needs.
        if let Some(nice) = plan.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                fail(err, 12);
            }
        }
        // 17: the session's autogroup too (autogroup.rs says why), also before dropping privileges: a
        // negative nice needs CAP_SYS_NICE, and without CAP_SYS_ADMIN the kernel allows ten changes a second.
        if !plan.autogroup_nice.is_empty() {
            set_autogroup_nice(plan.autogroup_nice);
        }
        if !plan.directory.is_null() && libc::chdir(plan.directory) != 0 {
            fail(err, 5);
        }
        // 6: only capabilities in the set now are listed, and only when init may drop them (capabilities.rs),
        // so any failure means the service would keep what it must not: it does not start.
        for &cap in plan.drop_caps {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                fail(err, 6);
            }
        }
        // 13: capabilities to hold as another user survive the setuid only with keep-caps (cleared by exec).
        if !plan.ambient.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail(err, 13);
        }
        // 7, 8, 9: groups before gid before uid, while we still may.
        if let Some((uid, gid)) = plan.credentials {
            if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
                fail(err, 7);
            }
            if libc::setgid(gid) != 0 {
                fail(err, 8);
            }
            if libc::setuid(uid) != 0 {
                fail(err, 9);
            }
        }
        // 14, 15: exactly the kept capabilities, then into the ambient set, which carries them through exec.
        if !plan.ambient.is_empty() {
            let mut header = CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            };
            if libc::syscall(libc::SYS_capset, &mut header, plan.ambient_data.as_ptr()) != 0 {
                fail(err, 14);
            }
            for &cap in plan.ambient {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                if libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0) != 0 {
                    fail(err, 15);
                }
            }
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(err, 10);
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(err, 11)
    }
}

/// Write `value` as decimal digits plus NUL at `dst` (the buffer has room for 20 digits). No allocation.
///
/// # Safety
/// `dst` must be valid for 21 bytes of writes.
unsafe fn write_decimal(dst: *mut u8, mut value: u64) {
    // SAFETY: the caller's contract: `dst` has room for 20 digits and a NUL.
    unsafe {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (value % 10) as u8;
            n += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for i in 0..n {
            *dst.add(i) = digits[n - 1 - i];
        }
        *dst.add(n) = 0;
    }
}

/// Look up a user, its primary group and supplementary groups (initgroups semantics), before fork.
pub fn credentials_for(user: &str, group: Option<&str>) -> io::Result<Credentials> {
    let not_found = |what: &str| io::Error::new(io::ErrorKind::NotFound, what.to_string());
    let entry = nix::unistd::User::from_name(user)?
        .ok_or_else(|| not_found(&format!("unknown user {user:?}")))?;
    let gid = match group {
        Some(g) => {
            nix::unistd::Group::from_name(g)?
                .ok_or_else(|| not_found(&format!("unknown group {g:?}")))?
                .gid
        }
        None => entry.gid,
    };
    let name = cstring(OsStr::new(user).as_bytes())?;
    let mut groups = nix::unistd::getgrouplist(&name, gid)?;
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    Ok(Credentials {
        uid: entry.uid,
        gid,
        groups,
    })
}
