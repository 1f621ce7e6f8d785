//! The table `concur bench` prints, and the notes under it on what its
//! figures leave out. Apart from [`super::report`], which holds the figures
//! as `results.json` has them: the text is only one reading of them.

use std::fmt::{self, Write as _};

use super::engine::ClientShape;
use super::latency::Percentiles;
use super::report::Results;
use super::scenario::Scenario;

impl Results {
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
                        let _ = writeln!(out, "{}: {why}", run.server);
                        noted.push(run.server.clone());
                    }
                }
            }
            _ => self.timed_table(&mut out),
        }
        let _ = writeln!(
            out,
            "load generator: {}{}; CPU: {}{}",
            self.describe_clients(),
            match (&self.server_cpus, &self.client_cpus) {
                (None, None) => String::new(),
                (s, c) => format!(
                    ", servers on CPUs {}, load on CPUs {}",
                    cpu_list(s.as_deref()),
                    cpu_list(c.as_deref())
                ),
            },
            self.cpu,
            if self.cpu_flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.cpu_flags.join(" "))
            }
        );
        if let Some(share) = self.other_cpu_share {
            let _ = writeln!(
                out,
                "other processes used {:.1}% of the machine's CPU time meanwhile",
                100.0 * share
            );
        }
        out
    }

    /// The table of the timed scenarios: throughput, latency, who used the
    /// CPU; then what the kernel dropped and who was served late.
    fn timed_table(&self, out: &mut String) {
        let cpu_scenario = self.scenario == Scenario::Cpu;
        let unit = self.unit;
        // What one unit of work costs the server: its CPU, its calls.
        let cost = format!("srv µs/{}", self.work_unit);
        let calls = format!("calls/{}", self.work_unit);
        let (cw, sw) = (cost.chars().count().max(10), calls.chars().count().max(9));
        let _ = writeln!(
            out,
            "{:<12} {:<7} {:>6} {:>11} {:>13} {:>7} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>cw$} {:>sw$} {:>6}",
            "server",
            "client",
            "conns",
            unit,
            "min-max",
            "vs ref",
            if cpu_scenario { "probe p50" } else { "p50 µs" },
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "srv CPU",
            "load CPU",
            cost,
            calls,
            "errors"
        );
        let us = |p: Option<Percentiles>, f: fn(&Percentiles) -> u64| {
            p.map_or("-".to_string(), |p| f(&p).to_string())
        };
        let pct =
            |share: Option<f64>| share.map_or("-".to_string(), |s| format!("{:.0}%", 100.0 * s));
        for r in &self.rows {
            let p = if cpu_scenario {
                r.probe_us
            } else {
                r.latency_us
            };
            let _ = writeln!(
                out,
                "{:<12} {:<7} {:>6} {:>11} {:>13} {:>7} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>cw$} {:>sw$} {:>6}",
                r.server,
                r.client.name(),
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
                us(p, |p| p.p99),
                us(p, |p| p.p999),
                us(p, |p| p.max),
                pct(r.server_cpu),
                pct(r.client_cpu),
                r.server_cpu_us_per_unit.map_or("-".to_string(), small),
                r.syscalls_per_unit.map_or("-".to_string(), small),
                r.errors
            );
        }
        let _ = writeln!(
            out,
            "(throughput: median of the repeats; latency: every request of every repeat; \
             CPU: share of one core, median)"
        );
        if let Some(source) = &self.syscalls_source {
            let _ = writeln!(out, "system calls: {source}");
        }
        if let Some(why) = &self.syscalls_not_counted {
            let which = if self.syscalls_source.is_some() {
                " for some servers"
            } else {
                ""
            };
            let _ = writeln!(out, "system calls not counted{which}: {why}");
        }
        if self.scenario == Scenario::Rate {
            let _ = writeln!(
                out,
                "rate: {} req/s asked for; latency above counts from when each request was due, \
                 below from when it was sent",
                self.params.rate
            );
            let _ = writeln!(
                out,
                "{:<12} {:>6} {:>14} {:>8} {:>11} {:>11} {:>11}",
                "server",
                "conns",
                "achieved req/s",
                "unsent",
                "sent p50 µs",
                "sent p99 µs",
                "sent max µs"
            );
            for r in &self.rows {
                let _ = writeln!(
                    out,
                    "{:<12} {:>6} {:>14} {:>8} {:>11} {:>11} {:>11}",
                    r.server,
                    r.count,
                    figure(r.throughput),
                    r.unsent,
                    us(r.uncorrected_us, |p| p.p50),
                    us(r.uncorrected_us, |p| p.p99),
                    us(r.uncorrected_us, |p| p.max)
                );
            }
        }
        for r in &self.rows {
            let counted = if self.scenario == Scenario::Cpu {
                r.count + 1
            } else {
                r.count
            };
            if self.scenario != Scenario::Churn && r.served_at_once < counted {
                let _ = writeln!(
                    out,
                    "{} ({} {}, {} client): {} of {counted} connections had an answer before the \
                     deadline (fewest of the repeats); the rest waited, and made one exchange each \
                     after it",
                    r.server,
                    r.count,
                    self.scenario.count_name(),
                    r.client,
                    r.served_at_once
                );
            }
        }
        for r in &self.rows {
            // Those that explain a connect's stall; the JSON has the rest.
            let moved: Vec<String> = r
                .kernel
                .iter()
                .filter(|(k, v)| **v > 0 && super::kernel::CONNECT.contains(&k.as_str()))
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if !moved.is_empty() {
                let _ = writeln!(
                    out,
                    "kernel, {} ({} {}), over the repeats: {}",
                    r.server,
                    r.count,
                    self.scenario.count_name(),
                    moved.join(", ")
                );
            }
        }
    }

    /// What drove the runs: the engine's threads, the threads client's.
    fn describe_clients(&self) -> String {
        let engine = format!(
            "the engine, {} event-loop thread{}",
            self.client_threads,
            if self.client_threads == 1 { "" } else { "s" }
        );
        let threads = if self.scenario == Scenario::Stream {
            "threads, two per connection (a writer, a reader)"
        } else {
            "threads, one per connection"
        };
        // Idle and the references' own runs have only the engine.
        if self.clients.is_empty() || self.scenario == Scenario::Idle {
            return engine;
        }
        self.clients
            .iter()
            .map(|c| match c {
                ClientShape::Engine => engine.clone(),
                ClientShape::Threads => threads.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" and ")
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

fn cpu_list(cpus: Option<&[usize]>) -> String {
    match cpus {
        None => "any".into(),
        Some(c) => c
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
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

/// A cost per unit of work (µs, system calls), to three figures or so.
fn small(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
