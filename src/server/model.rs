//! The concurrency models, and the settings that are each one's own, so
//! that a pool's queue cannot be given to an event loop. Which setting is
//! whose is said here once ([`Settings::apply`]); the command line and the
//! configuration's check only ask.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::kernel;

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

/// One model's own setting, as the command line gives it: what
/// [`Config::set`](super::Config::set) applies to the model that has it. Which setting is
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
    pub(crate) fn apply(&mut self, setting: Setting) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
