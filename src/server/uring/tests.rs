//! The cases only this model has: a provided-buffer ring that runs dry,
//! the cap kept by one-shot receives, a burst that finds the server full,
//! the hand-off between rings, and a ring that fails.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown as Half, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::shared::Pool;
use super::*;
use crate::server::config::OverLimit;
use crate::server::counters::Summary;
use crate::server::kernel;
use crate::server::listener;
use crate::server::model::{Model, Settings};

const PATIENCE: Duration = Duration::from_secs(10);

/// Whether io_uring runs here; if not, the test says so and is skipped.
fn runs_here() -> bool {
    match kernel::io_uring_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: model uring: {e}");
            false
        }
    }
}

struct Running {
    addr: std::net::SocketAddr,
    state: Arc<ServerState>,
    events: Arc<RingEvents>,
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
    let state = ServerState::for_test(config);
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    before(addr);
    let events = Arc::<RingEvents>::default();
    let thread = {
        let (state, events) = (Arc::clone(&state), Arc::clone(&events));
        thread::spawn(move || run_tuned(listener, &state, &settings, tuning, events))
    };
    Running {
        addr,
        state,
        events,
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
        self.state.shutdown.trigger();
        let ended = self.thread.join().expect("the server thread");
        (self.state.counters.summary(), ended)
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

/// The size of the buffers the rings used: a quarter of it if they were
/// taken whole.
fn buffer_size(tuning: &Tuning, events: &RingEvents) -> usize {
    let size = tuning.buffers.size as usize;
    match events.whole_buffers.load(Ordering::Relaxed) {
        true => size / 4,
        false => size,
    }
}

#[test]
fn a_dry_buffer_ring_parks_receives_and_loses_nothing() {
    if !runs_here() {
        return;
    }
    // Two buffers of 64 bytes (or eight of 16) for eight clients sending
    // 4 KiB each at once, and two for their one-shot receives.
    let tuning = Tuning {
        buffers: Pool { count: 2, size: 64 },
        once: Pool { count: 2, size: 64 },
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
    let parked = server.events.parked.load(Ordering::Relaxed);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!((summary.served, summary.failed), (8, 0), "{summary:?}");
    assert_eq!((summary.bytes_in, summary.bytes_out), (8 * 4097, 8 * 4097));
    assert!(
        parked > 0,
        "the ring never ran dry: the test tested nothing"
    );
}

/// Two clients each send a short request, wait for its answer, then
/// stream 1 MiB in writes of odd sizes while reading the answers. Returns
/// what the rings did.
fn stream(tuning: Tuning) -> Arc<RingEvents> {
    const TOTAL: usize = 1 << 20;
    let server = serve(uring(1, 64 << 10), tuning);
    let clients: Vec<_> = (0..2u8)
        .map(|seed| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut c = connect(addr);
                greeted(&mut c);
                let (sent, want) = message(TOTAL, seed);
                // A receive of 10 bytes leaves most of its buffer to the
                // next one, if buffers are consumed incrementally.
                c.write_all(&sent[..10]).unwrap();
                let mut first = [0u8; 9];
                c.read_exact(&mut first).unwrap();
                assert_eq!(first, want[..9]);
                let writer = {
                    let mut c = c.try_clone().unwrap();
                    thread::spawn(move || {
                        for piece in sent[10..].chunks(1000 + usize::from(seed) * 333) {
                            c.write_all(piece).unwrap();
                        }
                        c.shutdown(Half::Write).unwrap();
                    })
                };
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert!(
                    got == want[9..],
                    "client {seed}: {} bytes, not its answers",
                    got.len()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let events = Arc::clone(&server.events);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!((summary.served, summary.failed), (2, 0), "{summary:?}");
    let each = 1 + TOTAL as u64;
    assert_eq!((summary.bytes_in, summary.bytes_out), (2 * each, 2 * each));
    events
}

/// Four buffers of 4 KiB consumed incrementally, or sixteen of 1 KiB
/// taken whole.
fn small_buffers(incremental: bool) -> Tuning {
    Tuning {
        buffers: Pool {
            count: 4,
            size: 4096,
        },
        incremental,
        ..Tuning::default()
    }
}

#[test]
fn a_stream_larger_than_any_buffer_arrives_intact_through_incremental_buffers() {
    if !runs_here() {
        return;
    }
    let events = stream(small_buffers(true));
    if events.whole_buffers.load(Ordering::Relaxed) {
        eprintln!("this kernel has no incremental buffers (before Linux 6.12): taken whole");
    } else {
        assert!(
            events.shared_buffers.load(Ordering::Relaxed) > 0,
            "no receive left part of its buffer to the next"
        );
    }
}

#[test]
fn long_answers_go_in_two_sends_and_arrive_in_order() {
    if !runs_here() {
        return;
    }
    let events = stream(Tuning::default());
    assert!(events.split.load(Ordering::Relaxed) > 0, "never split");
}

#[test]
fn without_incremental_buffers_each_receive_takes_a_buffer_whole() {
    if !runs_here() {
        return;
    }
    let events = stream(small_buffers(false));
    assert!(events.whole_buffers.load(Ordering::Relaxed));
    assert_eq!(events.shared_buffers.load(Ordering::Relaxed), 0);
}

/// A client sends 32 MiB and reads nothing until the server holds a cap's
/// worth of answers for it; then it reads everything. Returns the most
/// answer bytes held for it, and what its rings did.
fn flood_into_a_non_reader(tuning: Tuning, cap: usize) -> (Summary, Arc<RingEvents>) {
    const TOTAL: usize = 32 << 20;
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
    wait_until(|| server.state.counters.summary().max_buffered >= cap as u64);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == want, "{} bytes, not the answers", got.len());
    let events = Arc::clone(&server.events);
    let (summary, ended) = server.stop();
    ended.unwrap();
    assert_eq!((summary.served, summary.failed), (1, 0), "{summary:?}");
    (summary, events)
}

#[test]
fn a_flood_is_held_to_the_cap_by_one_shot_receives_cancelled_once_at_most() {
    if !runs_here() {
        return;
    }
    for incremental in [true, false] {
        let tuning = Tuning {
            incremental,
            ..Tuning::default()
        };
        let cap = 8 << 10;
        let (summary, events) = flood_into_a_non_reader(tuning, cap);
        // Answers past the cap come from one multishot buffer at most,
        // before the one cancellation lands; what arrives meanwhile waits
        // as unread input.
        let bound = (cap + buffer_size(&tuning, &events)) as u64;
        assert!(
            summary.max_buffered <= bound,
            "{} > {bound}",
            summary.max_buffered
        );
        // The first receive is multishot; once answers pile up past the
        // cap it is cancelled, and every receive after it is one-shot,
        // sized to the room under the cap: what the multishot receive took
        // before its cancellation landed is at most a few of its buffers,
        // and the rest of 32 MiB through a cap of 8 KiB takes thousands of
        // them, none cancelled.
        let (paused, once) = (
            events.paused.load(Ordering::Relaxed),
            events.once.load(Ordering::Relaxed),
        );
        assert_eq!(paused, 1, "cancellations");
        assert!(once >= 1024, "{once} one-shot receives");
    }
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
    wait_until(|| server.events.waited.load(Ordering::Relaxed) >= 1);
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
    server.state.shutdown.trigger();
    for c in clients.iter_mut().skip(1) {
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert_eq!(rest, b"", "no `*` for a client never served");
    }
    let waited = server.events.waited.load(Ordering::Relaxed);
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
    assert_eq!(server.events.handed.load(Ordering::Relaxed), 2);
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
    let handed = server.events.handed.load(Ordering::Relaxed);
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
    let state = ServerState::for_test(config);
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let addr = listener.local_addr().unwrap();
    let wake = Arc::new(EventFd::new().unwrap());
    let shared = Arc::new(Shared {
        acceptor_waits: AtomicBool::new(false),
        wake_acceptor: Arc::clone(&wake),
        events: Arc::default(),
    });
    let (ring_fd, ring_is) = mpsc::channel();
    let ring = {
        let state = Arc::clone(&state);
        thread::spawn(move || {
            let tuning = Tuning::default();
            let ring = Ring::new(&tuning, tick(&state.config), BACKOFF, wake)?;
            let acceptor = Acceptor::new(listener, Vec::new(), &state, &shared);
            let cap = settings.outbound_cap;
            let ring_loop = RingLoop::new(
                0,
                ring,
                &state,
                &shared,
                Feed::Acceptor(Box::new(acceptor)),
                None,
                cap,
            );
            ring_fd.send(ring_loop.ring.uring.as_raw_fd()).unwrap();
            ring_loop.run()
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
    let summary = state.counters.summary();
    assert_eq!((summary.failed, summary.clients_now), (1, 0), "{summary:?}");
}

#[test]
fn a_client_is_its_session_its_socket_and_four_bytes() {
    // Ten thousand idle clients each hold one: their idle memory is
    // measured against `event`'s, whose client is the same plus 3 bytes.
    let (client, session) = (
        std::mem::size_of::<client::Client>(),
        std::mem::size_of::<crate::server::session::Session>(),
    );
    assert!(
        client <= session + 8,
        "{client} bytes, its session {session}"
    );
}
