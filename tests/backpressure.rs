//! A client that sends a lot and reads nothing for a while costs the
//! server bounded memory, and still gets every byte, in order, in the end.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use common::*;
use concur::server::{Config, Model};

const TOTAL: usize = 100 << 20;
const CHUNK: usize = 64 << 10;
/// A read buffer's worth of answers on top of the cap: what one read can
/// add before the server notices it is over.
const BOUND: u64 = (64 << 10) + (64 << 10);

fn pattern(i: usize) -> u8 {
    // Anything but `$`, so the whole stream stays one message.
    match (i % 251) as u8 {
        b'$' => b'#',
        b => b,
    }
}

fn flood_then_read(model: Model) {
    let server = start_with(Config::new(model));
    let mut reader = connect_served(server.local_addr());
    let mut writer = reader.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(b"^").unwrap();
        let mut chunk = vec![0; CHUNK];
        for start in (0..TOTAL).step_by(CHUNK) {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = pattern(start + j);
            }
            writer.write_all(&chunk).unwrap();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });

    // Not reading: the kernel buffers fill, then the server must hold off.
    thread::sleep(Duration::from_secs(2));

    let mut got = vec![0; CHUNK];
    let mut seen = 0;
    while seen < TOTAL {
        let n = reader.read(&mut got).unwrap();
        assert!(n > 0, "{model}: EOF after {seen} of {TOTAL} bytes");
        for (j, b) in got[..n].iter().enumerate() {
            let want = pattern(seen + j).wrapping_add(1);
            assert_eq!(*b, want, "{model}: byte {} is wrong", seen + j);
        }
        seen += n;
    }
    assert_eq!(
        read_to_end(&mut reader),
        b"",
        "{model}: nothing after the last answer"
    );
    sender.join().unwrap();

    let summary = server.stop();
    assert_eq!(summary.bytes_in, TOTAL as u64 + 1, "{model}");
    assert_eq!(summary.bytes_out, TOTAL as u64 + 1, "{model}");
    assert!(
        summary.max_buffered <= BOUND,
        "{model}: held {} answer bytes for one client (bound {BOUND})",
        summary.max_buffered
    );
    assert!(
        summary.max_buffered > 0,
        "{model}: buffering was never recorded"
    );
}

#[test]
fn a_client_that_stops_reading_costs_bounded_memory_and_loses_nothing() {
    let runs: Vec<_> = models()
        .into_iter()
        .map(|model| thread::spawn(move || flood_then_read(model)))
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}
