//! The engine against real servers and against servers that misbehave.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::bench::echo::Peer;
use crate::protocol::ACK;
use crate::server::{self, Config, Model};

fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn plan(scenario: Scenario, addr: SocketAddr, count: usize) -> Plan {
    let speaks = Speaks::Bytes(Peer::Concur);
    Plan::new(scenario, addr, speaks, count, Duration::from_millis(100))
}

/// Greets like concur, then does `then` with the connection.
fn one_shot(then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> SocketAddr {
    let listener = local();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&[ACK]);
            then(s);
        }
    });
    addr
}

#[test]
fn a_stream_is_answered_byte_for_byte_whatever_the_write_size() {
    let server = server::start(local(), Config::new(Model::Event).check().unwrap()).unwrap();
    let mut p = plan(Scenario::Stream, server.local_addr(), 2);
    // Not a divisor of the pattern's period: writes straddle it.
    p.params.size = 7_777;
    let outcome = run(&p).unwrap();
    assert_eq!(outcome.errors, 0, "{:?}", outcome.error_samples);
    assert!(outcome.ops >= 2 * 7_777, "{}", outcome.ops);
    let summary = server.stop();
    // Every message byte answered, plus the `^` per connection read.
    assert_eq!(summary.bytes_in, outcome.ops + 2);
    assert_eq!(summary.bytes_out, outcome.ops + 2);
}

#[test]
fn a_wrong_byte_is_an_error_with_where_it_was() {
    // Echoes what it gets: the `^` comes back where `b` is due.
    let addr = one_shot(|s| {
        let _ = std::io::copy(&mut &s, &mut &s);
    });
    let outcome = run(&plan(Scenario::Pingpong, addr, 1)).unwrap();
    assert_eq!(outcome.errors, 1);
    assert_eq!(outcome.ops, 0);
    let e = &outcome.error_samples[0];
    assert!(e.contains("wrong byte in an answer at offset 0"), "{e}");
    assert!(e.contains("expected 0x62, got 0x5e"), "{e}");
}

#[test]
fn a_server_that_closes_early_is_an_error() {
    let addr = one_shot(|mut s| {
        let _ = s.read(&mut [0u8; 10]);
    });
    let outcome = run(&plan(Scenario::Pingpong, addr, 1)).unwrap();
    assert_eq!(outcome.errors, 1);
    // Closing with the request partly unread may reset instead.
    let e = &outcome.error_samples[0];
    assert!(
        e.contains("closed the connection") || e.contains("reset"),
        "{e}"
    );
}

#[test]
fn a_server_that_never_answers_is_an_error_after_the_timeout() {
    let (tx, rx) = mpsc::channel::<()>();
    let addr = one_shot(move |s| {
        // Holds the connection open, silent, until the test is done.
        let _ = rx.recv();
        drop(s);
    });
    let mut p = plan(Scenario::Pingpong, addr, 1);
    p.timeout = Duration::from_millis(300);
    let outcome = run(&p).unwrap();
    drop(tx);
    assert_eq!(outcome.errors, 1);
    let e = &outcome.error_samples[0];
    assert!(e.contains("nothing came for 300ms in an answer"), "{e}");
}

#[test]
fn a_refused_connection_is_an_error_not_a_hang() {
    // A port that was just free: nobody listens on it.
    let addr = local().local_addr().unwrap();
    let outcome = run(&plan(Scenario::Pingpong, addr, 3)).unwrap();
    assert_eq!(outcome.errors, 3);
    assert!(
        outcome.error_samples[0].contains("cannot connect"),
        "{:?}",
        outcome.error_samples
    );
}

#[test]
fn plans_that_cannot_run_are_refused() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (p, why) in [
        (plan(Scenario::Pingpong, addr, 0), "at least one connection"),
        (plan(Scenario::Idle, addr, 1), "engine::hold"),
        (plan(Scenario::Cpu, addr, 1), "primality"),
    ] {
        let e = run(&p).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn idle_connections_are_held_as_far_as_the_server_greets() {
    // A pool of two workers greets two; the rest wait in its backlog.
    let config = Config::new(Model::Pool).threads(2);
    let server = server::start(local(), config.check().unwrap()).unwrap();
    let held = hold(server.local_addr(), 5, 1).unwrap();
    assert_eq!((held.connected, held.greeted, held.unopened), (5, 2, 0));
    assert!(held.errors.is_empty(), "{:?}", held.errors);
    drop(held);
    // The two greeted were served; those that waited may reach a
    // worker before the stop, or be closed by it.
    let summary = server.stop();
    assert!((2..=5).contains(&summary.served), "{summary}");
}
