//! One client of a ring: its protocol state and its answers, and the
//! rules that say when the ring should receive from it, send to it, or
//! close it. No I/O here: the ring submits what these rules ask for.
//!
//! Answers go out through two buffers: `sending`, handed to the kernel
//! by one `send`, and `queued`, where answers made meanwhile gather; when
//! the send finishes, the two trade places and everything queued goes in
//! the next send. One send per answer buffer, never one per byte, and a
//! buffer the kernel is reading from is never touched.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::server::compute::Compute;
use crate::server::conn::{self, BUF_SIZE, Outcome};
use crate::server::responder::{Responder, Stop};
use crate::server::{ClientGuard, Config, ServerState};

use super::setup::EventFd;
use crate::shutdown::Wake;

/// The answer to a client's number, for the client in this slot of this
/// generation: the number, and whether it is prime (`None` if the drain
/// ended first).
pub(super) type Answer = ((u32, u32), u64, Option<bool>);

/// A ring's way to the compute pool, and back.
pub(super) struct Offloader {
    pub(super) compute: Compute,
    pub(super) reply: crossbeam_channel::Sender<Answer>,
    pub(super) wake: std::sync::Arc<EventFd>,
}

impl Offloader {
    fn send(&self, n: u64, client: (u32, u32)) {
        let (reply, wake) = (self.reply.clone(), std::sync::Arc::clone(&self.wake));
        self.compute.submit(n, move |prime| {
            if reply.send((client, n, prime)).is_ok() {
                wake.wake();
            }
        });
    }
}

/// Where a client's multishot receive stands.
#[derive(Default)]
pub(super) struct Recv {
    /// In flight: completions may still come.
    pub(super) armed: bool,
    /// A cancellation of it is in flight.
    pub(super) cancelling: bool,
    /// It ended for want of buffers; re-armed once some come back.
    pub(super) parked: bool,
}

pub(super) struct Client {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    pub(super) guard: ClientGuard,
    pub(super) socket: TcpStream,
    pub(super) peer: SocketAddr,
    responder: Responder,
    /// Answers handed to the kernel; `sending[sent..]` is not yet sent.
    sending: Vec<u8>,
    sent: usize,
    /// Answers made while a send is in flight.
    queued: Vec<u8>,
    /// Input received but not yet answered: while a number of its is being
    /// tested elsewhere, or its answers are over the cap, or what arrived
    /// before a cancelled receive stopped.
    pub(super) unread: Vec<u8>,
    pub(super) computing: bool,
    /// It broke the protocol: close once its last answer (the error line)
    /// is out.
    close_reason: Option<String>,
    /// It has closed its sending side; what it is owed still goes.
    pub(super) read_closed: bool,
    pub(super) recv: Recv,
    pub(super) send_inflight: bool,
    /// Operations of its in flight; its memory is freed only at zero.
    pub(super) ops: u32,
    /// Set once it is being closed, with how it ended.
    pub(super) closing: Option<Outcome>,
    /// When it last sent anything (or arrived), for the idle timeout.
    last_heard: Instant,
    /// When its pending answers last moved (or started pending), for the
    /// write timeout.
    last_progress: Instant,
}

impl Client {
    /// The first answer buffer, holding the greeting: reserved apart, so
    /// that a client whose greeting does not fit is ended before it is
    /// taken on.
    pub(super) fn greeting(ctx: &ServerState) -> io::Result<Vec<u8>> {
        let greeting = Responder::greeting(ctx.config.protocol);
        let mut queued = Vec::new();
        ctx.budget.reserve(&mut queued, greeting.len())?;
        queued.extend_from_slice(greeting);
        Ok(queued)
    }

    /// A new client, with its [`Client::greeting`] queued.
    pub(super) fn new(
        guard: ClientGuard,
        socket: TcpStream,
        peer: SocketAddr,
        greeting: Vec<u8>,
        ctx: &ServerState,
        now: Instant,
    ) -> Self {
        Client {
            guard,
            socket,
            peer,
            responder: Responder::new(ctx.config.protocol),
            sending: Vec::new(),
            sent: 0,
            queued: greeting,
            unread: Vec::new(),
            computing: false,
            close_reason: None,
            read_closed: false,
            recv: Recv::default(),
            send_inflight: false,
            ops: 0,
            closing: None,
            last_heard: now,
            last_progress: now,
        }
    }

    /// Answer bytes not yet sent.
    pub(super) fn pending(&self) -> usize {
        self.sending.len() - self.sent + self.queued.len()
    }

    /// Whether it must not be answered now: its number is being tested,
    /// it is to be closed, or its answers are over the cap.
    pub(super) fn blocked(&self, cap: usize) -> bool {
        self.computing || self.close_reason.is_some() || self.pending() > cap
    }

    /// Whether the ring should be receiving from it. Below half the cap,
    /// so that each receive it arms is good for a useful amount, not for
    /// one buffer at a time while its answers hover at the cap.
    pub(super) fn wants_input(&self, cap: usize) -> bool {
        self.closing.is_none()
            && !self.blocked(cap)
            && !self.read_closed
            && self.unread.is_empty()
            && self.pending() <= cap / 2
    }

    /// Takes in what a receive brought: answered now, or kept for later
    /// when it must wait (behind earlier input, or while blocked).
    pub(super) fn receive(
        &mut self,
        data: &[u8],
        now: Instant,
        ctx: &ServerState,
        cap: usize,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        self.last_heard = now;
        if self.pending() == 0 {
            self.last_progress = now;
        }
        if self.close_reason.is_some() {
            // Nothing more is answered; the error line is on its way.
            return Ok(());
        }
        if self.blocked(cap) || !self.unread.is_empty() {
            ctx.budget.reserve(&mut self.unread, data.len())?;
            self.unread.extend_from_slice(data);
            return Ok(());
        }
        self.answer(data, ctx, offload)
    }

    /// Answers what was kept, for as long as it is not blocked.
    pub(super) fn answer_unread(
        &mut self,
        ctx: &ServerState,
        cap: usize,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        while !self.blocked(cap) && !self.unread.is_empty() {
            let input = std::mem::take(&mut self.unread);
            self.answer(&input, ctx, offload)?;
        }
        Ok(())
    }

    /// Answers `input` into the queued buffer, grown only as the memory
    /// limit allows: a client whose answers do not fit is ended, not the
    /// server. What the responder leaves (a number to test elsewhere,
    /// answers at their limit) is kept in `unread`.
    fn answer(
        &mut self,
        input: &[u8],
        ctx: &ServerState,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        let growth = self.responder.max_growth(self.queued.len(), input.len());
        ctx.budget.reserve(&mut self.queued, growth)?;
        let (used, stop) = self
            .responder
            .respond(input, &mut self.queued, offload.is_some());
        let rest = &input[used..];
        match stop {
            Stop::Consumed => {}
            Stop::Offload(n) => {
                if let Some((offloader, client)) = offload {
                    offloader.send(n, client);
                }
                self.computing = true;
                self.keep(rest, ctx)?;
            }
            Stop::Full => self.keep(rest, ctx)?,
            Stop::Close(reason) => self.close_reason = Some(reason),
        }
        ctx.note_buffered(self.pending());
        Ok(())
    }

    fn keep(&mut self, rest: &[u8], ctx: &ServerState) -> io::Result<()> {
        ctx.budget.reserve(&mut self.unread, rest.len())?;
        self.unread.extend_from_slice(rest);
        Ok(())
    }

    /// Appends the answer to the number that was being tested.
    pub(super) fn answered(&mut self, n: u64, prime: bool, ctx: &ServerState) -> io::Result<()> {
        // An answer line is at most "composite\n".
        ctx.budget.reserve(&mut self.queued, 16)?;
        self.responder.answered(n, prime, &mut self.queued);
        self.computing = false;
        ctx.note_buffered(self.pending());
        Ok(())
    }

    /// What the next send should carry, if one is due: the rest of the
    /// buffer being sent, or else everything queued. The memory stays put
    /// until [`Client::sent`] is told the send finished.
    pub(super) fn next_send(&mut self) -> Option<(*const u8, u32)> {
        if self.send_inflight || self.closing.is_some() {
            return None;
        }
        if self.sent == self.sending.len() && !self.queued.is_empty() {
            // The two trade places: the old one, emptied, gathers the next
            // answers (it keeps its capacity, so a busy client allocates
            // nothing per request).
            self.sending.clear();
            self.sent = 0;
            std::mem::swap(&mut self.sending, &mut self.queued);
        }
        let rest = &self.sending[self.sent..];
        if rest.is_empty() {
            return None;
        }
        // A send takes at most u32::MAX bytes; the rest goes next time.
        let len = rest.len().min(u32::MAX as usize) as u32;
        Some((rest.as_ptr(), len))
    }

    /// `n` bytes of the in-flight send went out.
    pub(super) fn sent(&mut self, n: usize, now: Instant, ctx: &ServerState) {
        self.send_inflight = false;
        self.sent += n;
        ctx.count_bytes_out(n);
        self.last_progress = now;
        if self.pending() == 0 {
            // All out: give back large buffers, so that an idle client
            // costs next to nothing.
            for buf in [&mut self.sending, &mut self.queued] {
                if buf.capacity() > BUF_SIZE {
                    *buf = Vec::new();
                } else {
                    buf.clear();
                }
            }
            self.sent = 0;
        }
    }

    /// How it ends, once everything it is owed has been sent: after its
    /// end-of-file, or after the error line for a protocol violation.
    pub(super) fn finished(&self) -> Option<Outcome> {
        if self.pending() > 0 || self.computing || !self.unread.is_empty() || self.send_inflight {
            return None;
        }
        match &self.close_reason {
            Some(reason) => Some(conn::protocol_violation(reason.clone())),
            None => self.read_closed.then_some(Outcome::Done),
        }
    }

    /// The timeout it has run out of at `now`, if any.
    pub(super) fn expired(&self, now: Instant, config: &Config) -> Option<Outcome> {
        if self.computing {
            // Waiting for us, not for the client.
            None
        } else if self.pending() > 0 {
            let limit = config.write_timeout?;
            (now.duration_since(self.last_progress) >= limit).then(|| conn::write_timeout(limit))
        } else {
            let limit = config.idle_timeout?;
            (now.duration_since(self.last_heard) >= limit).then(|| conn::idle_timeout(limit))
        }
    }

    /// Gives up the answer buffers without freeing them: the kernel may
    /// still be reading one (a ring that failed with sends in flight).
    pub(super) fn forget_buffers(&mut self) {
        std::mem::forget(std::mem::take(&mut self.sending));
    }
}
