//! `concur bench`: one scenario, several servers, interleaved repeats.
//!
//! Every server under test runs as a child process (`concur serve`, and
//! `concur echo` and `concur floor` for the references) on a free port of
//! 127.0.0.1, so that the CPU time it uses and the system calls it makes
//! are its own, measured beside the load generator's CPU (whose threads
//! time themselves); `--addr` adds a server started elsewhere, whose CPU
//! time and calls are read too when its process can be found by its
//! listening socket. The echo reference moves the same bytes with the
//! same system calls as the thread models and no protocol work: a
//! server's throughput over the echo's, measured in the same repeat, is
//! `vs ref`. The floor answers the protocol with the least there is: what
//! a unit of work costs a model beside what it costs the floor is what
//! the model adds.
//!
//! Runs are interleaved (for each count, for each repeat: every server in
//! turn), so a slow spell of the machine falls on all of them alike
//! rather than on whichever ran then. Each run records what the kernel's
//! TCP counters moved by ([`super::kernel`]).

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::child::ServerProcess;
use super::engine::{self, Plan, Speaks};
use super::idle;
use super::kernel::Counters;
use super::report::{Histograms, Percentiles, Results, Run, spectrum};
use super::scenario::{Params, Scenario};
use super::{Peer, cpus};
use crate::server::{self, Model};

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
    /// Models to start and measure.
    pub models: Vec<Model>,
    /// A server started elsewhere, on this machine.
    pub addr: Option<SocketAddr>,
    /// Whether to run the references beside them: the echo and the floor
    /// (in the scenarios they speak).
    pub reference: bool,
    /// Whether to count the servers' system calls (where the kernel
    /// allows it; see [`super::syscalls`]).
    pub count_syscalls: bool,
    /// The load's knobs.
    pub params: Params,
    /// Repeats of every run.
    pub repeat: usize,
    /// Workers of the `pool` model started here.
    pub pool_threads: Option<usize>,
    /// Threads of the load generator.
    pub client_threads: usize,
    /// CPUs the servers started here are pinned to.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the load generator is pinned to.
    pub client_cpus: Option<Vec<usize>>,
    /// Where `results.json`, the plots and the `.hgrm` files go.
    pub out: Option<PathBuf>,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// The `concur` executable the servers are started from; `None` for
    /// this process's own.
    pub server_exe: Option<PathBuf>,
    /// The command line, for the record.
    pub command: String,
}

impl Options {
    /// `scenario` against every model this machine can run (all but
    /// `uring` where the kernel refuses io_uring) and the reference,
    /// default counts, three repeats of `secs`.
    pub fn new(scenario: Scenario, secs: Duration) -> Self {
        Options {
            scenario,
            counts: Vec::new(),
            sweep: false,
            models: Model::ALL
                .into_iter()
                .filter(|&m| m.available().is_ok())
                .collect(),
            addr: None,
            reference: true,
            count_syscalls: true,
            params: Params::new(scenario, secs),
            repeat: 3,
            pool_threads: None,
            client_threads: engine::default_threads(),
            server_cpus: None,
            client_cpus: None,
            out: None,
            progress: false,
            server_exe: None,
            command: String::new(),
        }
    }

    /// The one check of a run's options: [`ValidOptions`], or what cannot
    /// run, saying what is allowed instead.
    pub fn check(self) -> Result<ValidOptions, String> {
        self.within()?;
        Ok(ValidOptions(self))
    }

    fn within(&self) -> Result<(), String> {
        if self.models.is_empty() && self.addr.is_none() {
            return Err("no server to measure: give --models or --addr".into());
        }
        for &model in &self.models {
            model
                .available()
                .map_err(|e| format!("--models {model}: {e}"))?;
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
        crate::server::config::time("--secs", self.params.secs, false)
            .map_err(|e| e.to_string())?;
        let within = |flag: &str, value: u64, lo: u64, hi: u64, what: &str| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {value} is out of range; give {lo} to {hi}{what}"
                ))
            }
        };
        for &c in &self.counts {
            within("-c", c as u64, 1, MAX_COUNT as u64, "")?;
        }
        within("--size", self.params.size as u64, 1, 16 << 20, " bytes")?;
        within(
            "--rate",
            self.params.rate,
            1,
            10_000_000,
            " requests per second",
        )?;
        within("--repeat", self.repeat as u64, 1, 100, "")?;
        within(
            "--client-threads",
            self.client_threads as u64,
            1,
            MAX_CLIENT_THREADS as u64,
            "",
        )?;
        if let Some(n) = self.pool_threads {
            within(
                "--pool-threads",
                n as u64,
                1,
                *crate::server::limits::THREADS.end() as u64,
                "",
            )?;
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

/// The most load-generator threads: a few are the point.
pub const MAX_CLIENT_THREADS: usize = 64;

/// A server run beside the models to measure them against, each a hidden
/// subcommand of `concur` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Throughput's yardstick: the same system calls as the thread models,
    /// no protocol work ([`super::start_echo`]).
    Echo,
    /// CPU's and system calls' yardstick: the least server that answers
    /// the protocol ([`super::floor`]).
    Floor,
}

impl Reference {
    /// Both, in the order their rows come.
    pub const ALL: [Reference; 2] = [Reference::Echo, Reference::Floor];

    /// Its row's name, and its subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Echo => "echo",
            Reference::Floor => "floor",
        }
    }

    /// How it answers.
    pub fn peer(self) -> Peer {
        match self {
            Reference::Echo => Peer::Echo,
            Reference::Floor => Peer::Concur,
        }
    }

    /// Whether it runs in `scenario`: neither speaks the primality
    /// protocol, and idle measures the models' memory.
    pub fn runs_in(scenario: Scenario) -> bool {
        !matches!(scenario, Scenario::Cpu | Scenario::Idle)
    }

    /// Serves on `listener`, on the calling thread, for as long as the
    /// process lives: `concur echo`, `concur floor`.
    pub fn serve(self, listener: std::net::TcpListener) -> io::Result<()> {
        match self {
            Reference::Echo => super::serve_echo(listener),
            Reference::Floor => super::serve_floor(listener),
        }
    }
}

/// One server under test.
enum Contender {
    /// A process this run started.
    Child {
        serves: Serves,
        process: ServerProcess,
    },
    /// Started anew for every `idle` run, to read its memory fresh.
    Idle(Model),
    External(SocketAddr),
}

/// What a child process serves.
#[derive(Clone, Copy)]
enum Serves {
    Model(Model),
    Reference(Reference),
}

impl Contender {
    fn name(&self) -> String {
        match self {
            Contender::Child {
                serves: Serves::Reference(r),
                ..
            } => r.name().into(),
            Contender::Child {
                serves: Serves::Model(m),
                ..
            }
            | Contender::Idle(m) => m.name().into(),
            Contender::External(a) => a.to_string(),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Contender::Child { process, .. } => Some(process.pid()),
            Contender::External(addr) => cpus::listener_pid(addr.port()),
            Contender::Idle(_) => None,
        }
    }
}

/// The `concur serve` arguments of `model` in a run with up to `most`
/// connections.
fn serve_args(model: Model, options: &Options, most: usize) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--port", "0", "-q", "--drain-timeout", "1"]
        .map(String::from)
        .to_vec();
    // A deep backlog: sweeps and churn connect in bursts. Room for every
    // connection of the largest run, and for churn's closing ones.
    args.extend(["--backlog".into(), "4096".into()]);
    args.extend(["--max-conns".into(), (most + 64).max(10_000).to_string()]);
    args.extend(["--model".into(), model.name().into()]);
    if options.scenario.prime() {
        args.extend(["--protocol".into(), "prime".into()]);
    }
    if let (Model::Pool, Some(n)) = (model, options.pool_threads) {
        args.extend(["-n".into(), n.to_string()]);
    }
    args
}

fn contenders(options: &Options, exe: &Path) -> io::Result<Vec<Contender>> {
    let scenario = options.scenario;
    let most = options.counts().into_iter().max().unwrap_or(1);
    let cpus = options.server_cpus.as_deref();
    let mut all = Vec::new();
    if options.reference && Reference::runs_in(scenario) {
        for reference in Reference::ALL {
            let args = [reference.name(), "--port", "0"].map(String::from);
            all.push(Contender::Child {
                serves: Serves::Reference(reference),
                process: ServerProcess::spawn(exe, &args, cpus)?,
            });
        }
    }
    for &model in &options.models {
        if scenario == Scenario::Idle {
            all.push(Contender::Idle(model));
            continue;
        }
        let process = ServerProcess::spawn(exe, &serve_args(model, options, most), cpus)?;
        all.push(Contender::Child {
            serves: Serves::Model(model),
            process,
        });
    }
    if let Some(addr) = options.addr {
        all.push(Contender::External(addr));
    }
    Ok(all)
}

/// [`Options`] that [`Options::check`] has passed: the only kind a run
/// takes. Read them as `Options`; they cannot be changed.
#[derive(Clone, Debug)]
pub struct ValidOptions(Options);

impl std::ops::Deref for ValidOptions {
    type Target = Options;

    fn deref(&self) -> &Options {
        &self.0
    }
}

/// Runs everything `options` asks for and returns the results (nothing
/// printed, nothing written).
pub fn run(options: &ValidOptions) -> io::Result<Results> {
    let scenario = options.scenario;
    // Every connection is a descriptor here.
    server::raise_fd_limit()?;
    let exe = match &options.server_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let counts = options.counts();
    let contenders = contenders(options, &exe)?;
    let progress = progress_bar(
        options.progress,
        (counts.len() * options.repeat * contenders.len()) as u64,
    );
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let usage_before = Usage::read(&contenders);
    let mut runs = Vec::new();
    let mut syscalls_not_counted = None;
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
                let (run, refused) = run_one(c, options, count, repeat, &exe)?;
                syscalls_not_counted = syscalls_not_counted.or(refused);
                round.push(run);
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
            }
            // Against the reference of the same repeat: drift between
            // repeats then cancels out.
            let reference = round
                .iter()
                .find(|r| r.server == Reference::Echo.name() && r.errors == 0 && r.throughput > 0.0)
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
    let other_cpu_share = Usage::read(&contenders).others_since(&usage_before);
    drop(contenders);
    let rows = Results::summarise(scenario, &runs);
    let (cpu, cpu_flags) = cpu_model();
    Ok(Results {
        command: options.command.clone(),
        started,
        cores: server::cores(),
        cpu,
        cpu_flags,
        client_threads: options.client_threads,
        server_cpus: options.server_cpus.clone(),
        client_cpus: options.client_cpus.clone(),
        scenario,
        sweep: options.sweep,
        counts,
        repeat: options.repeat,
        params: options.params,
        reference: (options.reference && Reference::runs_in(scenario))
            .then(|| Reference::Echo.name().to_string()),
        unit: scenario.unit(),
        work_unit: scenario.work_unit(),
        syscalls_source: runs
            .iter()
            .any(|r| r.server_syscalls.is_some())
            .then(|| super::syscalls::SOURCE.to_string()),
        syscalls_not_counted,
        other_cpu_share,
        runs,
        rows,
    })
}

/// One run, and why the server's system calls were not counted if they
/// were asked for and refused.
fn run_one(
    c: &Contender,
    options: &Options,
    count: usize,
    repeat: usize,
    exe: &Path,
) -> io::Result<(Run, Option<String>)> {
    let scenario = options.scenario;
    let mut run = Run::new(c.name(), count, repeat, options.client_threads);
    let counters = Counters::read();
    if let Contender::Idle(model) = c {
        let extra: Vec<String> = match (model, options.pool_threads) {
            (Model::Pool, Some(n)) => vec!["-n".into(), n.to_string()],
            _ => Vec::new(),
        };
        let figures = idle::run(
            exe,
            *model,
            &extra,
            count,
            options.params.secs,
            options.client_threads,
            options.server_cpus.as_deref(),
        )?;
        run.kernel = Counters::read().since(&counters);
        run.ops = figures.clients as u64;
        run.served_at_once = figures.greeted;
        run.throughput = figures.bytes_per_client;
        run.latency_us = figures.newcomer_latency.as_ref().and_then(Percentiles::of);
        run.latency_spectrum = figures.newcomer_latency.as_ref().map(spectrum);
        run.errors = figures.errors.len() as u64;
        run.error_samples = figures
            .errors
            .iter()
            .take(super::report::ERROR_SAMPLES)
            .cloned()
            .collect();
        run.idle = Some(figures);
        return Ok((run, None));
    }
    let (addr, speaks) = match c {
        Contender::Child {
            serves: Serves::Reference(r),
            process,
        } => (process.addr(), Speaks::Bytes(r.peer())),
        Contender::Child { process, .. } => (process.addr(), speaks(scenario)),
        Contender::External(a) => (*a, speaks(scenario)),
        Contender::Idle(_) => unreachable!("handled above"),
    };
    let mut plan = Plan::new(scenario, addr, speaks, count, options.params.secs);
    plan.params = options.params;
    plan.threads = options.client_threads;
    plan.cpus = options.client_cpus.clone();
    plan.server_pid = c.pid();
    plan.count_syscalls = options.count_syscalls;
    let outcome = engine::run(&plan)?;
    run.kernel = Counters::read().since(&counters);
    run.elapsed_s = outcome.elapsed.as_secs_f64();
    run.ops = outcome.ops;
    run.throughput = outcome.throughput(scenario);
    let of = |h: &Option<hdrhistogram::Histogram<u64>>| h.as_ref().and_then(Percentiles::of);
    let spectrum_of = |h: &Option<hdrhistogram::Histogram<u64>>| h.as_ref().map(spectrum);
    run.latency_us = of(&outcome.latency);
    run.latency_spectrum = spectrum_of(&outcome.latency);
    run.uncorrected_us = of(&outcome.uncorrected);
    run.uncorrected_spectrum = spectrum_of(&outcome.uncorrected);
    run.probe_us = of(&outcome.probe);
    run.probe_spectrum = spectrum_of(&outcome.probe);
    run.unsent = outcome.unsent;
    run.served_at_once = outcome.served_at_once;
    run.server_cpu_s = outcome.server_cpu.map(|d| d.as_secs_f64());
    run.client_cpu_s = Some(outcome.client_cpu.as_secs_f64());
    run.server_syscalls = outcome.server_syscalls;
    run.server_kernel_share = outcome.server_kernel_share;
    run.cpu_window_s = outcome.window.as_secs_f64();
    run.client_threads = outcome.threads;
    run.errors = outcome.errors;
    run.error_samples = outcome
        .error_samples
        .into_iter()
        .take(super::report::ERROR_SAMPLES)
        .collect();
    run.histograms = Histograms {
        latency: outcome.latency,
        uncorrected: outcome.uncorrected,
        probe: outcome.probe,
    };
    Ok((run, outcome.syscalls_refused))
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

/// CPU ticks: the machine's busy and total, this process's, and the
/// server processes'.
struct Usage {
    machine: Option<(u64, u64)>,
    ours: u64,
}

impl Usage {
    fn read(contenders: &[Contender]) -> Self {
        let me = cpus::process_ticks(std::process::id()).unwrap_or(0);
        let servers: u64 = contenders
            .iter()
            .filter_map(|c| c.pid().and_then(cpus::process_ticks))
            .sum();
        Usage {
            machine: cpus::machine_ticks(),
            ours: me + servers,
        }
    }

    /// The share of the machine's CPU time that other processes used
    /// since `before`: the load average cannot tell other work from a
    /// benchmark's own; this can. (Servers started anew for each `idle`
    /// run are not told apart and count as other.)
    fn others_since(&self, before: &Usage) -> Option<f64> {
        let ((b0, t0), (b1, t1)) = (before.machine?, self.machine?);
        let others = (b1.saturating_sub(b0)).saturating_sub(self.ours.saturating_sub(before.ours));
        Some(others as f64 / (t1.saturating_sub(t0)).max(1) as f64)
    }
}

/// The CPU's model name and the flags that bear on how fast memory is
/// copied and mapped.
pub fn cpu_model() -> (String, Vec<String>) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown".into());
    let flags = field("flags").unwrap_or_default();
    let wanted = ["erms", "fsrm", "avx2", "avx512f", "avx512bw"];
    let have = wanted
        .iter()
        .filter(|w| flags.split_whitespace().any(|f| f == **w))
        .map(|w| w.to_string())
        .collect();
    (model, have)
}

/// Writes `results.json`, the plots and a `.hgrm` latency distribution
/// per row into `dir` (created if missing); returns the paths written.
pub fn write(results: &Results, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("results.json");
    let text = serde_json::to_string_pretty(results).map_err(io::Error::other)?;
    std::fs::write(&json, text + "\n")?;
    let mut written = vec![json];
    written.extend(super::plot::write_all(results, dir)?);
    for r in &results.rows {
        let h = &r.histograms;
        for (what, hist) in [
            ("", &h.latency),
            ("-uncorrected", &h.uncorrected),
            ("-probe", &h.probe),
        ] {
            let Some(hist) = hist.as_ref().filter(|h| !h.is_empty()) else {
                continue;
            };
            let name = format!("{}-{}-{}{what}.hgrm", results.scenario, r.server, r.count)
                .replace([':', '[', ']'], "_");
            let path = dir.join(name);
            std::fs::write(&path, super::report::hgrm(hist))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// `concur bench`: runs, prints the table (and any errors), writes the
/// outputs; the exit code is 0 when every byte was right, 1 otherwise.
pub fn command(options: &ValidOptions) -> u8 {
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
