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
mod options;
mod report;
pub mod script;

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Instant;

use connection::Run;
use log::{Level, Log};
pub use options::Options;
pub use report::{Chunk, Connection, Report};
pub use script::{Script, Step};

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
