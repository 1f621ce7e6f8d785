//! One ring and its thread: submit, wait for completions, act on each.
//!
//! The loop is the completion model's whole idea. It never asks whether a
//! socket is ready; it has a receive in flight for every client that may
//! send (multishot: one submission, a completion per arrival), a send in
//! flight for every client that is owed answers, and acts on whatever
//! completed: answer the bytes that came in, send the next answers,
//! re-arm what ended. Every completion of a batch is reaped with one
//! `io_uring_enter`, which also submits everything queued since the last.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::{IoUring, cqueue, opcode, types};

use super::accept::Acceptor;
use super::bufring::BufRing;
use super::client::{Answer, Client, Offloader, Spares};
use super::ops::{self, Kind, Ops};
use super::setup::{self, EventFd};
use super::{GROUP, NewClient, Shared};
use crate::server::conn::Outcome;
use crate::server::{ServerState, UringSettings};

/// How long a stopping ring waits for the completions of what it
/// cancelled before it gives their memory up for lost.
const GRACE: Duration = Duration::from_secs(2);

pub(super) struct Slot {
    pub(super) generation: u32,
    pub(super) client: Option<Client>,
}

/// The client in `slot`, if any. A function of the table alone, so that
/// the worker's other fields (its spares, its offloader) stay free to
/// borrow beside it.
pub(super) fn client_in(slots: &mut [Slot], slot: u32) -> Option<&mut Client> {
    slots.get_mut(slot as usize)?.client.as_mut()
}

/// Memory the kernel writes to or reads from for the ring's own
/// operations: boxed, so that it stays put while they are in flight.
struct Fixed {
    wake: u64,
    tick: types::Timespec,
    backoff: types::Timespec,
}

pub(super) struct Worker {
    // Dropped first: closing the ring ends what the kernel still holds of
    // the memory below (after a failure; normally nothing is left).
    pub(super) ring: IoUring,
    pub(super) bufs: BufRing,
    pub(super) id: usize,
    pub(super) ctx: Arc<ServerState>,
    pub(super) shared: Arc<Shared>,
    pub(super) cap: usize,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<u32>,
    pub(super) spares: Spares,
    pub(super) clients: usize,
    pub(super) ops: Ops,
    /// Clients whose receive ran out of buffers, to re-arm in turn.
    pub(super) parked: VecDeque<(u32, u32)>,
    /// Buffers given back in this batch: as many parked clients may go.
    pub(super) recycled: usize,
    /// The kernel takes a limit on a multishot receive (Linux 6.17+).
    pub(super) recv_limit: bool,
    fixed: ManuallyDrop<Box<Fixed>>,
    pub(super) wake: Arc<EventFd>,
    tick_armed: bool,
    tick_multishot: bool,
    wake_armed: bool,
    /// Clients from ring 0; `None` for ring 0 itself, or once closed.
    pub(super) incoming: Option<Receiver<NewClient>>,
    pub(super) acceptor: Option<Acceptor>,
    pub(super) offload: Option<Offloader>,
    pub(super) answers: Receiver<Answer>,
    pub(super) now: Instant,
    pub(super) stopping: bool,
    exiting: bool,
}

impl Worker {
    pub(super) fn new(
        id: usize,
        ctx: &Arc<ServerState>,
        shared: &Arc<Shared>,
        settings: &UringSettings,
        incoming: Option<Receiver<NewClient>>,
        compute: Option<crate::server::compute::Compute>,
        wake: Arc<EventFd>,
    ) -> io::Result<Self> {
        let ring = setup::full_ring()?;
        let tuning = shared.tuning;
        let mut bufs = BufRing::new(tuning.buffers, tuning.buffer_size, GROUP)?;
        bufs.register(&ring.submitter())
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "io_uring is unavailable here: this kernel has no provided buffer rings \
                     (IORING_REGISTER_PBUF_RING, Linux 5.19): {e}"
                    ),
                ),
                _ => e,
            })?;
        let (reply, answers) = crossbeam_channel::unbounded();
        let tick = tuning.tick.unwrap_or_else(|| super::tick(&ctx.config));
        let backoff = crate::server::listener::BACKOFF;
        Ok(Worker {
            ring,
            bufs,
            id,
            ctx: Arc::clone(ctx),
            shared: Arc::clone(shared),
            cap: settings.outbound_cap,
            slots: Vec::new(),
            free: Vec::new(),
            spares: Spares::new(),
            clients: 0,
            ops: Ops::default(),
            parked: VecDeque::new(),
            recycled: 0,
            recv_limit: tuning.recv_limit,
            fixed: ManuallyDrop::new(Box::new(Fixed {
                wake: 0,
                tick: types::Timespec::from(tick),
                backoff: types::Timespec::from(backoff),
            })),
            offload: compute.map(|compute| Offloader {
                compute,
                reply,
                wake: Arc::clone(&wake),
            }),
            wake,
            tick_armed: false,
            tick_multishot: true,
            wake_armed: false,
            incoming,
            acceptor: None,
            answers,
            now: Instant::now(),
            stopping: false,
            exiting: false,
        })
    }

    /// Runs the ring until the server has stopped and its last client
    /// has left. Call it on the ring's own thread.
    pub(super) fn run(mut self) -> io::Result<()> {
        setup::enable(&self.ring)?;
        self.ctx.shutdown.register_waker(self.wake.clone());
        self.arm_wake();
        self.arm_tick();
        if self.acceptor.is_some() {
            self.arm_accept();
        }
        let mut deadline = None;
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            // Before any wait: a client handed over before this ring's
            // first wait has no completion of its own to wake it.
            self.bufs.publish();
            let all_queued = self.ops.flush(&mut self.ring);
            if self.exiting && self.ops.inflight == 0 {
                break;
            }
            let waited = if self.exiting {
                // Bounded, so that a completion that never comes cannot
                // keep the server from ending.
                let at = *deadline.get_or_insert(self.now + GRACE);
                if self.now >= at {
                    tracing::warn!(
                        "ring {}: {} operations still in flight after the shutdown; their \
                         buffers are given up",
                        self.id,
                        self.ops.inflight
                    );
                    return Ok(());
                }
                let ts = types::Timespec::new().nsec(20_000_000);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            } else {
                self.ring.submit_and_wait(usize::from(all_queued))
            };
            match waited {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                    ) => {}
                Err(e) => return Err(self.fail(e)),
            }
            self.now = Instant::now();
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, res, flags) in &cqes {
                self.handle(user_data, res, flags);
            }
            self.take_new_clients();
            self.take_answers();
            if self.recycled > 0 {
                let recycled = std::mem::take(&mut self.recycled);
                self.rearm_parked(recycled);
            }
            if !self.stopping && self.ctx.shutdown.is_triggered() {
                self.stop();
            }
            self.accept_turn();
            self.maybe_exit();
        }
        self.bufs.unregister(&self.ring.submitter())
    }

    /// A ring that cannot wait for completions cannot serve anyone: its
    /// clients are closed as failed, and the memory the kernel may still
    /// use is given up.
    fn fail(&mut self, e: io::Error) -> io::Error {
        for slot in &mut self.slots {
            if let Some(mut client) = slot.client.take() {
                if client.ops > 0 {
                    client.forget_buffers();
                }
                client.end(io::Error::new(e.kind(), e.to_string()).into());
            }
        }
        self.clients = 0;
        if let Some(a) = self.acceptor.as_mut() {
            a.close_waiting(&self.ctx);
        }
        e
    }

    fn handle(&mut self, user_data: u64, res: i32, flags: u32) {
        let last = !cqueue::more(flags);
        let Some((kind, slot, generation)) = ops::decode(user_data) else {
            self.recycle_buffer(flags);
            return;
        };
        match kind {
            Kind::Accept => self.on_accept(res, last),
            Kind::Backoff => self.on_backoff(),
            Kind::MsgSent => self.on_msg_sent(slot, res),
            Kind::Handoff => {} // the channel is read on every turn
            Kind::Tick => self.on_tick(res, last),
            Kind::Wake => {
                self.ops.done();
                self.wake_armed = false;
                if !self.exiting {
                    self.arm_wake();
                }
                // What woke it (a client, an answer, the shutdown, room for
                // the acceptor) is looked at after every batch.
            }
            Kind::Ctl => self.ops.done(),
            Kind::Recv | Kind::Send | Kind::Cancel => {
                if last {
                    self.ops.done();
                }
                if !self.live(slot, generation) {
                    // Cannot happen while ops are counted, but a buffer
                    // must never be lost.
                    self.recycle_buffer(flags);
                    return;
                }
                if last && let Some(c) = self.client(slot) {
                    c.ops -= 1;
                }
                match kind {
                    Kind::Recv => self.on_recv(slot, generation, res, flags, last),
                    Kind::Send => self.on_send(slot, res),
                    _ => {} // 0, ENOENT or EALREADY: nothing to do
                }
                self.progress(slot);
                self.maybe_finalize(slot);
            }
        }
    }

    fn recycle_buffer(&mut self, flags: u32) {
        if let Some(bid) = cqueue::buffer_select(flags) {
            self.bufs.recycle(bid);
            self.recycled += 1;
        }
    }

    pub(super) fn client(&mut self, slot: u32) -> Option<&mut Client> {
        client_in(&mut self.slots, slot)
    }

    pub(super) fn live(&self, slot: u32, generation: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.generation == generation && s.client.is_some())
    }

    pub(super) fn generation(&self, slot: u32) -> u32 {
        self.slots[slot as usize].generation
    }

    // ---- the ring's own operations ----------------------------------------

    fn arm_wake(&mut self) {
        self.wake_armed = true;
        let e = opcode::Read::new(
            types::Fd(self.wake.fd()),
            &raw mut self.fixed.wake as *mut u8,
            8,
        )
        .build()
        .user_data(ops::encode(Kind::Wake, 0, 0));
        self.ops.push(e);
    }

    fn arm_tick(&mut self) {
        self.tick_armed = true;
        let flags = if self.tick_multishot {
            types::TimeoutFlags::MULTISHOT
        } else {
            types::TimeoutFlags::empty()
        };
        // No count: it fires on time alone, every tick until removed.
        let e = opcode::Timeout::new(&raw const self.fixed.tick)
            .count(0)
            .flags(flags)
            .build()
            .user_data(ops::encode(Kind::Tick, 0, 0));
        self.ops.push(e);
    }

    /// Arms the pause after an accept error: the accept is re-armed when
    /// it fires.
    pub(super) fn arm_backoff(&mut self) {
        let e = opcode::Timeout::new(&raw const self.fixed.backoff)
            .build()
            .user_data(ops::encode(Kind::Backoff, 0, 0));
        self.ops.push(e);
    }

    fn on_tick(&mut self, res: i32, last: bool) {
        if last {
            self.ops.done();
            self.tick_armed = false;
            if res == -libc::EINVAL && self.tick_multishot {
                // Before Linux 6.4: a one-shot timeout, armed again each time.
                self.tick_multishot = false;
            }
            if !self.exiting {
                self.arm_tick();
            }
        }
        if self.exiting {
            return;
        }
        self.sweep();
        let all = self.parked.len();
        self.rearm_parked(all);
    }

    /// Closes the clients past a timeout, and those with nothing in
    /// flight once the drain is over. A scan of every client each tick is cheap
    /// next to a timer each: ten thousand take microseconds.
    fn sweep(&mut self) {
        let closing = self.ctx.is_closing();
        for slot in 0..self.slots.len() as u32 {
            let Some(c) = self.slots[slot as usize].client.as_ref() else {
                continue;
            };
            if c.is_closing() {
                continue;
            }
            // Once the drain is over, `shutdown(2)` on its socket ends a
            // client through its receive or send; one with neither in
            // flight (its number being tested, its receive parked) would
            // never see it.
            let outcome = if closing && (c.computing || c.ops == 0) {
                Some(Outcome::ClosedAtShutdown)
            } else {
                c.expired(self.now, &self.ctx.config)
            };
            if let Some(outcome) = outcome {
                self.close(slot, outcome);
            }
        }
    }

    // ---- stopping -------------------------------------------------------------

    /// The shutdown has fired: ring 0 stops accepting (`accept_turn`), and
    /// every ring serves its clients until they leave or the drain closes
    /// them.
    fn stop(&mut self) {
        self.stopping = true;
    }

    /// Once stopping, with no client left and none to come, cancels the
    /// ring's own operations; the loop ends when their last completion is
    /// in.
    fn maybe_exit(&mut self) {
        if !self.stopping || self.exiting || self.clients > 0 || self.incoming.is_some() {
            return;
        }
        if self.acceptor.as_ref().is_some_and(|a| !a.done()) {
            return;
        }
        self.exiting = true;
        if self.tick_armed {
            let e = opcode::TimeoutRemove::new(ops::encode(Kind::Tick, 0, 0))
                .build()
                .user_data(ops::encode(Kind::Ctl, 0, 0));
            self.ops.push(e);
        }
        if self.wake_armed {
            let e = opcode::AsyncCancel::new(ops::encode(Kind::Wake, 0, 0))
                .build()
                .user_data(ops::encode(Kind::Ctl, 0, 0));
            self.ops.push(e);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.ops.inflight == 0 {
            // SAFETY: dropped once, here, and no operation refers to it.
            unsafe { ManuallyDrop::drop(&mut self.fixed) };
            return;
        }
        // A ring that failed, or whose cancellations never completed: the
        // kernel may still write into the buffers or read the answers
        // being sent after we are gone, so they are never freed.
        self.bufs.leak();
        for slot in &mut self.slots {
            if let Some(client) = slot.client.as_mut()
                && client.ops > 0
            {
                client.forget_buffers();
            }
        }
    }
}
