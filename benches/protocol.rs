//! Throughput of the protocol core, `Processor::feed`, on 64 KiB buffers:
//! the read size of the servers, so one iteration is one server read.
//!
//! Two inputs bracket what a server sees: one long message (the best case,
//! a single `memchr` and one span to map) and messages of 32..100 bytes
//! separated by ignored stretches of the same length (many short spans,
//! so the per-span overhead shows).
//!
//! Beside criterion's figures, a check that the core stays single-pass:
//! it times `feed` on the one-message buffer against a baseline doing the
//! least the protocol allows (one `memchr` for the end marker, then each
//! byte mapped and written once), interleaved in the same run, prints the
//! ratio and fails the run if `feed` falls below [`SINGLE_PASS_FLOOR`] of
//! it. A core that copies the span and then adds in place pays a second
//! pass over the output (and the C library's `memmove`, slow on some CPUs)
//! and lands far below the floor.
//!
//! Run with `cargo bench --bench protocol`.

use std::hint::black_box;
use std::time::{Duration, Instant};

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

/// The least a core must do for a buffer: find the end marker, then map
/// and write each answered byte once.
fn single_pass_baseline(input: &[u8], out: &mut Vec<u8>) {
    let body = &input[1..];
    let span = &body[..memchr::memchr(MSG_END, body).unwrap_or(body.len())];
    out.extend(span.iter().map(|b| b.wrapping_add(1)));
}

/// `feed` must run at least this fraction of the baseline's speed.
const SINGLE_PASS_FLOOR: f64 = 0.8;

/// Median time per buffer of `f` over `rounds` rounds of `per_round` calls.
fn time_per_buffer(mut f: impl FnMut(), per_round: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..per_round {
        f();
    }
    start.elapsed() / per_round
}

/// Runs in the criterion group so that every `cargo bench --bench
/// protocol` makes the check; it uses its own clock, as it needs the two
/// medians side by side.
fn single_pass_check(_: &mut Criterion) {
    let input = all_message();
    let mut out = Vec::with_capacity(input.len());
    let (mut core, mut baseline) = (Vec::new(), Vec::new());
    // Interleaved rounds, so a slow spell of the machine hits both.
    for _ in 0..51 {
        core.push(time_per_buffer(
            || {
                out.clear();
                Processor::new().feed(black_box(&input), &mut out);
                black_box(out.len());
            },
            2000,
        ));
        baseline.push(time_per_buffer(
            || {
                out.clear();
                single_pass_baseline(black_box(&input), &mut out);
                black_box(out.len());
            },
            2000,
        ));
    }
    core.sort();
    baseline.sort();
    let (core, baseline) = (core[core.len() / 2], baseline[baseline.len() / 2]);
    let gbs = |d: Duration| input.len() as f64 / d.as_secs_f64() / 1e9;
    let ratio = baseline.as_secs_f64() / core.as_secs_f64();
    println!(
        "single-pass check, 64 KiB in one message: feed {:.1} GB/s, baseline {:.1} GB/s, \
         ratio {ratio:.2} (floor {SINGLE_PASS_FLOOR})",
        gbs(core),
        gbs(baseline)
    );
    assert!(
        ratio >= SINGLE_PASS_FLOOR,
        "feed runs at {ratio:.2} of a single pass: is the span copied and then modified?"
    );
}

criterion_group!(benches, feed, single_pass_check);
criterion_main!(benches);
