//! The server's counters, and the [`Summary`] they add up to.
//!
//! One name each: the live atomics are the [`Counters`]; a [`Summary`] is
//! what they say at one moment ([`Counters::summary`]); beside them, the
//! [`Timeline`] of each client's events, for whoever watches. Every model counts
//! into the same ones, so tests, the metrics and the summary line read the
//! same figures whatever the model.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::timeline::{Timeline, What};

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

/// The live counters behind a [`Summary`], shared (in an `Arc`) by the
/// server and whoever reports on it while it runs: the metrics endpoint
/// and the live page, the binary on a second signal.
#[derive(Debug, Default)]
pub struct Counters {
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
    pool_threads: AtomicU64,
    /// Pool workers waiting for a client.
    pool_idle: AtomicU64,
    /// Clients accepted by the pool and not yet taken by a worker.
    pool_waiting: AtomicU64,
    /// How long clients waited and were served, for the metrics.
    times: Times,
    /// What happened to each client, as it happened.
    timeline: Timeline,
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

/// How a counted client ended, which says which counter it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Served,
    Failed,
    TimedOut,
    Rejected,
    ClosedAtShutdown,
}

impl Ended {
    /// The same end, as the timeline says it.
    pub(crate) fn what(self) -> What {
        match self {
            Ended::Served => What::Served,
            Ended::Failed => What::Failed,
            Ended::TimedOut => What::TimedOut,
            Ended::Rejected => What::Rejected,
            Ended::ClosedAtShutdown => What::ClosedAtShutdown,
        }
    }
}

impl Counters {
    /// The counters so far.
    pub fn summary(&self) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            accepted: get(&self.accepted),
            served: get(&self.served),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
            rejected: get(&self.rejected),
            closed_at_shutdown: get(&self.closed_at_shutdown),
            accept_errors: get(&self.accept_errors),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            clients_now: get(&self.clients_now),
            max_clients: get(&self.max_clients),
            max_buffered: get(&self.max_buffered),
            pool_threads: get(&self.pool_threads),
            pool_busy: get(&self.pool_threads).saturating_sub(get(&self.pool_idle)),
            pool_waiting: get(&self.pool_waiting),
        }
    }

    /// How long clients waited and were served.
    pub(crate) fn times(&self) -> &Times {
        &self.times
    }

    /// What happened to each client, as it happened (the live page's).
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub(crate) fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub(crate) fn accept_error(&self) {
        bump(&self.accept_errors, 1);
    }

    /// One client's end, however it came.
    pub(crate) fn ended(&self, how: Ended) {
        let counter = match how {
            Ended::Served => &self.served,
            Ended::Failed => &self.failed,
            Ended::TimedOut => &self.timed_out,
            Ended::Rejected => &self.rejected,
            Ended::ClosedAtShutdown => &self.closed_at_shutdown,
        };
        bump(counter, 1);
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        bump(&self.bytes_in, n as u64);
    }

    pub(crate) fn bytes_out(&self, n: usize) {
        bump(&self.bytes_out, n as u64);
    }

    /// Records how many answer bytes one client has waiting to be written.
    pub(crate) fn buffered(&self, n: usize) {
        self.max_buffered.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// A client is being served from now on.
    pub(crate) fn client_entered(&self) {
        let now = self.clients_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_clients.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn client_left(&self) {
        self.clients_now.fetch_sub(1, Ordering::Relaxed);
    }

    /// A pool's gauges: `by` (+1 or -1) workers alive, idle, or clients
    /// waiting for one.
    pub(crate) fn pool_threads(&self, by: i64) {
        shift(&self.pool_threads, by);
    }

    pub(crate) fn pool_idle(&self, by: i64) {
        shift(&self.pool_idle, by);
    }

    pub(crate) fn pool_waiting(&self, by: i64) {
        shift(&self.pool_waiting, by);
    }
}

fn shift(gauge: &AtomicU64, by: i64) {
    if by >= 0 {
        gauge.fetch_add(by as u64, Ordering::Relaxed);
    } else {
        gauge.fetch_sub(by.unsigned_abs(), Ordering::Relaxed);
    }
}
