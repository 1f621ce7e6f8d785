//! The servers a run measures: the models and the two references, each a
//! child process, and a server started elsewhere. Apart from `run`,
//! which only asks each its name, its process and how to talk to it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use super::child::ServerProcess;
use super::cpus;
use super::echo::{self, Peer};
use super::options::Options;
use super::scenario::Scenario;
use super::{floor, floor_uring};
use crate::server::Model;

/// A server run beside the models to measure them against, each a hidden
/// subcommand of `concur` of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    /// Throughput's yardstick: the same system calls as the thread models,
    /// no protocol work ([`echo::start_echo`]).
    Echo,
    /// CPU's and system calls' yardstick: the least server that answers
    /// the protocol ([`super::floor`]).
    Floor,
    /// The same for io_uring: the simplest io_uring server that answers
    /// the protocol ([`super::floor_uring`]), what `uring` is judged by.
    FloorUring,
}

impl Reference {
    /// All three, in the order their rows come.
    pub const ALL: [Reference; 3] = [Reference::Echo, Reference::Floor, Reference::FloorUring];

    /// Its row's name, and its subcommand.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Echo => "echo",
            Reference::Floor => "floor",
            Reference::FloorUring => "floor-uring",
        }
    }

    /// How it answers.
    pub fn peer(self) -> Peer {
        match self {
            Reference::Echo => Peer::Echo,
            Reference::Floor | Reference::FloorUring => Peer::Concur,
        }
    }

    /// Whether it runs in `scenario`: none speaks the primality
    /// protocol, and idle measures the models' memory.
    pub fn runs_in(scenario: Scenario) -> bool {
        !matches!(scenario, Scenario::Cpu | Scenario::Idle)
    }

    /// Whether this machine can run it: the io_uring floor needs what
    /// the `uring` model needs.
    pub fn available(self) -> bool {
        self != Reference::FloorUring || Model::Uring.available().is_ok()
    }

    /// Serves on `listener`, on the calling thread, for as long as the
    /// process lives: `concur echo`, `concur floor`.
    pub fn serve(self, listener: std::net::TcpListener) -> io::Result<()> {
        match self {
            Reference::Echo => echo::serve_echo(listener),
            Reference::Floor => floor::serve_floor(listener),
            Reference::FloorUring => floor_uring::serve_floor_uring(listener),
        }
    }
}

/// One server under test.
pub(super) enum Contender {
    /// A process this run started.
    Child {
        serves: Serves,
        process: ServerProcess,
    },
    /// Started anew for every `idle` run, to read its memory fresh.
    Idle(Model),
    External(SocketAddr),
}

/// What a child process serves.
#[derive(Clone, Copy)]
pub(super) enum Serves {
    Model(Model),
    Reference(Reference),
}

impl Contender {
    pub(super) fn name(&self) -> String {
        match self {
            Contender::Child {
                serves: Serves::Reference(r),
                ..
            } => r.name().into(),
            Contender::Child {
                serves: Serves::Model(m),
                ..
            }
            | Contender::Idle(m) => m.name().into(),
            Contender::External(a) => a.to_string(),
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Contender::Child { process, .. } => Some(process.pid()),
            Contender::External(addr) => cpus::listener_pid(addr.port()),
            Contender::Idle(_) => None,
        }
    }
}

/// The `concur serve` arguments of `model` in a run with up to `most`
/// connections.
fn serve_args(model: Model, options: &Options, most: usize) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--port", "0", "-q", "--drain-timeout", "1"]
        .map(String::from)
        .to_vec();
    // A deep backlog: sweeps and churn connect in bursts. Room for every
    // connection of the largest run, and for churn's closing ones.
    args.extend(["--backlog".into(), "4096".into()]);
    args.extend(["--max-conns".into(), (most + 64).max(10_000).to_string()]);
    args.extend(["--model".into(), model.name().into()]);
    if options.scenario.prime() {
        args.extend(["--protocol".into(), "prime".into()]);
    }
    if let (Model::Pool, Some(n)) = (model, options.pool_threads) {
        args.extend(["-n".into(), n.to_string()]);
    }
    args
}

pub(super) fn contenders(options: &Options, exe: &Path) -> io::Result<Vec<Contender>> {
    let scenario = options.scenario;
    let most = options.counts().into_iter().max().unwrap_or(1);
    let cpus = options.server_cpus.as_deref();
    let mut all = Vec::new();
    if options.reference && Reference::runs_in(scenario) {
        for reference in Reference::ALL.into_iter().filter(|r| r.available()) {
            let args = [reference.name(), "--port", "0"].map(String::from);
            all.push(Contender::Child {
                serves: Serves::Reference(reference),
                process: ServerProcess::spawn(exe, &args, cpus)?,
            });
        }
    }
    for &model in &options.models {
        if scenario == Scenario::Idle {
            all.push(Contender::Idle(model));
            continue;
        }
        let process = ServerProcess::spawn(exe, &serve_args(model, options, most), cpus)?;
        all.push(Contender::Child {
            serves: Serves::Model(model),
            process,
        });
    }
    if let Some(addr) = options.addr {
        all.push(Contender::External(addr));
    }
    Ok(all)
}
