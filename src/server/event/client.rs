//! One client of an event loop: its session and its socket, and what one
//! turn of it does with the readiness it was given (write what is
//! pending, read what came, answer it, within the outbound cap and a fair
//! share of reads).

use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::server::compute::Offloader;
use crate::server::registry::Outcome;
use crate::server::session::{Session, Spares, ToTest};
use crate::server::slots::ClientId;
use crate::server::state::ServerState;

/// Reads one client may make in a turn (up to 1 MiB) before the loop
/// serves the others.
pub(super) const READS_PER_TURN: usize = 16;

/// One client of an event loop.
pub(super) struct LoopClient {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    pub(super) session: Session,
    pub(super) socket: TcpStream,
    watching_writes: bool,
    /// Its turn ended with input possibly still waiting in the kernel.
    pub(super) more: bool,
    /// The kernel said it closed its side (or failed): whatever a read
    /// returned, the next one has that to tell, and no new edge will.
    pub(super) hung_up: bool,
}

impl LoopClient {
    pub(super) fn new(session: Session, socket: TcpStream) -> Self {
        LoopClient {
            session,
            socket,
            watching_writes: false,
            more: false,
            hung_up: false,
        }
    }

    /// Writes and reads until the socket is empty (a short read, or "would
    /// block"), the client has said everything, its pending answers are
    /// over the cap, or one of its numbers is being tested elsewhere.
    pub(super) fn progress(
        &mut self,
        buf: &mut [u8],
        state: &ServerState,
        spares: &mut Spares,
        cap: usize,
        offload: Option<(&Offloader, ClientId)>,
    ) -> io::Result<()> {
        let offload = |test: ToTest| {
            if let (Some(n), Some((offloader, id))) = (test, offload) {
                offloader.send(id, n);
            }
        };
        let mut reads = 0;
        // A read that filled less than the buffer emptied the socket: the
        // next arrival makes a new edge, so reading again now would only
        // find nothing (one system call per turn saved, as tokio does).
        // Not so once it hung up: its end-of-file (or error) came with an
        // edge already spent, and only a read says it.
        let mut drained = false;
        loop {
            self.flush(state, spares)?;
            if self.session.has_unread() && !self.session.blocked(cap) {
                // What waited (behind a number, or over the cap) comes
                // before anything new; its answers go out first.
                offload(self.session.answer_unread(state, spares, cap)?);
                continue;
            }
            if !self.session.wants_input(cap) {
                // Blocked, done reading, or over the cap: a writable event
                // or an answer brings us back here.
                return Ok(());
            }
            if drained && !self.hung_up {
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
                Ok(0) => self.session.input_ended(),
                Ok(n) => {
                    drained = n < buf.len();
                    offload(
                        self.session
                            .receive(&buf[..n], Instant::now(), state, spares, cap)?,
                    )
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the session's answers until the kernel takes no more.
    fn flush(&mut self, state: &ServerState, spares: &mut Spares) -> io::Result<()> {
        while let Some(bytes) = self.session.next_send() {
            match self.socket.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.session.sent(n, Instant::now(), state, spares),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn watch_writes_while_pending(
        &mut self,
        registry: &mio::Registry,
        token: Token,
    ) -> io::Result<()> {
        let want = self.session.pending() > 0;
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

    pub(super) fn end(self, outcome: Outcome, spares: &mut Spares) {
        self.session.end(outcome, self.socket, spares);
    }
}
