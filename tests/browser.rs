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
    // GET and DELETE carry no body: chromedriver refuses even `null`.
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    // Starting a browser on a busy machine takes a while; nothing here
    // takes a minute.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open whatever the request says:
    // read the head, then as much body as it announces.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let (head, body) = loop {
        let n = s.read(&mut buf).expect("chromedriver's answer");
        assert!(
            n > 0,
            "{method} {path}: chromedriver closed without an answer"
        );
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            if rest.ends_with("0\r\n\r\n") {
                break (head.to_string(), dechunk(rest));
            }
        } else {
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("a Content-Length");
            if rest.len() >= length {
                break (head.to_string(), rest[..length].to_string());
            }
        }
    };
    let value: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {head}\n{body}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{method} {path}: {head}\n{value}"
    );
    value["value"].clone()
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
    /// hangs on a machine with no way out).
    fn start(chromium: &str, chromedriver: &str) -> Browser {
        let driver_port = free_port();
        let driver = Running(
            Command::new(chromedriver)
                .arg(format!("--port={driver_port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = TcpStream::connect(("127.0.0.1", driver_port)).is_ok()
                && webdriver(driver_port, "GET", "/status", &Value::Null)["ready"] == true;
            if ready {
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
            "--window-size=1000,330",
            &format!("--user-data-dir={}", profile.0.display()),
        ];
        let session = webdriver(
            driver_port,
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}),
        );
        let session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            driver_port,
            session,
            _driver: driver,
            _profile: profile,
        }
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
        self.call(
            "POST",
            "execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    /// The console's messages so far (chromedriver's log of the browser).
    fn console(&self) -> Vec<Value> {
        let log = self.call("POST", "se/log", &json!({"type": "browser"}));
        log.as_array().cloned().unwrap_or_default()
    }

    fn screenshot(&self) -> Vec<u8> {
        let png = self.call("GET", "screenshot", &Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG in base64")
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

/// What the page draws for server 0, row by row: what the test reads of
/// the DOM and the SVG.
const ROWS: &str = r#"
const section = document.querySelector('section.server[data-server="0"]');
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
    let test = "the live page in Chromium";
    let (Some(chromium), Some(chromedriver)) =
        (installed("chromium", test), installed("chromedriver", test))
    else {
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
    let browser = Browser::start(&chromium, &chromedriver);
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
        let rows = browser.run(ROWS);
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

    let errors: Vec<_> = browser
        .console()
        .into_iter()
        .filter(|m| m["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot that is no PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-pool.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}
