//! What a server is asked to be: the [`Model`], the settings every model
//! shares, and the settings that are one model's own ([`Settings`]), so
//! that a pool's queue cannot be given to an event loop.
//!
//! A [`Config`] is what a user asks for; a [`ValidConfig`] is one that
//! [`Config::check`] has passed, the only kind a server runs. That one
//! function says what is wrong, naming the flag and what is allowed, and
//! whether this machine can run the model at all; nothing is clamped
//! behind the user's back.

use std::fmt;
use std::ops::{Deref, RangeInclusive};
use std::str::FromStr;
use std::time::Duration;

use super::kernel;
use super::responder::Protocol;

/// The machine's core count, the default number of event loops, async
/// workers and rings.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

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
    /// io_uring rings: the kernel is handed the reads and writes and says
    /// when they completed, rather than when a socket is ready.
    Uring,
}

impl Model {
    /// Every model, so that tests and benchmarks can loop over them.
    pub const ALL: [Model; 6] = [
        Model::Sequential,
        Model::Thread,
        Model::Pool,
        Model::Event,
        Model::Async,
        Model::Uring,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::Sequential => "sequential",
            Model::Thread => "thread",
            Model::Pool => "pool",
            Model::Event => "event",
            Model::Async => "async",
            Model::Uring => "uring",
        }
    }

    /// Whether this machine can run the model. Only [`Model::Uring`] may
    /// not: where the kernel refuses io_uring (disabled by
    /// `kernel.io_uring_disabled`, a seccomp filter, a kernel without it or
    /// too old for it) the error, of kind
    /// [`std::io::ErrorKind::Unsupported`], says which and names the other
    /// models. Found out once per process.
    pub fn available(self) -> std::io::Result<()> {
        match self {
            Model::Uring => kernel::io_uring_available().map_err(|e| with_others(self, e)),
            _ => Ok(()),
        }
    }
}

/// `e`, and the models a user can turn to instead of `model`.
fn with_others(model: Model, e: std::io::Error) -> std::io::Error {
    let others: Vec<&str> = Model::ALL
        .into_iter()
        .filter(|&m| m != model)
        .map(Model::name)
        .collect();
    std::io::Error::new(
        e.kind(),
        format!(
            "{e}; serve with another model instead: --model {}",
            others.join(", ")
        ),
    )
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

/// The settings that belong to one model. A model reads only its own; the
/// others cannot be given to it.
#[derive(Clone, Debug, PartialEq)]
pub enum Settings {
    /// [`Model::Sequential`]: nothing of its own.
    Sequential,
    /// [`Model::Thread`].
    Thread(ThreadSettings),
    /// [`Model::Pool`].
    Pool(PoolSettings),
    /// [`Model::Event`].
    Event(EventSettings),
    /// [`Model::Async`].
    Async(AsyncSettings),
    /// [`Model::Uring`].
    Uring(UringSettings),
}

/// [`Model::Thread`]'s settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadSettings {
    /// Stack size of each client thread; `None` is Rust's default (2 MiB
    /// unless `RUST_MIN_STACK` says otherwise). Most of a stack is address
    /// space never touched, so a smaller one fits more threads under an
    /// address-space limit rather than saving resident memory.
    pub stack_size: Option<usize>,
}

/// [`Model::Pool`]'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// Worker threads: all of them for a fixed pool, the fewest for one
    /// that adapts (see `max_threads`).
    pub threads: usize,
    /// The most workers the pool grows to while every worker is busy and
    /// clients wait; equal to `threads` for a fixed pool.
    pub max_threads: usize,
    /// How long a worker beyond `threads` may sit idle before it leaves.
    pub keep_alive: Duration,
    /// Clients the hand-off holds while every worker is busy. Zero is a
    /// rendezvous: the accept loop waits for a free worker and further
    /// clients wait in the kernel's listen backlog, as in the article.
    pub queue: usize,
    /// Stack size of each worker (see [`ThreadSettings::stack_size`]).
    pub stack_size: Option<usize>,
}

/// [`Model::Event`]'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EventSettings {
    /// Event loops, each a thread.
    pub loops: usize,
    /// Answers held for one client before the loop stops reading from it
    /// until they drain.
    pub outbound_cap: usize,
}

/// [`Model::Async`]'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncSettings {
    /// Runtime threads.
    pub workers: usize,
}

/// [`Model::Uring`]'s settings.
#[derive(Clone, Debug, PartialEq)]
pub struct UringSettings {
    /// Rings, each a thread.
    pub rings: usize,
    /// Answers held for one client before the ring stops receiving from
    /// it until they drain.
    pub outbound_cap: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            threads: 64,
            max_threads: 64,
            keep_alive: Duration::from_secs(10),
            queue: 0,
            stack_size: None,
        }
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            loops: cores(),
            outbound_cap: 64 * 1024,
        }
    }
}

impl Default for UringSettings {
    fn default() -> Self {
        UringSettings {
            rings: cores(),
            outbound_cap: 64 * 1024,
        }
    }
}

impl Default for AsyncSettings {
    fn default() -> Self {
        AsyncSettings { workers: cores() }
    }
}

impl Settings {
    /// The defaults of `model`.
    pub fn new(model: Model) -> Self {
        match model {
            Model::Sequential => Settings::Sequential,
            Model::Thread => Settings::Thread(ThreadSettings::default()),
            Model::Pool => Settings::Pool(PoolSettings::default()),
            Model::Event => Settings::Event(EventSettings::default()),
            Model::Async => Settings::Async(AsyncSettings::default()),
            Model::Uring => Settings::Uring(UringSettings::default()),
        }
    }

    /// Whose settings these are.
    pub fn model(&self) -> Model {
        match self {
            Settings::Sequential => Model::Sequential,
            Settings::Thread(_) => Model::Thread,
            Settings::Pool(_) => Model::Pool,
            Settings::Event(_) => Model::Event,
            Settings::Async(_) => Model::Async,
            Settings::Uring(_) => Model::Uring,
        }
    }
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

/// What each setting may be. The pool's hand-off slots are allocated up
/// front, so a mistyped queue length must not ask for terabytes.
pub mod limits {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// Pool workers (`--threads`, `--max-threads`).
    pub const THREADS: RangeInclusive<usize> = 1..=100_000;
    /// The pool's hand-off (`--queue`).
    pub const QUEUE: RangeInclusive<usize> = 0..=100_000;
    /// Event loops, async workers and rings (`--loops`, `--workers`,
    /// `--rings`).
    pub const LOOPS: RangeInclusive<usize> = 1..=1024;
    /// Answers held per client (`--outbound-cap`), in bytes.
    pub const OUTBOUND_CAP: RangeInclusive<usize> = 1..=1 << 30;
    /// A thread's stack (`--stack-kib`), in bytes: from the least a
    /// thread runs on to 1 TiB, more than any machine this runs on can
    /// map (a thread that cannot be made costs only its client).
    pub const STACK: RangeInclusive<usize> = 16 << 10..=1 << 40;
    /// Clients at once (`--max-conns`).
    pub const MAX_CONNS: RangeInclusive<usize> = 1..=10_000_000;
    /// Any time setting: a year is more than any of them needs, and far
    /// enough from the limits of `Instant` arithmetic that adding it to
    /// now cannot overflow.
    pub const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
}

/// What a server is asked to be.
#[derive(Clone, Debug)]
pub struct Config {
    /// The model, with the settings that are its own.
    pub settings: Settings,
    /// The protocol spoken to clients.
    pub protocol: Protocol,
    /// After a shutdown signal, how long clients being served may go on
    /// before they are closed.
    pub drain_timeout: Duration,
    /// The most clients served at once; see [`OverLimit`] for what happens
    /// to the next one.
    pub max_conns: usize,
    /// What the server does with a client over [`Config::max_conns`].
    pub over_limit: OverLimit,
    /// Close a client that sends nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// Close a client that takes none of its answers for this long.
    pub write_timeout: Option<Duration>,
    /// Log a line of live figures this often.
    pub stats_interval: Option<Duration>,
}

/// What is wrong with a [`Config`]: a setting out of range or given to a
/// model it does not belong to (which flag, what it was, what is allowed),
/// or a model this machine cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The command-line flag of the setting (`--model` when the model
    /// cannot run here).
    pub flag: &'static str,
    /// What is wrong and what is allowed instead.
    pub message: String,
    unavailable: bool,
}

impl ConfigError {
    fn invalid(flag: &'static str, message: String) -> Self {
        ConfigError {
            flag,
            message,
            unavailable: false,
        }
    }

    /// Whether the settings are right but the machine cannot run the
    /// model (io_uring refused): not a usage error, but the reason the
    /// server cannot start.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unavailable {
            f.write_str(&self.message)
        } else {
            write!(f, "{} {}", self.flag, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn within(
    flag: &'static str,
    value: usize,
    range: RangeInclusive<usize>,
    unit: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::invalid(
        flag,
        format!(
            "{value} is out of range: give {} to {}{unit}",
            range.start(),
            range.end()
        ),
    ))
}

/// Checks a time setting: at most a year, and more than nothing unless
/// `zero_allowed`.
pub fn time(flag: &'static str, value: Duration, zero_allowed: bool) -> Result<(), ConfigError> {
    let shortest = if zero_allowed { "0" } else { "more than 0" };
    if (value.is_zero() && !zero_allowed) || value > limits::LONGEST {
        return Err(ConfigError::invalid(
            flag,
            format!(
                "{} s is out of range: give {shortest}, up to {} seconds (a year)",
                value.as_secs_f64(),
                limits::LONGEST.as_secs()
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// The defaults for `model`: 64 pool workers, a rendezvous hand-off,
    /// a five-second drain, an event loop, async worker or ring per core, a
    /// 64 KiB outbound cap, 10,000 clients at once, a 30 s write timeout.
    pub fn new(model: Model) -> Self {
        Config {
            settings: Settings::new(model),
            protocol: Protocol::Bytes,
            drain_timeout: Duration::from_secs(5),
            max_conns: DEFAULT_MAX_CONNS,
            over_limit: OverLimit::Wait,
            idle_timeout: None,
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            stats_interval: None,
        }
    }

    /// The model.
    pub fn model(&self) -> Model {
        self.settings.model()
    }

    /// A fixed pool of `threads` workers, for a pool; other models have no
    /// workers, and are left as they are, so that a test looping over
    /// [`Model::ALL`] can say it once.
    pub fn threads(mut self, threads: usize) -> Self {
        if let Settings::Pool(pool) = &mut self.settings {
            pool.threads = threads;
            pool.max_threads = threads;
        }
        self
    }

    /// Sets [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The pool's settings, when the model is the pool.
    pub fn pool_mut(&mut self) -> Option<&mut PoolSettings> {
        match &mut self.settings {
            Settings::Pool(pool) => Some(pool),
            _ => None,
        }
    }

    /// The event loops' settings, when the model is event.
    pub fn event_mut(&mut self) -> Option<&mut EventSettings> {
        match &mut self.settings {
            Settings::Event(event) => Some(event),
            _ => None,
        }
    }

    /// The rings' settings, when the model is uring.
    pub fn uring_mut(&mut self) -> Option<&mut UringSettings> {
        match &mut self.settings {
            Settings::Uring(uring) => Some(uring),
            _ => None,
        }
    }

    /// The stack of each thread that serves one client at a time (client
    /// threads, pool workers); `None` for Rust's default.
    pub fn stack_size(&self) -> Option<usize> {
        match &self.settings {
            Settings::Thread(t) => t.stack_size,
            Settings::Pool(p) => p.stack_size,
            _ => None,
        }
    }

    /// The one check of a configuration: a [`ValidConfig`], or what is
    /// wrong, naming the flag and what is allowed, or why this machine
    /// cannot run the model.
    pub fn check(self) -> Result<ValidConfig, ConfigError> {
        self.within_ranges()?;
        let model = self.model();
        model.available().map_err(|e| ConfigError {
            flag: "--model",
            message: e.to_string(),
            unavailable: true,
        })?;
        Ok(ValidConfig(self))
    }

    fn within_ranges(&self) -> Result<(), ConfigError> {
        within("--max-conns", self.max_conns, limits::MAX_CONNS, "")?;
        time("--drain-timeout", self.drain_timeout, true)?;
        for (flag, value) in [
            ("--idle-timeout", self.idle_timeout),
            ("--write-timeout", self.write_timeout),
            ("--stats-interval", self.stats_interval),
        ] {
            if let Some(value) = value {
                time(flag, value, false)?;
            }
        }
        let stack = |size: Option<usize>| match size {
            Some(bytes) if !limits::STACK.contains(&bytes) => Err(ConfigError::invalid(
                "--stack-kib",
                format!(
                    "{} is out of range: give {} to {} KiB",
                    bytes / 1024,
                    limits::STACK.start() / 1024,
                    limits::STACK.end() / 1024
                ),
            )),
            _ => Ok(()),
        };
        match &self.settings {
            Settings::Sequential => Ok(()),
            Settings::Thread(t) => stack(t.stack_size),
            Settings::Pool(p) => {
                within("--threads", p.threads, limits::THREADS, "")?;
                within("--max-threads", p.max_threads, limits::THREADS, "")?;
                if p.max_threads < p.threads {
                    return Err(ConfigError::invalid(
                        "--max-threads",
                        format!(
                            "{} is below the pool's {} threads: give at least that (or lower \
                             --threads)",
                            p.max_threads, p.threads
                        ),
                    ));
                }
                within("--queue", p.queue, limits::QUEUE, "")?;
                time("--keep-alive", p.keep_alive, false)?;
                stack(p.stack_size)
            }
            Settings::Event(e) => {
                within("--loops", e.loops, limits::LOOPS, "")?;
                within(
                    "--outbound-cap",
                    e.outbound_cap,
                    limits::OUTBOUND_CAP,
                    " bytes",
                )
            }
            Settings::Async(a) => within("--workers", a.workers, limits::LOOPS, ""),
            Settings::Uring(u) => {
                within("--rings", u.rings, limits::LOOPS, "")?;
                within(
                    "--outbound-cap",
                    u.outbound_cap,
                    limits::OUTBOUND_CAP,
                    " bytes",
                )
            }
        }
    }

    /// A builder for one of this server's client threads or workers.
    pub(crate) fn thread_builder(&self, name: String) -> std::thread::Builder {
        let builder = std::thread::Builder::new().name(name);
        match self.stack_size() {
            Some(size) => builder.stack_size(size),
            None => builder,
        }
    }

    /// A short description for banners and chart titles, such as
    /// `model pool, 64 threads`.
    pub fn describe(&self) -> String {
        let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let model = match &self.settings {
            Settings::Pool(p) if p.max_threads > p.threads => {
                format!("model pool, {} to {} threads", p.threads, p.max_threads)
            }
            Settings::Pool(p) => format!("model pool, {}", count(p.threads, "thread")),
            Settings::Event(e) => format!("model event, {}", count(e.loops, "loop")),
            Settings::Async(a) => format!("model async, {}", count(a.workers, "worker")),
            Settings::Uring(u) => format!("model uring, {}", count(u.rings, "ring")),
            other => format!("model {}", other.model()),
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

/// A [`Config`] that [`Config::check`] has passed: every deadline
/// `now + timeout` is representable, every count in range, and the model
/// runs here. Read it as a `Config`; it cannot be changed.
#[derive(Clone, Debug)]
pub struct ValidConfig(Config);

impl Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl TryFrom<Config> for ValidConfig {
    type Error = ConfigError;

    fn try_from(config: Config) -> Result<Self, ConfigError> {
        config.check()
    }
}

/// One model's own setting, as the command line gives it: what
/// [`Config::set`] applies to the model that has it. Which setting is
/// whose is said once, by [`Settings`]; nothing else restates it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting {
    /// A fixed pool of this many workers (`--threads`).
    Threads(usize),
    /// The most workers an adaptive pool grows to (`--max-threads`).
    MaxThreads(usize),
    /// How long an extra worker may idle (`--keep-alive`).
    KeepAlive(Duration),
    /// The pool's hand-off (`--queue`).
    Queue(usize),
    /// Each client thread's or worker's stack, in bytes (`--stack-kib`).
    StackSize(usize),
    /// Event loops (`--loops`).
    Loops(usize),
    /// Answers held per client (`--outbound-cap`).
    OutboundCap(usize),
    /// Async runtime threads (`--workers`).
    Workers(usize),
    /// io_uring rings (`--rings`).
    Rings(usize),
}

impl Setting {
    /// The flag that gives it.
    pub fn flag(self) -> &'static str {
        match self {
            Setting::Threads(_) => "--threads",
            Setting::MaxThreads(_) => "--max-threads",
            Setting::KeepAlive(_) => "--keep-alive",
            Setting::Queue(_) => "--queue",
            Setting::StackSize(_) => "--stack-kib",
            Setting::Loops(_) => "--loops",
            Setting::OutboundCap(_) => "--outbound-cap",
            Setting::Workers(_) => "--workers",
            Setting::Rings(_) => "--rings",
        }
    }
}

impl Settings {
    /// Applies `setting` if it is one of these settings'; false if not.
    fn apply(&mut self, setting: Setting) -> bool {
        match (self, setting) {
            (Settings::Pool(p), Setting::Threads(n)) => {
                // A fixed pool, unless --max-threads says otherwise.
                p.threads = n;
                p.max_threads = n;
            }
            (Settings::Pool(p), Setting::MaxThreads(n)) => p.max_threads = n,
            (Settings::Pool(p), Setting::KeepAlive(t)) => p.keep_alive = t,
            (Settings::Pool(p), Setting::Queue(n)) => p.queue = n,
            (Settings::Pool(p), Setting::StackSize(n)) => p.stack_size = Some(n),
            (Settings::Thread(t), Setting::StackSize(n)) => t.stack_size = Some(n),
            (Settings::Event(e), Setting::Loops(n)) => e.loops = n,
            (Settings::Event(e), Setting::OutboundCap(n)) => e.outbound_cap = n,
            (Settings::Uring(u), Setting::OutboundCap(n)) => u.outbound_cap = n,
            (Settings::Async(a), Setting::Workers(n)) => a.workers = n,
            (Settings::Uring(u), Setting::Rings(n)) => u.rings = n,
            _ => return false,
        }
        true
    }
}

impl Config {
    /// Applies one model's own setting, or says that it is another
    /// model's and whose. Ranges are left to [`Config::check`]. Apply
    /// `--threads` before `--max-threads`: the first makes a fixed pool.
    pub fn set(&mut self, setting: Setting) -> Result<(), ConfigError> {
        if self.settings.apply(setting) {
            return Ok(());
        }
        let owners: Vec<String> = Model::ALL
            .into_iter()
            .filter(|&m| Settings::new(m).apply(setting))
            .map(|m| format!("--model {m}"))
            .collect();
        Err(ConfigError::invalid(
            setting.flag(),
            format!(
                "does not apply to --model {}; it is for {}",
                self.model(),
                owners.join(" or ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_their_own_check() {
        for model in Model::ALL {
            let config = Config::new(model);
            assert_eq!(config.model(), model);
            assert_eq!(config.within_ranges(), Ok(()), "{model}");
        }
    }

    #[test]
    fn out_of_range_settings_name_their_flag_and_what_is_allowed() {
        let pool = |f: fn(&mut PoolSettings)| {
            let mut c = Config::new(Model::Pool);
            f(c.pool_mut().unwrap());
            c.clone().check().unwrap_err()
        };
        let e = pool(|p| p.threads = 0);
        assert_eq!(e.flag, "--threads");
        assert!(e.message.contains("give 1 to 100000"), "{e}");
        let e = pool(|p| p.max_threads = 2);
        assert_eq!(e.flag, "--max-threads");
        assert!(e.message.contains("below the pool's 64 threads"), "{e}");
        let e = pool(|p| p.queue = 1 << 40);
        assert_eq!(e.flag, "--queue");

        let mut c = Config::new(Model::Event);
        c.event_mut().unwrap().loops = 0;
        assert_eq!(c.clone().check().unwrap_err().flag, "--loops");

        let mut c = Config::new(Model::Uring);
        c.uring_mut().unwrap().rings = 0;
        assert_eq!(c.clone().check().unwrap_err().flag, "--rings");
        c.uring_mut().unwrap().rings = 1;
        c.uring_mut().unwrap().outbound_cap = 0;
        let e = c.clone().check().unwrap_err();
        assert_eq!(e.flag, "--outbound-cap");
        assert!(e.message.contains("bytes"), "{e}");
        c.uring_mut().unwrap().outbound_cap = 1;
        assert_eq!(c.describe(), "model uring, 1 ring");

        let mut c = Config::new(Model::Thread);
        c.idle_timeout = Some(Duration::ZERO);
        let e = c.clone().check().unwrap_err();
        assert_eq!(e.flag, "--idle-timeout");
        assert!(e.message.contains("more than 0"), "{e}");
        c.idle_timeout = None;
        c.drain_timeout = limits::LONGEST * 2;
        assert_eq!(c.clone().check().unwrap_err().flag, "--drain-timeout");
    }

    #[test]
    fn a_model_that_cannot_run_names_the_others() {
        let e = std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "io_uring is unavailable here",
        );
        let m = with_others(Model::Uring, e);
        assert_eq!(m.kind(), std::io::ErrorKind::Unsupported);
        assert!(
            m.to_string()
                .contains("--model sequential, thread, pool, event, async"),
            "names the others: {m}"
        );
    }

    #[test]
    fn a_setting_goes_to_its_model_or_names_whose_it_is() {
        let mut c = Config::new(Model::Pool);
        c.set(Setting::Threads(3)).unwrap();
        c.set(Setting::MaxThreads(9)).unwrap();
        c.set(Setting::StackSize(64 << 10)).unwrap();
        let Settings::Pool(p) = &c.settings else {
            unreachable!()
        };
        assert_eq!(
            (p.threads, p.max_threads, p.stack_size),
            (3, 9, Some(64 << 10))
        );

        let e = c.set(Setting::OutboundCap(1)).unwrap_err();
        assert_eq!(e.flag, "--outbound-cap");
        assert_eq!(
            e.message,
            "does not apply to --model pool; it is for --model event or --model uring"
        );
        let mut c = Config::new(Model::Sequential);
        let e = c.set(Setting::StackSize(64 << 10)).unwrap_err();
        assert!(
            e.message
                .ends_with("it is for --model thread or --model pool"),
            "{e}"
        );
        assert_eq!(c.settings, Settings::Sequential, "nothing was changed");
    }

    #[test]
    fn a_pool_size_is_only_a_pools() {
        assert_eq!(
            Config::new(Model::Event).threads(2).settings,
            Settings::new(Model::Event)
        );
        let Settings::Pool(p) = Config::new(Model::Pool).threads(2).settings else {
            unreachable!()
        };
        assert_eq!((p.threads, p.max_threads), (2, 2));
    }
}
