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

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::cpus::user_system_ticks;
use super::echo::Peer;
use super::scenario::Scenario;
use super::syscalls;

mod blocking;
mod clock;
mod conn;
mod exchange;
mod plan;
#[cfg(test)]
mod tests;
mod worker;

pub use blocking::MAX_CONNECTIONS as MAX_THREADS_CONNECTIONS;
pub use clock::ProcessClock;
use clock::tight_timers;
use conn::{Shared, Spec, Tally, specs};
pub use plan::{ClientShape, Plan, Speaks, WINDOW, default_threads};
use plan::{Go, Setup};
use worker::Worker;

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
    /// System calls the server's process made during the run, when
    /// [`Plan::count_syscalls`] was asked for and the kernel counts them.
    pub server_syscalls: Option<u64>,
    /// Why they were asked for and not counted.
    pub syscalls_refused: Option<String>,
    /// The share of the server's CPU time spent in the kernel during the
    /// run (from `/proc/PID/stat`, in ticks of 10 ms or so).
    pub server_kernel_share: Option<f64>,
    /// From the start of the clock until every connection had finished:
    /// the window both CPU times and the system calls are over.
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
    // Attached before the set-up, so that threads the server starts for
    // the connections (a thread per client) inherit the count.
    let syscalls = match plan.server_pid {
        Some(pid) if plan.count_syscalls => Some(syscalls::Counter::attach(pid)),
        _ => None,
    };
    let shared = Arc::new(Shared::new(plan));
    let (crew, threads) = match plan.client {
        ClientShape::Engine => {
            let specs = specs(plan);
            let threads = plan.threads.clamp(1, specs.len());
            let crew = Crew::start(&shared, specs, threads, plan.cpus.clone())?;
            (Load::Engine(crew), threads)
        }
        ClientShape::Threads => {
            let (scenario, cpus) = (plan.scenario, plan.cpus.clone());
            let crew = blocking::Crew::start(&shared, scenario, plan.count, cpus)?;
            let per = if scenario == Scenario::Stream { 2 } else { 1 };
            (Load::Threads(crew), plan.count * per)
        }
    };
    crew.ready()?;
    let server = plan.server_pid.map(ProcessClock::of);
    let counter = syscalls.as_ref().and_then(|s| s.as_ref().ok());
    let calls_before = counter.and_then(syscalls::Counter::now);
    let ticks_before = plan.server_pid.and_then(user_system_ticks);
    let server_before = server.as_ref().and_then(|c| c.now());
    let start = Instant::now();
    let tallies = crew.go(start)?;
    let end = Instant::now();
    let server_cpu = match (server.as_ref().and_then(|c| c.now()), server_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let server_syscalls = match (counter.and_then(syscalls::Counter::now), calls_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let server_kernel_share = match (plan.server_pid.and_then(user_system_ticks), ticks_before) {
        (Some((u1, s1)), Some((u0, s0))) => {
            let (user, system) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
            (user + system > 0).then(|| system as f64 / (user + system) as f64)
        }
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
        server_syscalls,
        syscalls_refused: syscalls.and_then(Result::err),
        server_kernel_share,
        window: end.duration_since(start),
        threads,
    })
}

fn check(plan: &Plan) -> io::Result<()> {
    let invalid = |what: &str| Err(io::Error::new(ErrorKind::InvalidInput, what.to_string()));
    if plan.count == 0 {
        return invalid("at least one connection is needed");
    }
    if plan.client == ClientShape::Threads {
        blocking::check(plan.scenario, plan.count).or_else(|e| invalid(&e))?;
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

/// The load generator of a run, whichever its shape.
enum Load {
    Engine(Crew),
    Threads(blocking::Crew),
}

impl Load {
    fn ready(&self) -> io::Result<Vec<Setup>> {
        match self {
            Load::Engine(crew) => crew.ready(),
            Load::Threads(crew) => crew.ready(),
        }
    }

    fn go(self, start: Instant) -> io::Result<Vec<Tally>> {
        match self {
            Load::Engine(crew) => crew.go(start),
            Load::Threads(crew) => crew.go(start),
        }
    }
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
