//! The serving loop of one ring: submit, wait for completions, act on
//! each.
//!
//! The loop is the completion model's whole idea. It never asks whether a
//! socket is ready; it has a receive in flight for every client that may
//! send (multishot: one submission, a completion per arrival), a send in
//! flight for every client that is owed answers, and acts on whatever
//! completed: answer the bytes that came in, send the next answers,
//! re-arm what ended. Every completion of a batch is reaped with one
//! `io_uring_enter`, which also submits everything queued since the last.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::acceptor::Acceptor;
use super::client::{self, Client, RecvEnd, Serving};
use super::ops::{self, Completion, Kind};
use super::ring::Ring;
use super::shared::{Shared, bump};
use crate::server::compute::Offloader;
use crate::server::registry::{ClientGuard, Outcome};
use crate::server::session::{Handed, NewClient, Session, Spares};
use crate::server::slots::{ClientId, Slots};
use crate::server::state::ServerState;

/// How long a stopping ring waits for the completions of what it
/// cancelled before it gives their memory up for lost.
const GRACE: Duration = Duration::from_secs(2);

/// Where a ring is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// The shutdown has fired: ring 0 stops accepting, and every ring
    /// serves its clients until they leave or the drain closes them.
    Stopping,
    /// No client left and none to come: the ring's own operations are
    /// cancelled, and the loop ends when their last completion is in.
    Exiting,
}

/// Where a ring's new clients come from.
pub(super) enum Feed {
    /// Ring 0 accepts them itself.
    Acceptor(Box<Acceptor>),
    /// The others are handed them by ring 0; `None` once that is over.
    Incoming(Option<Receiver<NewClient>>),
}

/// One ring serving its clients.
pub(super) struct RingLoop {
    pub(super) ring: Ring,
    id: usize,
    state: Arc<ServerState>,
    shared: Arc<Shared>,
    clients: Slots<Client>,
    spares: Spares,
    /// Clients whose receive ran out of buffers, to re-arm in turn.
    parked: VecDeque<ClientId>,
    /// How each client being closed ended, by its place: kept here rather
    /// than in every client.
    ending: HashMap<u32, Outcome>,
    feed: Feed,
    offload: Option<Offloader>,
    cap: usize,
    now: Instant,
    phase: Phase,
}

impl RingLoop {
    pub(super) fn new(
        id: usize,
        ring: Ring,
        state: &Arc<ServerState>,
        shared: &Arc<Shared>,
        feed: Feed,
        offload: Option<Offloader>,
        cap: usize,
    ) -> Self {
        if !ring.incremental {
            shared.events.whole_buffers.store(true, Ordering::Relaxed);
        }
        RingLoop {
            ring,
            id,
            state: Arc::clone(state),
            shared: Arc::clone(shared),
            clients: Slots::default(),
            spares: Spares::default(),
            parked: VecDeque::new(),
            ending: HashMap::new(),
            feed,
            offload,
            cap,
            now: Instant::now(),
            phase: Phase::Serving,
        }
    }

    /// Runs the ring until the server has stopped and its last client
    /// has left. Call it on the ring's own thread.
    pub(super) fn run(mut self) -> io::Result<()> {
        self.ring.start()?;
        if let Feed::Acceptor(acceptor) = &mut self.feed {
            acceptor.arm(&mut self.ring);
        }
        let mut deadline = None;
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            let exiting = self.phase == Phase::Exiting;
            if exiting {
                if self.ring.ops.inflight == 0 {
                    break;
                }
                let at = *deadline.get_or_insert(self.now + GRACE);
                if self.now >= at {
                    tracing::warn!(
                        "ring {}: {} operations still in flight after the shutdown; their \
                         buffers are given up",
                        self.id,
                        self.ring.ops.inflight
                    );
                    return Ok(());
                }
            }
            if let Err(e) = self.ring.wait(exiting, &mut cqes) {
                return Err(self.fail(e));
            }
            self.now = Instant::now();
            for &(user_data, res, flags) in &cqes {
                self.handle(user_data, res, flags);
            }
            self.take_new_clients();
            self.take_answers();
            if self.ring.recycled > 0 {
                let recycled = std::mem::take(&mut self.ring.recycled);
                self.rearm_parked(recycled);
            }
            if self.phase == Phase::Serving && self.state.shutdown.is_triggered() {
                self.phase = Phase::Stopping;
            }
            self.accept_turn();
            self.maybe_exit();
        }
        self.ring.unregister()
    }

    /// A ring that cannot wait for completions cannot serve anyone: its
    /// clients are closed as failed, and the memory the kernel may still
    /// use is given up.
    fn fail(&mut self, e: io::Error) -> io::Error {
        for client in self.clients.drain() {
            let failed = io::Error::new(e.kind(), e.to_string());
            client.end(failed.into(), &mut self.spares);
        }
        if let Feed::Acceptor(acceptor) = &mut self.feed {
            acceptor.close_waiting();
        }
        e
    }

    fn handle(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some((kind, id)) = ops::decode(user_data) else {
            return;
        };
        let c = Completion {
            kind,
            id,
            res,
            flags,
        };
        let last = c.last();
        let exiting = self.phase == Phase::Exiting;
        match kind {
            Kind::Accept | Kind::Backoff | Kind::MsgSent => {
                let stopping = self.phase != Phase::Serving;
                if let Feed::Acceptor(a) = &mut self.feed
                    && let Some((guard, stream)) =
                        a.on_completion(c, &mut self.ring, stopping, self.now)
                {
                    self.add(guard, stream);
                }
            }
            Kind::Handoff => {} // the channel is read on every turn
            Kind::Tick => {
                self.ring.on_tick(res, last, exiting);
                if !exiting {
                    self.sweep();
                    let all = self.parked.len();
                    self.rearm_parked(all);
                }
            }
            Kind::Wake => self.ring.on_wake(exiting),
            Kind::Ctl => self.ring.ops.done(),
            Kind::Recv | Kind::RecvOnce | Kind::Send | Kind::Cancel => {
                if last {
                    self.ring.ops.done();
                }
                if self.clients.get(id).is_none() {
                    // Cannot happen while ops are counted, but a buffer
                    // must never be lost.
                    let group = client::group_of(kind);
                    self.ring.recycle(group, flags, res.max(0) as usize);
                    return;
                }
                self.step(id, |client, with| {
                    if last {
                        client.ops -= 1;
                    }
                    match kind {
                        Kind::Recv | Kind::RecvOnce => client.on_recv(c, with).map(Some),
                        Kind::Send => client.on_send(res, with).map(|()| None),
                        _ => Ok(None), // 0, ENOENT or EALREADY: nothing to do
                    }
                });
                self.progress(id);
            }
        }
    }

    /// Runs one step of a client with what the ring lends it, and closes
    /// it if the step failed or panicked.
    fn step(
        &mut self,
        id: ClientId,
        f: impl FnOnce(&mut Client, &mut Serving<'_>) -> Result<Option<RecvEnd>, Outcome>,
    ) {
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let mut with = Serving {
            ring: &mut self.ring,
            state: &self.state,
            spares: &mut self.spares,
            offload: self.offload.as_ref(),
            events: &self.shared.events,
            cap: self.cap,
            now: self.now,
        };
        let stepped = panic::catch_unwind(AssertUnwindSafe(|| f(client, &mut with)));
        match Outcome::of_step(stepped) {
            Ok(None | Some(RecvEnd::Fine)) => {}
            Ok(Some(RecvEnd::Parked)) => {
                self.parked.push_back(id);
                bump(&self.shared.events.parked);
            }
            Err(outcome) => self.close(id, outcome),
        }
    }

    /// Does whatever a client's state now calls for, and ends it once it
    /// is done.
    fn progress(&mut self, id: ClientId) {
        self.step(id, |client, with| match client.progress(id, with)? {
            Some(finished) => Err(finished),
            None => Ok(None),
        });
        self.maybe_end(id);
    }

    /// Takes on a client: its greeting goes out and its receive is armed.
    fn add(&mut self, guard: ClientGuard, stream: std::net::TcpStream) {
        guard.connected();
        let session = Session::new(guard, &self.state, self.now);
        let ready = self
            .clients
            .room_for_one(&self.state.budget)
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = ready {
            session.end(e.into(), stream, &mut self.spares);
            self.place_freed();
            return;
        }
        let id = self.clients.insert(Client::new(session, stream));
        self.progress(id);
    }

    /// Starts closing a client; it ends once none of its operations is
    /// left.
    fn close(&mut self, id: ClientId, outcome: Outcome) {
        if let Some(client) = self.clients.get_mut(id)
            && !client.closing
        {
            self.ending.insert(id.slot, outcome);
            client.close(id, &mut self.ring);
        }
        self.maybe_end(id);
    }

    /// Ends a closing client once none of its operations is in flight:
    /// counted, logged, its memory freed, its socket closed.
    fn maybe_end(&mut self, id: ClientId) {
        if self.clients.get(id).is_some_and(Client::is_done)
            && let Some(client) = self.clients.remove(id)
        {
            let outcome = self.ending.remove(&id.slot).unwrap_or(Outcome::Done);
            if self.ending.is_empty() && self.ending.capacity() > 64 {
                // A burst of closes leaves no larger map behind.
                self.ending.shrink_to_fit();
            }
            client.end(outcome, &mut self.spares);
            self.place_freed();
        }
    }

    /// A place among the clients is free: the acceptor may be waiting
    /// for one.
    fn place_freed(&self) {
        if self.shared.acceptor_waits.load(Ordering::SeqCst) {
            use crate::shutdown::Wake;
            self.shared.wake_acceptor.wake();
        }
    }

    /// Re-arms up to `budget` clients whose receive ran out of buffers,
    /// the longest waiting first: as many as buffers came back, so that a
    /// dry ring does not re-arm everyone to fail again.
    fn rearm_parked(&mut self, mut budget: usize) {
        while budget > 0
            && let Some(id) = self.parked.pop_front()
        {
            if let Some(client) = self.clients.get_mut(id)
                && client.recv.is_parked()
            {
                client.recv = client.recv.unparked();
                self.progress(id);
                budget -= 1;
            }
        }
    }

    /// Closes the clients past a timeout, and those with nothing in
    /// flight once the drain is over. A scan of every client each tick is
    /// cheap next to a timer each: ten thousand take microseconds.
    fn sweep(&mut self) {
        let closing = self.state.registry.is_closing();
        let (now, config) = (self.now, &self.state.config);
        let expired: Vec<_> = (self.clients.iter())
            .filter(|(_, c)| !c.closing)
            .filter_map(|(id, c)| {
                // Once the drain is over, `shutdown(2)` on its socket ends
                // a client through its receive or send; one with neither
                // in flight would never see it.
                if closing && c.unreachable_by_shutdown() {
                    return Some((id, Outcome::ClosedAtShutdown));
                }
                c.session.expired(now, config).map(|outcome| (id, outcome))
            })
            .collect();
        for (id, outcome) in expired {
            self.close(id, outcome);
        }
    }

    /// Clients that ring 0 handed over (its `MSG_RING` only wakes us).
    fn take_new_clients(&mut self) {
        let Feed::Incoming(Some(incoming)) = &self.feed else {
            return;
        };
        // Handles of their own (reference counts), so that the clients can
        // be added to the ring as they are taken.
        let (incoming, shutdown) = (incoming.clone(), self.state.shutdown.clone());
        let mut handed = Handed::from(&incoming, &shutdown);
        for (guard, stream) in &mut handed {
            self.add(guard, stream);
        }
        if handed.closed {
            self.feed = Feed::Incoming(None);
        }
    }

    /// Answers to numbers that were tested off the ring.
    fn take_answers(&mut self) {
        while let Some((id, n, prime)) = self.offload.as_ref().and_then(Offloader::answer) {
            // None: its client left while the number was being tested.
            let Some(c) = self.clients.get_mut(id) else {
                continue;
            };
            let Some(prime) = prime else {
                self.close(id, Outcome::ClosedAtShutdown);
                continue;
            };
            match c.session.answered(n, prime, &self.state, &mut self.spares) {
                Ok(()) => self.progress(id),
                Err(e) => self.close(id, e.into()),
            }
        }
    }

    /// Ring 0 admits whoever waits and keeps its accept armed as the
    /// room allows; the clients it deals to itself are taken on here.
    fn accept_turn(&mut self) {
        let stopping = self.phase != Phase::Serving;
        while let Feed::Acceptor(acceptor) = &mut self.feed
            && let Some((guard, stream)) = acceptor.turn(&mut self.ring, stopping)
        {
            self.add(guard, stream);
        }
    }

    /// Moves on to [`Phase::Exiting`] once it may.
    fn maybe_exit(&mut self) {
        if self.phase != Phase::Stopping || !self.clients.is_empty() {
            return;
        }
        let fed = match &self.feed {
            Feed::Acceptor(acceptor) => !acceptor.done(),
            Feed::Incoming(incoming) => incoming.is_some(),
        };
        if fed {
            return;
        }
        self.phase = Phase::Exiting;
        self.ring.cancel_own();
    }
}

impl Drop for RingLoop {
    fn drop(&mut self) {
        if self.ring.ops.inflight == 0 {
            return;
        }
        // A ring that failed, or whose cancellations never completed: the
        // kernel may still read the answers being sent after we are gone,
        // so they are never freed.
        for client in self.clients.iter_mut() {
            if client.ops > 0 {
                client.session.forget_buffers();
            }
        }
    }
}
