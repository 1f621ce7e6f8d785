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
//! The cap and the memory budget are kept as in the shared accept loop,
//! with one difference that multishot accept forces. A single accept can
//! take its permit first; a multishot accept takes whole bursts. So with
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
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use io_uring::{opcode, types};
use tracing::{debug, warn};

use super::NewClient;
use super::ops::{self, Kind};
use super::setup::EventFd;
use super::worker::Worker;
use crate::server::listener::{AcceptFailure, RateLimited, classify};
use crate::server::{OverLimit, Permit, ServerState, memory};
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

pub(super) struct Acceptor {
    /// Dropped once the accept is over, so that the kernel refuses new
    /// connections from then on.
    listener: Option<TcpListener>,
    armed: bool,
    cancelling: bool,
    /// A pause after an error is in flight.
    backoff: bool,
    /// Accepted without a place among the clients (`--over-limit wait`),
    /// and when.
    waiting: VecDeque<(TcpStream, Instant)>,
    peers: Vec<Peer>,
    next: usize,
    /// `MSG_RING`s in flight, which name the peers' descriptors.
    messages: usize,
    /// What a newcomer needs to begin with, in address space.
    cost: u64,
    errors: RateLimited,
    rejections: RateLimited,
    refusals: RateLimited,
}

impl Acceptor {
    pub(super) fn new(
        listener: TcpListener,
        peers: Vec<Peer>,
        config: &crate::server::Config,
    ) -> Self {
        let second = || RateLimited::new(Duration::from_secs(1));
        Acceptor {
            listener: Some(listener),
            armed: false,
            cancelling: false,
            backoff: false,
            waiting: VecDeque::new(),
            peers,
            next: 0,
            messages: 0,
            cost: memory::client_cost(config),
            errors: second(),
            rejections: second(),
            refusals: second(),
        }
    }

    /// Whether accepting is over: the listener is closed and no other
    /// ring will be handed a client.
    pub(super) fn done(&self) -> bool {
        self.listener.is_none()
    }
}

impl Acceptor {
    /// Closes the clients accepted that wait for a place, as closed at
    /// shutdown: the server is stopping, or this ring failed.
    pub(super) fn close_waiting(&mut self, ctx: &ServerState) {
        for (stream, _) in self.waiting.drain(..) {
            drop(stream);
            ctx.count_closed_at_shutdown();
        }
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

impl Worker {
    pub(super) fn arm_accept(&mut self) {
        let stopping = self.stopping;
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        let Some(listener) = &a.listener else { return };
        if a.armed || a.backoff || stopping {
            return;
        }
        a.armed = true;
        let e = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ops::encode(Kind::Accept, 0, 0));
        self.ops.push(e);
    }

    fn cancel_accept(&mut self) {
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        if a.armed && !a.cancelling {
            a.cancelling = true;
            let e = opcode::AsyncCancel::new(ops::encode(Kind::Accept, 0, 0))
                .build()
                .user_data(ops::encode(Kind::Ctl, 0, 0));
            self.ops.push(e);
        }
    }

    pub(super) fn on_accept(&mut self, res: i32, last: bool) {
        if last {
            self.ops.done();
            if let Some(a) = self.acceptor.as_mut() {
                a.armed = false;
                a.cancelling = false;
            }
        }
        if res >= 0 {
            // SAFETY: a completed accept hands over a new descriptor, ours
            // alone.
            let stream = unsafe { TcpStream::from_raw_fd(res) };
            self.ctx.count_accepted();
            if self.stopping {
                drop(stream);
                self.ctx.count_closed_at_shutdown();
            } else {
                self.newcomer(stream);
            }
            return;
        }
        if res == -libc::ECANCELED {
            return;
        }
        self.ctx.count_accept_error();
        let e = io::Error::from_raw_os_error(-res);
        let failure = classify(&e);
        if failure == AcceptFailure::Connection {
            debug!("accept: skipping a connection that failed: {e}");
            return;
        }
        let now = self.now;
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        if let Some(held_back) = a.errors.allow(now) {
            let hint = if failure == AcceptFailure::Exhausted {
                "; backing off until clients leave"
            } else {
                "; backing off"
            };
            warn!("accept failed: {e}{hint} ({held_back} more such errors not shown)");
        }
        // An error ends a multishot accept; it is armed again after the
        // pause, not at once, which would spin on a full descriptor table.
        if last && !a.backoff {
            a.backoff = true;
            self.arm_backoff();
        }
    }

    pub(super) fn on_backoff(&mut self) {
        self.ops.done();
        if let Some(a) = self.acceptor.as_mut() {
            a.backoff = false;
        }
    }

    pub(super) fn on_msg_sent(&mut self, peer: u32, res: i32) {
        self.ops.done();
        if let Some(a) = self.acceptor.as_mut() {
            a.messages -= 1;
            // Should the message fail (its completion queue full, say), the
            // client waits in that ring's channel all the same, and its
            // eventfd wakes it to look.
            if res < 0
                && let Some(to) = a.peers.get(peer as usize)
            {
                to.wake.wake();
            }
        }
    }

    /// An accepted connection: served, or kept waiting for a place, or
    /// rejected, as `--over-limit` says.
    fn newcomer(&mut self, stream: TcpStream) {
        let ctx = Arc::clone(&self.ctx);
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        match ctx.config.over_limit {
            OverLimit::Wait => {
                if a.waiting.is_empty()
                    && let Some(mut permit) = ctx.try_permit()
                {
                    permit.accepted(self.now);
                    self.admit(stream, permit);
                    return;
                }
                if a.waiting.try_reserve(1).is_err() {
                    drop(stream);
                    ctx.count_rejected();
                    return;
                }
                a.waiting.push_back((stream, self.now));
                super::bump(&self.shared.counts.waited);
                // Full: no more accepts until there is room.
                self.cancel_accept();
            }
            OverLimit::Reject => match ctx.try_permit() {
                Some(mut permit) => {
                    permit.accepted(self.now);
                    self.admit(stream, permit);
                }
                None => {
                    let peer = peer_of(&stream);
                    drop(stream);
                    ctx.count_rejected();
                    if let Some(held_back) = a.rejections.allow(self.now) {
                        warn!(
                            "{peer} rejected: already serving {} clients, the limit \
                             ({held_back} more rejections not shown)",
                            ctx.config.max_conns
                        );
                    }
                }
            },
        }
    }

    /// Takes on a newcomer that has its place, if its memory fits, on the
    /// next ring in turn.
    fn admit(&mut self, stream: TcpStream, permit: Permit) {
        let ctx = Arc::clone(&self.ctx);
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        let peer = peer_of(&stream);
        if let Err(short) = ctx.budget.check(a.cost) {
            drop(stream);
            ctx.count_rejected();
            if let Some(held_back) = a.refusals.allow(self.now) {
                warn!(
                    "{peer} rejected: no room for another client: {short} ({held_back} more \
                     such rejections not shown)"
                );
            }
            return;
        }
        let guard = ctx.enter(&stream, permit);
        let target = a.next % (a.peers.len() + 1);
        a.next = a.next.wrapping_add(1);
        if target == 0 {
            self.add(guard, stream, peer);
            return;
        }
        let to = &a.peers[target - 1];
        match to.clients.try_send((guard, stream, peer)) {
            Ok(()) => {
                a.messages += 1;
                super::bump(&self.shared.counts.handed);
                let e = opcode::MsgRingData::new(
                    types::Fd(to.ring.as_raw_fd()),
                    0,
                    ops::encode(Kind::Handoff, 0, 0),
                    None,
                )
                .build()
                .user_data(ops::encode(Kind::MsgSent, (target - 1) as u32, 0));
                self.ops.push(e);
            }
            // That ring is full up or gone: this one serves the client.
            Err(TrySendError::Full(client) | TrySendError::Disconnected(client)) => {
                let (guard, stream, peer) = client;
                self.add(guard, stream, peer);
            }
        }
    }

    /// Ring 0's turn after every batch: admit whoever waits while there
    /// is room, keep the accept armed exactly while newcomers may be
    /// taken, and close it all down once the server stops.
    pub(super) fn accept_turn(&mut self) {
        let ctx = Arc::clone(&self.ctx);
        let Some(a) = self.acceptor.as_mut() else {
            return;
        };
        if self.stopping {
            a.close_waiting(&ctx);
            if a.armed {
                self.cancel_accept();
            } else if !a.backoff && a.messages == 0 && a.listener.is_some() {
                a.listener = None;
                a.let_peers_go();
            }
            return;
        }
        if ctx.config.over_limit == OverLimit::Reject {
            self.arm_accept();
            return;
        }
        if a.armed && !a.cancelling && a.waiting.is_empty() {
            // Accepting, nobody waiting: nothing to look at.
            return;
        }
        loop {
            // Said before looking, so that a place freed after the look
            // wakes this ring: either it sees the place or the leaver sees
            // this.
            self.shared.acceptor_waits.store(true, Ordering::SeqCst);
            let Some(a) = self.acceptor.as_mut() else {
                return;
            };
            if a.waiting.is_empty() {
                if ctx.has_room() {
                    self.shared.acceptor_waits.store(false, Ordering::SeqCst);
                    self.arm_accept();
                } else {
                    self.cancel_accept();
                }
                return;
            }
            let Some(mut permit) = ctx.try_permit() else {
                self.cancel_accept();
                return;
            };
            if let Some((stream, accepted)) = a.waiting.pop_front() {
                permit.accepted(accepted);
                self.admit(stream, permit);
            }
        }
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
