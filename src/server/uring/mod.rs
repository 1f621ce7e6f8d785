//! The completion-based server: io_uring rings, no thread per client.
//!
//! `event` is built on *readiness*: it asks the kernel (epoll) which
//! sockets can be read or written without blocking, then makes the
//! `read` and `write` calls itself, one system call each. io_uring turns
//! that around. The server *submits* the operations it wants done (accept
//! on this listener; receive from this socket; send these bytes) into a
//! ring shared with the kernel, and the kernel reports each one when it
//! has *completed*, with its result: the bytes are already in a buffer,
//! or already sent. One `io_uring_enter` submits everything queued and
//! reaps every completion that is there.
//!
//! - **Accept**: one multishot accept on ring 0 takes every connection
//!   as it comes (`acceptor`: who gets them, and how the cap is kept).
//! - **Receive**: a client that has never outrun its cap has a
//!   *multishot* receive: one submission yields a completion for every
//!   arrival until it ends (when the buffers run out, or it is cancelled)
//!   and is armed again. It names no buffer: the kernel takes one from
//!   the ring's multishot group when data comes (`bufring`), so an idle
//!   client holds no read buffer, as in `event`. Those buffers are large
//!   and shared between receives (consumed incrementally, Linux 6.12+),
//!   so that a stream's receive takes as much as `event` reads at once and
//!   small ones do not use up the ring.
//! - **Backpressure**: once a client's unsent answers pass
//!   [`UringSettings::outbound_cap`], its multishot receive is cancelled
//!   (what arrives before the cancellation lands is kept, not lost), and
//!   from then on the client receives *one-shot*: a single receive of no
//!   more than the room left under the cap, taken whole from a second
//!   group of buffers, armed again only once its answers have drained
//!   below half the cap. It stops by itself, so the cap holds with
//!   nothing cancelled and nothing copied aside, however fast the client
//!   writes: a client whose writer never waits for its answers (a
//!   blocking thread per direction, as most hand-written clients are)
//!   reaches the cap all the time, and with a multishot receive it paid a
//!   cancellation, and a copy of what raced it, on every buffer. Waiting,
//!   a one-shot receive holds no buffer either. It is not the default for
//!   every client because a multishot receive stays armed between
//!   requests, where a one-shot one must be armed (and the socket polled)
//!   anew for each (BENCHMARKS.md compares them).
//! - **Send**: one send per answer buffer (two for a long one: the first
//!   part wakes the reader, which then takes the rest itself), one in
//!   flight per client, so that bytes go out in order (`client`, over the
//!   shared session).
//! - **Timeouts and the stop**: no timer thread; a multishot timeout op in
//!   each ring ticks, and each tick closes who ran out of a timeout. An
//!   eventfd read in each ring wakes it for the shutdown, a computed
//!   answer or a freed place.
//! - **Large numbers** (`--protocol prime`) go to the compute pool, as in
//!   `event`; the answer comes back through a channel and the eventfd.
//!
//! Every operation that points at memory of ours stays counted until its
//! final completion, and a client's memory is freed, and its socket
//! closed, only once none of its operations is left (`ops`): closing a
//! socket does not cancel what the kernel holds of it.
//!
//! The parts: `ring` (the io_uring instance, its provided buffers in
//! `bufring`, and its own operations), `acceptor` (ring 0's multishot
//! accept), `client` (one client's operations over its session), `serve`
//! (the loop), `shared` (what they all share, and what tests tune), and
//! here, the rings started and joined.

mod acceptor;
mod bufring;
mod client;
mod ops;
mod ring;
mod serve;
mod shared;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use acceptor::{Acceptor, Peer};
use ring::Ring;
use serve::{Feed, RingLoop};
use shared::{RingEvents, Shared, Tuning};

use super::admission::BACKOFF;
use super::compute::{Compute, ComputePool, Offloader};
use super::config::Config;
use super::loops::{self, LoopThread};
use super::model::UringSettings;
use super::session::{self, HANDOFF};
use super::state::ServerState;
use crate::shutdown::EventFd;

/// How often a ring ticks: as often as `event` looks for expired clients
/// (an eighth of the shortest timeout, from 5 ms to 1 s), and at least
/// once a second, to re-arm receives that ran out of buffers.
fn tick(config: &Config) -> Duration {
    session::sweep_interval(config).unwrap_or(Duration::from_secs(1))
}

pub(crate) fn run(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &UringSettings,
) -> io::Result<()> {
    run_tuned(listener, state, settings, Tuning::default(), Arc::default())
}

fn run_tuned(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &UringSettings,
    tuning: Tuning,
    events: Arc<RingEvents>,
) -> io::Result<()> {
    // Accepted sockets inherit nothing from it on Linux, but the accept
    // itself must wait in the kernel rather than fail with EAGAIN.
    listener.set_nonblocking(false)?;
    let compute = ComputePool::for_server(state, settings.rings)?;
    let handle = compute.as_ref().map(ComputePool::handle);
    let result = start(
        listener,
        state,
        settings,
        handle,
        tuning,
        Arc::clone(&events),
    )
    .and_then(|threads| loops::join(threads, "ring"));
    if let Some(compute) = compute {
        compute.stop();
    }
    result
}

/// Starts every ring, ring 0 last: it is handed the others, to deal
/// them clients.
fn start(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &UringSettings,
    compute: Option<Compute>,
    tuning: Tuning,
    events: Arc<RingEvents>,
) -> io::Result<Vec<LoopThread>> {
    let wake_acceptor = Arc::new(EventFd::new()?);
    let shared = Arc::new(Shared {
        acceptor_waits: AtomicBool::new(false),
        wake_acceptor: Arc::clone(&wake_acceptor),
        events,
    });
    let tick = tuning.tick.unwrap_or_else(|| self::tick(&state.config));
    // Ring `id`'s set-up, on its own thread: the ring, and a duplicate of
    // its descriptor (for `MSG_RING`).
    let make = |id: usize, wake: Arc<EventFd>, feed: Feed| {
        let (state, shared) = (Arc::clone(state), Arc::clone(&shared));
        let (compute, cap) = (compute.clone(), settings.outbound_cap);
        move || -> io::Result<_> {
            let ring = Ring::new(&tuning, tick, BACKOFF, Arc::clone(&wake))?;
            let fd = ring.duplicate()?;
            state.shutdown.register_waker(wake.clone());
            let offload = compute.map(|compute| Offloader::new(compute, wake));
            let ring_loop = RingLoop::new(id, ring, &state, &shared, feed, offload, cap);
            Ok((fd, move || ring_loop.run()))
        }
    };
    let mut starting = loops::Starting::new("ring", "uring", &state.shutdown);
    let set_up = || -> io::Result<()> {
        let mut peers = Vec::with_capacity(settings.rings);
        for id in 1..settings.rings {
            let (clients, incoming) = crossbeam_channel::bounded(HANDOFF);
            let wake = Arc::new(EventFd::new()?);
            let feed = Feed::Incoming(Some(incoming));
            let ring = starting.spawn(id, make(id, Arc::clone(&wake), feed))?;
            peers.push(Peer {
                clients,
                ring,
                wake,
            });
        }
        let acceptor = Acceptor::new(listener, peers, state, &shared);
        let feed = Feed::Acceptor(Box::new(acceptor));
        starting.spawn(0, make(0, wake_acceptor, feed))?;
        Ok(())
    };
    let all_set_up = set_up();
    starting.release(all_set_up)
}

#[cfg(test)]
mod tests;
