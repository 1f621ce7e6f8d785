//! The protocol core against a byte-at-a-time reference, under arbitrary
//! splits of the input.
//!
//! `Processor::feed` finds markers with `memchr` and maps whole spans, and
//! carries its state from one call to the next; the reference below is the
//! rule from PROTOCOL.md applied to one byte at a time, too simple to be
//! wrong. The two must agree on every input, however it is cut into reads.

#![no_main]

use concur::protocol::{MSG_END, MSG_START, Processor, State};
use libfuzzer_sys::fuzz_target;

fn reference(input: &[u8]) -> (Vec<u8>, State) {
    let mut in_message = false;
    let mut out = Vec::new();
    for &b in input {
        if !in_message {
            in_message = b == MSG_START;
        } else if b == MSG_END {
            in_message = false;
        } else {
            out.push(b.wrapping_add(1));
        }
    }
    let state = if in_message {
        State::InMessage
    } else {
        State::Waiting
    };
    (out, state)
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the following bytes are split
    // lengths; the rest is the stream. Lengths are taken mod 64 and may be
    // zero, so empty reads and reads that cut right at a marker both occur;
    // whatever the lengths leave over is the last read.
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = (count as usize % 16).min(rest.len());
    let (lengths, stream) = rest.split_at(count);

    let mut p = Processor::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for &len in lengths {
        let end = (pos + len as usize % 64).min(stream.len());
        let before = out.len();
        p.feed(&stream[pos..end], &mut out);
        // The documented bound: a read never yields more than it holds.
        assert!(out.len() - before <= end - pos);
        pos = end;
    }
    p.feed(&stream[pos..], &mut out);

    let (want, state) = reference(stream);
    assert_eq!(out, want);
    assert_eq!(p.state(), state);
});
