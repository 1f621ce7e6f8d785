//! HAProxy in front of three concur servers, with `deploy/haproxy.cfg` as
//! it is shipped: clients through it are answered right, a server killed
//! mid-run costs its own clients only what was not yet answered, and new
//! clients are served by the survivors.
//!
//! It needs the `haproxy` program (`.ci/run` installs it). Where it is
//! missing the test says so on standard error and does nothing else.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use concur::client::{self, Options, Script};

fn start_proxy(exe: &str, listen: SocketAddr, servers: &[&Process]) -> Running {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
    let mut command = Command::new(exe);
    command
        .args(["-f", config, "-db"])
        .env("CONCUR_LISTEN", listen.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (i, s) in servers.iter().enumerate() {
        command.env(format!("CONCUR_{}", i + 1), s.addr.to_string());
    }
    Running(command.spawn().expect("start haproxy"))
}

#[test]
fn haproxy_spreads_clients_and_survives_a_server_s_death() {
    let Some(exe) = installed(
        "haproxy",
        "haproxy_spreads_clients_and_survives_a_server_s_death",
    ) else {
        return;
    };
    let servers: Vec<Process> = (0..3)
        .map(|_| Process::serve(&["--model", "thread", "--port", "0", "-q"]))
        .collect();
    let front: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _proxy = start_proxy(&exe, front, &servers.iter().collect::<Vec<_>>());
    // Up once a client through it is greeted.
    wait_until(|| {
        TcpStream::connect(front)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut star = [0u8; 1];
                std::io::Read::read_exact(&mut s, &mut star)?;
                Ok(star == *b"*")
            })
            .unwrap_or(false)
    });

    // Nine clients, each greeted (so each is with a server) and answered
    // once; then one server dies; then each sends again.
    let mut clients: Vec<TcpStream> = (0..9).map(|_| connect_served(front)).collect();
    for c in &mut clients {
        c.write_all(b"^hello$").unwrap();
        assert_eq!(read_n(c, 5), b"ifmmp");
    }
    let mut servers = servers.into_iter();
    let (first, dead, third) = (
        servers.next().unwrap(),
        servers.next().unwrap(),
        servers.next().unwrap(),
    );
    dead.kill();
    let (mut finished, mut cut_off) = (0, 0);
    for mut c in clients {
        let _ = c.write_all(b"^world$");
        let _ = c.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut rest);
        // Nothing it was answered is lost or wrong: the whole second
        // answer, or (its server gone) nothing more.
        match rest.as_slice() {
            b"xpsme" => finished += 1,
            b"" => cut_off += 1,
            other => panic!("a wrong or partial answer: {other:?}"),
        }
    }
    // leastconn gave each server three; the dead one's three were cut off.
    assert_eq!((finished, cut_off), (6, 3));

    // Newcomers, the article's client on a short schedule: every one
    // served, every reply right, by the two left.
    let script =
        Script::parse("send ^abc$de^abte$f\nsend xyz^123\nsend 25$^ab0000$abab\n").unwrap();
    let options = Options::new(9)
        .script(script)
        .timeout(Duration::from_secs(10))
        .echo(false);
    let report = client::run(front, &options);
    assert!(report.ok(), "{:?}", report.failures());
    let served: u64 = [first, third]
        .into_iter()
        .map(|s| summary_figures(&s.stop())["served"])
        .sum();
    // Their six from before, the nine newcomers, and health checks.
    assert!(served >= 15, "{served}");
}
