//! Every model against the echo and floor references, end to end over
//! loopback TCP, with the load engine of `concur bench`: streaming one and
//! four connections, and 16-byte pingpong on 64. The servers run as child
//! processes of the `concur` binary, so each table shows the server's CPU
//! beside the load generator's, and what a unit of work cost it.
//!
//! Run with `cargo bench --bench serve`. Environment, all optional:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SERVE_REPEAT` | 5 | repeats of each run, interleaved |
//! | `SERVE_SECS` | 3 | seconds per run |
//! | `SERVE_MODELS` | all | models to measure, comma-separated |
//!
//! The same runs from the command line:
//! `concur bench stream -c 1,4 --repeat 5 --secs 3` and
//! `concur bench pingpong -c 64 --repeat 5 --secs 3`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use concur::bench::{Options, Scenario, run};
use concur::server::Model;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; everything else comes from the
    // environment.
    let repeat: usize = env_or("SERVE_REPEAT", 5).max(1);
    let secs = Duration::from_secs_f64(env_or("SERVE_SECS", 3.0));
    let models: Vec<Model> = match std::env::var("SERVE_MODELS") {
        Ok(list) => list
            .split(',')
            .map(|m| {
                m.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("SERVE_MODELS: {e}"))
            })
            .collect(),
        Err(_) => Model::ALL.to_vec(),
    };
    for (scenario, counts) in [
        (Scenario::Stream, vec![1, 4]),
        (Scenario::Pingpong, vec![64]),
    ] {
        let mut options = Options::new(scenario, secs);
        options.counts = counts;
        options.models = models.clone();
        options.repeat = repeat;
        options.server_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_concur")));
        let results =
            run::run(&options.check().expect("valid options")).expect("the benchmark runs");
        println!("{results}");
        assert_eq!(results.errors(), 0, "wrong answers: the figures are void");
    }
}
