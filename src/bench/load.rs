//! The timed loads of `concur bench`: one run of one scenario against one
//! server, for a fixed time, every received byte checked.
//!
//! Unlike [`stream`](super::stream) and [`pingpong`](super::pingpong),
//! which stop at their first error, a run here counts errors and goes on
//! with the connections that are still sound: a benchmark of many
//! connections must say how many went wrong, not only that one did. A
//! connection that sees a wrong byte (or an I/O error) is counted once and
//! stops, since its stream is no longer in a known state.
//!
//! Every connection is opened before the clock starts and waits at a gate,
//! so that the run measures serving, not the stampede of connects; the
//! greeting is read after the gate, because a server that serves one
//! client at a time only greets the next when the previous one leaves.

use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    IO_TIMEOUT, PATTERN_LEN, Peer, StreamCheck, expect_close, mismatch, new_histogram,
    pattern_window, read_some,
};
use crate::protocol::{ACK, MSG_END, MSG_START};

/// What a load does; `concur bench SCENARIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// C connections each stream one endless message in writes of the
    /// given size; MB/s of checked answer.
    Stream,
    /// C connections in a closed loop of `^` + S bytes + `$` and the
    /// answer; requests/s and latency.
    Pingpong,
    /// The same requests sent on a schedule (a fixed total rate), latency
    /// measured from each request's intended send time.
    Rate,
    /// W workers each connect, get `*`, send `^a$`, read `b` and close, in
    /// a loop; connections/s.
    Churn,
    /// N idle clients held open; the server's memory and threads, and how
    /// fast a newcomer is served meanwhile.
    Idle,
    /// The primality protocol: C clients ask about a large number in a
    /// loop while one probe asks about small ones; answers/s and the
    /// probe's latency.
    Cpu,
}

impl Scenario {
    /// Every scenario, in the order of the docs.
    pub const ALL: [Scenario; 6] = [
        Scenario::Stream,
        Scenario::Pingpong,
        Scenario::Rate,
        Scenario::Churn,
        Scenario::Idle,
        Scenario::Cpu,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stream => "stream",
            Scenario::Pingpong => "pingpong",
            Scenario::Rate => "rate",
            Scenario::Churn => "churn",
            Scenario::Idle => "idle",
            Scenario::Cpu => "cpu",
        }
    }

    /// The unit of the headline figure.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Stream => "MB/s",
            Scenario::Pingpong | Scenario::Rate => "req/s",
            Scenario::Churn => "conn/s",
            Scenario::Idle => "B/client",
            Scenario::Cpu => "answers/s",
        }
    }

    /// What the connection count means in this scenario.
    pub fn count_name(self) -> &'static str {
        match self {
            Scenario::Churn => "workers",
            Scenario::Idle => "idle clients",
            Scenario::Cpu => "heavy clients",
            _ => "connections",
        }
    }

    /// The connection count when none is given.
    pub fn default_count(self) -> usize {
        match self {
            Scenario::Stream => 1,
            Scenario::Pingpong | Scenario::Cpu => 64,
            Scenario::Rate => 8,
            Scenario::Churn => 4,
            Scenario::Idle => 10_000,
        }
    }

    /// Whether the server must speak the primality protocol.
    pub fn prime(self) -> bool {
        self == Scenario::Cpu
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The knobs of a timed load.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    /// How long each run lasts.
    #[serde(serialize_with = "secs")]
    pub secs: Duration,
    /// Bytes per write (`stream`) or message payload (`pingpong`, `rate`).
    pub size: usize,
    /// Requests per second over all connections (`rate`).
    pub rate: u64,
    /// The number the heavy clients of `cpu` ask about.
    pub number: u64,
    /// Pause between two probes of `cpu`.
    #[serde(serialize_with = "secs")]
    pub probe_pause: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The largest prime below 10^14: five million trial divisions,
/// milliseconds of one core; "a non-trivial amount of CPU-bound
/// computation" per request.
pub const DEFAULT_NUMBER: u64 = 99_999_999_999_973;

impl Params {
    /// The defaults for `scenario`, running for `secs`.
    pub fn new(scenario: Scenario, secs: Duration) -> Self {
        Params {
            secs,
            size: match scenario {
                Scenario::Stream => 64 * 1024,
                _ => 16,
            },
            rate: 10_000,
            number: DEFAULT_NUMBER,
            probe_pause: Duration::from_millis(10),
        }
    }
}

/// What one timed run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// From the opening of the gate to the last checked answer.
    pub elapsed: Duration,
    /// What was done and checked: answer bytes (`stream`), requests
    /// (`pingpong`, `rate`), connections (`churn`), heavy answers (`cpu`).
    pub ops: u64,
    /// Request latency in µs (`churn`: connect to answer; `cpu`: the heavy
    /// requests).
    pub latency: Option<Histogram<u64>>,
    /// The probe's latency in µs (`cpu`).
    pub probe: Option<Histogram<u64>>,
    /// Connections ended by an error, each with what went wrong.
    pub errors: Vec<String>,
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

/// How the server at `addr` answers: a concur server of the byte protocol
/// or of the primality protocol, or the echo reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaks {
    /// PROTOCOL.md, or the echo (as [`Peer`] says).
    Bytes(Peer),
    /// `--protocol prime`.
    Prime,
}

/// Runs `scenario` (any but `idle`) with `count` connections against
/// `addr`.
pub fn run(
    scenario: Scenario,
    addr: SocketAddr,
    speaks: Speaks,
    count: usize,
    params: &Params,
) -> io::Result<Outcome> {
    if count == 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "at least one connection is needed",
        ));
    }
    let peer = match speaks {
        Speaks::Bytes(peer) => peer,
        Speaks::Prime => Peer::Concur,
    };
    let runner = Runner {
        addr,
        params: *params,
        timeout: params.secs + IO_TIMEOUT,
    };
    match (scenario, speaks) {
        (Scenario::Cpu, Speaks::Prime) => runner.cpu(count),
        (Scenario::Cpu, _) | (_, Speaks::Prime) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the cpu scenario, and only it, needs a server of the primality protocol",
        )),
        (Scenario::Stream, _) => runner.stream(count, peer),
        (Scenario::Pingpong, _) => runner.requests(count, peer, None),
        (Scenario::Rate, _) => {
            let interval = Duration::from_secs_f64(count as f64 / params.rate.max(1) as f64);
            runner.requests(count, peer, Some(interval))
        }
        (Scenario::Churn, _) => runner.churn(count, peer),
        (Scenario::Idle, _) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the idle scenario runs the server as a child process; see bench::idle",
        )),
    }
}

struct Runner {
    addr: SocketAddr,
    params: Params,
    // Any one read or write may wait this long: a run's length, for a
    // server that serves one client after another, plus the usual slack.
    timeout: Duration,
}

/// What one connection (or churn worker) brings back.
struct Done {
    ops: u64,
    last: Option<Instant>,
    latency: Histogram<u64>,
    error: Option<String>,
}

impl Done {
    fn new() -> Self {
        Done {
            ops: 0,
            last: None,
            latency: new_histogram(),
            error: None,
        }
    }

    fn record(&mut self, from: Instant, now: Instant) {
        self.latency
            .saturating_record(now.duration_since(from).as_micros().max(1) as u64);
        self.ops += 1;
        self.last = Some(now);
    }

    /// The requests of an open-loop schedule, from the `from`-th, that
    /// were due before `deadline` but never sent, because the connection
    /// was still waiting for an earlier answer when the run ended. Each
    /// has waited at least until now: its latency is at least that, and
    /// leaving it out would let a stall at the end of a run show as the one
    /// request it held up (coordinated omission). Not counted as done.
    fn record_unsent(&mut self, first: Instant, every: Duration, from: u64, deadline: Instant) {
        if every.is_zero() {
            return;
        }
        let now = Instant::now();
        for k in from.. {
            let due = first + every.mul_f64(k as f64);
            if due >= deadline {
                break;
            }
            let waited = now.saturating_duration_since(due);
            // Less than a turn late is the end of the run catching a
            // request as it went out, not a stall holding it back.
            if waited >= every {
                self.latency
                    .saturating_record(waited.as_micros().max(1) as u64);
            }
        }
    }

    fn fail(mut self, e: io::Error) -> Self {
        self.error = Some(e.to_string());
        self
    }
}

/// One client's work. It gets the gate: a function that, once the client
/// has connected, waits until every client has, and returns when the clock
/// started.
type Job<'a> = Box<dyn FnOnce(&dyn Fn() -> Instant) -> Done + Send + 'a>;

/// Runs the jobs on threads of their own behind one gate, and sums up.
/// Each job sets itself up, calls the gate, and runs until its deadline.
fn gang(jobs: Vec<Job<'_>>) -> (Duration, Vec<Done>) {
    let gate = RwLock::new(());
    let closed = gate.write().unwrap_or_else(|e| e.into_inner());
    let (ready_tx, ready) = mpsc::channel::<()>();
    let started = std::sync::OnceLock::<Instant>::new();
    let mut results = Vec::new();
    let elapsed = thread::scope(|s| {
        let mut handles = Vec::new();
        let mut spawn_errors = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            let (gate, started, ready_tx) = (&gate, &started, ready_tx.clone());
            let spawned = thread::Builder::new()
                .name(format!("bench-{i}"))
                // Many clients, little stack each: sweeps run hundreds.
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || {
                    let wait = move || {
                        let _ = ready_tx.send(());
                        drop(gate.read().unwrap_or_else(|e| e.into_inner()));
                        *started.get_or_init(Instant::now)
                    };
                    job(&wait)
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => spawn_errors.push(format!("cannot start client thread {i}: {e}")),
            }
        }
        drop(ready_tx);
        for _ in 0..handles.len() {
            if ready.recv().is_err() {
                break;
            }
        }
        let start = *started.get_or_init(Instant::now);
        drop(closed);
        let mut last = start;
        for h in handles {
            let done = h.join().unwrap_or_else(|_| {
                let mut d = Done::new();
                d.error = Some("a client thread panicked".into());
                d
            });
            if let Some(t) = done.last {
                last = last.max(t);
            }
            results.push(done);
        }
        for e in spawn_errors {
            let mut d = Done::new();
            d.error = Some(e);
            results.push(d);
        }
        last.duration_since(start)
    });
    (elapsed, results)
}

fn outcome(elapsed: Duration, done: Vec<Done>, latency: bool) -> io::Result<Outcome> {
    let mut hist = new_histogram();
    let mut ops = 0;
    let mut errors = Vec::new();
    for d in done {
        ops += d.ops;
        hist.add(&d.latency)
            .map_err(|e| io::Error::other(format!("merging histograms: {e}")))?;
        errors.extend(d.error);
    }
    Ok(Outcome {
        elapsed,
        ops,
        latency: latency.then_some(hist),
        probe: None,
        errors,
    })
}

impl Runner {
    fn open(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        Ok(stream)
    }

    fn greet(stream: &mut TcpStream, peer: Peer) -> io::Result<()> {
        if peer == Peer::Concur {
            expect(stream, &[ACK], &mut [0u8; 1], "the greeting")?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // stream
    // -----------------------------------------------------------------

    fn stream(&self, count: usize, peer: Peer) -> io::Result<Outcome> {
        let jobs: Vec<Job> = (0..count)
            .map(|_| -> Job { Box::new(move |gate| self.stream_one(peer, gate)) })
            .collect();
        let (elapsed, done) = gang(jobs);
        outcome(elapsed, done, false)
    }

    fn stream_one(&self, peer: Peer, gate: &dyn Fn() -> Instant) -> Done {
        let done = Done::new();
        let conn = self.open();
        let start = gate();
        let mut reader = match conn {
            Ok(c) => c,
            Err(e) => return done.fail(e),
        };
        if let Err(e) = Self::greet(&mut reader, peer) {
            return done.fail(e);
        }
        let writer = match reader.try_clone() {
            Ok(w) => w,
            Err(e) => return done.fail(e),
        };
        let (size, until) = (self.params.size.max(1), start + self.params.secs);
        thread::scope(|s| {
            let sender = thread::Builder::new()
                .name("bench-writer".into())
                .stack_size(256 * 1024)
                .spawn_scoped(s, move || send_until(writer, size, until));
            let sender = match sender {
                Ok(t) => t,
                Err(e) => return done.fail(e),
            };
            let received = receive_all(&mut reader, peer, done);
            if received.error.is_some() {
                // Wakes the writer if the server has stopped reading.
                let _ = reader.shutdown(Shutdown::Both);
            }
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
            match (received.error.is_some(), sent) {
                (true, _) => received,
                (false, Err(e)) => received.fail(e),
                (false, Ok(n)) if n != received.ops => {
                    let got = received.ops;
                    received.fail(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("{n} bytes sent, but {got} answered before the close"),
                    ))
                }
                (false, Ok(_)) => received,
            }
        })
    }

    // -----------------------------------------------------------------
    // pingpong, rate
    // -----------------------------------------------------------------

    /// Closed loop without an interval; on a schedule with one (each
    /// connection sends every `interval`, the connections spread over it).
    fn requests(
        &self,
        count: usize,
        peer: Peer,
        interval: Option<Duration>,
    ) -> io::Result<Outcome> {
        let size = self.params.size;
        let jobs: Vec<Job> = (0..count)
            .map(|i| -> Job {
                Box::new(move |gate| {
                    let conn = self.open();
                    let start = gate();
                    let pace = match interval {
                        Some(every) => Pace::Open {
                            first: start + every.mul_f64(i as f64 / count as f64),
                            every,
                        },
                        None => Pace::Closed(Duration::ZERO),
                    };
                    let exchange = |seq: u64, req: &mut Vec<u8>, want: &mut Vec<u8>| {
                        byte_request(peer, size, seq, req, want)
                    };
                    let done = Done::new();
                    match conn.and_then(|mut c| Self::greet(&mut c, peer).map(|()| c)) {
                        Ok(c) => self.exchange_loop(c, start, pace, exchange, done),
                        Err(e) => done.fail(e),
                    }
                })
            })
            .collect();
        let (elapsed, done) = gang(jobs);
        outcome(elapsed, done, true)
    }

    /// Sends requests until the deadline, checking every answer; ends with
    /// a half-close and the server's close.
    fn exchange_loop(
        &self,
        mut stream: TcpStream,
        start: Instant,
        pace: Pace,
        mut exchange: impl FnMut(u64, &mut Vec<u8>, &mut Vec<u8>),
        mut done: Done,
    ) -> Done {
        let deadline = start + self.params.secs;
        let (mut req, mut want, mut buf) = (Vec::new(), Vec::new(), vec![0u8; 4096]);
        let mut seq = 0u64;
        loop {
            let intended = match pace {
                Pace::Closed(pause) => {
                    if seq > 0 && !pause.is_zero() {
                        thread::sleep(pause);
                    }
                    Instant::now()
                }
                Pace::Open { first, every } => {
                    if seq == 0 {
                        tight_timers();
                    }
                    let at = first + every.mul_f64(seq as f64);
                    let now = Instant::now();
                    if at > now && at < deadline {
                        thread::sleep(at - now);
                    }
                    at
                }
            };
            // Every connection makes its first exchange, however late its
            // thread got going on a busy machine: each connection's answers
            // are checked, and one that never spoke would pass unchecked.
            // An open-loop first send scheduled past the end is the
            // schedule, not lateness, and is kept to.
            let over = match pace {
                Pace::Closed(_) => seq > 0 && intended >= deadline,
                Pace::Open { .. } => {
                    intended >= deadline || (seq > 0 && Instant::now() >= deadline)
                }
            };
            if over {
                break;
            }
            exchange(seq, &mut req, &mut want);
            let result = stream
                .write_all(&req)
                .and_then(|()| expect(&mut stream, &want, &mut buf, "an answer"));
            if let Err(e) = result {
                return done.fail(e);
            }
            done.record(intended, Instant::now());
            seq += 1;
        }
        if let Pace::Open { first, every } = pace {
            done.record_unsent(first, every, seq, deadline);
        }
        match stream
            .shutdown(Shutdown::Write)
            .and_then(|()| expect_close(&mut stream))
        {
            Ok(()) => done,
            Err(e) => done.fail(e),
        }
    }

    // -----------------------------------------------------------------
    // churn
    // -----------------------------------------------------------------

    fn churn(&self, workers: usize, peer: Peer) -> io::Result<Outcome> {
        let (request, answer): (&[u8], &[u8]) = match peer {
            Peer::Concur => (b"^a$", b"b"),
            Peer::Echo => (b"^a$", b"^a$"),
        };
        let jobs: Vec<Job> = (0..workers)
            .map(|_| -> Job {
                Box::new(move |gate| {
                    let deadline = gate() + self.params.secs;
                    let mut done = Done::new();
                    let mut buf = [0u8; 8];
                    // At least one connection, however late this thread
                    // started (see `exchange_loop`).
                    loop {
                        let t = Instant::now();
                        let result = self.open().and_then(|mut s| {
                            Self::greet(&mut s, peer)?;
                            s.write_all(request)?;
                            expect(&mut s, answer, &mut buf, "the answer")
                        });
                        if let Err(e) = result {
                            return done.fail(e);
                        }
                        done.record(t, Instant::now());
                        if Instant::now() >= deadline {
                            return done;
                        }
                    }
                })
            })
            .collect();
        let (elapsed, done) = gang(jobs);
        outcome(elapsed, done, true)
    }

    // -----------------------------------------------------------------
    // cpu
    // -----------------------------------------------------------------

    fn cpu(&self, heavy: usize) -> io::Result<Outcome> {
        let number = self.params.number;
        let heavy_req = format!("{number}\n").into_bytes();
        let heavy_ans = answer_line(crate::prime::is_prime(number));
        // Small numbers, answered in microseconds by any model that gets to
        // them: what the probe measures is the wait.
        let probes: Arc<Vec<(Vec<u8>, Vec<u8>)>> = Arc::new(
            (1000u64..1100)
                .map(|n| {
                    (
                        format!("{n}\n").into_bytes(),
                        answer_line(crate::prime::is_prime(n)),
                    )
                })
                .collect(),
        );
        let mut jobs: Vec<Job> = Vec::with_capacity(heavy + 1);
        for _ in 0..heavy {
            let (req, ans) = (heavy_req.clone(), heavy_ans.clone());
            jobs.push(Box::new(move |gate| {
                let conn = self.open();
                let start = gate();
                let exchange = |_: u64, r: &mut Vec<u8>, w: &mut Vec<u8>| {
                    r.clone_from(&req);
                    w.clone_from(&ans);
                };
                match conn {
                    Ok(c) => self.exchange_loop(
                        c,
                        start,
                        Pace::Closed(Duration::ZERO),
                        exchange,
                        Done::new(),
                    ),
                    Err(e) => Done::new().fail(e),
                }
            }));
        }
        let pause = self.params.probe_pause;
        jobs.push(Box::new(move |gate| {
            let conn = self.open();
            let start = gate();
            let exchange = |seq: u64, r: &mut Vec<u8>, w: &mut Vec<u8>| {
                let (req, ans) = &probes[seq as usize % probes.len()];
                r.clone_from(req);
                w.clone_from(ans);
            };
            match conn {
                Ok(c) => self.exchange_loop(c, start, Pace::Closed(pause), exchange, Done::new()),
                Err(e) => Done::new().fail(e),
            }
        }));
        let (elapsed, mut done) = gang(jobs);
        let probe = done.pop().expect("the probe's result");
        let mut result = outcome(elapsed, done, true)?;
        result
            .errors
            .extend(probe.error.map(|e| format!("probe: {e}")));
        result.probe = Some(probe.latency);
        Ok(result)
    }
}

/// When a connection sends its next request.
#[derive(Clone, Copy)]
enum Pace {
    /// As soon as the answer is in, after a pause.
    Closed(Duration),
    /// At `first + k * every`, however late the answers are: latency is
    /// then counted from when a request should have gone, so a stalled
    /// server cannot hide its stall by holding the client back.
    Open { first: Instant, every: Duration },
}

/// Asks the kernel to wake this thread on time: the default timer slack
/// (50 µs) would add itself to every open-loop latency, since those count
/// from the intended send time.
fn tight_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread; a failure leaves the default slack, which is fine.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

fn answer_line(prime: bool) -> Vec<u8> {
    if prime {
        b"prime\n".to_vec()
    } else {
        b"composite\n".to_vec()
    }
}

/// A `pingpong` request and its answer: lowercase letters shifted by the
/// sequence number, so no marker, and consecutive requests differ.
fn byte_request(peer: Peer, size: usize, seq: u64, req: &mut Vec<u8>, want: &mut Vec<u8>) {
    req.clear();
    req.push(MSG_START);
    req.extend((0..size).map(|j| b'a' + ((seq as usize + j) % 26) as u8));
    req.push(MSG_END);
    want.clear();
    match peer {
        Peer::Concur => want.extend(req[1..=size].iter().map(|b| b + 1)),
        Peer::Echo => want.extend_from_slice(req),
    }
}

/// Reads exactly `expected.len()` bytes, checking each read as it comes so
/// that a wrong answer fails at once rather than at the timeout.
pub(crate) fn expect(
    stream: &mut TcpStream,
    expected: &[u8],
    buf: &mut [u8],
    what: &str,
) -> io::Result<()> {
    let mut got = 0;
    while got < expected.len() {
        let want = (expected.len() - got).min(buf.len());
        let n = read_some(stream, &mut buf[..want], what, got as u64)?;
        let part = &expected[got..got + n];
        if &buf[..n] != part {
            let i = buf.iter().zip(part).position(|(a, b)| a != b).unwrap_or(0);
            return Err(mismatch(what, (got + i) as u64, part[i], buf[i]));
        }
        got += n;
    }
    Ok(())
}

/// Writes `^` and then the pattern in `size`-byte writes until `until`,
/// then half-closes; returns the message bytes written.
fn send_until(mut stream: TcpStream, size: usize, until: Instant) -> io::Result<u64> {
    stream.write_all(&[MSG_START])?;
    let window = pattern_window(size, |b| b);
    let mut sent = 0u64;
    // At least one write, however late this thread started (see
    // `exchange_loop`).
    loop {
        let at = (sent % PATTERN_LEN as u64) as usize;
        stream.write_all(&window[at..at + size])?;
        sent += size as u64;
        if Instant::now() >= until {
            break;
        }
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(sent)
}

/// Reads and checks the answer until the server closes; `ops` is the
/// message bytes answered, `last` when the last of them came.
fn receive_all(stream: &mut TcpStream, peer: Peer, mut done: Done) -> Done {
    let mut buf = vec![0u8; super::ECHO_BUF_SIZE];
    let mut check = StreamCheck::new(peer, buf.len());
    loop {
        let n = match read_some(stream, &mut buf, "the answer", check.got) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && check.prefix_len() == 0 => {
                return done;
            }
            Err(e) => return done.fail(e),
        };
        if let Err(e) = check.check(&buf[..n]) {
            return done.fail(e);
        }
        done.ops = check.got;
        done.last = Some(Instant::now());
    }
}
