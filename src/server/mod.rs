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
//! [`Model::Event`] runs epoll loops over per-client state, and
//! [`Model::Async`] spawns a tokio task per client.
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
mod conn;
mod event;
pub mod listener;
mod memory;
mod pool;
mod responder;
mod sequential;
mod state;
mod thread;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

pub use crate::shutdown::Shutdown;
pub use responder::Protocol;
pub use state::Summary;
pub(crate) use state::{ClientGuard, Ctx, End, Stats, snapshot};

/// How a server admits and serves its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Model {
    /// One client at a time, in the accept loop (the article's part 1).
    Sequential,
    /// One thread per client (the article's C server).
    Thread,
    /// A pool of worker threads fed through a bounded hand-off (the
    /// article's Python server); fixed, or growing and shrinking with the
    /// load.
    Pool,
    /// mio event loops: no thread per client, per-client state and
    /// outbound buffers (where the article points next).
    Event,
    /// tokio: one task per client on a few runtime threads.
    Async,
}

impl Model {
    /// Every model, so that tests and benchmarks can loop over them.
    pub const ALL: [Model; 5] = [
        Model::Sequential,
        Model::Thread,
        Model::Pool,
        Model::Event,
        Model::Async,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::Sequential => "sequential",
            Model::Thread => "thread",
            Model::Pool => "pool",
            Model::Event => "event",
            Model::Async => "async",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Model {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Model::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Model::ALL.iter().map(|m| m.name()).collect();
                format!("unknown model {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What a server is asked to be. Every model reads the same fields and
/// ignores the ones that are not about it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The concurrency model.
    pub model: Model,
    /// The protocol spoken to clients.
    pub protocol: Protocol,
    /// Worker threads of [`Model::Pool`]: all of them for a fixed pool,
    /// the fewest for one that adapts (see [`Config::max_threads`]).
    pub threads: usize,
    /// The most worker threads [`Model::Pool`] grows to while every worker
    /// is busy and clients wait; at or below [`Config::threads`] the pool
    /// is fixed.
    pub max_threads: usize,
    /// How long a worker beyond [`Config::threads`] may sit idle before it
    /// leaves.
    pub keep_alive: Duration,
    /// Clients the pool's hand-off holds while every worker is busy. Zero
    /// is a rendezvous: the accept loop waits for a free worker and further
    /// clients wait in the kernel's listen backlog, as in the article. At
    /// most [`MAX_QUEUE`]; a larger value is taken as that.
    pub queue: usize,
    /// After a shutdown signal, how long clients being served may go on
    /// before they are closed.
    pub drain_timeout: Duration,
    /// Event loops (threads) of [`Model::Event`].
    pub loops: usize,
    /// Runtime threads of [`Model::Async`].
    pub workers: usize,
    /// Answers [`Model::Event`] holds for one client before it stops
    /// reading from that client until they drain.
    pub outbound_cap: usize,
    /// The most clients served at once; see [`OverLimit`] for what happens
    /// to the next one.
    pub max_conns: usize,
    /// What the server does with a client over [`Config::max_conns`].
    pub over_limit: OverLimit,
    /// Close a client that sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a client whose answers cannot be written for this long,
    /// because it does not read them.
    pub write_timeout: Option<Duration>,
    /// Log a line of live figures this often.
    pub stats_interval: Option<Duration>,
    /// Stack size of each client thread ([`Model::Thread`]) or worker
    /// ([`Model::Pool`]); `None` is Rust's default (2 MiB unless
    /// `RUST_MIN_STACK` says otherwise). Most of a stack is address space
    /// never touched, so a smaller one fits more threads under an
    /// address-space limit (or strict overcommit) rather than saving
    /// resident memory.
    pub stack_size: Option<usize>,
}

/// What happens to a client that arrives while the server already serves
/// [`Config::max_conns`] clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OverLimit {
    /// Stop accepting until a client leaves; newcomers wait in the listen
    /// backlog (and, once that is full, in their SYN retries).
    Wait,
    /// Accept and close at once, without a `*`; counted as rejected.
    Reject,
}

/// The default of [`Config::max_conns`].
pub const DEFAULT_MAX_CONNS: usize = 10_000;

/// The longest pool hand-off ([`Config::queue`]): its slots are allocated
/// up front, so a mistyped length must not ask for terabytes.
pub const MAX_QUEUE: usize = 100_000;

/// The default of [`Config::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises this process's soft limit on open descriptors to its hard limit,
/// and returns the new soft limit. Every client costs a descriptor, and the
/// usual soft limit (1024) is far below what a server of many clients
/// needs; a limit lowered on purpose (`ulimit -n` lowers both) stays.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls get a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// The machine's core count, the default number of event loops and async
/// workers.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// The defaults for `model`: 64 pool workers, a rendezvous hand-off,
    /// a five-second drain, an event loop or async worker per core, and a
    /// 64 KiB outbound cap.
    pub fn new(model: Model) -> Self {
        Config {
            model,
            protocol: Protocol::Bytes,
            threads: 64,
            max_threads: 0,
            keep_alive: Duration::from_secs(10),
            queue: 0,
            drain_timeout: Duration::from_secs(5),
            loops: cores(),
            workers: cores(),
            outbound_cap: 64 * 1024,
            max_conns: DEFAULT_MAX_CONNS,
            over_limit: OverLimit::Wait,
            idle_timeout: None,
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            stats_interval: None,
            stack_size: None,
        }
    }

    /// A builder for one of this server's client threads or workers.
    pub(crate) fn thread_builder(&self, name: String) -> std::thread::Builder {
        let builder = std::thread::Builder::new().name(name);
        match self.stack_size {
            Some(size) => builder.stack_size(size),
            None => builder,
        }
    }

    /// Sets [`Config::threads`].
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// A short description for banners and chart titles, such as
    /// `model pool, 64 threads`.
    pub fn describe(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let model = match self.model {
            Model::Pool if self.max_threads > self.threads => {
                format!(
                    "model pool, {} to {} threads",
                    self.threads, self.max_threads
                )
            }
            Model::Pool => format!("model pool, {}", count(self.threads, "thread")),
            Model::Event => format!("model event, {}", count(self.loops, "loop")),
            Model::Async => format!("model async, {}", count(self.workers, "worker")),
            m => format!("model {m}"),
        };
        match self.protocol {
            Protocol::Bytes => model,
            Protocol::Prime => format!("{model}, protocol prime"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::new(Model::Pool)
    }
}

/// Serves clients on `listener` with `config` until `shutdown` fires, then
/// drains and returns what happened. Blocks the calling thread.
///
/// An error here is a failure to set the server up (the event queue, say);
/// errors of one client, or of one `accept`, are logged and counted, never
/// returned.
pub fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> io::Result<Summary> {
    run_with(listener, config, shutdown, Arc::default())
}

/// A handle on a server's live counters, for whoever must report them
/// without waiting for [`run`] to return: the binary, on a second signal,
/// exits at once and prints what is known by then.
#[derive(Clone, Default)]
pub struct Counters(Arc<Stats>);

impl Counters {
    /// The counters so far.
    pub fn summary(&self) -> Summary {
        snapshot(&self.0)
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
    let ctx = Arc::new(Ctx::new(config, shutdown, Arc::clone(&stats)));
    run_ctx(listener, ctx, stats)
}

fn run_ctx(listener: TcpListener, ctx: Arc<Ctx>, stats: Arc<Stats>) -> io::Result<Summary> {
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
    let result = match ctx.config.model {
        Model::Sequential => sequential::run(listener, &ctx),
        Model::Thread => thread::run(listener, &ctx),
        Model::Pool => pool::run(listener, &ctx),
        Model::Event => event::run(listener, &ctx),
        Model::Async => asynchronous::run(listener, &ctx),
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

fn drain(ctx: &Ctx) {
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

/// Starts a server of `config.model` on `listener`, on a new thread.
pub fn start(listener: TcpListener, config: Config) -> io::Result<Server> {
    let stats = Arc::<Stats>::default();
    let ctx = Ctx::new(config, Shutdown::new(), Arc::clone(&stats));
    start_ctx(listener, ctx, stats)
}

fn start_ctx(listener: TcpListener, ctx: Ctx, stats: Arc<Stats>) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let shutdown = ctx.shutdown.clone();
    let thread = {
        let stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name(format!("{}-server", ctx.config.model))
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

    fn start_pretending(model: Model, used: fn() -> io::Result<u64>) -> Server {
        let stats = Arc::<Stats>::default();
        let mut ctx = Ctx::new(Config::new(model), Shutdown::new(), Arc::clone(&stats));
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
        for model in Model::ALL {
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
        for model in Model::ALL.into_iter().filter(|&m| m != Model::Sequential) {
            USED.store(0, Ordering::SeqCst);
            let server = start_pretending(model, used);
            let mut quiet = greeted(&server);
            round_trip(&mut quiet);
            let mut flood = greeted(&server);
            round_trip(&mut flood);

            // Room for 32 KiB more; one read of the flood needs 64 KiB of
            // answers.
            USED.store(LIMIT - memory::RESERVE - (32 << 10), Ordering::SeqCst);
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
