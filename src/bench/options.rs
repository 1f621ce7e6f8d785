//! What `concur bench` is asked to run, and the one check that stands
//! between the command line and a run. Apart from `run`: the
//! command line fills these in and needs nothing of how a run goes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::engine::{self, ClientShape};
use super::scenario::{Params, Scenario};
use crate::server::Model;

/// The most connections (or idle clients) one run may open.
pub const MAX_COUNT: usize = 15_000;

/// What `concur bench` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The scenario.
    pub scenario: Scenario,
    /// Connection counts, one run of each per server and repeat; empty
    /// for the scenario's default.
    pub counts: Vec<usize>,
    /// Whether this is `concur bench sweep` (for the record and plots).
    pub sweep: bool,
    /// Models to start and measure.
    pub models: Vec<Model>,
    /// A server started elsewhere, on this machine.
    pub addr: Option<SocketAddr>,
    /// Whether to run the references beside them: the echo and the floor
    /// (in the scenarios they speak).
    pub reference: bool,
    /// Whether to count the servers' system calls (where the kernel
    /// allows it; see [`super::syscalls`]).
    pub count_syscalls: bool,
    /// The load's knobs.
    pub params: Params,
    /// Repeats of every run.
    pub repeat: usize,
    /// Workers of the `pool` model started here.
    pub pool_threads: Option<usize>,
    /// The load generators that drive every run, one after the other
    /// (side by side in the table).
    pub clients: Vec<ClientShape>,
    /// Threads of the load generator (the engine's).
    pub client_threads: usize,
    /// CPUs the servers started here are pinned to.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the load generator is pinned to.
    pub client_cpus: Option<Vec<usize>>,
    /// Where `results.json`, the plots and the `.hgrm` files go.
    pub out: Option<PathBuf>,
    /// Draw a progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// The `concur` executable the servers are started from; `None` for
    /// this process's own.
    pub server_exe: Option<PathBuf>,
    /// The command line, for the record.
    pub command: String,
}

impl Options {
    /// `scenario` against every model this machine can run (all but
    /// `uring` where the kernel refuses io_uring) and the reference,
    /// default counts, three repeats of `secs`.
    pub fn new(scenario: Scenario, secs: Duration) -> Self {
        Options {
            scenario,
            counts: Vec::new(),
            sweep: false,
            models: Model::ALL
                .into_iter()
                .filter(|&m| m.available().is_ok())
                .collect(),
            addr: None,
            reference: true,
            count_syscalls: true,
            params: Params::new(scenario, secs),
            repeat: 3,
            pool_threads: None,
            clients: vec![ClientShape::Engine],
            client_threads: engine::default_threads(),
            server_cpus: None,
            client_cpus: None,
            out: None,
            progress: false,
            server_exe: None,
            command: String::new(),
        }
    }

    /// The one check of a run's options: [`ValidOptions`], or what cannot
    /// run, saying what is allowed instead.
    pub fn check(self) -> Result<ValidOptions, String> {
        self.within()?;
        Ok(ValidOptions(self))
    }

    fn within(&self) -> Result<(), String> {
        if self.models.is_empty() && self.addr.is_none() {
            return Err("no server to measure: give --models or --addr".into());
        }
        for &model in &self.models {
            model
                .available()
                .map_err(|e| format!("--models {model}: {e}"))?;
        }
        if let Some(addr) = self.addr {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--addr {addr} is not on this machine; only loopback addresses \
                     (127.0.0.1, ::1) are measured"
                ));
            }
            if self.scenario == Scenario::Idle {
                return Err(
                    "--addr does not work with idle, which starts each server as a \
                            child process to read its memory; use --models"
                        .into(),
                );
            }
        }
        crate::server::config::time("--secs", self.params.secs, false)
            .map_err(|e| e.to_string())?;
        let within = |flag: &str, value: u64, lo: u64, hi: u64, what: &str| {
            if (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{flag} {value} is out of range; give {lo} to {hi}{what}"
                ))
            }
        };
        for &c in &self.counts {
            within("-c", c as u64, 1, MAX_COUNT as u64, "")?;
        }
        if self.clients.is_empty() {
            return Err("--client needs at least one of: engine, threads".into());
        }
        if self.clients.contains(&ClientShape::Threads) {
            if !matches!(self.scenario, Scenario::Stream | Scenario::Pingpong) {
                return Err(format!(
                    "--client threads runs stream and pingpong, not {}; use --client engine",
                    self.scenario
                ));
            }
            let most = engine::MAX_THREADS_CONNECTIONS;
            if let Some(&c) = self.counts().iter().find(|&&c| c > most) {
                return Err(format!(
                    "-c {c} is too many for --client threads (a thread per connection, two \
                     when streaming); give at most {most}, or use --client engine"
                ));
            }
        }
        within("--size", self.params.size as u64, 1, 16 << 20, " bytes")?;
        within(
            "--rate",
            self.params.rate,
            1,
            10_000_000,
            " requests per second",
        )?;
        within("--repeat", self.repeat as u64, 1, 100, "")?;
        within(
            "--client-threads",
            self.client_threads as u64,
            1,
            MAX_CLIENT_THREADS as u64,
            "",
        )?;
        if let Some(n) = self.pool_threads {
            within(
                "--pool-threads",
                n as u64,
                1,
                *crate::server::limits::THREADS.end() as u64,
                "",
            )?;
        }
        Ok(())
    }

    pub(super) fn counts(&self) -> Vec<usize> {
        if self.counts.is_empty() {
            vec![self.scenario.default_count()]
        } else {
            self.counts.clone()
        }
    }
}

/// The most load-generator threads: a few are the point.
pub const MAX_CLIENT_THREADS: usize = 64;

/// [`Options`] that [`Options::check`] has passed: the only kind a run
/// takes. Read them as `Options`; they cannot be changed.
#[derive(Clone, Debug)]
pub struct ValidOptions(Options);

impl std::ops::Deref for ValidOptions {
    type Target = Options;

    fn deref(&self) -> &Options {
        &self.0
    }
}
