//! What a ring has in flight, and how each operation is named.
//!
//! Every submission carries 64 bits of `user_data` that come back with
//! its completions: here `| kind:8 | generation:24 | slot:32 |`. The slot
//! is the client's place in its ring's table, and the generation tells
//! that client apart from a later one in the same place, so that a
//! completion of a client already gone is recognised as stale (and its
//! buffer, if it carries one, still given back).
//!
//! The memory rule that makes the ring safe: an operation that refers to
//! memory of ours (an answer being sent, a timespec, the eventfd's
//! counter, the provided buffers) is counted from the moment it is queued
//! until its *final* completion, one without `IORING_CQE_F_MORE`. A
//! client's buffers are freed only when none of its operations is left;
//! the ring's own memory only when nothing at all is.

use std::collections::VecDeque;

use io_uring::{IoUring, opcode, squeue};

use crate::server::slots::{ClientId, GENERATION_BITS};

/// What an operation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Kind {
    /// The multishot accept (ring 0 only).
    Accept = 1,
    /// The periodic timeout: timeouts, the parked, the stop.
    Tick = 2,
    /// A client's multishot receive.
    Recv = 3,
    /// A send of a client's answers.
    Send = 4,
    /// A cancellation on behalf of a client (counts as one of its ops).
    Cancel = 5,
    /// A cancellation of one of the ring's own operations.
    Ctl = 6,
    /// Arrives on a ring through `MSG_RING`: a client waits in its channel.
    Handoff = 7,
    /// The sending side of that message.
    MsgSent = 8,
    /// The read of the ring's eventfd.
    Wake = 9,
    /// The pause after an `accept` that ran out of descriptors.
    Backoff = 10,
    /// A client's one-shot receive, sized to the room under its cap.
    RecvOnce = 11,
}

/// A completion, decoded: what it completes, for which client, its
/// result and flags.
#[derive(Clone, Copy, Debug)]
pub(super) struct Completion {
    pub(super) kind: Kind,
    pub(super) id: ClientId,
    pub(super) res: i32,
    pub(super) flags: u32,
}

impl Completion {
    /// Its operation's final completion (no `IORING_CQE_F_MORE`): the
    /// operation no longer counts as in flight.
    pub(super) fn last(&self) -> bool {
        !io_uring::cqueue::more(self.flags)
    }
}

/// The `user_data` of an operation of `kind` for client `id` (the ring's
/// own operations name no client: [`ClientId::NONE`]).
pub(super) fn encode(kind: Kind, id: ClientId) -> u64 {
    ((kind as u64) << 56) | id.to_u64()
}

/// The kind and client of `user_data`; `None` for anything we did not
/// make (zero included).
pub(super) fn decode(user_data: u64) -> Option<(Kind, ClientId)> {
    use Kind::*;
    const KINDS: [Kind; 11] = [
        Accept, Tick, Recv, Send, Cancel, Ctl, Handoff, MsgSent, Wake, Backoff, RecvOnce,
    ];
    let kind = *KINDS.get(((user_data >> 56) as usize).checked_sub(1)?)?;
    const ID_BITS: u32 = 32 + GENERATION_BITS;
    Some((kind, ClientId::from_u64(user_data & ((1 << ID_BITS) - 1))))
}

/// A cancellation of operation `kind` of client `id`.
pub(super) fn cancel(kind: Kind, id: ClientId) -> squeue::Entry {
    opcode::AsyncCancel::new(encode(kind, id)).build()
}

/// Operations that found the submission queue full even after a submit,
/// and the count of every operation not finished yet.
#[derive(Default)]
pub(super) struct Ops {
    backlog: VecDeque<squeue::Entry>,
    pub(super) inflight: usize,
}

impl Ops {
    /// Queues `entry`; it counts as in flight from now on. It goes
    /// straight into the submission queue, which is submitted when full:
    /// a burst (thousands of newcomers in one batch) piled up here would
    /// keep its memory in the process after the burst.
    pub(super) fn push(&mut self, ring: &mut IoUring, entry: squeue::Entry) {
        self.inflight += 1;
        self.backlog.push_back(entry);
        if !self.flush(ring) && ring.submit().is_ok() {
            self.flush(ring);
        }
    }

    /// An operation's final completion came.
    pub(super) fn done(&mut self) {
        self.inflight -= 1;
    }

    /// Moves what fits into the submission queue; true if it all went.
    pub(super) fn flush(&mut self, ring: &mut IoUring) -> bool {
        let mut sq = ring.submission();
        while let Some(entry) = self.backlog.front() {
            // SAFETY: everything `entry` points to is owned by the ring's
            // loop and outlives the operation's final completion (the
            // module's rule above).
            if unsafe { sq.push(entry) }.is_err() {
                return false;
            }
            self.backlog.pop_front();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_names_a_generation() {
        for (kind, slot, generation) in [
            (Kind::Recv, 0, 0),
            (Kind::Send, u32::MAX, (1 << GENERATION_BITS) - 1),
            (Kind::Backoff, 12345, 77),
        ] {
            let id = ClientId { slot, generation };
            assert_eq!(decode(encode(kind, id)), Some((kind, id)));
        }
        assert_eq!(decode(0), None);
        assert_eq!(decode(u64::MAX), None);
        let id = ClientId {
            slot: 7,
            generation: 5,
        };
        let later = ClientId {
            slot: 7,
            generation: 6,
        };
        assert_ne!(encode(Kind::Recv, id), encode(Kind::Recv, later));
    }
}
