//! What a ring does for its clients: take them on, receive, answer, send,
//! and end them once none of their operations is left in the kernel.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::TryRecvError;
use io_uring::{cqueue, opcode, types};
use tracing::{debug, info};

use super::GROUP;
use super::client::Client;
use super::ops::{self, Kind};
use super::worker::{Slot, Worker, client_in};
use crate::server::ClientGuard;
use crate::server::conn::{self, LOG_TARGET, Outcome};
use crate::shutdown::Wake;

impl Worker {
    /// Clients that ring 0 handed over (its `MSG_RING` only wakes us).
    pub(super) fn take_new_clients(&mut self) {
        loop {
            let Some(incoming) = &self.incoming else {
                return;
            };
            match incoming.try_recv() {
                Ok((guard, stream, peer)) => {
                    if self.stopping {
                        // Its guard counts it as closed at shutdown.
                        drop((guard, stream));
                    } else {
                        self.add(guard, stream, peer);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.incoming = None;
                    return;
                }
            }
        }
    }

    /// Answers to numbers that were tested off the ring.
    pub(super) fn take_answers(&mut self) {
        while let Ok(((slot, generation), n, prime)) = self.answers.try_recv() {
            if !self.live(slot, generation) {
                // Its client left while the number was being tested.
                continue;
            }
            let Some(prime) = prime else {
                self.close(slot, Outcome::ClosedAtShutdown);
                continue;
            };
            let ctx = Arc::clone(&self.ctx);
            let Some(c) = client_in(&mut self.slots, slot) else {
                continue;
            };
            if let Err(e) = c.answered(n, prime, &ctx, &mut self.spares) {
                self.close(slot, e.into());
                continue;
            }
            self.progress(slot);
        }
    }

    /// Takes on a client: its greeting goes out and its receive is armed.
    pub(super) fn add(&mut self, guard: ClientGuard, stream: TcpStream, peer: SocketAddr) {
        info!(target: LOG_TARGET, "peer {peer} connected");
        let ready = self.room_for_one().and_then(|()| stream.set_nodelay(true));
        let mut client = Client::new(guard, stream, peer, &self.ctx, self.now);
        if let Err(e) = ready.and_then(|()| client.greet(&self.ctx, &mut self.spares)) {
            client.release(&mut self.spares);
            client.end(e.into());
            self.place_freed();
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                // Room was made by `room_for_one`.
                self.slots.push(Slot {
                    generation: 0,
                    client: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].client = Some(client);
        self.clients += 1;
        self.progress(slot);
    }

    /// Makes room for one more client in the table (and its place in the
    /// free list): it doubles as it fills, and under an address-space
    /// limit that growth is checked like any other.
    fn room_for_one(&mut self) -> io::Result<()> {
        if !self.free.is_empty() || self.slots.len() < self.slots.capacity() {
            return Ok(());
        }
        let entry = std::mem::size_of::<Slot>() + std::mem::size_of::<u32>();
        let growth = self.slots.capacity().max(4) * entry;
        self.ctx.budget.check(growth as u64)?;
        let oom = |e| io::Error::new(io::ErrorKind::OutOfMemory, format!("{e}"));
        self.slots.try_reserve(1).map_err(oom)?;
        let want = self.slots.capacity().saturating_sub(self.free.len());
        self.free.try_reserve(want).map_err(oom)
    }

    /// Does whatever a client's state now calls for: answer what it sent
    /// while it could not be answered, send what it is owed, receive or
    /// stop receiving, and close it once it is done.
    pub(super) fn progress(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let (cap, ctx) = (self.cap, Arc::clone(&self.ctx));
        let offload = self.offload.as_ref().map(|o| (o, (slot, generation)));
        let Some(c) = client_in(&mut self.slots, slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let answered = {
            let spares = &mut self.spares;
            panic::catch_unwind(AssertUnwindSafe(|| {
                c.answer_unread(&ctx, spares, cap, offload)
            }))
        };
        if let Some(outcome) = failure(answered) {
            self.close(slot, outcome);
            return;
        }
        if let Some((ptr, len)) = c.next_send() {
            c.send_inflight = true;
            c.ops += 1;
            let e = opcode::Send::new(types::Fd(c.socket.as_raw_fd()), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ops::encode(Kind::Send, slot, generation));
            self.ops.push(e);
        }
        let Some(c) = self.client(slot) else { return };
        if c.wants_input(cap) {
            if !c.recv.armed && !c.recv.parked {
                self.arm_recv(slot);
            }
        } else if c.recv.armed && !c.recv.cancelling && !c.is_closing() && c.blocked(cap) {
            // Over the cap, or waiting for a number: stop the receive.
            // What arrives before it stops is kept, not lost.
            c.recv.cancelling = true;
            c.ops += 1;
            super::bump(&self.shared.counts.paused);
            let e = opcode::AsyncCancel::new(ops::encode(Kind::Recv, slot, generation))
                .build()
                .user_data(ops::encode(Kind::Cancel, slot, generation));
            self.ops.push(e);
        }
        if let Some(c) = self.client(slot)
            && let Some(outcome) = c.finished()
        {
            self.close(slot, outcome);
        }
    }

    fn arm_recv(&mut self, slot: u32) {
        let generation = self.generation(slot);
        let (cap, limit) = (self.cap, self.recv_limit);
        let Some(c) = self.client(slot) else { return };
        c.recv.armed = true;
        c.recv.parked = false;
        c.recv.limited = limit;
        c.ops += 1;
        let headroom = cap.saturating_sub(c.pending()).max(1);
        // One submission, a completion for every arrival, each in a buffer
        // the kernel takes from the ring's group.
        let mut e = opcode::RecvMulti::new(types::Fd(c.socket.as_raw_fd()), GROUP)
            .build()
            .user_data(ops::encode(Kind::Recv, slot, generation));
        if limit {
            // The receive ends by itself once the headroom has arrived (the
            // last buffer may overshoot it): the byte protocol answers at
            // most a byte per byte, so its answers stay under the cap plus
            // one buffer without any cancellation racing new data.
            ops::set_recv_limit(&mut e, headroom.min(u32::MAX as usize) as u32);
        }
        self.ops.push(e);
    }

    /// Re-arms up to `budget` clients whose receive ran out of buffers,
    /// the longest waiting first: as many as buffers came back, so that a
    /// dry ring does not re-arm everyone to fail again.
    pub(super) fn rearm_parked(&mut self, mut budget: usize) {
        while budget > 0 {
            let Some((slot, generation)) = self.parked.pop_front() else {
                break;
            };
            if self.live(slot, generation) && self.client(slot).is_some_and(|c| c.recv.parked) {
                if let Some(c) = self.client(slot) {
                    c.recv.parked = false;
                }
                self.progress(slot);
                budget -= 1;
            }
        }
    }

    pub(super) fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32, last: bool) {
        let (cap, ctx, now) = (self.cap, Arc::clone(&self.ctx), self.now);
        let offload = self.offload.as_ref().map(|o| (o, (slot, generation)));
        let Some(c) = client_in(&mut self.slots, slot) else {
            return;
        };
        if last {
            c.recv.armed = false;
            c.recv.cancelling = false;
        }
        let mut failed = None;
        if let Some(bid) = cqueue::buffer_select(flags) {
            let len = res.max(0) as usize;
            ctx.count_bytes_in(len);
            if !c.is_closing() {
                let data = self.bufs.get(bid, len).unwrap_or_default();
                let taken = panic::catch_unwind(AssertUnwindSafe(|| {
                    c.receive(data, now, &ctx, &mut self.spares, cap, offload)
                }));
                failed = failure(taken);
            }
            self.bufs.recycle(bid);
            self.recycled += 1;
        }
        if let Some(outcome) = failed {
            self.close(slot, outcome);
            return;
        }
        if !last || c.is_closing() {
            return;
        }
        match res {
            // Ended by its limit; `progress` arms the next.
            r if r > 0 => {}
            0 => c.read_closed = true,
            e if e == -libc::ENOBUFS => {
                // The data waits in the socket until buffers come back.
                c.recv.parked = true;
                self.parked.push_back((slot, generation));
                super::bump(&self.shared.counts.parked);
            }
            e if e == -libc::ECANCELED => {}
            e if e == -libc::EINVAL && c.recv.limited => {
                // Before Linux 6.17 a receive takes no limit: the cap is then
                // kept by cancelling, and what races the cancel is kept.
                // Every receive armed with one before the first refusal came
                // back is refused too; each is armed again, without.
                if self.recv_limit {
                    debug!("ring {}: multishot receive takes no limit here", self.id);
                }
                self.recv_limit = false;
                self.shared
                    .counts
                    .limit_refused
                    .store(true, Ordering::Relaxed);
            }
            e => self.close(slot, io::Error::from_raw_os_error(-e).into()),
        }
    }

    pub(super) fn on_send(&mut self, slot: u32, res: i32) {
        let (ctx, now) = (Arc::clone(&self.ctx), self.now);
        let Some(c) = client_in(&mut self.slots, slot) else {
            return;
        };
        c.send_inflight = false;
        if c.is_closing() {
            return;
        }
        match res {
            n if n > 0 => c.sent(n as usize, now, &ctx, &mut self.spares),
            0 => self.close(slot, io::Error::from(io::ErrorKind::WriteZero).into()),
            e => self.close(slot, io::Error::from_raw_os_error(-e).into()),
        }
    }

    /// Starts closing a client: every operation of its is cancelled (closing
    /// its socket would not do it: the ring holds its own reference), and it
    /// is ended once the last has completed.
    pub(super) fn close(&mut self, slot: u32, outcome: Outcome) {
        let generation = self.generation(slot);
        let Some(c) = self.client(slot) else { return };
        if !c.start_closing(outcome) {
            return;
        }
        if c.ops > 0 {
            c.ops += 1;
            let fd = types::Fd(c.socket.as_raw_fd());
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
                .build()
                .user_data(ops::encode(Kind::Cancel, slot, generation));
            self.ops.push(e);
        }
        self.maybe_finalize(slot);
    }

    /// Ends a closing client once none of its operations is in flight:
    /// counted, logged, its memory freed, its socket closed.
    pub(super) fn maybe_finalize(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if !s
            .client
            .as_ref()
            .is_some_and(|c| c.is_closing() && c.ops == 0)
        {
            return;
        }
        let Some(mut client) = s.client.take() else {
            return;
        };
        s.generation = ops::next_generation(s.generation);
        // Reserved by `room_for_one`: cannot allocate.
        self.free.push(slot);
        self.clients -= 1;
        let outcome = client.take_outcome();
        client.release(&mut self.spares);
        client.end(outcome);
        self.place_freed();
    }

    /// A place among the clients is free: the acceptor may be waiting
    /// for one.
    fn place_freed(&self) {
        if self.shared.acceptor_waits.load(Ordering::SeqCst) {
            self.shared.wake_acceptor.wake();
        }
    }
}

/// The outcome of a client's step that failed or panicked, if it did.
fn failure(step: std::thread::Result<io::Result<()>>) -> Option<Outcome> {
    match step {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.into()),
        Err(panic) => Some(Outcome::Panicked(conn::panic_message(&*panic))),
    }
}
