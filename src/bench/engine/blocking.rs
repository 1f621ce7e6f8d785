//! The other common client: blocking sockets and threads, as `nc`,
//! iperf-style tools and most people's own test clients are written.
//! `stream` gives each connection a thread per direction (one writes as
//! fast as the socket takes it, the other reads and checks every byte);
//! `pingpong` gives each connection one thread in a closed loop.
//!
//! Why a second client at all: the engine reads and writes its
//! connections in turn from one loop, so it never sends much more than a
//! server has answered. A writer thread that never waits for its answers
//! keeps a server's outbound backlog full all the time, and a server whose
//! backpressure costs something pays it on every byte. A figure that
//! holds only under one of the two is not a figure (see BENCHMARKS.md).
//!
//! Same checks, same tallies, same CPU accounting as the engine: every
//! byte is compared with what the protocol says, and every thread times
//! its own CPU, so the load's share of the machine is known here too.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Instant;

use super::clock::thread_cpu;
use super::conn::{READ_BUF, Role, Shared, Tally, micros};
use super::exchange::unasked;
use super::plan::{Go, Setup};
use crate::bench::check::{IO_TIMEOUT, PATTERN_LEN, mismatch, same_bytes};
use crate::bench::echo::Peer;
use crate::bench::scenario::Scenario;
use crate::protocol::{ACK, MSG_START};

/// The most connections this client runs: two threads each when
/// streaming. Enough for the counts it is meant for (1 to 1,000); a
/// thread per connection far beyond is what the engine is for.
pub const MAX_CONNECTIONS: usize = 2_000;

/// A thread's stack: it holds no buffer (those are on the heap).
const STACK: usize = 128 * 1024;

/// The threads of a run of this client, one (or two) per connection.
pub(super) struct Crew {
    threads: Vec<(mpsc::Sender<Go>, thread::JoinHandle<Tally>)>,
    ready: mpsc::Receiver<Setup>,
}

impl Crew {
    /// Starts a thread per connection; each connects and waits for its
    /// greeting (or, at most the set-up's patience, for its turn).
    pub(super) fn start(
        shared: &Arc<Shared>,
        scenario: Scenario,
        count: usize,
        cpus: Option<Vec<usize>>,
    ) -> io::Result<Crew> {
        let (ready_tx, ready) = mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        for id in 0..count {
            let (go_tx, go) = mpsc::channel();
            let (shared, ready_tx, cpus) = (Arc::clone(shared), ready_tx.clone(), cpus.clone());
            let spawned = thread::Builder::new()
                .name(format!("load-{id}"))
                .stack_size(STACK)
                .spawn(move || {
                    pin(cpus.as_deref());
                    connection(&shared, scenario, cpus, &ready_tx, &go)
                });
            match spawned {
                Ok(handle) => threads.push((go_tx, handle)),
                Err(e) => {
                    Crew { threads, ready }.release();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start the thread of connection {id}: {e}"),
                    ));
                }
            }
        }
        Ok(Crew { threads, ready })
    }

    pub(super) fn ready(&self) -> io::Result<Vec<Setup>> {
        (0..self.threads.len())
            .map(|_| {
                self.ready
                    .recv()
                    .map_err(|_| io::Error::other("a load thread ended during set-up"))
            })
            .collect()
    }

    pub(super) fn go(self, start: Instant) -> io::Result<Vec<Tally>> {
        for (go, _) in &self.threads {
            let _ = go.send(Go::Start(start));
        }
        self.threads
            .into_iter()
            .map(|(_, handle)| {
                handle
                    .join()
                    .map_err(|_| io::Error::other("a load thread panicked"))
            })
            .collect()
    }

    pub(super) fn release(self) {
        for (go, _) in &self.threads {
            let _ = go.send(Go::Release);
        }
        for (_, handle) in self.threads {
            let _ = handle.join();
        }
    }
}

fn pin(cpus: Option<&[usize]>) {
    if let Some(cpus) = cpus {
        // Asked for, not required: a CPU that does not exist is refused
        // before the run.
        let _ = crate::bench::cpus::pin_thread(cpus);
    }
}

/// One connection's thread, from its connect to its tally.
fn connection(
    shared: &Shared,
    scenario: Scenario,
    cpus: Option<Vec<usize>>,
    ready: &mpsc::Sender<Setup>,
    go: &mpsc::Receiver<Go>,
) -> Tally {
    let mut tally = Tally::new();
    let opened = open(shared);
    let setup = match &opened {
        Ok((_, greeted)) => Setup {
            connected: 1,
            greeted: usize::from(*greeted),
            unopened: 0,
            errors: Vec::new(),
        },
        Err(e) => Setup {
            connected: 0,
            greeted: 0,
            unopened: 1,
            errors: vec![e.to_string()],
        },
    };
    let _ = ready.send(setup);
    let start = match go.recv() {
        Ok(Go::Start(start)) => start,
        Ok(Go::Release) | Err(_) => return tally,
    };
    let (socket, greeted) = match opened {
        Ok(o) => o,
        Err(e) => {
            tally.error(format!("connecting: {e}"));
            return tally;
        }
    };
    let deadline = start + shared.params.secs;
    let cpu = thread_cpu();
    let result = (|| {
        if !greeted {
            // Its turn came after the set-up: the greeting, then at least
            // one exchange, as in the engine.
            socket.set_read_timeout(Some(shared.timeout))?;
            greeting(&socket)?;
        }
        match scenario {
            Scenario::Stream => stream(shared, socket, deadline, cpus, &mut tally),
            _ => pingpong(shared, socket, deadline, &mut tally),
        }
    })();
    if let Err(e) = result {
        tally.error(e.to_string());
    }
    tally.cpu += thread_cpu().saturating_sub(cpu);
    tally
}

/// Connects, and waits for the greeting at most the set-up's patience: a
/// server that serves one client at a time greets the next only when one
/// leaves. Whether it was greeted.
fn open(shared: &Shared) -> io::Result<(TcpStream, bool)> {
    let socket = TcpStream::connect_timeout(&shared.addr, IO_TIMEOUT)?;
    socket.set_nodelay(true)?;
    socket.set_write_timeout(Some(shared.timeout))?;
    if !shared.greets {
        return Ok((socket, true));
    }
    socket.set_read_timeout(Some(shared.stall))?;
    match greeting(&socket) {
        Ok(()) => Ok((socket, true)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Ok((socket, false))
        }
        Err(e) => Err(e),
    }
}

fn greeting(mut socket: &TcpStream) -> io::Result<()> {
    let mut star = [0u8; 1];
    match socket.read(&mut star)? {
        0 => Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "the server closed the connection before its greeting",
        )),
        _ if star[0] != ACK => Err(mismatch("the greeting", 0, ACK, star[0])),
        _ => Ok(()),
    }
}

/// `stream`: a writer thread sends `^` and then the endless message until
/// the deadline, then half-closes; this thread reads and checks every
/// answer until the server's close.
fn stream(
    shared: &Shared,
    socket: TcpStream,
    deadline: Instant,
    cpus: Option<Vec<usize>>,
    tally: &mut Tally,
) -> io::Result<()> {
    socket.set_read_timeout(Some(shared.timeout))?;
    let writer = socket.try_clone()?;
    let (size, window) = (shared.params.size, shared.send_window.clone());
    let sender = thread::Builder::new()
        .name("load-writer".into())
        .stack_size(STACK)
        .spawn(move || {
            pin(cpus.as_deref());
            let cpu = thread_cpu();
            let sent = write_stream(writer, &window, size, deadline);
            (sent, thread_cpu().saturating_sub(cpu))
        })?;
    let read = read_stream(shared, &socket, deadline, tally);
    if read.is_err() {
        // The writer may be blocked on a full socket: unblock it.
        let _ = socket.shutdown(Shutdown::Both);
    }
    let (sent, cpu) = sender
        .join()
        .map_err(|_| io::Error::other("the writer thread panicked"))?;
    tally.cpu += cpu;
    let answered = read?;
    let sent = sent?;
    if answered != sent {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("{sent} bytes sent, but {answered} answered before the close"),
        ));
    }
    Ok(())
}

/// Message bytes written (the `^` not counted), or the first error.
fn write_stream(
    mut socket: TcpStream,
    window: &[u8],
    size: usize,
    deadline: Instant,
) -> io::Result<u64> {
    socket.write_all(&[MSG_START])?;
    let mut sent = 0u64;
    loop {
        let at = (sent % PATTERN_LEN as u64) as usize;
        let n = socket.write(&window[at..at + size])?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        sent += n as u64;
        if Instant::now() >= deadline {
            socket.shutdown(Shutdown::Write)?;
            return Ok(sent);
        }
    }
}

/// Answer bytes read and checked until the server's close.
fn read_stream(
    shared: &Shared,
    mut socket: &TcpStream,
    deadline: Instant,
    tally: &mut Tally,
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut prefix_owed = usize::from(shared.peer == Peer::Echo);
    let mut answered = 0u64;
    loop {
        let n = socket.read(&mut buf)?;
        if n == 0 {
            return Ok(answered);
        }
        let now = Instant::now();
        let mut bytes = &buf[..n];
        if prefix_owed > 0 {
            if bytes[0] != MSG_START {
                return Err(mismatch("the answer", 0, MSG_START, bytes[0]));
            }
            prefix_owed = 0;
            bytes = &bytes[1..];
        }
        let at = (answered % PATTERN_LEN as u64) as usize;
        same_bytes(
            "the answer",
            answered,
            &shared.answer_window[at..at + bytes.len()],
            bytes,
        )?;
        if answered == 0 && !bytes.is_empty() && now < deadline {
            tally.served_at_once += 1;
        }
        answered += bytes.len() as u64;
        tally.ops += bytes.len() as u64;
        tally.last = Some(now);
    }
}

/// `pingpong`: a request, its whole answer, again until the deadline;
/// then the half-close and the server's close.
fn pingpong(
    shared: &Shared,
    mut socket: TcpStream,
    deadline: Instant,
    tally: &mut Tally,
) -> io::Result<()> {
    socket.set_read_timeout(Some(shared.timeout))?;
    let (mut req, mut want) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; READ_BUF];
    for seq in 0.. {
        shared.request(Role::Ping, seq, &mut req, &mut want);
        let sent_at = Instant::now();
        socket.write_all(&req)?;
        let mut got = 0;
        while got < want.len() {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("the server closed the connection in an answer, after {got} bytes"),
                ));
            }
            let fits = n.min(want.len() - got);
            same_bytes(
                "an answer",
                got as u64,
                &want[got..got + fits],
                &buf[..fits],
            )?;
            if n > fits {
                return Err(unasked(buf[fits]));
            }
            got += n;
        }
        let now = Instant::now();
        tally.ops += 1;
        tally.last = Some(now);
        tally.latency.saturating_record(micros(now - sent_at));
        if seq == 0 && now < deadline {
            tally.served_at_once += 1;
        }
        if now >= deadline {
            break;
        }
    }
    socket.shutdown(Shutdown::Write)?;
    match socket.read(&mut buf)? {
        0 => Ok(()),
        _ => Err(unasked(buf[0])),
    }
}

/// The scenarios this client runs, and the counts it takes: what a run
/// asks of it beyond them is refused before it starts.
pub(super) fn check(scenario: Scenario, count: usize) -> Result<(), String> {
    if !matches!(scenario, Scenario::Stream | Scenario::Pingpong) {
        return Err(format!(
            "the threads client runs stream and pingpong, not {scenario}; use the engine"
        ));
    }
    if count > MAX_CONNECTIONS {
        return Err(format!(
            "the threads client runs at most {MAX_CONNECTIONS} connections (a thread each, \
             two when streaming), not {count}; use the engine"
        ));
    }
    Ok(())
}
