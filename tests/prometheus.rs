//! A real Prometheus (Debian's `prometheus` package) scrapes a `concur
//! serve --http` of every model, and its query API counts exactly the
//! clients that were run; every query of the Grafana dashboard runs there
//! and finds its series, and the alerting rules load and evaluate;
//! `promtool check metrics` passes on a scrape of each model.
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
        .map(|model| (model, Process::serve_http(model)))
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

    /// What the API at `path` answers (its `data`), or `None` while
    /// Prometheus is not up yet. A query it refuses fails the test.
    fn api(&self, path: &str, args: &[&str]) -> Option<serde_json::Value> {
        let (status, body) = curl(args, &format!("{}/api/v1/{path}", self.api));
        match status {
            200 => {}
            400 | 422 => panic!("Prometheus refused {path} {args:?}: {body}"),
            _ => return None,
        }
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON from Prometheus");
        assert_eq!(answer["status"], "success", "{path}: {body}");
        Some(answer["data"].clone())
    }

    /// The series `query` gives now.
    fn series(&self, query: &str) -> Vec<serde_json::Value> {
        let args = ["-G", "--data-urlencode", &format!("query={query}")];
        let data = self.api("query", &args).unwrap_or_default();
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Each series `query` gives now, by its `model` label: its value.
    fn query(&self, query: &str) -> HashMap<String, f64> {
        self.series(query)
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
        self.wait_until(query, || {
            let got = self.query(query);
            match &got == expected {
                true => Ok(()),
                false => Err(format!("{got:?}, expected {expected:?}")),
            }
        });
    }

    /// Waits, bounded by [`PROMETHEUS_PATIENCE`], until `done` is `Ok`;
    /// fails the test with its last error, `what` it was about, and the
    /// log.
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> Result<(), String>) {
        let start = Instant::now();
        loop {
            let Err(why) = done() else {
                return;
            };
            assert!(
                start.elapsed() < PROMETHEUS_PATIENCE,
                "{what}: {why}; Prometheus's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A dashboard query as Prometheus can run it: Grafana's variables given
/// values (every instance; a rate over 5 s of 1 s scrapes), and a
/// variable's `label_values(SELECTOR, LABEL)` as the series it reads.
fn runnable(query: &str) -> String {
    let query = query
        .replace("$__rate_interval", "5s")
        .replace("$instance", ".*");
    match query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .and_then(|q| q.rsplit_once(','))
    {
        Some((selector, label)) => format!("count by ({}) ({selector})", label.trim()),
        None => query,
    }
}

#[test]
fn a_real_prometheus_counts_exactly_the_clients_run_against_every_model() {
    let test = "a_real_prometheus_counts_exactly_the_clients_run_against_every_model";
    let Some(exe) = installed("prometheus", test) else {
        return;
    };
    let servers = serve_every_model();
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let prometheus = Prometheus::start(&exe, &servers, &[&rules.to_string_lossy()]);

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

    // Every query of the dashboard runs and finds its series.
    for query in dashboard_queries() {
        let query = runnable(&query);
        prometheus.wait_until(&query, || match prometheus.series(&query).len() {
            0 => Err("no series".into()),
            _ => Ok(()),
        });
    }
    // The alerts load, and each has been evaluated without an error.
    prometheus.wait_until("the alerting rules", || {
        let data = prometheus.api("rules", &[]).ok_or("not up")?;
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let healthy = rules.iter().filter(|r| r["health"] == "ok").count();
        match (rules.len(), healthy) {
            (5, 5) => Ok(()),
            _ => Err(format!(
                "{healthy} of {} rules healthy: {data}",
                rules.len()
            )),
        }
    });
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
