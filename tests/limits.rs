//! The connection cap, the idle timeout and the live figures, in every
//! model.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use concur::server::{Config, Model, OverLimit};

const CAP: usize = 2;

fn capped(model: Model, over_limit: OverLimit) -> Config {
    let mut config = Config::new(model);
    config.max_conns = CAP;
    config.over_limit = over_limit;
    config
}

#[test]
fn over_the_cap_newcomers_wait_for_a_client_to_leave() {
    for model in models() {
        let server = start_with(capped(model, OverLimit::Wait));
        let at_once = serves_at_once(model).min(CAP);
        check_admission(model, server.local_addr(), 4, at_once);
        let summary = server.stop();
        assert_eq!((summary.served, summary.rejected), (4, 0), "{model}");
        assert_eq!(summary.max_clients, at_once as u64, "{model}");
    }
}

#[test]
fn over_the_cap_with_reject_the_newcomer_is_closed_without_a_greeting() {
    // Sequential never holds two clients, so it never reaches a cap of two.
    for model in models().into_iter().filter(|&m| serves_at_once(m) >= CAP) {
        let server = start_with(capped(model, OverLimit::Reject));
        let addr = server.local_addr();
        let mut held: Vec<_> = (0..CAP).map(|_| connect_served(addr)).collect();
        let mut extra = connect(addr);
        assert_eq!(read_to_end(&mut extra), b"", "{model}: no `*`, just closed");
        for c in held.iter_mut() {
            round_trip(c);
        }
        // Room again once one leaves and the server has counted it out.
        drop(held.remove(0));
        wait_until(|| server.summary().clients_now < CAP as u64);
        let mut next = connect_served(addr);
        round_trip(&mut next);
        drop((held, next));
        let summary = server.stop();
        assert_eq!(summary.rejected, 1, "{model}: {summary:?}");
        assert_eq!(summary.max_clients, CAP as u64, "{model}");
    }
}

#[test]
fn idle_clients_are_closed_and_the_next_one_is_served() {
    // The article's risk: with `pool -n 2`, two idle clients hold both
    // workers and the third waits forever. The idle timeout frees them.
    for model in models() {
        let mut config = small_config(model);
        config.idle_timeout = Some(Duration::from_secs(1));
        let server = start_with(config);
        let addr = server.local_addr();
        let at_once = serves_at_once(model).min(SMALL_POOL);
        let mut idle: Vec<_> = (0..at_once).map(|_| connect_served(addr)).collect();

        let mut third = connect(addr);
        // Greeted once an idle one is closed (at once where the model is
        // not full).
        expect_ack(&mut third);
        // A client that keeps talking is not idle, however long it stays:
        // 25 round trips 50 ms apart outlast the 1 s timeout, and no single
        // pause comes near it (a stalled machine has 950 ms to spare).
        for _ in 0..25 {
            round_trip(&mut third);
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in idle.iter_mut() {
            assert_eq!(read_to_end(c), b"", "{model}: an idle client is closed");
        }
        drop(third);
        let summary = server.stop();
        assert!(summary.timed_out >= at_once as u64, "{model}: {summary:?}");
        assert_eq!(summary.failed, 0, "{model}");
    }
}

#[test]
fn many_idle_clients_do_not_starve_a_small_pool() {
    // Two thousand idle clients ahead of a newcomer, four workers: without
    // the idle timeout the newcomer would wait for all of them, one timeout
    // per four. Queued clients that have sent nothing for a whole timeout
    // are closed without holding a worker, so the newcomer is served after
    // about one timeout. (With `--queue 0` they would wait in the kernel's
    // backlog, where the server cannot see them.)
    let mut config = Config::new(Model::Pool).threads(4);
    config.pool_mut().unwrap().queue = 4096;
    config.idle_timeout = Some(Duration::from_secs(1));
    let server = start_with(config);
    let addr = server.local_addr();
    let idle: Vec<_> = (0..2000).map(|_| connect(addr)).collect();
    // The newcomer speaks first (the protocol lets it): a queued client
    // that has sent nothing for a whole timeout cannot be told from an
    // idle one.
    let mut newcomer = connect(addr);
    newcomer.write_all(b"^hi$").unwrap();
    assert_eq!(read_n(&mut newcomer, 3), b"*ij");
    round_trip(&mut newcomer);
    drop((idle, newcomer));
    let summary = server.stop();
    assert!(summary.timed_out >= 1996, "{summary:?}");
}

/// The real binary with `--stats-interval`: the live line names every
/// counter and counts the client that is connected.
#[test]
fn the_stats_line_reports_live_figures() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_concur"));
    command
        .args(["serve", "--port", "0", "--model", "thread"])
        .args(["--stats-interval", "0.1"])
        .stderr(Stdio::piped());
    // Killed when dropped, whatever fails below.
    let mut server = Process::start(command, false);
    let mut c = connect_served(server.addr);
    round_trip(&mut c);

    // Lines printed before the round trip was counted show earlier
    // figures; a later one must show these, all in one line.
    let want = [
        "clients now 1, accepted 1,",
        "rejected 0",
        "timed out 0",
        "bytes in 4",
        "bytes out 3",
    ];
    let stderr = server.child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    let found = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if want.iter().all(|field| line.contains(field)) => break true,
            Ok(line) => last = Some(line),
            Err(_) => break false,
        }
    };
    server.kill();
    assert!(found, "no stats line with {want:?}; the last: {last:?}");
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The real binary with 64 descriptors: 200 clients exhaust them. The
/// server must neither crash nor spin (it backs off between accepts), and
/// must serve again once the clients leave.
#[test]
fn descriptor_exhaustion_is_survived() {
    for model in models() {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" serve --port 0 -q --model \"$1\"")
            .arg(env!("CARGO_BIN_EXE_concur"))
            .arg(model.name())
            .stderr(Stdio::null());
        // Killed when dropped, whatever fails below.
        let mut server = Process::start(command, false);
        let (pid, addr) = (server.child.id(), server.addr);

        let clients: Vec<_> = (0..200).map(|_| connect(addr)).collect();
        // Enough time for a spinning accept loop to burn most of a core.
        let before = cpu_secs(pid);
        std::thread::sleep(Duration::from_secs(1));
        let burnt = cpu_secs(pid) - before;
        assert!(
            burnt < 0.5,
            "{model}: {burnt:.2} s of CPU in 1 s with descriptors exhausted"
        );
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{model}: server died"
        );

        drop(clients);
        let mut fresh = connect(addr);
        // Queued clients ahead of it may be accepted (and go away) first.
        fresh.write_all(b"^ok$").unwrap();
        assert_eq!(read_n(&mut fresh, 3), b"*pl", "{model}");
        drop(fresh);

        let (status, summary) = server.stop_with_status();
        assert!(status.success(), "{model}: {status:?}");
        let accept_errors: u64 = summary
            .split_once(" accept errors")
            .and_then(|(before, _)| before.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{model}: no summary in {summary:?}"));
        // Sequential accepts only between clients, so it never runs out;
        // every other model must have met EMFILE, or this tested nothing.
        if model != Model::Sequential {
            assert!(accept_errors > 0, "{model}: descriptors never ran out");
        }
    }
}
