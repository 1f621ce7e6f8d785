//! What `concur bench` found: every run's figures, the rows of the table
//! (medians over the repeats), and the machine they came from. All of it
//! goes to `results.json` as it is here.

use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::idle::IdleFigures;
use super::load::{Params, Scenario};

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests the figures are over.
    pub count: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The 99.9th percentile.
    pub p999: u64,
    /// The slowest.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles out of a histogram of microseconds; `None`
    /// when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    /// The five figures with their names, for tables and plots.
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
            ("max", self.max),
        ]
    }

    /// Medians over runs of each percentile, and the largest max.
    fn median_of(all: &[Percentiles]) -> Option<Self> {
        if all.is_empty() {
            return None;
        }
        let med = |f: fn(&Percentiles) -> u64| {
            median(all.iter().map(|p| f(p) as f64).collect()).round() as u64
        };
        Some(Percentiles {
            count: all.iter().map(|p| p.count).sum(),
            p50: med(|p| p.p50),
            p90: med(|p| p.p90),
            p99: med(|p| p.p99),
            p999: med(|p| p.p999),
            max: all.iter().map(|p| p.max).max().unwrap_or(0),
        })
    }
}

/// One run: one server, one connection count, one repeat.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The server: a model's name, `echo` for the reference, or the
    /// `--addr` given.
    pub server: String,
    /// Connections (workers for `churn`, idle clients for `idle`, heavy
    /// clients for `cpu`).
    pub count: usize,
    /// Which repeat, from 1.
    pub repeat: usize,
    /// Seconds from the opening of the gate to the last answer.
    pub elapsed_s: f64,
    /// What was done and checked (see [`Run::throughput`]).
    pub ops: u64,
    /// The headline figure, in the scenario's unit.
    pub throughput: f64,
    /// Throughput over the reference's in the same repeat, when there is
    /// one.
    pub vs_reference: Option<f64>,
    /// Request latency.
    pub latency_us: Option<Percentiles>,
    /// The probe's latency (`cpu`).
    pub probe_us: Option<Percentiles>,
    /// The `idle` figures.
    pub idle: Option<IdleFigures>,
    /// Connections ended by an error.
    pub errors: u64,
    /// What the first few errors were.
    pub error_samples: Vec<String>,
}

/// Errors kept word for word per run; the rest are only counted.
pub const ERROR_SAMPLES: usize = 3;

/// One row of the table: one server at one connection count, the
/// medians over its repeats.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The server.
    pub server: String,
    /// Connections (or workers, clients).
    pub count: usize,
    /// Median throughput.
    pub throughput: f64,
    /// The lowest and the highest throughput of the repeats: how much
    /// the machine's noise moved it.
    pub throughput_range: (f64, f64),
    /// Median of the per-repeat ratios to the reference.
    pub vs_reference: Option<f64>,
    /// Medians of the percentiles, the largest max.
    pub latency_us: Option<Percentiles>,
    /// The same for the probe.
    pub probe_us: Option<Percentiles>,
    /// Median resident bytes per idle client.
    pub idle_bytes_per_client: Option<f64>,
    /// The most threads the server had with its idle clients.
    pub idle_threads: Option<u64>,
    /// Idle clients connected, in the last repeat (fewer than asked when
    /// the server's listen backlog filled up).
    pub idle_connected: Option<usize>,
    /// Idle clients greeted, in the last repeat.
    pub idle_greeted: Option<usize>,
    /// Median newcomer latency in µs, and how many newcomers were served
    /// of how many tried, over all repeats.
    pub newcomer_us: Option<Percentiles>,
    /// Newcomers served / tried, over all repeats.
    pub newcomers_served: Option<(usize, usize)>,
    /// Errors over all repeats.
    pub errors: u64,
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
    /// Share of the machine's CPU time used by other processes while
    /// this ran (`idle`: the server child counts as other).
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

    /// The rows, computed from the runs: one per server and count, in the
    /// order the servers first ran.
    pub fn summarise(runs: &[Run]) -> Vec<Row> {
        let mut keys: Vec<(String, usize)> = Vec::new();
        for r in runs {
            let key = (r.server.clone(), r.count);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys.sort_by_key(|k| k.1);
        keys.into_iter()
            .map(|(server, count)| {
                let mine: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.server == server && r.count == count)
                    .collect();
                let ratios: Vec<f64> = mine.iter().filter_map(|r| r.vs_reference).collect();
                let lat: Vec<Percentiles> = mine.iter().filter_map(|r| r.latency_us).collect();
                let probe: Vec<Percentiles> = mine.iter().filter_map(|r| r.probe_us).collect();
                let idle: Vec<&IdleFigures> = mine.iter().filter_map(|r| r.idle.as_ref()).collect();
                let newcomers: Vec<Percentiles> = idle
                    .iter()
                    .filter_map(|i| i.newcomer_latency.as_ref().and_then(Percentiles::of))
                    .collect();
                let all: Vec<f64> = mine.iter().map(|r| r.throughput).collect();
                let range = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &t| {
                    (lo.min(t), hi.max(t))
                });
                Row {
                    throughput: median(all),
                    throughput_range: range,
                    vs_reference: (!ratios.is_empty()).then(|| median(ratios)),
                    latency_us: Percentiles::median_of(&lat),
                    probe_us: Percentiles::median_of(&probe),
                    idle_bytes_per_client: (!idle.is_empty())
                        .then(|| median(idle.iter().map(|i| i.bytes_per_client).collect())),
                    idle_threads: idle.iter().map(|i| i.threads).max(),
                    idle_connected: idle.last().map(|i| i.clients),
                    idle_greeted: idle.last().map(|i| i.greeted),
                    newcomer_us: Percentiles::median_of(&newcomers),
                    newcomers_served: (!idle.is_empty()).then(|| {
                        (
                            idle.iter().map(|i| i.newcomers_served).sum(),
                            idle.iter().map(|i| i.newcomers).sum(),
                        )
                    }),
                    errors: mine.iter().map(|r| r.errors).sum(),
                    server,
                    count,
                }
            })
            .collect()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let per_run = format!("{} s per run, ", self.params.secs.as_secs_f64());
        let _ = writeln!(
            out,
            "{} ({}), {per_run}{} repeat{}, {} cores; medians over repeats",
            self.scenario,
            self.describe_load(),
            self.repeat,
            if self.repeat == 1 { "" } else { "s" },
            self.cores
        );
        let us = |p: Option<Percentiles>, f: fn(&Percentiles) -> u64| {
            p.map_or("-".to_string(), |p| f(&p).to_string())
        };
        match self.scenario {
            Scenario::Idle => {
                let _ = writeln!(
                    out,
                    "{:<12} {:>8} {:>8} {:>12} {:>8} {:>10} {:>10} {:>7}",
                    "server",
                    "clients",
                    "greeted",
                    "B/client",
                    "threads",
                    "new p50µs",
                    "new max",
                    "errors"
                );
                for r in &self.rows {
                    let served = r.newcomers_served.unwrap_or((0, 0));
                    let (p50, max) = if served.0 == 0 {
                        ("unserved".to_string(), "-".to_string())
                    } else {
                        (us(r.newcomer_us, |p| p.p50), us(r.newcomer_us, |p| p.max))
                    };
                    let _ = writeln!(
                        out,
                        "{:<12} {:>8} {:>8} {:>12.0} {:>8} {:>10} {:>10} {:>7}",
                        r.server,
                        r.idle_connected.unwrap_or(0),
                        r.idle_greeted.unwrap_or(0),
                        r.idle_bytes_per_client.unwrap_or(0.0),
                        r.idle_threads.unwrap_or(0),
                        p50,
                        max,
                        r.errors
                    );
                }
                for r in &self.rows {
                    if let Some((served, tried)) = r.newcomers_served {
                        if served > 0 && served < tried {
                            let _ = writeln!(
                                out,
                                "{}: {served} of {tried} newcomers answered within {} s; \
                                 the figures are theirs",
                                r.server,
                                super::idle::NEWCOMER_TIMEOUT.as_secs_f64()
                            );
                        }
                    }
                }
                let mut noted = Vec::new();
                for run in &self.runs {
                    let Some(why) = run.idle.as_ref().and_then(|i| i.unconnected.as_ref()) else {
                        continue;
                    };
                    if !noted.contains(&run.server) {
                        let _ = writeln!(
                            out,
                            "{}: {why} (the listen backlog of a server that stopped accepting \
                             was full)",
                            run.server
                        );
                        noted.push(run.server.clone());
                    }
                }
            }
            _ => {
                let latency = if self.scenario == Scenario::Cpu {
                    "probe "
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>12} {:>13} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
                    "server",
                    "conns",
                    self.unit,
                    "min-max",
                    "vs ref",
                    format!("{latency}p50"),
                    "p90",
                    "p99",
                    "p99.9",
                    "max µs",
                    "errors"
                );
                for r in &self.rows {
                    let p = if self.scenario == Scenario::Cpu {
                        r.probe_us
                    } else {
                        r.latency_us
                    };
                    let _ = writeln!(
                        out,
                        "{:<12} {:>6} {:>12} {:>13} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7}",
                        r.server,
                        r.count,
                        figure(r.throughput),
                        format!(
                            "{}-{}",
                            figure(r.throughput_range.0),
                            figure(r.throughput_range.1)
                        ),
                        r.vs_reference
                            .map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v)),
                        us(p, |p| p.p50),
                        us(p, |p| p.p90),
                        us(p, |p| p.p99),
                        us(p, |p| p.p999),
                        us(p, |p| p.max),
                        r.errors
                    );
                }
            }
        }
        if let Some(share) = self.other_cpu_share {
            let _ = writeln!(
                out,
                "other processes used {:.1}% of the machine's CPU time meanwhile",
                100.0 * share
            );
        }
        out
    }

    fn describe_load(&self) -> String {
        let p = &self.params;
        match self.scenario {
            Scenario::Stream => format!("{}-byte writes", p.size),
            Scenario::Pingpong => format!("{}-byte payload, closed loop", p.size),
            Scenario::Rate => format!(
                "{}-byte payload, {} req/s in all, open loop",
                p.size, p.rate
            ),
            Scenario::Churn => "connect, *, ^a$, b, close".into(),
            Scenario::Idle => format!(
                "a newcomer every {} ms meanwhile",
                super::idle::NEWCOMER_EVERY.as_millis()
            ),
            Scenario::Cpu => format!(
                "heavy clients ask about {}, one probe about small numbers every {} ms",
                p.number,
                p.probe_pause.as_millis()
            ),
        }
    }
}

impl fmt::Display for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

/// A throughput with the precision it deserves.
fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
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
