//! The task that moves bytes from a service's log pipe into its rotating file and to live subscribers.
#![forbid(unsafe_code)]

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, oneshot};

use super::lines::{split_lines, LineBuffer};
use super::rotating::{FileEvent, RotatingFile};

/// Read this much (or until the pipe is empty) before writing, so a busy pipe costs one write per batch.
const BATCH: usize = 256 * 1024;
/// At shutdown, stop draining after this much even if writers keep going.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

pub type SharedFile = Arc<Mutex<RotatingFile>>;

/// The live line feed of a log, created when the first subscriber arrives.
pub type LineFeed = Arc<std::sync::OnceLock<broadcast::Sender<Bytes>>>;

/// Locks the file, ignoring poisoning: the file state stays usable, and PID 1 must not panic.
pub fn lock(file: &SharedFile) -> MutexGuard<'_, RotatingFile> {
    file.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn report(events: Vec<FileEvent>) {
    for event in events {
        match event {
            FileEvent::WriteRecovered { .. } | FileEvent::RotateRecovered { .. } => {
                tracing::info!("{event}")
            }
            _ => tracing::warn!("{event}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// The pipe has nothing more right now.
    Empty,
    /// A batch is buffered; there may be more.
    Full,
    Ended,
}

pub struct Pump {
    pub pipe: pipe::Receiver,
    pub file: SharedFile,
    pub lines: LineFeed,
    pub shutdown: oneshot::Receiver<()>,
}

impl Pump {
    pub async fn run(mut self) {
        let mut input = LineBuffer::new();
        loop {
            let ready = tokio::select! {
                biased;
                _ = &mut self.shutdown => None,
                ready = self.pipe.readable() => Some(ready),
            };
            let Some(ready) = ready else {
                // The ServiceLog is gone: take what is already in the pipe, then stop.
                let mut drained = 0;
                while drained < DRAIN_LIMIT {
                    let state = self.fill(&mut input);
                    drained += input.len();
                    self.deliver_complete(&mut input);
                    if state != Fill::Full {
                        break;
                    }
                }
                break;
            };
            if let Err(e) = ready {
                tracing::error!(
                    "log {}: pipe wait failed: {e}",
                    lock(&self.file).path().display()
                );
                break;
            }
            let state = self.fill(&mut input);
            self.deliver_complete(&mut input);
            if state == Fill::Ended {
                break;
            }
        }
        if let Some(run) = input.take_all() {
            self.deliver(run);
        }
    }

    /// Reads until the pipe is empty, a batch is buffered, or the pipe ends (every write end is closed,
    /// which only happens once the ServiceLog is gone) or fails.
    fn fill(&mut self, input: &mut LineBuffer) -> Fill {
        while input.len() < BATCH {
            match self.pipe.try_read_buf(input.read_target()) {
                Ok(0) => return Fill::Ended,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Fill::Empty,
                Err(e) => {
                    tracing::error!(
                        "log {}: pipe read failed: {e}",
                        lock(&self.file).path().display()
                    );
                    return Fill::Ended;
                }
            }
        }
        Fill::Full
    }

    fn deliver_complete(&mut self, input: &mut LineBuffer) {
        if let Some(run) = input.take_lines() {
            self.deliver(run);
        }
    }

    /// Writes a run of complete lines, then publishes them one by one (slices, no copies).
    fn deliver(&mut self, run: Bytes) {
        let events = {
            let mut file = lock(&self.file);
            file.write_lines(&run);
            if file.has_events() {
                file.take_events()
            } else {
                Vec::new()
            }
        };
        report(events);
        if let Some(feed) = self.lines.get().filter(|f| f.receiver_count() > 0) {
            for line in split_lines(&run) {
                // Only fails when the last subscriber just left.
                let _ = feed.send(line);
            }
        }
    }
}
