//! `serve --metrics`: the Prometheus endpoint, scraped with a real HTTP
//! client (curl) after a known run, agrees with the summary the server
//! prints at shutdown, in every model; bad requests get a 4xx and leave
//! the endpoint serving.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;
use concur::server::Model;

/// `curl` on `url`: the HTTP status and the body.
fn curl(args: &[&str], url: &str) -> (u16, String) {
    let out = Command::new("curl")
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
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn a_scrape_after_a_known_run_matches_the_summary() {
    for model in common::models() {
        let server = Process::serve(&[
            "--model",
            model.name(),
            "--port",
            "0",
            "-q",
            "--metrics",
            "127.0.0.1:0",
        ]);
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
        let (status, text) = curl(&[], &url);
        assert_eq!(status, 200, "{model}: {text}");
        assert!(text.ends_with("# EOF\n"), "{model}: {text}");
        let scraped = samples(&text);
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

#[test]
fn bad_requests_get_a_4xx_and_the_endpoint_goes_on() {
    let server = Process::serve(&["--port", "0", "-q", "--metrics", "127.0.0.1:0"]);
    let url = server.metrics.clone().expect("a metrics address");
    let base = url.trim_end_matches("/metrics").to_string();
    assert_eq!(curl(&[], &format!("{base}/")).0, 404);
    assert_eq!(curl(&[], &format!("{base}/metrics/x")).0, 404);
    assert_eq!(curl(&["-X", "POST"], &url).0, 405);
    assert_eq!(curl(&["-I"], &url).0, 200, "HEAD");

    let host = base.trim_start_matches("http://").to_string();
    // Not HTTP at all, and a head far too long: a 400 and a 431, by hand.
    for (request, status) in [
        (b"hello\r\n\r\n".to_vec(), "400"),
        (
            [b"GET /metrics HTTP/1.1\r\nX: ".to_vec(), vec![b'a'; 20_000]].concat(),
            "431",
        ),
    ] {
        let mut s = TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = s.write_all(&request);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{status}: {answer:?}"
        );
    }
    // A scraper that connects and says nothing is given up on, and the
    // next one is answered.
    let _silent = TcpStream::connect(&host).unwrap();
    let (status, text) = curl(&[], &url);
    assert_eq!(status, 200);
    assert!(text.contains("concur_clients_accepted_total 0"), "{text}");
    server.stop();
}

#[test]
fn a_metrics_address_that_cannot_be_used_is_a_clear_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["serve", "--port", "0", "--metrics", &at])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics {at}: cannot listen there")),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["serve", "--port", "0", "--metrics", "no port"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a HOST:PORT"));
}
