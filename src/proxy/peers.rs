//! What the proxy's workers know of themselves and of each other: how many there are and which one the
//! calling thread is (for per-worker pools and buffers), how many connections each serves, and how an
//! accepted connection goes to the worker that should serve it (`workers` runs them, `server` accepts).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Workers of this process, set once at start (pools are sized by it); 1 until then (unit tests).
static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's worker number; 0 outside the workers (the main thread, tests).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers `[proxy] workers` asks for; by default one per core this process may run on
/// (`available_parallelism`: sched_getaffinity, and a cgroup CPU quota if lower), not the machine's count.
pub fn wanted(spec: &crate::config::ProxySpec) -> usize {
    match spec.workers {
        Some(n) => (n as usize).max(1),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The number of workers (each upstream replica keeps one idle pool per worker).
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// The calling thread's worker number, below `count()`.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Fix the worker count before the first routing table is built.
pub fn set_count(n: usize) {
    COUNT.store(n.max(1), Ordering::Relaxed);
}

/// Mark the calling thread as worker `index`.
pub fn enter(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// A just-accepted connection, counted on the worker chosen to serve it.
pub struct Accepted {
    pub stream: Stream,
    pub remote: Option<std::net::SocketAddr>,
    pub tls: bool,
    pub load: Load,
}

/// What the workers know of each other: how many connections each serves, and how to hand one over.
pub struct Peers {
    loads: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Accepted>]>,
}

/// A connection counted on the worker that serves it, from the accept until it closes.
pub struct Load {
    peers: Arc<Peers>,
    worker: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.peers.loads[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Peers {
    /// One worker per inbox, each serving nothing yet.
    pub fn new(inboxes: Vec<mpsc::UnboundedSender<Accepted>>) -> Peers {
        Peers {
            loads: inboxes.iter().map(|_| AtomicUsize::new(0)).collect(),
            inboxes: inboxes.into(),
        }
    }

    /// The worker that should serve a new connection: the one serving the fewest, this one on a tie.
    pub fn assign(self: &Arc<Peers>) -> Load {
        let me = current().min(self.loads.len() - 1);
        let load = |w: usize| self.loads[w].load(Ordering::Relaxed);
        let least = (0..self.loads.len()).min_by_key(|&w| load(w)).unwrap_or(me);
        let worker = if load(me) <= load(least) { me } else { least };
        self.count_on(worker)
    }

    fn count_on(self: &Arc<Peers>, worker: usize) -> Load {
        self.loads[worker].fetch_add(1, Ordering::Relaxed);
        Load {
            peers: Arc::clone(self),
            worker,
        }
    }

    /// Send a connection to the worker assigned to it; back (counted here) if that is this worker, or if
    /// the other cannot take it (stopped, or never started).
    pub fn hand_off(self: &Arc<Peers>, accepted: Accepted) -> Option<Accepted> {
        let me = current();
        if accepted.load.worker == me {
            return Some(accepted);
        }
        let worker = accepted.load.worker;
        let accepted = match accepted.with_stream(Stream::unregister) {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("cannot hand a connection to worker {worker}: {e}");
                return None;
            }
        };
        match self.inboxes[worker].send(accepted) {
            Ok(()) => None,
            Err(returned) => {
                let mut accepted = returned.0;
                accepted.load = self.count_on(me.min(self.loads.len() - 1));
                Some(accepted)
            }
        }
    }
}

impl Accepted {
    /// The same connection, its stream taken on or off a worker's event loop by `step`.
    pub fn with_stream(
        self,
        step: fn(Stream) -> std::io::Result<Stream>,
    ) -> std::io::Result<Accepted> {
        let Accepted {
            stream,
            remote,
            tls,
            load,
        } = self;
        Ok(Accepted {
            stream: step(stream)?,
            remote,
            tls,
            load,
        })
    }
}

/// A client stream: registered with a worker's event loop, or in between two workers.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    StdTcp(std::net::TcpStream),
    StdUnix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Off this worker's event loop, to be sent to another.
    pub fn unregister(self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::StdTcp(s.into_std()?),
            Stream::Unix(s) => Stream::StdUnix(s.into_std()?),
            other => other,
        })
    }

    /// On the calling worker's event loop.
    pub fn register(self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::StdTcp(s) => Stream::Tcp(tokio::net::TcpStream::from_std(s)?),
            Stream::StdUnix(s) => Stream::Unix(tokio::net::UnixStream::from_std(s)?),
            registered => registered,
        })
    }
}
