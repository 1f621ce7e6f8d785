//! The one admission policy, for both accept loops (the shared one in
//! `listener`, and ring 0's multishot accept in `uring`): who gets a place
//! among the clients served at once, who is rejected and how that is
//! said, and what a failed `accept` means.
//!
//! A newcomer is admitted when it holds a [`Permit`] (taken before the
//! accept with `--over-limit wait`, or just after with `reject`) and what
//! it needs to begin with fits under the address-space limit. Otherwise it
//! is rejected: closed at once, without a `*`, counted, and logged at most
//! once a second per reason, so that a flood of newcomers cannot flood the
//! log.
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
//!   and back off ([`BACKOFF`]), then try again; clients leaving free
//!   descriptors, and the server goes on;
//! - anything else: log it (also at most once a second) and back off the
//!   same way, rather than die.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::counters::Ended;
use super::log::RateLimited;
use super::memory::{self, Shortfall};
use super::registry::{Arrival, Permit};
use super::state::ServerState;

/// How long an accept loop waits before trying again after an error that
/// is not one connection's.
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Why a newcomer is turned away.
pub(crate) enum Refusal {
    /// The server already serves `--max-conns` clients
    /// (`--over-limit reject`).
    Full,
    /// What a client needs to begin with does not fit under the
    /// address-space limit.
    NoRoom(Shortfall),
    /// Its thread does not fit (`thread`).
    NoThread(Shortfall),
    /// Every worker is busy, none can take it, and another does not fit
    /// (an adaptive `pool`).
    NoWorker(io::Error),
}

impl Refusal {
    fn index(&self) -> usize {
        match self {
            Refusal::Full => 0,
            Refusal::NoRoom(_) => 1,
            Refusal::NoThread(_) => 2,
            Refusal::NoWorker(_) => 3,
        }
    }
}

/// An accept loop's admission policy and its rate-limited log.
pub(crate) struct Admission {
    state: Arc<ServerState>,
    /// What a newcomer needs to begin with, in address space.
    cost: u64,
    // One limit per reason, so that one kind of rejection cannot hide
    // another.
    rejections: [RateLimited; 4],
    errors: RateLimited,
}

impl Admission {
    pub(crate) fn new(state: &Arc<ServerState>) -> Self {
        Admission {
            state: Arc::clone(state),
            cost: memory::client_cost(&state.config),
            rejections: std::array::from_fn(|_| RateLimited::per_second()),
            errors: RateLimited::per_second(),
        }
    }

    /// A connection just accepted (and counted, as `arrival`): with the
    /// place it holds (`permit`), or else one taken now, and if its memory
    /// fits, it is admitted and handed back; if not, it is rejected.
    pub(crate) fn admit<S>(
        &mut self,
        stream: S,
        peer: SocketAddr,
        arrival: Arrival,
        permit: Option<Permit>,
    ) -> Option<(S, Permit)> {
        let client = arrival.client;
        let Some(mut permit) = permit.or_else(|| self.state.registry.try_permit()) else {
            self.reject(stream, peer, client, Refusal::Full);
            return None;
        };
        if let Err(short) = self.state.budget.check(self.cost) {
            self.reject(stream, peer, client, Refusal::NoRoom(short));
            return None;
        }
        permit.held_by(arrival);
        Some((stream, permit))
    }

    /// Turns `client` away: closed without a `*` (`stream` is dropped,
    /// whatever holds it), counted as rejected, and said at most once a
    /// second for each reason.
    pub(crate) fn reject<S>(&mut self, stream: S, peer: SocketAddr, client: u64, why: Refusal) {
        drop(stream);
        self.state.registry.ended(client, Ended::Rejected);
        let Some(held_back) = self.rejections[why.index()].allow(Instant::now()) else {
            return;
        };
        match why {
            Refusal::Full => warn!(
                "{peer} rejected: already serving {} clients, the limit ({held_back} more \
                 rejections not shown)",
                self.state.config.max_conns
            ),
            Refusal::NoRoom(short) => warn!(
                "{peer} rejected: no room for another client: {short} ({held_back} more such \
                 rejections not shown)"
            ),
            Refusal::NoThread(short) => warn!(
                "{peer} rejected: no room for its thread: {short} ({held_back} more such \
                 rejections not shown)"
            ),
            Refusal::NoWorker(e) => warn!(
                "{peer} rejected: every worker is busy and another does not fit: {e} \
                 ({held_back} more such rejections not shown)"
            ),
        }
    }

    /// A failed `accept`: counted, and logged at a limited rate unless it
    /// was one connection's. True if the loop should back off before
    /// accepting again; false to go on with the next connection.
    pub(crate) fn accept_failed(&mut self, e: &io::Error, now: Instant) -> bool {
        self.state.counters.accept_error();
        let failure = classify(e);
        if failure == AcceptFailure::Connection {
            debug!("accept: skipping a connection that failed: {e}");
            return false;
        }
        if let Some(held_back) = self.errors.allow(now) {
            let hint = if failure == AcceptFailure::Exhausted {
                "; backing off until clients leave"
            } else {
                "; backing off"
            };
            warn!("accept failed: {e}{hint} ({held_back} more such errors not shown)");
        }
        true
    }
}

/// Whether a failed `accept` was one pending connection's (skip it and
/// accept the next), rather than the process's or the kernel's (back off
/// for [`BACKOFF`]).
pub(crate) fn one_connection(e: &io::Error) -> bool {
    classify(e) == AcceptFailure::Connection
}

/// How an accept loop treats a failed `accept`.
#[derive(Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// One pending connection died; skip it.
    Connection,
    /// Out of descriptors or memory; back off.
    Exhausted,
    /// Unexpected; back off.
    Other,
}

fn classify(e: &io::Error) -> AcceptFailure {
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
}
