//! `concur bench` and its load engine: every scenario runs briefly against
//! one model and yields well-formed JSON with real figures (the CPU time
//! of both sides, the kernel's counters, the latency spectrum) and plots;
//! a server that answers wrongly makes it report errors; a stalled server
//! is counted in full; thousands of connections are driven by a few
//! threads; bad input is refused.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::models;
use concur::bench::engine::{self, ClientShape, Plan, Speaks};
use concur::bench::{self, Options, Peer, Scenario};
use concur::server::{self, Config, Model};
use serde_json::Value;

fn concur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur")
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("concur-bench-{}-{name}", std::process::id()))
}

fn options(scenario: Scenario, count: usize) -> Options {
    let mut o = Options::new(scenario, Duration::from_millis(200));
    o.models = vec![Model::Event];
    o.counts = vec![count];
    o.repeat = 1;
    // The servers run as child processes of the real binary.
    o.server_exe = Some(PathBuf::from(env!("CARGO_BIN_EXE_concur")));
    o
}

/// Runs, writes the outputs, and reads `results.json` back.
fn run_and_read(o: &mut Options, name: &str) -> Value {
    let dir = scratch(name);
    o.out = Some(dir.clone());
    let results = bench::run::run(&o.clone().check().expect("valid options")).expect("bench runs");
    bench::run::write(&results, &dir).expect("outputs written");
    read_json(&dir)
}

fn read_json(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("well-formed JSON")
}

fn rows(json: &Value) -> &Vec<Value> {
    json["rows"].as_array().expect("rows")
}

fn row<'a>(json: &'a Value, server: &str) -> &'a Value {
    rows(json)
        .iter()
        .find(|r| r["server"] == server)
        .unwrap_or_else(|| panic!("no row for {server}: {json:#}"))
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "{path:?} draws no line"
    );
}

fn assert_common(json: &Value, scenario: &str) {
    assert_eq!(json["scenario"], scenario);
    assert!(json["cores"].as_u64().unwrap() >= 1);
    assert!(!json["cpu"].as_str().unwrap().is_empty());
    assert!(json["client_threads"].as_u64().unwrap() >= 1);
    assert!(json["runs"].as_array().is_some_and(|r| !r.is_empty()));
    for r in json["runs"].as_array().unwrap() {
        assert_eq!(r["errors"], 0, "{r:#}");
        // What the kernel's counters moved by, every watched one present.
        for counter in ["ListenOverflows", "ListenDrops", "TCPSynRetrans"] {
            assert!(r["kernel"][counter].is_u64(), "{counter}: {r:#}");
        }
    }
}

/// A timed run of a server this run started: both sides' CPU time, over
/// a window at least as long as the run.
fn assert_cpu(run: &Value) {
    let window = run["cpu_window_s"].as_f64().unwrap();
    assert!(window >= 0.2, "{run:#}");
    let server = run["server_cpu_s"].as_f64().expect("the server's CPU time");
    let client = run["client_cpu_s"].as_f64().expect("the load's CPU time");
    // Real work was done on both sides, and neither used more than the
    // machine has.
    let most = window * server::cores() as f64 * 1.05;
    assert!(server > 0.0 && server <= most, "{run:#}");
    assert!(client > 0.0 && client <= most, "{run:#}");
}

/// The latency spectrum: percentiles rising to 100, values never falling.
fn assert_spectrum(spectrum: &Value) {
    let points = spectrum.as_array().expect("a spectrum");
    assert!(points.len() >= 5, "{spectrum}");
    let pairs: Vec<(f64, u64)> = points
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
        .collect();
    assert!(
        pairs
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{spectrum}"
    );
    assert_eq!(pairs.last().unwrap().0, 100.0, "{spectrum}");
}

fn assert_latency(p: &Value) {
    assert!(p["count"].as_u64().unwrap() > 0, "{p}");
    let figures: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .collect();
    assert!(figures[0] > 0, "{p}");
    assert!(figures.windows(2).all(|w| w[0] <= w[1]), "{p}");
}

/// What each row's unit of work costs its server: CPU per unit, the
/// reciprocal of the work per CPU-second (one repeat, so no medians
/// between them), and a real number.
fn assert_cost(r: &Value) {
    let us = r["server_cpu_us_per_unit"].as_f64().expect("CPU per unit");
    assert!(us > 0.0 && us.is_finite(), "{r}");
    let per_s = r["per_server_cpu_s"].as_f64().unwrap();
    assert!((us * per_s / 1e6 - 1.0).abs() < 1e-9, "{r}");
}

/// The system calls of each run, `(server, calls, work done)`, where the
/// kernel counted them; where it did not, the reason is said and no row
/// shows a figure.
fn counted_calls(json: &Value) -> Option<Vec<(String, f64, f64)>> {
    if json["syscalls_source"].is_null() {
        let why = json["syscalls_not_counted"].as_str().expect("the reason");
        assert!(!why.is_empty());
        for r in rows(json) {
            assert!(r["syscalls_per_unit"].is_null(), "{r}");
        }
        eprintln!("skipped: system calls are not counted here: {why}");
        return None;
    }
    let per_unit = if json["scenario"] == "stream" {
        1e6
    } else {
        1.0
    };
    let runs = json["runs"].as_array().unwrap();
    Some(
        runs.iter()
            .map(|r| {
                let calls = r["server_syscalls"].as_u64().expect("counted") as f64;
                let work = r["ops"].as_u64().unwrap() as f64 / per_unit;
                // One repeat: the row's figure is the run's.
                let row = row(json, r["server"].as_str().unwrap());
                let figure = row["syscalls_per_unit"].as_f64().unwrap();
                assert!((figure - calls / work).abs() < 1e-9 * figure, "{row}");
                (r["server"].as_str().unwrap().to_string(), calls, work)
            })
            .collect(),
    )
}

#[test]
fn stream_measures_megabytes_against_the_reference() {
    let json = run_and_read(&mut options(Scenario::Stream, 2), "stream");
    assert_common(&json, "stream");
    assert_eq!(json["unit"], "MB/s");
    assert_eq!(json["work_unit"], "MB");
    for server in ["echo", "floor", "event"] {
        let r = row(&json, server);
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["vs_reference"].as_f64().unwrap() > 0.0, "{r}");
        assert_cost(r);
    }
    for run in json["runs"].as_array().unwrap() {
        assert_cpu(run);
    }
    // Every server reads at most 64 KiB a call and sends what it read with
    // at least one more: at least 2 * 10^6 / 65,536 calls a megabyte. With
    // io_uring the send and the next receive go in one call.
    for (server, calls, mb) in counted_calls(&json).unwrap_or_default() {
        let calls_per_read = if server == "floor-uring" { 1.0 } else { 2.0 };
        assert!(
            calls / mb >= calls_per_read * 1e6 / 65536.0,
            "{server}: {calls} calls, {mb} MB"
        );
    }
    let dir = scratch("stream");
    assert_svg(&dir.join("stream-throughput.svg"));
}

#[test]
fn the_floor_answers_beside_the_models_and_every_row_has_its_costs() {
    let conns = 3;
    let o = options(Scenario::Pingpong, conns);
    let results = bench::run::run(&o.check().expect("valid options")).expect("bench runs");
    let table = results.table();
    assert!(
        table.contains("srv µs/req") && table.contains("calls/req"),
        "{table}"
    );
    let dir = scratch("floor");
    bench::run::write(&results, &dir).expect("outputs written");
    let json = read_json(&dir);
    // Every byte every server sent back was checked: no errors.
    assert_common(&json, "pingpong");
    assert_eq!(json["work_unit"], "req");
    let names: Vec<&str> = rows(&json)
        .iter()
        .map(|r| r["server"].as_str().unwrap())
        .collect();
    // The io_uring floor where this kernel lets it run.
    if Model::Uring.available().is_ok() {
        assert_eq!(names, ["echo", "floor", "floor-uring", "event"]);
    } else {
        assert_eq!(names, ["echo", "floor", "event"]);
    }
    for r in rows(&json) {
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
        assert_cost(r);
    }
    // The kernel's share of each server's CPU, from ticks of about 10 ms:
    // a share where any were counted.
    let shares: Vec<f64> = rows(&json)
        .iter()
        .filter_map(|r| r["server_kernel_share"].as_f64())
        .collect();
    assert!(!shares.is_empty(), "{json:#}");
    assert!(shares.iter().all(|s| (0.0..=1.0).contains(s)), "{shares:?}");
    let Some(calls) = counted_calls(&json) else {
        return;
    };
    // Per connection, its end: a read of nothing, a close, a thread's end.
    let ending = 20.0 * conns as f64;
    for (server, calls, requests) in calls {
        if server == "floor-uring" {
            // A receive and a send a request, submitted together with
            // the wait for them: at most two `io_uring_enter`s.
            assert!(calls <= 2.0 * requests + ending, "{calls} for {requests}");
            continue;
        }
        // A request is a receive and a send, whatever else a server does.
        assert!(calls >= 2.0 * requests, "{server}: {calls} for {requests}");
        match server.as_str() {
            // A blocking thread per client: exactly those two.
            "echo" => assert!(calls <= 2.0 * requests + ending, "{calls} for {requests}"),
            // One read per request (a short read emptied the socket), one
            // write, and at most one epoll_wait.
            "floor" => assert!(calls <= 3.0 * requests + ending, "{calls} for {requests}"),
            _ => {}
        }
    }
}

/// Both client shapes, one after the other in each repeat: a row each per
/// server, each compared with the echo under the same client, every byte
/// checked, the load's CPU counted; the table names them.
#[test]
fn the_threads_client_runs_beside_the_engine_and_every_row_says_which() {
    for scenario in [Scenario::Stream, Scenario::Pingpong] {
        let mut o = options(scenario, 2);
        o.clients = vec![ClientShape::Engine, ClientShape::Threads];
        let name = format!("clients-{scenario}");
        let json = run_and_read(&mut o, &name);
        assert_common(&json, scenario.name());
        assert_eq!(json["clients"], serde_json::json!(["engine", "threads"]));
        for client in ["engine", "threads"] {
            for server in ["echo", "floor", "event"] {
                let r = rows(&json)
                    .iter()
                    .find(|r| r["server"] == server && r["client"] == client)
                    .unwrap_or_else(|| panic!("no {client} row for {server}: {json:#}"));
                assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
                assert!(r["vs_reference"].as_f64().unwrap() > 0.0, "{r}");
                assert_eq!(r["served_at_once"], 2, "{r}");
                assert_cost(r);
            }
        }
        for run in json["runs"].as_array().unwrap() {
            assert_cpu(run);
            if run["client"] == "threads" {
                // A thread per connection, two when streaming.
                let per = if scenario == Scenario::Stream { 2 } else { 1 };
                assert_eq!(run["client_threads"], 2 * per, "{run}");
            }
        }
        let results = bench::run::run(&o.check().unwrap()).unwrap();
        let table = results.table();
        assert!(
            table.contains(" threads ") && table.contains(" engine "),
            "{table}"
        );
        assert!(table.contains("threads, "), "{table}");
    }
}

#[test]
fn the_threads_client_reports_a_wrong_server() {
    let addr = wrong_server();
    for scenario in [Scenario::Stream, Scenario::Pingpong] {
        let mut o = options(scenario, 2);
        o.models.clear();
        o.reference = false;
        o.addr = Some(addr);
        o.clients = vec![ClientShape::Threads];
        let results = bench::run::run(&o.check().unwrap()).unwrap();
        assert_eq!(results.errors(), 2, "{scenario}: {:?}", results.runs);
        let sample = &results.runs[0].error_samples[0];
        assert!(sample.contains("wrong byte"), "{scenario}: {sample}");
    }
}

#[test]
fn pingpong_measures_requests_and_latency() {
    let json = run_and_read(&mut options(Scenario::Pingpong, 3), "pingpong");
    assert_common(&json, "pingpong");
    let r = row(&json, "event");
    assert!(r["throughput"].as_f64().unwrap() > 0.0);
    assert_eq!(r["served_at_once"], 3);
    assert_latency(&r["latency_us"]);
    for run in json["runs"].as_array().unwrap() {
        assert_cpu(run);
        assert_spectrum(&run["latency_spectrum"]);
    }
    let dir = scratch("pingpong");
    assert_svg(&dir.join("pingpong-throughput.svg"));
    assert_svg(&dir.join("pingpong-latency.svg"));
    // The latency distribution in HdrHistogram's text, for re-plotting.
    let hgrm = std::fs::read_to_string(dir.join("pingpong-event-3.hgrm")).unwrap();
    assert!(
        hgrm.contains("Percentile") && hgrm.contains("#[Max"),
        "{hgrm}"
    );
}

#[test]
fn rate_keeps_to_its_schedule() {
    let mut o = options(Scenario::Rate, 2);
    o.params.rate = 500;
    let json = run_and_read(&mut o, "rate");
    assert_common(&json, "rate");
    let r = row(&json, "event");
    // 500/s for 0.2 s is about 100 requests; a schedule is kept, never
    // exceeded.
    let run = &json["runs"][1];
    assert!(run["ops"].as_u64().unwrap() > 0 && run["ops"].as_u64().unwrap() <= 101);
    assert_latency(&r["latency_us"]);
    // Latency from each request's due time, and from its real send.
    assert_latency(&r["uncorrected_us"]);
    assert_spectrum(&run["uncorrected_spectrum"]);
}

/// Speaks the protocol, but holds its second answer back for `stall`.
fn stalling_server(stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(b"*");
        let mut core = concur::protocol::Processor::new();
        let (mut buf, mut answers) = ([0u8; 1024], 0);
        while let Ok(n @ 1..) = std::io::Read::read(&mut s, &mut buf) {
            let mut out = Vec::new();
            core.feed(&buf[..n], &mut out);
            if !out.is_empty() {
                answers += 1;
                if answers == 2 {
                    std::thread::sleep(stall);
                }
            }
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    addr
}

#[test]
fn rate_counts_the_requests_a_stall_kept_from_being_sent() {
    // One connection due to send every 10 ms for 205 ms: 21 requests. The
    // second answer comes 400 ms late, after the run's end: the 19 due
    // meanwhile (the last at 200 ms) were never sent, and each has waited
    // at least 210 ms by then.
    let mut o = options(Scenario::Rate, 1);
    o.params.secs = Duration::from_millis(205);
    o.params.rate = 100;
    o.models.clear();
    o.reference = false;
    o.addr = Some(stalling_server(Duration::from_millis(400)));
    let results = bench::run::run(&o.check().unwrap()).unwrap();
    let run = &results.runs[0];
    assert_eq!(run.errors, 0, "{:?}", run.error_samples);
    assert_eq!(run.ops, 2, "two answered");
    assert_eq!(run.unsent, 19, "due meanwhile, never sent");
    let latency = run.latency_us.expect("latencies");
    assert_eq!(latency.count, 21, "{latency:?}");
    assert!(latency.p50 >= 210_000, "{latency:?}");
    // Measured from the real sends, the stall shows only once: what a
    // load generator that waits for the server would report.
    let uncorrected = run.uncorrected_us.expect("uncorrected latencies");
    assert_eq!(uncorrected.count, 2, "{uncorrected:?}");
}

#[test]
fn churn_counts_connections() {
    let json = run_and_read(&mut options(Scenario::Churn, 2), "churn");
    assert_common(&json, "churn");
    assert_eq!(json["unit"], "conn/s");
    let r = row(&json, "event");
    assert!(r["throughput"].as_f64().unwrap() > 0.0);
    assert_latency(&r["latency_us"]);
}

#[test]
fn cpu_reports_answers_and_the_probe() {
    let mut o = options(Scenario::Cpu, 3);
    o.models = vec![Model::Async];
    // A prime small enough for a test, big enough to be offloaded.
    o.params.number = 1_000_000_000_039;
    let json = run_and_read(&mut o, "cpu");
    assert_common(&json, "cpu");
    // The echo does not speak the primality protocol.
    assert!(json["reference"].is_null());
    let r = row(&json, "async");
    assert!(r["throughput"].as_f64().unwrap() > 0.0);
    assert_latency(&r["probe_us"]);
    assert_svg(&scratch("cpu").join("cpu-latency.svg"));
}

#[test]
fn a_sweep_has_a_row_per_count_and_a_latency_plot_per_count() {
    let mut o = options(Scenario::Pingpong, 1);
    o.counts = vec![1, 4];
    o.sweep = true;
    o.reference = false;
    let json = run_and_read(&mut o, "sweep");
    assert_eq!(json["sweep"], true);
    let counts: Vec<u64> = rows(&json)
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 4]);
    let dir = scratch("sweep");
    for f in [
        "pingpong-throughput.svg",
        "pingpong-latency-1.svg",
        "pingpong-latency-4.svg",
    ] {
        assert_svg(&dir.join(f));
    }
}

#[test]
fn idle_reads_the_child_servers_memory_and_threads() {
    let dir = scratch("idle");
    let o = concur(&[
        "bench",
        "idle",
        "-c",
        "200",
        "--secs",
        "0.2",
        "--models",
        "thread",
        "--repeat",
        "1",
        "-q",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = read_json(&dir);
    assert_common(&json, "idle");
    let idle = &json["runs"][0]["idle"];
    assert_eq!(idle["clients"], 200);
    assert_eq!(idle["greeted"], 200);
    assert!(idle["rss_after_kib"].as_u64().unwrap() > 0);
    // A thread per client, so at least that many threads.
    assert!(idle["threads"].as_u64().unwrap() > 200, "{idle}");
    assert!(idle["newcomers_served"].as_u64().unwrap() > 0, "{idle}");
    assert!(json["rows"][0]["idle_bytes_per_client"].as_f64().unwrap() > 0.0);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("B/client") && stdout.contains("thread"),
        "{stdout}"
    );
}

/// Greets like concur, then echoes the bytes unchanged: the bytes flow,
/// only their values are wrong.
fn wrong_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = s.write_all(b"*");
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

#[test]
fn a_wrong_server_is_reported_in_every_scenario() {
    let addr = wrong_server();
    for scenario in [
        Scenario::Stream,
        Scenario::Pingpong,
        Scenario::Rate,
        Scenario::Churn,
    ] {
        let mut o = options(scenario, 2);
        o.models.clear();
        o.reference = false;
        o.addr = Some(addr);
        let results = bench::run::run(&o.check().unwrap()).unwrap();
        assert_eq!(results.runs.len(), 1);
        // Both connections (or workers) saw a wrong byte.
        assert_eq!(results.errors(), 2, "{scenario}: {:?}", results.runs);
        let sample = &results.runs[0].error_samples[0];
        assert!(sample.contains("wrong byte"), "{scenario}: {sample}");
    }
}

#[test]
fn a_server_that_serves_nothing_has_no_cost_per_unit() {
    // It greets, then closes: whatever its process spends, no request is
    // served to divide it by.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"*");
        }
    });
    let mut o = options(Scenario::Pingpong, 2);
    o.models.clear();
    o.reference = false;
    o.addr = Some(addr);
    let results = bench::run::run(&o.check().unwrap()).unwrap();
    assert_eq!(results.runs[0].ops, 0);
    assert_eq!(results.errors(), 2);
    let r = &results.rows[0];
    assert_eq!(r.server_cpu_us_per_unit, None, "{r:?}");
    assert_eq!(r.syscalls_per_unit, None, "{r:?}");
    let table = results.table();
    let line = table
        .lines()
        .find(|l| l.starts_with(&addr.to_string()))
        .unwrap_or_else(|| panic!("{table}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    // srv µs/req and calls/req, before the errors.
    assert_eq!(fields[fields.len() - 3..], ["-", "-", "2"], "{line}");
}

#[test]
fn a_wrong_server_makes_the_command_fail() {
    let addr = wrong_server().to_string();
    let dir = scratch("wrong");
    let o = concur(&[
        "bench",
        "pingpong",
        "--addr",
        &addr,
        "-c",
        "2",
        "--secs",
        "0.2",
        "--repeat",
        "1",
        "-q",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("wrong byte"), "{stderr}");
    let json = read_json(&dir);
    let wrong = row(&json, &addr);
    assert_eq!(wrong["errors"], 2);
    // The reference beside it was fine.
    assert_eq!(row(&json, "echo")["errors"], 0);
}

#[test]
fn two_thousand_connections_from_two_threads_in_every_model() {
    server::raise_fd_limit().unwrap();
    for model in models() {
        let listener = server::listener::bind("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let config = Config::new(model)
            .drain_timeout(Duration::from_secs(1))
            .check()
            .unwrap();
        let server = server::start(listener, config).unwrap();
        let speaks = Speaks::Bytes(Peer::Concur);
        let secs = Duration::from_millis(200);
        let mut plan = Plan::new(Scenario::Pingpong, server.local_addr(), speaks, 2000, secs);
        plan.threads = 2;
        let outcome = engine::run(&plan).unwrap();
        assert_eq!(outcome.errors, 0, "{model}: {:?}", outcome.error_samples);
        assert_eq!(outcome.threads, 2);
        // Every connection made at least one checked exchange.
        assert!(outcome.ops >= 2000, "{model}: {} requests", outcome.ops);
        // Who was being served before the deadline is the model's doing:
        // one at a time, a pool's 64 workers, or far more.
        match model {
            Model::Sequential => assert_eq!(outcome.served_at_once, 1),
            Model::Pool => assert_eq!(outcome.served_at_once, 64),
            _ => assert!(
                outcome.served_at_once > 64,
                "{model}: {}",
                outcome.served_at_once
            ),
        }
        let summary = server.stop();
        assert_eq!(summary.served, 2000, "{model}: {summary}");
        // `^`, 16 bytes, `$` per request; 16 answered plus the `*`.
        assert_eq!(summary.bytes_in, outcome.ops * 18, "{model}");
        assert_eq!(summary.bytes_out, outcome.ops * 16 + 2000, "{model}");
    }
}

#[test]
fn the_servers_and_the_load_run_on_the_cpus_asked_for() {
    let exe = Path::new(env!("CARGO_BIN_EXE_concur"));
    let args = ["echo", "--port", "0"].map(String::from);
    let child = bench::child::ServerProcess::spawn(exe, &args, Some(&[0])).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid())).unwrap();
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim);
    assert_eq!(allowed, Some("0"), "{status}");
    drop(child);

    let dir = scratch("pinned");
    let o = concur(&[
        "bench",
        "pingpong",
        "--models",
        "event",
        "-c",
        "2",
        "--secs",
        "0.2",
        "--repeat",
        "1",
        "--server-cpus",
        "0",
        "--client-cpus",
        "0",
        "--client-threads",
        "1",
        "-q",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = read_json(&dir);
    assert_eq!(json["server_cpus"], serde_json::json!([0]));
    assert_eq!(json["client_cpus"], serde_json::json!([0]));
    assert_eq!(json["client_threads"], 1);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("servers on CPUs 0, load on CPUs 0"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_refused_with_what_is_allowed() {
    for (args, wanted) in [
        (&["bench", "fastest"][..], "possible values"),
        (&["bench", "pingpong", "--of", "stream"], "sweep"),
        (&["bench", "pingpong", "--number", "7"], "cpu"),
        (&["bench", "stream", "--rate", "7"], "rate"),
        (&["bench", "pingpong", "-c", "0"], "0"),
        (&["bench", "pingpong", "--secs", "0"], "more than 0"),
        (&["bench", "pingpong", "--models", "fibers"], "async"),
        (&["bench", "pingpong", "--addr", "10.1.2.3:80"], "loopback"),
        (&["bench", "idle", "--addr", "127.0.0.1:9"], "child process"),
        (&["bench", "pingpong", "--addr", "nowhere"], "--addr"),
        (
            &["bench", "pingpong", "--client-threads", "0"],
            "give 1 to 64",
        ),
        (&["bench", "pingpong", "--client", "fibers"], "threads"),
        (
            &["bench", "rate", "--client", "threads"],
            "stream and pingpong",
        ),
        (
            &[
                "bench",
                "pingpong",
                "--client",
                "engine,threads",
                "-c",
                "5000",
            ],
            "at most 2000",
        ),
        (
            &["bench", "pingpong", "--server-cpus", "99999"],
            "does not exist",
        ),
        (
            &["bench", "pingpong", "--client-cpus", "1-0"],
            "empty range",
        ),
    ] {
        let o = concur(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("error") && err.contains(wanted),
            "{args:?}: {err}"
        );
        // Clap's own form, pointing at the help.
        assert!(err.contains("try '--help'"), "{args:?}: {err}");
    }
}
