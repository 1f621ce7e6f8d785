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
//!   as it has workers; the rest wait in the listen backlog);
//! - how long a newcomer takes from connect to its answer meanwhile (one
//!   every [`NEWCOMER_EVERY`] for the run's length).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::expect;
use super::new_histogram;
use crate::protocol::ACK;
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
    /// (the listen backlog of a server that stopped accepting is full).
    pub unconnected: Option<String>,
    /// Errors: connects that failed other than by a timeout, wrong bytes.
    #[serde(skip)]
    pub errors: Vec<String>,
    /// Newcomers' time from connect to answer, in µs.
    #[serde(skip)]
    pub newcomer_latency: Option<Histogram<u64>>,
}

/// A `concur serve` child process.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which has not been
        // waited for yet, so it cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn spawn(exe: &Path, model: Model, extra: &[String], clients: usize) -> io::Result<ServerProcess> {
    // The default cap (10,000 clients) would make the newcomers of a
    // 10,000-client run wait for a place: room for them too.
    let cap = (clients + CAP_ROOM).to_string();
    let mut child = Command::new(exe)
        .args(["serve", "--port", "0", "--backlog", "4096", "-q"])
        .args(["--drain-timeout", "0.2", "--max-conns", &cap])
        .args(["--model", model.name()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", exe.display())))?;
    let banner = first_line(child.stdout.as_mut().expect("piped stdout"));
    let addr = banner
        .as_deref()
        .and_then(|b| b.strip_prefix("Serving on "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok());
    // Built before the check, so that a child that said something else is
    // stopped on the way out.
    let server = ServerProcess {
        child,
        addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    match addr {
        Some(_) => Ok(server),
        None => Err(io::Error::other(format!(
            "{} serve did not print 'Serving on ADDR' first (got {banner:?})",
            exe.display()
        ))),
    }
}

fn first_line(out: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte: a buffered reader would swallow what comes after, and
    // the rest of stdout is the child's business.
    while out.read(&mut b).ok()? == 1 && b[0] != b'\n' {
        line.push(b[0]);
        if line.len() > 1000 {
            return None;
        }
    }
    String::from_utf8(line).ok()
}

/// One client served end to end: connect, `*`, `^ab$`, `bc`, close.
fn round_trip(addr: SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"^ab$")?;
    expect(&mut s, b"*bc", &mut [0u8; 3], "a newcomer's answer")?;
    Ok(t.elapsed())
}

fn proc_status(pid: u32) -> io::Result<crate::threads::Status> {
    Ok(crate::threads::Status::parse(&std::fs::read_to_string(
        format!("/proc/{pid}/status"),
    )?))
}

/// Starts `exe serve --model MODEL EXTRA...`, connects `clients` idle
/// clients, and measures.
pub fn run(
    exe: &Path,
    model: Model,
    extra: &[String],
    clients: usize,
    secs: Duration,
) -> io::Result<IdleFigures> {
    let server = spawn(exe, model, extra, clients)?;
    let pid = server.child.id();
    let addr = server.addr;
    round_trip(addr, Duration::from_secs(10))?;
    let before = proc_status(pid)?;

    let mut errors = Vec::new();
    let mut idle = Vec::with_capacity(clients);
    let mut unconnected = None;
    for i in 0..clients {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => idle.push(s),
            // A server that stops accepting (a full pool, a sequential
            // server) leaves clients in the listen backlog until it is
            // full; then connects time out. That is how such a server
            // behaves, a figure rather than an error.
            Err(e) if e.kind() == ErrorKind::TimedOut => {
                unconnected = Some(format!("client {} could not connect: {e}", i + 1));
                break;
            }
            Err(e) => {
                errors.push(format!("idle client {} could not connect: {e}", i + 1));
                break;
            }
        }
    }
    let greeted = count_greeted(&idle, &mut errors)?;
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
    drop(idle);
    drop(server);
    let held = greeted.1;
    Ok(IdleFigures {
        clients: held,
        greeted: greeted.0,
        rss_before_kib: before.rss_kib,
        rss_after_kib: during.rss_kib,
        bytes_per_client: during.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0
            / held.max(1) as f64,
        threads: during.threads,
        unconnected,
        newcomers: tried,
        newcomers_served: served,
        errors,
        newcomer_latency: (served > 0).then_some(latency),
    })
}

/// Waits until the server has greeted every client, or no more greetings
/// come for a while; returns (greeted, connected).
fn count_greeted(idle: &[TcpStream], errors: &mut Vec<String>) -> io::Result<(usize, usize)> {
    for s in idle {
        s.set_nonblocking(true)?;
    }
    let mut greeted = vec![false; idle.len()];
    let mut count = 0;
    let mut quiet_since = Instant::now();
    // A server that accepts lazily is given time; one that will never
    // greet the rest (a full pool) is given up on after a quiet spell.
    while count < idle.len() && quiet_since.elapsed() < Duration::from_millis(1500) {
        let mut progressed = false;
        for (s, g) in idle.iter().zip(greeted.iter_mut()).filter(|(_, g)| !**g) {
            let mut b = [0u8; 1];
            match (&*s).read(&mut b) {
                Ok(1) if b[0] == ACK => {
                    *g = true;
                    count += 1;
                    progressed = true;
                }
                Ok(_) => {
                    *g = true;
                    errors.push(format!("an idle client got {:#04x} instead of `*`", b[0]));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    *g = true;
                    errors.push(format!("an idle client: {e}"));
                }
            }
        }
        if progressed {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Settle: threads the server started for the last clients finish
    // starting before memory is read.
    std::thread::sleep(Duration::from_millis(300));
    Ok((count, idle.len()))
}
