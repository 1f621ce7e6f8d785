//! A client's fault ends that client only.

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;

use common::*;
use concur::server::{Config, Model, Settings, ThreadSettings};
use socket2::SockRef;

/// Sends up to `limit` bytes of one message without reading any answer,
/// stopping early once the connection's buffers are full, then resets the
/// connection (SO_LINGER 0). Returns how much was sent.
fn flood_then_reset(mut s: TcpStream, limit: usize) -> usize {
    s.write_all(b"^").unwrap();
    s.set_nonblocking(true).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < limit {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("flooding: {e}"),
        }
    }
    SockRef::from(&s)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(s);
    sent
}

#[test]
fn a_reset_with_replies_pending_ends_only_that_client() {
    for model in models() {
        // One worker: the client after the reset is served by the very
        // thread that met the reset.
        let server = start_with(Config::new(model).threads(1));
        let addr = server.local_addr();

        let bad = connect_served(addr);
        let sent = flood_then_reset(bad, 1 << 20);
        assert!(sent > 0);

        let (sends, want) = VECTORS[0];
        assert_eq!(session(addr, sends), want, "{model}: after a reset");

        let summary = server.stop();
        assert_eq!(summary.served, 1, "{model}");
        assert_eq!(summary.failed, 1, "{model}: the reset client");
    }
}

#[test]
fn a_reset_does_not_disturb_clients_being_served() {
    for model in models().into_iter().filter(|&m| serves_at_once(m) >= 2) {
        let server = start_with(small_config(model));
        let addr = server.local_addr();
        let mut good = connect_served(addr);
        round_trip(&mut good);

        let bad = connect_served(addr);
        flood_then_reset(bad, 1 << 20);

        // The pool's second worker is free again once the reset is noticed;
        // the well-behaved client never noticed anything.
        for _ in 0..10 {
            round_trip(&mut good);
        }
        let mut next = connect_served(addr);
        round_trip(&mut next);
        drop((good, next));
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (2, 1), "{model}");
    }
}

#[test]
fn a_half_closed_client_gets_every_byte_then_eof() {
    for model in models() {
        let server = start(model);
        // `session` shuts down the client's write side after its sends.
        assert_eq!(session(server.local_addr(), &[b"^abc"]), b"bcd", "{model}");
        let big: Vec<u8> = std::iter::once(b'^')
            .chain((0..100_000u32).map(|i| b"xyz"[i as usize % 3]))
            .collect();
        let want: Vec<u8> = big[1..].iter().map(|b| b + 1).collect();
        assert_eq!(session(server.local_addr(), &[&big]), want, "{model}");
        server.stop();
    }
}

#[test]
fn a_client_that_leaves_before_its_greeting_costs_nothing() {
    for model in models() {
        let server = start_with(small_config(model));
        let addr = server.local_addr();
        for _ in 0..20 {
            let s = connect(addr);
            SockRef::from(&s)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
        }
        let (sends, want) = VECTORS[1];
        assert_eq!(session(addr, sends), want, "{model}");
        let summary = server.stop();
        // Each is counted once: served, failed, or (if the pool's worker
        // only got to it after the stop) closed at shutdown.
        assert_eq!(summary.ended(), summary.accepted, "{model}: {summary:?}");
        assert!(summary.served >= 1, "{model}: {summary:?}");
    }
}

/// The largest stack the server takes, 1 TiB: more than the kernel's
/// overcommit heuristic (its default) maps on a machine with less memory
/// than that, so creating a thread with it fails for real.
const UNMAPPABLE_STACK: usize = 1 << 40;

#[test]
fn a_thread_that_cannot_be_started_costs_only_its_client() {
    let mut config = Config::new(Model::Thread);
    config.settings = Settings::Thread(ThreadSettings {
        stack_size: Some(UNMAPPABLE_STACK),
    });
    let server = start_with(config);
    // Each client is closed without its greeting, and the server goes on
    // accepting the next.
    for _ in 0..3 {
        let mut c = connect(server.local_addr());
        assert_eq!(read_to_end(&mut c), b"", "closed without a greeting");
    }
    let summary = server.stop();
    assert_eq!(
        (summary.accepted, summary.failed, summary.served),
        (3, 3, 0)
    );
}

#[test]
fn a_pool_that_cannot_start_its_workers_says_so() {
    let mut config = Config::new(Model::Pool).threads(2);
    config.pool_mut().unwrap().stack_size = Some(UNMAPPABLE_STACK);
    let listener = concur::server::listener::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let error = concur::server::run(
        listener,
        config.check().unwrap(),
        concur::shutdown::Shutdown::new(),
    )
    .expect_err("no workers, no server");
    assert!(
        error
            .to_string()
            .contains("cannot start the pool's workers"),
        "{error}"
    );
}
