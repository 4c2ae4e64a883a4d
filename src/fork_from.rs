//! `stackinit fork-from SOCKET`: start a replica by forking it from a warm template process instead of loading
//! the app again.
//!
//! A Python app takes seconds to import (tens under emulation), once per replica. A template service
//! (`stackinit_wsgi.py --template`) loads it once and listens on SOCKET; each replica's command is this
//! client. It runs as the replica's main process, hands the template its stdio (the replica's log pipes), its
//! LISTEN_FDS sockets and its environment, and gets back the pid of the worker the template forked with them.
//! The template double-forks, so the worker is re-parented to init (PID 1 or the subreaper) and reaped by its
//! one reaper. This client then tells init `MAINPID=<worker>` and `READY=1` in one datagram, sent by the
//! current main pid (the only sender init accepts MAINPID from), and exits: from then on init supervises,
//! signals and restarts the worker like any main process. A restart forks a new worker in milliseconds.
#![forbid(unsafe_code)]

use std::io::{BufRead, IoSlice, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// How long the template may take to answer (it forks; it does not load anything).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub fn main(socket: &Path) -> ExitCode {
    match fork_from(socket) {
        Ok(worker) => {
            eprintln!(
                "stackinit fork-from: worker {worker} forked from {}",
                socket.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stackinit fork-from {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}

fn fork_from(socket: &Path) -> Result<i32, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));

    let listen_fds: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .filter(|_| std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let fds: Vec<RawFd> = (0..3 + listen_fds).collect();
    let request = request_json(std::env::vars_os(), std::env::current_dir().ok().as_deref());

    // The fds ride on the first bytes; the rest of the one-line request follows.
    let request = format!("{request}\n");
    let (first, rest) = request.as_bytes().split_at(1);
    let rights = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(first)],
        &rights,
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("send fds: {e}"))?;
    stream
        .write_all(rest)
        .map_err(|e| format!("send request: {e}"))?;

    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("read answer: {e}"))?;
    let answer = answer.trim();
    let worker: i32 = answer
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| format!("the template answered {answer:?}"))?;

    // One datagram: init switches to the worker and marks it ready together, before this process exits.
    let states = [
        sd_notify::NotifyState::MainPid(worker as u32),
        sd_notify::NotifyState::Ready,
    ];
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Err("no NOTIFY_SOCKET: init cannot learn the worker's pid".into());
    }
    sd_notify::notify(&states).map_err(|e| format!("notify init: {e}"))?;
    // Only now may the worker serve: had this process died before telling init, the worker would be
    // running untracked. It waits for this (and exits on EOF instead).
    stream
        .write_all(b"go\n")
        .map_err(|e| format!("hand over: {e}"))?;
    Ok(worker)
}

/// `{"env": {...}, "cwd": "..."}` on one line (JSON escapes newlines): what the worker takes over.
fn request_json(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    cwd: Option<&Path>,
) -> String {
    let env: serde_json::Map<String, serde_json::Value> = vars
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect();
    serde_json::json!({
        "env": env,
        "cwd": cwd.map(|c| c.display().to_string()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_env_and_cwd() {
        let vars = vec![
            ("STACKINIT_REPLICA".into(), "2".into()),
            ("LISTEN_FDS".into(), "1".into()),
        ];
        let json: serde_json::Value =
            serde_json::from_str(&request_json(vars.into_iter(), Some(Path::new("/srv/app"))))
                .unwrap();
        assert_eq!(json["env"]["STACKINIT_REPLICA"], "2");
        assert_eq!(json["cwd"], "/srv/app");
    }
}
