//! `concur bench`: the load engine, the reference server the models are
//! compared with, and the scenarios, reports and plots.
//!
//! - [`engine`]: the one load generator: a few threads, each an epoll
//!   loop driving its share of the connections, every received byte
//!   checked; it measures the load generator's CPU time and the server's.
//! - [`scenario`]: what can be run (stream, pingpong, rate, churn, idle,
//!   cpu) and its knobs.
//! - [`idle`]: idle clients held open against a child server, its memory
//!   and threads read from `/proc`.
//! - [`report`]: runs, the rows of the table, `results.json`, the latency
//!   spectra.
//! - [`table`]: the table printed at the end, and the notes under it.
//! - [`plot`]: throughput and latency pictures (SVG).
//! - [`options`]: what a run is asked for, and its one check.
//! - [`contender`]: the servers measured: the models and the references as
//!   child processes, or a server started elsewhere.
//! - [`run`](mod@run): the interleaved repeats, the kernel's counters, the
//!   progress bar, the outputs written.
//! - [`cpus`], [`kernel`], [`syscalls`]: pinning and CPU accounting; the
//!   TCP counters; the server's system calls, counted by the kernel.
//! - [`floor`]: the floor reference, the least server that answers the
//!   protocol.
//!
//! What a concur server costs is only meaningful next to what the machine
//! and its TCP stack cost anyway, so two references run beside the models.
//! [`start_echo`] is a plain echo server that moves bytes the way the
//! thread models do (one thread per client, 64 KiB reads, one `write_all`
//! per read, `TCP_NODELAY`) but does no protocol work: the yardstick of
//! throughput. [`serve_floor`] answers the protocol with the least there
//! is (one thread, one epoll loop, one pass of the core and one write per
//! read): the yardstick of CPU and system calls per request. A [`Peer`]
//! says what is listening, since they answer differently: a concur server
//! (and the floor) greets with `*` and answers each byte of a message plus
//! one; the echo sends back exactly what came.
//!
//! ```
//! use std::time::Duration;
//! use concur::bench::engine::{self, Plan, Speaks};
//! use concur::bench::{Peer, Scenario};
//! use concur::server::{self, Config, Model};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let config = Config::new(Model::Thread).check().unwrap();
//! let server = server::start(listener, config).unwrap();
//!
//! let secs = Duration::from_millis(100);
//! let speaks = Speaks::Bytes(Peer::Concur);
//! let plan = Plan::new(Scenario::Pingpong, server.local_addr(), speaks, 4, secs);
//! let outcome = engine::run(&plan).unwrap();
//! assert_eq!(outcome.errors, 0);
//! assert!(outcome.ops > 0);
//! println!("{:.0} req/s", outcome.throughput(Scenario::Pingpong));
//! server.stop();
//! ```

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::MSG_END;

pub mod child;
pub mod contender;
pub mod cpus;
pub mod engine;
pub mod floor;
pub mod idle;
pub mod kernel;
pub mod latency;
pub mod options;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod syscalls;
pub mod table;

pub use floor::serve_floor;
pub use report::{Percentiles, Results, Row, Run};
pub use run::{Options, Reference, ValidOptions, command};
pub use scenario::{Params, Scenario};

/// The echo server's read size: the same as the concur servers', so that
/// the two make the same number of system calls for the same load.
pub const ECHO_BUF_SIZE: usize = 64 * 1024;

/// How long any single read or write of a load may block before the run
/// fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What kind of server listens at an address, which decides what the
/// load expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A concur server: `*` on connect, then each byte inside a message
    /// plus one, the markers themselves unanswered.
    Concur,
    /// The echo reference of [`start_echo`]: `*` on connect as well, then
    /// every byte back unchanged, markers included.
    Echo,
}

impl Peer {
    /// What this server sends back for byte `b` of a message.
    pub fn answer(self, b: u8) -> u8 {
        match self {
            Peer::Concur => b.wrapping_add(1),
            Peer::Echo => b,
        }
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

/// Starts a plain echo server on `listener`: one thread per client, `*`
/// on connect, then 64 KiB reads, each written back whole with
/// `write_all`, `TCP_NODELAY` on.
///
/// It is the yardstick for the concur servers, doing the same system calls
/// minus the protocol work: it greets as they do (so a load generator can
/// tell, as with them, that it has been accepted), then changes no byte
/// ([`Peer::Echo`]).
pub fn start_echo(listener: TcpListener) -> io::Result<EchoServer> {
    let addr = listener.local_addr()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let clients = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let (stopping, clients) = (Arc::clone(&stopping), Arc::clone(&clients));
        thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || echo_accept(listener, &stopping, Some(&clients)))?
    };
    Ok(EchoServer {
        addr,
        stopping,
        clients,
        acceptor: Some(acceptor),
    })
}

/// The accept loop of the echo. With `clients`, every client is kept
/// track of (a second handle on its socket and its thread) so that
/// [`EchoServer::stop`] can end them; without, as in the process of
/// [`serve_echo`], which only ever ends whole, a client costs one
/// descriptor, as it does in the concur servers.
fn echo_accept(
    listener: TcpListener,
    stopping: &AtomicBool,
    clients: Option<&Mutex<Vec<EchoClient>>>,
) {
    let mut kept = 0;
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
        let Some(clients) = clients else {
            let _ = thread::Builder::new()
                .name("echo-client".into())
                .spawn(move || echo(&stream));
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
        // Long runs open many connections one after another; forget the
        // ones that are over, once the list has doubled since the last
        // look: a look per accept would cost the accept loop time in
        // proportion to the clients, and it would fall behind a burst.
        if clients.len() >= 2 * kept.max(64) {
            clients.retain(|c| !c.thread.is_finished());
            kept = clients.len();
        }
        clients.push(EchoClient { socket, thread });
    }
}

/// Runs the echo reference on the calling thread for as long as the
/// process lives: `concur echo`, the process `concur bench` starts as its
/// reference.
pub fn serve_echo(listener: TcpListener) -> io::Result<()> {
    echo_accept(listener, &AtomicBool::new(false), None);
    Ok(())
}

fn echo(mut stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(&[crate::protocol::ACK])?;
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
// What a stream sends and gets back
// ---------------------------------------------------------------------

/// The message body that the `stream` scenario sends: every byte value but `$`, in
/// turn, so the whole alphabet is answered (`^` and 0xFF included) and the
/// message never ends early.
pub(crate) const PATTERN_LEN: usize = 255;

fn pattern(i: usize) -> u8 {
    let b = (i % PATTERN_LEN) as u8;
    if b >= MSG_END { b + 1 } else { b }
}

/// `pattern` laid out `len + PATTERN_LEN` long, so that any `len` bytes of
/// the endless pattern, starting anywhere, are one slice of it.
pub(crate) fn pattern_window(len: usize, map: impl Fn(u8) -> u8) -> Vec<u8> {
    (0..len + PATTERN_LEN).map(|i| map(pattern(i))).collect()
}

/// An empty latency histogram: one microsecond to an hour, three
/// significant digits; an hour is far beyond any timeout, so nothing
/// saturates.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Checks `got` against `want` (as long), the bytes of `what` from
/// `offset` on: the first byte that differs is the error.
pub(crate) fn same_bytes(what: &str, offset: u64, want: &[u8], got: &[u8]) -> io::Result<()> {
    let n = got.len().min(want.len());
    // A slice comparison is one `memcmp`, many bytes a step; looking for
    // the position byte by byte made it half the load generator's CPU when
    // streaming. Only a mismatch is looked at closely.
    if got[..n] == want[..n] {
        return Ok(());
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(mismatch(what, offset + i as u64, want[i], got[i])),
    }
}

pub(crate) fn mismatch(what: &str, at: u64, expected: u8, got: u8) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("wrong byte in {what} at offset {at}: expected {expected:#04x}, got {got:#04x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_never_ends_a_message_and_covers_every_other_byte() {
        let seen: std::collections::HashSet<u8> = (0..PATTERN_LEN).map(pattern).collect();
        assert_eq!(seen.len(), 255);
        assert!(!seen.contains(&MSG_END));
        assert_eq!(pattern(PATTERN_LEN), pattern(0));
    }

    #[test]
    fn same_bytes_names_the_first_wrong_byte_and_its_offset() {
        let want: Vec<u8> = (0..4096).map(pattern).collect();
        assert!(same_bytes("x", 0, &want, &want[..100]).is_ok());
        let mut got = want.clone();
        got[3000] ^= 1;
        got[4000] ^= 1;
        let e = same_bytes("x", 10, &want, &got).unwrap_err().to_string();
        assert!(e.contains("at offset 3010"), "{e}");
        assert!(e.contains(&format!("expected {:#04x}", want[3000])), "{e}");
    }

    #[test]
    fn echo_stop_ends_open_connections() {
        let echo = start_echo(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let mut client = TcpStream::connect(echo.local_addr()).unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"*hi");
        echo.stop();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
}
