//! What idle clients cost each model: resident memory per connected client
//! of the server process, its thread count, and how fast a newcomer is
//! served while they sit there.
//!
//! The server runs as a child process (the real `concur` binary), so its
//! memory is read alone from /proc. Run with
//! `cargo bench --bench idle` (env `IDLE_CLIENTS`, default 10000).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let clients: usize = std::env::var("IDLE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    concur::server::raise_fd_limit().expect("descriptor limit");
    println!("idle clients: {clients}");
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>14} {:>8} {:>12} {:>12}",
        "model",
        "clients",
        "rss before",
        "rss after",
        "per client",
        "threads",
        "new p50",
        "new max"
    );
    for (model, extra) in [
        ("event", &[][..]),
        ("async", &[]),
        ("thread", &[]),
        ("pool", &["-n", "64"]),
    ] {
        measure(model, extra, clients);
    }
}

fn measure(model: &str, extra: &[&str], clients: usize) {
    let (mut child, addr) = spawn_server(model, extra);
    let pid = child.id();
    // One client first, so that lazily allocated per-server state (thread
    // stacks of a pool, runtime buffers) is in the baseline.
    served_round_trip(addr);
    let before = rss_kib(pid);

    // The pool serves only its workers' worth; the rest wait unaccepted in
    // the backlog, which is capped by net.core.somaxconn.
    let connect_only = model == "pool";
    let mut idle = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                println!("{model}: connect {i} failed: {e}; measuring {i} clients");
                break;
            }
        };
        if !connect_only || i < 64 {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut star = [0u8; 1];
            s.read_exact(&mut star).expect("greeting");
            assert_eq!(&star, b"*");
        }
        idle.push(s);
    }
    // Let the server settle (threads finish starting) before reading.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let threads = status_field(pid, "Threads:");

    let mut samples: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            if connect_only {
                // A newcomer to a full pool waits for a worker: not served.
                return Duration::ZERO;
            }
            served_round_trip(addr);
            t.elapsed()
        })
        .collect();
    samples.sort();
    let per_client = (after.saturating_sub(before)) as f64 * 1024.0 / idle.len().max(1) as f64;
    let (p50, max) = if connect_only {
        ("(waits)".to_string(), "(waits)".to_string())
    } else {
        (
            format!("{:.3} ms", samples[samples.len() / 2].as_secs_f64() * 1e3),
            format!("{:.3} ms", samples[samples.len() - 1].as_secs_f64() * 1e3),
        )
    };
    println!(
        "{:<8} {:>10} {:>9} KiB {:>9} KiB {:>10.0} B {:>8} {:>12} {:>12}",
        model,
        idle.len(),
        before,
        after,
        per_client,
        threads,
        p50,
        max
    );
    drop(idle);
    stop(&mut child);
}

fn spawn_server(model: &str, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "serve",
            "--port",
            "0",
            "--backlog",
            "4096",
            "-q",
            "--model",
            model,
        ])
        // Room for the idle clients plus the newcomers timed beside them.
        .args(["--max-conns", "1000000"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start concur");
    let mut banner = Vec::new();
    let out = child.stdout.as_mut().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        banner.push(b[0]);
    }
    let banner = String::from_utf8(banner).unwrap();
    let addr = banner
        .strip_prefix("Serving on ")
        .and_then(|r| r.split_whitespace().next())
        .expect("banner")
        .parse()
        .unwrap();
    (child, addr)
}

fn served_round_trip(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0u8; 3];
    s.write_all(b"^ab$").unwrap();
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"*bc");
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}
