//! Under an address-space limit (`ulimit -v`) no model aborts: a client
//! that cannot be afforded is refused and counted, those being served go
//! on, and once they leave a newcomer is served. The real binary, with the
//! limit set a little above its own idle footprint, measured first.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;

use common::*;
use concur::server::Model;

/// Clients that arrive, one at a time: more than fit as threads of 64 KiB
/// stacks.
const CLIENTS: usize = 1000;

/// Room above the idle footprint: the server's own reserve (8 MiB), and
/// more than the 64 MiB malloc arena glibc gives a new thread when it
/// fits. That is the room in which the thread models aborted: the arena
/// of one new thread took what the stacks of the next had left for their
/// buffers. Still far less than 1000 clients of the thread models need.
const MARGIN_KIB: u64 = (8 + 88) << 10;

/// Each model with the flags it runs with: the pool may grow to a thread
/// per client, and `thread` runs twice, the second time with the small
/// stacks the README suggests for fitting more threads under a limit
/// (which aborted sooner than the default ones did).
fn runs() -> Vec<(Model, &'static [&'static str])> {
    let mut runs: Vec<(Model, &[&str])> = models()
        .into_iter()
        .map(|model| match model {
            Model::Pool => (model, &["-n", "2", "--max-threads", "1000"][..]),
            _ => (model, &[][..]),
        })
        .collect();
    runs.push((Model::Thread, &["--stack-kib", "64"]));
    runs
}

struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    /// A failed assertion must not leave the server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(model: Model, extra: &[&str], limit_kib: Option<u64>) -> Server {
    let exe = env!("CARGO_BIN_EXE_concur");
    let mut command = match limit_kib {
        Some(kib) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("ulimit -v \"$1\" && shift && exec \"$@\"")
                .arg("sh")
                .arg(kib.to_string())
                .arg(exe);
            sh
        }
        None => Command::new(exe),
    };
    let mut child = command
        .args(["serve", "--port", "0", "-q", "--model", model.name()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run concur");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    let addr = banner
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{model} {extra:?}: banner {banner:?}"));
    Server {
        child,
        addr,
        stdout,
    }
}

fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The server's virtual size once it has served a client, under a limit
/// far above it: a server sets itself up differently under a limit (it
/// caps malloc's arenas), and this is the footprint that one starts from.
fn idle_footprint_kib(model: Model, extra: &[&str]) -> u64 {
    let server = spawn(model, extra, Some(64 << 20));
    let mut c = connect_served(server.addr);
    round_trip(&mut c);
    let kib = vm_size_kib(server.child.id());
    drop(c);
    kib
}

/// Greeted and answered correctly (kept), or closed without a greeting
/// (refused).
fn arrive(addr: SocketAddr, model: Model) -> Option<TcpStream> {
    let mut c = connect(addr);
    let mut star = [0u8; 1];
    match c.read(&mut star) {
        Ok(1) => {
            assert_eq!(&star, b"*", "{model}");
            round_trip(&mut c);
            Some(c)
        }
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("{model}: neither greeted nor closed: {e}"),
    }
}

/// The counts of a summary line: accepted, served, failed, timed out,
/// rejected, closed at shutdown.
fn counts(summary: &str) -> [u64; 6] {
    let numbers: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .take(6)
        .map(|w| w.parse().unwrap())
        .collect();
    numbers.try_into().unwrap()
}

fn under_a_memory_limit(model: Model, extra: &[&str]) {
    let limit = idle_footprint_kib(model, extra) + MARGIN_KIB;
    let mut server = spawn(model, extra, Some(limit));
    let addr = server.addr;

    // A sequential server serves one client at a time: each leaves before
    // the next arrives. The others keep theirs.
    let mut kept = Vec::new();
    let mut refused = 0;
    for i in 0..CLIENTS {
        match arrive(addr, model) {
            Some(c) if model == Model::Sequential => drop(c),
            Some(c) => kept.push(c),
            None => {
                assert!(i > 0, "{model} {extra:?}: the first client was refused");
                refused += 1;
            }
        }
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{model} {extra:?}: the server died at client {i}"
        );
    }
    if [Model::Thread, Model::Pool].contains(&model) {
        // A thread per client cannot fit 500 stacks in the margin: the
        // limit was met, so this tested the refusal.
        assert!(
            refused > 0,
            "{model} {extra:?}: all {CLIENTS} fit; the limit was never met"
        );
    }
    // Those being served go on.
    for c in kept.iter_mut() {
        round_trip(c);
    }
    drop(kept);
    // Served once the server has seen them leave (their threads take a
    // moment to end); a newcomer before that may be refused, and counted.
    wait_until(|| arrive(addr, model).is_some());

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{model} {extra:?}: {status:?}");
    let mut summary = String::new();
    server.stdout.read_to_string(&mut summary).unwrap();
    let [accepted, served, failed, timed_out, rejected, closed] = counts(&summary);
    assert_eq!(
        accepted,
        served + failed + timed_out + rejected + closed,
        "{model} {extra:?}: {summary}"
    );
    assert!(
        rejected + failed >= refused as u64,
        "{model} {extra:?}: {refused} refused, not all counted: {summary}"
    );
    eprintln!("{model} {extra:?}: limit {limit} KiB, {refused} of {CLIENTS} refused: {summary}");
}

#[test]
fn under_a_memory_limit_no_model_aborts() {
    // Six servers' clients at once, both ends of each in this process.
    concur::server::raise_fd_limit().unwrap();
    let runs: Vec<_> = runs()
        .into_iter()
        .map(|(model, extra)| thread::spawn(move || under_a_memory_limit(model, extra)))
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}
