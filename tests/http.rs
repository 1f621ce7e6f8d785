//! The operator's HTTP port (`serve --http`, or `--metrics`): a scrape is
//! answered within a second while connections drip request heads and
//! hundreds sit silent, in every model, and the protocol's clients go on;
//! `HEAD` carries `GET`'s length on a kept-alive connection; bad requests
//! get their 4xx; bad addresses a clear error.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use concur::http::Limits;
use concur::server::Model;

/// The issue this port was rebuilt for: three connections dripping a
/// request head, one byte every 1.5 s, and 500 connections that say
/// nothing, must not keep a scraper waiting more than a second.
const DRIPS: usize = 3;
const DRIP_EVERY: Duration = Duration::from_millis(1500);
const IDLE: usize = 500;
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);

/// `GET /metrics` on a connection of its own: how long it took from the
/// connect to the last byte, and the whole response.
fn timed_scrape(addr: SocketAddr) -> (Duration, String) {
    let start = Instant::now();
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: concur\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("the response");
    (start.elapsed(), response)
}

/// How one dripping connection ended.
struct Drip {
    /// How long after its connect the server closed it.
    closed_after: Duration,
    /// When, to compare with the scrapes.
    closed_at: Instant,
    /// Bytes of its head it had sent by then.
    sent: usize,
}

/// Sends a request head one byte every [`DRIP_EVERY`] until the server
/// closes the connection (or, failing the test, 20 s pass).
fn drip(addr: SocketAddr) -> Drip {
    let head = b"GET /metrics HTTP/1.1\r\nHost: concur\r\nUser-Agent: drip\r\n\r\n";
    let connected = Instant::now();
    let mut s = connect(addr);
    s.set_read_timeout(Some(DRIP_EVERY)).unwrap();
    let mut sent = 0;
    let mut buf = [0u8; 256];
    loop {
        assert!(
            connected.elapsed() < Duration::from_secs(20),
            "a dripping connection was never closed"
        );
        if s.write_all(&head[sent..=sent]).is_err() {
            break;
        }
        sent += 1;
        // The wait between bytes, watching for the close meanwhile.
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // An end, a reset, or an answer the head never asked for.
            _ => break,
        }
    }
    Drip {
        closed_after: connected.elapsed(),
        closed_at: Instant::now(),
        sent,
    }
}

/// True once the server has closed `s` (it reads an end or a reset).
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn attacked(model: Model) {
    let server = Process::serve_http(model);
    let http = server.http_addr();
    let mut client = connect_served(server.addr);
    round_trip(&mut client);

    // The silent crowd first, then the drips: the oldest idle go first.
    let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect(http)).collect();
    let drips: Vec<_> = (0..DRIPS)
        .map(|_| std::thread::spawn(move || drip(http)))
        .collect();

    let limits = Limits::default();
    let mut last_answer = Instant::now();
    for i in 0..6 {
        let (took, response) = timed_scrape(http);
        assert!(
            response.starts_with("HTTP/1.1 200 OK") && response.contains("concur_clients 1\n"),
            "{model}: scrape {i}: {response:?}"
        );
        assert!(
            took < ANSWERED_WITHIN,
            "{model}: scrape {i} took {took:?} with {DRIPS} drips and {IDLE} idle connections"
        );
        last_answer = Instant::now();
        if i == 0 {
            // The cap held: every idle connection beyond it was closed
            // before the scrape (accepted after them) was answered.
            let closed = idle.iter().filter(|s| closed_by_server(s)).count();
            assert!(
                closed >= IDLE - limits.max_connections,
                "{model}: only {closed} of {IDLE} idle connections closed under a cap of {}",
                limits.max_connections
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The protocol's client was served all along.
    round_trip(&mut client);

    let deadline = limits.head_deadline;
    for drip in drips {
        let drip = drip.join().expect("a dripping connection");
        // Open during every scrape, then closed at the head's deadline,
        // however often it sent: a deadline, not a limit per read.
        assert!(
            drip.closed_at > last_answer,
            "{model}: a drip was closed before the last scrape"
        );
        assert!(
            drip.closed_after >= deadline && drip.closed_after < deadline + Duration::from_secs(3),
            "{model}: a drip was closed after {:?}, the deadline is {deadline:?}",
            drip.closed_after
        );
        assert!(drip.sent >= 3, "{model}: a drip sent only {}", drip.sent);
    }
    drop(idle);
    round_trip(&mut client);
}

#[test]
fn a_scrape_is_answered_within_a_second_while_drips_and_idle_connections_hold_the_port() {
    // 503 connections per model, both ends in this process.
    concur::server::raise_fd_limit().expect("raise the descriptor limit");
    // The models at once: each has a server and a port of its own.
    std::thread::scope(|scope| {
        for model in models() {
            scope.spawn(move || attacked(model));
        }
    });
}

/// The value of `Content-Length` in a response head.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
}

#[test]
fn head_carries_get_s_length_and_no_body_on_a_kept_alive_connection() {
    let server = Process::serve(&["--port", "0", "-q", "--http", "127.0.0.1:0"]);
    let mut s = connect(server.http_addr());
    // Both at once: the second answer must start right where the first
    // head ends, so the HEAD sent no body.
    s.write_all(
        b"HEAD /metrics HTTP/1.1\r\nHost: concur\r\n\r\n\
          GET /metrics HTTP/1.1\r\nHost: concur\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut both = String::new();
    s.read_to_string(&mut both).unwrap();
    let (head, rest) = both.split_once("\r\n\r\n").expect("the HEAD's answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        rest.starts_with("HTTP/1.1 200 OK"),
        "a body after HEAD: {rest:?}"
    );
    let (get_head, body) = rest.split_once("\r\n\r\n").expect("the GET's answer");
    assert_eq!(body.len(), content_length(get_head));
    // Nothing changed between the two: the same length.
    assert_eq!(content_length(head), body.len());
    assert!(body.len() > 3000, "{body}");
}

#[test]
fn bad_requests_get_a_4xx_and_the_port_goes_on() {
    let server = Process::serve(&["--port", "0", "-q", "--metrics", "127.0.0.1:0"]);
    let url = server.metrics.clone().expect("an HTTP port");
    let base = url.trim_end_matches("/metrics").to_string();
    let (status, body) = curl(&[], &format!("{base}/nope"));
    assert_eq!(
        (status, body.as_str()),
        (
            404,
            "not found; this port serves /metrics, /, /events, /clients\n"
        )
    );
    assert_eq!(curl(&[], &format!("{base}/metrics/x")).0, 404);
    assert_eq!(curl(&["-X", "POST"], &url).0, 405);
    let (_, head) = curl(&["-s", "-o", "/dev/null", "-D", "-", "-X", "DELETE"], &url);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );

    // Not HTTP at all, and a head far too long: a 400 and a 431, by hand.
    for (request, status) in [
        (b"hello\r\n\r\n".to_vec(), "400"),
        (
            [b"GET /metrics HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 20_000]].concat(),
            "431",
        ),
    ] {
        let mut s = connect(server.http_addr());
        let _ = s.write_all(&request);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer:?}"
        );
    }
    // A scraper that connects and says nothing does not hold up the next.
    let _silent = connect(server.http_addr());
    let (status, text) = curl(&[], &url);
    assert_eq!(status, 200);
    assert!(text.contains("concur_clients_accepted_total 0"), "{text}");
    server.stop();
}

#[test]
fn an_http_address_that_cannot_be_used_is_a_clear_failure() {
    let serve = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["serve", "--port", "0"])
            .args(args)
            .output()
            .unwrap()
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    for flag in ["--http", "--metrics"] {
        let out = serve(&[flag, &at]);
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{flag} {at}: cannot listen there")),
            "{err}"
        );
    }
    // A bad form is a bad flag: exit 2, what is wrong and what is allowed.
    for (bad, says) in [
        ("no port", "no port in it"),
        ("localhost:http", "\"http\" is not a port from 0 to 65535"),
        ("::1:9100", "an IPv6 address goes in brackets ([::1]:9100)"),
    ] {
        for flag in ["--http", "--metrics"] {
            let out = serve(&[flag, bad]);
            assert_eq!(out.status.code(), Some(2), "{flag} {bad}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(says), "{flag} {bad}: {err}");
            assert!(
                err.contains("give HOST:PORT, such as 127.0.0.1:9100"),
                "{err}"
            );
        }
    }
    // One port, one name for it.
    let out = serve(&["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
}
