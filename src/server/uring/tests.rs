//! The cases only this model has: a provided-buffer ring that runs dry,
//! the cap kept with and without a limit on the receive, a burst that
//! finds the server full, the hand-off between rings, and a ring that
//! fails.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown as Half, TcpStream};
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::*;
use crate::server::{Model, OverLimit, Settings, Stats, Summary, listener, snapshot};

const PATIENCE: Duration = Duration::from_secs(10);

/// Whether io_uring runs here; if not, the test says so and is skipped.
fn runs_here() -> bool {
    match check() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: model uring: {e}");
            false
        }
    }
}

struct Running {
    addr: std::net::SocketAddr,
    ctx: Arc<ServerState>,
    stats: Arc<Stats>,
    counts: Arc<Counts>,
    thread: JoinHandle<io::Result<()>>,
}

fn uring(rings: usize, cap: usize) -> Config {
    let mut config = Config::new(Model::Uring);
    let Settings::Uring(settings) = &mut config.settings else {
        unreachable!("a uring config")
    };
    settings.rings = rings;
    settings.outbound_cap = cap;
    config
}

/// Serves on a listener bound now; with `before`, clients connect to it
/// before the rings start, so that they wait in its backlog together.
fn serve_after(
    config: Config,
    tuning: Tuning,
    before: impl FnOnce(std::net::SocketAddr),
) -> Running {
    let Settings::Uring(settings) = config.settings.clone() else {
        unreachable!("a uring config")
    };
    let (ctx, stats) = ServerState::for_test(config);
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    before(addr);
    let counts = Arc::<Counts>::default();
    let thread = {
        let (ctx, counts) = (Arc::clone(&ctx), Arc::clone(&counts));
        thread::spawn(move || run_tuned(listener, &ctx, &settings, tuning, counts))
    };
    Running {
        addr,
        ctx,
        stats,
        counts,
        thread,
    }
}

fn serve(config: Config, tuning: Tuning) -> Running {
    serve_after(config, tuning, |_| {})
}

impl Running {
    /// Stops the server once its clients have gone (there is no drain
    /// here to close them).
    fn stop(self) -> (Summary, io::Result<()>) {
        self.ctx.shutdown.trigger();
        let ended = self.thread.join().expect("the server thread");
        (snapshot(&self.stats), ended)
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.set_write_timeout(Some(PATIENCE)).unwrap();
    c
}

fn greeted(c: &mut TcpStream) {
    let mut star = [0u8; 1];
    c.read_exact(&mut star).unwrap();
    assert_eq!(&star, b"*");
}

/// Nothing arrives for a while: the window bounds how long the test
/// looks; a correct server passes whatever it is.
fn silent(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let quiet = matches!(c.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    quiet
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "condition never reached");
        thread::sleep(Duration::from_millis(2));
    }
}

/// `^`, then `n` bytes that each answer as `b + 1`.
fn message(n: usize, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let body: Vec<u8> = (0..n)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect();
    let answer = body.iter().map(|b| b + 1).collect();
    (std::iter::once(b'^').chain(body).collect(), answer)
}

#[test]
fn a_dry_buffer_ring_parks_receives_and_loses_nothing() {
    if !runs_here() {
        return;
    }
    // Two buffers of 64 bytes for eight clients sending 4 KiB each at once.
    let tuning = Tuning {
        buffers: 2,
        buffer_size: 64,
        ..Tuning::default()
    };
    let server = serve(uring(1, 64 << 10), tuning);
    let clients: Vec<_> = (0..8u8)
        .map(|seed| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = connect(addr);
                greeted(&mut c);
                let (sent, want) = message(4096, seed);
                c.write_all(&sent).unwrap();
                c.shutdown(Half::Write).unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                assert!(
                    got == want,
                    "client {seed}: {} bytes, not its answers",
                    got.len()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let parked = server.counts.parked.load(Ordering::Relaxed);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!((summary.served, summary.failed), (8, 0), "{summary:?}");
    assert_eq!((summary.bytes_in, summary.bytes_out), (8 * 4097, 8 * 4097));
    assert!(
        parked > 0,
        "the ring never ran dry: the test tested nothing"
    );
}

/// A client sends 1 MiB and reads nothing until the server holds a cap's
/// worth of answers for it; then it reads everything. Returns the most
/// answer bytes held for it, and the server's counts.
fn flood_into_a_non_reader(tuning: Tuning, cap: usize) -> (Summary, Arc<Counts>) {
    const TOTAL: usize = 1 << 20;
    let server = serve(uring(1, cap), tuning);
    let mut c = connect(server.addr);
    greeted(&mut c);
    let (sent, want) = message(TOTAL, 0);
    let writer = {
        let mut c = c.try_clone().unwrap();
        thread::spawn(move || {
            c.write_all(&sent).unwrap();
            c.shutdown(Half::Write).unwrap();
        })
    };
    // The server reaches the cap by itself, as long as nobody reads.
    wait_until(|| snapshot(&server.stats).max_buffered >= cap as u64);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == want, "{} bytes, not the answers", got.len());
    let counts = Arc::clone(&server.counts);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!((summary.served, summary.failed), (1, 0), "{summary:?}");
    (summary, counts)
}

#[test]
fn with_a_limit_on_the_receive_the_cap_holds_without_cancelling() {
    if !runs_here() {
        return;
    }
    let tuning = Tuning::default();
    let cap = 8 << 10;
    let (summary, counts) = flood_into_a_non_reader(tuning, cap);
    let bound = (cap + tuning.buffer_size as usize) as u64;
    assert!(
        summary.max_buffered <= bound,
        "{} > {bound}",
        summary.max_buffered
    );
    if counts.limit_refused.load(Ordering::Relaxed) {
        eprintln!("this kernel takes no limit on a receive (before Linux 6.17): cancelled instead");
    } else {
        assert_eq!(
            counts.paused.load(Ordering::Relaxed),
            0,
            "a receive was cancelled"
        );
    }
}

#[test]
fn without_a_limit_the_cap_holds_by_cancelling_and_nothing_is_lost() {
    if !runs_here() {
        return;
    }
    let tuning = Tuning {
        recv_limit: false,
        ..Tuning::default()
    };
    let cap = 8 << 10;
    let (summary, counts) = flood_into_a_non_reader(tuning, cap);
    // Answers past the cap come from one buffer at most; what arrives
    // while the cancellation is on its way waits as unread input.
    let bound = (cap + tuning.buffer_size as usize) as u64;
    assert!(
        summary.max_buffered <= bound,
        "{} > {bound}",
        summary.max_buffered
    );
    assert!(counts.paused.load(Ordering::Relaxed) > 0, "never cancelled");
}

#[test]
fn a_burst_that_finds_the_server_full_waits_in_turn_and_is_counted() {
    if !runs_here() {
        return;
    }
    let mut config = uring(1, 64 << 10);
    config.max_conns = 1;
    config.over_limit = OverLimit::Wait;
    // Four clients wait in the backlog before the ring starts: its first
    // multishot accept takes them at once, with room for one.
    let mut clients = Vec::new();
    let server = serve_after(config, Tuning::default(), |addr| {
        clients = (0..4).map(|_| connect(addr)).collect();
    });
    greeted(&mut clients[0]);
    wait_until(|| server.counts.waited.load(Ordering::Relaxed) >= 1);
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        assert!(silent(c), "client {i} greeted while the first is served");
    }
    // The first leaves: the longest waiting is greeted, and only it.
    drop(clients.remove(0));
    greeted(&mut clients[0]);
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        assert!(silent(c), "waiting client {i} greeted out of turn");
    }
    // The shutdown closes those still waiting, unserved.
    server.ctx.shutdown.trigger();
    for c in clients.iter_mut().skip(1) {
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert_eq!(rest, b"", "no `*` for a client never served");
    }
    let waited = server.counts.waited.load(Ordering::Relaxed);
    drop(clients);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!(summary.served, 2, "{summary:?}");
    assert_eq!(summary.max_clients, 1, "{summary:?}");
    // Every client accepted is counted once: those taken from ring 0's
    // queue, and those still in it at the shutdown.
    assert_eq!(summary.accepted, 1 + waited, "{summary:?}");
    assert_eq!(summary.closed_at_shutdown, waited - 1, "{summary:?}");
    assert_eq!(summary.ended(), summary.accepted, "{summary:?}");
}

#[test]
fn a_client_handed_over_before_its_ring_first_waits_is_served_at_once() {
    if !runs_here() {
        return;
    }
    // No tick within the test's patience: only the hand-off itself can
    // make the other ring take its client.
    let tuning = Tuning {
        tick: Some(Duration::from_secs(3600)),
        ..Tuning::default()
    };
    let mut clients = Vec::new();
    let server = serve_after(uring(2, 64 << 10), tuning, |addr| {
        clients = (0..4).map(|_| connect(addr)).collect();
    });
    for c in &mut clients {
        greeted(c);
    }
    drop(clients);
    assert_eq!(server.counts.handed.load(Ordering::Relaxed), 2);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!(summary.served, 4, "{summary:?}");
}

#[test]
fn ring_zero_hands_every_other_client_to_the_next_ring() {
    if !runs_here() {
        return;
    }
    let server = serve(uring(3, 64 << 10), Tuning::default());
    let mut clients: Vec<_> = (0..9).map(|_| connect(server.addr)).collect();
    for c in &mut clients {
        greeted(c);
        c.write_all(b"^hi$").unwrap();
        let mut got = [0u8; 2];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ij");
    }
    drop(clients);
    let handed = server.counts.handed.load(Ordering::Relaxed);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!(summary.served, 9, "{summary:?}");
    // In turn over three rings: ring 0 keeps one client in three.
    assert_eq!(handed, 6);
}

#[test]
fn a_ring_that_cannot_wait_fails_its_clients_and_says_why() {
    if !runs_here() {
        return;
    }
    let config = uring(1, 64 << 10);
    let Settings::Uring(settings) = config.settings.clone() else {
        unreachable!("a uring config")
    };
    let (ctx, stats) = ServerState::for_test(config);
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    let wake = Arc::new(EventFd::new().unwrap());
    let shared = Arc::new(Shared {
        acceptor_waits: AtomicBool::new(false),
        wake_acceptor: Arc::clone(&wake),
        tuning: Tuning::default(),
        counts: Arc::default(),
    });
    let (ring_fd, ring_is) = mpsc::channel();
    let ring = {
        let ctx = Arc::clone(&ctx);
        thread::spawn(move || {
            let mut worker = Worker::new(0, &ctx, &shared, &settings, None, None, wake)?;
            worker.acceptor = Some(Acceptor::new(listener, Vec::new(), &ctx.config));
            ring_fd.send(worker.ring.as_raw_fd()).unwrap();
            worker.run()
        })
    };
    let ring_fd = ring_is.recv().unwrap();
    let mut c = connect(addr);
    greeted(&mut c);

    // Its descriptor replaced (atomically, so no other test can be handed
    // the number) by one that is not a ring: its next wait fails.
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: both descriptors are open; the ring's number now names
    // /dev/null, and the ring itself lives on in its mappings.
    assert_ne!(unsafe { libc::dup2(null.as_raw_fd(), ring_fd) }, -1);
    c.write_all(b"^hi$").unwrap();
    let error = ring.join().unwrap().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EOPNOTSUPP), "{error}");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert_eq!(rest, b"", "closed by its failed ring");
    let summary = snapshot(&stats);
    assert_eq!((summary.failed, summary.clients_now), (1, 0), "{summary:?}");
}

/// A client driven by hand, without a ring: what it is sent, and its
/// sends completed at once.
fn hand_client(protocol: Protocol) -> (client::Client, Arc<ServerState>, TcpStream) {
    let mut config = uring(1, 64 << 10);
    config.protocol = protocol;
    let (ctx, _) = ServerState::for_test(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (socket, addr) = listener.accept().unwrap();
    let guard = ctx.enter(&socket, ctx.try_permit().unwrap());
    let c = client::Client::new(guard, socket, addr, &ctx, Instant::now());
    (c, ctx, peer)
}

/// Completes every send the client asks for, as the kernel would.
fn send_all(c: &mut client::Client, ctx: &ServerState, spares: &mut client::Spares) -> usize {
    let mut total = 0;
    while let Some((_, len)) = c.next_send() {
        c.send_inflight = true;
        c.sent(len as usize, Instant::now(), ctx, spares);
        total += len as usize;
    }
    total
}

#[test]
fn a_line_too_long_in_kept_input_ends_the_client_with_nothing_left_over() {
    // Input kept while the answers were over the cap is answered a
    // room's worth at a time; when a chunk ends in a line too long, what
    // follows it must go, or the client waits for ever to be finished.
    let cap = 100;
    let (mut c, ctx, _peer) = hand_client(Protocol::Prime);
    let mut spares = client::Spares::new();
    let now = Instant::now();
    c.receive(&b"4\n".repeat(20), now, &ctx, &mut spares, cap, None)
        .unwrap();
    assert!(
        c.blocked(cap),
        "200 bytes of answers are over the cap of 100"
    );
    let mut kept = b"4\n".repeat(30);
    kept.extend([b'x'; 200]);
    kept.extend(b"\n4\n4\n");
    c.receive(&kept, now, &ctx, &mut spares, cap, None).unwrap();
    let mut sent = 0;
    for _ in 0..10 {
        sent += send_all(&mut c, &ctx, &mut spares);
        c.answer_unread(&ctx, &mut spares, cap, None).unwrap();
        if c.finished().is_some() {
            break;
        }
    }
    sent += send_all(&mut c, &ctx, &mut spares);
    let ending = b"error: line longer than 64 bytes; closing\n".len();
    assert_eq!(sent, 50 * b"composite\n".len() + ending);
    assert!(
        matches!(c.finished(), Some(crate::server::conn::Outcome::Failed(_))),
        "the client is finished, as a protocol violation"
    );
}

#[test]
fn answers_at_the_responders_limit_wait_for_a_send_under_a_larger_cap() {
    // Under a cap above 64 KiB, answers that reach the responder's own
    // limit stop the answering (nothing more could be answered) until
    // they are handed to a send; then the rest is answered.
    let cap = 1 << 20;
    let lines = 10_000; // 100,000 bytes of answers
    let (done, finished) = std::sync::mpsc::channel();
    // On a thread of its own: answering that makes no progress spins,
    // and the test must fail rather than hang.
    thread::spawn(move || {
        let (mut c, ctx, _peer) = hand_client(Protocol::Prime);
        let mut spares = client::Spares::new();
        c.receive(
            &b"4\n".repeat(lines),
            Instant::now(),
            &ctx,
            &mut spares,
            cap,
            None,
        )
        .unwrap();
        let stopped = c.blocked(cap);
        c.answer_unread(&ctx, &mut spares, cap, None).unwrap();
        let mut sent = 0;
        for _ in 0..10 {
            sent += send_all(&mut c, &ctx, &mut spares);
            c.answer_unread(&ctx, &mut spares, cap, None).unwrap();
        }
        sent += send_all(&mut c, &ctx, &mut spares);
        let _ = done.send((stopped, sent, c.blocked(cap)));
    });
    let (stopped, sent, blocked) = finished
        .recv_timeout(PATIENCE)
        .expect("answering at the responder's limit made no progress");
    assert!(stopped, "at the responder's limit, under the cap");
    assert_eq!(sent, lines * b"composite\n".len());
    assert!(!blocked);
}
