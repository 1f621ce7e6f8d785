//! `serve --reuseport`: two processes, each its own model, listen on one
//! port, and the kernel spreads new connections between them.

mod common;

use common::*;

#[test]
fn two_processes_share_a_port_and_both_get_clients() {
    let first = Process::serve(&["--model", "event", "--port", "0", "-q", "--reuseport"]);
    let port = first.addr.port().to_string();
    let second = Process::serve(&["--model", "pool", "--port", &port, "-q", "--reuseport"]);
    assert_eq!(first.addr, second.addr);
    // Each from a new source port: the kernel's hash sends each to one of
    // the two at random. Every one is served, by one or the other.
    const CLIENTS: u64 = 200;
    for _ in 0..CLIENTS {
        assert_eq!(session(first.addr, &[b"^ok$"]), b"pl");
    }
    let (a, b) = (
        summary_figures(&first.stop()),
        summary_figures(&second.stop()),
    );
    assert_eq!(a["accepted"] + b["accepted"], CLIENTS);
    assert_eq!(a["served"] + b["served"], CLIENTS);
    // Two hundred fair coin flips all landing on one side: 2^-199.
    assert!(a["accepted"] > 0 && b["accepted"] > 0, "{a:?} {b:?}");
}

#[test]
fn without_reuseport_the_second_process_is_refused_the_port() {
    let first = Process::serve(&["--port", "0", "-q", "--reuseport"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["serve", "--port", &first.addr.port().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another program holds that port"), "{err}");
}
