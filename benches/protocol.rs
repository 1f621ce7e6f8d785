//! Throughput of the protocol core, `Processor::feed`, on 64 KiB buffers:
//! the read size of the servers, so one iteration is one server read.
//!
//! Two inputs bracket what a server sees: one long message (the best case,
//! a single `memchr` and one span to map) and messages of 32..100 bytes
//! separated by ignored stretches of the same length (many short spans,
//! so the per-span overhead shows).
//!
//! Run with `cargo bench --bench protocol`.

use std::hint::black_box;

use concur::protocol::{MSG_END, MSG_START, Processor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const BUF: usize = 64 * 1024;

/// xorshift64*: deterministic, so every run times the same bytes, and no
/// `rand` dependency just for a benchmark input.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A byte that is neither marker, so only the markers we place switch
    /// the state.
    fn plain_byte(&mut self) -> u8 {
        loop {
            let b = (self.next() >> 56) as u8;
            if b != MSG_START && b != MSG_END {
                return b;
            }
        }
    }
}

/// `^` and then one message that does not end inside the buffer. The
/// answer is every byte after the `^`; bytes cycle through all values but
/// `$` so the add really has to happen.
fn all_message() -> Vec<u8> {
    let mut input = Vec::with_capacity(BUF + 1);
    input.push(MSG_START);
    input.extend((0..BUF).map(|i| match i as u8 {
        MSG_END => b'x',
        b => b,
    }));
    input
}

/// Markers every 32..100 bytes, alternating `^` and `$`, so about half the
/// bytes are answered and half ignored.
fn mixed() -> Vec<u8> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut input = Vec::with_capacity(BUF);
    let mut marker = MSG_START;
    while input.len() < BUF {
        let gap = 32 + (rng.next() % 69) as usize;
        for _ in 0..gap {
            input.push(rng.plain_byte());
        }
        input.push(marker);
        marker = if marker == MSG_START {
            MSG_END
        } else {
            MSG_START
        };
    }
    input.truncate(BUF);
    input
}

fn feed(c: &mut Criterion) {
    let mut group = c.benchmark_group("feed");
    for (name, input) in [("all_message", all_message()), ("mixed", mixed())] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        // Reused across iterations: the servers reuse their output buffer
        // too, and an allocation per iteration would be timed otherwise.
        let mut out = Vec::with_capacity(input.len());
        group.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
            b.iter(|| {
                out.clear();
                // A fresh processor per buffer, so the all-message case
                // starts with its `^` every time.
                let mut p = Processor::new();
                p.feed(black_box(input), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, feed);
criterion_main!(benches);
