//! `serve` under systemd: it serves the listening socket systemd passes
//! (socket activation: `LISTEN_FDS`, `LISTEN_PID`) in every model, tells
//! systemd `READY=1` once it takes clients and `STOPPING=1` when the drain
//! starts, and refuses what it cannot serve (a datagram socket, a
//! connection, more than one socket) saying why.
//!
//! `systemd-socket-activate` (Debian's `systemd` package; `.ci/run`
//! installs it) plays systemd: it listens, and on the first connection
//! starts `concur serve` with the socket. `systemd-analyze verify` (the
//! same package) checks the units in `deploy/systemd/`. Where they are
//! missing, the tests that need them say so on standard error and do
//! nothing else.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use concur::server::Model;

/// The lines `from` writes, as they come, on a channel (so that every
/// wait for one is bounded).
fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if send.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// The next line, or the test fails naming `what` it waited for.
fn next_line(lines: &mpsc::Receiver<String>, what: &str) -> String {
    lines
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// What the next notification to systemd says.
fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("a notification to systemd");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `systemd-socket-activate ARGS concur serve SERVE`, its standard output
/// and error read line by line.
struct Activated {
    running: Running,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn activate(exe: &str, args: &[&str], serve: &[&str]) -> Activated {
    let mut child = Command::new(exe)
        .args(args)
        .arg(env!("CARGO_BIN_EXE_concur"))
        .arg("serve")
        .args(serve)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate");
    let out = lines(child.stdout.take().unwrap());
    let err = lines(child.stderr.take().unwrap());
    let activated = Activated {
        running: Running(child),
        out,
        err,
    };
    // It says where it listens before it takes a connection.
    let said = next_line(&activated.err, "systemd-socket-activate to listen");
    assert!(said.starts_with("Listening on "), "{said}");
    activated
}

fn served_from_systemd(exe: &str, model: Model) {
    let dir = TempDir::new("systemd");
    let notify_path = dir.0.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let port = free_port();
    let at = format!("127.0.0.1:{port}");
    let mut activated = activate(
        exe,
        &[
            "-l",
            &at,
            "-E",
            &format!("NOTIFY_SOCKET={}", notify_path.display()),
        ],
        &["--model", model.name(), "-q"],
    );

    // The first client starts the server, which must greet it on the
    // socket it was given (not on the default port it would bind).
    let mut client = connect_served(at.parse().unwrap());
    round_trip(&mut client);
    let banner = next_line(&activated.out, "the banner");
    assert!(
        banner.starts_with(&format!("Serving on {at} (model {model}")),
        "{model}: {banner}"
    );
    let ready = notification(&notify);
    assert!(
        ready.lines().any(|l| l == "READY=1") && ready.contains(&format!("STATUS={banner}")),
        "{model}: {ready:?}"
    );
    drop(client);

    // SIGTERM (what systemctl stop sends): STOPPING=1, the drain, exit 0.
    // systemd-socket-activate became concur serve: the same process.
    let pid = activated.running.0.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let stopping = notification(&notify);
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "{model}: {stopping:?}"
    );
    let status = activated.running.0.wait().unwrap();
    assert!(status.success(), "{model}: {status}");
    let summary = next_line(&activated.out, "the summary");
    let figures = summary_figures(&summary);
    assert_eq!(
        (figures["accepted"], figures["served"]),
        (1, 1),
        "{model}: {summary}"
    );
}

#[test]
fn every_model_serves_the_socket_systemd_passes_and_tells_it_when_ready_and_stopping() {
    let test = "every_model_serves_the_socket_systemd_passes_and_tells_it_when_ready_and_stopping";
    let Some(exe) = installed("systemd-socket-activate", test) else {
        return;
    };
    for model in models() {
        served_from_systemd(&exe, model);
    }
}

/// The first error line `serve` writes on its standard error.
fn refusal(activated: &Activated) -> String {
    loop {
        let line = next_line(&activated.err, "serve's error");
        if line.starts_with("error: ") {
            return line;
        }
    }
}

#[test]
fn a_socket_serve_cannot_serve_is_refused_saying_why() {
    let test = "a_socket_serve_cannot_serve_is_refused_saying_why";
    let Some(exe) = installed("systemd-socket-activate", test) else {
        return;
    };
    // A datagram socket, started by the first datagram: serve (the same
    // process) exits 1.
    let at = format!("127.0.0.1:{}", free_port());
    let mut activated = activate(&exe, &["-d", "-l", &at], &[]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"hello", &at).unwrap();
    let said = refusal(&activated);
    assert!(
        said.contains("socket activation: the socket systemd passed is not a TCP socket"),
        "{said}"
    );
    assert_eq!(activated.running.0.wait().unwrap().code(), Some(1));

    // A connection (Accept=yes) rather than the listening socket: the
    // serve started for it refuses it, and the client is closed without
    // a greeting. (systemd-socket-activate itself goes on listening.)
    let at = format!("127.0.0.1:{}", free_port());
    let activated = activate(&exe, &["--accept", "-l", &at], &[]);
    let mut client = connect(at.parse().unwrap());
    let said = refusal(&activated);
    assert!(
        said.contains("is a connection, not a listening socket")
            && said.contains("concur.socket needs one ListenStream= with Accept=no"),
        "{said}"
    );
    assert_eq!(read_to_end(&mut client), b"");
}

#[test]
fn more_sockets_than_one_are_refused_saying_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(["serve", "--port", "0"])
        .env("LISTEN_FDS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemd passed 2 sockets and serve takes one, the protocol's"),
        "{err}"
    );
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let test = "the_units_pass_systemd_analyze_verify";
    let Some(exe) = installed("systemd-analyze", test) else {
        return;
    };
    // As installed, with ExecStart= naming a binary that exists here.
    let dir = TempDir::new("units");
    let mut units = Vec::new();
    for unit in ["concur.socket", "concur.service"] {
        let text = std::fs::read_to_string(repo_file(&format!("deploy/systemd/{unit}"))).unwrap();
        let text = text.replace("/usr/local/bin/concur", env!("CARGO_BIN_EXE_concur"));
        let path = dir.0.join(unit);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new(exe)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings: anything said is a failure here.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
