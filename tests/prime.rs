//! `--protocol prime`, every model: answers, malformed lines, the line
//! limit, and small requests answered while heavy ones are computed.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use concur::server::{Config, Model, Protocol};

fn prime_config(model: Model) -> Config {
    let mut config = Config::new(model);
    config.protocol = Protocol::Prime;
    config
}

/// Reads one answer line.
fn line(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    while got.last() != Some(&b'\n') {
        got.extend(read_n(s, 1));
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn numbers_are_answered_in_order() {
    // Above 2^32 the event-driven models test on their compute threads;
    // the answers must still come back in request order.
    let cases = [
        ("0", "neither"),
        ("1", "neither"),
        ("2", "prime"),
        ("3", "prime"),
        ("4", "composite"),
        ("97", "prime"),
        ("4294967297", "composite"),
        ("1000000000039", "prime"),
        ("5", "prime"),
        ("18446744073709551615", "composite"),
        (" 4294967311\r", "prime"),
    ];
    let request: String = cases.iter().map(|(n, _)| format!("{n}\n")).collect();
    let want: String = cases.iter().map(|(_, a)| format!("{a}\n")).collect();
    for model in models() {
        let server = start_with(prime_config(model));
        let mut c = connect(server.local_addr());
        c.write_all(request.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let got = String::from_utf8(read_to_end(&mut c)).unwrap();
        assert_eq!(got, want, "{model}");
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (1, 0), "{model}");
    }
}

#[test]
fn malformed_lines_get_an_error_and_the_connection_goes_on() {
    for model in models() {
        let server = start_with(prime_config(model));
        let mut c = connect(server.local_addr());
        for bad in ["abc", "-5", "", "99999999999999999999", "7x"] {
            c.write_all(format!("{bad}\n").as_bytes()).unwrap();
            let answer = line(&mut c);
            assert!(
                answer.starts_with("error: "),
                "{model}: {bad:?} got {answer:?}"
            );
        }
        c.write_all(b"7\n").unwrap();
        assert_eq!(line(&mut c), "prime\n", "{model}");
        drop(c);
        server.stop();
    }
}

#[test]
fn a_line_over_64_bytes_closes_the_client_with_an_error() {
    for model in models() {
        let server = start_with(prime_config(model));
        let mut c = connect(server.local_addr());
        c.write_all(b"11\n").unwrap();
        c.write_all(&[b'1'; 100]).unwrap();
        let got = String::from_utf8(read_to_end(&mut c)).unwrap();
        assert_eq!(
            got, "prime\nerror: line longer than 64 bytes; closing\n",
            "{model}"
        );
        // The server goes on.
        let mut next = connect(server.local_addr());
        next.write_all(b"9\n").unwrap();
        assert_eq!(line(&mut next), "composite\n", "{model}");
        drop(next);
        let summary = server.stop();
        assert_eq!((summary.served, summary.failed), (1, 1), "{model}");
    }
}

/// A prime whose trial division takes 5·10^8 divisions: about a second
/// on this machine's cores, a thousand times the probe's round trips.
const HEAVY: &str = "1000000000000000003\n";

#[test]
fn a_small_request_is_answered_while_heavy_ones_run() {
    // More heavy clients than cores, so the event loops' compute pool and
    // the async blocking pool are both full.
    for model in models().into_iter().filter(|&m| serves_at_once(m) >= 4) {
        let server = start_with(prime_config(model));
        let addr = server.local_addr();
        let mut heavy: Vec<_> = (0..3)
            .map(|_| {
                let mut c = connect(addr);
                c.write_all(HEAVY.as_bytes()).unwrap();
                c
            })
            .collect();
        let mut probe = connect(addr);
        for n in ["7", "8", "65537"] {
            probe.write_all(format!("{n}\n").as_bytes()).unwrap();
            line(&mut probe);
        }
        // The ordering that matters: every small answer came back while no
        // heavy answer had yet.
        for (i, c) in heavy.iter_mut().enumerate() {
            assert!(
                silent_for(c, Duration::from_millis(1)),
                "{model}: heavy request {i} finished before the probe was answered"
            );
        }
        let answers: Vec<_> = heavy.iter_mut().map(line).collect();
        assert!(
            answers.iter().all(|a| a == "prime\n"),
            "{model}: {answers:?}"
        );
        drop((heavy, probe));
        server.stop();
    }
}

/// The largest u64 prime: several seconds of trial division.
const HEAVIEST: &str = "18446744073709551557\n";

#[test]
fn the_drain_timeout_bounds_a_long_computation() {
    // Five of the slowest numbers there are: far longer than the drain
    // timeout, and than PATIENCE. The drain must end them, not wait.
    for model in models() {
        let mut config = prime_config(model);
        config.drain_timeout = Duration::from_millis(200);
        let server = start_with(config);
        let mut c = connect(server.local_addr());
        c.write_all(HEAVIEST.repeat(5).as_bytes()).unwrap();
        c.write_all(b"7\n").unwrap();
        // Being served when the stop comes: its lines have been read. (A
        // client counted but still on its way to an event loop or a pool
        // worker is dropped unserved by a stop, not drained.)
        wait_until(|| server.summary().bytes_in > 0);
        let stop = server.shutdown_handle();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(server.join());
        });
        stop.trigger();
        let summary = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("{model}: the drain waited for the computation"));
        // Closed with its lines unread, so the kernel may send a reset
        // rather than an end-of-file; either way, no answer came.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut rest);
        assert_eq!(rest, b"", "{model}: closed, no answer");
        assert_eq!(
            (summary.served, summary.failed, summary.closed_at_shutdown),
            (0, 0, 1),
            "{model}"
        );
    }
}

#[test]
fn answers_before_a_long_computation_are_not_held_back_by_it() {
    // One write: a small number, then one whose test takes seconds. The
    // small one's answer must go out at once, not wait for the other's;
    // the stop then cuts the long test short, so nothing else comes.
    for model in models() {
        let mut config = prime_config(model);
        config.drain_timeout = Duration::from_millis(100);
        let server = start_with(config);
        let mut c = connect(server.local_addr());
        c.write_all(format!("7\n{HEAVIEST}").as_bytes()).unwrap();
        assert_eq!(line(&mut c), "prime\n", "{model}");
        let summary = server.stop();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut rest);
        assert_eq!(
            rest, b"",
            "{model}: the first answer waited for the long test"
        );
        assert_eq!(summary.closed_at_shutdown, 1, "{model}");
    }
}

#[test]
fn error_lines_cannot_balloon_a_non_reader() {
    // One byte in, a 33-byte error line out: a client sending empty lines
    // and reading nothing must not make the server hold its answers.
    const LINES: usize = 1 << 20;
    let runs: Vec<_> = models()
        .into_iter()
        .map(|model| {
            std::thread::spawn(move || {
                let server = start_with(prime_config(model));
                let mut c = connect(server.local_addr());
                let mut writer = c.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    writer.write_all(&vec![b'\n'; LINES]).unwrap();
                    writer.shutdown(std::net::Shutdown::Write).unwrap();
                });
                std::thread::sleep(Duration::from_millis(500));
                let got = read_to_end(&mut c);
                sender.join().unwrap();
                let line = b"error: empty line; send a number\n";
                assert_eq!(got.len(), LINES * line.len(), "{model}");
                assert!(got.chunks(line.len()).all(|l| l == line), "{model}");
                let summary = server.stop();
                assert!(
                    summary.max_buffered <= (128 << 10) + 64,
                    "{model}: held {} answer bytes",
                    summary.max_buffered
                );
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}

#[test]
fn a_non_reader_at_the_answer_limit_under_a_larger_cap_stalls_nobody_else() {
    // With `--outbound-cap` above the responder's own limit of queued
    // answers (64 KiB), a client whose answers reach that limit while the
    // kernel will take no more of them must wait for them to drain, not
    // be answered again and again for nothing: with one loop or ring,
    // that would stall every other client. Sequential serves one client
    // at a time by design, so it has no other client to stall.
    const LINES: usize = 1 << 20;
    const CAP: usize = 1 << 20;
    let runs: Vec<_> = models()
        .into_iter()
        .filter(|&model| model != Model::Sequential)
        .map(|model| {
            std::thread::spawn(move || {
                let mut config = prime_config(model);
                if let Some(event) = config.event_mut() {
                    event.loops = 1;
                    event.outbound_cap = CAP;
                }
                if let Some(uring) = config.uring_mut() {
                    uring.rings = 1;
                    uring.outbound_cap = CAP;
                }
                let server = start_with(config);
                let mut flooder = connect(server.local_addr());
                let mut writer = flooder.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    writer.write_all(&b"4\n".repeat(LINES)).unwrap();
                    writer.shutdown(std::net::Shutdown::Write).unwrap();
                });
                if matches!(model, Model::Event | Model::Uring) {
                    // Until its loop holds a full 64 KiB of answers for it
                    // that the kernel would not take.
                    wait_until(|| server.summary().max_buffered >= 64 << 10);
                }
                let mut other = connect(server.local_addr());
                other.write_all(b"7\n").unwrap();
                assert_eq!(line(&mut other), "prime\n", "{model}");
                drop(other);
                let got = read_to_end(&mut flooder);
                sender.join().unwrap();
                assert_eq!(got.len(), LINES * b"composite\n".len(), "{model}");
                assert!(got.chunks(10).all(|l| l == b"composite\n"), "{model}");
                let summary = server.stop();
                assert_eq!((summary.served, summary.failed), (2, 0), "{model}");
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}
