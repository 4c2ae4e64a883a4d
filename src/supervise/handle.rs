//! The supervisor's mailbox: how the control server (and init's signal handling) ask it to do things.
//!
//! Everything the supervisor does happens on its one event loop; other tasks only send it requests.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::api::{ActionReply, ApiError, ReloadReply, ServiceStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Where a service's log lives, and a live feed of the complete lines written to it from now on.
pub struct LogSource {
    pub path: PathBuf,
    pub lines: broadcast::Receiver<Bytes>,
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum Request {
    /// `name`: a service (`app`, all its replicas) or a replica (`app@1`); None for all.
    Status {
        name: Option<String>,
        reply: Reply<Vec<ServiceStatus>>,
    },
    Control {
        name: String,
        action: Action,
        reply: Reply<ActionReply>,
    },
    Reload {
        reply: Reply<ReloadReply>,
    },
    Shutdown {
        reboot: bool,
        reply: Reply<ActionReply>,
    },
    Logs {
        name: String,
        stream: LogStream,
        reply: Reply<LogSource>,
    },
}

/// A cheap, cloneable sender to the supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Request>,
}

fn gone() -> ApiError {
    ApiError {
        status: 503,
        message: "supervisor is shutting down".into(),
    }
}

impl Handle {
    pub fn new() -> (Handle, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Handle { tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    pub async fn status(&self, name: Option<String>) -> Result<Vec<ServiceStatus>, ApiError> {
        self.ask(|reply| Request::Status { name, reply }).await
    }

    pub async fn control(&self, name: String, action: Action) -> Result<ActionReply, ApiError> {
        self.ask(|reply| Request::Control {
            name,
            action,
            reply,
        })
        .await
    }

    pub async fn reload(&self) -> Result<ReloadReply, ApiError> {
        self.ask(|reply| Request::Reload { reply }).await
    }

    pub async fn shutdown(&self, reboot: bool) -> Result<ActionReply, ApiError> {
        self.ask(|reply| Request::Shutdown { reboot, reply }).await
    }

    pub async fn logs(&self, name: String, stream: LogStream) -> Result<LogSource, ApiError> {
        self.ask(|reply| Request::Logs {
            name,
            stream,
            reply,
        })
        .await
    }
}
