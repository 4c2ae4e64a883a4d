//! The proxy's worker threads: one current-thread runtime each, with its own accept loops on the shared
//! listeners (a dup of each inherited socket: init still owns them all), its own connections and its own
//! upstream pools. A worker that accepts a connection while another serves fewer hands it over (`Peers`), so
//! connections spread evenly however the workers' wake-ups race. What must be global stays in `Shared` (routes, health, the admission gates, the
//! connection cap); a worker only keeps to itself what no other worker needs: idle upstream connections
//! (`upstream::Replica`'s per-worker pools) and access log lines not yet written (`access_log`).
//!
//! Why threads with a runtime each, not one multi-thread runtime: a connection's task, its upstream
//! connection's task and its timers then live on one thread, so a request never wakes another core
//! (measured in benches/proxy.sh; see the README's proxy figures).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::server::{self, Accepted, BoundListener, Listener};
use super::shared::Shared;

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
        let Accepted {
            stream,
            remote,
            tls,
            load,
        } = accepted;
        let stream = match stream.unregister() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot hand a connection to worker {worker}: {e}");
                return None;
            }
        };
        let accepted = Accepted {
            stream,
            remote,
            tls,
            load,
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

/// A listener as a plain socket, to be registered with each worker's own event loop.
enum Socket {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

struct Handed {
    socket: Socket,
    tls: bool,
    label: String,
}

impl Handed {
    fn try_clone(&self) -> std::io::Result<Handed> {
        let socket = match &self.socket {
            Socket::Tcp(l) => Socket::Tcp(l.try_clone()?),
            Socket::Unix(l) => Socket::Unix(l.try_clone()?),
        };
        Ok(Handed {
            socket,
            tls: self.tls,
            label: self.label.clone(),
        })
    }

    /// Registered with the calling thread's runtime.
    fn into_bound(self) -> std::io::Result<BoundListener> {
        let listener = match self.socket {
            Socket::Tcp(l) => Listener::Tcp(tokio::net::TcpListener::from_std(l)?),
            Socket::Unix(l) => Listener::Unix(tokio::net::UnixListener::from_std(l)?),
        };
        Ok(BoundListener {
            listener,
            tls: self.tls,
            label: self.label,
        })
    }
}

/// Start `n` workers on `listeners`. Each ends once `stop` is set and its connections have finished;
/// `done` is dropped by the last one to end (the caller waits on its receiver, bounded by `stop_grace`).
pub fn start(
    n: usize,
    listeners: Vec<BoundListener>,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) -> Result<(), String> {
    let handed: Vec<Handed> = listeners
        .into_iter()
        .map(|b| {
            let socket = match b.listener {
                Listener::Tcp(l) => l.into_std().map(Socket::Tcp),
                Listener::Unix(l) => l.into_std().map(Socket::Unix),
            }
            .map_err(|e| format!("{}: {e}", b.label))?;
            Ok(Handed {
                socket,
                tls: b.tls,
                label: b.label,
            })
        })
        .collect::<Result<_, String>>()?;
    let (inboxes, mut receivers): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let peers = Arc::new(Peers {
        loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        inboxes: inboxes.into(),
    });
    for (index, inbox) in receivers.drain(..).enumerate() {
        let mine = handed
            .iter()
            .map(|h| h.try_clone().map_err(|e| format!("{}: {e}", h.label)))
            .collect::<Result<Vec<_>, String>>()?;
        let worker = Worker {
            index,
            listeners: mine,
            inbox,
            peers: Arc::clone(&peers),
            shared: Arc::clone(shared),
            stop: stop.clone(),
        };
        let done = done.clone();
        std::thread::Builder::new()
            .name(format!("proxy-worker-{index}"))
            .spawn(move || run(worker, done))
            .map_err(|e| format!("cannot start worker thread {index}: {e}"))?;
    }
    Ok(())
}

/// What one worker thread is given.
struct Worker {
    index: usize,
    listeners: Vec<Handed>,
    inbox: mpsc::UnboundedReceiver<Accepted>,
    peers: Arc<Peers>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

/// One worker: its runtime serves until stopped and drained, then its access log lines are written.
fn run(worker: Worker, done: mpsc::Sender<()>) {
    let index = worker.index;
    INDEX.with(|i| i.set(index));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, "cannot start the runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let Worker {
            listeners,
            inbox,
            peers,
            shared,
            stop,
            ..
        } = worker;
        let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
        tokio::spawn(server::receive_loop(
            inbox,
            Arc::clone(&shared),
            stop.clone(),
            drain_tx.clone(),
        ));
        for handed in listeners {
            let label = handed.label.clone();
            match handed.into_bound() {
                Ok(bound) => {
                    tokio::spawn(server::accept_loop(
                        bound,
                        Arc::clone(&shared),
                        stop.clone(),
                        drain_tx.clone(),
                        Arc::clone(&peers),
                    ));
                }
                Err(e) => tracing::error!(worker = index, listener = %label, "{e}"),
            }
        }
        drop(drain_tx);
        // None once every loop has stopped and every connection of this worker has ended.
        let _ = drain_rx.recv().await;
    });
    drop(runtime);
    super::access_log::flush_thread();
    drop(done);
}
