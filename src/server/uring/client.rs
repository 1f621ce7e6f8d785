//! One client of a ring: its session and socket, and the operations the
//! ring has in flight for it. The session says what the client needs
//! (answers to send, input wanted or not); this file turns that into
//! submissions (a receive, one send at a time, cancellations) and takes
//! their completions back. It is freed only once none of its operations
//! is left: a send in flight reads the session's buffer.
//!
//! How it receives depends on what it is owed. A client owed nothing (a
//! quiet one, an idle one, one between requests) has a *multishot*
//! receive: one submission, a completion for every arrival, and no buffer
//! held while nothing comes. A client owed answers (a stream, whose
//! writer does not wait for them) has a *one-shot* receive of no more than
//! the room left under its cap: it stops by itself, so that the cap holds
//! with nothing cancelled and nothing that raced a cancellation copied
//! aside, however fast the client writes. A multishot receive is cancelled
//! only when answers pile past the cap while it is armed: once as a
//! stream starts, not on every buffer of it.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types};

use super::ops::{self, Completion, Kind};
use super::ring::Ring;
use super::shared::{Group, RingEvents, bump};
use crate::server::compute::Offloader;
use crate::server::registry::Outcome;
use crate::server::session::{Session, Spares, ToTest};
use crate::server::slots::ClientId;
use crate::server::state::ServerState;

/// An answer buffer longer than this goes out in two sends, this much
/// first. With one send of it all, on loopback, the ring's thread did the
/// reader's side of TCP too (queueing into its socket and waking it, and
/// sending the reader's own queued data when the ring read); split, the
/// first part wakes the reader, which does that itself. One stream on a
/// 2-core Xeon, pinned: 1.6 times less server CPU per byte and 1.6 times
/// the bytes a second (BENCHMARKS.md, io_uring streaming).
const FIRST_PART: usize = 16 * 1024;

/// What a ring lends one of its clients for a step: its ring (to submit,
/// and to read received data from), the server, its spare buffers, its
/// way to the compute pool, and the time of the batch.
pub(super) struct Serving<'a> {
    pub(super) ring: &'a mut Ring,
    pub(super) state: &'a ServerState,
    pub(super) spares: &'a mut Spares,
    pub(super) offload: Option<&'a Offloader>,
    pub(super) events: &'a RingEvents,
    /// The answers held for one client before the ring stops receiving.
    pub(super) cap: usize,
    pub(super) now: Instant,
}

impl Serving<'_> {
    /// Hands a number the session asks about to the compute pool.
    fn offload(&self, test: ToTest, id: ClientId) {
        if let (Some(n), Some(offloader)) = (test, self.offload) {
            offloader.send(id, n);
        }
    }
}

/// Where a client's receive stands, and which kind its next is. One
/// byte, like the rest of a client's own state: ten thousand idle clients
/// hold it each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    /// None in flight; the next is multishot.
    Off,
    /// A multishot receive in flight.
    Armed,
    /// A multishot receive in flight, and a cancellation of it: its
    /// answers passed the cap, so it writes faster than it reads, and it
    /// receives one-shot from now on.
    Cancelling,
    /// None in flight; the next is one-shot.
    Streaming,
    /// A one-shot receive in flight.
    Once,
    /// It ended for want of buffers; armed again, of the same kind, once
    /// some come back.
    Parked,
    ParkedStreaming,
}

impl Recv {
    /// Whether its receives are one-shot.
    fn streaming(self) -> bool {
        matches!(
            self,
            Recv::Cancelling | Recv::Streaming | Recv::Once | Recv::ParkedStreaming
        )
    }

    /// None in flight any more: the next is of the same kind.
    fn ended(self) -> Recv {
        if self.streaming() {
            Recv::Streaming
        } else {
            Recv::Off
        }
    }

    pub(super) fn is_parked(self) -> bool {
        matches!(self, Recv::Parked | Recv::ParkedStreaming)
    }

    /// Parked, or back from it.
    fn parked(self) -> Recv {
        if self.streaming() {
            Recv::ParkedStreaming
        } else {
            Recv::Parked
        }
    }

    pub(super) fn unparked(self) -> Recv {
        self.ended()
    }
}

/// What a receive's last completion says of the receive itself.
pub(super) enum RecvEnd {
    /// Nothing to do (more completions to come, or it ended as it should).
    Fine,
    /// It ran out of provided buffers: park the client.
    Parked,
}

pub(super) struct Client {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    pub(super) session: Session,
    socket: TcpStream,
    /// Operations of its in flight; its memory is freed only at zero.
    pub(super) ops: u8,
    pub(super) recv: Recv,
    send_inflight: bool,
    /// It is being closed (its ring keeps how it ended).
    pub(super) closing: bool,
}

impl Client {
    pub(super) fn new(session: Session, socket: TcpStream) -> Self {
        Client {
            session,
            socket,
            ops: 0,
            recv: Recv::Off,
            send_inflight: false,
            closing: false,
        }
    }

    /// Whether it is closing and none of its operations is left: it can
    /// be ended.
    pub(super) fn is_done(&self) -> bool {
        self.closing && self.ops == 0
    }

    /// Has nothing in flight that a shutdown of its socket would end (its
    /// number is being tested, or its receive is parked).
    pub(super) fn unreachable_by_shutdown(&self) -> bool {
        self.session.is_computing() || self.ops == 0
    }

    /// Does whatever its session now calls for: answer what waited,
    /// send what it is owed, receive or stop receiving. Returns how it
    /// ended, if it is done.
    pub(super) fn progress(
        &mut self,
        id: ClientId,
        with: &mut Serving<'_>,
    ) -> io::Result<Option<Outcome>> {
        if self.closing {
            return Ok(None);
        }
        let cap = with.cap;
        let test = self.session.answer_unread(with.state, with.spares, cap)?;
        with.offload(test, id);
        if !self.send_inflight
            && let Some(bytes) = self.session.next_send()
        {
            // A send takes at most u32::MAX bytes; the rest goes next time.
            let (at, mut len) = (bytes.as_ptr(), bytes.len().min(u32::MAX as usize));
            if len > FIRST_PART && !self.session.sent_some() {
                len = FIRST_PART;
                bump(&with.events.split);
            }
            let fd = types::Fd(self.socket.as_raw_fd());
            let send = opcode::Send::new(fd, at, len as u32).flags(libc::MSG_NOSIGNAL);
            self.send_inflight = true;
            self.ops += 1;
            with.ring.push(Kind::Send, id, send.build());
        }
        if self.session.wants_input(cap) {
            if matches!(self.recv, Recv::Off | Recv::Streaming) {
                self.arm_recv(id, with, cap);
            }
        } else if self.recv == Recv::Armed && self.session.blocked(cap) {
            // Over the cap, or waiting for a number: stop the receive.
            // What arrives before it stops is kept, not lost.
            self.recv = Recv::Cancelling;
            self.ops += 1;
            bump(&with.events.paused);
            let cancel = ops::cancel(Kind::Recv, id);
            with.ring.push(Kind::Cancel, id, cancel);
        }
        if self.send_inflight {
            return Ok(None);
        }
        Ok(self.session.finished())
    }

    /// Arms a receive: multishot, or one-shot of no more than the room
    /// under the cap once it has outrun the cap.
    fn arm_recv(&mut self, id: ClientId, with: &mut Serving<'_>, cap: usize) {
        self.ops += 1;
        let fd = types::Fd(self.socket.as_raw_fd());
        if !self.recv.streaming() {
            self.recv = Recv::Armed;
            // One submission, a completion for every arrival, each in a
            // buffer the kernel takes from the multishot group.
            let e = opcode::RecvMulti::new(fd, Group::Multishot as u16).build();
            with.ring.push(Kind::Recv, id, e);
            return;
        }
        self.recv = Recv::Once;
        bump(&with.events.once);
        // The byte protocol answers at most a byte per byte: its answers
        // stay under the cap.
        let room = cap.saturating_sub(self.session.pending());
        let room = room.clamp(1, u32::MAX as usize) as u32;
        let e = opcode::Recv::new(fd, std::ptr::null_mut(), room)
            .buf_group(Group::Once as u16)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        with.ring.push(Kind::RecvOnce, id, e);
    }

    /// A receive completion: its data (if any) is taken in, and its end
    /// (if it was the last) is looked at. An error of the client's is
    /// `Err`; the buffer is given back either way, unless the kernel goes
    /// on filling it.
    pub(super) fn on_recv(
        &mut self,
        c: Completion,
        with: &mut Serving<'_>,
    ) -> Result<RecvEnd, Outcome> {
        let (id, res, flags, last) = (c.id, c.res, c.flags, c.last());
        let group = group_of(c.kind);
        if last {
            self.recv = self.recv.ended();
        }
        let len = res.max(0) as usize;
        let mut taken: Result<ToTest, Outcome> = Ok(None);
        if cqueue::buffer_more(flags) {
            bump(&with.events.shared_buffers);
        }
        match with.ring.data(group, flags, len) {
            None => {}
            Some(Err(lost)) => taken = Err(lost.into()),
            Some(Ok(_)) if self.closing => with.state.counters.bytes_in(len),
            Some(Ok(data)) => {
                // Caught here, not only around the whole step: a panic must
                // not skip the buffer's recycling, or the ring loses it.
                let session = &mut self.session;
                let (now, state, spares, cap) = (with.now, with.state, &mut *with.spares, with.cap);
                taken = Outcome::of_step(panic::catch_unwind(AssertUnwindSafe(|| {
                    session.receive(data, now, state, spares, cap)
                })));
            }
        }
        with.ring.recycle(group, flags, len);
        with.offload(taken?, id);
        if !last || self.closing {
            return Ok(RecvEnd::Fine);
        }
        match res {
            // A one-shot receive; `progress` arms the next.
            r if r > 0 => Ok(RecvEnd::Fine),
            // Stopped for the cap (or for a number being tested).
            e if e == -libc::ECANCELED => Ok(RecvEnd::Fine),
            0 => {
                self.session.input_ended();
                Ok(RecvEnd::Fine)
            }
            e if e == -libc::ENOBUFS => {
                // The data waits in the socket until buffers come back.
                self.recv = self.recv.parked();
                Ok(RecvEnd::Parked)
            }
            e => Err(io::Error::from_raw_os_error(-e).into()),
        }
    }

    /// A send completion: `res` bytes went, or the client failed.
    pub(super) fn on_send(&mut self, res: i32, with: &mut Serving<'_>) -> Result<(), Outcome> {
        self.send_inflight = false;
        if self.closing {
            return Ok(());
        }
        match res {
            n if n > 0 => {
                self.session
                    .sent(n as usize, with.now, with.state, with.spares);
                Ok(())
            }
            0 => Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            e => Err(io::Error::from_raw_os_error(-e).into()),
        }
    }

    /// Starts closing it: every operation of its is cancelled (closing its
    /// socket would not do it: the ring holds its own reference), and it is
    /// ended once the last has completed.
    pub(super) fn close(&mut self, id: ClientId, ring: &mut Ring) {
        self.closing = true;
        if self.ops > 0 {
            self.ops += 1;
            let fd = types::Fd(self.socket.as_raw_fd());
            let all = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all());
            ring.push(Kind::Cancel, id, all.build());
        }
    }

    /// Counts and logs how it ended, then closes its socket. Operations
    /// of its are still in flight only if its ring failed: the kernel may
    /// then still read its answers, so its buffers are given up rather
    /// than freed.
    pub(super) fn end(mut self, outcome: Outcome, spares: &mut Spares) {
        if self.ops > 0 {
            self.session.forget_buffers();
        }
        self.session.end(outcome, self.socket, spares);
    }
}

/// The provided-buffer group a receive of `kind` takes from.
pub(super) fn group_of(kind: Kind) -> Group {
    if kind == Kind::RecvOnce {
        Group::Once
    } else {
        Group::Multishot
    }
}
