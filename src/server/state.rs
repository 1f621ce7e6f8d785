//! The server's shared state: its counters, the [`Summary`] they add up
//! to, and the registry of clients being served, which the connection cap
//! reads and the end of a drain uses to close whoever is left.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tracing::warn;

use super::memory::{Budget, Stacks};
use super::{Config, Shutdown, conn};

/// What a server did, counted as it ran. A running server's
/// [`Server::summary`](super::Server::summary) is a snapshot; [`run`](super::run)
/// returns the final one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections taken from the listen backlog.
    pub accepted: u64,
    /// Clients that got `*` and ended without an error on our side.
    pub served: u64,
    /// Clients ended by an error: read, write, thread spawn, a memory
    /// reservation that failed while serving them, or a panic.
    pub failed: u64,
    /// Clients closed by the idle or the write timeout.
    pub timed_out: u64,
    /// Clients closed unserved, without a `*`, as they were accepted:
    /// over the connection limit
    /// ([`OverLimit::Reject`](super::OverLimit::Reject)), or more than the
    /// address-space limit (`ulimit -v`) leaves room for.
    pub rejected: u64,
    /// Clients the shutdown ended: accepted but never served because the
    /// server was stopping, or still connected when the drain timeout ran
    /// out, whatever they were doing then.
    pub closed_at_shutdown: u64,
    /// Errors from `accept` itself (not counted as clients).
    pub accept_errors: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients, the `*`s included.
    pub bytes_out: u64,
    /// Clients being served at the moment of the snapshot.
    pub clients_now: u64,
    /// The most clients served at once.
    pub max_clients: u64,
    /// The most answer bytes held for one client at once, waiting to be
    /// written: what backpressure bounds.
    pub max_buffered: u64,
    /// Worker threads of a pool at the moment of the snapshot (zero for
    /// the other models).
    pub pool_threads: u64,
    /// Of those, the workers serving a client.
    pub pool_busy: u64,
    /// Clients accepted by a pool and waiting for a worker (in the
    /// hand-off, or in the accept loop's hand while it is full).
    pub pool_waiting: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "accepted {} clients: {} served, {} failed, {} timed out, {} rejected, \
             {} closed at shutdown; {} bytes in, {} bytes out, at most {} at once, \
             {} accept errors",
            self.accepted,
            self.served,
            self.failed,
            self.timed_out,
            self.rejected,
            self.closed_at_shutdown,
            self.bytes_in,
            self.bytes_out,
            self.max_clients,
            self.accept_errors
        )?;
        if self.pool_threads > 0 {
            write!(f, ", a pool of {} threads at shutdown", self.pool_threads)?;
        }
        Ok(())
    }
}

impl Summary {
    /// Clients whose end has been counted: every accepted client is
    /// counted exactly once, as served, failed, timed out, rejected or
    /// closed at shutdown, so once none is connected this equals
    /// [`Summary::accepted`].
    pub fn ended(&self) -> u64 {
        self.served + self.failed + self.timed_out + self.rejected + self.closed_at_shutdown
    }

    /// The live figures, for the `--stats-interval` line.
    pub fn live_line(&self) -> String {
        let mut line = format!(
            "clients now {}, accepted {}, rejected {}, timed out {}, bytes in {}, bytes out {}",
            self.clients_now,
            self.accepted,
            self.rejected,
            self.timed_out,
            self.bytes_in,
            self.bytes_out
        );
        if self.pool_threads > 0 {
            line += &format!(", pool threads {}", self.pool_threads);
        }
        line
    }
}

/// The live counters behind a [`Summary`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    accepted: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    rejected: AtomicU64,
    closed_at_shutdown: AtomicU64,
    accept_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    clients_now: AtomicU64,
    max_clients: AtomicU64,
    max_buffered: AtomicU64,
    pub(crate) pool_threads: AtomicU64,
    /// Pool workers waiting for a client.
    pub(crate) pool_idle: AtomicU64,
    /// Clients accepted by the pool and not yet taken by a worker.
    pub(crate) pool_waiting: AtomicU64,
    /// How long clients waited and were served, for the metrics.
    pub(crate) times: Times,
}

/// Histograms of how long clients waited to be admitted (from their
/// accept to their registration with the server, which for the pool is
/// the time in its hand-off) and how long they were served, in seconds.
#[derive(Debug)]
pub(crate) struct Times {
    pub(crate) admission: Histogram,
    pub(crate) served: Histogram,
}

impl Default for Times {
    fn default() -> Self {
        Times {
            // 10 µs to about 40 s, each bucket four times the last.
            admission: Histogram::new(exponential_buckets(1e-5, 4.0, 12)),
            served: Histogram::new(exponential_buckets(1e-4, 4.0, 12)),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The server's shared state: its configuration, its counters, and the
/// clients it is serving now.
pub(crate) struct ServerState {
    pub(crate) config: Config,
    pub(crate) shutdown: Shutdown,
    /// The address-space limit, and the checks that keep within it.
    pub(crate) budget: Budget,
    /// Stacks of ended client threads or workers, there to be reused.
    pub(crate) stacks: Stacks,
    stats: Arc<Stats>,
    clients: Mutex<Clients>,
    // Set when the drain ends: long computations for clients give up.
    closing: Arc<AtomicBool>,
    // Signalled whenever a client leaves or a permit is given back, for
    // the drain and the accept loop.
    pub(super) left: Condvar,
}

#[derive(Default)]
pub(super) struct Clients {
    next_id: u64,
    // Each client's socket, so that the end of a drain can shut it down and
    // wake whoever is blocked on it. Only the descriptor is kept (no dup: a
    // client costs one descriptor, not two); it is valid while it is here,
    // because a client leaves this map before its socket is closed.
    open: HashMap<u64, RawFd>,
    // Set when the drain ends: late arrivals are closed at once.
    closing: bool,
    // Permits out: clients accepted and not yet gone, wherever they are.
    permits: usize,
}

impl ServerState {
    /// The state of a server of `config`, which [`Config::check`] has
    /// passed (so every deadline `now + timeout` is representable).
    pub(crate) fn new(config: Config, shutdown: Shutdown, stats: Arc<Stats>) -> Self {
        ServerState {
            config,
            shutdown,
            budget: Budget::from_rlimit(),
            stacks: Stacks::default(),
            stats,
            clients: Mutex::new(Clients::default()),
            closing: Arc::default(),
            left: Condvar::new(),
        }
    }

    /// A context of its own for a unit test, and the figures it counts.
    #[cfg(test)]
    pub(crate) fn for_test(config: Config) -> (Arc<ServerState>, Arc<Stats>) {
        let stats = Arc::<Stats>::default();
        let ctx = ServerState::new(config, Shutdown::new(), Arc::clone(&stats));
        (Arc::new(ctx), stats)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Clients> {
        // Every update under this lock is a single insert or remove, so a
        // panic elsewhere cannot leave it half-done.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place among the clients served at once, while the
    /// server is full, and takes it; `None` once the shutdown fires.
    pub(crate) fn wait_permit(self: &Arc<Self>) -> Option<Permit> {
        let clients = self.lock();
        let mut clients = self
            .left
            .wait_while(clients, |c| {
                c.permits >= self.config.max_conns && !self.shutdown.is_triggered()
            })
            .unwrap_or_else(|e| e.into_inner());
        if self.shutdown.is_triggered() {
            return None;
        }
        clients.permits += 1;
        Some(Permit {
            ctx: Arc::clone(self),
            accepted: None,
        })
    }

    /// Takes a place among the clients served at once, if there is one.
    pub(crate) fn try_permit(self: &Arc<Self>) -> Option<Permit> {
        let mut clients = self.lock();
        if clients.permits >= self.config.max_conns {
            return None;
        }
        clients.permits += 1;
        Some(Permit {
            ctx: Arc::clone(self),
            accepted: None,
        })
    }

    /// Whether a place among the clients served at once is free now.
    pub(crate) fn has_room(&self) -> bool {
        self.lock().permits < self.config.max_conns
    }

    /// Registers a client being served, holding its `permit`; it stays
    /// counted until the guard drops. The guard must drop before `socket`
    /// closes.
    pub(crate) fn enter(self: &Arc<Self>, socket: &impl AsRawFd, permit: Permit) -> ClientGuard {
        let fd = socket.as_raw_fd();
        let mut clients = self.lock();
        let id = clients.next_id;
        clients.next_id += 1;
        if clients.closing {
            shutdown_fd(fd);
        }
        clients.open.insert(id, fd);
        let now = self.stats.clients_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_clients.fetch_max(now, Ordering::Relaxed);
        let entered = Instant::now();
        if let Some(accepted) = permit.accepted {
            let waited = entered.saturating_duration_since(accepted);
            self.stats.times.admission.observe(waited.as_secs_f64());
        }
        ClientGuard {
            ctx: Arc::clone(self),
            id,
            counted: false,
            entered,
            _permit: permit,
        }
    }

    pub(super) fn clients_now(&self) -> usize {
        self.lock().open.len()
    }

    /// Waits until no client is being served, or `timeout` passes; true if
    /// none is.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let clients = self.lock();
        let (clients, _) = self
            .left
            .wait_timeout_while(clients, timeout, |c| !c.open.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        clients.open.is_empty()
    }

    /// Shuts down every client's socket, which wakes the threads serving
    /// them: their reads see end-of-file, their writes fail.
    pub(super) fn close_all(&self) -> usize {
        let mut clients = self.lock();
        clients.closing = true;
        self.closing.store(true, Ordering::SeqCst);
        for &fd in clients.open.values() {
            shutdown_fd(fd);
        }
        clients.open.len()
    }

    pub(crate) fn count_accepted(&self) {
        bump(&self.stats.accepted, 1);
    }

    pub(crate) fn count_accept_error(&self) {
        bump(&self.stats.accept_errors, 1);
    }

    pub(crate) fn count_failed(&self) {
        bump(&self.stats.failed, 1);
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether the drain has ended and everyone left is being closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// The same, for work that outlives a borrow of the context (a
    /// computation on another thread).
    pub(crate) fn closing_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.closing)
    }

    pub(crate) fn count_timed_out(&self) {
        bump(&self.stats.timed_out, 1);
    }

    pub(crate) fn count_rejected(&self) {
        bump(&self.stats.rejected, 1);
    }

    /// A client the shutdown ended before it could be served.
    pub(crate) fn count_closed_at_shutdown(&self) {
        bump(&self.stats.closed_at_shutdown, 1);
    }

    pub(crate) fn count_bytes_in(&self, n: usize) {
        bump(&self.stats.bytes_in, n as u64);
    }

    pub(crate) fn count_bytes_out(&self, n: usize) {
        bump(&self.stats.bytes_out, n as u64);
    }

    /// Records how many answer bytes one client has waiting to be written.
    pub(crate) fn note_buffered(&self, n: usize) {
        self.stats
            .max_buffered
            .fetch_max(n as u64, Ordering::Relaxed);
    }
}

/// Shuts a registered client's socket down both ways.
fn shutdown_fd(fd: RawFd) {
    // SAFETY: `fd` is open: callers hold the clients lock, and a client
    // leaves the map (under that lock) before its socket is closed. An
    // error (the peer already gone) needs no handling.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// How a client being served ended, before the shutdown has its say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Served,
    Failed,
    TimedOut,
    ClosedAtShutdown,
}

/// A place among the clients served at once ([`Config::max_conns`]),
/// taken before a client is accepted (or, with `--over-limit reject`, just
/// after) and given back when the client is gone, served or let go on its
/// way (a full queue, a thread that could not start): the cap counts every
/// client wherever it is, and cannot count one twice or lose one.
pub(crate) struct Permit {
    ctx: Arc<ServerState>,
    // When the client holding it was accepted.
    accepted: Option<Instant>,
}

impl Permit {
    /// Notes when its client was accepted.
    pub(crate) fn accepted(&mut self, at: Instant) {
        self.accepted = Some(at);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut clients = self.ctx.lock();
        clients.permits -= 1;
        drop(clients);
        self.ctx.left.notify_all();
    }
}

/// A client counted as being served; dropping it ends the count (and gives
/// its permit back).
pub(crate) struct ClientGuard {
    ctx: Arc<ServerState>,
    id: u64,
    counted: bool,
    entered: Instant,
    // Dropped after the guard's own `drop` has taken the client out of
    // the registry.
    _permit: Permit,
}

impl ClientGuard {
    pub(crate) fn ctx(&self) -> &ServerState {
        &self.ctx
    }

    /// Counts how the client ended, and returns what was counted. One rule
    /// for every model: a client still connected when the drain ran out is
    /// closed at shutdown, whether it was idle, being written to or waiting
    /// for a number, since its own outcome is then the drain's doing.
    pub(crate) fn end(mut self, end: End) -> Option<End> {
        self.counted = true;
        if self.ctx.is_closing() || end == End::ClosedAtShutdown {
            self.ctx.count_closed_at_shutdown();
            return None;
        }
        let counter = match end {
            End::Served => &self.ctx.stats.served,
            End::Failed => &self.ctx.stats.failed,
            End::TimedOut => &self.ctx.stats.timed_out,
            End::ClosedAtShutdown => unreachable!("counted above"),
        };
        bump(counter, 1);
        Some(end)
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        // A guard dropped without `end` is a client let go on the way: a
        // thread that could not start, a hand-off the shutdown cut short, a
        // task the runtime dropped. Counting it here keeps every accepted
        // client counted exactly once.
        if !self.counted {
            if std::thread::panicking() {
                // Only an async task unwinds past its guard (tokio catches
                // the panic); the blocking and event models catch theirs
                // first.
                warn!(target: conn::LOG_TARGET, "a client's task panicked; that client is closed");
                self.ctx.count_failed();
            } else if self.ctx.shutdown.is_triggered() {
                self.ctx.count_closed_at_shutdown();
            } else {
                self.ctx.count_failed();
            }
        }
        let served = self.entered.elapsed().as_secs_f64();
        self.ctx.stats.times.served.observe(served);
        // Map and count change together under the lock, as in `enter`: a
        // count below the cap means there is room (`ServerState::full` reads the
        // map), and whoever sees the map empty (`wait_idle`, before the
        // final summary) sees the count at zero too.
        let mut clients = self.ctx.lock();
        clients.open.remove(&self.id);
        self.ctx.stats.clients_now.fetch_sub(1, Ordering::Relaxed);
        drop(clients);
        self.ctx.left.notify_all();
    }
}

pub(crate) fn snapshot(stats: &Stats) -> Summary {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Summary {
        accepted: get(&stats.accepted),
        served: get(&stats.served),
        failed: get(&stats.failed),
        timed_out: get(&stats.timed_out),
        rejected: get(&stats.rejected),
        closed_at_shutdown: get(&stats.closed_at_shutdown),
        accept_errors: get(&stats.accept_errors),
        bytes_in: get(&stats.bytes_in),
        bytes_out: get(&stats.bytes_out),
        clients_now: get(&stats.clients_now),
        max_clients: get(&stats.max_clients),
        max_buffered: get(&stats.max_buffered),
        pool_threads: get(&stats.pool_threads),
        pool_busy: get(&stats.pool_threads).saturating_sub(get(&stats.pool_idle)),
        pool_waiting: get(&stats.pool_waiting),
    }
}
