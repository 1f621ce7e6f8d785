//! One client of an event loop: its protocol state and outbound buffer,
//! and what one turn of it does (write what is pending, read what came,
//! answer it, within the outbound cap and a fair share of reads).

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Offloader, READS_PER_TURN};
use crate::server::conn::{self, BUF_SIZE, Outcome};
use crate::server::responder::{OUT_LIMIT, Responder, Stop};
use crate::server::{ClientGuard, Config, ServerState};

/// One client of an event loop.
pub(super) struct LoopClient {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    pub(super) guard: ClientGuard,
    pub(super) socket: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) id: u64,
    pub(super) responder: Responder,
    /// Answers not yet written; `out[sent..]` is pending.
    pub(super) out: Vec<u8>,
    pub(super) sent: usize,
    /// Input read but not yet answered, held while a number of this
    /// client's is being tested off the loop (at most one read's worth:
    /// the client is not read from meanwhile).
    pub(super) unread: Vec<u8>,
    pub(super) computing: bool,
    /// Set when the client broke the protocol: close once its last answer
    /// (the error line) is out.
    pub(super) close_reason: Option<String>,
    /// The client has closed its sending side; what is pending still goes.
    pub(super) read_closed: bool,
    pub(super) watching_writes: bool,
    /// Its turn ended with input possibly still waiting in the kernel.
    pub(super) more: bool,
    /// When the client last sent anything (or arrived), for the idle
    /// timeout.
    pub(super) last_heard: Instant,
    /// When its pending output last moved (or started pending), for the
    /// write timeout.
    pub(super) last_progress: Instant,
}

impl LoopClient {
    pub(super) fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// How the client ends, once everything owed has been sent: after its
    /// end-of-file, or after the error line for a protocol violation.
    pub(super) fn finished(&self) -> Option<Outcome> {
        if self.pending() > 0 || self.computing || !self.unread.is_empty() {
            return None;
        }
        match &self.close_reason {
            Some(reason) => Some(conn::protocol_violation(reason.clone())),
            None => self.read_closed.then_some(Outcome::Done),
        }
    }

    /// Writes and reads until the kernel says "would block", the client
    /// has said everything, its pending output is over the cap, or one of
    /// its numbers is being tested elsewhere.
    pub(super) fn progress(
        &mut self,
        buf: &mut [u8],
        ctx: &ServerState,
        outbound_cap: usize,
        offload: Option<(&Offloader, usize)>,
    ) -> io::Result<()> {
        let mut reads = 0;
        loop {
            self.flush(ctx)?;
            if self.computing || self.close_reason.is_some() {
                // The answer, or the close, comes first.
                return Ok(());
            }
            if self.pending() > outbound_cap
                || (self.out.len() >= OUT_LIMIT && !self.unread.is_empty())
            {
                // Flushing stopped on "would block": a writable event will
                // bring us back here. (At the responder's limit, under a
                // cap above it, answering on would make no progress.)
                return Ok(());
            }
            if !self.unread.is_empty() {
                let unread = std::mem::take(&mut self.unread);
                self.answer(&unread, ctx, offload)?;
                continue;
            }
            if self.read_closed {
                return Ok(());
            }
            if reads == READS_PER_TURN {
                // Fair turns: a client that sends as fast as it reads would
                // otherwise never let its loop serve anyone else.
                self.more = true;
                return Ok(());
            }
            reads += 1;
            match self.socket.read(buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    ctx.count_bytes_in(n);
                    self.last_heard = Instant::now();
                    if self.pending() == 0 {
                        self.last_progress = self.last_heard;
                    }
                    self.answer(&buf[..n], ctx, offload)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers `input` into the outbound buffer, growing it (and the
    /// unanswered rest) only as the memory limit allows: a client whose
    /// answers do not fit is ended, not the server.
    pub(super) fn answer(
        &mut self,
        input: &[u8],
        ctx: &ServerState,
        offload: Option<(&Offloader, usize)>,
    ) -> io::Result<()> {
        let growth = self.responder.max_growth(self.out.len(), input.len());
        ctx.budget.reserve(&mut self.out, growth)?;
        let (used, stop) = self
            .responder
            .respond(input, &mut self.out, offload.is_some());
        let mut keep = |rest: &[u8]| -> io::Result<()> {
            ctx.budget.reserve(&mut self.unread, rest.len())?;
            self.unread.extend_from_slice(rest);
            Ok(())
        };
        match stop {
            Stop::Consumed => {}
            Stop::Offload(n) => {
                keep(&input[used..])?;
                if let Some((offloader, key)) = offload {
                    offloader.send(n, (key, self.id));
                }
                self.computing = true;
            }
            Stop::Close(reason) => self.close_reason = Some(reason),
            Stop::Full => keep(&input[used..])?,
        }
        ctx.note_buffered(self.pending());
        Ok(())
    }

    pub(super) fn flush(&mut self, ctx: &ServerState) -> io::Result<()> {
        while self.pending() > 0 {
            match self.socket.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    ctx.count_bytes_out(n);
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // All sent: start the buffer over, and give back a large one so an
        // idle client costs next to nothing.
        if self.out.capacity() > BUF_SIZE {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.sent = 0;
        Ok(())
    }

    pub(super) fn watch_writes_while_pending(
        &mut self,
        registry: &mio::Registry,
        token: Token,
    ) -> io::Result<()> {
        let want = self.pending() > 0;
        if want != self.watching_writes {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.socket, token, interest)?;
            self.watching_writes = want;
        }
        Ok(())
    }

    /// The timeout this client has run out of at `now`, if any.
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

    pub(super) fn close(self, outcome: Outcome) {
        let LoopClient {
            guard,
            socket,
            peer,
            ..
        } = self;
        conn::finish_and_close(guard, peer, outcome, socket);
    }
}
