//! A session driven by hand, without a loop: kept input, the
//! responder's limit, and a number handed back.

use super::*;
use crate::server::config::Config;
use crate::server::model::Model;
use crate::server::responder::Protocol;
use std::sync::Arc;
use std::time::Duration;

/// A session driven by hand, without a loop: the server's side of a
/// real connection, and the client's, kept open.
fn hand_session(protocol: Protocol) -> (Session, Arc<ServerState>, [TcpStream; 2]) {
    let mut config = Config::new(Model::Uring);
    config.protocol = protocol;
    let state = ServerState::for_test(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (socket, addr) = listener.accept().unwrap();
    let permit = state.registry.try_permit().unwrap();
    let guard = state.registry.enter(&socket, addr, permit);
    let session = Session::new(guard, &state, Instant::now());
    (session, state, [socket, client])
}

/// Sends everything the session asks to, as a socket that takes it all
/// would.
fn send_all(s: &mut Session, state: &ServerState, spares: &mut Spares) -> usize {
    let mut total = 0;
    while let Some(bytes) = s.next_send() {
        let len = bytes.len();
        s.sent(len, Instant::now(), state, spares);
        total += len;
    }
    total
}

#[test]
fn a_line_too_long_in_kept_input_ends_the_client_with_nothing_left_over() {
    // Input kept while the answers were over the cap is answered a
    // room's worth at a time; when a chunk ends in a line too long, what
    // follows it must go, or the client waits for ever to be finished.
    let cap = 100;
    let (mut s, state, _sockets) = hand_session(Protocol::Prime);
    let mut spares = Spares::default();
    let now = Instant::now();
    let test = s.receive(&b"4\n".repeat(20), now, &state, &mut spares, cap);
    assert_eq!(test.unwrap(), None);
    assert!(
        s.blocked(cap),
        "200 bytes of answers are over the cap of 100"
    );
    let mut kept = b"4\n".repeat(30);
    kept.extend([b'x'; 200]);
    kept.extend(b"\n4\n4\n");
    let test = s.receive(&kept, now, &state, &mut spares, cap);
    assert_eq!(test.unwrap(), None);
    let mut sent = 0;
    for _ in 0..10 {
        sent += send_all(&mut s, &state, &mut spares);
        let test = s.answer_unread(&state, &mut spares, cap);
        assert_eq!(test.unwrap(), None);
        if s.finished().is_some() {
            break;
        }
    }
    sent += send_all(&mut s, &state, &mut spares);
    let ending = b"error: line longer than 64 bytes; closing\n".len();
    assert_eq!(sent, 50 * b"composite\n".len() + ending);
    assert!(
        matches!(s.finished(), Some(Outcome::Failed(_))),
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
    std::thread::spawn(move || {
        let (mut s, state, _sockets) = hand_session(Protocol::Prime);
        let mut spares = Spares::default();
        let input = b"4\n".repeat(lines);
        let test = s.receive(&input, Instant::now(), &state, &mut spares, cap);
        assert_eq!(test.unwrap(), None);
        let stopped = s.blocked(cap);
        assert_eq!(s.answer_unread(&state, &mut spares, cap).unwrap(), None);
        let mut sent = 0;
        for _ in 0..10 {
            sent += send_all(&mut s, &state, &mut spares);
            assert_eq!(s.answer_unread(&state, &mut spares, cap).unwrap(), None);
        }
        sent += send_all(&mut s, &state, &mut spares);
        let _ = done.send((stopped, sent, s.blocked(cap)));
    });
    let (stopped, sent, blocked) = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("answering at the responder's limit made no progress");
    assert!(stopped, "at the responder's limit, under the cap");
    assert_eq!(sent, lines * b"composite\n".len());
    assert!(!blocked);
}

#[test]
fn a_large_number_is_handed_back_and_the_rest_waits_for_its_answer() {
    let (mut s, state, _sockets) = hand_session(Protocol::Prime);
    let mut spares = Spares::default();
    let input = b"7\n1000000000039\n8\n";
    let test = s.receive(input, Instant::now(), &state, &mut spares, 1 << 16);
    assert_eq!(test.unwrap(), Some(1_000_000_000_039));
    assert!(s.is_computing() && s.has_unread());
    let later = Instant::now() + Duration::from_secs(3600);
    assert!(s.expired(later, &state.config).is_none(), "waiting for us");
    s.answered(1_000_000_000_039, true, &state, &mut spares)
        .unwrap();
    assert_eq!(s.answer_unread(&state, &mut spares, 1 << 16).unwrap(), None);
    let mut answers = Vec::new();
    while let Some(bytes) = s.next_send() {
        answers.extend_from_slice(bytes);
        let n = bytes.len();
        s.sent(n, Instant::now(), &state, &mut spares);
    }
    assert_eq!(answers, b"prime\nprime\ncomposite\n");
    s.input_ended();
    assert!(matches!(s.finished(), Some(Outcome::Done)));
}

#[test]
fn the_greeting_goes_first_and_holds_no_buffer() {
    let (mut s, state, _sockets) = hand_session(Protocol::Bytes);
    let mut spares = Spares::default();
    assert_eq!(s.pending(), 1);
    assert!(s.io.is_none(), "buffers taken for the greeting");
    // An answer made before the greeting went still comes after it.
    let test = s.receive(b"^ab$", Instant::now(), &state, &mut spares, 1 << 16);
    assert_eq!(test.unwrap(), None);
    assert_eq!(s.next_send(), Some(&b"*"[..]));
    s.sent(1, Instant::now(), &state, &mut spares);
    assert_eq!(s.next_send(), Some(&b"bc"[..]));
    assert_eq!(send_all(&mut s, &state, &mut spares), 2);
    assert_eq!(s.pending(), 0);
    assert!(s.io.is_none(), "buffers kept once all was sent");
    assert_eq!(state.counters.summary().bytes_out, 3);
}

#[test]
fn a_client_handed_over_once_the_server_stops_is_closed_at_shutdown() {
    let state = ServerState::for_test(Config::new(Model::Event));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (handing, incoming) = crossbeam_channel::bounded(HANDOFF);
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let (socket, addr) = listener.accept().unwrap();
        let permit = state.registry.try_permit().unwrap();
        let guard = state.registry.enter(&socket, addr, permit);
        handing.send((guard, socket)).unwrap();
    }
    // The first is taken while serving; the server stops; the rest are not.
    let mut handed = Handed::from(&incoming, &state.shutdown);
    let first = handed.next().expect("the first, handed on");
    state.shutdown.trigger();
    assert!(handed.next().is_none(), "none is handed on once stopping");
    assert!(!handed.closed, "the acceptor still holds the channel");
    assert_eq!(state.counters.summary().closed_at_shutdown, 2);
    drop(handing);
    let mut after = Handed::from(&incoming, &state.shutdown);
    assert!(after.next().is_none() && after.closed, "closed once let go");
    drop(first);
}
