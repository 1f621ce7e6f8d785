//! Who is being served: the places among the clients served at once
//! ([`Permit`]s), the clients registered with the server
//! ([`ClientGuard`]s), and how a client ends ([`Outcome`]).
//!
//! The words, used the same way everywhere: a client is *accepted* (taken
//! from the backlog), *admitted* (it holds a permit and its guard: it is
//! counted and the drain knows of it), and *ends*, once, with an
//! [`Outcome`] that is logged and counted by [`ClientGuard::end`]. A guard
//! dropped without `end` is a client *let go* on its way (a thread that
//! could not start, a hand-off the shutdown cut short), and is counted
//! all the same. *Closing* is the end of the drain: every socket still
//! registered is shut down.

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::counters::{Counters, Ended};
use super::log::LOG_TARGET;
use super::timeline::What;
use crate::shutdown::Shutdown;

/// The clients a server has admitted, and the cap on how many at once.
pub(crate) struct Registry {
    max_conns: usize,
    shutdown: Shutdown,
    counters: Arc<Counters>,
    clients: Mutex<Clients>,
    /// The last client number given out: each is numbered as it is
    /// accepted, from 1.
    numbered: AtomicU64,
    // Set when the drain ends: late arrivals are shut down at once, and
    // long computations for clients give up. Shared with the compute
    // pool, which outlives any borrow of the registry.
    closing: Arc<AtomicBool>,
    // Signalled whenever a client leaves or a permit is given back, for
    // the drain and the accept loop.
    left: Condvar,
}

#[derive(Default)]
struct Clients {
    // Each client's socket, so that the end of a drain can shut it down and
    // wake whoever is blocked on it. Only the descriptor is kept (no dup: a
    // client costs one descriptor, not two); it is valid while it is here,
    // because a client leaves this map before its socket is closed.
    open: HashMap<u64, RawFd>,
    // Permits out: clients accepted and not yet gone, wherever they are.
    permits: usize,
}

impl Registry {
    pub(crate) fn new(max_conns: usize, shutdown: Shutdown, counters: Arc<Counters>) -> Self {
        Registry {
            max_conns,
            shutdown,
            counters,
            clients: Mutex::new(Clients::default()),
            numbered: AtomicU64::new(0),
            closing: Arc::default(),
            left: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Clients> {
        // Every update under this lock is a single insert or remove, so a
        // panic elsewhere cannot leave it half-done.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn permit(self: &Arc<Self>, clients: &mut Clients) -> Permit {
        clients.permits += 1;
        Permit {
            registry: Some(Arc::clone(self)),
            arrival: None,
        }
    }

    /// A connection was taken from the backlog: counted, numbered, and
    /// recorded.
    pub(crate) fn accepted(&self) -> Arrival {
        let arrival = Arrival {
            client: self.numbered.fetch_add(1, Ordering::Relaxed) + 1,
            at: Instant::now(),
        };
        self.counters.accepted();
        let timeline = self.counters.timeline();
        timeline.record(arrival.client, What::Accepted);
        arrival
    }

    /// A client accepted but never admitted has ended (rejected, closed
    /// unserved at the shutdown, shed from a queue): counted and recorded.
    pub(crate) fn ended(&self, client: u64, how: Ended) {
        self.counters.ended(how);
        let timeline = self.counters.timeline();
        timeline.record(client, how.what());
    }

    /// Waits for a place among the clients served at once, while the
    /// server is full, and takes it; `None` once the shutdown fires.
    pub(crate) fn wait_permit(self: &Arc<Self>) -> Option<Permit> {
        let clients = self.lock();
        let mut clients = self
            .left
            .wait_while(clients, |c| {
                c.permits >= self.max_conns && !self.shutdown.is_triggered()
            })
            .unwrap_or_else(|e| e.into_inner());
        if self.shutdown.is_triggered() {
            return None;
        }
        Some(self.permit(&mut clients))
    }

    /// Takes a place among the clients served at once, if there is one.
    pub(crate) fn try_permit(self: &Arc<Self>) -> Option<Permit> {
        let mut clients = self.lock();
        (clients.permits < self.max_conns).then(|| self.permit(&mut clients))
    }

    /// Whether a place among the clients served at once is free now.
    pub(crate) fn has_room(&self) -> bool {
        self.lock().permits < self.max_conns
    }

    /// Admits a client: it holds `permit` and stays registered, and
    /// counted, until its guard ends or drops. The guard must drop before
    /// `socket` closes.
    pub(crate) fn enter(
        self: &Arc<Self>,
        socket: &impl AsRawFd,
        peer: SocketAddr,
        mut permit: Permit,
    ) -> ClientGuard {
        let fd = socket.as_raw_fd();
        let entered = Instant::now();
        let id = match permit.arrival {
            Some(arrival) => {
                let waited = entered.saturating_duration_since(arrival.at);
                self.counters
                    .times()
                    .admission
                    .observe(waited.as_secs_f64());
                arrival.client
            }
            // Every model's clients arrive through an accept; a number all
            // the same for one that did not.
            None => self.numbered.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let timeline = self.counters.timeline();
        timeline.record(id, What::Admitted);
        // The guard gives the place back itself, under the same lock as it
        // leaves the map.
        permit.registry = None;
        let mut clients = self.lock();
        if self.is_closing() {
            shutdown_fd(fd);
        }
        clients.open.insert(id, fd);
        self.counters.client_entered();
        ClientGuard {
            registry: Arc::clone(self),
            id,
            peer,
            entered,
            counted: false,
            heard: false,
        }
    }

    pub(crate) fn clients_now(&self) -> usize {
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

    /// Wakes whoever waits for a place or for the clients to leave, so
    /// that they look at the shutdown. Notified under the lock, so that a
    /// waiter cannot be between its check and its wait.
    pub(crate) fn wake_waiters(&self) {
        let _clients = self.lock();
        self.left.notify_all();
    }

    /// Ends the drain: shuts down every client's socket, which wakes the
    /// threads serving them (their reads see end-of-file, their writes
    /// fail), and returns how many there were.
    pub(crate) fn close_all(&self) -> usize {
        let clients = self.lock();
        self.closing.store(true, Ordering::SeqCst);
        for &fd in clients.open.values() {
            shutdown_fd(fd);
        }
        clients.open.len()
    }

    /// Whether the drain has ended and everyone left is being closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// The same, for work that outlives a borrow of the registry (a
    /// computation on another thread).
    pub(crate) fn closing_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.closing)
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

/// A place among the clients served at once (`--max-conns`), taken
/// before a client is accepted (or, with `--over-limit reject`, just
/// after) and given back when the client is gone, served or let go on its
/// way (a full queue, a thread that could not start): the cap counts every
/// client wherever it is, and cannot count one twice or lose one.
pub(crate) struct Permit {
    // `None` once its client is admitted: the guard holds the place then.
    registry: Option<Arc<Registry>>,
    arrival: Option<Arrival>,
}

impl Permit {
    /// Notes which client holds it, accepted when.
    pub(crate) fn held_by(&mut self, arrival: Arrival) {
        self.arrival = Some(arrival);
    }

    /// The client that holds it (0 before one does).
    pub(crate) fn client(&self) -> u64 {
        self.arrival.map_or(0, |a| a.client)
    }
}

/// A client as it was accepted: its number, and when.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    pub(crate) client: u64,
    pub(crate) at: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.lock().permits -= 1;
            registry.left.notify_all();
        }
    }
}

/// How serving a client ended. A step of serving returns `Err` of one of
/// these for any end but [`Outcome::Done`]; an I/O error converts to
/// [`Outcome::Gone`] or [`Outcome::Failed`].
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It said everything (end-of-file) and got every answer.
    Done,
    /// The idle or the write timeout closed it; why.
    TimedOut(String),
    /// It went away abruptly: a reset, a broken pipe.
    Gone(io::Error),
    /// An error of its connection or of its memory, or it broke the
    /// protocol.
    Failed(io::Error),
    /// A panic while serving it, caught; its message.
    Panicked(String),
    /// The end of the drain closed it while it was being served (its
    /// number was being tested, say).
    ClosedAtShutdown,
}

impl From<io::Error> for Outcome {
    fn from(e: io::Error) -> Self {
        // The ordinary ways a client leaves abruptly: worth a line, not a
        // warning.
        match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                Outcome::Gone(e)
            }
            _ => Outcome::Failed(e),
        }
    }
}

impl Outcome {
    /// A client idle for `after`.
    pub(crate) fn idle_timeout(after: Duration) -> Self {
        Outcome::TimedOut(format!("sent nothing for {after:?} (idle timeout)"))
    }

    /// A client that took none of its answers for `after`.
    pub(crate) fn write_timeout(after: Duration) -> Self {
        Outcome::TimedOut(format!(
            "took none of its answers for {after:?} (write timeout)"
        ))
    }

    /// A client that broke the protocol's rules, for `reason`.
    pub(crate) fn violation(reason: String) -> Self {
        Outcome::Failed(io::Error::new(ErrorKind::InvalidData, reason))
    }

    /// A panic caught while serving a client, from its payload.
    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        Outcome::Panicked(panic_message(payload))
    }

    /// What a step of serving came to: its value, or its failure or panic
    /// as an outcome.
    pub(crate) fn of_step<T, E: Into<Outcome>>(
        step: std::thread::Result<Result<T, E>>,
    ) -> Result<T, Self> {
        match step {
            Ok(stepped) => stepped.map_err(Into::into),
            Err(panic) => Err(Outcome::panicked(&*panic)),
        }
    }
}

/// A client admitted: counted as being served, and known to the drain,
/// until it [`end`](ClientGuard::end)s or is dropped; either gives its
/// place back.
pub(crate) struct ClientGuard {
    registry: Arc<Registry>,
    id: u64,
    peer: SocketAddr,
    entered: Instant,
    counted: bool,
    heard: bool,
}

impl ClientGuard {
    /// Says that serving it starts, where it starts (its own thread, a
    /// loop, a ring, a task).
    pub(crate) fn connected(&self) {
        info!(target: LOG_TARGET, "peer {} connected", self.peer);
    }

    /// Bytes of its were read: the first time, that is recorded.
    pub(crate) fn heard(&mut self) {
        if !self.heard {
            self.heard = true;
            let timeline = self.registry.counters.timeline();
            timeline.record(self.id, What::FirstByte);
        }
    }

    /// Counts how it ended and records it.
    fn count(&self, how: Ended) {
        self.registry.counters.ended(how);
        let timeline = self.registry.counters.timeline();
        timeline.record(self.id, how.what());
    }

    /// Logs and counts how the client ended. Every model ends its clients
    /// here, while their socket is still open. One rule for every model: a
    /// client still connected when the drain ran out is closed at
    /// shutdown, whether it was idle, being written to or waiting for a
    /// number, since its own outcome (a write cut off, a computation
    /// abandoned) is then the drain's doing.
    pub(crate) fn end(mut self, outcome: Outcome) {
        self.counted = true;
        let peer = self.peer;
        if self.registry.is_closing() || matches!(outcome, Outcome::ClosedAtShutdown) {
            self.count(Ended::ClosedAtShutdown);
            info!(target: LOG_TARGET, "peer {peer} closed at the end of the drain");
            return;
        }
        match outcome {
            Outcome::Done => {
                self.count(Ended::Served);
                info!(target: LOG_TARGET, "peer {peer} done");
            }
            Outcome::TimedOut(why) => {
                self.count(Ended::TimedOut);
                info!(target: LOG_TARGET, "peer {peer} closed: {why}");
            }
            Outcome::Gone(e) => {
                self.count(Ended::Failed);
                info!(target: LOG_TARGET, "peer {peer} went away: {e}");
            }
            Outcome::Failed(e) => {
                self.count(Ended::Failed);
                warn!(target: LOG_TARGET, "peer {peer} ended by an error: {e}");
            }
            Outcome::Panicked(what) => {
                self.count(Ended::Failed);
                warn!(target: LOG_TARGET, "peer {peer} ended by a panic while serving it: {what}");
            }
            Outcome::ClosedAtShutdown => unreachable!("counted above"),
        }
    }

    /// [`end`](ClientGuard::end)s the client, then closes `socket`, in that
    /// order: the registry must never hold a closed descriptor.
    pub(crate) fn end_and_close<S>(self, outcome: Outcome, socket: S) {
        self.end(outcome);
        drop(socket);
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
                warn!(target: LOG_TARGET, "a client's task panicked; that client is closed");
                self.count(Ended::Failed);
            } else if self.registry.shutdown.is_triggered() {
                self.count(Ended::ClosedAtShutdown);
            } else {
                self.count(Ended::Failed);
            }
        }
        let counters = &self.registry.counters;
        counters
            .times()
            .served
            .observe(self.entered.elapsed().as_secs_f64());
        // Map, place and count change together under the lock: a count
        // below the cap means there is room, and whoever sees the map
        // empty (`wait_idle`, before the final summary) sees the count at
        // zero too.
        let mut clients = self.registry.lock();
        clients.open.remove(&self.id);
        clients.permits -= 1;
        counters.client_left();
        drop(clients);
        self.registry.left.notify_all();
    }
}

/// What a caught panic said, from its payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
