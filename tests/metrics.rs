//! `GET /metrics`: scraped with a real HTTP client (curl) after a known
//! run, it agrees with the summary the server prints at shutdown, in every
//! model; the pool's gauges show. (`tests/http.rs` has the port's HTTP,
//! `tests/prometheus.rs` a real Prometheus.)

mod common;

use std::net::TcpStream;

use common::*;
use concur::server::Model;

/// What Prometheus asks for first.
const OPENMETRICS: &str = "Accept: application/openmetrics-text;version=1.0.0";

#[test]
fn the_format_follows_the_accept_header() {
    let server = Process::serve(&["--port", "0", "-q", "--http", "127.0.0.1:0"]);
    let url = server.metrics.clone().expect("an HTTP port");
    let content_type = |accept: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{content_type}\n"];
        args.extend(accept);
        curl(&args, &url).1
    };
    assert_eq!(
        content_type(&["-H", OPENMETRICS]),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    for classic in [
        &[][..],
        &["-H", "Accept: text/plain"],
        &["-H", "Accept: */*"],
    ] {
        assert_eq!(
            content_type(classic),
            "text/plain; version=0.0.4; charset=utf-8",
            "{classic:?}"
        );
    }
    let (_, text) = curl(&[], &url);
    assert!(
        text.contains("# TYPE concur_clients_accepted_total counter\n"),
        "{text}"
    );
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
}

#[test]
fn a_scrape_after_a_known_run_matches_the_summary() {
    for model in common::models() {
        let server = Process::serve_http(model);
        let url = server.metrics.clone().expect("a metrics address");
        // Five clients served to the end, one after another.
        for _ in 0..5 {
            assert_eq!(session(server.addr, &[b"^ab$", b"x^c$"]), b"bcd");
        }
        // The server counts a client once its socket is closed on its
        // side; wait for all five.
        wait_until(|| {
            let (_, text) = curl(&[], &url);
            samples(&text).get("concur_clients_served_total") == Some(&5.0)
        });
        // Both formats carry the same samples.
        let (status, text) = curl(&[], &url);
        assert_eq!(status, 200, "{model}: {text}");
        let (status, open) = curl(&["-H", OPENMETRICS], &url);
        assert_eq!(status, 200, "{model}: {open}");
        assert!(open.ends_with("# EOF\n"), "{model}: {open}");
        let scraped = samples(&text);
        assert_eq!(scraped, samples(&open), "{model}");
        let summary = summary_figures(&server.stop());
        for (metric, figure) in [
            ("concur_clients_accepted_total", "accepted"),
            ("concur_clients_served_total", "served"),
            ("concur_clients_failed_total", "failed"),
            ("concur_clients_timed_out_total", "timed out"),
            ("concur_clients_rejected_total", "rejected"),
            ("concur_received_bytes_total", "bytes in"),
            ("concur_sent_bytes_total", "bytes out"),
        ] {
            assert_eq!(
                scraped.get(metric).copied(),
                Some(summary[figure] as f64),
                "{model}: {metric} against the summary's {figure}: {text}"
            );
        }
        assert_eq!(summary["accepted"], 5, "{model}");
        // Two sends of 4 bytes read; 3 bytes answered, and the `*`.
        assert_eq!(summary["bytes in"], 5 * 8, "{model}");
        assert_eq!(summary["bytes out"], 5 * 4, "{model}");
        // Every served client timed, and all are gone.
        assert_eq!(
            scraped.get("concur_client_duration_seconds_count"),
            Some(&5.0)
        );
        assert_eq!(
            scraped.get("concur_admission_wait_seconds_count"),
            Some(&5.0)
        );
        assert_eq!(scraped.get("concur_clients"), Some(&0.0));
        let workers = scraped.get("concur_pool_workers").copied();
        assert_eq!(workers, Some(if model == Model::Pool { 64.0 } else { 0.0 }));
    }
}

#[test]
fn a_pool_s_waiting_clients_and_busy_workers_show() {
    let server = Process::serve(&[
        "--model",
        "pool",
        "-n",
        "1",
        "--queue",
        "2",
        "--port",
        "0",
        "-q",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let url = server.metrics.clone().expect("a metrics address");
    let _first = connect_served(server.addr);
    // Two more wait in the hand-off: accepted, not greeted.
    let _waiting: Vec<TcpStream> = (0..2).map(|_| connect(server.addr)).collect();
    wait_until(|| {
        let (_, text) = curl(&[], &url);
        let s = samples(&text);
        s.get("concur_pool_waiting_clients") == Some(&2.0)
            && s.get("concur_pool_workers_busy") == Some(&1.0)
    });
}
