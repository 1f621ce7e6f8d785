//! Ring 0's other job: accepting, with one multishot accept.
//!
//! One submission accepts every connection that arrives until it is
//! cancelled or fails; each accepted socket comes back as a completion.
//! Only ring 0 accepts: with a multishot accept on every ring, the
//! listener's exclusive wake-up gave nearly all the connections to one of
//! them. Ring 0 deals the clients out in turn, itself included; each
//! client of another ring goes over a channel, and that ring is woken
//! with `MSG_RING` (a completion posted straight into it, without a
//! system call of its own).
//!
//! Who is admitted, who is rejected and how that is said, and what a
//! failed accept means are the shared [`Admission`] policy's; this file
//! only has what multishot accept forces. A single accept can take its
//! permit first; a multishot accept takes whole bursts. So with
//! `--over-limit wait` the accept runs only while there is room, and once
//! a burst finds the server full the accept is cancelled: the rest of that
//! burst (at most what was in the listen backlog) waits in ring 0's own
//! queue, accepted but not greeted, first come first served, and every
//! later newcomer waits in the backlog as with any other model. A place
//! freed on any ring wakes ring 0, which admits the longest waiting and
//! accepts again once its queue is empty.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use io_uring::{opcode, types};

use super::ops::{self, Completion, Kind};
use super::ring::Ring;
use super::shared::{Shared, bump};
use crate::server::admission::Admission;
use crate::server::config::OverLimit;
use crate::server::counters::Ended;
use crate::server::registry::{Arrival, Permit};
use crate::server::session::NewClient;
use crate::server::slots::ClientId;
use crate::server::state::ServerState;
use crate::shutdown::EventFd;
use crate::shutdown::Wake;

/// Another ring, as ring 0 hands it clients.
pub(super) struct Peer {
    pub(super) clients: Sender<NewClient>,
    /// A duplicate of its ring's descriptor, for `MSG_RING`: it keeps that
    /// ring alive for a message in flight even if its thread has ended.
    pub(super) ring: OwnedFd,
    /// Its eventfd, should a message fail.
    pub(super) wake: Arc<EventFd>,
}

/// Ring 0's accepting: the listener, its multishot accept, the newcomers
/// waiting for a place, and the other rings it deals clients out to.
pub(super) struct Acceptor {
    state: Arc<ServerState>,
    shared: Arc<Shared>,
    /// Dropped once the accept is over, so that the kernel refuses new
    /// connections from then on.
    listener: Option<TcpListener>,
    armed: bool,
    cancelling: bool,
    /// A pause after an error is in flight.
    backoff: bool,
    /// Accepted without a place among the clients (`--over-limit wait`),
    /// as they arrived.
    waiting: VecDeque<(TcpStream, Arrival)>,
    peers: Vec<Peer>,
    next: usize,
    /// `MSG_RING`s in flight, which name the peers' descriptors.
    messages: usize,
    admission: Admission,
}

impl Acceptor {
    pub(super) fn new(
        listener: TcpListener,
        peers: Vec<Peer>,
        state: &Arc<ServerState>,
        shared: &Arc<Shared>,
    ) -> Self {
        Acceptor {
            state: Arc::clone(state),
            shared: Arc::clone(shared),
            listener: Some(listener),
            armed: false,
            cancelling: false,
            backoff: false,
            waiting: VecDeque::new(),
            peers,
            next: 0,
            messages: 0,
            admission: Admission::new(state),
        }
    }

    /// Whether accepting is over: the listener is closed and no other
    /// ring will be handed a client.
    pub(super) fn done(&self) -> bool {
        self.listener.is_none()
    }

    /// Arms the multishot accept, unless it is armed, pausing, or over.
    pub(super) fn arm(&mut self, ring: &mut Ring) {
        if let Some(listener) = &self.listener
            && !self.armed
            && !self.backoff
        {
            self.armed = true;
            let fd = types::Fd(listener.as_raw_fd());
            let accept = opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC);
            ring.push(Kind::Accept, ClientId::NONE, accept.build());
        }
    }

    fn cancel(&mut self, ring: &mut Ring) {
        if self.armed && !self.cancelling {
            self.cancelling = true;
            let none = ClientId::NONE;
            ring.push(Kind::Ctl, none, ops::cancel(Kind::Accept, none));
        }
    }

    /// A completion of one of the acceptor's operations; a newcomer that
    /// this ring is to serve is handed back.
    pub(super) fn on_completion(
        &mut self,
        c: Completion,
        ring: &mut Ring,
        stopping: bool,
        now: Instant,
    ) -> Option<NewClient> {
        match c.kind {
            Kind::Accept => return self.on_accept(c.res, c.last(), ring, stopping, now),
            // The pause after an error is over: the next turn arms the
            // accept.
            Kind::Backoff => self.backoff = false,
            // A `MSG_RING` to peer `id.slot` completed. Should it have
            // failed (its completion queue full, say), the client waits in
            // that ring's channel all the same, and its eventfd wakes it.
            _ => {
                self.messages -= 1;
                if c.res < 0
                    && let Some(to) = self.peers.get(c.id.slot as usize)
                {
                    to.wake.wake();
                }
            }
        }
        ring.ops.done();
        None
    }

    /// A completion of the accept: a newcomer, or an error.
    fn on_accept(
        &mut self,
        res: i32,
        last: bool,
        ring: &mut Ring,
        stopping: bool,
        now: Instant,
    ) -> Option<NewClient> {
        if last {
            ring.ops.done();
            self.armed = false;
            self.cancelling = false;
        }
        if res >= 0 {
            // SAFETY: a completed accept hands over a new descriptor, ours
            // alone.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            let arrival = self.state.registry.accepted();
            if stopping {
                self.turn_away(stream, arrival, Ended::ClosedAtShutdown);
                return None;
            }
            return self.newcomer(stream, arrival, ring);
        }
        if res == -libc::ECANCELED {
            return None;
        }
        let e = io::Error::from_raw_os_error(-res);
        // An error ends a multishot accept; it is armed again after the
        // pause, not at once, which would spin on a full descriptor table.
        if self.admission.accept_failed(&e, now) && last && !self.backoff {
            self.backoff = true;
            ring.arm_backoff();
        }
        None
    }

    /// An accepted connection: admitted, or kept waiting for a place, or
    /// rejected, as `--over-limit` says.
    fn newcomer(
        &mut self,
        stream: TcpStream,
        arrival: Arrival,
        ring: &mut Ring,
    ) -> Option<NewClient> {
        let wait = self.state.config.over_limit == OverLimit::Wait;
        // With `reject`, the place is taken by the admission, or refused
        // there; with `wait`, here, unless others wait for one before it.
        let permit = match wait && self.waiting.is_empty() {
            true => self.state.registry.try_permit(),
            false => None,
        };
        if wait && permit.is_none() {
            if self.waiting.try_reserve(1).is_err() {
                self.turn_away(stream, arrival, Ended::Rejected);
                return None;
            }
            self.waiting.push_back((stream, arrival));
            bump(&self.shared.events.waited);
            // Full: no more accepts until there is room.
            self.cancel(ring);
            return None;
        }
        self.admit(stream, arrival, permit, ring)
    }

    /// Admits a newcomer by the shared policy and deals it to the next
    /// ring in turn; handed back if that is this one.
    fn admit(
        &mut self,
        stream: TcpStream,
        arrival: Arrival,
        permit: Option<Permit>,
        ring: &mut Ring,
    ) -> Option<NewClient> {
        let peer = peer_of(&stream);
        let (stream, permit) = self.admission.admit(stream, peer, arrival, permit)?;
        let guard = self.state.registry.enter(&stream, peer, permit);
        let target = self.next % (self.peers.len() + 1);
        self.next = self.next.wrapping_add(1);
        if target == 0 {
            return Some((guard, stream));
        }
        let to = &self.peers[target - 1];
        match to.clients.try_send((guard, stream)) {
            Ok(()) => {
                self.messages += 1;
                bump(&self.shared.events.handed);
                let handoff = ops::encode(Kind::Handoff, ClientId::NONE);
                let to_fd = types::Fd(to.ring.as_raw_fd());
                let msg = opcode::MsgRingData::new(to_fd, 0, handoff, None).build();
                // Its completion names the peer by its number.
                ring.push(Kind::MsgSent, ClientId::from_u64(target as u64 - 1), msg);
                None
            }
            // That ring is full up or gone: this one serves the client.
            Err(TrySendError::Full(client) | TrySendError::Disconnected(client)) => Some(client),
        }
    }

    /// Ring 0's turn after every batch: admit whoever waits while there
    /// is room, keep the accept armed exactly while newcomers may be
    /// taken, and close it all down once the server stops. Call it until
    /// it hands back no client for this ring.
    pub(super) fn turn(&mut self, ring: &mut Ring, stopping: bool) -> Option<NewClient> {
        if stopping {
            self.close_waiting();
            if self.armed {
                self.cancel(ring);
            } else if !self.backoff && self.messages == 0 && self.listener.is_some() {
                self.listener = None;
                self.let_peers_go();
            }
            return None;
        }
        if self.state.config.over_limit == OverLimit::Reject {
            self.arm(ring);
            return None;
        }
        if self.armed && !self.cancelling && self.waiting.is_empty() {
            // Accepting, nobody waiting: nothing to look at.
            return None;
        }
        loop {
            // Said before looking, so that a place freed after the look
            // wakes this ring: either it sees the place or the leaver sees
            // this.
            self.shared.acceptor_waits.store(true, Ordering::SeqCst);
            if self.waiting.is_empty() {
                if self.state.registry.has_room() {
                    self.shared.acceptor_waits.store(false, Ordering::SeqCst);
                    self.arm(ring);
                } else {
                    self.cancel(ring);
                }
                return None;
            }
            let Some(permit) = self.state.registry.try_permit() else {
                self.cancel(ring);
                return None;
            };
            if let Some((stream, arrival)) = self.waiting.pop_front()
                && let Some(mine) = self.admit(stream, arrival, Some(permit), ring)
            {
                return Some(mine);
            }
        }
    }

    /// Closes the clients accepted that wait for a place, as closed at
    /// shutdown: the server is stopping, or this ring failed.
    pub(super) fn close_waiting(&mut self) {
        for (stream, arrival) in std::mem::take(&mut self.waiting) {
            self.turn_away(stream, arrival, Ended::ClosedAtShutdown);
        }
    }

    /// Closes a newcomer that is not to be served, counted as `how`.
    fn turn_away(&self, stream: TcpStream, arrival: Arrival, how: Ended) {
        drop(stream);
        self.state.registry.ended(arrival.client, how);
    }

    /// Closes the other rings' channels. They end once theirs is closed,
    /// but a closed channel wakes nobody: each is woken to see it, rather
    /// than left to its next tick (an hour away, if that is the tick).
    fn let_peers_go(&mut self) {
        for Peer { clients, wake, .. } in self.peers.drain(..) {
            drop(clients);
            wake.wake();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.let_peers_go();
    }
}

/// The client's address, for the log. An accepted connection reset
/// before this look has none any more; it is served (and soon ended) all
/// the same.
fn peer_of(stream: &TcpStream) -> SocketAddr {
    stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
