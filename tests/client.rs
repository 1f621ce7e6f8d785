//! The simulated client, its log, its timelines and its chart, against
//! every model; and against servers that get the protocol wrong.
//!
//! The article's full schedule takes 2.2 s a client, so it runs once per
//! model, all models at once; every other test uses a short script.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use concur::client::log::py_bytes;
use concur::client::{self, Connection, Options, Report, Script, Step, chart};
use concur::protocol::Processor;
use concur::server::Model;
use regex::Regex;

/// The article's schedule with its pauses cut to a few tens of ms.
const FAST: &str = "# the article's schedule, fast\n\
    send ^abc$de^abte$f\n\
    pause 0.05\n\
    send xyz^123\n\
    pause 0.05\n\
    send 25$^ab0000$abab\n\
    pause 0.02\n";

fn fast() -> Script {
    Script::parse(FAST).unwrap()
}

/// A file in this test binary's scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn concur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur")
}

/// The binary's client with `n` connections on `script` against port
/// `port` of 127.0.0.1, writing its timelines to `json` and its chart to
/// `svg`.
fn client_writing(
    n: usize,
    port: &str,
    script: &Path,
    json: &Path,
    svg: &Path,
    extra: &[&str],
) -> Output {
    let n = n.to_string();
    let mut args = vec![
        "client",
        "-n",
        &n,
        "127.0.0.1",
        port,
        "--script",
        script.to_str().unwrap(),
        "--timeout",
        "10",
        "--json",
        json.to_str().unwrap(),
        "--chart",
        svg.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    concur(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every line a successful run logs, in the article's format.
fn info_line() -> Regex {
    Regex::new(
        r"^INFO:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}:(conn\d+) (connected\.\.\.|sending b'[^']*'|received b'[^']*'|disconnecting)$",
    )
    .unwrap()
}

/// Each connection's log: greeted first, gone last, its sends in the
/// script's order, its received chunks adding up to its reply.
fn check_log(lines: &[String], report: &Report, context: &str) {
    let re = info_line();
    let mut per_conn: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let caps = re
            .captures(line)
            .unwrap_or_else(|| panic!("{context}: log line {line:?}"));
        per_conn
            .entry(caps[1].to_string())
            .or_default()
            .push(caps[2].to_string());
    }
    let sends: Vec<String> = Script::parse(&report.script)
        .unwrap()
        .steps()
        .iter()
        .filter_map(|step| match step {
            Step::Send(b) => Some(format!("sending {}", py_bytes(b))),
            Step::Pause(_) => None,
        })
        .collect();
    for c in &report.connections {
        let log = &per_conn[&c.name];
        assert_eq!(log.first().unwrap(), "connected...", "{context}: {log:?}");
        assert_eq!(log.last().unwrap(), "disconnecting", "{context}: {log:?}");
        let sent: Vec<_> = log.iter().filter(|l| l.starts_with("sending")).collect();
        assert_eq!(sent, sends.iter().collect::<Vec<_>>(), "{context}");
        let received: String = log
            .iter()
            .filter_map(|l| l.strip_prefix("received b'"))
            .map(|l| l.trim_end_matches('\''))
            .collect();
        assert_eq!(received.as_bytes(), c.reply, "{context}: {}", c.name);
    }
}

/// Admission as the foundation's ordering test has it: whoever is
/// admitted k-th (from 0) was admitted only once at least
/// `k + 1 - at_once` others had left; the first `at_once` before anyone
/// left.
fn check_admission_order(report: &Report, at_once: usize, context: &str) {
    let mut by_admission: Vec<&Connection> = report.connections.iter().collect();
    by_admission.sort_by(|a, b| a.admitted.unwrap().total_cmp(&b.admitted.unwrap()));
    for (k, c) in by_admission.iter().enumerate() {
        let admitted = c.admitted.unwrap();
        let gone_before = report
            .connections
            .iter()
            .filter(|o| o.done < admitted)
            .count();
        let must_be_gone = (k + 1).saturating_sub(at_once);
        assert!(
            gone_before >= must_be_gone,
            "{context}: {} was admitted {k}-th while only {gone_before} had left",
            c.name
        );
        if k < at_once {
            assert_eq!(
                gone_before, 0,
                "{context}: {} waited although a worker was free",
                c.name
            );
        }
        assert!(
            c.arrival <= admitted && admitted <= c.done,
            "{context}: {c:?}"
        );
    }
}

#[test]
fn the_article_schedule_against_every_model() {
    let expected = VECTORS[0].1;
    assert_eq!(Script::article().expected_reply(), expected);

    let runs: Vec<(Model, Report)> = std::thread::scope(|scope| {
        let handles: Vec<_> = models()
            .into_iter()
            .map(|model| {
                scope.spawn(move || {
                    let server = start_with(small_config(model));
                    let options = Options::new(3).timeout(2 * PATIENCE);
                    let report = client::run(server.local_addr(), &options);
                    let summary = server.stop();
                    assert_eq!((summary.served, summary.failed), (3, 0), "{model}");
                    (model, report)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (model, report) in runs {
        let context = model.to_string();
        assert!(report.ok(), "{model}: {:?}", report.failures());
        assert_eq!(report.connections.len(), 3);
        for c in &report.connections {
            assert_eq!(c.reply, expected, "{model}: {}", c.name);
            assert_eq!(c.sent.len(), 3, "{model}: {}", c.name);
        }
        check_log(&report.log, &report, &context);
        check_admission_order(&report, serves_at_once(model), &context);
    }
}

/// The binary against every model, fast: exit 0, the log on standard
/// error in the article's format, `Elapsed:` on standard output, and the
/// JSON and chart written. Returns each model's JSON and SVG.
fn binary_runs() -> Vec<(Model, serde_json::Value, String)> {
    let script = scratch("fast.script");
    std::fs::write(&script, FAST).unwrap();
    models()
        .into_iter()
        .map(|model| {
            let server = start_with(small_config(model));
            let port = server.local_addr().port().to_string();
            let json = scratch(&format!("run-{model}.json"));
            let svg = scratch(&format!("run-{model}.svg"));
            let label = small_config(model).describe();
            let o = client_writing(3, &port, &script, &json, &svg, &["--label", &label]);
            server.stop();
            assert!(o.status.success(), "{model}: {}", text(&o.stderr));
            let stdout = text(&o.stdout);
            assert!(
                Regex::new(r"^Elapsed: \d+\.\d+\n$")
                    .unwrap()
                    .is_match(&stdout),
                "{model}: {stdout:?}"
            );
            let value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            let lines: Vec<String> = text(&o.stderr).lines().map(String::from).collect();
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.ends_with("disconnecting"))
                    .count(),
                3,
                "{model}: {lines:?}"
            );
            let re = info_line();
            for line in &lines {
                assert!(re.is_match(line), "{model}: {line:?}");
            }
            (model, value, std::fs::read_to_string(&svg).unwrap())
        })
        .collect()
}

fn secs(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not seconds"))
}

fn attr(node: roxmltree::Node, name: &str) -> f64 {
    node.attribute(name).unwrap().parse().unwrap()
}

fn hex(c: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

#[test]
fn the_binary_logs_like_the_article_and_its_chart_follows_the_timeline() {
    for (model, json, svg) in binary_runs() {
        let conns = json["connections"].as_array().unwrap();
        assert_eq!(conns.len(), 3);
        for c in conns {
            assert_eq!(c["failure"], serde_json::Value::Null, "{model}: {c}");
            assert_eq!(c["reply"], "b'bcdbcuf23436bc1111'", "{model}");
        }
        assert_eq!(json["server"], small_config(model).describe());

        let doc = roxmltree::Document::parse(&svg).expect("the chart is XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");

        // One row per client: each name labels the axis once, top down.
        let label_y: Vec<f64> = (0..3)
            .map(|i| {
                let name = format!("conn{i}");
                let labels: Vec<_> = root
                    .descendants()
                    .filter(|n| n.has_tag_name("text"))
                    .filter(|n| n.text().map(str::trim) == Some(name.as_str()))
                    .collect();
                assert_eq!(labels.len(), 1, "{model}: labels of {name}");
                attr(labels[0], "y")
            })
            .collect();
        assert!(
            label_y.windows(2).all(|w| w[0] < w[1]),
            "{model}: {label_y:?}"
        );

        let title = format!("{}: 3 clients", small_config(model).describe());
        assert!(
            root.descendants()
                .any(|n| n.text().is_some_and(|t| t.contains(&title))),
            "{model}: no title {title:?}"
        );

        // One diamond per client, and one more in the legend.
        let diamonds = root
            .descendants()
            .filter(|n| n.has_tag_name("polygon"))
            .filter(|n| n.attribute("fill") == Some(&hex(chart::ARRIVAL_COLOR)))
            .count();
        assert_eq!(diamonds, 3 + 1, "{model}");

        // The bars: one per client, in row order; the legend's swatch is
        // the thin one.
        let mut bars: Vec<(f64, f64, f64)> = root
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter(|n| n.attribute("fill") == Some(&hex(chart::SERVED_COLOR)))
            .filter(|n| attr(*n, "height") > 12.0)
            .map(|n| {
                let (x, w) = (attr(n, "x"), attr(n, "width"));
                (attr(n, "y") + attr(n, "height") / 2.0, x, x + w)
            })
            .collect();
        assert_eq!(bars.len(), 3, "{model}: {bars:?}");
        bars.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (bar, y) in bars.iter().zip(&label_y) {
            let row_gap = (label_y[1] - label_y[0]) / 2.0;
            assert!(
                (bar.0 - y).abs() < row_gap,
                "{model}: bar {bar:?} off its row {y}"
            );
        }

        // Bar ends against admitted and done: one linear map from seconds
        // to pixels must fit them all, to the pixel the SVG rounds to.
        let mut points = Vec::new();
        for (c, bar) in conns.iter().zip(&bars) {
            points.push((secs(&c["admitted"]), bar.1));
            points.push((secs(&c["done"]), bar.2));
        }
        let n = points.len() as f64;
        let (mt, mx) = (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let slope = points.iter().map(|p| (p.0 - mt) * (p.1 - mx)).sum::<f64>()
            / points.iter().map(|p| (p.0 - mt).powi(2)).sum::<f64>();
        assert!(slope > 0.0, "{model}: {points:?}");
        for (t, x) in &points {
            let fitted = mx + slope * (t - mt);
            assert!(
                (fitted - x).abs() <= 2.0,
                "{model}: bar end at {x} px for {t} s, the timeline puts it at {fitted:.1} px"
            );
        }
    }
}

/// How a [`test_server`] answers one connection.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// By the protocol, one write per read.
    Right,
    /// By the protocol, one `send` per answer byte, as the article's C and
    /// Python servers do.
    ByteAtATime,
    /// The bytes it got, unchanged: wrong.
    Echo,
}

/// A server on 127.0.0.1 that greets with `*` and then answers each
/// connection (by accept order) as `answer` says.
fn test_server(clients: usize, answer: fn(usize) -> Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for k in 0..clients {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                s.write_all(b"*").unwrap();
                let mut p = Processor::new();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    let mut out = Vec::new();
                    match answer(k) {
                        Answer::Echo => out.extend_from_slice(&buf[..n]),
                        Answer::Right | Answer::ByteAtATime => p.feed(&buf[..n], &mut out),
                    }
                    let sent = if answer(k) == Answer::ByteAtATime {
                        out.chunks(1).try_for_each(|b| s.write_all(b))
                    } else {
                        s.write_all(&out)
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_that_sends_a_byte_at_a_time_is_read_whole() {
    // The article's servers: every answer byte its own segment, Nagle on.
    let addr = test_server(3, |_| Answer::ByteAtATime);
    let report = client::run(addr, &Options::new(3).script(fast()).timeout(PATIENCE));
    assert!(report.ok(), "{:?}", report.failures());
    for c in &report.connections {
        assert_eq!(c.reply, VECTORS[0].1, "{}", c.name);
    }
}

#[test]
fn an_echoing_server_fails_and_the_bad_connections_are_named() {
    let addr = test_server(4, |k| {
        if k % 2 == 1 {
            Answer::Echo
        } else {
            Answer::Right
        }
    });
    let script = scratch("fast-echo.script");
    std::fs::write(&script, FAST).unwrap();
    let json = scratch("echo.json");
    let svg = scratch("echo.svg");
    let o = client_writing(4, &addr.port().to_string(), &script, &json, &svg, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);

    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let mut bad = 0;
    for c in value["connections"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let echoed = c["reply"].as_str().unwrap().starts_with("b'^abc");
        let named = stderr
            .lines()
            .any(|l| l.starts_with(&format!("error: {name}: wrong reply")));
        assert_eq!(named, echoed, "{name}: {stderr}");
        bad += usize::from(echoed);
    }
    assert_eq!(bad, 2, "{stderr}");
    assert!(
        stderr.contains("error: 2 of 4 connections failed"),
        "{stderr}"
    );

    // Their bars are drawn in the failure colour.
    let svg = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let failed_bars = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter(|n| n.attribute("fill") == Some(&hex(chart::FAILED_COLOR)))
        .filter(|n| attr(*n, "height") > 12.0)
        .count();
    assert_eq!(failed_bars, 2);
}

#[test]
fn a_wrong_greeting_is_logged_and_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello").unwrap();
        // Hold the connection until the client gives up on it.
        let _ = s.read(&mut [0u8; 1]);
    });
    let report = client::run(addr, &Options::new(1).script(fast()).timeout(PATIENCE));
    server.join().unwrap();

    assert!(!report.ok());
    let c = &report.connections[0];
    assert_eq!(c.admitted, None);
    assert!(
        c.failure.as_deref().unwrap().contains("b'h'"),
        "{:?}",
        c.failure
    );
    assert!(
        report.log.iter().any(|l| l.starts_with("ERROR:")
            && l.contains(":conn0 Something is wrong! Did not receive *")),
        "{:?}",
        report.log
    );
}

#[test]
fn a_client_never_greeted_gives_up_after_its_timeout() {
    // Listening but never accepting: the connection completes in the
    // kernel's backlog and no `*` ever comes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = Options::new(2)
        .script(fast())
        .timeout(Duration::from_millis(200));
    let report = client::run(listener.local_addr().unwrap(), &options);
    assert_eq!(report.failures().len(), 2, "{:?}", report.failures());
    for c in &report.connections {
        assert_eq!(c.admitted, None);
        assert!(c.failure.as_deref().unwrap().contains("nothing within"));
    }
}

#[test]
fn a_server_that_stops_short_is_reported_with_what_arrived() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"*bcd").unwrap();
        // Reads everything, answers nothing more, keeps the socket open.
        let _ = s.set_read_timeout(Some(PATIENCE));
        while let Ok(1..) = s.read(&mut [0u8; 64]) {}
    });
    // Long enough for the server thread to greet on a busy machine; the
    // test waits this long for the rest of the reply.
    let options = Options::new(1)
        .script(fast())
        .timeout(Duration::from_secs(1));
    let report = client::run(addr, &options);
    let failure = report.connections[0].failure.clone().unwrap();
    assert!(
        failure.contains("got 3 of 18 bytes") && failure.contains("b'bcd'"),
        "{failure}"
    );
}

#[test]
fn staggered_connections_arrive_no_sooner_than_their_turn() {
    let server = start_with(small_config(Model::Thread));
    let stagger = Duration::from_millis(30);
    let options = Options::new(3)
        .script(fast())
        .stagger(stagger)
        .timeout(PATIENCE);
    let report = client::run(server.local_addr(), &options);
    server.stop();
    assert!(report.ok(), "{:?}", report.failures());
    for (i, c) in report.connections.iter().enumerate() {
        assert!(
            c.arrival >= (stagger * i as u32).as_secs_f64(),
            "{} arrived at {} s",
            c.name,
            c.arrival
        );
    }
}

#[test]
fn the_demo_prints_its_table_and_writes_a_chart_per_model() {
    let out = scratch("demo");
    let _ = std::fs::remove_dir_all(&out);
    let o = concur(&["demo", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let rows =
        Regex::new(r"(?m)^(model [a-z, 0-9]+?)\s+\d+\.\d\d s(  conn\d \d+\.\d\d){3}$").unwrap();
    let servers: Vec<_> = rows
        .captures_iter(&stdout)
        .map(|c| c[1].to_string())
        .collect();
    // A row per model, in order; the article's pool has two workers.
    assert_eq!(servers.len(), models().len(), "{stdout}");
    for (row, model) in servers.iter().zip(models()) {
        let name = format!("model {model}");
        assert!(
            row == &name || row.starts_with(&format!("{name},")),
            "{row} for {model}"
        );
    }
    assert!(
        servers.contains(&"model pool, 2 threads".into()),
        "{stdout}"
    );
    for model in models() {
        let svg = std::fs::read_to_string(out.join(format!("demo-{model}.svg"))).unwrap();
        roxmltree::Document::parse(&svg).unwrap();
        let json = std::fs::read_to_string(out.join(format!("demo-{model}.json"))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["connections"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn bad_client_input_is_refused_clearly() {
    let bad_script = scratch("bad.script");
    std::fs::write(&bad_script, "send ^a$\nwait 1\n").unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "client",
                "127.0.0.1",
                "9",
                "--script",
                bad_script.to_str().unwrap(),
            ],
            "line 2: unknown step \"wait\"",
        ),
        (
            &[
                "client",
                "127.0.0.1",
                "9",
                "--script",
                "/nonexistent/script",
            ],
            "cannot read the script",
        ),
        (&["client", "-n", "0", "127.0.0.1", "9"], "1..=10000"),
        (
            &["client", "127.0.0.1", "0"],
            "<PORT>': 0 is not in 1..=65535",
        ),
        (
            &["client", "127.0.0.1", "9", "--timeout", "0"],
            "more than 0",
        ),
        (
            &["client", "127.0.0.1", "9", "--stagger", "-5"],
            "--stagger",
        ),
    ];
    for (args, needle) in cases {
        let o = concur(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(needle),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

#[test]
fn threads_reports_the_threads_it_started_and_exits() {
    let o = concur(&["threads", "20", "--secs", "0.2", "--stack-kib", "64"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let alive: u64 = Regex::new(r"^threads: 20 of 20 created .*; (\d+) threads in the process\n")
        .unwrap()
        .captures(&stdout)
        .unwrap_or_else(|| panic!("{stdout}"))[1]
        .parse()
        .unwrap();
    assert!(alive > 20, "the 20 and the main thread: {stdout}");
    assert!(
        stdout.contains("resident") && stdout.contains("virtual"),
        "{stdout}"
    );
    assert!(stdout.contains("% of one core"), "{stdout}");

    let o = concur(&["threads", "5", "--stack-kib", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("give 16 to 1073741824 KiB"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn threads_that_cannot_be_created_are_counted_not_a_panic() {
    // 1 GB of address space cannot hold 5,000 stacks of 2 MiB.
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1000000 && exec \"$0\" threads 5000 --secs 0.1")
        .arg(env!("CARGO_BIN_EXE_concur"))
        .output()
        .expect("run concur under ulimit");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let created: usize = Regex::new(r"^threads: (\d+) of 5000 created")
        .unwrap()
        .captures(&stdout)
        .unwrap_or_else(|| panic!("{stdout}"))[1]
        .parse()
        .unwrap();
    assert!(created < 5000, "{stdout}");
    assert!(
        stdout.contains(&format!("thread {} could not be created", created + 1)),
        "{stdout}"
    );
}
