//! `concur bench`: one scenario, several servers, interleaved repeats.
//!
//! The servers under test are started here, in this process, on free
//! ports of 127.0.0.1 (or, for `idle`, as child processes); `--addr` adds
//! a server someone else started. Beside them runs the echo reference of
//! [`super::start_echo`], which moves the same bytes with the
//! same system calls and no protocol work: a server's figure over the
//! reference's, measured in the same repeat, is what the server costs.
//!
//! Runs are interleaved (for each count, for each repeat: every server in
//! turn), so a slow spell of the machine falls on all of them alike
//! rather than on whichever ran then.

use std::io::{self, IsTerminal};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::idle;
use super::load::{self, Outcome, Params, Scenario, Speaks};
use super::plot;
use super::report::{ERROR_SAMPLES, Percentiles, Results, Run};
use super::{EchoServer, Peer, start_echo};
use crate::server::{self, Config, Model, Protocol, Server};

/// The most connections (or idle clients) one run may open.
pub const MAX_COUNT: usize = 15_000;

/// What `concur bench` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// Connection counts, one run of each per server and repeat; empty
    /// for the scenario's default.
    pub counts: Vec<usize>,
    /// Whether this is `concur bench sweep` (for the record and plots).
    pub sweep: bool,
    /// Models to start here.
    pub models: Vec<Model>,
    /// A server started elsewhere, on this machine.
    pub addr: Option<SocketAddr>,
    /// Whether to run the echo reference beside them.
    pub reference: bool,
    /// The load's knobs.
    pub params: Params,
    /// Repeats of every run.
    pub repeat: usize,
    /// Workers of the `pool` model started here.
    pub pool_threads: Option<usize>,
    /// Where `results.json` and the plots go.
    pub out: Option<PathBuf>,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// The `concur` executable that `idle` starts servers with; `None`
    /// for this process's own.
    pub server_exe: Option<PathBuf>,
    /// The command line, for the record.
    pub command: String,
}

impl Options {
    /// `scenario` against every model and the reference, default counts,
    /// three repeats of `secs`.
    pub fn new(scenario: Scenario, secs: Duration) -> Self {
        Options {
            scenario,
            counts: Vec::new(),
            sweep: false,
            models: Model::ALL.to_vec(),
            addr: None,
            reference: true,
            params: Params::new(scenario, secs),
            repeat: 3,
            pool_threads: None,
            out: None,
            progress: false,
            server_exe: None,
            command: String::new(),
        }
    }

    /// Refuses what cannot run, saying what is allowed instead.
    pub fn check(&self) -> Result<(), String> {
        if self.models.is_empty() && self.addr.is_none() {
            return Err("no server to measure: give --models or --addr".into());
        }
        if let Some(addr) = self.addr {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--addr {addr} is not on this machine; only loopback addresses \
                     (127.0.0.1, ::1) are measured"
                ));
            }
            if self.scenario == Scenario::Idle {
                return Err(
                    "--addr does not work with idle, which starts each server as a \
                            child process to read its memory; use --models"
                        .into(),
                );
            }
        }
        if let Some(&c) = self.counts.iter().find(|&&c| c == 0 || c > MAX_COUNT) {
            return Err(format!(
                "a count of {c} is out of range; give 1 to {MAX_COUNT}"
            ));
        }
        if self.params.size == 0 || self.params.size > 16 << 20 {
            return Err(format!(
                "--size {} is out of range; give 1 to {} bytes",
                self.params.size,
                16 << 20
            ));
        }
        if self.params.rate == 0 {
            return Err("--rate 0 sends nothing; give at least 1 request per second".into());
        }
        if self.repeat == 0 {
            return Err("--repeat 0 runs nothing; give at least 1".into());
        }
        Ok(())
    }

    fn counts(&self) -> Vec<usize> {
        if self.counts.is_empty() {
            vec![self.scenario.default_count()]
        } else {
            self.counts.clone()
        }
    }
}

/// One server under test.
enum Contender {
    Echo(EchoServer),
    Here(Model, Server),
    Child(Model),
    External(SocketAddr),
}

impl Contender {
    fn name(&self) -> String {
        match self {
            Contender::Echo(_) => "echo".into(),
            Contender::Here(m, _) | Contender::Child(m) => m.name().into(),
            Contender::External(a) => a.to_string(),
        }
    }
}

fn local() -> io::Result<TcpListener> {
    // A deep backlog: sweeps and churn connect in bursts.
    server::listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), 4096)
}

fn contenders(options: &Options) -> io::Result<Vec<Contender>> {
    let scenario = options.scenario;
    let mut all = Vec::new();
    // The echo does not speak the primality protocol, and idle runs its
    // servers as children, which the echo is not.
    if options.reference && !matches!(scenario, Scenario::Cpu | Scenario::Idle) {
        all.push(Contender::Echo(start_echo(local()?)?));
    }
    for &model in &options.models {
        if scenario == Scenario::Idle {
            all.push(Contender::Child(model));
            continue;
        }
        let mut config = Config::new(model).drain_timeout(Duration::from_secs(1));
        if let Some(n) = options.pool_threads {
            config.threads = n;
        }
        if scenario.prime() {
            config.protocol = Protocol::Prime;
        }
        all.push(Contender::Here(model, server::start(local()?, config)?));
    }
    if let Some(addr) = options.addr {
        all.push(Contender::External(addr));
    }
    Ok(all)
}

/// Runs everything `options` asks for and returns the results (nothing
/// printed, nothing written).
pub fn run(options: &Options) -> io::Result<Results> {
    options
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let scenario = options.scenario;
    if scenario == Scenario::Idle || options.counts().iter().any(|&c| c > 500) {
        // Every client is a descriptor here (and, for idle, in the child).
        server::raise_fd_limit()?;
    }
    let exe = match &options.server_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let counts = options.counts();
    let contenders = contenders(options)?;
    let progress = progress_bar(
        options.progress,
        (counts.len() * options.repeat * contenders.len()) as u64,
    );
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cpu_before = cpu_ticks();
    let mut runs = Vec::new();
    for &count in &counts {
        for repeat in 1..=options.repeat {
            let mut round: Vec<Run> = Vec::new();
            for c in &contenders {
                if let Some(bar) = &progress {
                    bar.set_message(format!(
                        "{scenario}: {} with {count} {}, repeat {repeat}/{}",
                        c.name(),
                        scenario.count_name(),
                        options.repeat
                    ));
                }
                round.push(run_one(c, options, count, repeat, &exe)?);
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
            }
            // Against the reference of the same repeat: drift between
            // repeats then cancels out.
            let reference = round
                .iter()
                .find(|r| r.server == "echo" && r.errors == 0 && r.throughput > 0.0)
                .map(|r| r.throughput);
            for r in &mut round {
                r.vs_reference = reference.map(|t| r.throughput / t);
            }
            runs.extend(round);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let other_cpu_share = other_share(cpu_before, cpu_ticks());
    for c in contenders {
        match c {
            Contender::Echo(e) => e.stop(),
            Contender::Here(_, s) => {
                s.stop();
            }
            Contender::Child(_) | Contender::External(_) => {}
        }
    }
    let rows = Results::summarise(&runs);
    Ok(Results {
        command: options.command.clone(),
        started,
        cores: server::cores(),
        scenario,
        sweep: options.sweep,
        counts,
        repeat: options.repeat,
        params: options.params,
        reference: (options.reference && !matches!(scenario, Scenario::Cpu | Scenario::Idle))
            .then(|| "echo".to_string()),
        unit: scenario.unit(),
        other_cpu_share,
        runs,
        rows,
    })
}

fn run_one(
    c: &Contender,
    options: &Options,
    count: usize,
    repeat: usize,
    exe: &Path,
) -> io::Result<Run> {
    let scenario = options.scenario;
    let mut run = Run {
        server: c.name(),
        count,
        repeat,
        elapsed_s: 0.0,
        ops: 0,
        throughput: 0.0,
        vs_reference: None,
        latency_us: None,
        probe_us: None,
        idle: None,
        errors: 0,
        error_samples: Vec::new(),
    };
    if let Contender::Child(model) = c {
        let extra: Vec<String> = match (model, options.pool_threads) {
            (Model::Pool, Some(n)) => vec!["-n".into(), n.to_string()],
            _ => Vec::new(),
        };
        let figures = idle::run(exe, *model, &extra, count, options.params.secs)?;
        run.ops = figures.clients as u64;
        run.throughput = figures.bytes_per_client;
        run.latency_us = figures.newcomer_latency.as_ref().and_then(Percentiles::of);
        run.errors = figures.errors.len() as u64;
        run.error_samples = figures.errors.iter().take(ERROR_SAMPLES).cloned().collect();
        run.idle = Some(figures);
        return Ok(run);
    }
    let (addr, speaks) = match c {
        Contender::Echo(e) => (e.local_addr(), Speaks::Bytes(Peer::Echo)),
        Contender::Here(_, s) => (s.local_addr(), speaks(scenario)),
        Contender::External(a) => (*a, speaks(scenario)),
        Contender::Child(_) => unreachable!("handled above"),
    };
    let outcome: Outcome = load::run(scenario, addr, speaks, count, &options.params)?;
    run.elapsed_s = outcome.elapsed.as_secs_f64();
    run.ops = outcome.ops;
    run.throughput = outcome.throughput(scenario);
    run.latency_us = outcome.latency.as_ref().and_then(Percentiles::of);
    run.probe_us = outcome.probe.as_ref().and_then(Percentiles::of);
    run.errors = outcome.errors.len() as u64;
    run.error_samples = outcome.errors.into_iter().take(ERROR_SAMPLES).collect();
    Ok(run)
}

fn speaks(scenario: Scenario) -> Speaks {
    if scenario.prime() {
        Speaks::Prime
    } else {
        Speaks::Bytes(Peer::Concur)
    }
}

fn progress_bar(wanted: bool, total: u64) -> Option<ProgressBar> {
    if !wanted || !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {elapsed} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// The machine's busy and total CPU ticks and this process's own, from
/// /proc; `None` off Linux. Take one before a run and one after, and give
/// both to [`other_share`].
pub fn cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user, nice, system, irq, softirq: loopback traffic is processed in
    // softirqs, on behalf of whoever sent it, so they count as busy too.
    let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| all.get(i)).sum();
    let total = all.iter().sum();
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = me.rsplit_once(')')?.1.split_whitespace().collect();
    let mine = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((busy, total, mine))
}

/// The share of the machine's CPU time between two [`cpu_ticks`] that
/// other processes used: the load average cannot tell other work from a
/// benchmark's own threads; this can.
pub fn other_share(before: Option<(u64, u64, u64)>, after: Option<(u64, u64, u64)>) -> Option<f64> {
    let ((b0, t0, m0), (b1, t1, m1)) = (before?, after?);
    let others = (b1.saturating_sub(b0)).saturating_sub(m1.saturating_sub(m0));
    Some(others as f64 / (t1.saturating_sub(t0)).max(1) as f64)
}

/// Writes `results.json` and the plots into `dir` (created if missing);
/// returns the paths written.
pub fn write(results: &Results, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(results).map_err(io::Error::other)?;
    std::fs::write(&json, text + "\n")?;
    let mut written = vec![json];
    written.extend(plot::write_all(results, dir)?);
    Ok(written)
}

/// `concur bench`: runs, prints the table (and any errors), writes the
/// outputs; the exit code is 0 when every byte was right, 1 otherwise.
pub fn command(options: &Options) -> u8 {
    let results = match run(options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    print!("{results}");
    if let Some(dir) = &options.out {
        match write(&results, dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("error: cannot write to {}: {e}", dir.display());
                return 1;
            }
        }
    }
    let errors = results.errors();
    if errors > 0 {
        eprintln!(
            "error: {errors} connections ended in an error; their figures are not to be trusted:"
        );
        for r in results.runs.iter().filter(|r| r.errors > 0) {
            for e in &r.error_samples {
                eprintln!(
                    "  {} ({} {}, repeat {}): {e}",
                    r.server,
                    r.count,
                    results.scenario.count_name(),
                    r.repeat
                );
            }
        }
        return 1;
    }
    0
}
