//! The article's simulated client: N concurrent connections on a fixed
//! schedule, a timeline of each, and a check of every reply.
//!
//! Each connection runs on a thread of its own, as in the article's Python
//! client: connect; wait for `*`; then follow the [`Script`] (by default
//! the article's three sends, 1.0 s, 1.0 s and 0.2 s apart) while a second
//! thread reads and logs whatever the server sends back; wait for the whole
//! reply; close. The article's reader stops when the reply ends in `1111`;
//! ours stops once it holds as many bytes as the schedule's reply (which,
//! for the article's schedule, is the same moment), so that any schedule
//! works.
//!
//! Beyond the original, every reply is checked against the one the
//! protocol core computes for the schedule ([`Script::expected_reply`]),
//! and each connection's timeline (arrival, admission, end, and every chunk
//! sent and received) is kept in the [`Report`] for the time chart
//! ([`chart`]) and for `--json`.
//!
//! ```no_run
//! use concur::client::{self, Options};
//!
//! let addr = "127.0.0.1:9090".parse().unwrap();
//! let report = client::run(addr, &Options::new(3));
//! println!("Elapsed: {}", report.elapsed);
//! for failure in report.failures() {
//!     eprintln!("{failure}");
//! }
//! ```

pub mod chart;
mod connection;
pub mod log;
pub mod script;

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use connection::Run;
use log::{Level, Log, py_bytes};
pub use script::{Script, Step};

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrent connections (`-n`).
    pub connections: usize,
    /// What each connection sends, and when.
    pub script: Script,
    /// Connection `i` starts connecting `i * stagger` after the run starts.
    pub stagger: Duration,
    /// The longest any one wait may take: to connect, for the `*`, for a
    /// write, and after the last step for the rest of the reply.
    pub timeout: Duration,
    /// Print the log to standard error as it happens (it is always kept in
    /// [`Report::log`]).
    pub echo: bool,
    /// What the server is, for reports and chart titles (such as
    /// `model pool, 2 threads`); unknown for a server we did not start.
    pub server: Option<String>,
}

impl Options {
    /// `connections` connections on the article's schedule, all at once,
    /// waiting up to 60 s for anything, not echoing the log.
    pub fn new(connections: usize) -> Self {
        Options {
            connections,
            script: Script::article(),
            stagger: Duration::ZERO,
            timeout: Duration::from_secs(60),
            echo: false,
            server: None,
        }
    }

    /// Sets [`Options::script`].
    pub fn script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    /// Sets [`Options::stagger`].
    pub fn stagger(mut self, stagger: Duration) -> Self {
        self.stagger = stagger;
        self
    }

    /// Sets [`Options::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Options::echo`].
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Sets [`Options::server`].
    pub fn server(mut self, description: impl Into<String>) -> Self {
        self.server = Some(description.into());
        self
    }
}

/// Bytes sent or received at a moment of a connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chunk {
    /// Seconds since the run started.
    pub at: f64,
    /// The bytes, shown in JSON as a Python bytes literal.
    #[serde(serialize_with = "as_py_bytes")]
    pub bytes: Vec<u8>,
}

/// One connection's timeline and outcome. Times are seconds since the run
/// started.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    /// `conn0`, `conn1`, ... as in the article.
    pub name: String,
    /// When it started to connect.
    pub arrival: f64,
    /// When its `*` arrived: from then on the server was serving it.
    /// `None` if it never did.
    pub admitted: Option<f64>,
    /// When it closed (or gave up).
    pub done: f64,
    /// What it sent, when.
    pub sent: Vec<Chunk>,
    /// What it received after the `*`, chunk by chunk, as the reads
    /// returned it.
    pub received: Vec<Chunk>,
    /// Everything received after the `*`.
    #[serde(serialize_with = "as_py_bytes")]
    pub reply: Vec<u8>,
    /// Why this connection failed, if it did: no `*`, an I/O error, a
    /// timeout, or a reply that differs from the protocol's.
    pub failure: Option<String>,
}

impl Connection {
    /// True if the connection was served and got exactly the reply it
    /// was owed.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The server, as described by [`Options::server`] or by its address.
    pub server: String,
    /// The address the connections went to.
    pub addr: SocketAddr,
    /// When the run started, local time.
    pub started: String,
    /// Seconds from the start until the last connection ended.
    pub elapsed: f64,
    /// The schedule each connection followed, as text in the script format.
    pub script: String,
    /// The reply each connection was owed.
    #[serde(serialize_with = "as_py_bytes")]
    pub expected: Vec<u8>,
    /// Every connection, in the order they were named.
    pub connections: Vec<Connection>,
    /// The log lines, in the order they were written.
    #[serde(skip)]
    pub log: Vec<String>,
}

impl Report {
    /// True if every connection was served and got the right reply.
    pub fn ok(&self) -> bool {
        self.connections.iter().all(Connection::ok)
    }

    /// One line per failed connection: `conn2: ...`.
    pub fn failures(&self) -> Vec<String> {
        self.connections
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| format!("{}: {f}", c.name)))
            .collect()
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Every field is plain data with string keys: this cannot fail.
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }
}

fn as_py_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&py_bytes(bytes))
}

/// Runs `options.connections` connections against `addr` and waits for all
/// of them. Never fails as a whole: what went wrong is in each
/// [`Connection::failure`].
pub fn run(addr: SocketAddr, options: &Options) -> Report {
    let log = Log::new(options.echo);
    let expected = options.script.expected_reply();
    let started = chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S,%3f")
        .to_string();
    let start = Instant::now();
    let run = Run {
        addr,
        options,
        expected: &expected,
        start,
        log: &log,
    };

    let connections = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.connections)
            .map(|i| {
                let name = format!("conn{i}");
                let run = &run;
                let spawned = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn_scoped(scope, move || run.connection(i, name));
                (format!("conn{i}"), spawned)
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, spawned)| {
                let failed = |why: String| {
                    log.log(Level::Error, &format!("{name} {why}"));
                    run.never_ran(name.clone(), why)
                };
                match spawned {
                    Ok(handle) => handle
                        .join()
                        .unwrap_or_else(|_| failed("its thread panicked".into())),
                    Err(e) => failed(format!("cannot start its thread: {e}")),
                }
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();

    Report {
        server: options
            .server
            .clone()
            .unwrap_or_else(|| format!("server at {addr}")),
        addr,
        started,
        elapsed,
        script: options.script.to_text(),
        expected,
        connections,
        log: log.into_lines(),
    }
}

/// The address to connect to. Like the article's client, which opens an
/// `AF_INET` socket, prefers IPv4 when a name has both (`localhost` often
/// lists `::1` first, where an IPv4-only server is not listening).
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(ErrorKind::NotFound, format!("{host:?} has no address")))
}

/// Where `concur client` writes what it found, besides the log.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// The timelines as JSON.
    pub json: Option<std::path::PathBuf>,
    /// The time chart as SVG.
    pub chart: Option<std::path::PathBuf>,
}

/// `concur client` once its arguments are parsed: runs, prints
/// `Elapsed: SECS` as the article's client does, writes the outputs, and
/// names every failed connection. Returns the exit status: 0 if every
/// connection got the right reply and every file was written, else 1.
pub fn command(host: &str, port: u16, options: &Options, outputs: &Outputs) -> u8 {
    let addr = match resolve(host, port) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let report = run(addr, options);
    println!("Elapsed: {}", report.elapsed);

    let mut status = 0;
    let mut written = |what: io::Result<()>, path: &Path| {
        if let Err(e) = what {
            eprintln!("error: cannot write {}: {e}", path.display());
            status = 1;
        }
    };
    if let Some(path) = &outputs.json {
        written(report.write_json(path), path);
    }
    if let Some(path) = &outputs.chart {
        written(chart::write(&report, path), path);
    }
    let failures = report.failures();
    for f in &failures {
        eprintln!("error: {f}");
    }
    if !failures.is_empty() {
        eprintln!(
            "error: {} of {} connections failed",
            failures.len(),
            report.connections.len()
        );
        status = 1;
    }
    status
}
