//! The blocking per-client loop shared by the thread models.
//!
//! Read a buffer, run it through the protocol core, write everything it
//! produced in one `write_all`: one write per read, never one per byte (the
//! article's C server sends byte by byte, and with Nagle's algorithm and
//! delayed ACKs a small request then stalls for about 40 ms).
//!
//! Whatever happens to one client ends here: an I/O error or even a panic
//! while serving it is logged, counted and ends that client only.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::memory::{self, BUF_SIZE};
use super::registry::{ClientGuard, Outcome, Permit};
use super::responder::{Responder, Stop};
use super::state::ServerState;
use crate::prime;

/// A client taken on by a thread model: counted, and known to the drain,
/// from the moment it is admitted, even before a thread runs it.
pub(crate) struct BlockingClient {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    guard: ClientGuard,
    stream: TcpStream,
    state: Arc<ServerState>,
}

/// Takes on a client. The thread model admits on the accept thread, so
/// that a shutdown cannot finish while a client's thread is still starting.
pub(crate) fn admit(
    state: &Arc<ServerState>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
) -> BlockingClient {
    BlockingClient {
        guard: state.registry.enter(&stream, peer, permit),
        stream,
        state: Arc::clone(state),
    }
}

/// A serving thread's buffers: one read's input and its answers,
/// reserved whole and fallibly before the client is greeted, so that
/// serving it never grows them and no allocation of its can abort the
/// server. A pool worker (or the sequential server) keeps one set for
/// every client it serves.
pub(crate) struct ThreadBuffers {
    input: Box<[u8]>,
    output: Vec<u8>,
}

impl ThreadBuffers {
    pub(crate) fn reserve(state: &ServerState) -> io::Result<ThreadBuffers> {
        state.budget.check(BUF_SIZE as u64)?;
        let input = zeroed(BUF_SIZE)?;
        let mut output = Vec::new();
        state
            .budget
            .reserve(&mut output, memory::answer_capacity(state.config.protocol))?;
        Ok(ThreadBuffers { input, output })
    }
}

/// `len` zero bytes, allocated fallibly, and zeroed the way the allocator
/// can do for free (fresh pages are zero already): an idle client's read
/// buffer then costs address space, not resident memory, until it reads.
fn zeroed(len: usize) -> io::Result<Box<[u8]>> {
    let layout = std::alloc::Layout::array::<u8>(len).map_err(io::Error::other)?;
    if len == 0 {
        return Ok(Box::default());
    }
    // SAFETY: the layout has a non-zero size, checked above.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(io::Error::new(
            ErrorKind::OutOfMemory,
            format!("cannot allocate a {len}-byte buffer"),
        ));
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout
    // of `[u8; len]`, is zeroed (so initialised), and is owned by nobody
    // else; the Box frees it with the same layout.
    Ok(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) })
}

impl BlockingClient {
    /// Serves the client from `*` to close, on the calling thread, with
    /// `buffers`.
    pub(crate) fn serve(self, buffers: &mut ThreadBuffers) {
        self.serve_with(|state, guard, stream| session(state, guard, stream, buffers));
    }

    /// Serves the client on a thread of its own: reserves its buffers,
    /// calls `ready` (the client's whole cost is then mapped), and serves
    /// it, or ends it unserved, as failed, if the buffers do not fit.
    pub(crate) fn serve_alone(self, ready: impl FnOnce()) {
        let buffers = ThreadBuffers::reserve(&self.state);
        ready();
        match buffers {
            Ok(mut buffers) => self.serve(&mut buffers),
            Err(e) => self.guard.end_and_close(e.into(), self.stream),
        }
    }

    fn serve_with(
        self,
        session: impl FnOnce(&ServerState, &mut ClientGuard, &mut TcpStream) -> Result<(), Outcome>,
    ) {
        let BlockingClient {
            mut guard,
            mut stream,
            state,
        } = self;
        guard.connected();
        let served = panic::catch_unwind(AssertUnwindSafe(|| {
            session(&state, &mut guard, &mut stream)
        }));
        let outcome = match served {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(outcome)) => outcome,
            Err(panic) => Outcome::panicked(&*panic),
        };
        guard.end_and_close(outcome, stream);
    }
}

/// A blocking read that ran out of its socket timeout. Linux reports it
/// as EAGAIN, which std calls `WouldBlock`.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Writes all of `bytes`, failing once none of them could be written for
/// `limit`. `SO_SNDTIMEO` cannot say that: it bounds each `send` call, and
/// a call that got a few bytes in as the kernel's send buffer grew starts
/// the next one with a fresh timeout, so a client that reads nothing was
/// closed after up to twice the limit. Here every `send` is non-blocking,
/// and the wait for room runs to a deadline that only progress moves.
fn send_all(stream: &mut TcpStream, bytes: &[u8], limit: Option<Duration>) -> Result<(), Outcome> {
    let Some(limit) = limit else {
        return Ok(stream.write_all(bytes)?);
    };
    let socket = SockRef::from(&*stream);
    let mut rest = bytes;
    let mut deadline = Instant::now() + limit;
    while !rest.is_empty() {
        match socket.send_with_flags(rest, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero).into()),
            Ok(n) => {
                rest = &rest[n..];
                deadline = Instant::now() + limit;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if !wait_writable(stream, deadline)? {
                    return Err(Outcome::write_timeout(limit));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until `stream` has room to write (or an error to report), or
/// `deadline` passes; false if it passed.
fn wait_writable(stream: &TcpStream, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Rounded up, so that a wait never ends just short of the deadline
        // and spins through a few zero-length polls.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor this stream owns.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => {}
            // Writable, or an error or hang-up that the next send reports.
            _ => return Ok(true),
        }
    }
}

fn session(
    state: &ServerState,
    guard: &mut ClientGuard,
    stream: &mut TcpStream,
    buffers: &mut ThreadBuffers,
) -> Result<(), Outcome> {
    stream.set_nodelay(true)?;
    let (idle, write) = (state.config.idle_timeout, state.config.write_timeout);
    stream.set_read_timeout(idle)?;
    let send = |stream: &mut TcpStream, bytes: &[u8]| send_all(stream, bytes, write);
    let greeting = Responder::greeting(state.config.protocol);
    if !greeting.is_empty() {
        send(stream, greeting)?;
        state.counters.bytes_out(greeting.len());
    }
    let mut responder = Responder::new(state.config.protocol);
    let ThreadBuffers { input, output } = buffers;
    // What a session cut short by an error left behind.
    output.clear();
    loop {
        let n = match stream.read(input) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => {
                return Err(Outcome::idle_timeout(idle.unwrap_or_default()));
            }
            Err(e) => return Err(e.into()),
        };
        state.counters.bytes_in(n);
        guard.heard();
        let mut rest = &input[..n];
        loop {
            // Already there, as reserved; the check keeps it so should the
            // protocol ever answer more.
            state
                .budget
                .reserve(output, responder.max_growth(output.len(), rest.len()))?;
            let (used, stop) = responder.respond(rest, output, true);
            rest = &rest[used..];
            // Answers so far go out before a long computation, and never
            // pile up past one limit's worth.
            if !output.is_empty() {
                state.counters.buffered(output.len());
                send(stream, output)?;
                state.counters.bytes_out(output.len());
                output.clear();
            }
            match stop {
                Stop::Consumed => break,
                Stop::Full => {}
                Stop::Close(reason) => return Err(Outcome::violation(reason)),
                // This thread is the client's own, so it computes here, for
                // as long as the number takes, unless the drain ends first.
                Stop::Offload(number) => {
                    match prime::is_prime_unless(number, || state.registry.is_closing()) {
                        Some(answer) => responder.answered(number, answer, output),
                        None => return Err(Outcome::ClosedAtShutdown),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Config, Model};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        (client, server, peer)
    }

    #[test]
    fn a_panic_ends_only_that_client_and_is_counted() {
        let state = ServerState::for_test(Config::new(Model::Pool));
        let (mut client, server, peer) = pair();
        admit(&state, server, peer, state.registry.try_permit().unwrap())
            .serve_with(|_, _, _| -> Result<(), Outcome> { panic!("boom") });
        // The server side is closed: the client reads end-of-file.
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);

        // The same thread goes on to serve the next client properly.
        let (mut client, server, peer) = pair();
        client.write_all(b"^hal$").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        admit(&state, server, peer, state.registry.try_permit().unwrap())
            .serve(&mut ThreadBuffers::reserve(&state).unwrap());
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"*ibm");

        let s = state.counters.summary();
        assert_eq!((s.failed, s.served, s.clients_now), (1, 1, 0));
        assert_eq!((s.bytes_in, s.bytes_out), (5, 4));
    }
}
