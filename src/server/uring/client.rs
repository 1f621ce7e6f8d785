//! One client of a ring: its session and socket, and the operations the
//! ring has in flight for it. The session says what the client needs
//! (answers to send, input wanted or not); this file turns that into
//! submissions (one multishot receive, one send at a time, cancellations)
//! and takes their completions back. It is freed only once none of its
//! operations is left: a send in flight reads the session's buffer.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use io_uring::{cqueue, opcode, types};

use super::ops::{self, Completion, Kind};
use super::ring::Ring;
use super::shared::{GROUP, RingEvents, bump};
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

/// Where a client's multishot receive stands. One byte, like the rest of
/// a client's own state: ten thousand idle clients hold it each.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    /// None in flight.
    Off,
    /// It ended for want of buffers; armed again once some come back.
    Parked,
    /// In flight, armed without a limit, or with one (`Limited`, which
    /// kernels before 6.17 refuse).
    Armed,
    Limited,
    /// In flight, and so is a cancellation of it.
    Cancelling,
    CancellingLimited,
}

impl Recv {
    fn limited(self) -> bool {
        matches!(self, Recv::Limited | Recv::CancellingLimited)
    }
}

/// What a receive's last completion says of the receive itself.
pub(super) enum RecvEnd {
    /// Nothing to do (more completions to come, or it ended as it should).
    Fine,
    /// It ran out of provided buffers: park the client.
    Parked,
    /// The kernel refused its limit: receive without one from now on.
    LimitRefused,
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
            if self.recv == Recv::Off {
                self.arm_recv(id, with.ring, cap);
            }
        } else if matches!(self.recv, Recv::Armed | Recv::Limited) && self.session.blocked(cap) {
            // Over the cap, or waiting for a number: stop the receive.
            // What arrives before it stops is kept, not lost.
            self.recv = if self.recv.limited() {
                Recv::CancellingLimited
            } else {
                Recv::Cancelling
            };
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

    fn arm_recv(&mut self, id: ClientId, ring: &mut Ring, cap: usize) {
        let limit = ring.recv_limit;
        self.recv = if limit { Recv::Limited } else { Recv::Armed };
        self.ops += 1;
        let headroom = cap.saturating_sub(self.session.pending()).max(1);
        // One submission, a completion for every arrival, each in a buffer
        // the kernel takes from the ring's group.
        let mut e = opcode::RecvMulti::new(types::Fd(self.socket.as_raw_fd()), GROUP).build();
        if limit {
            // The receive ends by itself once the headroom has arrived (the
            // last buffer may overshoot it): the byte protocol answers at
            // most a byte per byte, so its answers stay under the cap plus
            // one buffer without any cancellation racing new data.
            ops::set_recv_limit(&mut e, headroom.min(u32::MAX as usize) as u32);
        }
        ring.push(Kind::Recv, id, e);
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
        let limited = self.recv.limited();
        if last {
            self.recv = Recv::Off;
        }
        let len = res.max(0) as usize;
        let mut taken: Result<ToTest, Outcome> = Ok(None);
        if cqueue::buffer_more(flags) {
            bump(&with.events.shared_buffers);
        }
        match with.ring.data(flags, len) {
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
        with.ring.recycle(flags, len);
        with.offload(taken?, id);
        if !last || self.closing {
            return Ok(RecvEnd::Fine);
        }
        match res {
            // Ended by its limit; `progress` arms the next.
            r if r > 0 => Ok(RecvEnd::Fine),
            0 => {
                self.session.input_ended();
                Ok(RecvEnd::Fine)
            }
            e if e == -libc::ENOBUFS => {
                // The data waits in the socket until buffers come back.
                self.recv = Recv::Parked;
                Ok(RecvEnd::Parked)
            }
            e if e == -libc::ECANCELED => Ok(RecvEnd::Fine),
            // Before Linux 6.17 a receive takes no limit: the cap is then
            // kept by cancelling, and what races the cancel is kept. Every
            // receive armed with one before the first refusal came back is
            // refused too; each is armed again, without.
            e if e == -libc::EINVAL && limited => Ok(RecvEnd::LimitRefused),
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
