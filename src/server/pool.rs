//! The article's Python server: a pool of worker threads.
//!
//! `threads` workers each take one client at a time from a bounded channel
//! and serve it to the end. The accept loop puts each accepted client into
//! that channel. With the default capacity of zero the channel is a
//! rendezvous: the accept loop blocks until a worker is free, and further
//! clients wait, unserved, in the kernel's listen backlog. This is how a
//! pool rate-limits: at most `threads` clients are served at once, however
//! many arrive, and the rest queue instead of costing threads.
//!
//! The article adds that the pool's size could follow the load. With
//! `max_threads` above `threads` it does: when a client is accepted while
//! no worker is idle, the accept loop starts another worker (up to
//! `max_threads`) before handing the client over; a worker that then finds
//! nothing to do for `keep_alive` leaves, down to `threads`.
//!
//! On shutdown the accept loop drops the sender; workers finish their
//! clients, close any still queued without serving them, see the channel
//! disconnect and exit, and are joined.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError, select};
use tracing::{info, warn};

use super::admission::Refusal;
use super::conn::{self, ThreadBuffers};
use super::counters::Ended;
use super::listener::{self, Io};
use super::log::LOG_TARGET;
use super::memory;
use super::model::PoolSettings;
use super::registry::Permit;
use super::state::ServerState;

/// A client waiting for a worker: its connection, when it was accepted,
/// and its place among the clients served at once.
struct Queued {
    stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    permit: Permit,
    // Counts it among the clients waiting for a worker while it lives.
    _waiting: Waiting,
}

/// One client counted as waiting for a worker (the metrics' gauge), from
/// its accept until a worker takes it or it is let go.
struct Waiting(Arc<ServerState>);

impl Waiting {
    fn new(state: &Arc<ServerState>) -> Self {
        state.counters.pool_waiting(1);
        Waiting(Arc::clone(state))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.counters.pool_waiting(-1);
    }
}

/// The workers, and what growing and shrinking them needs.
struct Pool {
    state: Arc<ServerState>,
    settings: PoolSettings,
    queue: Receiver<Queued>,
    /// Workers alive (also in the summary's `pool_threads`).
    alive: AtomicUsize,
    /// Workers waiting for a client.
    idle: AtomicUsize,
    min: usize,
    max: usize,
    workers: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicUsize,
}

impl Pool {
    /// Starts one more worker, if the pool is below `limit`; true if it did.
    /// Under an address-space limit a worker that does not fit is not
    /// started ([`ErrorKind::OutOfMemory`]). Returns once the worker runs
    /// and holds its buffers, so that the next check sees all it mapped.
    fn grow(self: &Arc<Self>, limit: usize) -> io::Result<bool> {
        let grew = self
            .alive
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !grew {
            return Ok(false);
        }
        let started = self.start_worker();
        if started.is_err() {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
        started.map(|()| true)
    }

    fn start_worker(self: &Arc<Self>) -> io::Result<()> {
        let config = &self.state.config;
        let (stack, rest) = (memory::stack_size(config), memory::thread_cost(config));
        self.state
            .stacks
            .check_thread(&self.state.budget, stack, rest)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::clone(self);
        let (ready, started) = mpsc::sync_channel(1);
        let worker = config
            .thread_builder(format!("worker-{id}"))
            .spawn(move || pool.work(ready))?;
        let start = started
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the worker ended as it started")));
        if let Err(e) = start {
            let _ = worker.join();
            self.state.stacks.thread_ended();
            return Err(e);
        }
        self.state.counters.pool_threads(1);
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        Ok(())
    }

    /// Leaves the pool if it is above its minimum; true if this worker
    /// should exit.
    fn retire(&self) -> bool {
        let left = self
            .alive
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > self.min).then_some(n - 1)
            });
        match left {
            Ok(was) => {
                self.state.counters.pool_threads(-1);
                info!(
                    "pool shrinks to {} threads: a worker was idle for {:?}",
                    was - 1,
                    self.settings.keep_alive
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Reserves the worker's buffers, says whether it could, and then
    /// serves clients from the hand-off with them.
    fn work(&self, ready: mpsc::SyncSender<io::Result<()>>) {
        let mut buffers = match ThreadBuffers::reserve(&self.state) {
            Ok(buffers) => buffers,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let adaptive = self.max > self.min;
        loop {
            self.idle.fetch_add(1, Ordering::SeqCst);
            self.state.counters.pool_idle(1);
            let job = if adaptive {
                self.queue.recv_timeout(self.settings.keep_alive)
            } else {
                self.queue
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            };
            self.idle.fetch_sub(1, Ordering::SeqCst);
            self.state.counters.pool_idle(-1);
            match job {
                Ok(job) => self.serve(job, &mut buffers),
                Err(RecvTimeoutError::Timeout) => {
                    if self.retire() {
                        self.state.stacks.thread_ended();
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn serve(&self, job: Queued, buffers: &mut ThreadBuffers) {
        let state = &self.state;
        if state.shutdown.is_triggered() {
            // Accepted but never served (its permit goes with it).
            let client = job.permit.client();
            drop(job);
            state.registry.ended(client, Ended::ClosedAtShutdown);
            return;
        }
        let Queued {
            stream,
            peer,
            accepted,
            permit,
            _waiting: taken,
        } = job;
        // A worker has it: it waits no more.
        drop(taken);
        if idled_out_in_queue(state, &self.settings, &stream, accepted) {
            info!(target: LOG_TARGET, "peer {peer} closed unserved: sent nothing while it waited past the idle timeout");
            drop(stream);
            state.registry.ended(permit.client(), Ended::TimedOut);
            return;
        }
        conn::admit(state, stream, peer, permit).serve(buffers);
    }
}

pub(crate) fn run(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &PoolSettings,
) -> io::Result<()> {
    let (jobs, queue) = crossbeam_channel::bounded::<Queued>(settings.queue);
    let min = settings.threads;
    let pool = Arc::new(Pool {
        state: Arc::clone(state),
        settings: settings.clone(),
        queue,
        alive: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        min,
        max: settings.max_threads,
        workers: Mutex::new(Vec::new()),
        next_id: AtomicUsize::new(0),
    });
    for _ in 0..min {
        if let Err(e) = pool.grow(min) {
            // Starting the pool is setting the server up: without its
            // workers it cannot serve anyone.
            state.shutdown.trigger();
            drop(jobs);
            join_all(&pool);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start the pool's workers: {e}"),
            ));
        }
    }

    let stop = state.shutdown.channel();
    let adaptive = pool.max > pool.min;
    let result = listener::accept_loop(
        listener,
        state,
        Io::Blocking,
        |admission, stream, peer, permit| {
            let client = permit.client();
            let job = Queued {
                stream,
                peer,
                accepted: Instant::now(),
                permit,
                _waiting: Waiting::new(state),
            };
            // Grow while every worker is busy. `idle` can still count a
            // worker that is just taking the previous client, so a client that
            // no worker takes at once makes the pool grow too; otherwise it
            // could wait, below the maximum, for a worker that never frees.
            let mut grown =
                (adaptive && pool.idle.load(Ordering::SeqCst) == 0).then(|| pool.grow(pool.max));
            let job = match jobs.try_send(job) {
                Ok(()) => return ControlFlow::Continue(()),
                Err(TrySendError::Disconnected(_)) => {
                    // Every worker is gone; nobody can serve this client.
                    state.registry.ended(client, Ended::Failed);
                    return ControlFlow::Break(());
                }
                Err(TrySendError::Full(job)) => job,
            };
            if adaptive && grown.is_none() {
                grown = Some(pool.grow(pool.max));
            }
            match grown {
                Some(Ok(true)) => info!(
                    "pool grows to {} threads: every worker was busy",
                    pool.alive.load(Ordering::SeqCst)
                ),
                // At its maximum: the client waits for a worker.
                None | Some(Ok(false)) => {}
                // The address-space limit leaves no room for another worker,
                // no worker took the client and the queue has no place: it
                // cannot be afforded now, and is refused rather than left
                // waiting for a worker the pool, below its maximum, would
                // otherwise have started.
                Some(Err(e)) if e.kind() == ErrorKind::OutOfMemory => {
                    admission.reject(job, peer, client, Refusal::NoWorker(e));
                    return ControlFlow::Continue(());
                }
                // The pool goes on serving with the workers it has.
                Some(Err(e)) => warn!("cannot grow the pool: {e}"),
            }
            select! {
                send(jobs, job) -> sent => match sent {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => {
                        state.registry.ended(client, Ended::Failed);
                        ControlFlow::Break(())
                    }
                },
                recv(stop) -> _ => {
                    state.registry.ended(client, Ended::ClosedAtShutdown);
                    ControlFlow::Break(())
                }
            }
        },
    );
    drop(jobs);
    join_all(&pool);
    result
}

/// Joins every worker, retired ones included. Only the accept loop grows
/// the pool, and it has returned, so the list is complete.
fn join_all(pool: &Pool) {
    let workers = std::mem::take(&mut *pool.workers.lock().unwrap_or_else(|e| e.into_inner()));
    for worker in workers {
        let _ = worker.join();
    }
}

/// Whether a client that waited in the hand-off has already been silent
/// for the whole idle timeout. Serving it would hold a worker for another
/// full timeout; with a few idle clients queued per worker, everyone behind
/// them would wait that long again and again. Its idle time is counted
/// from its accept; the time it spent in the kernel's backlog before that
/// is unknown to the server, which is why a queue (`--queue`) lets the idle
/// timeout clear idle clients out faster than a rendezvous does.
fn idled_out_in_queue(
    state: &ServerState,
    settings: &PoolSettings,
    stream: &TcpStream,
    accepted: Instant,
) -> bool {
    let Some(limit) = state.config.idle_timeout else {
        return false;
    };
    // A rendezvous has no queue: the client waited in the accept loop's
    // hand, for a worker, as a polite client waits for its `*`. Only
    // clients parked in a `--queue` are shed.
    if settings.queue == 0 {
        return false;
    }
    if accepted.elapsed() < limit {
        return false;
    }
    let mut probe = [0u8; 1];
    let silent = stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock);
    // Served after all: back to blocking I/O for the worker.
    silent || stream.set_nonblocking(false).is_err()
}
