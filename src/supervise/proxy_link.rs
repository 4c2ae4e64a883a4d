//! The channel init gives the proxy: JSON lines over a socketpair, fed from watch channels.
//!
//! A writer task per proxy process sends the current config, then the current state, then every change.
//! Watch channels coalesce bursts, so a slow proxy only ever sees the latest state.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::protocol::{InitMessage, ProxyRuntimeConfig, ProxyState};

pub struct ProxyFeeds {
    pub config: watch::Sender<Option<Arc<ProxyRuntimeConfig>>>,
    pub state: watch::Sender<ProxyState>,
}

impl ProxyFeeds {
    pub fn new() -> ProxyFeeds {
        ProxyFeeds {
            config: watch::channel(None).0,
            state: watch::channel(ProxyState::default()).0,
        }
    }

    /// A new channel for a new proxy process: returns the child's end and the writer task.
    pub fn connect(&self) -> io::Result<(OwnedFd, JoinHandle<()>)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let std_stream = std::os::unix::net::UnixStream::from(ours);
        std_stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(std_stream)?;
        let config = self.config.subscribe();
        let state = self.state.subscribe();
        let task = tokio::task::spawn_local(feed(stream, config, state));
        Ok((theirs, task))
    }
}

fn line(message: &InitMessage) -> Vec<u8> {
    let mut text = serde_json::to_vec(message).unwrap_or_default();
    text.push(b'\n');
    text
}

async fn feed(
    mut stream: tokio::net::UnixStream,
    mut config: watch::Receiver<Option<Arc<ProxyRuntimeConfig>>>,
    mut state: watch::Receiver<ProxyState>,
) {
    let mut send_config = true;
    let mut send_state = true;
    loop {
        if send_config {
            let current = config.borrow_and_update().clone();
            if let Some(c) = current {
                if stream
                    .write_all(&line(&InitMessage::Config((*c).clone())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if send_state || send_config {
            let current = state.borrow_and_update().clone();
            if stream
                .write_all(&line(&InitMessage::State(current)))
                .await
                .is_err()
            {
                return;
            }
        }
        // Biased: when both changed, the config goes first (and the state after it). Readiness is by name,
        // and a rolling restart gives a replica's name to its successor on another socket: a state sent
        // ahead of its config would mark the old process's socket ready again, and requests would wait in
        // the backlog of a socket nobody serves.
        tokio::select! {
            biased;
            changed = config.changed() => { if changed.is_err() { return; } send_config = true; send_state = false; }
            changed = state.changed() => { if changed.is_err() { return; } send_config = false; send_state = true; }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    fn runtime(logs: &str) -> Arc<ProxyRuntimeConfig> {
        Arc::new(ProxyRuntimeConfig {
            proxy: Default::default(),
            upstreams: Default::default(),
            extra_server_names: vec![],
            logs_dir: logs.into(),
        })
    }

    /// Reads one line of the proxy's end and names its message kind.
    async fn next_kind(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::UnixStream>>,
    ) -> String {
        let line = lines.next_line().await.unwrap().unwrap();
        match serde_json::from_str::<InitMessage>(&line).unwrap() {
            InitMessage::Config(c) => format!("config {}", c.logs_dir.display()),
            InitMessage::State(s) => format!("state {:?}", Vec::from_iter(s.ready)),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_config_and_a_state_published_together_arrive_config_first() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let feeds = ProxyFeeds::new();
                feeds.config.send_replace(Some(runtime("/one")));
                let (theirs, _task) = feeds.connect().unwrap();
                let std = std::os::unix::net::UnixStream::from(theirs);
                std.set_nonblocking(true).unwrap();
                let mut lines =
                    tokio::io::BufReader::new(tokio::net::UnixStream::from_std(std).unwrap())
                        .lines();
                assert_eq!(next_kind(&mut lines).await, "config /one");
                assert_eq!(next_kind(&mut lines).await, "state []");
                // A rollout's swap: the config (the name now on another socket) and the state naming it
                // ready change in the same tick. Many times, since an unbiased select picks at random.
                for round in 0..50 {
                    let logs = format!("/r{round}");
                    feeds.config.send_replace(Some(runtime(&logs)));
                    feeds.state.send_replace(ProxyState {
                        ready: [format!("app@{round}")].into(),
                        ..Default::default()
                    });
                    assert_eq!(next_kind(&mut lines).await, format!("config {logs}"));
                    assert_eq!(
                        next_kind(&mut lines).await,
                        format!("state [\"app@{round}\"]")
                    );
                }
            })
            .await;
    }
}
