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
        tokio::select! {
            changed = config.changed() => { if changed.is_err() { return; } send_config = true; send_state = false; }
            changed = state.changed() => { if changed.is_err() { return; } send_config = false; send_state = true; }
        }
    }
}
