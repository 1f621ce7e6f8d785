//! The loop's fair turns, and what a failed poll does.

use super::client::READS_PER_TURN;
use super::*;
use crate::server::config::Config;
use crate::server::model::Model;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::thread;

/// A served connection: the client side, and the server side as the
/// acceptor would hand it on.
fn accept_one(listener: &TcpListener) -> (std::net::TcpStream, std::net::TcpStream, SocketAddr) {
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (server, peer) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (client, server, peer)
}

#[test]
fn a_client_that_never_runs_dry_gets_turns_not_the_loop() {
    let state = ServerState::for_test(Config::new(Model::Event));
    let settings = EventSettings::default();
    let (mut event_loop, _clients, _waker) = EventLoop::new(&state, &settings, None).unwrap();
    // Small reads, so that a few turns' worth fits in the kernel's
    // receive queue and the turn's bound, not the queue, ends a turn.
    const READ: usize = 256;
    event_loop.buf = vec![0; READ].into_boxed_slice();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, server, peer) = accept_one(&listener);
    let permit = state.registry.try_permit().unwrap();
    event_loop.add(state.registry.enter(&server, peer, permit), server);
    let mut star = [0u8; 1];
    client.read_exact(&mut star).unwrap();
    assert_eq!(&star, b"*");

    // Bytes outside any message: read, answered with nothing.
    let turn = READS_PER_TURN * READ;
    client.write_all(&vec![b'x'; 3 * turn]).unwrap();
    let (id, _) = event_loop.clients.iter().next().unwrap();
    let mut peek = vec![0u8; 3 * turn];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued = event_loop
            .clients
            .get(id)
            .unwrap()
            .socket
            .peek(&mut peek)
            .unwrap_or(0);
        if queued == 3 * turn {
            break;
        }
        assert!(Instant::now() < deadline, "only {queued} bytes arrived");
        thread::sleep(Duration::from_millis(1));
    }

    // Each turn reads its bound and leaves the client to come back.
    for turns in 1..=2 {
        event_loop.drive(id);
        assert_eq!(state.counters.summary().bytes_in, (turns * turn) as u64);
        assert_eq!(std::mem::take(&mut event_loop.again), [id]);
    }
}

#[test]
fn a_loop_whose_poll_fails_closes_its_clients_and_says_why() {
    let state = ServerState::for_test(Config::new(Model::Event));
    let settings = EventSettings::default();
    let (mut event_loop, _clients, _waker) = EventLoop::new(&state, &settings, None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, server, peer) = accept_one(&listener);
    let permit = state.registry.try_permit().unwrap();
    event_loop.add(state.registry.enter(&server, peer, permit), server);
    let mut star = [0u8; 1];
    client.read_exact(&mut star).unwrap();

    // Its epoll descriptor replaced (atomically, so no other test can
    // be handed the number) by one that is not an epoll instance.
    let null = std::fs::File::open("/dev/null").unwrap();
    assert_ne!(
        unsafe { libc::dup2(null.as_raw_fd(), event_loop.poll.as_raw_fd()) },
        -1
    );
    let error = event_loop.run().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EINVAL), "{error}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert_eq!(rest, b"", "closed by its failed loop");
    let summary = state.counters.summary();
    assert_eq!((summary.failed, summary.clients_now), (1, 0));
}
