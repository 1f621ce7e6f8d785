//! The live page in a real browser: headless Chromium, driven through
//! chromedriver's WebDriver HTTP API, watches `serve --model pool -n 2
//! --http` while three `concur client` connections run on the article's
//! schedule. The page loads without console errors, shows one row per
//! client with its end, and the third client's waiting segment before it
//! is served. Skipped, saying why, where chromium or chromedriver is not
//! installed (`.ci/run` installs Debian's `chromium` and `chromium-driver`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// A WebDriver session of a chromedriver on 127.0.0.1.
struct Browser {
    driver_port: u16,
    session: String,
    _driver: Running,
    _profile: TempDir,
}

/// One WebDriver command: `method path` with a JSON body; the `value` of
/// the answer, or the test fails with what the driver said.
fn webdriver(port: u16, method: &str, path: &str, body: &Value) -> Value {
    let (head, body) = exchange(port, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: chromedriver's answer: {e}"));
    let value: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {head}\n{body}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{value}"
    );
    value["value"].clone()
}

/// Whether chromedriver on `port` answers that it is ready. While it
/// starts, a connection may be refused or reset: that is "not yet".
fn driver_ready(port: u16) -> bool {
    exchange(port, "GET", "/status", &Value::Null)
        .ok()
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .is_some_and(|v| v["value"]["ready"] == true)
}

/// Sends one request and reads the answer's head and body.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: &Value,
) -> std::io::Result<(String, String)> {
    // GET and DELETE carry no body: chromedriver refuses even `null`.
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // Starting a browser on a busy machine takes a while; nothing here
    // takes a minute.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open whatever the request says:
    // read the head, then as much body as it announces.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            if rest.ends_with("0\r\n\r\n") {
                return Ok((head.to_string(), dechunk(rest)));
            }
        } else {
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::other("an answer without Content-Length"))?;
            if rest.len() >= length {
                return Ok((head.to_string(), rest[..length].to_string()));
            }
        }
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

impl Browser {
    /// chromedriver on a free port, and a headless Chromium with a profile
    /// of its own (without one, or with its background networking, it
    /// hangs on a machine with no way out) and a window of `window` pixels;
    /// `None`, after saying so, where either is not installed.
    fn start(test: &str, window: (u32, u32)) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) =
            (installed("chromium", test), installed("chromedriver", test))
        else {
            return None;
        };
        let driver_port = free_port();
        let driver = Running(
            Command::new(&chromedriver)
                .arg(format!("--port={driver_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            if driver_ready(driver_port) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = TempDir::new("chromium");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--window-size={},{}", window.0, window.1),
            &format!("--user-data-dir={}", profile.0.display()),
        ];
        let session = webdriver(
            driver_port,
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": &chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}),
        );
        let session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Some(Browser {
            driver_port,
            session,
            _driver: driver,
            _profile: profile,
        })
    }

    fn call(&self, method: &str, what: &str, body: &Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        webdriver(self.driver_port, method, &path, body)
    }

    fn open(&self, url: &str) {
        self.call("POST", "url", &json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page and returns what it
    /// returns.
    fn run(&self, script: &str) -> Value {
        self.run_with(script, &[])
    }

    /// [`run`](Browser::run), with `args` as `arguments`.
    fn run_with(&self, script: &str, args: &[Value]) -> Value {
        self.call(
            "POST",
            "execute/sync",
            &json!({"script": script, "args": args}),
        )
    }

    /// The console's messages so far (chromedriver's log of the browser).
    fn console(&self) -> Vec<Value> {
        let log = self.call("POST", "se/log", &json!({"type": "browser"}));
        log.as_array().cloned().unwrap_or_default()
    }

    fn no_console_errors(&self) {
        let errors: Vec<_> = self
            .console()
            .into_iter()
            .filter(|m| m["level"] == "SEVERE")
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }

    /// A screenshot, kept as `name` in Cargo's directory for tests' files.
    fn keep_screenshot(&self, name: &str) {
        let png = self.call("GET", "screenshot", &Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG in base64");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot that is no PNG");
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver is killed after.
        let path = format!("/session/{}", self.session);
        let _ =
            std::panic::catch_unwind(|| webdriver(self.driver_port, "DELETE", &path, &Value::Null));
    }
}

/// What the page draws for server `arguments[0]`, row by row: what the
/// test reads of the DOM and the SVG.
const ROWS: &str = r#"
const section = document.querySelector(`section.server[data-server="${arguments[0]}"]`);
if (!section) return null;
const num = (v) => v === undefined ? null : Number(v);
return [...section.querySelectorAll('g.client')].map((g) => {
  const wait = g.querySelector('line.wait');
  const bar = g.querySelector('rect.bar');
  return {
    client: Number(g.dataset.client), state: g.dataset.state, end: g.dataset.end || null,
    accepted: num(g.dataset.acceptedUs), admitted: num(g.dataset.admittedUs),
    ended: num(g.dataset.endedUs),
    wait: wait ? [Number(wait.getAttribute('x1')), Number(wait.getAttribute('x2'))] : null,
    bar: bar ? [Number(bar.getAttribute('x')), Number(bar.getAttribute('width')),
                bar.getAttribute('class')] : null,
  };
});
"#;

fn row(rows: &Value, client: u64) -> &Value {
    rows.as_array()
        .and_then(|rows| rows.iter().find(|r| r["client"] == client))
        .unwrap_or_else(|| panic!("no row for client {client}: {rows}"))
}

#[test]
fn the_live_page_shows_a_pool_of_two_making_the_third_client_wait() {
    let Some(browser) = Browser::start("the live page in Chromium", (1000, 430)) else {
        return;
    };
    let server = Process::serve(&[
        "--model",
        "pool",
        "-n",
        "2",
        "--port",
        "0",
        "-q",
        "--http",
        "127.0.0.1:0",
    ]);
    let base = server
        .metrics
        .as_deref()
        .expect("an HTTP port")
        .trim_end_matches("/metrics")
        .to_string();
    // Eight seconds of axis: the article's run fills the width.
    browser.open(&format!("{base}/?window=8"));
    // The stream's hello has named the server.
    let deadline = Instant::now() + PATIENCE;
    while browser.run("return document.querySelectorAll('section.server').length") != 1 {
        assert!(
            Instant::now() < deadline,
            "the page never showed the server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let title = browser.run("return document.querySelector('section.server h2').textContent");
    assert_eq!(title, "model pool, 2 threads");

    // The article's client: three connections at once, its schedule.
    let mut clients = Running(
        Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["client", "-n", "3", "-q", "127.0.0.1"])
            .arg(server.addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start concur client"),
    );

    // Watch the page while they run: the third is drawn waiting (a black
    // line, no bar) while the first two are being served, then served.
    let mut seen_waiting = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = browser.run_with(ROWS, &[json!(0)]);
        if let Some(all) = rows.as_array() {
            let third = all.iter().find(|r| r["client"] == 3);
            if let Some(third) = third.filter(|r| r["state"] == "waiting") {
                let others_served = all
                    .iter()
                    .filter(|r| r["client"] != 3 && r["state"] == "serving")
                    .count();
                if seen_waiting.is_none() && others_served == 2 {
                    seen_waiting = Some(third.clone());
                }
            }
            if all.len() == 3 && all.iter().all(|r| r["state"] == "ended") {
                break rows;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the rows never all ended: {rows}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = clients.0.wait().expect("concur client");
    assert!(status.success(), "the clients got wrong replies: {status}");

    let waiting = seen_waiting.expect("the third client was never drawn waiting");
    assert!(waiting["bar"].is_null(), "waiting, with a bar: {waiting}");
    let line = &waiting["wait"];
    assert!(
        line[1].as_f64().unwrap() > line[0].as_f64().unwrap(),
        "its waiting line has no length: {waiting}"
    );

    // One row per client, each served; the third waited for a worker as
    // long as the first two were served (the article's 2.2 s) and its bar
    // starts where its waiting line ends.
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    let micros = |r: &Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}: {r}"));
    for client in 1..=3 {
        let r = row(&rows, client);
        assert_eq!(r["end"], "served", "{r}");
        assert!(
            r["bar"][2].as_str().unwrap().contains("served"),
            "its bar is not coloured as served: {r}"
        );
    }
    let third = row(&rows, 3);
    let waited = micros(third, "admitted") - micros(third, "accepted");
    assert!(
        waited >= 2.0e6,
        "the third waited only {waited} µs: {third}"
    );
    let first_ends = [1, 2].map(|c| micros(row(&rows, c), "ended"));
    assert!(
        first_ends.iter().any(|&e| e <= micros(third, "admitted")),
        "the third was admitted before either of the first two left: {rows}"
    );
    for client in [1, 2] {
        let r = row(&rows, client);
        let waited = micros(r, "admitted") - micros(r, "accepted");
        assert!(waited < 0.5e6, "client {client} waited {waited} µs: {r}");
    }
    let (wait, bar) = (&third["wait"], &third["bar"]);
    let wait_px = wait[1].as_f64().unwrap() - wait[0].as_f64().unwrap();
    let bar_px = bar[1].as_f64().unwrap();
    assert!(
        (wait[1].as_f64().unwrap() - bar[0].as_f64().unwrap()).abs() < 0.5,
        "its bar does not start where its waiting ends: {third}"
    );
    // The drawing is to scale: waiting and served, as long as they were.
    let served = micros(third, "ended") - micros(third, "admitted");
    let (drawn, was) = (wait_px / bar_px, waited / served);
    assert!(
        (drawn / was - 1.0).abs() < 0.05,
        "drawn {wait_px:.1} px waiting to {bar_px:.1} px served, but it waited {waited} µs \
         and was served {served} µs"
    );
    let served_counter =
        browser.run("return document.querySelector('[data-counter=\"served\"] b').textContent");
    assert_eq!(served_counter, "3");

    browser.no_console_errors();
    browser.keep_screenshot("live-pool.png");
}

#[test]
fn demo_live_shows_the_six_models_side_by_side_as_they_serve() {
    let Some(browser) = Browser::start("demo --live in Chromium", (1000, 1400)) else {
        return;
    };
    let mut demo = Running(
        Command::new(env!("CARGO_BIN_EXE_concur"))
            .args(["demo", "--live", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start concur demo --live"),
    );
    // Kept open: the demo prints each round's table.
    let mut out = std::io::BufReader::new(demo.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("The article's experiment, live: open ")
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // The page opening starts the round; twelve seconds of axis hold it.
    browser.open(&format!("{url}?window=12"));

    let names: Vec<&str> = models().iter().map(|m| m.name()).collect();
    // A round's rows: clients 1 to 3 of every server, once each ended
    // (the next round's, 4 to 6, are left out).
    let round = |server: usize| -> Vec<Value> {
        let rows = browser.run_with(ROWS, &[json!(server)]);
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["client"].as_u64().is_some_and(|c| c <= 3))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let rows: Vec<Vec<Value>> = loop {
        let rows: Vec<_> = (0..names.len()).map(round).collect();
        if rows
            .iter()
            .all(|r| r.len() == 3 && r.iter().all(|r| r["state"] == "ended"))
        {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "the round never ended on the page: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = browser
        .run("return [...document.querySelectorAll('section.server')].map((s) => s.dataset.model)");
    assert_eq!(
        shown,
        json!(names),
        "one chart per model, in the article's order"
    );

    let micros = |r: &Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}: {r}"));
    let waited = |r: &Value| micros(r, "admitted") - micros(r, "accepted");
    for (model, rows) in names.iter().zip(&rows) {
        assert!(
            rows.iter().all(|r| r["end"] == "served"),
            "{model}: {rows:?}"
        );
        let mut waits: Vec<f64> = rows.iter().map(waited).collect();
        waits.sort_by(f64::total_cmp);
        match *model {
            // Each waits for the one before (the sequential server takes
            // the next only when it is free, so it waited in the backlog,
            // unseen, and its row starts at its accept: the bars follow
            // one another instead).
            "sequential" => {
                let mut rows = rows.clone();
                rows.sort_by(|a, b| micros(a, "admitted").total_cmp(&micros(b, "admitted")));
                for pair in rows.windows(2) {
                    assert!(
                        micros(&pair[1], "admitted") >= micros(&pair[0], "ended"),
                        "sequential: {rows:?}"
                    );
                }
            }
            "pool" => {
                assert!(waits[1] < 0.5e6 && waits[2] >= 2.0e6, "pool: {rows:?}");
            }
            _ => assert!(waits[2] < 0.5e6, "{model}: all at once: {rows:?}"),
        }
    }
    browser.no_console_errors();
    browser.keep_screenshot("live-demo.png");
}
