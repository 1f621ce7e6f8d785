//! A real Prometheus (Debian's `prometheus` package) scrapes a `concur
//! serve --http` of every model, and its query API counts exactly the
//! clients that were run; `promtool check metrics` passes on a scrape of
//! each.
//!
//! They need `prometheus` and `promtool` (`.ci/run` installs them); where
//! they are missing each test says so on standard error and does nothing
//! else.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use concur::server::Model;

/// How long Prometheus may take to start and scrape every target.
const PROMETHEUS_PATIENCE: Duration = Duration::from_secs(60);

/// `concur serve --model M --http 127.0.0.1:0` for every model.
fn serve_every_model() -> Vec<(Model, Process)> {
    models()
        .into_iter()
        .map(|model| {
            let args = ["--model", model.name(), "--port", "0", "-q"];
            let server = Process::serve(&[&args[..], &["--http", "127.0.0.1:0"]].concat());
            (model, server)
        })
        .collect()
}

/// Where a server's `/metrics` is, as Prometheus names a target.
fn target(server: &Process) -> String {
    let url = server.metrics.as_deref().expect("an HTTP port");
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string()
}

/// A Prometheus on loopback scraping `servers` every second, each
/// labelled with its model, with `rules` loaded; its API's base URL.
struct Prometheus {
    api: String,
    dir: TempDir,
    _running: Running,
}

impl Prometheus {
    fn start(exe: &str, servers: &[(Model, Process)], rules: &[&str]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str("rule_files:\n");
        for rule in rules {
            config.push_str(&format!("  - {rule}\n"));
        }
        config.push_str("scrape_configs:\n  - job_name: concur\n    static_configs:\n");
        for (model, server) in servers {
            config.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{model: {model}}}\n",
                target(server)
            ));
        }
        let file = dir.0.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let running = Running(
            Command::new(exe)
                .arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start prometheus"),
        );
        Prometheus {
            api: format!("http://127.0.0.1:{port}"),
            dir,
            _running: running,
        }
    }

    /// Its log so far, for a failure's message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// Each series `query` gives now, by its `model` label: its value.
    /// Empty while Prometheus is not up yet.
    fn query(&self, query: &str) -> HashMap<String, f64> {
        let (status, body) = curl(
            &["-G", "--data-urlencode", &format!("query={query}")],
            &format!("{}/api/v1/query", self.api),
        );
        if status != 200 {
            return HashMap::new();
        }
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON from Prometheus");
        assert_eq!(answer["status"], "success", "{query}: {body}");
        let series = answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        series
            .iter()
            .map(|s| {
                let model = s["metric"]["model"].as_str().unwrap_or("").to_string();
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
                (model, value.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// Waits, bounded by [`PROMETHEUS_PATIENCE`], until `query` gives
    /// `expected` for every model; fails the test with what it gave last.
    fn wait_for(&self, query: &str, expected: &HashMap<String, f64>) {
        let start = Instant::now();
        loop {
            let got = self.query(query);
            if &got == expected {
                return;
            }
            assert!(
                start.elapsed() < PROMETHEUS_PATIENCE,
                "{query}: Prometheus says {got:?}, expected {expected:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_real_prometheus_counts_exactly_the_clients_run_against_every_model() {
    let test = "a_real_prometheus_counts_exactly_the_clients_run_against_every_model";
    let Some(exe) = installed("prometheus", test) else {
        return;
    };
    let servers = serve_every_model();
    let prometheus = Prometheus::start(&exe, &servers, &[]);

    // A different number of clients for each model, so that no target's
    // figures can pass for another's.
    let mut expected = HashMap::new();
    for (i, (model, server)) in servers.iter().enumerate() {
        let clients = 2 + i;
        for _ in 0..clients {
            assert_eq!(session(server.addr, &[b"^ab$"]), b"bc", "{model}");
        }
        expected.insert(model.to_string(), clients as f64);
        // Counted by the server itself before Prometheus is asked.
        let url = server.metrics.clone().unwrap();
        wait_until(|| {
            let scraped = samples(&curl(&[], &url).1);
            scraped.get("concur_clients_served_total") == Some(&(clients as f64))
        });
    }
    let up: HashMap<String, f64> = expected.keys().map(|m| (m.clone(), 1.0)).collect();
    prometheus.wait_for("up{job=\"concur\"}", &up);
    prometheus.wait_for("concur_clients_accepted_total", &expected);
    prometheus.wait_for("concur_clients_served_total", &expected);
}

#[test]
fn promtool_check_metrics_passes_on_a_scrape_of_every_model() {
    let test = "promtool_check_metrics_passes_on_a_scrape_of_every_model";
    let Some(promtool) = installed("promtool", test) else {
        return;
    };
    for (model, server) in serve_every_model() {
        // Histograms with something in them, and the gauges of a client
        // being served.
        assert_eq!(session(server.addr, &[b"^ab$"]), b"bc");
        let _client = connect_served(server.addr);
        let (status, text) = curl(&[], server.metrics.as_deref().unwrap());
        assert_eq!(status, 200, "{model}");
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start promtool");
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{model}: promtool check metrics: {said}\n{text}"
        );
    }
}
