//! A client of a non-blocking model, with no I/O: what `event`, `uring`
//! and `async` each drive with their own I/O (readiness, completions,
//! futures).
//!
//! A [`Session`] holds the client's guard, its protocol state, its
//! answers and what it sent that could not be answered yet, and the times
//! its timeouts run from. The driver tells it what happened (bytes came
//! in, bytes went out, the client closed its side, a number was tested)
//! and asks it what to do (what to send next, whether to read, whether it
//! is finished, whether a timeout ran out); the session never touches a
//! socket.
//!
//! Answers go out through two buffers: `sending`, the one being written
//! (or handed to the kernel by an io_uring send), and `queued`, where
//! answers made meanwhile gather; once `sending` is all sent, the two
//! trade places. One write per answer buffer, never one per byte, and a
//! buffer being sent is never touched.
//!
//! An idle client holds none of them: its [`Buffers`] come from its
//! driver's [`Spares`] when it has something to answer and go back once
//! all is sent, so that ten thousand idle clients cost their small struct
//! each and nothing more.
//!
//! Large numbers (`--protocol prime`) are not tested here: the session
//! stops answering, says which number needs testing (the driver hands it
//! to the compute pool), keeps the rest of the input, and goes on once it
//! is told the answer.

use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use std::net::TcpStream;

use crossbeam_channel::{Receiver, TryRecvError};

use super::config::Config;
use super::memory::BUF_SIZE;
use super::registry::{ClientGuard, Outcome};
use super::responder::{Responder, Stop};
use super::state::ServerState;
use crate::shutdown::Shutdown;

/// How often a driver looks for clients past a timeout: an eighth of the
/// shortest timeout, so a client is closed at most 12.5% late, within
/// bounds that keep the scan rare; `None` without timeouts.
pub(crate) fn sweep_interval(config: &Config) -> Option<Duration> {
    let shortest = [config.idle_timeout, config.write_timeout]
        .into_iter()
        .flatten()
        .min()?;
    Some((shortest / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)))
}

/// A client admitted by an acceptor on its way to the loop (or ring) that
/// will serve it. The guard comes first so that it drops before the
/// socket.
pub(crate) type NewClient = (ClientGuard, TcpStream);

/// New clients a loop (or ring) may have waiting to be taken before the
/// acceptor waits for it or serves them elsewhere.
pub(crate) const HANDOFF: usize = 1024;

/// The clients an acceptor has handed over so far, in order, taken from
/// its channel until none is left; [`closed`](Handed::closed) once the
/// acceptor has let go of it, and none will come again. One taken once
/// the server is stopping is not handed on: dropped, its guard counts it
/// as closed at shutdown.
pub(crate) struct Handed<'a> {
    incoming: &'a Receiver<NewClient>,
    shutdown: &'a Shutdown,
    pub(crate) closed: bool,
}

impl<'a> Handed<'a> {
    pub(crate) fn from(incoming: &'a Receiver<NewClient>, shutdown: &'a Shutdown) -> Self {
        Handed {
            incoming,
            shutdown,
            closed: false,
        }
    }
}

impl Iterator for Handed<'_> {
    type Item = NewClient;

    fn next(&mut self) -> Option<NewClient> {
        loop {
            match self.incoming.try_recv() {
                Ok(client) if self.shutdown.is_triggered() => drop(client),
                Ok(client) => return Some(client),
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return None;
                }
            }
        }
    }
}

/// Microseconds since the first look: half the size of an `Instant`,
/// which ten thousand idle clients notice.
fn stamp(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_micros() as u64
}

/// A busy client's buffers.
#[derive(Default)]
pub(crate) struct Buffers {
    /// Answers being sent; `sending[sent..]` is not yet sent.
    sending: Vec<u8>,
    sent: usize,
    /// Answers made while `sending` is being sent.
    queued: Vec<u8>,
    /// Input received but not yet answered, `unread[read..]`: while a
    /// number of its is being tested elsewhere, or its answers are over
    /// the cap, or what arrived before a receive could be stopped.
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

/// A driver's spare [`Buffers`], so that a client busy with one request
/// after another does not allocate them anew each time. Boxed, as the
/// sessions hold them: one moves between a session and here without
/// being copied or allocated.
#[allow(clippy::vec_box)]
pub(crate) struct Spares {
    spares: Vec<Box<Buffers>>,
    /// The most capacity a spare buffer keeps.
    capacity: usize,
}

/// Spares a loop or ring keeps, and the most capacity a spare buffer
/// keeps: one read's answers, so that a client streaming read after read
/// reuses its buffers rather than allocating and freeing 64 KiB each time
/// (which glibc may hand back to the kernel each time); more would hold
/// memory that no client is using. At most 3 MiB a loop.
const SPARES: usize = 16;
const SPARE_CAPACITY: usize = BUF_SIZE;

impl Default for Spares {
    fn default() -> Self {
        Spares::keeping(SPARES, SPARE_CAPACITY)
    }
}

impl Spares {
    /// Spares that keep at most `n` sets of buffers, each buffer with at
    /// most `capacity`: a loop's many clients share its spares; a task
    /// that may run on any thread keeps its own one, smaller.
    pub(crate) fn keeping(n: usize, capacity: usize) -> Self {
        Spares {
            spares: Vec::with_capacity(n),
            capacity,
        }
    }

    fn take(&mut self, state: &ServerState) -> io::Result<Box<Buffers>> {
        if let Some(spare) = self.spares.pop() {
            return Ok(spare);
        }
        state.budget.check(std::mem::size_of::<Buffers>() as u64)?;
        Ok(Box::default())
    }

    fn give(&mut self, mut buffers: Box<Buffers>) {
        if self.spares.len() == self.spares.capacity() {
            return;
        }
        for buf in [
            &mut buffers.sending,
            &mut buffers.queued,
            &mut buffers.unread,
        ] {
            if buf.capacity() > self.capacity {
                *buf = Vec::new();
            } else {
                buf.clear();
            }
        }
        buffers.sent = 0;
        buffers.read = 0;
        // Answers gather in `queued`: it takes the larger buffer, so that
        // a client that comes back with a request allocates nothing.
        if buffers.queued.capacity() < buffers.sending.capacity() {
            std::mem::swap(&mut buffers.queued, &mut buffers.sending);
        }
        self.spares.push(buffers);
    }
}

/// A client's buffers, taken from the spares if it has none.
fn buffers<'a>(
    io: &'a mut Option<Box<Buffers>>,
    state: &ServerState,
    spares: &mut Spares,
) -> io::Result<&'a mut Buffers> {
    match io {
        Some(io) => Ok(io),
        none => Ok(none.insert(spares.take(state)?)),
    }
}

/// A number the driver must have tested off its thread, then report with
/// [`Session::answered`].
pub(crate) type ToTest = Option<u64>;

/// One client of a non-blocking model.
pub(crate) struct Session {
    guard: ClientGuard,
    responder: Responder,
    /// Its buffers while it has anything to send or answer.
    io: Option<Box<Buffers>>,
    /// It broke the protocol: close once its last answer (the error line)
    /// is out. Boxed to take 8 bytes rather than 24 in every client.
    #[allow(clippy::box_collection)]
    close_reason: Option<Box<String>>,
    /// When it last sent anything (or arrived), for the idle timeout.
    last_heard: u64,
    /// When its pending answers last moved (or started pending), for the
    /// write timeout.
    last_progress: u64,
    /// One of its numbers is being tested elsewhere.
    computing: bool,
    /// The responder stopped at its limit of queued answers: nothing more
    /// is answered until they are on their way.
    full: bool,
    /// It has closed its sending side; what it is owed still goes.
    read_closed: bool,
    /// Bytes of the greeting not yet sent: it is sent from where it is
    /// defined, without buffers, so that a burst of newcomers waiting for
    /// theirs holds none.
    greeting: u8,
}

impl Session {
    /// A new client, admitted at `now`, owed its greeting.
    pub(crate) fn new(guard: ClientGuard, state: &ServerState, now: Instant) -> Self {
        let now = stamp(now);
        let protocol = state.config.protocol;
        Session {
            guard,
            responder: Responder::new(protocol),
            io: None,
            close_reason: None,
            last_heard: now,
            last_progress: now,
            computing: false,
            full: false,
            read_closed: false,
            greeting: u8::try_from(Responder::greeting(protocol).len())
                .expect("a greeting is a few bytes"),
        }
    }

    /// Answer bytes not yet sent, the greeting's included.
    pub(crate) fn pending(&self) -> usize {
        usize::from(self.greeting) + self.io.as_ref().map_or(0, |io| io.pending())
    }

    pub(crate) fn has_unread(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.has_unread())
    }

    pub(crate) fn is_computing(&self) -> bool {
        self.computing
    }

    /// Whether it must not be answered now: its number is being tested,
    /// it is to be closed, or its answers are over `cap` or at the
    /// responder's limit (which a cap above that limit would not stop:
    /// answering on would then make no progress, for ever).
    pub(crate) fn blocked(&self, cap: usize) -> bool {
        self.computing || self.close_reason.is_some() || self.full || self.pending() > cap
    }

    /// Whether the driver should be reading from it. Only below half the
    /// cap, so that a read is good for a useful amount, not for one
    /// buffer at a time while its answers hover at the cap.
    pub(crate) fn wants_input(&self, cap: usize) -> bool {
        !self.blocked(cap) && !self.read_closed && !self.has_unread() && self.pending() <= cap / 2
    }

    /// It closed its sending side (a read of zero bytes).
    pub(crate) fn input_ended(&mut self) {
        self.read_closed = true;
    }

    /// Takes in what it sent: answered now, or kept for later when it
    /// must wait (behind earlier input, or while blocked).
    pub(crate) fn receive(
        &mut self,
        data: &[u8],
        now: Instant,
        state: &ServerState,
        spares: &mut Spares,
        cap: usize,
    ) -> io::Result<ToTest> {
        state.counters.bytes_in(data.len());
        self.guard.heard();
        let now = stamp(now);
        self.last_heard = now;
        if self.pending() == 0 {
            self.last_progress = now;
        }
        if self.close_reason.is_some() {
            // Nothing more is answered; the error line is on its way.
            return Ok(None);
        }
        if self.blocked(cap) || self.has_unread() {
            let io = buffers(&mut self.io, state, spares)?;
            state.budget.reserve(&mut io.unread, data.len())?;
            io.unread.extend_from_slice(data);
            return Ok(None);
        }
        let test = self.answer(data, state, spares)?;
        self.release_if_idle(spares);
        Ok(test)
    }

    /// Answers what was kept, for as long as it is not blocked, no more
    /// at a time than the room left under `cap`: what was kept may be far
    /// more than the cap (what raced a stopped receive), and its answers
    /// must not all be made at once.
    pub(crate) fn answer_unread(
        &mut self,
        state: &ServerState,
        spares: &mut Spares,
        cap: usize,
    ) -> io::Result<ToTest> {
        while !self.blocked(cap) && self.has_unread() {
            let room = cap.saturating_sub(self.pending()).max(1);
            let Some(io) = self.io.as_mut() else { break };
            let (input, at) = (std::mem::take(&mut io.unread), std::mem::take(&mut io.read));
            let end = input.len().min(at.saturating_add(room));
            let test = self.answer(&input[at..end], state, spares)?;
            if self.close_reason.is_none() && end < input.len() {
                let Some(io) = self.io.as_mut() else { break };
                if io.unread.is_empty() {
                    // Put back as it was, without copying the rest.
                    io.unread = input;
                    io.read = end;
                } else {
                    // The responder left input of its own: the rest goes
                    // after it.
                    state.budget.reserve(&mut io.unread, input.len() - end)?;
                    io.unread.extend_from_slice(&input[end..]);
                }
            }
            if test.is_some() {
                return Ok(test);
            }
        }
        self.release_if_idle(spares);
        Ok(None)
    }

    /// Answers `input` into the queued buffer, grown only as the memory
    /// limit allows: a client whose answers do not fit is ended, not the
    /// server. What the responder leaves (a number to test elsewhere,
    /// answers at their limit) is kept as unread.
    fn answer(
        &mut self,
        input: &[u8],
        state: &ServerState,
        spares: &mut Spares,
    ) -> io::Result<ToTest> {
        let io = buffers(&mut self.io, state, spares)?;
        let growth = self.responder.max_growth(io.queued.len(), input.len());
        state.budget.reserve(&mut io.queued, growth)?;
        let (used, stop) = self.responder.respond(input, &mut io.queued, true);
        let rest = &input[used..];
        let mut keep = || -> io::Result<()> {
            state.budget.reserve(&mut io.unread, rest.len())?;
            io.unread.extend_from_slice(rest);
            Ok(())
        };
        let mut test = None;
        match stop {
            Stop::Consumed => {}
            Stop::Offload(n) => {
                self.computing = true;
                test = Some(n);
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
        state.counters.buffered(self.pending());
        Ok(test)
    }

    /// Appends the answer to the number that was being tested.
    pub(crate) fn answered(
        &mut self,
        n: u64,
        prime: bool,
        state: &ServerState,
        spares: &mut Spares,
    ) -> io::Result<()> {
        let io = buffers(&mut self.io, state, spares)?;
        // An answer line is at most "composite\n".
        state.budget.reserve(&mut io.queued, 16)?;
        self.responder.answered(n, prime, &mut io.queued);
        self.computing = false;
        state.counters.buffered(self.pending());
        Ok(())
    }

    /// What to send next, if anything: the greeting, the rest of the
    /// buffer being sent, or else everything queued. The bytes stay where they are until
    /// [`sent`](Session::sent) says how many went; a driver whose send is
    /// still in flight must not ask again meanwhile.
    pub(crate) fn next_send(&mut self) -> Option<&[u8]> {
        if self.greeting > 0 {
            let greeting = Responder::greeting(self.responder.protocol());
            return Some(&greeting[greeting.len() - usize::from(self.greeting)..]);
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
        (!rest.is_empty()).then_some(rest)
    }

    /// `n` bytes of what [`next_send`](Session::next_send) gave went out.
    pub(crate) fn sent(
        &mut self,
        n: usize,
        now: Instant,
        state: &ServerState,
        spares: &mut Spares,
    ) {
        state.counters.bytes_out(n);
        self.last_progress = stamp(now);
        if self.greeting > 0 {
            self.greeting -= n.min(usize::from(self.greeting)) as u8;
        } else if let Some(io) = self.io.as_mut() {
            io.sent += n;
        }
        self.release_if_idle(spares);
    }

    /// Some of the buffer being sent has gone: the next send goes on with
    /// it rather than starting one.
    pub(crate) fn sent_some(&self) -> bool {
        self.greeting == 0 && self.io.as_ref().is_some_and(|io| io.sent > 0)
    }

    /// Gives its buffers back once nothing is left in them.
    fn release_if_idle(&mut self, spares: &mut Spares) {
        if self.pending() > 0 || self.has_unread() {
            return;
        }
        self.release(spares);
    }

    /// Gives its buffers back, whatever is in them: it is ending, and no
    /// send of its is in flight.
    pub(crate) fn release(&mut self, spares: &mut Spares) {
        if let Some(io) = self.io.take() {
            spares.give(io);
        }
    }

    /// Gives up its buffers without freeing them: the kernel may still be
    /// reading one (an io_uring ring that failed with sends in flight).
    pub(crate) fn forget_buffers(&mut self) {
        if let Some(io) = self.io.take() {
            std::mem::forget(io);
        }
    }

    /// How it ends, once everything it is owed has been sent: after its
    /// end-of-file, or after the error line for a protocol violation.
    pub(crate) fn finished(&self) -> Option<Outcome> {
        if self.pending() > 0 || self.computing || self.has_unread() {
            return None;
        }
        match &self.close_reason {
            Some(reason) => Some(Outcome::violation(reason.to_string())),
            None => self.read_closed.then_some(Outcome::Done),
        }
    }

    /// The timeout it has run out of at `now`, if any.
    pub(crate) fn expired(&self, now: Instant, config: &Config) -> Option<Outcome> {
        let since = |then: u64| Duration::from_micros(stamp(now).saturating_sub(then));
        if self.computing {
            // Waiting for us, not for the client.
            None
        } else if self.pending() > 0 {
            let limit = config.write_timeout?;
            (since(self.last_progress) >= limit).then(|| Outcome::write_timeout(limit))
        } else {
            let limit = config.idle_timeout?;
            (since(self.last_heard) >= limit).then(|| Outcome::idle_timeout(limit))
        }
    }

    /// Ends the client: its buffers go back to `spares` (or were given up),
    /// its end is logged and counted, and then `socket` closes, in that
    /// order: the registry must never hold a closed descriptor.
    pub(crate) fn end<S>(mut self, outcome: Outcome, socket: S, spares: &mut Spares) {
        self.release(spares);
        self.guard.end_and_close(outcome, socket);
    }
}

#[cfg(test)]
mod tests;
