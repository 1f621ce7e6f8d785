//! What happens to each client, as it happens: the article's time chart
//! (a row per client: accepted, waiting, served, ended), for whoever
//! watches a running server (the operator's live page).
//!
//! Every model records at the same points where it counts: a client is
//! accepted, admitted (taken on and greeted; between the two it waited, as
//! in a pool's hand-off), sends its first byte, and ends, with the reason.
//! The record is a ring of fixed size, allocated once with the server: an
//! event costs a short lock and a copy, nothing is allocated per event,
//! and memory stays the same whatever the number of clients. A reader
//! that falls behind by more than the ring holds is told how many events
//! it missed, rather than holding the server back.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Events the ring holds: a few seconds of a busy server's arrivals and
/// ends, and every event of one the article's size.
pub const CAPACITY: usize = 16 * 1024;

/// What happened to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// Taken from the listen backlog.
    Accepted,
    /// Taken on: it holds its place among the clients served at once and
    /// is greeted now (for a pool, a worker took it).
    Admitted,
    /// The first bytes it sent were read.
    FirstByte,
    /// It ended: it said everything and got every answer.
    Served,
    /// It ended by an error of its connection, a protocol violation or a
    /// panic.
    Failed,
    /// The idle or the write timeout closed it.
    TimedOut,
    /// It was closed unserved as it arrived (over the cap, or no memory).
    Rejected,
    /// The shutdown ended it.
    ClosedAtShutdown,
}

/// One thing that happened to one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Its place in the server's record: consecutive, from 0.
    pub seq: u64,
    /// The client, numbered in the order they were accepted, from 1.
    pub client: u64,
    /// Microseconds since the server started (a monotonic clock).
    pub at_us: u64,
    pub what: What,
}

/// A server's record of its clients' events.
#[derive(Debug)]
pub struct Timeline {
    epoch: Instant,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    events: Box<[Event]>,
    /// The sequence number of the next event.
    next: u64,
}

/// Events a reader missed: the ring moved on past them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missed(pub u64);

impl Default for Timeline {
    fn default() -> Self {
        let blank = Event {
            seq: 0,
            client: 0,
            at_us: 0,
            what: What::Accepted,
        };
        Timeline {
            epoch: Instant::now(),
            ring: Mutex::new(Ring {
                events: vec![blank; CAPACITY].into_boxed_slice(),
                next: 0,
            }),
        }
    }
}

impl Timeline {
    /// Microseconds from the server's start to `at`.
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Records that `what` happened to `client`, now.
    pub(crate) fn record(&self, client: u64, what: What) {
        // Every update is one copy: a panic elsewhere cannot leave it
        // half-done.
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the lock, so that the record's order is the clock's.
        let at_us = self.micros(Instant::now());
        let seq = ring.next;
        let slot = (seq % CAPACITY as u64) as usize;
        ring.events[slot] = Event {
            seq,
            client,
            at_us,
            what,
        };
        ring.next += 1;
    }

    /// The sequence number the next event will have.
    pub fn next_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// Appends to `out` the events from sequence number `from` on (at
    /// most `limit`), and returns the number to read from next time. What
    /// the ring has already dropped of them is `Err(Missed)`, with the
    /// events it still has appended all the same.
    pub fn read(&self, from: u64, limit: usize, out: &mut Vec<Event>) -> (u64, Result<(), Missed>) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = ring.next.saturating_sub(CAPACITY as u64);
        let start = from.max(oldest);
        let end = ring.next.min(start.saturating_add(limit as u64));
        out.extend((start..end).map(|seq| ring.events[(seq % CAPACITY as u64) as usize]));
        let missed = start - from.min(start);
        (
            end,
            if missed > 0 {
                Err(Missed(missed))
            } else {
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_what_happened_in_order_and_is_told_what_it_missed() {
        let t = Timeline::default();
        t.record(1, What::Accepted);
        t.record(1, What::Admitted);
        let mut got = Vec::new();
        let (next, missed) = t.read(0, 100, &mut got);
        assert_eq!((next, missed), (2, Ok(())));
        assert_eq!(
            got.iter().map(|e| (e.seq, e.what)).collect::<Vec<_>>(),
            [(0, What::Accepted), (1, What::Admitted)]
        );

        for i in 0..CAPACITY as u64 + 10 {
            t.record(i + 2, What::Served);
        }
        got.clear();
        let (next, missed) = t.read(2, usize::MAX, &mut got);
        assert_eq!(missed, Err(Missed(10)), "the first ten were overwritten");
        assert_eq!(got.len(), CAPACITY);
        assert_eq!(got[0].seq, 12);
        assert_eq!(next, CAPACITY as u64 + 12);
        assert_eq!(t.next_seq(), next);

        got.clear();
        let (later, missed) = t.read(next - 3, 2, &mut got);
        assert_eq!((later, missed, got.len()), (next - 1, Ok(()), 2));
    }
}
