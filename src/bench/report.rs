//! What `concur bench` found: every run's figures, the rows of the table,
//! and the machine they came from. All of it goes to `results.json` as it
//! is here.
//!
//! A row's throughput is the median over its repeats; its latency
//! percentiles come from the repeats' histograms merged, so that a tail
//! percentile is the tail of every request measured, not the median of
//! each repeat's tail.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::engine::ClientShape;
use super::idle::IdleFigures;
use super::latency::new_histogram;
pub use super::latency::{Histograms, Percentiles, hgrm, spectrum};
use super::scenario::{Params, Scenario};

/// One run: one server, one connection count, one repeat.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The server: a model's name, `echo` for the reference, or the
    /// `--addr` given.
    pub server: String,
    /// The load generator that drove it.
    pub client: ClientShape,
    /// Connections (workers for `churn`, idle clients for `idle`, heavy
    /// clients for `cpu`).
    pub count: usize,
    /// Which repeat, from 1.
    pub repeat: usize,
    /// Seconds from the start of the clock to the last answer.
    pub elapsed_s: f64,
    /// What was done and checked (see [`Run::throughput`]).
    pub ops: u64,
    /// The headline figure, in the scenario's unit (`rate`: the rate
    /// achieved).
    pub throughput: f64,
    /// Throughput over the reference's in the same repeat, when there is
    /// one.
    pub vs_reference: Option<f64>,
    /// Request latency.
    pub latency_us: Option<Percentiles>,
    /// Its spectrum: `(percentile, µs)` pairs (see [`spectrum`]).
    pub latency_spectrum: Option<Vec<(f64, u64)>>,
    /// `rate`: latency from each request's actual send, not its due time.
    pub uncorrected_us: Option<Percentiles>,
    /// Its spectrum.
    pub uncorrected_spectrum: Option<Vec<(f64, u64)>>,
    /// The probe's latency (`cpu`).
    pub probe_us: Option<Percentiles>,
    /// Its spectrum.
    pub probe_spectrum: Option<Vec<(f64, u64)>>,
    /// `rate`: requests due but never sent (their wait is in the latency).
    pub unsent: u64,
    /// Connections whose first answer came before the deadline.
    pub served_at_once: usize,
    /// CPU seconds the server's process used during the run; `None` for a
    /// server this run did not start.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds the load generator's threads used during the run.
    pub client_cpu_s: Option<f64>,
    /// System calls the server's process made during the run (every
    /// thread, every kind: see [`crate::bench::syscalls`]); `None` where
    /// they were not counted.
    pub server_syscalls: Option<u64>,
    /// The share of the server's CPU time spent in the kernel (from
    /// `/proc/PID/stat`, whose ticks are about 10 ms).
    pub server_kernel_share: Option<f64>,
    /// The wall-clock seconds both CPU figures are over: from the start of
    /// the clock until every connection had finished.
    pub cpu_window_s: f64,
    /// The load generator's threads.
    pub client_threads: usize,
    /// What the kernel's TCP counters moved by during the run (set-up
    /// included): `ListenOverflows`, `ListenDrops`, `TCPSynRetrans`, ...
    pub kernel: BTreeMap<String, u64>,
    /// The `idle` figures.
    pub idle: Option<IdleFigures>,
    /// Connections ended by an error.
    pub errors: u64,
    /// What the first few errors were.
    pub error_samples: Vec<String>,
    /// The histograms behind the percentiles.
    #[serde(skip)]
    pub histograms: Histograms,
}

impl Run {
    /// A run of `server` with nothing measured yet.
    pub fn new(
        server: String,
        client: ClientShape,
        count: usize,
        repeat: usize,
        client_threads: usize,
    ) -> Self {
        Run {
            server,
            client,
            count,
            repeat,
            elapsed_s: 0.0,
            ops: 0,
            throughput: 0.0,
            vs_reference: None,
            latency_us: None,
            latency_spectrum: None,
            uncorrected_us: None,
            uncorrected_spectrum: None,
            probe_us: None,
            probe_spectrum: None,
            unsent: 0,
            served_at_once: 0,
            server_cpu_s: None,
            client_cpu_s: None,
            server_syscalls: None,
            server_kernel_share: None,
            cpu_window_s: 0.0,
            client_threads,
            kernel: BTreeMap::new(),
            idle: None,
            errors: 0,
            error_samples: Vec::new(),
            histograms: Histograms::default(),
        }
    }

    /// The units of work done, in [`Scenario::work_unit`]s: requests,
    /// connections, answers, or megabytes for `stream`.
    fn work(&self, scenario: Scenario) -> f64 {
        if scenario == Scenario::Stream {
            self.ops as f64 / 1e6
        } else {
            self.ops as f64
        }
    }

    /// Operations per CPU second of the server (MB for `stream`): what a
    /// request costs it, whatever the load generator took.
    pub fn per_server_cpu_s(&self, scenario: Scenario) -> Option<f64> {
        let cpu = self.server_cpu_s.filter(|&c| c > 0.0)?;
        Some(self.work(scenario) / cpu)
    }

    /// Microseconds of the server's CPU per unit of work
    /// ([`Scenario::work_unit`]); `None` when nothing was done.
    pub fn server_cpu_us_per_unit(&self, scenario: Scenario) -> Option<f64> {
        let work = self.work(scenario);
        (work > 0.0).then_some(self.server_cpu_s? * 1e6 / work)
    }

    /// The server's system calls per unit of work; `None` when nothing
    /// was done or the calls were not counted.
    pub fn syscalls_per_unit(&self, scenario: Scenario) -> Option<f64> {
        let work = self.work(scenario);
        (work > 0.0).then_some(self.server_syscalls? as f64 / work)
    }
}

/// Errors kept word for word per run; the rest are only counted.
pub const ERROR_SAMPLES: usize = 3;

/// One row of the table: one server at one connection count, over its
/// repeats.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The server.
    pub server: String,
    /// The load generator that measured it.
    pub client: ClientShape,
    /// Connections (or workers, clients).
    pub count: usize,
    /// Median throughput.
    pub throughput: f64,
    /// The lowest and the highest throughput of the repeats: how much
    /// the machine's noise moved it.
    pub throughput_range: (f64, f64),
    /// Median of the per-repeat ratios to the reference.
    pub vs_reference: Option<f64>,
    /// Percentiles of every request of every repeat (histograms merged).
    pub latency_us: Option<Percentiles>,
    /// The same for `rate`'s uncorrected latency.
    pub uncorrected_us: Option<Percentiles>,
    /// The same for the probe.
    pub probe_us: Option<Percentiles>,
    /// `rate`: requests due but never sent, over all repeats.
    pub unsent: u64,
    /// The fewest connections answered before the deadline in a repeat.
    pub served_at_once: usize,
    /// Median share of one core the server used (1.0 = one core busy).
    pub server_cpu: Option<f64>,
    /// Median share of one core the load generator used.
    pub client_cpu: Option<f64>,
    /// Median operations per server CPU second (MB for `stream`).
    pub per_server_cpu_s: Option<f64>,
    /// Median microseconds of server CPU per unit of work
    /// ([`Results::work_unit`]).
    pub server_cpu_us_per_unit: Option<f64>,
    /// Median system calls of the server per unit of work.
    pub syscalls_per_unit: Option<f64>,
    /// Median share of the server's CPU time spent in the kernel.
    pub server_kernel_share: Option<f64>,
    /// The kernel's counters, summed over the repeats.
    pub kernel: BTreeMap<String, u64>,
    /// Median resident bytes per idle client.
    pub idle_bytes_per_client: Option<f64>,
    /// The most threads the server had with its idle clients.
    pub idle_threads: Option<u64>,
    /// Idle clients connected, in the last repeat (fewer than asked when
    /// the server stopped greeting).
    pub idle_connected: Option<usize>,
    /// Idle clients greeted, in the last repeat.
    pub idle_greeted: Option<usize>,
    /// Newcomer latency in µs over all repeats.
    pub newcomer_us: Option<Percentiles>,
    /// Newcomers served / tried, over all repeats.
    pub newcomers_served: Option<(usize, usize)>,
    /// Errors over all repeats.
    pub errors: u64,
    /// The repeats' histograms, merged.
    #[serde(skip)]
    pub histograms: Histograms,
}

/// Everything one `concur bench` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The command line, as typed.
    pub command: String,
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// The machine's cores.
    pub cores: usize,
    /// The CPU, as `/proc/cpuinfo`'s "model name" says.
    pub cpu: String,
    /// The CPU's flags that bear on copying and mapping memory (`erms`,
    /// `fsrm`, `avx2`, `avx512f`, ...), those it has.
    pub cpu_flags: Vec<String>,
    /// The load generators that drove the runs.
    pub clients: Vec<ClientShape>,
    /// Threads of the engine.
    pub client_threads: usize,
    /// CPUs the servers were pinned to, if any.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the load generator was pinned to, if any.
    pub client_cpus: Option<Vec<usize>>,
    /// The scenario.
    pub scenario: Scenario,
    /// Whether this was a sweep over several counts.
    pub sweep: bool,
    /// The counts measured.
    pub counts: Vec<usize>,
    /// Repeats of each run.
    pub repeat: usize,
    /// The load's knobs.
    pub params: Params,
    /// The server the others are compared with, if any.
    pub reference: Option<String>,
    /// The headline figure's unit.
    pub unit: &'static str,
    /// What the server's CPU time and system calls are counted per:
    /// `req`, `MB`, `conn` or `answer`.
    pub work_unit: &'static str,
    /// How the servers' system calls were counted, when they were.
    pub syscalls_source: Option<String>,
    /// Why they were not, when they were asked for.
    pub syscalls_not_counted: Option<String>,
    /// Share of the machine's CPU time used by processes other than this
    /// one and the servers it started, while it ran.
    pub other_cpu_share: Option<f64>,
    /// Every run, in the order they ran.
    pub runs: Vec<Run>,
    /// The table's rows.
    pub rows: Vec<Row>,
}

impl Results {
    /// Connections ended by an error, over every run.
    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    /// The rows, computed from the runs: one per client shape, server and
    /// count, in the order the servers first ran.
    pub fn summarise(scenario: Scenario, runs: &[Run]) -> Vec<Row> {
        let mut keys: Vec<(ClientShape, String, usize)> = Vec::new();
        for r in runs {
            let key = (r.client, r.server.clone(), r.count);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.sort_by_key(|k| (k.2, k.0 as u8));
        keys.into_iter()
            .map(|(client, server, count)| {
                let mine: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.client == client && r.server == server && r.count == count)
                    .collect();
                let ratios: Vec<f64> = mine.iter().filter_map(|r| r.vs_reference).collect();
                let histograms =
                    Histograms::merge(&mine.iter().map(|r| &r.histograms).collect::<Vec<_>>());
                let idle: Vec<&IdleFigures> = mine.iter().filter_map(|r| r.idle.as_ref()).collect();
                let newcomers: Vec<&Histogram<u64>> = idle
                    .iter()
                    .filter_map(|i| i.newcomer_latency.as_ref())
                    .collect();
                let newcomer_us = (!newcomers.is_empty()).then(|| {
                    let mut all = new_histogram();
                    for h in newcomers {
                        let _ = all.add(h);
                    }
                    all
                });
                let all: Vec<f64> = mine.iter().map(|r| r.throughput).collect();
                let range = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &t| {
                    (lo.min(t), hi.max(t))
                });
                let share = |cpu: fn(&Run) -> Option<f64>| {
                    let shares: Vec<f64> = mine
                        .iter()
                        .filter(|r| r.cpu_window_s > 0.0)
                        .filter_map(|r| Some(cpu(r)? / r.cpu_window_s))
                        .collect();
                    (!shares.is_empty()).then(|| median(shares))
                };
                let median_of = |per: &dyn Fn(&Run) -> Option<f64>| {
                    let all: Vec<f64> = mine.iter().filter_map(|r| per(r)).collect();
                    (!all.is_empty()).then(|| median(all))
                };
                let mut kernel = BTreeMap::new();
                for r in &mine {
                    for (k, v) in &r.kernel {
                        *kernel.entry(k.clone()).or_insert(0) += v;
                    }
                }
                let of = |h: &Option<Histogram<u64>>| h.as_ref().and_then(Percentiles::of);
                Row {
                    throughput: median(all),
                    throughput_range: range,
                    vs_reference: (!ratios.is_empty()).then(|| median(ratios)),
                    latency_us: of(&histograms.latency),
                    uncorrected_us: of(&histograms.uncorrected),
                    probe_us: of(&histograms.probe),
                    unsent: mine.iter().map(|r| r.unsent).sum(),
                    served_at_once: mine.iter().map(|r| r.served_at_once).min().unwrap_or(0),
                    server_cpu: share(|r| r.server_cpu_s),
                    client_cpu: share(|r| r.client_cpu_s),
                    per_server_cpu_s: median_of(&|r| r.per_server_cpu_s(scenario)),
                    server_cpu_us_per_unit: median_of(&|r| r.server_cpu_us_per_unit(scenario)),
                    syscalls_per_unit: median_of(&|r| r.syscalls_per_unit(scenario)),
                    server_kernel_share: median_of(&|r| r.server_kernel_share),
                    kernel,
                    idle_bytes_per_client: (!idle.is_empty())
                        .then(|| median(idle.iter().map(|i| i.bytes_per_client).collect())),
                    idle_threads: idle.iter().map(|i| i.threads).max(),
                    idle_connected: idle.last().map(|i| i.clients),
                    idle_greeted: idle.last().map(|i| i.greeted),
                    newcomer_us: of(&newcomer_us),
                    newcomers_served: (!idle.is_empty()).then(|| {
                        (
                            idle.iter().map(|i| i.newcomers_served).sum(),
                            idle.iter().map(|i| i.newcomers).sum(),
                        )
                    }),
                    histograms,
                    errors: mine.iter().map(|r| r.errors).sum(),
                    server,
                    client,
                    count,
                }
            })
            .collect()
    }
}

/// The median; zero for nothing.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ops: u64, cpu_s: Option<f64>, syscalls: Option<u64>) -> Run {
        let mut run = Run::new("s".into(), ClientShape::Engine, 1, 1, 1);
        run.ops = ops;
        run.server_cpu_s = cpu_s;
        run.server_syscalls = syscalls;
        run
    }

    #[test]
    fn costs_are_per_unit_of_work_and_absent_without_work() {
        let served = run(2_000, Some(0.01), Some(5_000));
        assert_eq!(served.server_cpu_us_per_unit(Scenario::Pingpong), Some(5.0));
        assert_eq!(served.syscalls_per_unit(Scenario::Pingpong), Some(2.5));
        // Streaming counts per megabyte of answer.
        let streamed = run(4_000_000, Some(0.01), Some(100));
        assert_eq!(
            streamed.server_cpu_us_per_unit(Scenario::Stream),
            Some(2_500.0)
        );
        assert_eq!(streamed.syscalls_per_unit(Scenario::Stream), Some(25.0));
        // Nothing served: no cost per unit, whatever was spent.
        let idle = run(0, Some(0.01), Some(40));
        assert_eq!(idle.server_cpu_us_per_unit(Scenario::Pingpong), None);
        assert_eq!(idle.syscalls_per_unit(Scenario::Pingpong), None);
        // Not counted: no figure.
        let uncounted = run(2_000, None, None);
        assert_eq!(uncounted.server_cpu_us_per_unit(Scenario::Pingpong), None);
        assert_eq!(uncounted.syscalls_per_unit(Scenario::Pingpong), None);
        let rows = Results::summarise(Scenario::Pingpong, &[served, idle]);
        assert_eq!(rows.len(), 1);
        // The run with nothing served has no figure to take a median of.
        assert_eq!(rows[0].syscalls_per_unit, Some(2.5));
    }
}
