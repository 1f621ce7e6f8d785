//! What a run is asked to do ([`Plan`], and how the server answers), and
//! what the engine's parts agree on: the window, the turn, the sweep, what
//! a thread reports and is told. Apart from `mod.rs`, which runs the
//! threads, so that a worker and a connection import nothing above them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Token;

use crate::bench::check::IO_TIMEOUT;
use crate::bench::echo::Peer;
use crate::bench::scenario::{Params, Scenario};

/// Connections, over all threads, that may be connecting or waiting for
/// their `*` at once. Below the listen backlog of `concur serve` (1024 by
/// default, 4096 as `concur bench` starts it), so a server that stops
/// accepting makes connections wait in its backlog rather than lose SYNs.
pub const WINDOW: usize = 512;

/// Reads and writes one connection may make in a turn before the loop
/// serves the others.
pub(super) const TURN: usize = 16;

/// How often connections are checked for [`Plan::timeout`].
pub(super) const SWEEP: Duration = Duration::from_millis(100);

/// The token of a thread's timerfd; connections use their slab keys.
pub(super) const TIMER: Token = Token(usize::MAX);

/// Error messages kept word for word per run; the rest are only counted.
pub(super) const ERRORS_KEPT: usize = 10;

/// How the server at the address answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// PROTOCOL.md (a concur server), or the echo reference, as [`Peer`]
    /// says.
    Bytes(Peer),
    /// `--protocol prime`.
    Prime,
}

/// The shape of the load generator: what drives the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientShape {
    /// A few threads, each an epoll loop driving its share of the
    /// connections in turn (as wrk does): the load's share of the CPU is
    /// small and fixed.
    Engine,
    /// Blocking sockets: a thread per direction per connection (stream),
    /// a thread per connection in a closed loop (pingpong), as `nc` and
    /// most hand-written clients are.
    Threads,
}

impl ClientShape {
    /// Both, in the order their rows come.
    pub const ALL: [ClientShape; 2] = [ClientShape::Engine, ClientShape::Threads];

    /// The name on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            ClientShape::Engine => "engine",
            ClientShape::Threads => "threads",
        }
    }
}

impl std::fmt::Display for ClientShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The load generator's thread count when none is given: half the cores
/// (at least one), so that the server has at least as many cores left as
/// the load generator can use.
pub fn default_threads() -> usize {
    (crate::server::cores() / 2).max(1)
}

/// One run of one scenario against one server.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What to run (any scenario but `idle`, which uses [`hold`](super::hold)).
    pub scenario: Scenario,
    /// The server.
    pub addr: SocketAddr,
    /// What it speaks.
    pub speaks: Speaks,
    /// Connections (`churn`: connections at once; `cpu`: heavy clients,
    /// and the probe beside them).
    pub count: usize,
    /// The load's knobs.
    pub params: Params,
    /// What drives the connections.
    pub client: ClientShape,
    /// Load-generator threads, each an event loop (the engine only).
    pub threads: usize,
    /// CPUs the load generator's threads are pinned to, if any.
    pub cpus: Option<Vec<usize>>,
    /// The server's process, if it is a process of its own: its CPU time
    /// over the run is measured.
    pub server_pid: Option<u32>,
    /// Count the system calls of [`Plan::server_pid`] over the run, where
    /// the kernel allows it ([`crate::bench::syscalls`]).
    pub count_syscalls: bool,
    /// How long one connection may make no progress before it is an error.
    pub timeout: Duration,
}

impl Plan {
    /// `scenario` with `count` connections against `addr`, with the
    /// default knobs for a run of `secs`.
    pub fn new(
        scenario: Scenario,
        addr: SocketAddr,
        speaks: Speaks,
        count: usize,
        secs: Duration,
    ) -> Self {
        Plan {
            scenario,
            addr,
            speaks,
            count,
            params: Params::new(scenario, secs),
            client: ClientShape::Engine,
            threads: default_threads(),
            cpus: None,
            server_pid: None,
            count_syscalls: false,
            timeout: secs + IO_TIMEOUT,
        }
    }
}

/// What a thread reports when its set-up is over.
pub(super) struct Setup {
    pub(super) connected: usize,
    pub(super) greeted: usize,
    pub(super) unopened: usize,
    pub(super) errors: Vec<String>,
}

pub(super) enum Go {
    Start(Instant),
    /// Close everything and end (after [`hold`](super::hold)).
    Release,
}
