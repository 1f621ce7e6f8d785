//! What a server is asked to be: its [`Model`] with the settings that are
//! that model's own ([`Settings`], in `model`), and the settings every
//! model shares.
//!
//! A [`Config`] is what a user asks for; a [`ValidConfig`] is one that
//! [`Config::check`] has passed, the only kind a server runs. That one
//! function says what is wrong, naming the flag and what is allowed, and
//! whether this machine can run the model at all; nothing is clamped
//! behind the user's back.

use std::fmt;
use std::ops::{Deref, RangeInclusive};
use std::time::Duration;

use super::model::{EventSettings, Model, PoolSettings, Setting, Settings, UringSettings};
use super::responder::Protocol;

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
