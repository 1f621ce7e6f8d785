//! The servers: one [`Config`], one [`run`], many [`Model`]s.
//!
//! Every model is a way of deciding which thread runs the one data flow,
//! socket → [`Processor`](crate::protocol::Processor) → socket, for which
//! client and when. Everything else a server needs lives here once, outside
//! the models:
//!
//! - [`listener`]: binding, and the accept loop with its error policy;
//! - `conn`: the blocking per-client loop, its logging and its counting;
//! - the [`Summary`] counters and the registry of connected clients that
//!   lets a shutdown close whoever is still there when the drain ends;
//! - [`Shutdown`]: stop accepting at once, drain for up to
//!   [`Config::drain_timeout`], then close the rest.
//!
//! A model file is then only the article's idea: [`Model::Sequential`]
//! serves inline in the accept loop, [`Model::Thread`] spawns a thread per
//! client, [`Model::Pool`] hands clients to a fixed set of workers.
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
mod pool;
mod responder;
mod sequential;
mod thread;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

pub use crate::shutdown::Shutdown;
pub use responder::Protocol;

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
    /// clients wait in the kernel's listen backlog, as in the article.
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

/// What a server did, counted as it ran. A running server's
/// [`Server::summary`] is a snapshot; [`run`] returns the final one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections taken from the listen backlog.
    pub accepted: u64,
    /// Clients that got `*` and ended without an error on our side.
    pub served: u64,
    /// Clients ended by an error: read, write, thread spawn or a panic.
    pub failed: u64,
    /// Clients closed by the idle or the write timeout.
    pub timed_out: u64,
    /// Clients over the connection limit, closed unserved
    /// ([`OverLimit::Reject`]).
    pub rejected: u64,
    /// Clients accepted but closed without being served, because the
    /// server was shutting down.
    pub dropped: u64,
    /// Errors from `accept` itself (not counted as clients).
    pub accept_errors: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients, the `*`s included.
    pub bytes_out: u64,
    /// Clients being served at the moment of the snapshot.
    pub clients_now: u64,
    /// The most clients served at once.
    pub max_clients: u64,
    /// The most answer bytes held for one client at once, waiting to be
    /// written: what backpressure bounds.
    pub max_buffered: u64,
    /// Worker threads of a pool at the moment of the snapshot (zero for
    /// the other models).
    pub pool_threads: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "served {} clients ({} failed, {} timed out, {} rejected, {} dropped at shutdown), \
             {} bytes in, {} bytes out, at most {} at once, {} accept errors",
            self.served,
            self.failed,
            self.timed_out,
            self.rejected,
            self.dropped,
            self.bytes_in,
            self.bytes_out,
            self.max_clients,
            self.accept_errors
        )?;
        if self.pool_threads > 0 {
            write!(f, ", a pool of {} threads at shutdown", self.pool_threads)?;
        }
        Ok(())
    }
}

impl Summary {
    /// The live figures, for the `--stats-interval` line.
    pub fn live_line(&self) -> String {
        let mut line = format!(
            "clients now {}, accepted {}, rejected {}, timed out {}, bytes in {}, bytes out {}",
            self.clients_now,
            self.accepted,
            self.rejected,
            self.timed_out,
            self.bytes_in,
            self.bytes_out
        );
        if self.pool_threads > 0 {
            line += &format!(", pool threads {}", self.pool_threads);
        }
        line
    }
}

/// The live counters behind a [`Summary`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    accepted: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    accept_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    clients_now: AtomicU64,
    max_clients: AtomicU64,
    max_buffered: AtomicU64,
    pub(crate) pool_threads: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The server's shared state: its configuration, its counters, and the
/// clients it is serving now.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) shutdown: Shutdown,
    stats: Arc<Stats>,
    clients: Mutex<Clients>,
    // Clients the pool's accept loop has handed off that no worker has
    // admitted yet: the connection cap counts them too.
    in_transit: AtomicUsize,
    // Signalled whenever a client leaves, for the drain.
    left: Condvar,
}

#[derive(Default)]
struct Clients {
    next_id: u64,
    // Each client's socket, so that the end of a drain can shut it down and
    // wake whoever is blocked on it. Only the descriptor is kept (no dup: a
    // client costs one descriptor, not two); it is valid while it is here,
    // because a client leaves this map before its socket is closed.
    open: HashMap<u64, RawFd>,
    // Set when the drain ends: late arrivals are closed at once.
    closing: bool,
}

impl Ctx {
    fn new(mut config: Config, shutdown: Shutdown, stats: Arc<Stats>) -> Self {
        // A zero timeout would close every client at once; it means "off".
        for timeout in [&mut config.idle_timeout, &mut config.write_timeout] {
            if timeout.is_some_and(|t| t.is_zero()) {
                *timeout = None;
            }
        }
        Ctx {
            config,
            shutdown,
            stats,
            clients: Mutex::new(Clients::default()),
            in_transit: AtomicUsize::new(0),
            left: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Clients> {
        // Every update under this lock is a single insert or remove, so a
        // panic elsewhere cannot leave it half-done.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a client being served; it stays counted until the guard
    /// drops. The guard must drop before `socket` closes.
    pub(crate) fn enter(self: &Arc<Self>, socket: &impl AsRawFd) -> ClientGuard {
        let fd = socket.as_raw_fd();
        let mut clients = self.lock();
        let id = clients.next_id;
        clients.next_id += 1;
        if clients.closing {
            shutdown_fd(fd);
        }
        clients.open.insert(id, fd);
        let now = self.stats.clients_now.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_clients.fetch_max(now, Ordering::Relaxed);
        ClientGuard {
            ctx: Arc::clone(self),
            id,
        }
    }

    fn clients_now(&self) -> usize {
        self.lock().open.len()
    }

    /// Waits until no client is being served, or `timeout` passes; true if
    /// none is.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let clients = self.lock();
        let (clients, _) = self
            .left
            .wait_timeout_while(clients, timeout, |c| !c.open.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        clients.open.is_empty()
    }

    /// Shuts down every client's socket, which wakes the threads serving
    /// them: their reads see end-of-file, their writes fail.
    fn close_all(&self) -> usize {
        let mut clients = self.lock();
        clients.closing = true;
        for &fd in clients.open.values() {
            shutdown_fd(fd);
        }
        clients.open.len()
    }

    pub(crate) fn count_accepted(&self) {
        bump(&self.stats.accepted, 1);
    }

    pub(crate) fn count_accept_error(&self) {
        bump(&self.stats.accept_errors, 1);
    }

    pub(crate) fn count_failed(&self) {
        bump(&self.stats.failed, 1);
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn count_timed_out(&self) {
        bump(&self.stats.timed_out, 1);
    }

    pub(crate) fn count_rejected(&self) {
        bump(&self.stats.rejected, 1);
    }

    /// Whether the server serves as many clients as it may.
    pub(crate) fn full(&self) -> bool {
        self.lock().open.len() + self.in_transit.load(Ordering::SeqCst) >= self.config.max_conns
    }

    /// A client is on its way to a thread that will admit it.
    pub(crate) fn set_off(&self) {
        self.in_transit.fetch_add(1, Ordering::SeqCst);
    }

    /// A client set off has arrived: admitted (call this after
    /// [`Ctx::enter`], so it is never uncounted), or closed unserved.
    pub(crate) fn arrived(&self) {
        let _clients = self.lock();
        self.in_transit.fetch_sub(1, Ordering::SeqCst);
        self.left.notify_all();
    }

    /// Blocks while the server is full, until a client leaves or the
    /// shutdown fires.
    pub(crate) fn wait_for_room(&self) {
        let clients = self.lock();
        let _clients = self
            .left
            .wait_while(clients, |c| {
                c.open.len() + self.in_transit.load(Ordering::SeqCst) >= self.config.max_conns
                    && !self.shutdown.is_triggered()
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    pub(crate) fn count_dropped(&self) {
        bump(&self.stats.dropped, 1);
    }

    pub(crate) fn count_bytes_in(&self, n: usize) {
        bump(&self.stats.bytes_in, n as u64);
    }

    pub(crate) fn count_bytes_out(&self, n: usize) {
        bump(&self.stats.bytes_out, n as u64);
    }

    /// Records how many answer bytes one client has waiting to be written.
    pub(crate) fn note_buffered(&self, n: usize) {
        self.stats
            .max_buffered
            .fetch_max(n as u64, Ordering::Relaxed);
    }
}

/// Shuts a registered client's socket down both ways.
fn shutdown_fd(fd: RawFd) {
    // SAFETY: `fd` is open: callers hold the clients lock, and a client
    // leaves the map (under that lock) before its socket is closed. An
    // error (the peer already gone) needs no handling.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// A client counted as being served; dropping it ends the count.
pub(crate) struct ClientGuard {
    ctx: Arc<Ctx>,
    id: u64,
}

impl ClientGuard {
    pub(crate) fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Ends the client as served (no error on our side).
    pub(crate) fn served(self) {
        bump(&self.ctx.stats.served, 1);
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Only an async task unwinds past its guard (tokio catches the
            // panic); the blocking and event models catch theirs first.
            warn!(target: conn::LOG_TARGET, "a client's task panicked; that client is closed");
            self.ctx.count_failed();
        }
        // Out of the map before the count drops, so that a count below the
        // cap means there is room (`Ctx::full` reads the map).
        self.ctx.lock().open.remove(&self.id);
        self.ctx.stats.clients_now.fetch_sub(1, Ordering::Relaxed);
        self.ctx.left.notify_all();
    }
}

fn snapshot(stats: &Stats) -> Summary {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Summary {
        accepted: get(&stats.accepted),
        served: get(&stats.served),
        failed: get(&stats.failed),
        timed_out: get(&stats.timed_out),
        rejected: get(&stats.rejected),
        dropped: get(&stats.dropped),
        accept_errors: get(&stats.accept_errors),
        bytes_in: get(&stats.bytes_in),
        bytes_out: get(&stats.bytes_out),
        clients_now: get(&stats.clients_now),
        max_clients: get(&stats.max_clients),
        max_buffered: get(&stats.max_buffered),
        pool_threads: get(&stats.pool_threads),
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

fn run_with(
    listener: TcpListener,
    config: Config,
    shutdown: Shutdown,
    stats: Arc<Stats>,
) -> io::Result<Summary> {
    let ctx = Arc::new(Ctx::new(config, shutdown.clone(), Arc::clone(&stats)));
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
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let stats = Arc::<Stats>::default();
    let thread = {
        let (shutdown, stats) = (shutdown.clone(), Arc::clone(&stats));
        std::thread::Builder::new()
            .name(format!("{}-server", config.model))
            .spawn(move || run_with(listener, config, shutdown, stats))?
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
