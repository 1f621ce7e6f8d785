//! The servers: one [`Config`], one [`run`], many [`Model`]s.
//!
//! Every model is a way of deciding which thread runs the one data flow,
//! socket → protocol → socket, for which client and when. Everything else
//! a server needs lives here once, outside the models:
//!
//! - [`listener`]: binding, and the accept loop with its error policy and
//!   the connection cap;
//! - `responder`: what to answer, for either [`Protocol`], without I/O;
//! - `conn`: the blocking per-client loop of the thread models, and the one
//!   place where every model ends a client (logged, counted);
//! - `memory`: living under an address-space limit: what a client may
//!   cost, checked before it is taken, so that no allocation aborts;
//! - `state`: the [`Summary`] counters and the registry of clients being
//!   served, which the cap reads and the end of a drain closes;
//! - [`Shutdown`]: stop accepting at once, drain for up to
//!   [`Config::drain_timeout`], then close the rest.
//!
//! A model file is then only the article's idea: [`Model::Sequential`]
//! serves inline in the accept loop, [`Model::Thread`] spawns a thread per
//! client, [`Model::Pool`] hands clients to a set of workers,
//! [`Model::Event`] runs epoll loops over per-client state,
//! [`Model::Async`] spawns a tokio task per client, and [`Model::Uring`]
//! runs io_uring rings that are told when a client's operations complete
//! (its own accept loop: ring 0 accepts, with the same cap and budget).
//!
//! ```no_run
//! use concur::server::{self, Config, Model};
//!
//! let listener = server::listener::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
//! let server = server::start(listener, Config::new(Model::Thread)).unwrap();
//! println!("serving on {}", server.local_addr());
//! let summary = server.stop();
//! println!("{summary}");
//! ```

mod asynchronous;
mod compute;
pub mod config;
mod conn;
mod event;
pub mod listener;
mod memory;
mod pool;
mod responder;
mod sequential;
mod state;
mod thread;
mod uring;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

pub use crate::shutdown::Shutdown;
pub use config::{
    AsyncSettings, Config, ConfigError, DEFAULT_MAX_CONNS, DEFAULT_WRITE_TIMEOUT, EventSettings,
    Model, OverLimit, PoolSettings, Settings, ThreadSettings, UringSettings, limits,
};
pub use responder::Protocol;
pub use state::Summary;
pub(crate) use state::{ClientGuard, End, Permit, ServerState, Stats, snapshot};

/// Raises this process's soft limit on open descriptors to its hard limit,
/// and returns the new soft limit. Every client costs a descriptor, and the
/// usual soft limit (1024) is far below what a server of many clients
/// needs; a limit lowered on purpose (`ulimit -n` lowers both) stays.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The machine's core count, the default number of event loops and async
/// workers.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves clients on `listener` with `config` until `shutdown` fires, then
/// drains and returns what happened. Blocks the calling thread.
///
/// An error here is a configuration out of range ([`Config::check`], as
/// `InvalidInput`) or a failure to set the server up (the event queue,
/// say); errors of one client, or of one `accept`, are logged and counted,
/// never returned.
pub fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> io::Result<Summary> {
    run_with(listener, config, shutdown, Arc::default())
}

/// A handle on a server's live counters, for whoever must report them
/// without waiting for [`run`] to return: the binary, on a second signal,
/// exits at once and prints what is known by then.
#[derive(Clone, Debug, Default)]
pub struct Counters(Arc<Stats>);

impl Counters {
    /// The counters so far.
    pub fn summary(&self) -> Summary {
        snapshot(&self.0)
    }

    /// How long clients waited and were served.
    pub(crate) fn times(&self) -> &state::Times {
        &self.0.times
    }
}

/// [`run`], counting into `counters`.
pub fn run_counted(
    listener: TcpListener,
    config: Config,
    shutdown: Shutdown,
    counters: Counters,
) -> io::Result<Summary> {
    run_with(listener, config, shutdown, counters.0)
}

fn run_with(
    listener: TcpListener,
    config: Config,
    shutdown: Shutdown,
    stats: Arc<Stats>,
) -> io::Result<Summary> {
    checked(&config)?;
    let ctx = Arc::new(ServerState::new(config, shutdown, Arc::clone(&stats)));
    run_ctx(listener, ctx, stats)
}

/// A configuration out of range, or a model this machine cannot run, is
/// refused before anything starts.
fn checked(config: &Config) -> io::Result<()> {
    config
        .check()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    check_available(config.model())
}

/// Whether `model` can run here. Only [`Model::Uring`] may not: where the
/// kernel refuses io_uring (disabled by `kernel.io_uring_disabled`, a
/// seccomp filter, a kernel without it or too old for it) the error, of
/// kind [`io::ErrorKind::Unsupported`], says which and names the other
/// models.
pub fn check_available(model: Model) -> io::Result<()> {
    match model {
        Model::Uring => uring::check(),
        _ => Ok(()),
    }
}

fn run_ctx(listener: TcpListener, ctx: Arc<ServerState>, stats: Arc<Stats>) -> io::Result<Summary> {
    let shutdown = ctx.shutdown.clone();
    // The drain runs beside the model rather than after it, because a
    // model may be blocked serving a client (sequential serves in its
    // accept loop) and only the end of the drain can unblock it.
    let drainer = {
        let ctx = Arc::clone(&ctx);
        std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || drain(&ctx))?
    };
    let reporter = match ctx.config.stats_interval {
        Some(every) => {
            let (shutdown, stats) = (shutdown.clone(), Arc::clone(&stats));
            Some(
                std::thread::Builder::new()
                    .name("stats".into())
                    .spawn(move || {
                        while !shutdown.wait_timeout(every) {
                            tracing::info!("{}", snapshot(&stats).live_line());
                        }
                    })?,
            )
        }
        None => None,
    };
    let result = match &ctx.config.settings {
        Settings::Sequential => sequential::run(listener, &ctx),
        Settings::Thread(_) => thread::run(listener, &ctx),
        Settings::Pool(settings) => pool::run(listener, &ctx, settings),
        Settings::Event(settings) => event::run(listener, &ctx, settings),
        Settings::Async(settings) => asynchronous::run(listener, &ctx, settings),
        Settings::Uring(settings) => uring::run(listener, &ctx, settings),
    };
    // A model that failed to start has not seen the signal; fire it so the
    // drainer ends too.
    shutdown.trigger();
    let _ = drainer.join();
    if let Some(reporter) = reporter {
        let _ = reporter.join();
    }
    // Clients closed by the drain leave as soon as their threads notice.
    if !ctx.wait_idle(Duration::from_secs(5)) {
        warn!(
            "{} clients still open after the drain; leaving them",
            ctx.clients_now()
        );
    }
    result?;
    Ok(snapshot(&stats))
}

fn drain(ctx: &ServerState) {
    ctx.shutdown.wait();
    // An accept loop waiting for room must see the signal too; notifying
    // under the lock means it cannot be between its check and its wait.
    {
        let _clients = ctx.lock();
        ctx.left.notify_all();
    }
    let now = ctx.clients_now();
    if now > 0 {
        tracing::info!(
            "shutting down: no new clients; waiting up to {:?} for {now} being served",
            ctx.config.drain_timeout
        );
    }
    let deadline = Instant::now() + ctx.config.drain_timeout;
    if !ctx.wait_idle(deadline.saturating_duration_since(Instant::now())) {
        let closed = ctx.close_all();
        warn!("drain timeout: closing {closed} clients still connected");
    }
}

/// A server running on a thread of its own: the handle that tests, the
/// simulated client and the benchmarks use.
pub struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    stats: Arc<Stats>,
    thread: JoinHandle<io::Result<Summary>>,
}

/// Starts a server of `config.model()` on `listener`, on a new thread.
pub fn start(listener: TcpListener, config: Config) -> io::Result<Server> {
    checked(&config)?;
    let stats = Arc::<Stats>::default();
    let ctx = ServerState::new(config, Shutdown::new(), Arc::clone(&stats));
    start_ctx(listener, ctx, stats)
}

fn start_ctx(listener: TcpListener, ctx: ServerState, stats: Arc<Stats>) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let shutdown = ctx.shutdown.clone();
    let thread = {
        let stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name(format!("{}-server", ctx.config.model()))
            .spawn(move || run_ctx(listener, Arc::new(ctx), stats))?
    };
    Ok(Server {
        addr,
        shutdown,
        stats,
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
    pub fn counters(&self) -> Counters {
        Counters(Arc::clone(&self.stats))
    }

    /// A handle that stops this server when triggered.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The counters so far.
    pub fn summary(&self) -> Summary {
        snapshot(&self.stats)
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
            .filter(|&m| match check_available(m) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("skipped: model {m}: {e}");
                    false
                }
            })
            .collect()
    }

    fn start_pretending(model: Model, used: fn() -> io::Result<u64>) -> Server {
        let stats = Arc::<Stats>::default();
        let mut ctx = ServerState::new(Config::new(model), Shutdown::new(), Arc::clone(&stats));
        ctx.budget = memory::Budget::new(Some(LIMIT), used);
        let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        start_ctx(listener, ctx, stats).unwrap()
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
            // answers than that: 64 KiB (event, async), 16 KiB (uring,
            // whose reads fill its provided buffers).
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
