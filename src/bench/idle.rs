//! The `idle` scenario: what clients that do nothing cost a server.
//!
//! The server runs as a child process (`concur serve --port 0 -q`), so
//! that `/proc/PID/status` shows its memory and threads alone, without the
//! clients' sockets and threads of this process. The figures:
//!
//! - resident memory before (one client served, so that lazily built
//!   state is in the baseline) and with the idle clients connected, and
//!   the difference per client;
//! - the server's thread count with them connected;
//! - how many of them got their `*` (a pool serves only as many clients
//!   as it has workers; the rest wait in the listen backlog, and the load
//!   engine opens no more than its set-up window beyond those greeted);
//! - how long a newcomer takes from connect to its answer meanwhile (one
//!   every [`NEWCOMER_EVERY`] for the run's length).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::check::same_bytes;
use super::child::ServerProcess;
use super::engine;
use super::latency::new_histogram;
use crate::server::Model;

/// How often a newcomer arrives while the idle clients are connected (one
/// at a time, for the run's `--secs`): often enough to sample the tail,
/// seldom enough to leave the server idle in between, as the scenario
/// means it to be.
pub const NEWCOMER_EVERY: Duration = Duration::from_millis(10);

/// Room in the child's connection cap beyond the idle clients: one
/// newcomer at a time, and those whose close the server has yet to see.
const CAP_ROOM: usize = 36;

/// How long a newcomer may wait for its answer before it counts as not
/// served.
pub const NEWCOMER_TIMEOUT: Duration = Duration::from_secs(1);

/// What one `idle` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct IdleFigures {
    /// Idle clients connected.
    pub clients: usize,
    /// Of those, how many got their `*` (were being served).
    pub greeted: usize,
    /// The server's resident memory with one client served, in KiB.
    pub rss_before_kib: u64,
    /// Its resident memory with the idle clients connected, in KiB.
    pub rss_after_kib: u64,
    /// The difference, per connected client, in bytes.
    pub bytes_per_client: f64,
    /// The server's threads with the idle clients connected.
    pub threads: u64,
    /// Newcomers tried.
    pub newcomers: usize,
    /// Newcomers answered within [`NEWCOMER_TIMEOUT`].
    pub newcomers_served: usize,
    /// Why fewer than the clients asked for are connected, when they are
    /// (a server that stopped greeting: the load engine opens at most its
    /// set-up window of connections waiting for their `*`).
    pub unconnected: Option<String>,
    /// Errors: connects that failed other than by a timeout, wrong bytes.
    #[serde(skip)]
    pub errors: Vec<String>,
    /// Newcomers' time from connect to answer, in µs.
    #[serde(skip)]
    pub newcomer_latency: Option<Histogram<u64>>,
}

fn spawn(
    exe: &Path,
    model: Model,
    extra: &[String],
    clients: usize,
    cpus: Option<&[usize]>,
) -> io::Result<ServerProcess> {
    // The default cap (10,000 clients) would make the newcomers of a
    // 10,000-client run wait for a place: room for them too.
    let cap = (clients + CAP_ROOM).to_string();
    let mut args: Vec<String> = ["serve", "--port", "0", "--backlog", "4096", "-q"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--drain-timeout", "0.2", "--max-conns", &cap].map(String::from));
    args.extend(["--model".to_string(), model.name().to_string()]);
    args.extend(extra.iter().cloned());
    ServerProcess::spawn(exe, &args, cpus)
}

/// One client served end to end: connect, `*`, `^ab$`, `bc`, close.
fn round_trip(addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"^ab$")?;
    let mut got = [0u8; 3];
    s.read_exact(&mut got)?;
    same_bytes("a newcomer's answer", 0, b"*bc", &got)?;
    Ok(t.elapsed())
}

fn proc_status(pid: u32) -> io::Result<crate::threads::Status> {
    Ok(crate::threads::Status::parse(&std::fs::read_to_string(
        format!("/proc/{pid}/status"),
    )?))
}

/// Starts `exe serve --model MODEL EXTRA...`, connects `clients` idle
/// clients through the load engine (on `threads` threads), and measures.
pub fn run(
    exe: &Path,
    model: Model,
    extra: &[String],
    clients: usize,
    secs: Duration,
    threads: usize,
    server_cpus: Option<&[usize]>,
) -> io::Result<IdleFigures> {
    let server = spawn(exe, model, extra, clients, server_cpus)?;
    let pid = server.pid();
    let addr = server.addr();
    round_trip(addr, Duration::from_secs(10))?;
    let before = proc_status(pid)?;

    let held = engine::hold(addr, clients, threads)?;
    let mut errors = held.errors.clone();
    let unconnected = (held.connected < clients).then(|| {
        format!(
            "{} of {clients} clients connected: the server stopped greeting, and {} waited \
             for their `*` when the rest were to be opened",
            held.connected,
            held.connected - held.greeted
        )
    });
    // Settle: threads the server started for the last clients finish
    // starting before memory is read.
    std::thread::sleep(Duration::from_millis(300));
    let during = proc_status(pid)?;

    let mut latency = new_histogram();
    let mut served = 0;
    let mut tried = 0;
    let start = Instant::now();
    let mut next = start;
    while tried == 0 || start.elapsed() < secs {
        // Paced from the previous newcomer's start, so that after a slow
        // one the missed turns are skipped, not sent back to back.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next = Instant::now() + NEWCOMER_EVERY;
        tried += 1;
        match round_trip(addr, NEWCOMER_TIMEOUT) {
            Ok(t) => {
                served += 1;
                latency.saturating_record(t.as_micros().max(1) as u64);
            }
            // Not served in time (a full pool, a sequential server, or a
            // slow moment): a figure, not an error. The next one still
            // comes, so that one slow newcomer does not stand for all.
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
            Err(e) => {
                errors.push(format!("newcomer: {e}"));
                break;
            }
        }
    }
    let (connected, greeted) = (held.connected, held.greeted);
    drop(held);
    drop(server);
    Ok(IdleFigures {
        clients: connected,
        greeted,
        rss_before_kib: before.rss_kib,
        rss_after_kib: during.rss_kib,
        bytes_per_client: during.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0
            / connected.max(1) as f64,
        threads: during.threads,
        unconnected,
        newcomers: tried,
        newcomers_served: served,
        errors,
        newcomer_latency: (served > 0).then_some(latency),
    })
}
