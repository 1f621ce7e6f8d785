//! What `concur bench` can run: the scenarios and their knobs.

use std::time::Duration;

use serde::Serialize;

/// What a load does; `concur bench SCENARIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// C connections each stream one endless message in writes of the
    /// given size; MB/s of checked answer.
    Stream,
    /// C connections in a closed loop of `^` + S bytes + `$` and the
    /// answer; requests/s and latency.
    Pingpong,
    /// The same requests sent on a schedule (a fixed total rate), latency
    /// measured from each request's intended send time.
    Rate,
    /// W workers each connect, get `*`, send `^a$`, read `b` and close, in
    /// a loop; connections/s.
    Churn,
    /// N idle clients held open; the server's memory and threads, and how
    /// fast a newcomer is served meanwhile.
    Idle,
    /// The primality protocol: C clients ask about a large number in a
    /// loop while one probe asks about small ones; answers/s and the
    /// probe's latency.
    Cpu,
}

impl Scenario {
    /// Every scenario, in the order of the docs.
    pub const ALL: [Scenario; 6] = [
        Scenario::Stream,
        Scenario::Pingpong,
        Scenario::Rate,
        Scenario::Churn,
        Scenario::Idle,
        Scenario::Cpu,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Stream => "stream",
            Scenario::Pingpong => "pingpong",
            Scenario::Rate => "rate",
            Scenario::Churn => "churn",
            Scenario::Idle => "idle",
            Scenario::Cpu => "cpu",
        }
    }

    /// The unit of the headline figure.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Stream => "MB/s",
            Scenario::Pingpong | Scenario::Rate => "req/s",
            Scenario::Churn => "conn/s",
            Scenario::Idle => "B/client",
            Scenario::Cpu => "answers/s",
        }
    }

    /// What the server's CPU time and system calls are counted per: the
    /// unit of the headline figure's work.
    pub fn work_unit(self) -> &'static str {
        match self {
            Scenario::Stream => "MB",
            Scenario::Pingpong | Scenario::Rate => "req",
            Scenario::Churn => "conn",
            Scenario::Idle => "client",
            Scenario::Cpu => "answer",
        }
    }

    /// What the connection count means in this scenario.
    pub fn count_name(self) -> &'static str {
        match self {
            Scenario::Churn => "workers",
            Scenario::Idle => "idle clients",
            Scenario::Cpu => "heavy clients",
            _ => "connections",
        }
    }

    /// The connection count when none is given.
    pub fn default_count(self) -> usize {
        match self {
            Scenario::Stream => 1,
            Scenario::Pingpong | Scenario::Cpu => 64,
            Scenario::Rate => 8,
            Scenario::Churn => 4,
            Scenario::Idle => 10_000,
        }
    }

    /// Whether the server must speak the primality protocol.
    pub fn prime(self) -> bool {
        self == Scenario::Cpu
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The knobs of a timed load.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    /// How long each run lasts.
    #[serde(serialize_with = "secs")]
    pub secs: Duration,
    /// Bytes per write (`stream`) or message payload (`pingpong`, `rate`).
    pub size: usize,
    /// Requests per second over all connections (`rate`).
    pub rate: u64,
    /// The number the heavy clients of `cpu` ask about.
    pub number: u64,
    /// Pause between two probes of `cpu`.
    #[serde(serialize_with = "secs")]
    pub probe_pause: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The largest prime below 10^14: five million trial divisions,
/// milliseconds of one core; "a non-trivial amount of CPU-bound
/// computation" per request.
pub const DEFAULT_NUMBER: u64 = 99_999_999_999_973;

impl Params {
    /// The defaults for `scenario`, running for `secs`.
    pub fn new(scenario: Scenario, secs: Duration) -> Self {
        Params {
            secs,
            size: match scenario {
                Scenario::Stream => 64 * 1024,
                _ => 16,
            },
            rate: 10_000,
            number: DEFAULT_NUMBER,
            probe_pause: Duration::from_millis(10),
        }
    }
}
