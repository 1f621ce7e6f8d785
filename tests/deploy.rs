//! What `deploy/` ships for Prometheus and Grafana is checked: the alerts
//! and the example configuration by `promtool` (`check rules`, `check
//! config`, and the rules' unit tests with `test rules`), and every metric
//! name the dashboard, the rules and their tests use by a real scrape of
//! every model, which also must have a panel for each of its metrics.
//!
//! `promtool` comes with Debian's `prometheus` package (`.ci/run` installs
//! it); where it is missing the promtool test says so and does nothing
//! else. `tests/prometheus.rs` runs the dashboard's queries and loads the
//! rules in a real Prometheus.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const CONFIG: &str = "deploy/prometheus/prometheus.yml";

#[test]
fn promtool_passes_the_rules_their_unit_tests_and_the_example_configuration() {
    let test = "promtool_passes_the_rules_their_unit_tests_and_the_example_configuration";
    let Some(promtool) = installed("promtool", test) else {
        return;
    };
    for args in [
        ["check", "rules", RULES],
        ["test", "rules", RULE_TESTS],
        ["check", "config", CONFIG],
    ] {
        let out = Command::new(&promtool)
            .args(&args[..2])
            .arg(repo_file(args[2]))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The names of concur's metrics that `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bconcur_[a-z0-9_]+").unwrap();
    name.find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// The metric families of a scrape, as a query names them: a counter
/// with its `_total`, a histogram by its `_bucket`.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("# TYPE ")?.split(' ');
            let (name, kind) = (words.next()?, words.next()?);
            Some(match kind {
                "histogram" => format!("{name}_bucket"),
                _ => name.to_string(),
            })
        })
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_the_rules_use_is_in_a_real_scrape() {
    let queries = dashboard_queries().join("\n");
    let rules = std::fs::read_to_string(repo_file(RULES)).unwrap();
    let rule_tests = std::fs::read_to_string(repo_file(RULE_TESTS)).unwrap();
    let used = [
        ("the dashboard", metric_names(&queries)),
        ("the rules", metric_names(&rules)),
        ("the rules' tests", metric_names(&rule_tests)),
    ];
    for model in models() {
        let server = Process::serve_http(model);
        let (status, scrape) = curl(&[], server.metrics.as_deref().unwrap());
        assert_eq!(status, 200, "{model}");
        let exposed: BTreeSet<String> = samples(&scrape)
            .keys()
            .map(|sample| sample.split('{').next().unwrap().to_string())
            .collect();
        for (what, names) in &used {
            assert!(!names.is_empty(), "{what} names no metric");
            let unknown: Vec<&String> = names.difference(&exposed).collect();
            assert!(
                unknown.is_empty(),
                "{model}: {what} uses {unknown:?}, which a scrape does not have"
            );
        }
        // And the other way: a panel for everything the server exposes.
        let shown = &used[0].1;
        let missing: Vec<String> = families(&scrape).difference(shown).cloned().collect();
        assert!(missing.is_empty(), "{model}: no panel shows {missing:?}");
    }
}

#[test]
fn the_dashboard_repeats_a_row_per_instance_over_one_data_source() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<_> = panels.iter().filter(|p| p["type"] == "row").collect();
    assert_eq!(rows.len(), 1, "one row, repeated");
    assert_eq!(rows[0]["repeat"], "instance");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "instance" && v["includeAll"] == true && v["multi"] == true),
        "an instance variable, all of them by default"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut ids = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: its id again"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            // Each row shows its own instance.
            assert!(expr.contains("instance=~\"$instance\""), "{title}: {expr}");
        }
    }
}
