//! Binding, and the accept loop with its error policy.
//!
//! Only a failure to bind ends a server. Once it listens, an `accept` that
//! fails is sorted into one of three cases:
//!
//! - the error belongs to one connection that died in the backlog
//!   (`ECONNABORTED`, `EPROTO` and the other network errors Linux passes on
//!   from a pending connection): skip it and accept the next;
//! - the process or the kernel is out of something (`EMFILE`, `ENFILE`,
//!   `ENOBUFS`, `ENOMEM`): the pending connection stays in the backlog, so
//!   accepting again at once would spin a core. Log at most once a second
//!   and back off, then try again; clients leaving free descriptors, and the
//!   server goes on;
//! - anything else: log it (also at most once a second) and back off the
//!   same way, rather than die.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use super::{OverLimit, Permit, ServerState, memory};

/// The listen backlog used when none is given.
pub const DEFAULT_BACKLOG: i32 = 1024;

/// How long the accept loop waits before trying again after an error that
/// is not one connection's.
pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

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

/// How the accept loop treats a failed `accept`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// One pending connection died; skip it.
    Connection,
    /// Out of descriptors or memory; back off.
    Exhausted,
    /// Unexpected; back off.
    Other,
}

pub(crate) fn classify(e: &io::Error) -> AcceptFailure {
    match e.kind() {
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted => {
            return AcceptFailure::Connection;
        }
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptFailure::Exhausted
        }
        // accept(2): Linux passes already-pending network errors on the new
        // socket up as accept errors; each is about that one connection.
        Some(
            libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::EPERM
            | libc::ETIMEDOUT,
        ) => AcceptFailure::Connection,
        _ => AcceptFailure::Other,
    }
}

/// Lets a message through at most once per period, and says how many were
/// held back in between.
pub(crate) struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    pub(crate) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held back since the last one)` if a message may go out now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
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

/// Accepts clients and hands each to `on_client` until the shutdown fires
/// or `on_client` breaks. Drops the listener on return, so that from then
/// on new connections are refused by the kernel.
///
/// `on_client` may block (the sequential model serves the whole client in
/// it; the pool waits for a free worker): connections arriving meanwhile
/// wait in the listen backlog.
pub(crate) fn accept_loop(
    listener: TcpListener,
    ctx: &Arc<ServerState>,
    io: Io,
    mut on_client: impl FnMut(TcpStream, SocketAddr, Permit) -> ControlFlow<()>,
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
    ctx.shutdown.register_waker(waker.clone());
    let mut events = Events::with_capacity(4);
    let mut log = RateLimited::new(Duration::from_secs(1));
    let mut reject_log = RateLimited::new(Duration::from_secs(1));
    let mut memory_log = RateLimited::new(Duration::from_secs(1));
    let cost = memory::client_cost(&ctx.config);
    let mut backoff = None;
    loop {
        if ctx.shutdown.is_triggered() {
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
            let waited = match ctx.config.over_limit {
                OverLimit::Wait => match ctx.wait_permit() {
                    Some(permit) => Some(permit),
                    None => return Ok(()),
                },
                OverLimit::Reject => None,
            };
            if ctx.shutdown.is_triggered() {
                return Ok(());
            }
            match listener.accept() {
                Ok((stream, peer)) => {
                    ctx.count_accepted();
                    let Some(mut permit) = waited.or_else(|| ctx.try_permit()) else {
                        drop(stream);
                        ctx.count_rejected();
                        if let Some(held_back) = reject_log.allow(Instant::now()) {
                            warn!(
                                "{peer} rejected: already serving {} clients, the limit \
                                 ({held_back} more rejections not shown)",
                                ctx.config.max_conns
                            );
                        }
                        continue;
                    };
                    if let Err(short) = ctx.budget.check(cost) {
                        drop(stream);
                        ctx.count_rejected();
                        if let Some(held_back) = memory_log.allow(Instant::now()) {
                            warn!(
                                "{peer} rejected: no room for another client: {short} \
                                 ({held_back} more such rejections not shown)"
                            );
                        }
                        continue;
                    }
                    // Linux does not pass the listener's O_NONBLOCK on, but
                    // other systems do: say what the model needs.
                    if let Err(e) = stream.set_nonblocking(io == Io::NonBlocking) {
                        warn!("cannot serve {peer}: {e}");
                        ctx.count_failed();
                        continue;
                    }
                    permit.accepted(Instant::now());
                    if on_client(stream, peer, permit).is_break() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    ctx.count_accept_error();
                    let failure = classify(&e);
                    if failure == AcceptFailure::Connection {
                        debug!("accept: skipping a connection that failed: {e}");
                        continue;
                    }
                    if let Some(held_back) = log.allow(Instant::now()) {
                        let hint = if failure == AcceptFailure::Exhausted {
                            "; backing off until clients leave"
                        } else {
                            "; backing off"
                        };
                        warn!("accept failed: {e}{hint} ({held_back} more such errors not shown)");
                    }
                    backoff = Some(BACKOFF);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_accept_errors() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(libc::EMFILE)), AcceptFailure::Exhausted);
        assert_eq!(classify(&os(libc::ENFILE)), AcceptFailure::Exhausted);
        assert_eq!(classify(&os(libc::ECONNABORTED)), AcceptFailure::Connection);
        assert_eq!(classify(&os(libc::EPROTO)), AcceptFailure::Connection);
        assert_eq!(classify(&os(libc::EBADF)), AcceptFailure::Other);
    }

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut log = RateLimited::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(2));
    }

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
