//! How a client run goes: how many connections, on what schedule, with
//! what patience. Apart so that the connections' code and the run's both
//! take it from below.

use std::time::Duration;

use super::script::Script;

/// How a run goes.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrent connections (`-n`).
    pub connections: usize,
    /// What each connection sends, and when.
    pub script: Script,
    /// Connection `i` starts connecting `i * stagger` after the run starts.
    pub stagger: Duration,
    /// The longest any one wait may take: to connect, for the `*`, for a
    /// write, and after the last step for the rest of the reply.
    pub timeout: Duration,
    /// Print the log to standard error as it happens (it is always kept in
    /// [`Report::log`](super::Report::log)).
    pub echo: bool,
    /// What the server is, for reports and chart titles (such as
    /// `model pool, 2 threads`); unknown for a server we did not start.
    pub server: Option<String>,
}

impl Options {
    /// `connections` connections on the article's schedule, all at once,
    /// waiting up to 60 s for anything, not echoing the log.
    pub fn new(connections: usize) -> Self {
        Options {
            connections,
            script: Script::article(),
            stagger: Duration::ZERO,
            timeout: Duration::from_secs(60),
            echo: false,
            server: None,
        }
    }

    /// Sets [`Options::script`].
    pub fn script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    /// Sets [`Options::stagger`].
    pub fn stagger(mut self, stagger: Duration) -> Self {
        self.stagger = stagger;
        self
    }

    /// Sets [`Options::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`Options::echo`].
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Sets [`Options::server`].
    pub fn server(mut self, description: impl Into<String>) -> Self {
        self.server = Some(description.into());
        self
    }
}
