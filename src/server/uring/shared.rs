//! What the rings and their parts share: the set-up that tests tune
//! (the provided buffers, the receive limit, the tick), the counters of
//! what the rings did that tests look at, and how a place freed on any
//! ring reaches ring 0. Apart from `mod.rs`, which starts the rings, so
//! that the parts below it import nothing from above them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::shutdown::EventFd;

/// A ring's two provided-buffer groups (each ring has its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Group {
    /// For the multishot receives of quiet clients: few large buffers,
    /// shared between receives (consumed incrementally where the kernel
    /// can), so that an idle client holds none.
    Multishot = 0,
    /// For the one-shot receives of streaming clients: each receive takes
    /// a buffer whole, so that its data is where the buffer starts, in
    /// whatever order the kernel posts its completion.
    Once = 1,
}

/// A ring's provided buffers of one group: how many, of how many bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pool {
    pub(super) count: u16,
    pub(super) size: u32,
}

/// Provided buffers per ring for multishot receives, consumed
/// incrementally: 4 MiB of address space, resident only once data has
/// passed through. A receive may take as much as `event` reads at once,
/// and small ones share a buffer. Taken whole (before Linux 6.12), the
/// same space is 256 of 16 KiB.
pub(super) const BUFFERS: Pool = Pool {
    count: 64,
    size: 64 * 1024,
};

/// Provided buffers per ring for one-shot receives: one read's worth
/// each, as `event` reads. A buffer is held only from the moment data
/// arrives until the ring has answered it, within one batch, so a few
/// serve many streaming clients; a batch that finds none parks its
/// receive until one comes back.
pub(super) const ONCE_BUFFERS: Pool = Pool {
    count: 32,
    size: 64 * 1024,
};

/// What the rings share: how a place freed on any ring reaches ring 0
/// while it waits for one, and what they did.
pub(super) struct Shared {
    pub(super) acceptor_waits: AtomicBool,
    pub(super) wake_acceptor: Arc<EventFd>,
    pub(super) events: Arc<RingEvents>,
}

/// The rings' set-up that tests change: the provided buffers of
/// multishot receives (consumed incrementally if `incremental` and the
/// kernel can, else taken whole, four times as many of a quarter the
/// size) and of one-shot receives, and the tick (`None`: from the
/// timeouts, see `uring::tick`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    pub(super) buffers: Pool,
    pub(super) once: Pool,
    pub(super) incremental: bool,
    pub(super) tick: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            buffers: BUFFERS,
            once: ONCE_BUFFERS,
            incremental: true,
            tick: None,
        }
    }
}

/// What the rings did that the [`Summary`](crate::server::Summary) does
/// not show, for the tests to see which way a case went.
#[derive(Debug, Default)]
pub(super) struct RingEvents {
    /// Receives that ran out of provided buffers.
    pub(super) parked: AtomicU64,
    /// Multishot receives cancelled because their client was over the cap
    /// (or waiting for a number).
    pub(super) paused: AtomicU64,
    /// One-shot receives armed: a client owed answers reads no more than
    /// the room left under the cap.
    pub(super) once: AtomicU64,
    /// Newcomers accepted in a burst that found the server full, kept in
    /// ring 0's queue.
    pub(super) waited: AtomicU64,
    /// Clients handed to another ring.
    pub(super) handed: AtomicU64,
    /// Answer buffers sent in two parts.
    pub(super) split: AtomicU64,
    /// Receives that left the rest of their buffer to the next:
    /// incremental consumption at work.
    pub(super) shared_buffers: AtomicU64,
    /// A ring's buffers are taken whole (incremental consumption not
    /// asked for, or refused before Linux 6.12).
    pub(super) whole_buffers: AtomicBool,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
