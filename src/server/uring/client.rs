//! One client of a ring: its protocol state and its answers, and the
//! rules that say when the ring should receive from it, send to it, or
//! close it. No I/O here: the ring submits what these rules ask for.
//!
//! Answers go out through two buffers: `sending`, handed to the kernel
//! by one `send`, and `queued`, where answers made meanwhile gather; when
//! the send finishes, the two trade places and everything queued goes in
//! the next send. One send per answer buffer, never one per byte, and a
//! buffer the kernel is reading from is never touched.
//!
//! An idle client holds none of them: its buffers come from the ring's
//! spares when it has something to answer and go back once all is sent,
//! so that ten thousand idle clients cost their small struct each and
//! nothing more.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::server::compute::Compute;
use crate::server::conn::{self, Outcome};
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
    /// It was armed with a limit (which kernels before 6.17 refuse).
    pub(super) limited: bool,
}

/// A busy client's buffers.
#[derive(Default)]
pub(super) struct Buffers {
    /// Answers handed to the kernel; `sending[sent..]` is not yet sent.
    sending: Vec<u8>,
    sent: usize,
    /// Answers made while a send is in flight.
    queued: Vec<u8>,
    /// Input received but not yet answered, `unread[read..]`: while a
    /// number of its is being tested elsewhere, or its answers are over
    /// the cap, or what arrived before a cancelled receive stopped.
    unread: Vec<u8>,
    read: usize,
}

impl Buffers {
    fn pending(&self) -> usize {
        self.sending.len() - self.sent + self.queued.len()
    }

    fn has_unread(&self) -> bool {
        self.read < self.unread.len()
    }
}

/// A ring's spare [`Buffers`], so that a client busy with one request
/// after another does not allocate them anew each time. Boxed, as the
/// clients hold them: one moves between a client and here without being
/// copied or allocated.
#[allow(clippy::vec_box)]
pub(super) struct Spares(Vec<Box<Buffers>>);

/// Spares a ring keeps, and the most capacity a spare buffer keeps: more
/// would hold memory that no client is using.
const SPARES: usize = 64;
const SPARE_CAPACITY: usize = 4096;

impl Spares {
    pub(super) fn new() -> Self {
        Spares(Vec::with_capacity(SPARES))
    }

    fn take(&mut self, ctx: &ServerState) -> io::Result<Box<Buffers>> {
        if let Some(spare) = self.0.pop() {
            return Ok(spare);
        }
        ctx.budget.check(std::mem::size_of::<Buffers>() as u64)?;
        Ok(Box::default())
    }

    fn give(&mut self, mut buffers: Box<Buffers>) {
        if self.0.len() == SPARES {
            return;
        }
        for buf in [
            &mut buffers.sending,
            &mut buffers.queued,
            &mut buffers.unread,
        ] {
            if buf.capacity() > SPARE_CAPACITY {
                *buf = Vec::new();
            } else {
                buf.clear();
            }
        }
        buffers.sent = 0;
        buffers.read = 0;
        self.0.push(buffers);
    }
}

/// Microseconds since the first look: half the size of an `Instant`,
/// which ten thousand idle clients notice.
pub(super) fn stamp(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_micros() as u64
}

pub(super) struct Client {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    pub(super) guard: ClientGuard,
    pub(super) socket: TcpStream,
    pub(super) peer: SocketAddr,
    responder: Responder,
    /// Its buffers while it has anything to send or answer.
    io: Option<Box<Buffers>>,
    /// It broke the protocol: close once its last answer (the error line)
    /// is out. Boxed to take 8 bytes rather than 24 in every client.
    #[allow(clippy::box_collection)]
    close_reason: Option<Box<String>>,
    /// Set once it is being closed, with how it ended.
    closing: Option<Box<Outcome>>,
    /// When it last sent anything (or arrived), for the idle timeout.
    last_heard: u64,
    /// When its pending answers last moved (or started pending), for the
    /// write timeout.
    last_progress: u64,
    /// Operations of its in flight; its memory is freed only at zero.
    pub(super) ops: u32,
    pub(super) recv: Recv,
    pub(super) send_inflight: bool,
    pub(super) computing: bool,
    /// The responder stopped at its limit of queued answers: nothing more
    /// is answered until they are handed to a send.
    full: bool,
    /// It has closed its sending side; what it is owed still goes.
    pub(super) read_closed: bool,
}

impl Client {
    /// A new client, its greeting queued.
    pub(super) fn new(
        guard: ClientGuard,
        socket: TcpStream,
        peer: SocketAddr,
        ctx: &ServerState,
        now: Instant,
    ) -> Self {
        let now = stamp(now);
        Client {
            guard,
            socket,
            peer,
            responder: Responder::new(ctx.config.protocol),
            io: None,
            close_reason: None,
            closing: None,
            last_heard: now,
            last_progress: now,
            ops: 0,
            recv: Recv::default(),
            send_inflight: false,
            computing: false,
            full: false,
            read_closed: false,
        }
    }

    /// Queues the greeting; the buffers it needs are checked against the
    /// memory limit like any others.
    pub(super) fn greet(&mut self, ctx: &ServerState, spares: &mut Spares) -> io::Result<()> {
        let greeting = Responder::greeting(ctx.config.protocol);
        if greeting.is_empty() {
            return Ok(());
        }
        let io = buffers(&mut self.io, ctx, spares)?;
        ctx.budget.reserve(&mut io.queued, greeting.len())?;
        io.queued.extend_from_slice(greeting);
        Ok(())
    }

    /// Answer bytes not yet sent.
    pub(super) fn pending(&self) -> usize {
        self.io.as_ref().map_or(0, |io| io.pending())
    }

    fn has_unread(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.has_unread())
    }

    /// Whether it must not be answered now: its number is being tested,
    /// it is to be closed, or its answers are over the cap or at the
    /// responder's limit (which a cap above that limit would not stop:
    /// answering on would then make no progress, for ever).
    pub(super) fn blocked(&self, cap: usize) -> bool {
        self.computing || self.close_reason.is_some() || self.full || self.pending() > cap
    }

    /// Whether the ring should be receiving from it. Below half the cap,
    /// so that each receive it arms is good for a useful amount, not for
    /// one buffer at a time while its answers hover at the cap.
    pub(super) fn wants_input(&self, cap: usize) -> bool {
        self.closing.is_none()
            && !self.blocked(cap)
            && !self.read_closed
            && !self.has_unread()
            && self.pending() <= cap / 2
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Marks it closing, with how it ended; false if it already was.
    pub(super) fn start_closing(&mut self, outcome: Outcome) -> bool {
        if self.closing.is_some() {
            return false;
        }
        self.closing = Some(Box::new(outcome));
        true
    }

    pub(super) fn take_outcome(&mut self) -> Outcome {
        self.closing.take().map_or(Outcome::Done, |o| *o)
    }

    /// Takes in what a receive brought: answered now, or kept for later
    /// when it must wait (behind earlier input, or while blocked).
    pub(super) fn receive(
        &mut self,
        data: &[u8],
        now: Instant,
        ctx: &ServerState,
        spares: &mut Spares,
        cap: usize,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        let now = stamp(now);
        self.last_heard = now;
        if self.pending() == 0 {
            self.last_progress = now;
        }
        if self.close_reason.is_some() {
            // Nothing more is answered; the error line is on its way.
            return Ok(());
        }
        if self.blocked(cap) || self.has_unread() {
            let io = buffers(&mut self.io, ctx, spares)?;
            ctx.budget.reserve(&mut io.unread, data.len())?;
            io.unread.extend_from_slice(data);
            return Ok(());
        }
        self.answer(data, ctx, spares, offload)
    }

    /// Answers what was kept, for as long as it is not blocked, no more
    /// at a time than the room left under the cap: what was kept may be
    /// far more than the cap (what raced a cancelled receive), and its
    /// answers must not all be made at once.
    pub(super) fn answer_unread(
        &mut self,
        ctx: &ServerState,
        spares: &mut Spares,
        cap: usize,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        while !self.blocked(cap) && self.has_unread() {
            let room = cap.saturating_sub(self.pending()).max(1);
            let Some(io) = self.io.as_mut() else { break };
            let (input, at) = (std::mem::take(&mut io.unread), std::mem::take(&mut io.read));
            let end = input.len().min(at.saturating_add(room));
            self.answer(&input[at..end], ctx, spares, offload)?;
            if self.close_reason.is_some() {
                // Nothing after the line that ends it is answered.
                break;
            }
            if end == input.len() {
                continue;
            }
            let Some(io) = self.io.as_mut() else { break };
            if io.unread.is_empty() {
                // Put back as it was, without copying the rest.
                io.unread = input;
                io.read = end;
            } else {
                // The responder left input of its own: the rest goes after.
                ctx.budget.reserve(&mut io.unread, input.len() - end)?;
                io.unread.extend_from_slice(&input[end..]);
            }
        }
        Ok(())
    }

    /// Answers `input` into the queued buffer, grown only as the memory
    /// limit allows: a client whose answers do not fit is ended, not the
    /// server. What the responder leaves (a number to test elsewhere,
    /// answers at their limit) is kept as unread.
    fn answer(
        &mut self,
        input: &[u8],
        ctx: &ServerState,
        spares: &mut Spares,
        offload: Option<(&Offloader, (u32, u32))>,
    ) -> io::Result<()> {
        let io = buffers(&mut self.io, ctx, spares)?;
        let growth = self.responder.max_growth(io.queued.len(), input.len());
        ctx.budget.reserve(&mut io.queued, growth)?;
        let (used, stop) = self
            .responder
            .respond(input, &mut io.queued, offload.is_some());
        let rest = &input[used..];
        let mut keep = || -> io::Result<()> {
            ctx.budget.reserve(&mut io.unread, rest.len())?;
            io.unread.extend_from_slice(rest);
            Ok(())
        };
        match stop {
            Stop::Consumed => {}
            Stop::Offload(n) => {
                if let Some((offloader, client)) = offload {
                    offloader.send(n, client);
                }
                self.computing = true;
                keep()?;
            }
            Stop::Full => {
                self.full = true;
                keep()?;
            }
            Stop::Close(reason) => {
                // Nothing after the line that ends it is answered: drop
                // what was kept too, or it would wait for ever.
                self.close_reason = Some(Box::new(reason));
                if let Some(io) = self.io.as_mut() {
                    io.unread = Vec::new();
                    io.read = 0;
                }
            }
        }
        ctx.note_buffered(self.pending());
        Ok(())
    }

    /// Appends the answer to the number that was being tested.
    pub(super) fn answered(
        &mut self,
        n: u64,
        prime: bool,
        ctx: &ServerState,
        spares: &mut Spares,
    ) -> io::Result<()> {
        let io = buffers(&mut self.io, ctx, spares)?;
        // An answer line is at most "composite\n".
        ctx.budget.reserve(&mut io.queued, 16)?;
        self.responder.answered(n, prime, &mut io.queued);
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
        let io = self.io.as_mut()?;
        if io.sent == io.sending.len() && !io.queued.is_empty() {
            // The two trade places: the old one, emptied, gathers the next
            // answers (it keeps its capacity, so a busy client allocates
            // nothing per request).
            io.sending.clear();
            io.sent = 0;
            std::mem::swap(&mut io.sending, &mut io.queued);
            self.full = false;
        }
        let rest = &io.sending[io.sent..];
        if rest.is_empty() {
            return None;
        }
        // A send takes at most u32::MAX bytes; the rest goes next time.
        let len = rest.len().min(u32::MAX as usize) as u32;
        Some((rest.as_ptr(), len))
    }

    /// `n` bytes of the in-flight send went out.
    pub(super) fn sent(&mut self, n: usize, now: Instant, ctx: &ServerState, spares: &mut Spares) {
        self.send_inflight = false;
        ctx.count_bytes_out(n);
        self.last_progress = stamp(now);
        if let Some(io) = self.io.as_mut() {
            io.sent += n;
        }
        self.release_if_idle(spares);
    }

    /// Gives its buffers back to the ring once nothing is left in them.
    pub(super) fn release_if_idle(&mut self, spares: &mut Spares) {
        if self.send_inflight || self.pending() > 0 || self.has_unread() {
            return;
        }
        if let Some(io) = self.io.take() {
            spares.give(io);
        }
    }

    /// How it ends, once everything it is owed has been sent: after its
    /// end-of-file, or after the error line for a protocol violation.
    pub(super) fn finished(&self) -> Option<Outcome> {
        if self.pending() > 0 || self.computing || self.has_unread() || self.send_inflight {
            return None;
        }
        match &self.close_reason {
            Some(reason) => Some(conn::protocol_violation(reason.to_string())),
            None => self.read_closed.then_some(Outcome::Done),
        }
    }

    /// The timeout it has run out of at `now`, if any.
    pub(super) fn expired(&self, now: Instant, config: &Config) -> Option<Outcome> {
        let since = |then: u64| Duration::from_micros(stamp(now).saturating_sub(then));
        if self.computing {
            // Waiting for us, not for the client.
            None
        } else if self.pending() > 0 {
            let limit = config.write_timeout?;
            (since(self.last_progress) >= limit).then(|| conn::write_timeout(limit))
        } else {
            let limit = config.idle_timeout?;
            (since(self.last_heard) >= limit).then(|| conn::idle_timeout(limit))
        }
    }

    /// Gives its buffers back to the ring, whatever is in them (it is
    /// ending, and none of its operations is in flight).
    pub(super) fn release(&mut self, spares: &mut Spares) {
        if let Some(io) = self.io.take() {
            spares.give(io);
        }
    }

    /// Counts and logs how it ended, then closes its socket (the guard
    /// must go first). Its buffers must have been released or given up.
    pub(super) fn end(self, outcome: Outcome) {
        let Client {
            guard,
            socket,
            peer,
            ..
        } = self;
        conn::finish_and_close(guard, peer, outcome, socket);
    }

    /// Gives up the answer buffers without freeing them: the kernel may
    /// still be reading one (a ring that failed with sends in flight).
    pub(super) fn forget_buffers(&mut self) {
        if let Some(io) = self.io.take() {
            std::mem::forget(io);
        }
    }
}

/// A client's buffers, taken from the spares if it has none.
fn buffers<'a>(
    io: &'a mut Option<Box<Buffers>>,
    ctx: &ServerState,
    spares: &mut Spares,
) -> io::Result<&'a mut Buffers> {
    match io {
        Some(io) => Ok(io),
        none => Ok(none.insert(spares.take(ctx)?)),
    }
}
