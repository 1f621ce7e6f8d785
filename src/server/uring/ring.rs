//! One ring and its buffers: the io_uring instance, its two groups of
//! provided buffers (`bufring`; multishot receives share one, one-shot
//! receives take the other's whole), what it has in flight (`ops`), and
//! its own operations: the
//! read of its eventfd that wakes it, the tick that drives its timeouts,
//! the pause after an accept error. What a ring does *for its clients* is
//! the serving loop's (`serve`).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::BufRing;
use super::ops::{self, Kind, Ops};
use super::shared::{Group, Pool, Tuning};
use crate::server::kernel;
use crate::server::slots::ClientId;
use crate::shutdown::EventFd;

/// Submission queue entries per ring; more wait in the ring's own backlog.
const SQ_ENTRIES: u32 = 1024;

/// Completion queue entries per ring. The kernel keeps what does not fit
/// (`IORING_FEAT_NODROP`), so this only sets how much one wait can reap.
const CQ_ENTRIES: u32 = 8192;

/// Memory the kernel writes to or reads from for the ring's own
/// operations: boxed, so that it stays put while they are in flight.
struct Fixed {
    wake: u64,
    tick: types::Timespec,
    backoff: types::Timespec,
}

/// A ring, its buffers, and what it has in flight.
pub(super) struct Ring {
    // Dropped first: closing the ring ends what the kernel still holds of
    // the memory below (after a failure; normally nothing is left).
    pub(super) uring: IoUring,
    bufs: BufRing,
    once: BufRing,
    pub(super) ops: Ops,
    fixed: ManuallyDrop<Box<Fixed>>,
    wake: std::sync::Arc<EventFd>,
    tick_armed: bool,
    tick_multishot: bool,
    wake_armed: bool,
    /// Buffers given back since the last look: as many parked receives
    /// may go again.
    pub(super) recycled: usize,
    /// Its multishot buffers are consumed incrementally (Linux 6.12+).
    /// Only multishot receives take from them: the kernel posts each of
    /// their completions with data as it happens, so the completions of a
    /// buffer come in the order its bytes were taken, and each one's bytes
    /// are found by adding up what came before. A one-shot receive's
    /// completion is posted with its batch, later: sharing these buffers
    /// it could be read out of order, so it takes a whole buffer of the
    /// other group.
    pub(super) incremental: bool,
}

impl Ring {
    /// A ring whose eventfd is `wake`, ticking every `tick`, with the
    /// provided buffers `tuning` asks for.
    pub(super) fn new(
        tuning: &Tuning,
        tick: Duration,
        backoff: Duration,
        wake: std::sync::Arc<EventFd>,
    ) -> io::Result<Self> {
        let uring = kernel::io_uring(SQ_ENTRIES, CQ_ENTRIES)?;
        let (bufs, incremental) = provided_buffers(&uring, tuning)?;
        let Pool { count, size } = tuning.once;
        let mut once = BufRing::new(count, size, Group::Once as u16)?;
        once.register(&uring.submitter(), false)
            .map_err(refused(count, size))?;
        Ok(Ring {
            uring,
            bufs,
            once,
            ops: Ops::default(),
            fixed: ManuallyDrop::new(Box::new(Fixed {
                wake: 0,
                tick: types::Timespec::from(tick),
                backoff: types::Timespec::from(backoff),
            })),
            wake,
            tick_armed: false,
            tick_multishot: true,
            wake_armed: false,
            recycled: 0,
            incremental,
        })
    }

    /// Makes the calling thread the ring's only submitter, and arms the
    /// ring's own operations.
    pub(super) fn start(&mut self) -> io::Result<()> {
        self.uring.submitter().register_enable_rings()?;
        self.arm_wake();
        self.arm_tick();
        Ok(())
    }

    /// A duplicate of its descriptor, for another ring's `MSG_RING`s.
    pub(super) fn duplicate(&self) -> io::Result<OwnedFd> {
        // SAFETY: the ring's descriptor is open while it lives.
        unsafe { BorrowedFd::borrow_raw(self.uring.as_raw_fd()) }.try_clone_to_owned()
    }

    /// Queues `entry` as operation `kind` of client `id` (of the ring
    /// itself: [`ClientId::NONE`]); it counts as in flight until its final
    /// completion.
    pub(super) fn push(&mut self, kind: Kind, id: ClientId, entry: squeue::Entry) {
        if self.uring.submission().is_full() {
            // This push submits before the wait does: the buffers given
            // back since the last one must be there for its receives.
            self.publish();
        }
        self.ops
            .push(&mut self.uring, entry.user_data(ops::encode(kind, id)));
    }

    /// Submits what is queued and waits: for at least one completion, or,
    /// once `exiting`, at most 20 ms. The completions are in `cqes`.
    pub(super) fn wait(
        &mut self,
        exiting: bool,
        cqes: &mut Vec<(u64, i32, u32)>,
    ) -> io::Result<()> {
        // Before any wait: a client handed over before this ring's first
        // wait has no completion of its own to wake it.
        self.publish();
        let all_queued = self.ops.flush(&mut self.uring);
        let waited = if exiting {
            // Bounded, so that a completion that never comes cannot keep
            // the server from ending.
            let ts = types::Timespec::new().nsec(20_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.uring.submitter().submit_with_args(1, &args)
        } else {
            self.uring.submit_and_wait(usize::from(all_queued))
        };
        if let Err(e) = waited
            && !matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
            )
        {
            return Err(e);
        }
        // No more than `cqes` holds: the rest are reaped by the next wait,
        // which does not sleep while there are any, and a burst leaves no
        // larger vector behind.
        cqes.clear();
        let room = cqes.capacity();
        cqes.extend(
            (self.uring.completion())
                .take(room)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        Ok(())
    }

    fn publish(&self) {
        self.bufs.publish();
        self.once.publish();
    }

    fn group(&self, group: Group) -> &BufRing {
        match group {
            Group::Multishot => &self.bufs,
            Group::Once => &self.once,
        }
    }

    /// The data a receive completion from `group` carries, if any (valid
    /// until [`recycle`](Ring::recycle)d); an error if its bytes cannot be
    /// where the buffer's earlier completions left off (past the buffer's
    /// end), which would mean the kernel filled it in another order than
    /// its completions came: the client's input is then lost, and it must
    /// end.
    pub(super) fn data(&self, group: Group, flags: u32, len: usize) -> Option<io::Result<&[u8]>> {
        let bid = cqueue::buffer_select(flags)?;
        Some(self.group(group).get(bid, len).ok_or_else(|| {
            io::Error::other(format!(
                "a receive of {len} bytes does not fit where provided buffer {bid} was left off"
            ))
        }))
    }

    /// The completion's `len` bytes have been dealt with: its buffer, if
    /// it carries one, goes back unless the kernel goes on filling it.
    pub(super) fn recycle(&mut self, group: Group, flags: u32, len: usize) {
        let bufs = match group {
            Group::Multishot => &mut self.bufs,
            Group::Once => &mut self.once,
        };
        if let Some(bid) = cqueue::buffer_select(flags)
            && bufs.taken(bid, len, cqueue::buffer_more(flags))
        {
            self.recycled += 1;
        }
    }

    fn arm_wake(&mut self) {
        self.wake_armed = true;
        let counter = &raw mut self.fixed.wake as *mut u8;
        let read = opcode::Read::new(types::Fd(self.wake.fd()), counter, 8);
        self.push(Kind::Wake, ClientId::NONE, read.build());
    }

    /// The eventfd's read completed: what woke the ring (a client, an
    /// answer, the shutdown, room for the acceptor) is looked at after
    /// every batch; the read is armed again unless the ring is exiting.
    pub(super) fn on_wake(&mut self, exiting: bool) {
        self.ops.done();
        self.wake_armed = false;
        if !exiting {
            self.arm_wake();
        }
    }

    fn arm_tick(&mut self) {
        self.tick_armed = true;
        let flags = if self.tick_multishot {
            types::TimeoutFlags::MULTISHOT
        } else {
            types::TimeoutFlags::empty()
        };
        // No count: it fires on time alone, every tick until removed.
        let tick = opcode::Timeout::new(&raw const self.fixed.tick).count(0);
        self.push(Kind::Tick, ClientId::NONE, tick.flags(flags).build());
    }

    /// A tick fired: armed again if that was its last completion (before
    /// Linux 6.4 a multishot timeout is refused, and a one-shot one is
    /// armed each time).
    pub(super) fn on_tick(&mut self, res: i32, last: bool, exiting: bool) {
        if !last {
            return;
        }
        self.ops.done();
        self.tick_armed = false;
        if res == -libc::EINVAL && self.tick_multishot {
            self.tick_multishot = false;
        }
        if !exiting {
            self.arm_tick();
        }
    }

    /// Arms the pause after an accept error: the accept is re-armed when
    /// it fires.
    pub(super) fn arm_backoff(&mut self) {
        let pause = opcode::Timeout::new(&raw const self.fixed.backoff);
        self.push(Kind::Backoff, ClientId::NONE, pause.build());
    }

    /// Cancels the ring's own operations, for a ring that ends once their
    /// last completion is in.
    pub(super) fn cancel_own(&mut self) {
        let none = ClientId::NONE;
        if self.tick_armed {
            let remove = opcode::TimeoutRemove::new(ops::encode(Kind::Tick, none));
            self.push(Kind::Ctl, none, remove.build());
        }
        if self.wake_armed {
            self.push(Kind::Ctl, none, ops::cancel(Kind::Wake, none));
        }
    }

    /// Unregisters the buffers, for a ring whose operations are all over.
    pub(super) fn unregister(&mut self) -> io::Result<()> {
        self.bufs.unregister(&self.uring.submitter())?;
        self.once.unregister(&self.uring.submitter())
    }
}

/// The ring's provided buffers: consumed incrementally where `tuning`
/// asks for it and the kernel can (Linux 6.12+; before, it refuses the
/// flag with `EINVAL`), else taken whole, in more and smaller buffers of
/// the same space, so that a batch of many clients' small receives does
/// not run the ring dry. Whether incrementally.
fn provided_buffers(uring: &IoUring, tuning: &Tuning) -> io::Result<(BufRing, bool)> {
    let Pool { count, size } = tuning.buffers;
    let group = Group::Multishot as u16;
    if tuning.incremental {
        let mut bufs = BufRing::new(count, size, group)?;
        match bufs.register(&uring.submitter(), true) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            registered => {
                return registered
                    .map(|()| (bufs, true))
                    .map_err(refused(count, size));
            }
        }
    }
    let (count, size) = (count.saturating_mul(4), size / 4);
    let mut bufs = BufRing::new(count, size, group)?;
    bufs.register(&uring.submitter(), false)
        .map_err(refused(count, size))?;
    Ok((bufs, false))
}

/// A registration of `count` buffers of `size` bytes refused, said so.
fn refused(count: u16, size: u32) -> impl Fn(io::Error) -> io::Error {
    move |e: io::Error| {
        let says = format!("cannot register {count} provided buffers of {size} bytes: {e}");
        io::Error::new(e.kind(), says)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.ops.inflight == 0 {
            // SAFETY: dropped once, here, and no operation refers to it.
            unsafe { ManuallyDrop::drop(&mut self.fixed) };
            return;
        }
        // A ring that failed, or whose cancellations never completed: the
        // kernel may still write into the buffers after we are gone, so
        // they are never freed.
        self.bufs.leak();
        self.once.leak();
    }
}
