//! What idle clients cost each model: resident memory per connected client
//! of the server process, its thread count, and how fast a newcomer is
//! served while they sit there; `concur bench idle`, from `cargo bench`.
//!
//! The server runs as a child process (the real `concur` binary), so its
//! memory is read alone from /proc; the idle clients are held by the load
//! engine. Run with `cargo bench --bench idle` (env `IDLE_CLIENTS`,
//! default 10000; `IDLE_SECS`, default 2).

use std::path::PathBuf;
use std::time::Duration;

use concur::bench::{Options, Scenario, run};

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let clients = var("IDLE_CLIENTS").map_or(10_000, |c| c as usize);
    let secs = Duration::from_secs_f64(var("IDLE_SECS").unwrap_or(2.0));
    let mut options = Options::new(Scenario::Idle, secs);
    options.counts = vec![clients];
    options.repeat = 1;
    options.server_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_concur")));
    let results = run::run(&options.check().expect("valid options")).expect("the benchmark runs");
    println!("{results}");
}
