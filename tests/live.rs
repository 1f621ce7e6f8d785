//! The live page's feed, without a browser (`tests/browser.rs` has one):
//! `/events` streams every client's accepted, admitted, first byte and
//! end in every model, and `/clients` folds the same into rows; viewers
//! are capped and one that reads nothing is dropped while the others go
//! on; with a page open and 50 connections dripping bytes, `/metrics` is
//! answered and the protocol's clients are served; `demo --live` shows
//! all six models on one page, the pool's third client waiting.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use concur::http::{self, Limits, Watched};
use concur::server::{Config, Model};
use serde_json::Value;

/// A reader of `/events`, as the page reads it.
struct Stream {
    reader: BufReader<TcpStream>,
    /// Text received and not yet made into messages.
    pending: String,
}

/// One Server-Sent Event: its name and its data lines.
#[derive(Debug)]
struct Message {
    event: String,
    data: Vec<String>,
}

impl Stream {
    /// Opens `/events`: the stream, or the status line and body of the
    /// refusal.
    fn open(addr: SocketAddr) -> Result<Stream, (String, String)> {
        let mut s = connect(addr);
        s.write_all(b"GET /events HTTP/1.1\r\nHost: concur\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("the answer's head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status = head.lines().next().unwrap_or("").to_string();
        if !status.starts_with("HTTP/1.1 200") {
            let mut body = String::new();
            let _ = reader.read_to_string(&mut body);
            return Err((status, body));
        }
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        Ok(Stream {
            reader,
            pending: String::new(),
        })
    }

    /// The next message, reading chunks as needed (each wait bounded).
    fn next(&mut self) -> Message {
        loop {
            if let Some((message, rest)) = self.pending.split_once("\n\n") {
                let mut m = Message {
                    event: "message".into(),
                    data: Vec::new(),
                };
                for line in message.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        m.event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        m.data.push(d.to_string());
                    }
                }
                self.pending = rest.to_string();
                return m;
            }
            let mut size = String::new();
            self.reader.read_line(&mut size).expect("a chunk's size");
            let size = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size: {size:?}"));
            assert!(size > 0, "the stream ended");
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).expect("a chunk");
            chunk.truncate(size);
            self.pending
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The stream's `hello`: the servers it shows.
    fn hello(&mut self) -> Vec<Value> {
        let hello = self.next();
        assert_eq!(hello.event, "hello", "{hello:?}");
        let v: Value = serde_json::from_str(&hello.data[0]).unwrap();
        v["servers"].as_array().unwrap().clone()
    }

    /// Reads on until `done` holds for every event seen so far (bounded).
    fn events_until(&mut self, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = Vec::new();
        while !done(&events) {
            assert!(Instant::now() < deadline, "never came: {events:?}");
            let m = self.next();
            assert_ne!(m.event, "missed", "{m:?}");
            if m.event == "events" {
                events.extend(m.data.iter().map(|d| serde_json::from_str(d).unwrap()));
            }
        }
        events
    }
}

/// A viewer reading its stream all along, on a thread of its own, as a
/// page does.
struct Viewer {
    frames: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Viewer {
    fn watch(addr: SocketAddr) -> Viewer {
        let mut stream = Stream::open(addr).expect("a viewer's stream");
        stream.hello();
        let frames = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (frames, stop) = (Arc::clone(&frames), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if stream.next().event == "status" {
                        frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        Viewer {
            frames,
            stop,
            thread,
        }
    }

    /// The `status` messages read so far: one a frame.
    fn frames(&self) -> usize {
        self.frames.load(Ordering::Relaxed)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the viewer");
    }
}

/// What happened to `client` of `server`, in order.
fn of(events: &[Value], server: u64, client: u64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["server"] == server && e["client"] == client)
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect()
}

/// The sequence number of `what` happening to `client` of `server`.
fn seq(events: &[Value], server: u64, client: u64, what: &str) -> u64 {
    events
        .iter()
        .find(|e| e["server"] == server && e["client"] == client && e["what"] == what)
        .unwrap_or_else(|| panic!("server {server} client {client} never {what}"))["seq"]
        .as_u64()
        .unwrap()
}

fn streamed_and_folded(model: Model) {
    let server = Process::serve_http(model);
    let http = server.http_addr();
    let mut stream = Stream::open(http).expect("a stream");
    let servers = stream.hello();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["model"], model.name());

    let mut client = connect_served(server.addr);
    round_trip(&mut client);
    drop(client);
    let events = stream.events_until(|e| of(e, 0, 1).last().map(String::as_str) == Some("served"));
    assert_eq!(
        of(&events, 0, 1),
        ["accepted", "admitted", "first_byte", "served"],
        "{model}"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[1]["seq"].as_u64() > w[0]["seq"].as_u64()
                && w[1]["at_us"].as_u64() >= w[0]["at_us"].as_u64()),
        "{model}: in order, on a monotonic clock: {events:?}"
    );

    // The snapshot says the same, folded into the client's row.
    let (status, body) = curl(&[], &format!("http://{http}/clients"));
    assert_eq!(status, 200, "{model}: {body}");
    let clients: Value = serde_json::from_str(&body).unwrap();
    let snapshot = &clients["servers"][0];
    assert_eq!(snapshot["model"], model.name());
    assert_eq!(snapshot["counters"]["served"], 1, "{model}: {snapshot}");
    assert_eq!(snapshot["dropped"], 0);
    let rows = snapshot["clients"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{model}: {snapshot}");
    let at = |what: &str| {
        events
            .iter()
            .find(|e| e["what"] == what)
            .map(|e| e["at_us"].clone())
            .unwrap()
    };
    assert_eq!(rows[0]["client"], 1);
    assert_eq!(rows[0]["accepted_us"], at("accepted"), "{model}");
    assert_eq!(rows[0]["admitted_us"], at("admitted"), "{model}");
    assert_eq!(rows[0]["first_byte_us"], at("first_byte"), "{model}");
    assert_eq!(rows[0]["ended_us"], at("served"), "{model}");
    assert_eq!(rows[0]["end"], "served", "{model}");

    // The page itself, whole, from the binary.
    let (status, page) = curl(&[], &format!("http://{http}/"));
    assert_eq!(status, 200);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("new EventSource(\"events\")"), "{page}");
    assert!(page.trim_end().ends_with("</html>"));
}

#[test]
fn every_model_streams_each_client_s_events_and_folds_them_into_rows() {
    std::thread::scope(|scope| {
        for model in models() {
            scope.spawn(move || streamed_and_folded(model));
        }
    });
}

/// A connection that asks for `/events` and then reads nothing, with a
/// receive buffer as small as the kernel allows, so that the server's
/// side fills up soon.
fn stalled_viewer(addr: SocketAddr) -> socket2::Socket {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(1).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut t: &Socket = &s;
    t.write_all(b"GET /events HTTP/1.1\r\nHost: concur\r\n\r\n")
        .unwrap();
    s
}

#[test]
fn viewers_are_capped_and_one_that_reads_nothing_is_dropped() {
    let server = start(Model::Event);
    // Fill the ring: a stream starts with what it holds, more than a
    // stalled viewer's buffers take.
    for _ in 0..concur::server::timeline::CAPACITY / 4 {
        drop(connect_served(server.local_addr()));
    }
    let limits = Limits {
        max_streams: 2,
        stream_stall: Duration::from_secs(1),
        ..Limits::default()
    };
    let listener = concur::server::listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let config = Config::new(Model::Event);
    let watched = Watched::new(&config, server.counters());
    let port = http::serve_with(listener, vec![watched], limits).unwrap();
    let addr = port.local_addr();

    let reading = Viewer::watch(addr);
    let stalled = stalled_viewer(addr);
    wait_until(|| port.viewers() == 2);
    match Stream::open(addr) {
        Ok(_) => panic!("a third viewer over a cap of two"),
        Err((status, body)) => {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
            assert!(body.contains("at most 2 viewers at once"), "{body}");
        }
    }
    let (status, _) = curl(&[], &format!("http://{addr}/metrics"));
    assert_eq!(status, 200, "a scrape beside the streams");

    // The viewer that reads nothing goes; the one that reads goes on, for
    // longer than the stall would have allowed it.
    wait_until(|| port.viewers() == 1);
    let dropped = Instant::now();
    let seen = reading.frames();
    wait_until(|| dropped.elapsed() > limits.stream_stall * 2);
    let later = reading.frames();
    assert!(later >= seen + 5, "only {} frames since", later - seen);
    assert_eq!(port.viewers(), 1);
    reading.stop();
    // Its place is free again.
    let mut again = Stream::open(addr).expect("a viewer in the freed place");
    again.hello();
    drop(stalled);
    port.stop();
    server.stop();
}

/// Connections that send a request head a byte every 200 ms, each opening
/// again when the server closes it at the head's deadline, until `stop`.
fn drips(
    addr: SocketAddr,
    count: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..count)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let head = b"GET /metrics HTTP/1.1\r\nHost: concur\r\nUser-Agent: drip\r\n\r\n";
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = connect(addr);
                    opened += 1;
                    for b in head.iter().cycle() {
                        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                opened
            })
        })
        .collect()
}

/// Milliseconds per round trip of `client`, `n` times: the median.
fn median_round_trip(client: &mut TcpStream, n: usize) -> f64 {
    let mut took: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            round_trip(client);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    took.sort_by(f64::total_cmp);
    took[n / 2]
}

fn page_open_and_drips(model: Model) {
    const DRIPS: usize = 50;
    let server = Process::serve_http(model);
    let http = server.http_addr();
    let mut client = connect_served(server.addr);
    let before = median_round_trip(&mut client, 200);

    // The page: a viewer reading its stream all along.
    let page = Viewer::watch(http);
    let stop = Arc::new(AtomicBool::new(false));
    let dripping = drips(http, DRIPS, &stop);

    // Scrapes and round trips while the page has watched for three
    // seconds (thirty frames).
    let mut during = Vec::new();
    let mut scrapes = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while page.frames() < 30 || scrapes < 6 {
        assert!(Instant::now() < deadline, "{model}: the page stopped");
        let start = Instant::now();
        let (status, text) = curl(&[], &format!("http://{http}/metrics"));
        let took = start.elapsed();
        assert_eq!(status, 200, "{model}: scrape {scrapes}");
        assert!(text.contains("concur_clients 1\n"), "{model}: {text}");
        assert!(
            took < Duration::from_secs(1),
            "{model}: scrape {scrapes} took {took:?} beside {DRIPS} drips and a page"
        );
        scrapes += 1;
        during.push(median_round_trip(&mut client, 100));
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let opened: usize = dripping.into_iter().map(|d| d.join().unwrap()).sum();
    page.stop();
    assert!(opened >= DRIPS, "{model}: {opened} drips");
    during.sort_by(f64::total_cmp);
    let during = during[during.len() / 2];
    eprintln!(
        "{model}: round trip median {before:.3} ms before, {during:.3} ms with the page and {DRIPS} drips"
    );
    // Served all along; the figure itself is BENCHMARKS.md's, where the
    // machine is not also running the other tests.
    assert!(
        during < before * 10.0 + 2.0,
        "{model}: round trips went from {before:.3} ms to {during:.3} ms"
    );
}

#[test]
fn with_the_page_open_and_fifty_drips_metrics_is_answered_and_clients_served() {
    std::thread::scope(|scope| {
        for model in models() {
            scope.spawn(move || page_open_and_drips(model));
        }
    });
}

#[test]
fn demo_live_shows_every_model_on_one_page_and_the_pool_s_third_client_waits() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_concur"));
    command
        .args(["demo", "--live", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut demo = Running(command.spawn().expect("start concur demo --live"));
    let mut out = BufReader::new(demo.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("The article's experiment, live: open http://")
        .and_then(|a| a.strip_suffix('/'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let mut stream = Stream::open(addr).expect("a stream");
    let servers = stream.hello();
    let index: HashMap<String, u64> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (s["model"].as_str().unwrap().to_string(), i as u64))
        .collect();
    let expected: Vec<&str> = models().iter().map(|m| m.name()).collect();
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["model"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected, "the article's order");
    // The round starts now that a page watches; it ends with every
    // server's three clients served.
    let events = stream.events_until(|e| {
        (0..servers.len() as u64).all(|s| (1..=3).all(|c| of(e, s, c).contains(&"served".into())))
    });
    let pool = index["pool"];
    let third = seq(&events, pool, 3, "admitted");
    assert!(seq(&events, pool, 3, "accepted") < seq(&events, pool, 1, "served"));
    assert!(
        [1, 2]
            .iter()
            .any(|&c| seq(&events, pool, c, "served") < third),
        "the pool's third client was admitted before a worker was free"
    );
    let thread = index["thread"];
    let last_admitted = (1..=3).map(|c| seq(&events, thread, c, "admitted")).max();
    let first_served = (1..=3).map(|c| seq(&events, thread, c, "served")).min();
    assert!(last_admitted < first_served, "a thread each, all at once");
    let sequential = index["sequential"];
    for c in 2..=3 {
        assert!(
            seq(&events, sequential, c - 1, "served") < seq(&events, sequential, c, "admitted"),
            "sequential: one after another"
        );
    }
    // Six servers on one port: /metrics is one server's, and says so.
    let (status, body) = curl(&[], &format!("http://{addr}/metrics"));
    assert_eq!(status, 404);
    assert!(body.contains("serve --http has it"), "{body}");
    // The round's table.
    let mut table = String::new();
    while !table.contains("model pool, 2 threads") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "{table}");
        table.push_str(&line);
    }
}

#[test]
fn a_live_address_that_cannot_be_used_is_a_clear_failure() {
    let demo = |at: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["demo", "--live", at])
            .output()
            .unwrap()
    };
    let out = demo("8080");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no port in it"), "{err}");
    assert!(
        err.contains("give HOST:PORT, such as 127.0.0.1:9100"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let out = demo(&at);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--live {at}: cannot listen there")),
        "{err}"
    );
}
