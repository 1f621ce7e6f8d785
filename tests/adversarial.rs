//! Clients that misbehave, every model. Each case checks what the
//! offending client got, and that the server still serves a fresh client
//! correctly afterwards.
//!
//! The rest of the suite lives where its subject does: a reset with 1 MB of
//! replies pending and half-close in `faults.rs`, the connection cap with
//! `reject` and 2,000 idle clients against `pool -n 4` in `limits.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::thread;
use std::time::Duration;

use common::*;
use concur::server::{Config, Model};
use socket2::SockRef;

fn still_serving(addr: std::net::SocketAddr, model: Model) {
    let (sends, want) = VECTORS[0];
    assert_eq!(
        session(addr, sends),
        want,
        "{model}: a fresh client afterwards"
    );
}

/// A deterministic byte stream (xorshift), so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn a_thousand_clients_that_connect_and_reset_at_once() {
    for model in models() {
        let server = start(model);
        let addr = server.local_addr();
        let clients: Vec<_> = (0..1000).map(|_| connect(addr)).collect();
        for c in &clients {
            SockRef::from(c).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(clients);
        still_serving(addr, model);
        let summary = server.stop();
        assert_eq!(
            summary.ended(),
            summary.accepted,
            "{model}: every accepted client accounted for: {summary:?}"
        );
    }
}

#[test]
fn every_byte_value_in_and_out_of_messages_split_everywhere() {
    let mut input: Vec<u8> = (0..=255u8).filter(|&b| b != b'^').collect();
    input.push(b'^');
    input.extend((0..=255u8).filter(|&b| b != b'$'));
    input.extend(b"$tail^\xff");
    let want = reference(&input);
    for model in models() {
        let server = start(model);
        let addr = server.local_addr();
        for cut in 0..=input.len() {
            let (head, tail) = input.split_at(cut);
            let mut c = connect_served(addr);
            c.write_all(head).unwrap();
            // Waiting for the head's answer makes the split a real one: the
            // tail cannot arrive in the same read.
            let head_answer = reference(head);
            assert_eq!(
                read_n(&mut c, head_answer.len()),
                head_answer,
                "{model}: cut {cut}"
            );
            c.write_all(tail).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let rest = read_to_end(&mut c);
            assert_eq!(rest, want[head_answer.len()..], "{model}: cut {cut}");
        }
        still_serving(addr, model);
        server.stop();
    }
}

#[test]
fn ten_megabytes_of_noise_beside_ten_well_behaved_clients() {
    const NOISE: usize = 10 << 20;
    for model in models() {
        let server = start(model);
        let addr = server.local_addr();
        let noisy = thread::spawn(move || {
            let input = noise(NOISE, 0x9E37_79B9_7F4A_7C15);
            let want = reference(&input);
            let mut c = connect_served(addr);
            let mut writer = c.try_clone().unwrap();
            let sender = thread::spawn(move || {
                for chunk in input.chunks(50_000) {
                    writer.write_all(chunk).unwrap();
                }
                writer.shutdown(std::net::Shutdown::Write).unwrap();
            });
            let got = read_to_end(&mut c);
            sender.join().unwrap();
            assert!(got == want, "{model}: the noisy client's answers are wrong");
        });
        let polite: Vec<_> = (0..10)
            .map(|i| {
                thread::spawn(move || {
                    for round in 0..5 {
                        let (sends, want) = VECTORS[(i + round) % VECTORS.len()];
                        assert_eq!(session(addr, sends), want, "{model}: client {i}");
                    }
                })
            })
            .collect();
        for p in polite {
            p.join().unwrap();
        }
        noisy.join().unwrap();
        still_serving(addr, model);
        let summary = server.stop();
        assert_eq!(summary.failed, 0, "{model}");
    }
}

#[test]
fn slowloris_gets_its_answers_and_blocks_nobody() {
    for model in models() {
        let server = start(model);
        let addr = server.local_addr();
        let mut slow = connect_served(addr);
        slow.write_all(b"^").unwrap();
        for (i, b) in (b'a'..=b'j').enumerate() {
            slow.write_all(&[b]).unwrap();
            assert_eq!(read_n(&mut slow, 1), [b + 1], "{model}: byte {i}");
            if i == 4 && serves_at_once(model) >= 2 {
                // Mid-message, the slow client must not be in anyone's way.
                for (sends, want) in VECTORS {
                    assert_eq!(session(addr, sends), *want, "{model}: beside slowloris");
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        slow.write_all(b"$").unwrap();
        drop(slow);
        still_serving(addr, model);
        server.stop();
    }
}

#[test]
fn a_client_that_never_reads_is_closed_by_the_write_timeout() {
    const LIMIT: usize = 50 << 20;
    let runs: Vec<_> = models()
        .into_iter()
        .map(|model| {
            thread::spawn(move || {
                let mut config = Config::new(model);
                config.write_timeout = Some(Duration::from_millis(500));
                let server = start_with(config);
                let addr = server.local_addr();
                let mut hog = connect_served(addr);
                hog.write_all(b"^").unwrap();
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0;
                let refused = loop {
                    if sent >= LIMIT {
                        break None;
                    }
                    match hog.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(e) => break Some(e),
                    }
                };
                let refused = refused.unwrap_or_else(|| {
                    panic!("{model}: all {LIMIT} bytes went in; the server never stopped it")
                });
                assert!(
                    matches!(
                        refused.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                    ),
                    "{model}: the hog was closed by the server, got {refused}"
                );
                if serves_at_once(model) >= 2 {
                    // Others were never held up: served while the hog is
                    // still connected on our side.
                    still_serving(addr, model);
                }
                let mut rest = Vec::new();
                let _ = hog.read_to_end(&mut rest);
                drop(hog);
                still_serving(addr, model);
                let summary = server.stop();
                assert_eq!(summary.timed_out, 1, "{model}: {summary:?}");
                assert!(
                    summary.max_buffered <= 128 << 10,
                    "{model}: held {} answer bytes for the hog",
                    summary.max_buffered
                );
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}

/// Floods `model`, takes every answer owed so far once, then never reads
/// again, and returns how long after it started and after it finished
/// taking them the server closed it. A server whose write timeout is a
/// deadline from the last answer taken closes it no sooner than the
/// timeout after the taking started (the server had room to write again
/// from then on, and may have written its last bytes while they were
/// being taken) and not much later than the timeout after it finished and
/// the buffers filled again, which takes milliseconds.
fn closed_after_last_answer(model: Model, timeout: Duration) -> (Duration, Duration) {
    use std::time::Instant;

    let mut config = Config::new(model);
    config.write_timeout = Some(timeout);
    let server = start_with(config);
    let mut hog = connect_served(server.local_addr());
    hog.write_all(b"^").unwrap();
    hog.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut answers = vec![0u8; 1 << 20];
    let flood = |hog: &mut std::net::TcpStream| loop {
        match hog.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    };
    // Until the server is stalled on us: our writes block and nothing more
    // arrives for a moment.
    let mut taken = 0;
    loop {
        assert!(flood(&mut hog), "{model}: closed before the read");
        thread::sleep(Duration::from_millis(50));
        match hog.read(&mut answers) {
            Ok(n) if n > 0 && taken < (64 << 20) => taken += n,
            _ => break,
        }
    }
    // Everything owed so far, taken at once; then nothing ever again.
    let taking = Instant::now();
    loop {
        match hog.read(&mut answers) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() != ErrorKind::WouldBlock => panic!("{model}: {e}"),
            _ => break,
        }
    }
    let last_taken = Instant::now();
    let give_up = last_taken + PATIENCE * 3;
    let closed_at = loop {
        assert!(Instant::now() < give_up, "{model}: never closed");
        if !flood(&mut hog) {
            break Instant::now();
        }
        thread::sleep(Duration::from_millis(2));
    };
    let summary = server.stop();
    assert_eq!(summary.timed_out, 1, "{model}: {summary:?}");
    (closed_at - taking, closed_at - last_taken)
}

#[test]
fn the_write_timeout_runs_from_the_last_answer_taken() {
    // A timeout restarted by every partial send closed such a client after
    // about twice the limit (4.1 s with a limit of 2 s); a deadline closes
    // it after the limit plus the milliseconds its buffers take to fill.
    // The margin is for a loaded machine (six servers and their floods run
    // at once here, beside the other tests): 1.5 s of it was once too
    // little under a parallel build, and 2.5 s is still well short of the
    // limit's 3 s that a restarted timeout would add.
    const TIMEOUT: Duration = Duration::from_secs(3);
    const MARGIN: Duration = Duration::from_millis(2500);
    let runs: Vec<_> = models()
        .into_iter()
        .map(|model| thread::spawn(move || (model, closed_after_last_answer(model, TIMEOUT))))
        .collect();
    for run in runs {
        let (model, (after_start, after)) = run.join().unwrap();
        // The server may have last sent just before the test's clock
        // started (its write was taken as the stall ended): a few
        // milliseconds, never a timeout's worth.
        assert!(
            after_start + Duration::from_millis(50) >= TIMEOUT,
            "{model}: closed {after_start:?} after it started taking its last answers, before \
             the timeout"
        );
        assert!(
            after <= TIMEOUT + MARGIN,
            "{model}: closed {after:?} after it last took answers, not within \
             {TIMEOUT:?} + {MARGIN:?}"
        );
    }
}
