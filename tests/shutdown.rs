//! Graceful shutdown, the same in every model: stop accepting at once, let
//! clients being served finish for up to the drain timeout, close the rest.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use concur::server::{Config, Model, Summary};

/// Waits for the server's final summary on a thread, so the test can check
/// that it has *not* arrived yet.
fn join_in_background(server: concur::server::Server) -> mpsc::Receiver<Summary> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.join());
    });
    rx
}

#[test]
fn a_client_mid_session_gets_everything_it_is_owed() {
    for model in models() {
        let server = start_with(Config::new(model).drain_timeout(PATIENCE * 3));
        let addr = server.local_addr();
        let mut c = connect_served(addr);
        c.write_all(b"zz^ab").unwrap();
        assert_eq!(read_n(&mut c, 2), b"bc");

        server.shutdown_handle().trigger();
        let done = join_in_background(server);
        assert!(
            done.recv_timeout(Duration::from_millis(300)).is_err(),
            "{model}: the server ended while a client was still being served"
        );

        c.write_all(b"cd$ignored^\xff").unwrap();
        assert_eq!(read_n(&mut c, 3), b"de\x00");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(
            read_to_end(&mut c),
            b"",
            "{model}: EOF after the last answer"
        );

        let summary = done.recv_timeout(PATIENCE).expect("server ended");
        assert_eq!((summary.served, summary.failed), (1, 0), "{model}");
        assert_eq!(summary.bytes_in, 5 + 12, "{model}");
        assert_eq!(summary.bytes_out, 1 + 2 + 3, "{model}");
        assert_eq!(summary.clients_now, 0, "{model}");
        // A connect to a port nobody listens on can, rarely, connect to
        // itself (the kernel picks that very port as its source): that is
        // not the server.
        let refused =
            TcpStream::connect(addr).map_or(true, |s| s.local_addr().ok() == s.peer_addr().ok());
        assert!(refused, "{model}: a stopped server must refuse connections");
    }
}

#[test]
fn the_drain_timeout_closes_clients_that_stay() {
    for model in models() {
        let server = start_with(Config::new(model).drain_timeout(Duration::from_millis(100)));
        let mut idle = connect_served(server.local_addr());
        idle.write_all(b"^a").unwrap();
        assert_eq!(read_n(&mut idle, 1), b"b");
        let summary = server.stop();
        // Closed by the server: end-of-file (or a reset), never a hang.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut idle, &mut rest);
        assert!(rest.is_empty(), "{model}: nothing more was owed");
        assert_eq!(summary.clients_now, 0, "{model}");
        assert_eq!(
            (summary.served, summary.failed, summary.closed_at_shutdown),
            (0, 0, 1),
            "{model}: the drain closed it"
        );
    }
}

#[test]
fn clients_queued_in_the_pool_are_closed_unserved() {
    let mut config = Config::new(Model::Pool).threads(1).drain_timeout(PATIENCE);
    config.pool_mut().unwrap().queue = 1;
    let server = start_with(config);
    let addr = server.local_addr();
    let mut first = connect_served(addr);
    let mut queued = connect(addr);
    // The queued client is accepted (into the hand-off) but not greeted.
    wait_until(|| server.summary().accepted == 2);
    server.shutdown_handle().trigger();
    round_trip(&mut first);
    drop(first);
    assert_eq!(read_to_end(&mut queued), b"", "closed without a greeting");
    let summary = server.join();
    assert_eq!((summary.served, summary.closed_at_shutdown), (1, 1));
}

/// The real binary: banner on stdout, SIGTERM drains the client in the
/// middle of its session, prints the summary, exits 0.
#[test]
fn the_binary_drains_and_exits_zero_on_sigterm() {
    for model in models() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["serve", "--port", "0", "--model", model.name()])
            // The client finishes its session after the signal: however
            // slow the machine, the drain must not close it first.
            .args(["--drain-timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run concur");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        out.read_line(&mut banner).unwrap();
        let addr = banner
            .strip_prefix("Serving on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected banner {banner:?}"));
        assert!(banner.contains(&format!("model {model}")), "{banner}");

        let mut c = connect_served(addr.parse().unwrap());
        c.write_all(b"^ab").unwrap();
        assert_eq!(read_n(&mut c, 2), b"bc");

        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

        c.write_all(b"c$").unwrap();
        assert_eq!(read_n(&mut c, 1), b"d");
        drop(c);

        let status = child.wait().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert!(status.success(), "{model}: exit {status:?}");
        assert!(
            rest.contains("accepted 1 clients: 1 served, 0 failed"),
            "{model}: summary {rest:?}"
        );
    }
}

/// One client of each fate, then a stop: every accepted client is counted
/// exactly once, and the counts say which fate each met.
fn mixed_run(model: Model) {
    let mut config = Config::new(model).drain_timeout(Duration::from_millis(200));
    config.max_conns = 2;
    config.over_limit = concur::server::OverLimit::Reject;
    config.idle_timeout = Some(Duration::from_secs(1));
    let server = start_with(config);
    let addr = server.local_addr();
    let at_once = serves_at_once(model).min(2);

    // Served: a whole session, closed by the client.
    let (sends, want) = VECTORS[0];
    assert_eq!(session(addr, sends), want, "{model}");
    // Failed: a reset with answers pending.
    let mut reset = connect_served(addr);
    reset.write_all(b"^abc").unwrap();
    assert_eq!(read_n(&mut reset, 3), b"bcd");
    socket2::SockRef::from(&reset)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    reset.write_all(b"def").unwrap();
    drop(reset);
    // Timed out: greeted, then silent until the server closes it.
    let mut idle = connect_served(addr);
    assert_eq!(
        read_to_end(&mut idle),
        b"",
        "{model}: closed by the idle timeout"
    );
    wait_until(|| server.summary().clients_now == 0);

    // Closed at shutdown: still talking when the drain runs out. Over the
    // cap of two, one more is rejected (a sequential server never holds
    // two, so never rejects).
    let mut staying: Vec<_> = (0..at_once).map(|_| connect_served(addr)).collect();
    for c in staying.iter_mut() {
        c.write_all(b"^ab").unwrap();
        assert_eq!(read_n(c, 2), b"bc");
    }
    if at_once == 2 {
        let mut over = connect(addr);
        assert_eq!(read_to_end(&mut over), b"", "{model}: rejected");
    }
    let summary = server.stop();
    for c in staying.iter_mut() {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(c, &mut rest);
        assert_eq!(rest, b"", "{model}: closed by the drain");
    }

    let rejected = u64::from(at_once == 2);
    assert_eq!(summary.accepted, 3 + at_once as u64 + rejected, "{model}");
    assert_eq!(
        (
            summary.served,
            summary.failed,
            summary.timed_out,
            summary.rejected,
            summary.closed_at_shutdown
        ),
        (1, 1, 1, rejected, at_once as u64),
        "{model}: {summary:?}"
    );
    assert_eq!(summary.ended(), summary.accepted, "{model}: {summary:?}");
}

#[test]
fn after_a_mixed_run_the_summary_adds_up() {
    let runs: Vec<_> = models()
        .into_iter()
        .map(|model| thread::spawn(move || mixed_run(model)))
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}

/// The real binary: a second SIGTERM during the drain exits at once with
/// 143, after one line of what it has counted.
#[test]
fn a_second_signal_exits_143_with_the_counts_so_far() {
    for model in models() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["serve", "--port", "0", "--model", model.name()])
            .args(["--drain-timeout", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run concur");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        out.read_line(&mut banner).unwrap();
        let addr = banner.split_whitespace().nth(2).unwrap().parse().unwrap();
        let mut c = connect_served(addr);
        round_trip(&mut c);

        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        // Two signals sent back to back may arrive as one: the second goes
        // only once the first has been taken.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("shutting down") {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "{model}: no shutdown line"
            );
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(143), "{model}: {status:?}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let lines: Vec<_> = rest.lines().collect();
        assert_eq!(lines.len(), 1, "{model}: {rest:?}");
        assert!(
            lines[0].starts_with("accepted 1 clients: 0 served")
                && lines[0].ends_with("with 1 clients still connected"),
            "{model}: {rest:?}"
        );
        drop(c);
    }
}
