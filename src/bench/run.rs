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
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::contender::{Contender, Reference, Serves, contenders};
use super::cpus;
use super::echo::Peer;
use super::engine::{self, ClientShape, Plan, Speaks};
use super::idle;
use super::kernel::Counters;
use super::options::{Options, ValidOptions};
use super::report::{Histograms, Percentiles, Results, Run, spectrum};
use super::scenario::Scenario;
use crate::server::{self, Model};

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
    let clients = &options.clients;
    let progress = progress_bar(
        options.progress,
        (counts.len() * options.repeat * clients.len() * contenders.len()) as u64,
    );
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let usage_before = Usage::read(&contenders);
    let mut runs = Vec::new();
    let mut syscalls_not_counted = None;
    for &count in &counts {
        for repeat in 1..=options.repeat {
            for &client in clients {
                let mut round: Vec<Run> = Vec::new();
                for c in &contenders {
                    if let Some(bar) = &progress {
                        bar.set_message(format!(
                            "{scenario}: {} with {count} {} ({client} client), repeat {repeat}/{}",
                            c.name(),
                            scenario.count_name(),
                            options.repeat
                        ));
                    }
                    let (run, refused) = run_one(c, options, client, count, repeat, &exe)?;
                    syscalls_not_counted = syscalls_not_counted.or(refused);
                    round.push(run);
                    if let Some(bar) = &progress {
                        bar.inc(1);
                    }
                }
                // Against the reference of the same repeat and client:
                // drift between repeats then cancels out.
                let reference = round
                    .iter()
                    .find(|r| {
                        r.server == Reference::Echo.name() && r.errors == 0 && r.throughput > 0.0
                    })
                    .map(|r| r.throughput);
                for r in &mut round {
                    r.vs_reference = reference.map(|t| r.throughput / t);
                }
                runs.extend(round);
            }
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
        clients: options.clients.clone(),
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
    client: ClientShape,
    count: usize,
    repeat: usize,
    exe: &Path,
) -> io::Result<(Run, Option<String>)> {
    let scenario = options.scenario;
    let mut run = Run::new(c.name(), client, count, repeat, options.client_threads);
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
    plan.client = client;
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
