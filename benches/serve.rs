//! The servers against the echo reference, end to end over loopback TCP.
//!
//! Two loads from `concur::bench`, each checking every byte it gets back:
//!
//! - **stream**: one client sends one long message in 64 KiB writes while
//!   reading the answer; MB/s, and the ratio to the echo server measured
//!   in the same round;
//! - **pingpong**: 16-byte requests in a closed loop on 8 connections;
//!   requests per second, p50 and p99 latency.
//!
//! Runs are interleaved (echo, model, model, ..., echo, model, ...) so
//! that a slow spell of the machine hits every server alike, and each
//! figure is the median over the rounds.
//!
//! Run with `cargo bench --bench serve`. Environment, all optional:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SERVE_ROUNDS` | 7 | rounds of each load |
//! | `SERVE_STREAM_MIB` | 1024 | MiB per stream run |
//! | `SERVE_PINGPONG_MS` | 2000 | length of each pingpong run |
//! | `SERVE_MODELS` | `sequential,thread,pool` | models to measure |
//!
//! `sequential` takes part in the stream load only: it serves one client at
//! a time, so seven of the eight pingpong connections would wait forever.

use std::net::TcpListener;
use std::str::FromStr;
use std::time::Duration;

use concur::bench::report::median;
use concur::bench::{self, Limit, Target, run};
use concur::server::{self, Config, Model, Server};

const WRITE_SIZE: usize = 64 * 1024;
const CONNECTIONS: usize = 8;
const PAYLOAD: usize = 16;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// One server under test: its name in the tables and where to reach it.
struct Contender {
    name: String,
    target: Target,
    model: Option<Model>,
}

fn main() {
    // `cargo bench` passes `--bench`; everything else comes from the
    // environment.
    let rounds: usize = env_or("SERVE_ROUNDS", 7).max(1);
    let stream_bytes: u64 = env_or::<u64>("SERVE_STREAM_MIB", 1024) << 20;
    let pingpong_for = Duration::from_millis(env_or("SERVE_PINGPONG_MS", 2000));
    let models: Vec<Model> = env_or::<String>("SERVE_MODELS", "sequential,thread,pool".into())
        .split(',')
        .map(|m| {
            m.trim()
                .parse()
                .unwrap_or_else(|e| panic!("SERVE_MODELS: {e}"))
        })
        .collect();

    let echo = bench::start_echo(local()).expect("start the echo server");
    let servers: Vec<Server> = models
        .iter()
        .map(|&m| server::start(local(), Config::new(m)).expect("start a server"))
        .collect();
    let mut contenders = vec![Contender {
        name: "echo".into(),
        target: echo.target(),
        model: None,
    }];
    for (server, &model) in servers.iter().zip(&models) {
        contenders.push(Contender {
            name: model.name().into(),
            target: Target::concur(server.local_addr()),
            model: Some(model),
        });
    }

    println!(
        "{} cores; {rounds} rounds, interleaved; medians over rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let cpu_before = run::cpu_ticks();
    stream_table(&contenders, rounds, stream_bytes);
    let closed_loop: Vec<&Contender> = contenders
        .iter()
        .filter(|c| c.model != Some(Model::Sequential))
        .collect();
    pingpong_table(&closed_loop, rounds, pingpong_for);
    println!();
    print_others(cpu_before);

    for server in servers {
        server.stop();
    }
    echo.stop();
}

fn print_others(before: Option<(u64, u64, u64)>) {
    if let Some(others) = run::other_share(before, run::cpu_ticks()) {
        println!(
            "other processes used {:.1}% of the machine's CPU time during the run",
            100.0 * others
        );
    }
}

fn stream_table(contenders: &[Contender], rounds: usize, bytes: u64) {
    println!();
    println!(
        "stream: one client, one message of {} MiB in {} KiB writes",
        bytes >> 20,
        WRITE_SIZE >> 10
    );
    // A short run each first, so that no server pays for a cold start.
    for c in contenders {
        run_stream(c, bytes.min(64 << 20));
    }
    let mut mbs = vec![Vec::new(); contenders.len()];
    let mut ratios = vec![Vec::new(); contenders.len()];
    for round in 0..rounds {
        let mut this_round = Vec::new();
        for (i, c) in contenders.iter().enumerate() {
            let v = run_stream(c, bytes);
            mbs[i].push(v);
            this_round.push(v);
        }
        // Against the echo of the same round: drift between rounds then
        // cancels out.
        for (i, v) in this_round.iter().enumerate() {
            ratios[i].push(v / this_round[0]);
        }
        let line: Vec<String> = contenders
            .iter()
            .zip(&this_round)
            .map(|(c, v)| format!("{} {v:.0}", c.name))
            .collect();
        println!("  round {}: {} MB/s", round + 1, line.join(", "));
    }
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12}",
        "server", "MB/s", "min", "max", "vs echo"
    );
    for (i, c) in contenders.iter().enumerate() {
        let min = mbs[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = mbs[i].iter().copied().fold(0.0, f64::max);
        println!(
            "{:<12} {:>10.0} {:>10.0} {:>10.0} {:>11.1}%",
            c.name,
            median(mbs[i].clone()),
            min,
            max,
            100.0 * median(ratios[i].clone())
        );
    }
}

fn run_stream(c: &Contender, bytes: u64) -> f64 {
    bench::stream(c.target, bytes, WRITE_SIZE)
        .unwrap_or_else(|e| panic!("stream to {}: {e}", c.name))
        .mb_per_s()
}

fn pingpong_table(contenders: &[&Contender], rounds: usize, run_for: Duration) {
    println!();
    println!(
        "pingpong: {CONNECTIONS} connections, {PAYLOAD}-byte payload, closed loop, \
         {} ms per run",
        run_for.as_millis()
    );
    for c in contenders {
        run_pingpong(c, run_for.min(Duration::from_millis(200)));
    }
    let mut rps = vec![Vec::new(); contenders.len()];
    let mut p50 = vec![Vec::new(); contenders.len()];
    let mut p99 = vec![Vec::new(); contenders.len()];
    let mut max = vec![0u64; contenders.len()];
    for round in 0..rounds {
        let mut line = Vec::new();
        for (i, c) in contenders.iter().enumerate() {
            let r = run_pingpong(c, run_for);
            rps[i].push(r.requests_per_s());
            p50[i].push(r.p50().as_micros() as f64);
            p99[i].push(r.p99().as_micros() as f64);
            max[i] = max[i].max(r.max().as_micros() as u64);
            line.push(format!(
                "{} {:.0}/s p50 {} µs",
                c.name,
                r.requests_per_s(),
                r.p50().as_micros()
            ));
        }
        println!("  round {}: {}", round + 1, line.join(", "));
    }
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "server", "req/s", "p50 µs", "p99 µs", "max µs", "vs echo"
    );
    let echo_rps = median(rps[0].clone());
    for (i, c) in contenders.iter().enumerate() {
        let r = median(rps[i].clone());
        println!(
            "{:<12} {:>10.0} {:>10.0} {:>10.0} {:>12} {:>9.1}%",
            c.name,
            r,
            median(p50[i].clone()),
            median(p99[i].clone()),
            max[i],
            100.0 * r / echo_rps
        );
    }
}

fn run_pingpong(c: &Contender, run_for: Duration) -> bench::PingPongReport {
    bench::pingpong(c.target, CONNECTIONS, PAYLOAD, Limit::Duration(run_for))
        .unwrap_or_else(|e| panic!("pingpong to {}: {e}", c.name))
}
