//! The load engine: a few threads, each a mio (epoll) loop driving its
//! share of the connections, for every scenario of `concur bench`.
//!
//! A load generator with a thread per connection competes with the server
//! for the CPU: on two cores, 64 runnable client threads leave a server of
//! two event loops a small share of the scheduler and a thread-per-client
//! server half of it, so the load, not the server, decides who wins. Here
//! the connections are multiplexed over `threads` loops (as wrk does), so
//! the load generator's own share of the machine is small, fixed and
//! known: every run measures the CPU time its threads used, beside the
//! server's (see [`Plan::server_pid`]).
//!
//! Every byte that comes back is checked against what the protocol says
//! it must be; a wrong byte, an I/O error or a connection that makes no
//! progress for [`Plan::timeout`] ends that connection and is counted as an
//! error, and the run goes on with the others.
//!
//! A run has two phases:
//!
//! 1. **Set-up**, before the clock: the connections are opened (at most
//!    [`WINDOW`] at a time connecting or waiting for their `*`, so that a
//!    burst of connects does not overflow the server's listen backlog) and
//!    greeted. It ends when every connection is greeted, or when nothing
//!    has been connected or greeted for a short while (a server that
//!    serves one client at a time greets the next only when the previous
//!    one leaves; the rest wait in the backlog, and are opened during the
//!    run as places free up).
//! 2. **The run**: the clock starts on every thread at once; each
//!    connection does its scenario's work until the deadline, then ends
//!    cleanly (half-close, the rest of its answer, the server's close).
//!    Every connection makes at least one exchange, however late it was
//!    greeted, so that every connection's answers are checked.
//!
//! Timers (the open loop of `rate`, the probe's pause) use a `timerfd` per
//! thread: `epoll_wait` counts in milliseconds, and a rate of thousands of
//! requests a second needs better than that.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::scenario::{Params, Scenario};
use super::{IO_TIMEOUT, PATTERN_LEN, Peer, mismatch, new_histogram, pattern_window};
use crate::protocol::{ACK, MSG_END, MSG_START};

/// Connections, over all threads, that may be connecting or waiting for
/// their `*` at once. Below the listen backlog of `concur serve` (1024 by
/// default, 4096 as `concur bench` starts it), so a server that stops
/// accepting makes connections wait in its backlog rather than lose SYNs.
pub const WINDOW: usize = 512;

/// Reads and writes one connection may make in a turn before the loop
/// serves the others.
const TURN: usize = 16;

/// How often connections are checked for [`Plan::timeout`].
const SWEEP: Duration = Duration::from_millis(100);

/// The token of a thread's timerfd; connections use their slab keys.
const TIMER: Token = Token(usize::MAX);

/// Error messages kept word for word per run; the rest are only counted.
const ERRORS_KEPT: usize = 10;

/// How the server at the address answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// PROTOCOL.md (a concur server), or the echo reference, as [`Peer`]
    /// says.
    Bytes(Peer),
    /// `--protocol prime`.
    Prime,
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
    /// What to run (any scenario but `idle`, which uses [`hold`]).
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
    /// Load-generator threads, each an event loop.
    pub threads: usize,
    /// CPUs the load generator's threads are pinned to, if any.
    pub cpus: Option<Vec<usize>>,
    /// The server's process, if it is a process of its own: its CPU time
    /// over the run is measured.
    pub server_pid: Option<u32>,
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
            threads: default_threads(),
            cpus: None,
            server_pid: None,
            timeout: secs + IO_TIMEOUT,
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// From the start of the clock to the last checked answer.
    pub elapsed: Duration,
    /// What was done and checked: answer bytes (`stream`), requests
    /// (`pingpong`, `rate`), connections (`churn`), heavy answers (`cpu`).
    pub ops: u64,
    /// Latency in µs: of each request (`rate`: from when it was due, so a
    /// stall cannot hide), of each connection (`churn`: connect to
    /// answer), of the heavy requests (`cpu`). `None` for `stream`.
    pub latency: Option<Histogram<u64>>,
    /// `rate` only: latency from when each request was really sent, the
    /// figure a load generator that waits for the server would report.
    pub uncorrected: Option<Histogram<u64>>,
    /// `cpu` only: the probe's latency in µs.
    pub probe: Option<Histogram<u64>>,
    /// Requests that were due (`rate`) but never sent, because their
    /// connection still waited for an earlier answer when the run ended;
    /// they are in `latency`, with what they had waited by then.
    pub unsent: u64,
    /// Connections that were greeted (being served) before the deadline.
    pub served_at_once: usize,
    /// Connections (or churn connections) ended by an error.
    pub errors: u64,
    /// The first few errors, word for word.
    pub error_samples: Vec<String>,
    /// CPU time the load generator's threads used during the run.
    pub client_cpu: Duration,
    /// CPU time the server's process used during the run, when
    /// [`Plan::server_pid`] was given.
    pub server_cpu: Option<Duration>,
    /// From the start of the clock until every connection had finished:
    /// the window both CPU times are over.
    pub window: Duration,
    /// The load generator's threads.
    pub threads: usize,
}

impl Outcome {
    /// The headline figure: MB/s for `stream`, operations per second for
    /// the rest.
    pub fn throughput(&self, scenario: Scenario) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        let per_s = self.ops as f64 / secs;
        if scenario == Scenario::Stream {
            per_s / 1e6
        } else {
            per_s
        }
    }
}

/// Runs `plan` and returns what it measured.
///
/// # Errors
///
/// A plan that cannot run (no connections, a scenario the server does not
/// speak, `idle`), or a load-generator thread that cannot be started.
/// Errors of connections are not errors of the run: they are counted in
/// the [`Outcome`].
pub fn run(plan: &Plan) -> io::Result<Outcome> {
    check(plan)?;
    let shared = Arc::new(Shared::new(plan));
    let specs = specs(plan);
    let threads = plan.threads.clamp(1, specs.len());
    let crew = Crew::start(&shared, specs, threads, plan.cpus.clone())?;
    crew.ready()?;
    let server = plan.server_pid.map(ProcessClock::of);
    let server_before = server.as_ref().and_then(|c| c.now());
    let start = Instant::now();
    let tallies = crew.go(start)?;
    let end = Instant::now();
    let server_cpu = match (server.as_ref().and_then(|c| c.now()), server_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let mut total = Tally::new();
    for t in tallies {
        total.merge(t)?;
    }
    let stream = plan.scenario == Scenario::Stream;
    let rate = plan.scenario == Scenario::Rate;
    Ok(Outcome {
        elapsed: total
            .last
            .map_or(Duration::ZERO, |t| t.duration_since(start)),
        ops: total.ops,
        latency: (!stream).then_some(total.latency),
        uncorrected: rate.then_some(total.uncorrected),
        probe: (plan.scenario == Scenario::Cpu).then_some(total.probe),
        unsent: total.unsent,
        served_at_once: total.served_at_once,
        errors: total.errors,
        error_samples: total.error_samples,
        client_cpu: total.cpu,
        server_cpu,
        window: end.duration_since(start),
        threads,
    })
}

fn check(plan: &Plan) -> io::Result<()> {
    let invalid = |what: &str| Err(io::Error::new(ErrorKind::InvalidInput, what.to_string()));
    if plan.count == 0 {
        return invalid("at least one connection is needed");
    }
    match (plan.scenario, plan.speaks) {
        (Scenario::Idle, _) => invalid("idle holds connections open: see engine::hold"),
        (Scenario::Cpu, Speaks::Prime) => Ok(()),
        (Scenario::Cpu, _) | (_, Speaks::Prime) => {
            invalid("the cpu scenario, and only it, needs a server of the primality protocol")
        }
        _ if plan.scenario == Scenario::Stream && plan.params.size == 0 => {
            invalid("the write size must be at least 1 byte")
        }
        _ => Ok(()),
    }
}

/// Idle connections held open by [`hold`]; dropping it closes them.
pub struct Held {
    crew: Option<Crew>,
    /// Connections established (greeted or waiting in the server's
    /// backlog).
    pub connected: usize,
    /// Of those, how many got their `*`.
    pub greeted: usize,
    /// Connections never opened, because the server stopped greeting and
    /// the set-up window was full of connections waiting for it.
    pub unopened: usize,
    /// Errors: connects that failed, a wrong greeting, bytes nobody asked
    /// for.
    pub errors: Vec<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(crew) = self.crew.take() {
            crew.release();
        }
    }
}

/// Opens `count` idle connections to the concur server at `addr` and
/// keeps them open, greeted as far as the server greets them, until the
/// [`Held`] is dropped. The set-up phase of [`run`], with a longer
/// patience (a second without progress), since what the server admits is
/// the figure.
pub fn hold(addr: SocketAddr, count: usize, threads: usize) -> io::Result<Held> {
    let mut plan = Plan::new(
        Scenario::Idle,
        addr,
        Speaks::Bytes(Peer::Concur),
        count.max(1),
        Duration::ZERO,
    );
    plan.threads = threads;
    let shared = Arc::new(Shared::new(&plan));
    let specs = specs(&plan);
    let threads = threads.clamp(1, specs.len());
    let crew = Crew::start(&shared, specs, threads, None)?;
    let setups = crew.ready()?;
    let mut held = Held {
        crew: Some(crew),
        connected: 0,
        greeted: 0,
        unopened: 0,
        errors: Vec::new(),
    };
    for s in setups {
        held.connected += s.connected;
        held.greeted += s.greeted;
        held.unopened += s.unopened;
        held.errors.extend(s.errors);
    }
    Ok(held)
}

// ---------------------------------------------------------------------
// The threads
// ---------------------------------------------------------------------

/// What a thread reports when its set-up is over.
struct Setup {
    connected: usize,
    greeted: usize,
    unopened: usize,
    errors: Vec<String>,
}

enum Go {
    Start(Instant),
    /// Close everything and end (after [`hold`]).
    Release,
}

/// The load generator's threads, between set-up and the end of a run.
struct Crew {
    workers: Vec<(mpsc::Sender<Go>, thread::JoinHandle<Tally>)>,
    ready: mpsc::Receiver<Setup>,
}

impl Crew {
    fn start(
        shared: &Arc<Shared>,
        specs: Vec<Spec>,
        threads: usize,
        cpus: Option<Vec<usize>>,
    ) -> io::Result<Crew> {
        let mut shares: Vec<Vec<Spec>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, spec) in specs.into_iter().enumerate() {
            shares[i % threads].push(spec);
        }
        let (ready_tx, ready) = mpsc::channel();
        let mut workers = Vec::with_capacity(threads);
        for (id, share) in shares.into_iter().enumerate() {
            let (go_tx, go) = mpsc::channel();
            let (shared, ready_tx, cpus) = (Arc::clone(shared), ready_tx.clone(), cpus.clone());
            let window = WINDOW.div_ceil(threads);
            let handle = thread::Builder::new()
                .name(format!("load-{id}"))
                .spawn(move || {
                    if let Some(cpus) = &cpus {
                        // Pinning is asked for, not required: a CPU that
                        // does not exist is refused before the run.
                        let _ = super::cpus::pin_thread(cpus);
                    }
                    tight_timers();
                    let size = share.len();
                    match Worker::new(shared, share, window) {
                        Ok(w) => w.live(&ready_tx, &go),
                        Err(e) => {
                            // Its connections are errors; the run goes on.
                            let mut tally = Tally::new();
                            for _ in 0..size {
                                tally.error(format!("its load thread could not start: {e}"));
                            }
                            let _ = ready_tx.send(Setup {
                                connected: 0,
                                greeted: 0,
                                unopened: size,
                                errors: tally.error_samples.clone(),
                            });
                            tally
                        }
                    }
                });
            match handle {
                Ok(h) => workers.push((go_tx, h)),
                Err(e) => {
                    Crew { workers, ready }.release();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start load thread {id}: {e}"),
                    ));
                }
            }
        }
        Ok(Crew { workers, ready })
    }

    /// Waits until every thread has finished its set-up.
    fn ready(&self) -> io::Result<Vec<Setup>> {
        let mut all = Vec::with_capacity(self.workers.len());
        for _ in 0..self.workers.len() {
            match self.ready.recv() {
                Ok(s) => all.push(s),
                Err(_) => return Err(io::Error::other("a load thread ended during set-up")),
            }
        }
        Ok(all)
    }

    /// Starts the clock on every thread and waits for them to finish.
    fn go(self, start: Instant) -> io::Result<Vec<Tally>> {
        for (go, _) in &self.workers {
            let _ = go.send(Go::Start(start));
        }
        let mut tallies = Vec::with_capacity(self.workers.len());
        for (_, handle) in self.workers {
            match handle.join() {
                Ok(t) => tallies.push(t),
                Err(_) => return Err(io::Error::other("a load thread panicked")),
            }
        }
        Ok(tallies)
    }

    fn release(self) {
        for (go, _) in &self.workers {
            let _ = go.send(Go::Release);
        }
        for (_, handle) in self.workers {
            let _ = handle.join();
        }
    }
}

// ---------------------------------------------------------------------
// What the connections do
// ---------------------------------------------------------------------

/// What one connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Streams one endless message, checking its answer.
    Stream,
    /// Closed loop of byte-protocol requests.
    Ping,
    /// Requests at `first + k * every`, whatever the answers do.
    Rate { first: Duration, every: Duration },
    /// Closed loop of the large number (`cpu`).
    Heavy,
    /// Small numbers with a pause between them (`cpu`).
    Probe,
    /// Connect, `*`, one request, close; again until the deadline.
    Churn,
    /// Connect, `*`, nothing more (`idle`).
    Idle,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    role: Role,
}

fn specs(plan: &Plan) -> Vec<Spec> {
    let n = plan.count;
    let spec = |role| Spec { role };
    match plan.scenario {
        Scenario::Stream => vec![spec(Role::Stream); n],
        Scenario::Pingpong => vec![spec(Role::Ping); n],
        Scenario::Rate => {
            // Each connection sends every `every`; the connections are
            // spread evenly over it.
            let every = Duration::from_secs_f64(n as f64 / plan.params.rate.max(1) as f64);
            (0..n)
                .map(|i| {
                    spec(Role::Rate {
                        first: every.mul_f64(i as f64 / n as f64),
                        every,
                    })
                })
                .collect()
        }
        Scenario::Churn => vec![spec(Role::Churn); n],
        Scenario::Idle => vec![spec(Role::Idle); n],
        Scenario::Cpu => {
            // The probe last: it arrives after the heavy clients, as a
            // small request does at a server already busy with large ones.
            let mut all = vec![spec(Role::Heavy); n];
            all.push(spec(Role::Probe));
            all
        }
    }
}

/// What every thread of a run reads and nobody changes.
struct Shared {
    addr: SocketAddr,
    peer: Peer,
    greets: bool,
    params: Params,
    timeout: Duration,
    /// Setup patience: this long without a connection established or
    /// greeted ends the set-up.
    stall: Duration,
    /// `stream`: what is sent, laid out so that any write of `size` bytes
    /// from any position is one slice.
    send_window: Vec<u8>,
    /// `stream`: what must come back, the same way, for reads of up to a
    /// whole read buffer.
    answer_window: Vec<u8>,
    /// `cpu`: the heavy request and its answer.
    heavy: (Vec<u8>, Vec<u8>),
    /// `cpu`: the probe's requests and answers, in turn.
    probes: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The read buffer of a thread: the servers' read size.
const READ_BUF: usize = 64 * 1024;

impl Shared {
    fn new(plan: &Plan) -> Self {
        let (peer, prime) = match plan.speaks {
            Speaks::Bytes(peer) => (peer, false),
            Speaks::Prime => (Peer::Concur, true),
        };
        let stream = plan.scenario == Scenario::Stream;
        let line = |n: u64| {
            let mut answer = Vec::new();
            crate::prime::answer_number(n, crate::prime::is_prime(n), &mut answer);
            (format!("{n}\n").into_bytes(), answer)
        };
        Shared {
            addr: plan.addr,
            peer,
            greets: !prime,
            params: plan.params,
            timeout: plan.timeout,
            stall: if plan.scenario == Scenario::Idle {
                Duration::from_secs(1)
            } else {
                // Long enough for a server busy starting thousands of
                // threads; short beside a run.
                Duration::from_millis(250)
            },
            send_window: if stream {
                pattern_window(plan.params.size, |b| b)
            } else {
                Vec::new()
            },
            answer_window: if stream {
                pattern_window(READ_BUF, |b| peer.answer(b))
            } else {
                Vec::new()
            },
            heavy: line(plan.params.number),
            // Small numbers, answered in microseconds by any model that
            // gets to them: what the probe measures is the wait.
            probes: if prime {
                (1000..1100).map(line).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The `seq`-th request of a connection of `role`, and its answer.
    fn request(&self, role: Role, seq: u64, req: &mut Vec<u8>, want: &mut Vec<u8>) {
        req.clear();
        want.clear();
        match role {
            Role::Heavy => {
                req.extend_from_slice(&self.heavy.0);
                want.extend_from_slice(&self.heavy.1);
            }
            Role::Probe => {
                let (r, w) = &self.probes[seq as usize % self.probes.len()];
                req.extend_from_slice(r);
                want.extend_from_slice(w);
            }
            Role::Churn => {
                req.extend_from_slice(b"^a$");
                want.extend_from_slice(match self.peer {
                    Peer::Concur => b"b",
                    Peer::Echo => b"^a$",
                });
            }
            _ => {
                // Lowercase letters shifted by the sequence number: no
                // marker, and consecutive requests differ, so an answer
                // to another request does not pass the check.
                let size = self.params.size;
                req.push(MSG_START);
                req.extend((0..size).map(|j| b'a' + ((seq as usize + j) % 26) as u8));
                req.push(MSG_END);
                match self.peer {
                    Peer::Concur => want.extend(req[1..=size].iter().map(|b| b + 1)),
                    Peer::Echo => want.extend_from_slice(req),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `connect` issued, not yet established.
    Connecting,
    /// Established, waiting for `*`.
    Greeting,
    /// Greeted; waiting for the clock, or for its next turn (a timer).
    Waiting,
    /// A request being written or its answer read.
    Exchanging,
    /// Streaming (`stream`).
    Streaming,
    /// Half-closed: the rest of the answer, then the server's close.
    Closing,
    /// Greeted and kept open (`idle`).
    Holding,
}

struct Conn {
    spec: Spec,
    socket: TcpStream,
    /// Tells this connection apart from a later one in the same slab slot,
    /// for timers that fire after it left.
    id: u64,
    phase: Phase,
    /// The last time anything happened on it, for the timeout.
    since: Instant,
    read_ready: bool,
    write_ready: bool,
    /// Exchanges completed (the request sequence number).
    seq: u64,
    req: Vec<u8>,
    req_off: usize,
    want: Vec<u8>,
    want_off: usize,
    /// When the request was due (closed loop: when it was sent).
    intended: Instant,
    /// When its first byte was written.
    sent_at: Instant,
    /// `churn`: when its connect began.
    opened_at: Instant,
    /// `stream`: message bytes written, the `^` not counted.
    streamed: u64,
    /// `stream`: whether the `^` went out.
    marker_sent: bool,
    /// `stream`: the echo sends the `^` back before the answers.
    prefix_owed: usize,
    /// `stream`: message bytes answered and checked.
    answered: u64,
}

impl Conn {
    /// What it was doing, for error messages.
    fn doing(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "connecting",
            Phase::Greeting => "the greeting",
            Phase::Streaming | Phase::Closing if self.spec.role == Role::Stream => "the answer",
            Phase::Closing => "waiting for the close",
            Phase::Holding => "an idle connection",
            _ => "an answer",
        }
    }

    /// Bytes received in the current phase, for error messages.
    fn got(&self) -> u64 {
        match self.spec.role {
            Role::Stream => self.answered,
            _ => self.want_off as u64,
        }
    }
}

/// What a thread brings back.
struct Tally {
    ops: u64,
    last: Option<Instant>,
    latency: Histogram<u64>,
    uncorrected: Histogram<u64>,
    probe: Histogram<u64>,
    unsent: u64,
    served_at_once: usize,
    errors: u64,
    error_samples: Vec<String>,
    cpu: Duration,
}

impl Tally {
    fn new() -> Self {
        Tally {
            ops: 0,
            last: None,
            latency: new_histogram(),
            uncorrected: new_histogram(),
            probe: new_histogram(),
            unsent: 0,
            served_at_once: 0,
            errors: 0,
            error_samples: Vec::new(),
            cpu: Duration::ZERO,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < ERRORS_KEPT {
            self.error_samples.push(e);
        }
    }

    fn merge(&mut self, other: Tally) -> io::Result<()> {
        let merge = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b)
                .map_err(|e| io::Error::other(format!("merging histograms: {e}")))
        };
        self.ops += other.ops;
        self.last = self.last.max(other.last);
        merge(&mut self.latency, &other.latency)?;
        merge(&mut self.uncorrected, &other.uncorrected)?;
        merge(&mut self.probe, &other.probe)?;
        self.unsent += other.unsent;
        self.served_at_once += other.served_at_once;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < ERRORS_KEPT {
                self.error_samples.push(e);
            }
        }
        self.cpu += other.cpu;
        Ok(())
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

// ---------------------------------------------------------------------
// One thread
// ---------------------------------------------------------------------

struct Worker {
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    to_open: VecDeque<Spec>,
    /// Connections connecting or waiting for their `*`.
    opening: usize,
    window: usize,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    timer: TimerFd,
    /// Connections whose turn ended before their work did.
    again: Vec<usize>,
    buf: Box<[u8]>,
    next_id: u64,
    /// Set when the clock starts.
    deadline: Option<Instant>,
    /// The last time a connection was established or greeted (set-up).
    progress: Instant,
    connected: usize,
    greeted: usize,
    tally: Tally,
}

impl Worker {
    fn new(shared: Arc<Shared>, share: Vec<Spec>, window: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Worker {
            shared,
            poll,
            conns: Slab::with_capacity(share.len()),
            to_open: share.into(),
            opening: 0,
            window,
            timers: BinaryHeap::new(),
            timer,
            again: Vec::new(),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            next_id: 0,
            deadline: None,
            progress: Instant::now(),
            connected: 0,
            greeted: 0,
            tally: Tally::new(),
        })
    }

    /// Set-up, the wait for the clock, the run; returns what it measured.
    fn live(mut self, ready: &mpsc::Sender<Setup>, go: &mpsc::Receiver<Go>) -> Tally {
        let churn = self.to_open.front().is_some_and(|s| s.role == Role::Churn);
        // Churn's connections are what it measures: none before the clock.
        if !churn {
            self.set_up();
        }
        let setup = Setup {
            connected: self.connected,
            greeted: self.greeted,
            unopened: self.to_open.len(),
            errors: self.tally.error_samples.clone(),
        };
        if ready.send(setup).is_err() {
            return self.tally;
        }
        let start = match go.recv() {
            Ok(Go::Start(at)) => at,
            Ok(Go::Release) | Err(_) => return self.tally,
        };
        let cpu_before = thread_cpu();
        self.run(start);
        self.tally.cpu = thread_cpu().saturating_sub(cpu_before);
        self.tally
    }

    fn set_up(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        self.progress = Instant::now();
        loop {
            self.fill_window();
            let all_in = self.to_open.is_empty() && self.opening == 0;
            if all_in || self.progress.elapsed() >= self.shared.stall {
                return;
            }
            let wait = self.shared.stall.saturating_sub(self.progress.elapsed());
            self.turn(&mut events, Some(wait.min(SWEEP)));
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + SWEEP;
            }
        }
    }

    fn run(&mut self, start: Instant) {
        let deadline = start + self.shared.params.secs;
        self.deadline = Some(deadline);
        // Those greeted during set-up begin now.
        let waiting: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Waiting | Phase::Holding))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.begin(key);
        }
        // Churn opens its connections now; the others open what set-up
        // left.
        self.fill_window();
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut deadline_seen = false;
        while !(self.conns.is_empty() && self.to_open.is_empty()) {
            let now = Instant::now();
            let wake = if deadline_seen {
                next_sweep
            } else {
                next_sweep.min(deadline)
            };
            self.turn(&mut events, Some(wake.saturating_duration_since(now)));
            let now = Instant::now();
            if !deadline_seen && now >= deadline {
                deadline_seen = true;
                self.at_deadline();
            }
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP;
            }
            self.fill_window();
        }
    }

    /// One poll and everything it makes ready; timers; connections whose
    /// turn ended early get the next.
    fn turn(&mut self, events: &mut Events, wait: Option<Duration>) {
        let wait = if self.again.is_empty() {
            wait
        } else {
            Some(Duration::ZERO)
        };
        self.arm_timer();
        match self.poll.poll(events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => {
                // Without its poll this thread can drive nothing: every
                // connection it has is an error.
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.fail(
                        key,
                        io::Error::new(e.kind(), format!("the load's poll failed: {e}")),
                    );
                }
                let left = self.to_open.len();
                self.to_open.clear();
                for _ in 0..left {
                    self.tally
                        .error(format!("never opened: the load's poll failed: {e}"));
                }
                return;
            }
        }
        for event in events.iter() {
            match event.token() {
                TIMER => self.timer.clear(),
                Token(key) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        // Errors and hang-ups surface in the read or write
                        // that follows.
                        c.read_ready |=
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        c.write_ready |=
                            event.is_writable() || event.is_write_closed() || event.is_error();
                        self.drive(key);
                    }
                }
            }
        }
        self.fire_timers();
        for key in std::mem::take(&mut self.again) {
            if self.conns.contains(key) {
                self.drive(key);
            }
        }
    }

    fn fill_window(&mut self) {
        while self.opening < self.window {
            let Some(spec) = self.to_open.pop_front() else {
                return;
            };
            self.open(spec, None);
        }
    }

    /// Opens a connection for `spec`, in a new slot or in `key`'s (churn
    /// reconnects).
    fn open(&mut self, spec: Spec, key: Option<usize>) {
        let mut socket = match TcpStream::connect(self.shared.addr) {
            Ok(s) => s,
            Err(e) => {
                self.tally.error(format!("cannot connect: {e}"));
                if let Some(key) = key {
                    self.conns.remove(key);
                }
                return;
            }
        };
        let now = Instant::now();
        let entry = match key {
            Some(key) => key,
            None => self.conns.vacant_key(),
        };
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(entry),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.tally.error(format!("cannot watch a connection: {e}"));
            if let Some(key) = key {
                self.conns.remove(key);
            }
            return;
        }
        self.next_id += 1;
        let conn = Conn {
            spec,
            socket,
            id: self.next_id,
            phase: Phase::Connecting,
            since: now,
            read_ready: false,
            write_ready: false,
            seq: 0,
            req: Vec::new(),
            req_off: 0,
            want: Vec::new(),
            want_off: 0,
            intended: now,
            sent_at: now,
            opened_at: now,
            streamed: 0,
            marker_sent: false,
            prefix_owed: 0,
            answered: 0,
        };
        match key {
            Some(key) => self.conns[key] = conn,
            None => {
                self.conns.insert(conn);
            }
        }
        self.opening += 1;
    }

    /// Does what `key` can do now, up to a turn's worth.
    fn drive(&mut self, key: usize) {
        for _ in 0..TURN {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let progressed = match c.phase {
                Phase::Connecting => {
                    if !c.write_ready {
                        return;
                    }
                    self.connected_or_not(key)
                }
                _ => {
                    let wrote = match self.write_some(key) {
                        Ok(w) => w,
                        Err(e) => {
                            self.fail(key, e);
                            return;
                        }
                    };
                    let read = match self.read_some(key) {
                        Ok(r) => r,
                        Err(e) => {
                            self.fail(key, e);
                            return;
                        }
                    };
                    wrote || read
                }
            };
            if !progressed {
                return;
            }
        }
        // The turn is used up with more to do, and edge-triggered readiness
        // will not say so again.
        self.again.push(key);
    }

    /// A connect finished, one way or the other (or the wake-up was early).
    fn connected_or_not(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        match c.socket.take_error() {
            Ok(Some(e)) | Err(e) => {
                self.fail(
                    key,
                    io::Error::new(e.kind(), format!("cannot connect: {e}")),
                );
                return false;
            }
            Ok(None) => {}
        }
        match c.socket.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                c.write_ready = false;
                return false;
            }
            Err(e) => {
                self.fail(
                    key,
                    io::Error::new(e.kind(), format!("cannot connect: {e}")),
                );
                return false;
            }
        }
        if let Err(e) = c.socket.set_nodelay(true) {
            self.fail(key, e);
            return false;
        }
        c.since = Instant::now();
        self.progress = c.since;
        if self.deadline.is_none() {
            self.connected += 1;
        }
        if self.shared.greets {
            c.phase = Phase::Greeting;
        } else {
            self.greeted(key);
        }
        true
    }

    /// The connection has its `*` (or needs none).
    fn greeted(&mut self, key: usize) {
        self.opening -= 1;
        let now = Instant::now();
        self.progress = now;
        let c = &mut self.conns[key];
        c.since = now;
        match self.deadline {
            None => {
                self.greeted += 1;
                c.phase = if c.spec.role == Role::Idle {
                    Phase::Holding
                } else {
                    Phase::Waiting
                };
            }
            Some(_) => self.begin(key),
        }
    }

    /// The clock runs and the connection is greeted: its work starts.
    fn begin(&mut self, key: usize) {
        let deadline = self.deadline.expect("begun after the start");
        let now = Instant::now();
        let c = &mut self.conns[key];
        match c.spec.role {
            Role::Stream => {
                c.phase = Phase::Streaming;
                c.prefix_owed = match self.shared.peer {
                    Peer::Concur => 0,
                    Peer::Echo => 1,
                };
            }
            Role::Rate { first, every: _ } => {
                let start = deadline - self.shared.params.secs;
                let due = start + first;
                // A first send scheduled past the end is the schedule, not
                // lateness, and is kept to.
                if due >= deadline {
                    self.close_out(key);
                } else if due > now {
                    c.phase = Phase::Waiting;
                    c.intended = due;
                    let id = c.id;
                    self.timers.push(Reverse((due, key, id)));
                } else {
                    self.send(key, due);
                }
            }
            Role::Idle => c.phase = Phase::Holding,
            Role::Ping | Role::Heavy | Role::Probe | Role::Churn => self.send(key, now),
        }
        self.drive_later(key);
    }

    /// Queues `key` for a turn in this pass (it may have bytes to write).
    fn drive_later(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.write_ready = true;
            c.read_ready = true;
            self.again.push(key);
        }
    }

    /// Starts the next request of `key`, due at `intended`.
    fn send(&mut self, key: usize, intended: Instant) {
        let c = &mut self.conns[key];
        let (mut req, mut want) = (std::mem::take(&mut c.req), std::mem::take(&mut c.want));
        self.shared.request(c.spec.role, c.seq, &mut req, &mut want);
        c.req = req;
        c.want = want;
        c.req_off = 0;
        c.want_off = 0;
        c.intended = intended;
        c.sent_at = Instant::now();
        c.phase = Phase::Exchanging;
    }

    /// Writes what the connection has to write, until the kernel takes no
    /// more; whether anything was written.
    fn write_some(&mut self, key: usize) -> io::Result<bool> {
        let deadline = self.deadline;
        let shared = &self.shared;
        let c = &mut self.conns[key];
        if !c.write_ready {
            return Ok(false);
        }
        let mut wrote = false;
        loop {
            let bytes: &[u8] = match c.phase {
                Phase::Exchanging if c.req_off < c.req.len() => &c.req[c.req_off..],
                Phase::Streaming if !c.marker_sent => &[MSG_START],
                Phase::Streaming => {
                    let at = (c.streamed % PATTERN_LEN as u64) as usize;
                    &shared.send_window[at..at + shared.params.size]
                }
                _ => return Ok(wrote),
            };
            match c.socket.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    wrote = true;
                    c.since = Instant::now();
                    match c.phase {
                        Phase::Exchanging => c.req_off += n,
                        _ if !c.marker_sent => c.marker_sent = true,
                        _ => {
                            c.streamed += n as u64;
                            // At least one write, however late this
                            // connection got going.
                            if deadline.is_some_and(|d| c.since >= d) {
                                c.socket.shutdown(Shutdown::Write)?;
                                c.phase = Phase::Closing;
                                return Ok(true);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.write_ready = false;
                    return Ok(wrote);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what has come, checks it and acts on it; whether anything was
    /// read.
    fn read_some(&mut self, key: usize) -> io::Result<bool> {
        let c = &mut self.conns[key];
        if !c.read_ready {
            return Ok(false);
        }
        let n = match c.socket.read(&mut self.buf) {
            Ok(0) => return self.eof(key).map(|()| true),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.read_ready = false;
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == ErrorKind::ConnectionReset && c.phase == Phase::Closing => {
                // A reset after everything was answered is still a close.
                return self.eof(key).map(|()| true);
            }
            Err(e) => return Err(e),
        };
        c.since = Instant::now();
        let buf = std::mem::take(&mut self.buf);
        let result = self.received(key, &buf[..n]);
        self.buf = buf;
        result.map(|()| true)
    }

    /// Checks `bytes` against what `key` expects, and moves it on.
    fn received(&mut self, key: usize, mut bytes: &[u8]) -> io::Result<()> {
        let c = &mut self.conns[key];
        match c.phase {
            Phase::Greeting => {
                if bytes[0] != ACK {
                    return Err(mismatch("the greeting", 0, ACK, bytes[0]));
                }
                if bytes.len() > 1 {
                    return Err(unasked(bytes[1]));
                }
                self.greeted(key);
                Ok(())
            }
            Phase::Exchanging => {
                let want = &c.want[c.want_off..];
                let n = bytes.len().min(want.len());
                if bytes[..n] != want[..n] {
                    let i = bytes
                        .iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(mismatch(
                        "an answer",
                        (c.want_off + i) as u64,
                        want[i],
                        bytes[i],
                    ));
                }
                if bytes.len() > want.len() {
                    return Err(unasked(bytes[want.len()]));
                }
                c.want_off += n;
                if c.want_off == c.want.len() {
                    if c.req_off < c.req.len() {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            "the whole answer came before the whole request was sent",
                        ));
                    }
                    self.answered(key);
                }
                Ok(())
            }
            Phase::Streaming | Phase::Closing if c.spec.role == Role::Stream => {
                while c.prefix_owed > 0 && !bytes.is_empty() {
                    if bytes[0] != MSG_START {
                        return Err(mismatch("the answer", 0, MSG_START, bytes[0]));
                    }
                    c.prefix_owed -= 1;
                    bytes = &bytes[1..];
                }
                let at = (c.answered % PATTERN_LEN as u64) as usize;
                let want = &self.shared.answer_window[at..at + bytes.len()];
                if bytes != want {
                    let i = bytes
                        .iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(mismatch(
                        "the answer",
                        c.answered + i as u64,
                        want[i],
                        bytes[i],
                    ));
                }
                if c.answered + bytes.len() as u64 > c.streamed {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "more answered ({} bytes) than sent ({})",
                            c.answered + bytes.len() as u64,
                            c.streamed
                        ),
                    ));
                }
                if c.answered == 0
                    && !bytes.is_empty()
                    && self.deadline.is_some_and(|d| c.since < d)
                {
                    self.tally.served_at_once += 1;
                }
                c.answered += bytes.len() as u64;
                self.tally.ops += bytes.len() as u64;
                self.tally.last = Some(c.since);
                Ok(())
            }
            _ => Err(unasked(bytes[0])),
        }
    }

    /// A whole answer is in and checked.
    fn answered(&mut self, key: usize) {
        let now = Instant::now();
        let deadline = self.deadline.expect("answers come after the start");
        let c = &mut self.conns[key];
        c.seq += 1;
        let tally = &mut self.tally;
        tally.ops += 1;
        tally.last = Some(now);
        if c.seq == 1 && now < deadline && c.spec.role != Role::Churn {
            tally.served_at_once += 1;
        }
        match c.spec.role {
            Role::Probe => {
                tally.probe.saturating_record(micros(now - c.intended));
                if now >= deadline {
                    self.close_out(key);
                } else {
                    c.phase = Phase::Waiting;
                    let (at, id) = (now + self.shared.params.probe_pause, c.id);
                    self.timers.push(Reverse((at, key, id)));
                }
            }
            Role::Churn => {
                tally.latency.saturating_record(micros(now - c.opened_at));
                let spec = c.spec;
                let _ = self.poll.registry().deregister(&mut c.socket);
                if now < deadline {
                    self.open(spec, Some(key));
                } else {
                    self.conns.remove(key);
                }
            }
            Role::Rate { first, every } => {
                tally.latency.saturating_record(micros(now - c.intended));
                tally.uncorrected.saturating_record(micros(now - c.sent_at));
                let start = deadline - self.shared.params.secs;
                let due = start + first + every.mul_f64(c.seq as f64);
                if due >= deadline || now >= deadline {
                    self.unsent(key, start + first, every, deadline, now);
                    self.close_out(key);
                } else if due > now {
                    c.phase = Phase::Waiting;
                    c.intended = due;
                    let id = c.id;
                    self.timers.push(Reverse((due, key, id)));
                } else {
                    self.send(key, due);
                }
            }
            _ => {
                tally.latency.saturating_record(micros(now - c.intended));
                if now >= deadline {
                    self.close_out(key);
                } else {
                    self.send(key, now);
                }
            }
        }
    }

    /// The requests of an open-loop schedule that were due before the
    /// deadline but never sent, because the connection was still waiting
    /// for an earlier answer. Each has waited at least until now: leaving
    /// them out would let a stall at the end of a run show as the one
    /// request it held up (coordinated omission). Not counted as done.
    fn unsent(
        &mut self,
        key: usize,
        first: Instant,
        every: Duration,
        deadline: Instant,
        now: Instant,
    ) {
        if every.is_zero() {
            return;
        }
        let from = self.conns[key].seq;
        for k in from.. {
            let due = first + every.mul_f64(k as f64);
            if due >= deadline {
                break;
            }
            let waited = now.saturating_duration_since(due);
            // Less than a turn late is the end of the run catching a
            // request as it went out, not a stall holding it back.
            if waited >= every {
                self.tally.latency.saturating_record(micros(waited));
                self.tally.unsent += 1;
            }
        }
    }

    /// The work is done: half-close, then the rest of the answer and the
    /// server's close.
    fn close_out(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if let Err(e) = c.socket.shutdown(Shutdown::Write) {
            self.fail(key, e);
            return;
        }
        c.phase = Phase::Closing;
        c.read_ready = true;
        self.again.push(key);
    }

    /// The server closed its side.
    fn eof(&mut self, key: usize) -> io::Result<()> {
        let c = &self.conns[key];
        if c.phase != Phase::Closing {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "the server closed the connection in {}, after {} bytes",
                    c.doing(),
                    c.got()
                ),
            ));
        }
        if c.spec.role == Role::Stream && (c.answered != c.streamed || c.prefix_owed > 0) {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} bytes sent, but {} answered before the close",
                    c.streamed, c.answered
                ),
            ));
        }
        self.finish(key);
        Ok(())
    }

    /// The connection ended well.
    fn finish(&mut self, key: usize) {
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.socket);
        if matches!(c.phase, Phase::Connecting | Phase::Greeting) {
            self.opening -= 1;
        }
    }

    /// The connection ended by an error: counted, and dropped.
    fn fail(&mut self, key: usize, e: io::Error) {
        let Some(mut c) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.socket);
        if matches!(c.phase, Phase::Connecting | Phase::Greeting) {
            self.opening -= 1;
        }
        self.tally.error(e.to_string());
    }

    /// The deadline: streams stop writing, idle connections close.
    fn at_deadline(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            match c.phase {
                // At least one write before it stops.
                Phase::Streaming if c.streamed > 0 => self.close_out(key),
                Phase::Holding => self.finish(key),
                _ => {}
            }
        }
    }

    /// Ends connections that made no progress for the timeout.
    fn sweep(&mut self) {
        let now = Instant::now();
        let limit = self.shared.timeout;
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                // Held and waiting connections wait for us, not the server.
                !matches!(c.phase, Phase::Holding | Phase::Waiting)
                    && now.duration_since(c.since) >= limit
            })
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            let c = &self.conns[key];
            let e = io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "nothing came for {limit:?} in {}, after {} bytes",
                    c.doing(),
                    c.got()
                ),
            );
            self.fail(key, e);
        }
    }

    fn arm_timer(&mut self) {
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            self.timer.set(*at);
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get(key) else {
                continue;
            };
            if c.id != id || c.phase != Phase::Waiting {
                continue;
            }
            let deadline = self.deadline.expect("timers run after the start");
            match c.spec.role {
                Role::Probe if now >= deadline => self.close_out(key),
                Role::Rate { .. } => {
                    let due = c.intended;
                    self.send(key, due);
                    self.drive_later(key);
                }
                _ => {
                    self.send(key, now);
                    self.drive_later(key);
                }
            }
        }
    }
}

fn unasked(b: u8) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("the server sent a byte nobody asked for ({b:#04x})"),
    )
}

// ---------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------

/// A thread's timer as a descriptor epoll can watch, with nanosecond
/// resolution.
struct TimerFd {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl TimerFd {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: None,
        })
    }

    /// Fires at `at` (now, if that has passed).
    fn set(&mut self, at: Instant) {
        if self.armed == Some(at) {
            return;
        }
        // Relative, from `Instant`'s clock: a zero value would disarm it.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid descriptor and a valid spec; the old value is
        // not asked for.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
        self.armed = Some(at);
    }

    /// Takes the expiry off the descriptor (edge-triggered: it must be
    /// read for the next one to show).
    fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads 8 bytes into a buffer of 8.
        unsafe {
            libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8);
        }
        self.armed = None;
    }
}

/// Asks the kernel to wake this thread on time: the default timer slack
/// (50 µs) would add itself to every open-loop latency, since those count
/// from the intended send time.
fn tight_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread; a failure leaves the default slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// The CPU clock of another process: every thread it has or had.
pub struct ProcessClock(Option<libc::clockid_t>);

impl ProcessClock {
    /// The clock of process `pid`.
    pub fn of(pid: u32) -> Self {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: a valid pointer to a local clockid.
        let ok = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0;
        ProcessClock(ok.then_some(clock))
    }

    /// Its CPU time so far; `None` once it is gone.
    pub fn now(&self) -> Option<Duration> {
        read_clock(self.0?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, Config, Model};
    use std::net::TcpListener;

    fn local() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn plan(scenario: Scenario, addr: SocketAddr, count: usize) -> Plan {
        let speaks = Speaks::Bytes(Peer::Concur);
        Plan::new(scenario, addr, speaks, count, Duration::from_millis(100))
    }

    /// Greets like concur, then does `then` with the connection.
    fn one_shot(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
        let listener = local();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(&[ACK]);
                then(s);
            }
        });
        addr
    }

    #[test]
    fn a_stream_is_answered_byte_for_byte_whatever_the_write_size() {
        let server = server::start(local(), Config::new(Model::Event)).unwrap();
        let mut p = plan(Scenario::Stream, server.local_addr(), 2);
        // Not a divisor of the pattern's period: writes straddle it.
        p.params.size = 7_777;
        let outcome = run(&p).unwrap();
        assert_eq!(outcome.errors, 0, "{:?}", outcome.error_samples);
        assert!(outcome.ops >= 2 * 7_777, "{}", outcome.ops);
        let summary = server.stop();
        // Every message byte answered, plus the `^` per connection read.
        assert_eq!(summary.bytes_in, outcome.ops + 2);
        assert_eq!(summary.bytes_out, outcome.ops + 2);
    }

    #[test]
    fn a_wrong_byte_is_an_error_with_where_it_was() {
        // Echoes what it gets: the `^` comes back where `b` is due.
        let addr = one_shot(|s| {
            let _ = std::io::copy(&mut &s, &mut &s);
        });
        let outcome = run(&plan(Scenario::Pingpong, addr, 1)).unwrap();
        assert_eq!(outcome.errors, 1);
        assert_eq!(outcome.ops, 0);
        let e = &outcome.error_samples[0];
        assert!(e.contains("wrong byte in an answer at offset 0"), "{e}");
        assert!(e.contains("expected 0x62, got 0x5e"), "{e}");
    }

    #[test]
    fn a_server_that_closes_early_is_an_error() {
        let addr = one_shot(|mut s| {
            let _ = s.read(&mut [0u8; 10]);
        });
        let outcome = run(&plan(Scenario::Pingpong, addr, 1)).unwrap();
        assert_eq!(outcome.errors, 1);
        // Closing with the request partly unread may reset instead.
        let e = &outcome.error_samples[0];
        assert!(
            e.contains("closed the connection") || e.contains("reset"),
            "{e}"
        );
    }

    #[test]
    fn a_server_that_never_answers_is_an_error_after_the_timeout() {
        let (tx, rx) = mpsc::channel::<()>();
        let addr = one_shot(move |s| {
            // Holds the connection open, silent, until the test is done.
            let _ = rx.recv();
            drop(s);
        });
        let mut p = plan(Scenario::Pingpong, addr, 1);
        p.timeout = Duration::from_millis(300);
        let outcome = run(&p).unwrap();
        drop(tx);
        assert_eq!(outcome.errors, 1);
        let e = &outcome.error_samples[0];
        assert!(e.contains("nothing came for 300ms in an answer"), "{e}");
    }

    #[test]
    fn a_refused_connection_is_an_error_not_a_hang() {
        // A port that was just free: nobody listens on it.
        let addr = local().local_addr().unwrap();
        let outcome = run(&plan(Scenario::Pingpong, addr, 3)).unwrap();
        assert_eq!(outcome.errors, 3);
        assert!(
            outcome.error_samples[0].contains("cannot connect"),
            "{:?}",
            outcome.error_samples
        );
    }

    #[test]
    fn plans_that_cannot_run_are_refused() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for (p, why) in [
            (plan(Scenario::Pingpong, addr, 0), "at least one connection"),
            (plan(Scenario::Idle, addr, 1), "engine::hold"),
            (plan(Scenario::Cpu, addr, 1), "primality"),
        ] {
            let e = run(&p).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn idle_connections_are_held_as_far_as_the_server_greets() {
        // A pool of two workers greets two; the rest wait in its backlog.
        let config = Config::new(Model::Pool).threads(2);
        let server = server::start(local(), config).unwrap();
        let held = hold(server.local_addr(), 5, 1).unwrap();
        assert_eq!((held.connected, held.greeted, held.unopened), (5, 2, 0));
        assert!(held.errors.is_empty(), "{:?}", held.errors);
        drop(held);
        // The two greeted were served; those that waited may reach a
        // worker before the stop, or be closed by it.
        let summary = server.stop();
        assert!((2..=5).contains(&summary.served), "{summary}");
    }
}
