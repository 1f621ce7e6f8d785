//! The article's whole experiment in one call: a `sequential`, a `thread`
//! and a `pool -n 2` server, each on a free port of 127.0.0.1, and the
//! simulated client with three connections on the article's schedule
//! against each. The article measured about 6.6 s, 2.2 s and 4.4 s. The
//! event-driven models it points to at its end (`event`, `async`) and the
//! completion-based one (`uring`) run beside them, so the comparison
//! covers every family.
//!
//! The runs go at the same time: the clients spend nearly all of their
//! time asleep between sends, so they do not disturb each other, and the
//! demo takes as long as its slowest run rather than the sum.
//!
//! With `--live` ([`live`]) the same servers are shown on one live page
//! as it happens, one time chart per server stacked in the article's
//! order, so that the models are compared at a glance as the article's
//! figures compare them (a selector would show one at a time and hide
//! exactly that). The page is the operator's port's ([`crate::http`]),
//! given the six servers' counters.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{self, Options, chart};
use crate::http;
use crate::server::{self, Config, Model, Server, ValidConfig, listener};

/// Clients per run, as in the article's `-n 3`.
pub const CLIENTS: usize = 3;

/// Every model: the servers of the article's part 2 in the order it shows
/// them (its pool has two workers), then the event-driven ones, then
/// io_uring's.
pub fn configs() -> Vec<Config> {
    Model::ALL
        .into_iter()
        .map(|model| match model {
            Model::Pool => Config::new(model).threads(2),
            _ => Config::new(model),
        })
        .collect()
}

/// One server's run: what it was, what the client saw, where its files are.
#[derive(Debug)]
pub struct Run {
    /// The server.
    pub config: ValidConfig,
    /// What the client saw.
    pub report: client::Report,
    /// The time chart of the run.
    pub chart: PathBuf,
    /// The timelines as JSON.
    pub json: PathBuf,
}

/// Every run of the demo, printed as a table by `Display`.
#[derive(Debug)]
pub struct Demo {
    /// One per server, in the order of [`configs`].
    pub runs: Vec<Run>,
    /// The models this machine cannot run (`uring` where the kernel
    /// refuses io_uring), each with why.
    pub skipped: Vec<(Model, String)>,
}

impl Demo {
    /// True if every client of every run got the right reply.
    pub fn ok(&self) -> bool {
        self.runs.iter().all(|r| r.report.ok())
    }

    /// Every failed connection, named with its server.
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.report
                    .failures()
                    .into_iter()
                    .map(move |f| format!("{}: {f}", r.config.describe()))
            })
            .collect()
    }
}

/// A server of every model this machine runs, each on a free port of
/// 127.0.0.1, and the models it cannot run, each with why.
type Servers = (Vec<(ValidConfig, Server)>, Vec<(Model, String)>);

fn start_servers() -> io::Result<Servers> {
    let mut servers = Vec::new();
    let mut skipped = Vec::new();
    for config in configs() {
        let model = config.model();
        let config = match config.check() {
            Ok(config) => config,
            Err(e) if e.is_unavailable() => {
                skipped.push((model, e.to_string()));
                continue;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
        };
        let listener = listener::bind("127.0.0.1:0".parse().expect("an address"), 64)?;
        servers.push((config.clone(), server::start(listener, config)?));
    }
    Ok((servers, skipped))
}

/// The article's client, three connections, against every server at once.
fn run_clients(servers: &[(ValidConfig, Server)]) -> Vec<client::Report> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = servers
            .iter()
            .map(|(config, server)| {
                let options = Options::new(CLIENTS).server(config.describe());
                let addr = server.local_addr();
                scope.spawn(move || client::run(addr, &options))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Runs the experiment, writing `demo-MODEL.svg` and `demo-MODEL.json` for
/// each server into `out` (created if missing).
pub fn run(out: &Path) -> io::Result<Demo> {
    std::fs::create_dir_all(out)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", out.display())))?;
    let (servers, skipped) = start_servers()?;
    let reports = run_clients(&servers);
    let mut served = Vec::new();
    for (config, server) in servers {
        server.stop();
        served.push(config);
    }

    let mut runs = Vec::new();
    for (config, report) in served.into_iter().zip(reports) {
        let chart_path = out.join(format!("demo-{}.svg", config.model()));
        let json_path = out.join(format!("demo-{}.json", config.model()));
        let with_path = |e: io::Error, p: &Path| {
            io::Error::new(e.kind(), format!("cannot write {}: {e}", p.display()))
        };
        chart::write(&report, &chart_path).map_err(|e| with_path(e, &chart_path))?;
        report
            .write_json(&json_path)
            .map_err(|e| with_path(e, &json_path))?;
        runs.push(Run {
            config,
            report,
            chart: chart_path,
            json: json_path,
        });
    }
    Ok(Demo { runs, skipped })
}

/// How long `--live` waits after a round before the next, so that a
/// reader sees the last one end.
pub const LIVE_PAUSE: Duration = Duration::from_secs(5);

/// `concur demo --live ADDR`: the servers stay up and their live page is
/// served at `addr`; a round of the experiment starts whenever a page is
/// watching (and the last round ended [`LIVE_PAUSE`] ago), for as long as
/// the process runs. Returns the exit status if it cannot start.
pub fn live(addr: &http::Addr) -> u8 {
    let listener = match http::bind("--live", addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let (servers, skipped) = match start_servers() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for (model, why) in &skipped {
        eprintln!("skipped: model {model}: {why}");
    }
    let watched = servers
        .iter()
        .map(|(config, server)| http::Watched::new(config, server.counters()))
        .collect();
    let port = match http::serve(listener, watched) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot serve the page: {e}");
            return 1;
        }
    };
    // Whoever reads this may be gone by the next round: a closed standard
    // output must not end the page.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "The article's experiment, live: open http://{}/\n\
         A round ({CLIENTS} clients on its schedule against each server) starts once a page is \
         open, and again {} s after the last while one is; Ctrl-C to stop.",
        port.local_addr(),
        LIVE_PAUSE.as_secs()
    );
    for round in 1.. {
        while port.viewers() == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = writeln!(out, "\nround {round}:");
        let reports = run_clients(&servers);
        let rows: Vec<_> = servers.iter().map(|(c, _)| c).zip(&reports).collect();
        let _ = write!(out, "{}", Table(&rows));
        for (config, report) in &rows {
            for f in report.failures() {
                eprintln!("error: {}: {f}", config.describe());
            }
        }
        std::thread::sleep(LIVE_PAUSE);
    }
    unreachable!("the rounds go on until the process is stopped")
}

/// The table of who was admitted when, a row per server.
struct Table<'a>(&'a [(&'a ValidConfig, &'a client::Report)]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .0
            .iter()
            .map(|(config, _)| config.describe().len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            f,
            "{:width$}  {:>8}  admitted (seconds after the clients started)",
            "server", "elapsed"
        )?;
        for (config, report) in self.0 {
            let mut admitted: Vec<_> = report
                .connections
                .iter()
                .map(|c| (c.admitted, c.name.as_str()))
                .collect();
            // In the order the server admitted them; never-admitted last.
            admitted.sort_by(|a, b| {
                let key = |t: Option<f64>| t.unwrap_or(f64::INFINITY);
                key(a.0).total_cmp(&key(b.0))
            });
            let admitted: Vec<String> = admitted
                .iter()
                .map(|(t, name)| match t {
                    Some(t) => format!("{name} {t:.2}"),
                    None => format!("{name} never"),
                })
                .collect();
            writeln!(
                f,
                "{:width$}  {:>6.2} s  {}",
                config.describe(),
                report.elapsed,
                admitted.join("  ")
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Demo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<_> = self.runs.iter().map(|r| (&r.config, &r.report)).collect();
        Table(&rows).fmt(f)
    }
}

/// `concur demo` once its arguments are parsed: runs, prints the table and
/// where the charts went. Returns the exit status: 0 if every client of
/// every run got the right reply, else 1.
pub fn command(out: &Path) -> u8 {
    println!(
        "The article's experiment: {CLIENTS} clients on its schedule against each server \
         (the article measured about 6.6 s, 2.2 s and 4.4 s for the first three)...\n"
    );
    let demo = match run(out) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!("{demo}");
    for (model, why) in &demo.skipped {
        eprintln!("skipped: model {model}: {why}");
    }
    for run in &demo.runs {
        println!(
            "{}: chart {}, timelines {}",
            run.config.model(),
            run.chart.display(),
            run.json.display()
        );
    }
    let failures = demo.failures();
    for f in &failures {
        eprintln!("error: {f}");
    }
    if failures.is_empty() { 0 } else { 1 }
}
