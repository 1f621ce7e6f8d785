//! Helpers shared by the integration tests: servers on free ports and
//! clients whose every wait is bounded, so a broken server fails a test
//! instead of hanging it.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use concur::server::{self, Config, Model, Server, listener};

/// How long any single wait for the server may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Starts `config` on 127.0.0.1, port 0.
pub fn start_with(config: Config) -> Server {
    // Some tests hold thousands of clients, and both ends of each are in
    // this process: do not depend on the machine's soft limit (often 1024).
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        server::raise_fd_limit().expect("raise the descriptor limit");
    });
    let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 1024).expect("bind");
    let config = config.check().expect("a valid configuration");
    server::start(listener, config).expect("start server")
}

/// Every model this machine can run, for a test to loop over:
/// [`Model::ALL`], less `uring` where the kernel refuses io_uring (it is
/// disabled, filtered by seccomp, or missing). That is found out once; each
/// test that leaves the model out says so on its standard error, with the
/// reason, rather than passing as if it had run it.
pub fn models() -> Vec<Model> {
    static UNAVAILABLE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let why = UNAVAILABLE.get_or_init(|| Model::Uring.available().err().map(|e| e.to_string()));
    Model::ALL
        .into_iter()
        .filter(|&model| match why {
            Some(why) if model == Model::Uring => {
                eprintln!("skipped: model uring: {why}");
                false
            }
            _ => true,
        })
        .collect()
}

/// Starts `model` with its defaults.
pub fn start(model: Model) -> Server {
    start_with(Config::new(model))
}

/// A connected client with bounded reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    // Bounded too: a connect the backlog cannot hold would otherwise sit
    // in SYN retries for minutes.
    let s = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads exactly `n` bytes or fails the test.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Waits for the server's `*`.
pub fn expect_ack(s: &mut TcpStream) {
    assert_eq!(read_n(s, 1), b"*", "the first byte must be the greeting");
}

/// A client that has been greeted.
pub fn connect_served(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    expect_ack(&mut s);
    s
}

/// Reads until the server closes.
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to end");
    out
}

/// Sends each element with its own write, closes the sending side, and
/// returns everything received after the `*`.
pub fn session(addr: SocketAddr, sends: &[&[u8]]) -> Vec<u8> {
    let mut s = connect_served(addr);
    for chunk in sends {
        s.write_all(chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_end(&mut s)
}

/// True if nothing arrives on `s` within `window`. Used only for "this
/// must not have happened yet" checks, where a correct server passes
/// whatever the timing: the window bounds how long the test looks, it is
/// never what makes a correct server pass.
pub fn silent_for(s: &mut TcpStream, window: Duration) -> bool {
    s.set_read_timeout(Some(window)).unwrap();
    let mut b = [0u8; 1];
    let silent = match s.read(&mut b) {
        Ok(_) => false,
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    };
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    silent
}

/// Proves the client is being served: one message, one answer.
pub fn round_trip(s: &mut TcpStream) {
    s.write_all(b"^hi$").unwrap();
    assert_eq!(read_n(s, 2), b"ij");
}

/// The byte-at-a-time reference for PROTOCOL.md, kept apart from the
/// crate's core so the two can be compared.
pub fn reference(input: &[u8]) -> Vec<u8> {
    let mut in_message = false;
    let mut out = Vec::new();
    for &b in input {
        match (in_message, b) {
            (false, b'^') => in_message = true,
            (false, _) => {}
            (true, b'$') => in_message = false,
            (true, _) => out.push(b.wrapping_add(1)),
        }
    }
    out
}

/// PROTOCOL.md's vectors: the sends, one write each, and the answer.
pub const VECTORS: &[(&[&[u8]], &[u8])] = &[
    (
        &[b"^abc$de^abte$f", b"xyz^123", b"25$^ab0000$abab"],
        b"bcdbcuf23436bc1111",
    ),
    (
        &[b"abcdef", b"^", b"f", b"1234", b"$", b"1234", b"^", b"xy"],
        b"g2345yz",
    ),
    (&[b"^ab$^kl$^80$50"], b"bclm91"),
    (&[b"^^a$"], b"_b"),
    (&[b"$$a^", b"\xff\x00$"], b"\x00\x01"),
    (&[b"^$^$$$foobar^$$"], b""),
];

/// Pool size used where a test needs the pool to be smaller than the
/// number of clients, as in the article's `-n 2` run.
pub const SMALL_POOL: usize = 2;

/// The config under which `model` shows its admission policy: the pool
/// with [`SMALL_POOL`] workers, the others as they come.
pub fn small_config(model: Model) -> Config {
    Config::new(model).threads(SMALL_POOL)
}

/// How many clients `small_config(model)` serves at once. A match with no
/// catch-all, so a new model must say how it admits clients.
pub fn serves_at_once(model: Model) -> usize {
    match model {
        Model::Sequential => 1,
        Model::Thread => usize::MAX,
        Model::Pool => SMALL_POOL,
        Model::Event | Model::Async | Model::Uring => usize::MAX,
    }
}

/// Long enough for a wrongly sent `*` to arrive over loopback; a correct
/// server sends none, so it passes whatever this is.
pub const WINDOW: Duration = Duration::from_millis(300);

/// Connects `count` clients in turn and checks that exactly the first
/// `at_once` are greeted; then, each time the longest-served one leaves,
/// that exactly the next waiting one is greeted, and that the others being
/// served never notice. Leaves every client closed.
pub fn check_admission(model: Model, addr: SocketAddr, count: usize, at_once: usize) {
    let at_once = at_once.min(count);
    let mut clients: Vec<_> = (0..count).map(|_| connect(addr)).collect();
    for c in clients.iter_mut().take(at_once) {
        expect_ack(c);
        round_trip(c);
    }
    for (i, c) in clients.iter_mut().enumerate().skip(at_once) {
        assert!(
            silent_for(c, WINDOW),
            "{model}: client {i} was greeted while {at_once} were being served"
        );
    }

    // The first leaves: exactly the next waiting client is admitted.
    let mut waiting: Vec<_> = clients.drain(at_once..).collect();
    let mut served: Vec<_> = clients;
    while !waiting.is_empty() {
        drop(served.remove(0));
        let mut next = waiting.remove(0);
        expect_ack(&mut next);
        round_trip(&mut next);
        for (i, c) in waiting.iter_mut().enumerate() {
            assert!(
                silent_for(c, WINDOW),
                "{model}: waiting client {i} was greeted out of turn"
            );
        }
        // Those still being served are unaffected by the change.
        for c in served.iter_mut() {
            round_trip(c);
        }
        served.push(next);
    }
    drop(served);
}

/// Waits, bounded by [`PATIENCE`], until `done` holds; fails the test if it
/// never does. For conditions the server reaches by itself (a client
/// counted out), not for timing.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition never reached"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The real binary as a child process: `concur serve ARGS`, its banner
/// read; dropping it kills it.
pub struct Process {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Where `--http` (or `--metrics`) serves `/metrics`, when it was
    /// given.
    pub metrics: Option<String>,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Process {
    /// Starts `concur serve ARGS` (give `--port 0`, or a port) and reads
    /// its banner: "Serving on ADDR", and "Metrics on URL" when `--http`
    /// or `--metrics` is among `args`.
    pub fn serve(args: &[&str]) -> Process {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_concur"));
        command
            .arg("serve")
            .args(args)
            .stderr(std::process::Stdio::null());
        let http = args.iter().any(|a| ["--http", "--metrics"].contains(a));
        Process::start(command, http)
    }

    /// `concur serve --model MODEL` on a free port, quiet, with its HTTP
    /// port on another.
    pub fn serve_http(model: Model) -> Process {
        Process::serve(&[
            "--model",
            model.name(),
            "--port",
            "0",
            "-q",
            "--http",
            "127.0.0.1:0",
        ])
    }

    /// Starts `command`, which runs `concur serve` (through a shell, say),
    /// with its standard output piped and read up to its banner; its
    /// standard error is as `command` sets it.
    pub fn start(mut command: std::process::Command, metrics: bool) -> Process {
        use std::io::BufRead;
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start concur serve");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the banner");
        let addr = line
            .strip_prefix("Serving on ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no banner: {line:?}"));
        let metrics = metrics.then(|| {
            let mut line = String::new();
            out.read_line(&mut line).expect("the metrics banner");
            line.strip_prefix("Metrics on ")
                .unwrap_or_else(|| panic!("no metrics banner: {line:?}"))
                .trim()
                .to_string()
        });
        Process {
            child,
            addr,
            metrics,
            out,
        }
    }

    /// The address of its HTTP port (`--http` or `--metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        let url = self.metrics.as_deref().expect("an HTTP port");
        url.trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .parse()
            .expect("the banner's address")
    }

    /// SIGTERM, the drain, and the summary line it prints.
    pub fn stop(self) -> String {
        self.stop_with_status().1
    }

    /// SIGTERM, the drain: how it exited, and what it printed after the
    /// banner.
    pub fn stop_with_status(mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let status = self.child.wait().expect("wait for concur");
        (status, rest)
    }

    /// Ends it at once, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The figures of a summary line, by name: "accepted", "served",
/// "failed", "timed out", "rejected", "closed at shutdown", "bytes in",
/// "bytes out".
pub fn summary_figures(summary: &str) -> std::collections::HashMap<String, u64> {
    let line = summary
        .lines()
        .find(|l| l.starts_with("accepted "))
        .unwrap_or_else(|| panic!("no summary in {summary:?}"));
    let mut figures = std::collections::HashMap::new();
    let accepted = line["accepted ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("accepted N");
    figures.insert("accepted".to_string(), accepted);
    for part in line.split([':', ';', ',']) {
        let part = part.trim();
        let Some((n, name)) = part.split_once(' ') else {
            continue;
        };
        if let Ok(n) = n.parse::<u64>() {
            figures.insert(name.to_string(), n);
        }
    }
    figures
}

/// `curl ARGS URL`, bounded in time: the HTTP status and the body.
pub fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The samples of a scrape, by name (labels included in the name).
pub fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The full path of `program` if it is installed, or `None` after saying
/// on standard error that `test` is skipped without it.
pub fn installed(program: &str, test: &str) -> Option<String> {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    if found.status.success() && !path.is_empty() {
        Some(path)
    } else {
        eprintln!("skipped: {test}: {program} is not installed (.ci/run installs it)");
        None
    }
}

/// A port nobody listens on now, for a program that cannot be asked which
/// port it took (it may be taken again before that program binds it, but
/// only by another test's port 0, which the kernel hands out at random).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A child process that is killed when dropped, so a failed assertion
/// leaves nothing running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory of its own under the system's temporary directory, removed
/// with what is in it when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("concur-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file of the repository, by its path from the top.
pub fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The Grafana dashboard, `deploy/grafana/concur.json`, parsed.
pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/concur.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL query of the dashboard: its panels' targets' `expr`s, and
/// its variables' queries.
pub fn dashboard_queries() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("expr" | "definition", Some(query)) => out.push(query.to_string()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard(), &mut queries);
    queries
}
