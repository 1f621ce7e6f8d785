//! Binding, and the accept loop every model but `uring` shares: it takes
//! each newcomer's place first (with `--over-limit wait`), accepts, and
//! hands whoever `admission` admits to the model.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

pub use super::admission::BACKOFF;
use super::admission::{self, Admission};
use super::config::OverLimit;
use super::counters::Ended;
use super::registry::Permit;
use super::state::ServerState;

/// Whether a failed `accept` was one pending connection's, to skip,
/// rather than the process's or the kernel's, to back off from for
/// [`BACKOFF`]: the policy of every accept loop of concur's, for another
/// one (the operator's HTTP port) to follow.
pub fn one_connection_failed(e: &io::Error) -> bool {
    admission::one_connection(e)
}

/// The listen backlog used when none is given.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// Binds a listening TCP socket on `addr` with `SO_REUSEADDR` (so a
/// restarted server can bind while old connections sit in `TIME_WAIT`) and
/// the given listen backlog.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_shared(addr, backlog, false)
}

/// [`bind`], and with `reuse_port` also `SO_REUSEPORT`: several processes
/// (each setting it) may then listen on the same address, and the kernel
/// spreads new connections among them by a hash of their addresses.
pub fn bind_shared(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Resolves `host` and binds the first of its addresses that works (with
/// `SO_REUSEPORT` if `reuse_port`). The error says which host and port
/// could not be bound, and why.
pub fn bind_host(
    host: &str,
    port: u16,
    backlog: i32,
    reuse_port: bool,
) -> Result<TcpListener, BindError> {
    let fail = |source| BindError {
        host: host.to_string(),
        port,
        source,
    };
    let addrs = (host, port).to_socket_addrs().map_err(fail)?;
    let mut last = io::Error::new(ErrorKind::NotFound, "the host has no address");
    for addr in addrs {
        match bind_shared(addr, backlog, reuse_port) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// A listener that could not be set up.
#[derive(Debug)]
pub struct BindError {
    host: String,
    port: u16,
    source: io::Error,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "cannot listen on {host}:{}: {}", self.port, self.source)?;
        match self.source.kind() {
            ErrorKind::AddrInUse => write!(
                f,
                " (another program holds that port; pick another with --port, or 0 for a free one)"
            ),
            ErrorKind::PermissionDenied => {
                write!(f, " (ports below 1024 need privileges; try one above)")
            }
            ErrorKind::AddrNotAvailable => {
                write!(f, " (that address is not one of this machine's)")
            }
            _ => Ok(()),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// How a model does its clients' I/O: blocking calls on a thread per
/// client (the thread models), or non-blocking calls driven by readiness
/// events (event, async).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Io {
    Blocking,
    NonBlocking,
}

const LISTENER: Token = Token(0);
const WAKE: Token = Token(1);

/// Accepts clients and hands each one admitted to `on_client` (with the
/// admission policy, for a model that turns clients away itself) until
/// the shutdown fires or `on_client` breaks. Drops the listener on
/// return, so that from then on new connections are refused by the
/// kernel.
///
/// `on_client` may block (the sequential model serves the whole client in
/// it; the pool waits for a free worker): connections arriving meanwhile
/// wait in the listen backlog.
pub(crate) fn accept_loop(
    listener: TcpListener,
    state: &Arc<ServerState>,
    io: Io,
    mut on_client: impl FnMut(&mut Admission, TcpStream, SocketAddr, Permit) -> ControlFlow<()>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&listener.as_raw_fd()),
        LISTENER,
        Interest::READABLE,
    )?;
    // Held here as well as by the signal: if the signal held the only
    // handle and dropped it after waking, the eventfd would close and take
    // the pending wake-up with it, before `poll` had seen it.
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    state.shutdown.register_waker(waker.clone());
    let mut events = Events::with_capacity(4);
    let mut admission = Admission::new(state);
    let mut backoff = None;
    loop {
        if state.shutdown.is_triggered() {
            return Ok(());
        }
        match poll.poll(&mut events, backoff) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        backoff = None;
        // Readiness is edge-triggered: accept until the backlog is empty.
        // After a back-off this runs on the timeout, with no event.
        loop {
            // With `wait`, a place is taken before the accept: while there
            // is none, newcomers wait in the backlog until a client leaves.
            let waited = match state.config.over_limit {
                OverLimit::Wait => match state.registry.wait_permit() {
                    Some(permit) => Some(permit),
                    None => return Ok(()),
                },
                OverLimit::Reject => None,
            };
            if state.shutdown.is_triggered() {
                return Ok(());
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    let arrival = state.registry.accepted();
                    let Some((stream, permit)) = admission.admit(stream, peer, arrival, waited)
                    else {
                        continue;
                    };
                    // Linux does not pass the listener's O_NONBLOCK on, but
                    // other systems do: say what the model needs.
                    if let Err(e) = stream.set_nonblocking(io == Io::NonBlocking) {
                        warn!("cannot serve {peer}: {e}");
                        state.registry.ended(arrival.client, Ended::Failed);
                        continue;
                    }
                    if on_client(&mut admission, stream, peer, permit).is_break() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    if admission.accept_failed(&e, Instant::now()) {
                        backoff = Some(BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_the_address_and_a_way_out() {
        let taken = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind_host("127.0.0.1", port, 16, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.contains("--port"), "{err}");
    }
}
