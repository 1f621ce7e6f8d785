//! Load generation and the reference server the benchmarks compare with.
//!
//! Two loads, both of which check every byte they get back, so that a
//! broken server shows up as an error rather than as a fast figure:
//!
//! - [`stream`]: one client sends one long message as fast as it can while
//!   a second thread reads the answer. This measures the data path alone:
//!   read, protocol core, write.
//! - [`pingpong`]: several connections in a closed loop, each sending a
//!   short message and waiting for its answer before the next. This
//!   measures per-request latency (kept in an HDR histogram) and
//!   requests per second.
//!
//! What a concur server costs is only meaningful next to what the machine
//! and its TCP stack cost anyway, so [`start_echo`] runs a plain echo server
//! that moves bytes the same way the thread models do (one thread per
//! client, 64 KiB reads, one `write_all` per read, `TCP_NODELAY`) but does
//! no protocol work. A [`Target`] says which of the two is listening, since
//! they answer differently: a concur server greets with `*` and answers
//! each byte of a message plus one; the echo sends back exactly what came.
//!
//! On top of these, `concur bench` (see [`run`](mod@run)) measures whole
//! scenarios against several servers side by side:
//!
//! - `load`: the timed loads (stream, pingpong, rate, churn, cpu), which
//!   count errors per connection instead of stopping at the first;
//! - `idle`: the server as a child process, its memory with idle clients;
//! - `report`: runs, the medians of the table, `results.json`;
//! - `plot`: throughput and latency pictures (SVG);
//! - `run`: the servers, the interleaved repeats, the progress bar.
//!
//! Every connection goes to the address it is given (the benchmarks and
//! tests use 127.0.0.1), and every read and write gives up after
//! [`IO_TIMEOUT`], so a stalled server ends a run with an error instead of
//! hanging it.
//!
//! ```
//! use concur::bench::{self, Limit, Target};
//! use concur::server::{self, Config, Model};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let server = server::start(listener, Config::new(Model::Thread)).unwrap();
//! let target = Target::concur(server.local_addr());
//!
//! let report = bench::stream(target, 1 << 20, 64 * 1024).unwrap();
//! assert_eq!(report.bytes, 1 << 20);
//!
//! let report = bench::pingpong(target, 2, 16, Limit::Requests(100)).unwrap();
//! assert_eq!(report.requests, 100);
//! println!("{report}");
//! server.stop();
//! ```

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::protocol::{ACK, MSG_END, MSG_START};

pub mod idle;
pub mod load;
pub mod plot;
pub mod report;
pub mod run;

pub use load::{Params, Scenario};
pub use report::{Percentiles, Results, Row, Run};
pub use run::{Options, command};

/// The echo server's read size: the same as the concur servers', so that
/// the two make the same number of system calls for the same load.
pub const ECHO_BUF_SIZE: usize = 64 * 1024;

/// How long any single read or write of a load may block before the run
/// fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of server listens at a [`Target`], which decides what the
/// load expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A concur server: `*` on connect, then each byte inside a message
    /// plus one, the markers themselves unanswered.
    Concur,
    /// The echo reference of [`start_echo`]: no greeting, every byte back
    /// unchanged, markers included.
    Echo,
}

impl Peer {
    fn answer(self, b: u8) -> u8 {
        match self {
            Peer::Concur => b.wrapping_add(1),
            Peer::Echo => b,
        }
    }
}

/// Where a load connects, and what it should expect there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
    /// The kind of server at `addr`.
    pub peer: Peer,
}

impl Target {
    /// A concur server (any model) at `addr`.
    pub fn concur(addr: SocketAddr) -> Self {
        Target {
            addr,
            peer: Peer::Concur,
        }
    }

    /// The echo reference at `addr`.
    pub fn echo(addr: SocketAddr) -> Self {
        Target {
            addr,
            peer: Peer::Echo,
        }
    }

    /// Whether the server sends `*` before anything else.
    pub fn greets(&self) -> bool {
        self.peer == Peer::Concur
    }

    /// What the server sends back for the bytes of a message (markers
    /// excluded).
    fn answer(&self, b: u8) -> u8 {
        self.peer.answer(b)
    }

    /// Connects with `TCP_NODELAY` and the I/O timeouts set, and consumes
    /// the greeting if there is one, so that what follows is only the data.
    fn connect(&self) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        if self.greets() {
            let mut greeting = [0u8; 1];
            read_exact(&mut stream, &mut greeting, "the greeting")?;
            if greeting[0] != ACK {
                return Err(mismatch("the greeting", 0, ACK, greeting[0]));
            }
        }
        Ok(stream)
    }
}

// ---------------------------------------------------------------------
// The echo reference
// ---------------------------------------------------------------------

/// A running echo server; [`stop`](EchoServer::stop) it (or drop it) to end
/// it and every connection it has.
pub struct EchoServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    clients: Arc<Mutex<Vec<EchoClient>>>,
    acceptor: Option<JoinHandle<()>>,
}

struct EchoClient {
    // A second handle on the socket, so that stopping can wake the thread
    // blocked reading it.
    socket: TcpStream,
    thread: JoinHandle<()>,
}

/// Starts a plain echo server on `listener`: one thread per client, 64 KiB
/// reads, each read written back whole with `write_all`, `TCP_NODELAY` on.
///
/// It is the yardstick for the concur servers, doing the same system calls
/// minus the protocol work. It does not speak the protocol: no `*`, no
/// change to the bytes; use [`Target::echo`] to load it.
pub fn start_echo(listener: TcpListener) -> io::Result<EchoServer> {
    let addr = listener.local_addr()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let clients = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let (stopping, clients) = (Arc::clone(&stopping), Arc::clone(&clients));
        thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || echo_accept(listener, &stopping, &clients))?
    };
    Ok(EchoServer {
        addr,
        stopping,
        clients,
        acceptor: Some(acceptor),
    })
}

fn echo_accept(listener: TcpListener, stopping: &AtomicBool, clients: &Mutex<Vec<EchoClient>>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        // The reference only has to keep going for the connections that
        // do arrive; the pause keeps an out-of-descriptors error (which
        // leaves the connection queued) from spinning a core.
        let Ok(stream) = stream else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(socket) = stream.try_clone() else {
            continue;
        };
        let Ok(thread) = thread::Builder::new()
            .name("echo-client".into())
            .spawn(move || {
                let _ = echo(&stream);
                // The registry's handle keeps the socket open after this
                // thread drops its own, so close it explicitly: the client
                // waits for the close.
                let _ = stream.shutdown(Shutdown::Both);
            })
        else {
            continue;
        };
        let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
        // Long benchmark runs open many connections one after another;
        // forget the ones that are over.
        clients.retain(|c| !c.thread.is_finished());
        clients.push(EchoClient { socket, thread });
    }
}

fn echo(mut stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; ECHO_BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
    }
}

impl EchoServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The [`Target`] to give the loads.
    pub fn target(&self) -> Target {
        Target::echo(self.addr)
    }

    /// Stops accepting, closes every connection and waits for all its
    /// threads.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // The acceptor is blocked in accept(); a connection of our own
        // wakes it to see the flag.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = acceptor.join();
        }
        // If the wake-up failed the acceptor is left blocked (detached);
        // the clients below still end.
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        for client in &clients {
            let _ = client.socket.shutdown(Shutdown::Both);
        }
        for client in clients {
            let _ = client.thread.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

// ---------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------

/// What one [`stream`] run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamReport {
    /// Message bytes sent and answered (the `^` not counted).
    pub bytes: u64,
    /// From the first write to the last answered byte read.
    pub elapsed: Duration,
}

impl StreamReport {
    /// Throughput in megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes in {:.3} s: {:.1} MB/s",
            self.bytes,
            self.elapsed.as_secs_f64(),
            self.mb_per_s()
        )
    }
}

/// The message body that [`stream`] sends: every byte value but `$`, in
/// turn, so the whole alphabet is answered (`^` and 0xFF included) and the
/// message never ends early.
const PATTERN_LEN: usize = 255;

fn pattern(i: usize) -> u8 {
    let b = (i % PATTERN_LEN) as u8;
    if b >= MSG_END { b + 1 } else { b }
}

/// Checks a streamed answer chunk by chunk as it arrives: the echo's `^`
/// first, then the endless pattern answered byte by byte, wherever a read
/// happens to cut it.
pub(crate) struct StreamCheck {
    expected: Vec<u8>,
    prefix: &'static [u8],
    /// Message bytes checked so far.
    pub(crate) got: u64,
}

impl StreamCheck {
    /// A check for answers from a `peer`, read at most `read_len` at a time.
    pub(crate) fn new(peer: Peer, read_len: usize) -> Self {
        StreamCheck {
            expected: pattern_window(read_len, |b| peer.answer(b)),
            // The echo sends the `^` back too; a concur server does not
            // answer it.
            prefix: match peer {
                Peer::Concur => &[],
                Peer::Echo => &[MSG_START],
            },
            got: 0,
        }
    }

    /// Bytes still owed before the message's answers start.
    pub(crate) fn prefix_len(&self) -> usize {
        self.prefix.len()
    }

    /// Checks the next `chunk` of the answer and counts its message bytes.
    pub(crate) fn check(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        while let (Some(&p), Some(&b)) = (self.prefix.first(), chunk.first()) {
            if b != p {
                return Err(mismatch("the answer", 0, p, b));
            }
            self.prefix = &self.prefix[1..];
            chunk = &chunk[1..];
        }
        let at = (self.got % PATTERN_LEN as u64) as usize;
        let want = &self.expected[at..at + chunk.len()];
        if chunk != want {
            let i = chunk
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let at = self.got + i as u64;
            return Err(mismatch("the answer", at, want[i], chunk[i]));
        }
        self.got += chunk.len() as u64;
        Ok(())
    }
}

/// `pattern` laid out `len + PATTERN_LEN` long, so that any `len` bytes of
/// the endless pattern, starting anywhere, are one slice of it.
fn pattern_window(len: usize, map: impl Fn(u8) -> u8) -> Vec<u8> {
    (0..len + PATTERN_LEN).map(|i| map(pattern(i))).collect()
}

/// Streams one message of `bytes_total` bytes to `target` in writes of
/// `write_size` bytes (the `^` goes first, on its own), while a second
/// thread reads and checks every byte of the answer.
///
/// The connection's greeting is read before the clock starts. After the
/// last write the client half-closes; once the whole answer is in, the
/// server must close without sending more.
///
/// # Errors
///
/// Any I/O error, a wrong byte in the greeting or the answer, an answer
/// that ends early or goes on too long, or no progress for [`IO_TIMEOUT`].
pub fn stream(target: Target, bytes_total: u64, write_size: usize) -> io::Result<StreamReport> {
    if write_size == 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "write_size must be at least 1",
        ));
    }
    let mut reader = target.connect()?;
    let writer = reader.try_clone()?;
    let start = Instant::now();
    let sender = thread::Builder::new()
        .name("stream-writer".into())
        .spawn(move || send_message(writer, bytes_total, write_size))?;
    let received = receive_answer(&mut reader, target, bytes_total);
    if received.is_err() {
        // Wakes the writer if the server has stopped reading.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
    // The reader's error says what was wrong with the answer; the writer's
    // is usually only its consequence.
    let elapsed = received?.duration_since(start);
    sent?;
    Ok(StreamReport {
        bytes: bytes_total,
        elapsed,
    })
}

fn send_message(mut stream: TcpStream, bytes_total: u64, write_size: usize) -> io::Result<()> {
    stream.write_all(&[MSG_START])?;
    let window = pattern_window(write_size, |b| b);
    let mut sent = 0u64;
    while sent < bytes_total {
        let len = (bytes_total - sent).min(write_size as u64) as usize;
        let at = (sent % PATTERN_LEN as u64) as usize;
        stream.write_all(&window[at..at + len])?;
        sent += len as u64;
    }
    stream.shutdown(Shutdown::Write)
}

/// Reads and checks the whole answer, then the close; returns when the
/// last answered byte arrived.
fn receive_answer(stream: &mut TcpStream, target: Target, bytes_total: u64) -> io::Result<Instant> {
    let mut buf = vec![0u8; ECHO_BUF_SIZE];
    let mut check = StreamCheck::new(target.peer, buf.len());
    let mut last = Instant::now();
    while check.got < bytes_total || check.prefix_len() > 0 {
        let owed = bytes_total - check.got + check.prefix_len() as u64;
        let want = owed.min(buf.len() as u64) as usize;
        let n = read_some(stream, &mut buf[..want], "the answer", check.got)?;
        check.check(&buf[..n])?;
        last = Instant::now();
    }
    expect_close(stream)?;
    Ok(last)
}

// ---------------------------------------------------------------------
// Request/response
// ---------------------------------------------------------------------

/// When a [`pingpong`] run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many requests, over all connections together.
    Requests(u64),
    /// When this much time has passed; requests under way are completed.
    Duration(Duration),
}

/// What one [`pingpong`] run measured.
#[derive(Clone, Debug)]
pub struct PingPongReport {
    /// Connections that took part.
    pub connections: usize,
    /// Requests answered (and checked).
    pub requests: u64,
    /// From the moment every connection was ready to the last answer.
    pub elapsed: Duration,
    /// Round-trip latency of each request, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl PingPongReport {
    /// Requests answered per second, over all connections.
    pub fn requests_per_s(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency below which `percentile` percent of requests fall (the
    /// histogram keeps three significant digits).
    pub fn percentile(&self, percentile: f64) -> Duration {
        Duration::from_micros(self.latency_us.value_at_percentile(percentile))
    }

    /// The median latency.
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    /// The 90th percentile latency.
    pub fn p90(&self) -> Duration {
        self.percentile(90.0)
    }

    /// The 99th percentile latency.
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    /// The 99.9th percentile latency.
    pub fn p999(&self) -> Duration {
        self.percentile(99.9)
    }

    /// The slowest request.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency_us.max())
    }
}

impl fmt::Display for PingPongReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_micros();
        write!(
            f,
            "{} requests on {} connections in {:.3} s: {:.0} req/s, latency p50 {} µs, \
             p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            self.requests,
            self.connections,
            self.elapsed.as_secs_f64(),
            self.requests_per_s(),
            us(self.p50()),
            us(self.p90()),
            us(self.p99()),
            us(self.p999()),
            us(self.max())
        )
    }
}

/// Runs `connections` clients in a closed loop until `limit`: each sends
/// `^`, `payload_len` bytes and `$` in one write, then waits for and checks
/// the answer (`payload_len` bytes from a concur server, the whole request
/// from the echo) before sending the next.
///
/// Every connection is set up and greeted before the clock starts. The
/// payload changes from one request to the next, so an answer that belongs
/// to another request does not pass the check.
///
/// # Errors
///
/// The first error of any connection (the others finish their current
/// request and stop): I/O errors, a wrong byte, or no answer within
/// [`IO_TIMEOUT`]. Zero connections is an error too.
pub fn pingpong(
    target: Target,
    connections: usize,
    payload_len: usize,
    limit: Limit,
) -> io::Result<PingPongReport> {
    if connections == 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "at least one connection is needed",
        ));
    }
    let shared = Arc::new(Loop {
        gate: RwLock::new(()),
        issued: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        limit,
    });
    // Held until every connection is ready: the clients connect and greet
    // first, then wait on the gate, and the clock starts when it opens.
    let closed = shared.gate.write().unwrap_or_else(|e| e.into_inner());
    let (ready_tx, ready) = mpsc::channel();
    let mut threads = Vec::with_capacity(connections);
    let mut spawn_error = None;
    for i in 0..connections {
        let (mine, ready_tx) = (Arc::clone(&shared), ready_tx.clone());
        let spawned = thread::Builder::new()
            .name(format!("pingpong-{i}"))
            .spawn(move || {
                let conn = target.connect();
                let _ = ready_tx.send(());
                drop(mine.gate.read().unwrap_or_else(|e| e.into_inner()));
                let start = Instant::now();
                let result = conn.and_then(|s| client_loop(s, target, payload_len, &mine, start));
                if result.is_err() {
                    mine.failed.store(true, Ordering::Relaxed);
                }
                result
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Those already started still get through the gate and
                // stop at once.
                shared.failed.store(true, Ordering::Relaxed);
                spawn_error = Some(e);
                break;
            }
        }
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        // A thread that panicked before saying so drops its sender; the
        // channel then fails once every thread has done one or the other.
        if ready.recv().is_err() {
            break;
        }
    }
    drop(closed);
    let start = Instant::now();
    let mut latency = new_histogram();
    let mut last = start;
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(done)) => {
                latency
                    .add(&done.latency)
                    .map_err(|e| io::Error::other(format!("merging histograms: {e}")))?;
                last = last.max(done.last);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("a client thread panicked"));
            }
        }
    }
    if let Some(e) = spawn_error.or(first_error) {
        return Err(e);
    }
    Ok(PingPongReport {
        connections,
        requests: latency.len(),
        elapsed: last.duration_since(start),
        latency_us: latency,
    })
}

/// What the connections of one run share.
struct Loop {
    gate: RwLock<()>,
    issued: AtomicU64,
    failed: AtomicBool,
    limit: Limit,
}

impl Loop {
    /// Claims the next request, or says the run is over.
    fn next(&self, start: Instant) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        match self.limit {
            Limit::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Duration(d) => start.elapsed() < d,
        }
    }
}

struct ClientDone {
    latency: Histogram<u64>,
    last: Instant,
}

fn new_histogram() -> Histogram<u64> {
    // One microsecond to an hour, three significant digits: an hour is far
    // beyond IO_TIMEOUT, so nothing saturates.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn client_loop(
    mut stream: TcpStream,
    target: Target,
    payload_len: usize,
    shared: &Loop,
    start: Instant,
) -> io::Result<ClientDone> {
    let mut latency = new_histogram();
    let mut request = Vec::with_capacity(payload_len + 2);
    let mut expected = Vec::with_capacity(payload_len + 2);
    let mut answer = Vec::new();
    let mut last = start;
    let mut seq = 0usize;
    while shared.next(start) {
        // Lowercase letters shifted by the sequence number: no marker, and
        // consecutive requests differ.
        let payload = (0..payload_len).map(|j| b'a' + ((seq + j) % 26) as u8);
        request.clear();
        request.push(MSG_START);
        request.extend(payload);
        request.push(MSG_END);
        expected.clear();
        match target.peer {
            Peer::Concur => {
                expected.extend(request[1..=payload_len].iter().map(|&b| target.answer(b)))
            }
            Peer::Echo => expected.extend_from_slice(&request),
        }
        answer.resize(expected.len(), 0);

        let sent = Instant::now();
        stream.write_all(&request)?;
        read_exact(&mut stream, &mut answer, "an answer")?;
        let now = Instant::now();
        if answer != expected {
            let i = answer
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(mismatch("an answer", i as u64, expected[i], answer[i]));
        }
        latency.saturating_record(now.duration_since(sent).as_micros().max(1) as u64);
        last = now;
        seq = seq.wrapping_add(1);
    }
    stream.shutdown(Shutdown::Write)?;
    expect_close(&mut stream)?;
    Ok(ClientDone { latency, last })
}

// ---------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------

/// One `read` that retries on EINTR and turns end-of-file and timeouts into
/// errors that say what was being read and how far it had got.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], what: &str, at: u64) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the server closed the connection in {what}, after {at} bytes"),
                ));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("nothing came for {IO_TIMEOUT:?} in {what}, after {at} bytes"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_exact(stream: &mut TcpStream, buf: &mut [u8], what: &str) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled += read_some(stream, &mut buf[filled..], what, filled as u64)?;
    }
    Ok(())
}

/// After the whole answer the server must close, having sent nothing more.
fn expect_close(stream: &mut TcpStream) -> io::Result<()> {
    let mut extra = [0u8; 1];
    loop {
        return match stream.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "the server sent more than the answer (a byte {:#04x} after it)",
                    extra[0]
                ),
            )),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A reset after everything was answered is still a close.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(io::Error::new(
                    ErrorKind::TimedOut,
                    format!("the server did not close within {IO_TIMEOUT:?} after the answer"),
                ))
            }
            Err(e) => Err(e),
        };
    }
}

fn mismatch(what: &str, at: u64, expected: u8, got: u8) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("wrong byte in {what} at offset {at}: expected {expected:#04x}, got {got:#04x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{self, Config, Model};

    fn local() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn concur_server() -> server::Server {
        server::start(local(), Config::new(Model::Pool)).unwrap()
    }

    /// A server that greets like concur but echoes unchanged: the bytes
    /// flow, only their values are wrong.
    fn impostor() -> SocketAddr {
        let listener = local();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            // Serves the one connection a test makes, then ends.
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(&[ACK]);
                let _ = echo(&s);
            }
        });
        addr
    }

    #[test]
    fn pattern_never_ends_a_message_and_covers_every_other_byte() {
        let seen: std::collections::HashSet<u8> = (0..PATTERN_LEN).map(pattern).collect();
        assert_eq!(seen.len(), 255);
        assert!(!seen.contains(&MSG_END));
        assert_eq!(pattern(PATTERN_LEN), pattern(0));
    }

    #[test]
    fn stream_against_a_concur_server() {
        let server = concur_server();
        // Uneven sizes, so writes and reads straddle the pattern's period.
        let report = stream(Target::concur(server.local_addr()), 3_000_001, 7_777).unwrap();
        assert_eq!(report.bytes, 3_000_001);
        assert!(report.elapsed > Duration::ZERO);
        assert!(report.mb_per_s() > 0.0);
        let summary = server.stop();
        assert_eq!(summary.bytes_in, 3_000_002);
        assert_eq!(summary.bytes_out, 3_000_002);
    }

    #[test]
    fn stream_against_the_echo() {
        let echo = start_echo(local()).unwrap();
        let report = stream(echo.target(), 1 << 20, 64 * 1024).unwrap();
        assert_eq!(report.bytes, 1 << 20);
        assert!(report.mb_per_s() > 0.0);
        echo.stop();
    }

    #[test]
    fn stream_of_nothing_is_just_the_marker() {
        let server = concur_server();
        let report = stream(Target::concur(server.local_addr()), 0, 1).unwrap();
        assert_eq!(report.bytes, 0);
        server.stop();
    }

    #[test]
    fn pingpong_against_a_concur_server() {
        let server = concur_server();
        let report = pingpong(
            Target::concur(server.local_addr()),
            3,
            16,
            Limit::Requests(300),
        )
        .unwrap();
        assert_eq!(report.requests, 300);
        assert_eq!(report.connections, 3);
        assert!(report.requests_per_s() > 0.0);
        assert!(report.p50() > Duration::ZERO);
        assert!(report.p50() <= report.p99() && report.p99() <= report.max());
        let summary = server.stop();
        assert_eq!(summary.served, 3);
        assert_eq!(summary.bytes_in, 300 * 18);
    }

    #[test]
    fn pingpong_against_the_echo_for_a_while() {
        let echo = start_echo(local()).unwrap();
        let report = pingpong(
            echo.target(),
            2,
            100,
            Limit::Duration(Duration::from_millis(200)),
        )
        .unwrap();
        assert!(report.requests > 0);
        assert!(report.elapsed >= Duration::from_millis(200));
        assert!(report.elapsed < Duration::from_secs(5));
        echo.stop();
    }

    #[test]
    fn a_wrong_answer_is_an_error_not_a_figure() {
        let err = stream(Target::concur(impostor()), 100_000, 4096).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        // The impostor sends the `^` back, where the data should start.
        assert!(err.to_string().contains("expected 0x01, got 0x5e"), "{err}");

        let err = pingpong(Target::concur(impostor()), 1, 16, Limit::Requests(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn the_wrong_kind_of_target_is_an_error() {
        // A concur server greets with `*`; the echo's answer starts with `^`.
        let server = concur_server();
        let err = stream(Target::echo(server.local_addr()), 1000, 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        server.stop();
    }

    #[test]
    fn a_server_that_goes_away_is_an_error() {
        let listener = local();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.write_all(&[ACK]);
                let mut buf = [0u8; 10];
                let _ = s.read(&mut buf);
            }
        });
        let err = pingpong(Target::concur(addr), 1, 16, Limit::Requests(5)).unwrap_err();
        // Closing with the request partly unread may reset the connection.
        assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }

    #[test]
    fn echo_stop_ends_open_connections() {
        let echo = start_echo(local()).unwrap();
        let mut client = TcpStream::connect(echo.local_addr()).unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        echo.stop();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn zero_connections_or_write_size_is_refused() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(
            pingpong(Target::concur(addr), 0, 16, Limit::Requests(1))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            stream(Target::concur(addr), 10, 0).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
}
