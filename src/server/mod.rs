//! The servers: one [`Config`], one [`run`], many [`Model`]s.
//!
//! Every model is a way of deciding which thread runs the one data flow,
//! socket → protocol → socket, for which client and when. This file only
//! dispatches to them; everything else a server needs lives once, in a
//! file of its own that no model owns:
//!
//! - `model`: the [`Model`]s and the [`Settings`] that are each one's own;
//!   [`config`]: the [`Config`] a user asks for, and the one check that
//!   makes it a [`ValidConfig`], the only kind a server runs;
//! - `state`: a running server's shared state; `counters`: the
//!   [`Counters`] and the [`Summary`] they add up to; `registry`: permits,
//!   the clients being served, and how a client ends (its `Outcome`);
//! - [`listener`]: binding, and the accept loop; `admission`: the one
//!   policy both accept loops use (the cap, the memory budget, rejections
//!   and accept errors, logged at a limited rate);
//! - `memory`: living under an address-space limit; `responder`: what to
//!   answer, without I/O; `log`: the per-client log target;
//! - `conn`: the blocking per-client loop of the thread models;
//! - `session`: a client of a non-blocking model with no I/O, which
//!   `event`, `uring` and `asynchronous` drive with readiness, completions
//!   and futures; `slots`: their table of clients; `compute`: the pool
//!   that tests large numbers for them; `kernel`: whether this kernel
//!   allows io_uring;
//! - [`Shutdown`]: stop accepting at once, drain for up to
//!   [`Config::drain_timeout`], then close the rest.
//!
//! A model file is then only the article's idea: [`Model::Sequential`]
//! serves inline in the accept loop, [`Model::Thread`] spawns a thread per
//! client, [`Model::Pool`] hands clients to a set of workers,
//! [`Model::Event`] runs epoll loops over sessions, [`Model::Async`]
//! spawns a tokio task per session, and [`Model::Uring`] runs io_uring
//! rings that are told when a session's operations complete. No model
//! imports another.
//!
//! ```no_run
//! use concur::server::{self, Config, Model};
//!
//! let listener = server::listener::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
//! let config = Config::new(Model::Thread).check().unwrap();
//! let server = server::start(listener, config).unwrap();
//! println!("serving on {}", server.local_addr());
//! let summary = server.stop();
//! println!("{summary}");
//! ```

mod admission;
mod asynchronous;
mod compute;
pub mod config;
mod conn;
mod counters;
mod event;
pub(crate) mod kernel;
pub mod listener;
mod log;
mod loops;
mod memory;
mod model;
mod pool;
mod registry;
mod responder;
mod sequential;
mod session;
mod slots;
mod state;
mod thread;
pub mod timeline;
mod uring;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

pub use crate::shutdown::Shutdown;
pub use config::{
    Config, ConfigError, DEFAULT_MAX_CONNS, DEFAULT_WRITE_TIMEOUT, OverLimit, ValidConfig, limits,
};
pub use counters::{Counters, Summary};
pub use model::{
    AsyncSettings, EventSettings, Model, PoolSettings, Setting, Settings, ThreadSettings,
    UringSettings, cores,
};
pub use responder::Protocol;
use state::ServerState;

/// Raises this process's soft limit on open descriptors to its hard limit,
/// and returns the new soft limit. Every client costs a descriptor, and the
/// usual soft limit (1024) is far below what a server of many clients
/// needs; a limit lowered on purpose (`ulimit -n` lowers both) stays.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Serves clients on `listener` with `config` until `shutdown` fires, then
/// drains and returns what happened. Blocks the calling thread.
///
/// An error here is a failure to set the server up (the event queue,
/// say); errors of one client, or of one `accept`, are logged and counted,
/// never returned.
pub fn run(listener: TcpListener, config: ValidConfig, shutdown: Shutdown) -> io::Result<Summary> {
    run_counted(listener, config, shutdown, Arc::default())
}

/// [`run`], counting into `counters`, which whoever must report them
/// without waiting for `run` to return reads meanwhile: the metrics, the
/// binary on a second signal.
pub fn run_counted(
    listener: TcpListener,
    config: ValidConfig,
    shutdown: Shutdown,
    counters: Arc<Counters>,
) -> io::Result<Summary> {
    serve(
        listener,
        Arc::new(ServerState::new(config, shutdown, counters)),
    )
}

fn serve(listener: TcpListener, state: Arc<ServerState>) -> io::Result<Summary> {
    let shutdown = state.shutdown.clone();
    // The drain runs beside the model rather than after it, because a
    // model may be blocked serving a client (sequential serves in its
    // accept loop) and only the end of the drain can unblock it.
    let drainer = {
        let state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || drain(&state))?
    };
    let reporter = match state.config.stats_interval {
        Some(every) => {
            let (shutdown, counters) = (shutdown.clone(), Arc::clone(&state.counters));
            Some(
                std::thread::Builder::new()
                    .name("stats".into())
                    .spawn(move || {
                        while !shutdown.wait_timeout(every) {
                            tracing::info!("{}", counters.summary().live_line());
                        }
                    })?,
            )
        }
        None => None,
    };
    let result = match &state.config.settings {
        Settings::Sequential => sequential::run(listener, &state),
        Settings::Thread(_) => thread::run(listener, &state),
        Settings::Pool(settings) => pool::run(listener, &state, settings),
        Settings::Event(settings) => event::run(listener, &state, settings),
        Settings::Async(settings) => asynchronous::run(listener, &state, settings),
        Settings::Uring(settings) => uring::run(listener, &state, settings),
    };
    // A model that failed to start has not seen the signal; fire it so the
    // drainer ends too.
    shutdown.trigger();
    let _ = drainer.join();
    if let Some(reporter) = reporter {
        let _ = reporter.join();
    }
    // Clients closed by the drain leave as soon as their threads notice.
    if !state.registry.wait_idle(Duration::from_secs(5)) {
        warn!(
            "{} clients still open after the drain; leaving them",
            state.registry.clients_now()
        );
    }
    result?;
    Ok(state.counters.summary())
}

fn drain(state: &ServerState) {
    state.shutdown.wait();
    // An accept loop waiting for room must see the signal too.
    state.registry.wake_waiters();
    let now = state.registry.clients_now();
    if now > 0 {
        tracing::info!(
            "shutting down: no new clients; waiting up to {:?} for {now} being served",
            state.config.drain_timeout
        );
    }
    let deadline = Instant::now() + state.config.drain_timeout;
    if !state
        .registry
        .wait_idle(deadline.saturating_duration_since(Instant::now()))
    {
        let closed = state.registry.close_all();
        warn!("drain timeout: closing {closed} clients still connected");
    }
}

/// A server running on a thread of its own: the handle that tests, the
/// simulated client and the benchmarks use.
pub struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    counters: Arc<Counters>,
    thread: JoinHandle<io::Result<Summary>>,
}

/// Starts a server of `config.model()` on `listener`, on a new thread.
pub fn start(listener: TcpListener, config: ValidConfig) -> io::Result<Server> {
    let state = ServerState::new(config, Shutdown::new(), Arc::default());
    start_state(listener, state)
}

fn start_state(listener: TcpListener, state: ServerState) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let (shutdown, counters) = (state.shutdown.clone(), Arc::clone(&state.counters));
    let thread = std::thread::Builder::new()
        .name(format!("{}-server", state.config.model()))
        .spawn(move || serve(listener, Arc::new(state)))?;
    Ok(Server {
        addr,
        shutdown,
        counters,
        thread,
    })
}

impl Server {
    /// The address the server listens on (with the real port when it was
    /// bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its live counters, for the metrics endpoint.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// A handle that stops this server when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The counters so far.
    pub fn summary(&self) -> Summary {
        self.counters.summary()
    }

    /// Triggers the shutdown and waits for the drain to finish.
    pub fn stop(self) -> Summary {
        self.shutdown.trigger();
        self.join()
    }

    /// Waits for the server to end (after someone triggers its shutdown).
    ///
    /// # Panics
    ///
    /// If the server could not set itself up, or its thread panicked: both
    /// are bugs or a broken machine, not something a client can cause.
    pub fn join(self) -> Summary {
        match self.thread.join() {
            Ok(Ok(summary)) => summary,
            Ok(Err(e)) => panic!("server failed: {e}"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The pretend address-space limit of these tests, and what they say
    /// is in use: the real process's size is shared by every test running.
    const LIMIT: u64 = 1 << 30;

    /// Every model this machine can run; `uring` is left out, and said to
    /// be, where the kernel refuses io_uring.
    pub(crate) fn runnable() -> Vec<Model> {
        Model::ALL
            .into_iter()
            .filter(|&m| match m.available() {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("skipped: model {m}: {e}");
                    false
                }
            })
            .collect()
    }

    fn start_pretending(model: Model, used: fn() -> io::Result<u64>) -> Server {
        let config = Config::new(model).check().unwrap();
        let mut state = ServerState::new(config, Shutdown::new(), Arc::default());
        state.budget = memory::Budget::new(Some(LIMIT), used);
        let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        start_state(listener, state).unwrap()
    }

    fn connect(server: &Server) -> TcpStream {
        let c = TcpStream::connect(server.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    }

    fn round_trip(c: &mut TcpStream) {
        c.write_all(b"^hi$").unwrap();
        let mut got = [0u8; 2];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ij");
    }

    fn greeted(server: &Server) -> TcpStream {
        let mut c = connect(server);
        let mut star = [0u8; 1];
        c.read_exact(&mut star).unwrap();
        assert_eq!(&star, b"*");
        c
    }

    /// Closed without a `*`: end-of-file or a reset, never a byte.
    fn refused(mut c: TcpStream) {
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert_eq!(rest, b"");
    }

    #[test]
    fn with_no_room_left_newcomers_are_refused_and_the_served_go_on() {
        static USED: AtomicU64 = AtomicU64::new(0);
        fn used() -> io::Result<u64> {
            Ok(USED.load(Ordering::SeqCst))
        }
        // One model after another: they share the pretend figure.
        for model in runnable() {
            USED.store(0, Ordering::SeqCst);
            let server = start_pretending(model, used);
            let mut first = greeted(&server);
            round_trip(&mut first);

            USED.store(LIMIT, Ordering::SeqCst);
            let newcomer = connect(&server);
            if model == Model::Sequential {
                // It waits its turn; it is refused when the first leaves.
                drop(first);
                refused(newcomer);
            } else {
                refused(newcomer);
                round_trip(&mut first);
                drop(first);
            }

            USED.store(0, Ordering::SeqCst);
            let mut next = greeted(&server);
            round_trip(&mut next);
            drop(next);
            let summary = server.stop();
            assert_eq!(
                (summary.served, summary.rejected, summary.ended()),
                (2, 1, 3),
                "{model}: {summary:?}"
            );
        }
    }

    #[test]
    fn a_client_whose_answers_do_not_fit_is_ended_alone() {
        static USED: AtomicU64 = AtomicU64::new(0);
        fn used() -> io::Result<u64> {
            Ok(USED.load(Ordering::SeqCst))
        }
        for model in runnable().into_iter().filter(|&m| m != Model::Sequential) {
            USED.store(0, Ordering::SeqCst);
            let server = start_pretending(model, used);
            let mut quiet = greeted(&server);
            round_trip(&mut quiet);
            let mut flood = greeted(&server);
            round_trip(&mut flood);

            // Room for 4 KiB more; one read of the flood needs more
            // answers than that: 64 KiB (event, async; uring's receives
            // take up to a provided buffer, 64 KiB, or 16 KiB before Linux
            // 6.12).
            USED.store(LIMIT - memory::RESERVE - (4 << 10), Ordering::SeqCst);
            let message: Vec<u8> = std::iter::once(b'^').chain([b'a'; 200 << 10]).collect();
            let _ = flood.write_all(&message);
            let _ = flood.shutdown(std::net::Shutdown::Write);
            let mut answers = Vec::new();
            let _ = flood.read_to_end(&mut answers);
            round_trip(&mut quiet);
            drop(quiet);
            let summary = server.stop();
            match model {
                // Their buffers were reserved whole before the greeting;
                // answering never grows them.
                Model::Thread | Model::Pool => {
                    assert_eq!(answers.len(), 200 << 10, "{model}");
                    assert_eq!((summary.served, summary.failed), (2, 0), "{model}");
                }
                _ => {
                    assert!(
                        answers.len() < 200 << 10,
                        "{model}: {} answers",
                        answers.len()
                    );
                    assert_eq!((summary.served, summary.failed), (1, 1), "{model}");
                }
            }
        }
    }
}
