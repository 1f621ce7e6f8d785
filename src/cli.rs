//! The command line: what each subcommand takes, and how a value is read.
//! Ranges of the server's settings and of the benchmarks are not checked
//! here but by the library (`Config::check`, `Options::check`), once; its
//! errors come back through clap, with the usage line.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use concur::bench::Scenario;
use concur::http;
use concur::server::{self, Model, OverLimit, Protocol, Setting, listener};

#[derive(Parser)]
#[command(
    name = "concur",
    version,
    about = "Concurrent TCP servers from 'Concurrent servers, part 2: threads', in Rust",
    long_about = "Concurrent TCP servers from Eli Bendersky's 'Concurrent servers, part 2: \
                  threads', in Rust: one small stateful byte protocol served by several \
                  concurrency models side by side.\n\n\
                  The protocol: the server greets each client with '*'; between '^' and '$' \
                  every byte b is answered with b+1. Try it:\n\n    \
                  concur serve 9090   and, in another terminal,   nc localhost 9090"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run a server until SIGINT or SIGTERM, then drain and print a summary.
    Serve(ServeArgs),
    /// The article's simulated client: N connections on its schedule, every
    /// reply checked against the protocol.
    Client(ClientArgs),
    /// The article's experiment: sequential, thread and pool -n 2 servers
    /// (and event, async, uring), three clients against each, a table and a time
    /// chart per server; with --live, on one page in a browser as it happens.
    Demo(DemoArgs),
    /// The footnote's experiment: start N idle threads and measure what
    /// they cost the process.
    Threads(ThreadsArgs),
    /// Benchmark models side by side against the echo and floor references:
    /// a table, and with --out, results.json and SVG plots.
    Bench(BenchArgs),
    /// The echo reference that `concur bench` measures the models against
    /// (a thread per client, every byte sent back unchanged), as a process
    /// of its own; it runs until killed.
    #[command(hide = true)]
    Echo(ReferenceArgs),
    /// The floor reference that `concur bench` runs beside the models: the
    /// least server that answers the protocol (one thread, one epoll loop,
    /// one pass of the protocol core and one write per read, no limits);
    /// it runs until killed.
    #[command(hide = true)]
    Floor(ReferenceArgs),
    /// The io_uring floor that `concur bench` runs beside the models: the
    /// simplest io_uring server that answers the protocol (one ring, a
    /// single-shot receive into each client's buffer, the answer sent
    /// whole, then the next receive); it runs until killed.
    #[command(hide = true, name = "floor-uring")]
    FloorUring(ReferenceArgs),
}

#[derive(Args)]
pub(crate) struct ReferenceArgs {
    /// Port to listen on, on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
}

/// `concur bench`'s first argument: a scenario, or a sweep of one. Its
/// values and their help are the scenarios' own, plus `sweep`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BenchWhat {
    Run(Scenario),
    Sweep,
}

impl clap::ValueEnum for BenchWhat {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [BenchWhat; Scenario::ALL.len() + 1] = {
            let mut all = [BenchWhat::Sweep; Scenario::ALL.len() + 1];
            let mut i = 0;
            while i < Scenario::ALL.len() {
                all[i] = BenchWhat::Run(Scenario::ALL[i]);
                i += 1;
            }
            all
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            BenchWhat::Run(scenario) => scenario.to_possible_value(),
            BenchWhat::Sweep => Some(
                clap::builder::PossibleValue::new("sweep")
                    .help("--of SCENARIO over several connection counts (-c 1,8,64,512)"),
            ),
        }
    }
}

#[derive(Args)]
#[command(
    after_help = "Every received byte is checked; a wrong one is an error, counted and \
                        shown, and the exit code is 1. Only servers on this machine are measured.\n\n\
                        'srv µs/req' and 'calls/req' (per MB when streaming, per conn for churn, \
                        per answer for cpu) are what a unit of work cost each server: its CPU time \
                        and its system calls, all of them, counted by the kernel where this user may \
                        (root or CAP_PERFMON; otherwise the table says why they are missing)."
)]
pub(crate) struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub(crate) scenario: BenchWhat,

    /// The scenario a sweep runs [default: pingpong] (only with sweep).
    #[arg(long, value_enum, value_name = "SCENARIO")]
    pub(crate) of: Option<Scenario>,

    /// Connections (churn: workers; idle: idle clients; cpu: heavy
    /// clients), comma-separated for several [default: the scenario's;
    /// sweep: 1,8,64,512].
    #[arg(
        short = 'c',
        long = "connections",
        value_name = "N,...",
        value_delimiter = ','
    )]
    pub(crate) counts: Vec<usize>,

    /// Models to start and measure, comma-separated [default: all six;
    /// none with --addr].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODEL,...")]
    pub(crate) models: Vec<Model>,

    /// Also measure the server of the protocol listening here (a loopback
    /// address).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) addr: Option<std::net::SocketAddr>,

    /// Leave out the two references run beside the models: the echo
    /// (throughput's yardstick, `vs ref`) and the floor (the least server
    /// that answers the protocol: CPU's and system calls' yardstick).
    #[arg(long)]
    pub(crate) no_reference: bool,

    /// Do not count the servers' system calls. They are counted by the
    /// kernel (a perf tracepoint, where this user may use it), which makes
    /// every system call on the machine a little slower while it runs.
    #[arg(long)]
    pub(crate) no_syscalls: bool,

    /// Seconds per run (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) secs: Duration,

    /// Runs of each server at each count, interleaved.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) repeat: usize,

    /// Bytes per write (stream) or payload bytes (pingpong, rate)
    /// [default: 65536 for stream, 16 otherwise].
    #[arg(long, value_name = "BYTES")]
    pub(crate) size: Option<usize>,

    /// Requests per second over all connections (only with rate).
    #[arg(long, value_name = "N")]
    pub(crate) rate: Option<u64>,

    /// The number the heavy clients ask about (only with cpu) [default:
    /// 99999999999973, a prime: five million trial divisions].
    #[arg(long, value_name = "N")]
    pub(crate) number: Option<u64>,

    /// Workers of the pool model [default: 64].
    #[arg(long, value_name = "N")]
    pub(crate) pool_threads: Option<usize>,

    /// What drives the connections, comma-separated for several (each
    /// run in turn, side by side in the table): `engine`, a few event-loop
    /// threads; `threads`, blocking sockets with a thread per connection
    /// (two when streaming: a writer and a reader), as most hand-written
    /// clients are (stream and pingpong only).
    #[arg(
        long = "client",
        value_enum,
        value_delimiter = ',',
        value_name = "SHAPE,...",
        default_value = "engine"
    )]
    pub(crate) clients: Vec<concur::bench::engine::ClientShape>,

    /// Threads of the engine, each an event loop driving its share of the
    /// connections [default: half the cores, at least 1].
    #[arg(long, value_name = "N")]
    pub(crate) client_threads: Option<usize>,

    /// Pin the servers to these CPUs, as taskset -c takes them (0, 0,1,
    /// 0-1) [default: any].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub(crate) server_cpus: Option<CpuList>,

    /// Pin the load generator to these CPUs [default: any].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    pub(crate) client_cpus: Option<CpuList>,

    /// Write results.json and the plots here (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<std::path::PathBuf>,

    /// No progress bar.
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

#[derive(Args)]
#[command(
    after_help = "Script format (--script): one step a line, '#' comments:\n  \
                        send BYTES   one write; escapes \\\\ \\n \\r \\t \\s \\xNN\n  \
                        pause SECS   wait, fractions allowed\n\
                        The default is the article's: send ^abc$de^abte$f, pause 1.0, \
                        send xyz^123, pause 1.0, send 25$^ab0000$abab, pause 0.2."
)]
pub(crate) struct ClientArgs {
    /// Server host name or address.
    pub(crate) host: String,

    /// Server port.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: u16,

    /// Concurrent connections.
    #[arg(short = 'n', long = "connections", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) connections: u32,

    /// Run this schedule instead of the article's (format below).
    #[arg(long, value_name = "FILE")]
    pub(crate) script: Option<std::path::PathBuf>,

    /// Milliseconds between one connection's arrival and the next.
    #[arg(long, value_name = "MS", default_value = "0", allow_negative_numbers = true,
          value_parser = parse_millis)]
    pub(crate) stagger: Duration,

    /// Longest wait, in seconds, to connect, for the '*', for a write, and
    /// after the last step for the rest of the reply.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    pub(crate) timeout: Duration,

    /// Write each connection's timeline to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<std::path::PathBuf>,

    /// Draw the time chart of the run to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    pub(crate) chart: Option<std::path::PathBuf>,

    /// What the server is, for the chart's title and the JSON (such as
    /// "model pool, 2 threads").
    #[arg(long, value_name = "TEXT")]
    pub(crate) label: Option<String>,

    /// No log lines; only the elapsed time and errors.
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Directory for the charts and timelines (created if missing).
    #[arg(long, value_name = "DIR", default_value = "demo")]
    pub(crate) out: std::path::PathBuf,

    /// Serve the experiment live on one page at this address, such as
    /// 127.0.0.1:8080, instead of writing charts: a round starts once the
    /// page is open, and again while it stays open, until Ctrl-C.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "out")]
    pub(crate) live: Option<http::Addr>,
}

#[derive(Args)]
pub(crate) struct ThreadsArgs {
    /// Threads to start.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) threads: u32,

    /// Seconds to measure once they are all started; then it exits.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    pub(crate) secs: Duration,

    /// Stack size of each thread in KiB [default: Rust's, 2048].
    #[arg(long = "stack-kib", value_name = "K", value_parser = parse_stack_kib)]
    pub(crate) stack: Option<usize>,
}

#[derive(Args)]
#[command(
    after_help = "Under systemd (socket activation: LISTEN_FDS, LISTEN_PID) it serves the \
                        listening socket systemd passes, and --host, --port, --backlog and \
                        --reuseport are not used; it tells systemd READY=1 once it takes clients \
                        and STOPPING=1 when the drain starts (deploy/systemd/ has the units).\n\n\
                        Exit status: 0 after a drain (the summary on standard output); \
                        1 if it cannot listen or set itself up; 2 for a bad flag; \
                        128 + the signal's number (130 for SIGINT, 143 for SIGTERM) when a \
                        second signal cuts the drain short, after one line of the counters so far."
)]
pub(crate) struct ServeArgs {
    /// Concurrency model.
    #[arg(long, value_enum, default_value_t = Model::Pool)]
    pub(crate) model: Model,

    /// Protocol: `bytes` is PROTOCOL.md (`*`, then `^...$` messages
    /// answered byte + 1); `prime` answers each line holding a number with
    /// `prime` or `composite` (`neither` for 0 and 1), by trial division
    /// (CPU-bound on purpose).
    #[arg(long, value_enum, default_value_t = Protocol::Bytes)]
    pub(crate) protocol: Protocol,

    /// Each model's own settings.
    #[command(flatten)]
    pub(crate) own: ModelFlags,

    /// Address to listen on: an IPv4 or IPv6 address, or a name. A name
    /// is resolved and only the first of its addresses that can be bound
    /// is listened on (`localhost`: 127.0.0.1, not also ::1); the banner
    /// says which.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,

    /// Port to listen on; 0 picks a free one (the banner shows which).
    #[arg(long, default_value_t = 9090, conflicts_with = "port_arg")]
    pub(crate) port: u16,

    /// The port, given bare as the article's servers take it.
    #[arg(value_name = "PORT")]
    pub(crate) port_arg: Option<u16>,

    /// The most clients served at once.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNS)]
    pub(crate) max_conns: usize,

    /// What a client over --max-conns gets: `wait` in the listen backlog
    /// until a client leaves, or `reject`ion (closed at once, no `*`).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OverLimit::Wait)]
    pub(crate) over_limit: OverLimit,

    /// Close a client that sends nothing for this many seconds [default:
    /// off].
    #[arg(long, value_name = "SECS", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) idle_timeout: Option<Duration>,

    /// Close a client that takes none of its answers for this many
    /// seconds; `off` to wait forever.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_timeout,
          allow_negative_numbers = true)]
    pub(crate) write_timeout: Timeout,

    /// Log the live figures (clients now, accepted, rejected, timed out,
    /// bytes in and out) every this many seconds [default: never].
    #[arg(long, value_name = "SECS", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) stats_interval: Option<Duration>,

    /// Length of the kernel's queue of connections not yet accepted.
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(i32).range(1..=65_535))]
    pub(crate) backlog: i32,

    /// Seconds that clients being served may go on after SIGINT/SIGTERM
    /// before they are closed (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) drain_timeout: Duration,

    /// Serve the operator's HTTP port on this address, such as
    /// 127.0.0.1:9100: Prometheus metrics at /metrics, and the live page
    /// (the article's time chart as clients come and go) at /, with its
    /// event stream at /events and a snapshot at /clients. Port 0 picks a
    /// free one, which the banner's second line names.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "metrics")]
    pub(crate) http: Option<http::Addr>,

    /// The older name of --http, which works the same.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics: Option<http::Addr>,

    /// Listen with SO_REUSEPORT, so that several `concur serve` processes
    /// (each given --reuseport) can serve one port; the kernel spreads new
    /// connections among them.
    #[arg(long)]
    pub(crate) reuseport: bool,

    /// No per-connection log lines (warnings and the summary still show).
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

/// The flags that are one model's own, one per [`Setting`]: which model
/// each belongs to is the library's to say ([`Config::set`](concur::server::Config::set)),
/// not restated here.
#[derive(Args)]
#[command(next_help_heading = "Each model's own settings")]
pub(crate) struct ModelFlags {
    /// Worker threads of the pool [default: 64]; with --max-threads, the
    /// fewest it shrinks to (only with --model pool).
    #[arg(short = 'n', long, visible_alias = "min-threads", value_name = "N")]
    pub(crate) threads: Option<usize>,

    /// Let the pool grow up to this many workers while every worker is
    /// busy and clients wait [default: --threads, a fixed pool] (only with
    /// --model pool).
    #[arg(long, value_name = "N")]
    pub(crate) max_threads: Option<usize>,

    /// Seconds a worker above --threads may sit idle before it leaves
    /// [default: 10] (only with --model pool).
    #[arg(long, value_name = "SECS", value_parser = parse_duration,
          allow_negative_numbers = true)]
    pub(crate) keep_alive: Option<Duration>,

    /// Clients the pool's hand-off holds while all workers are busy; 0 means
    /// the accept loop waits for a free worker and later clients wait in the
    /// listen backlog, as in the article [default: 0] (only with --model
    /// pool).
    #[arg(long, value_name = "Q")]
    pub(crate) queue: Option<usize>,

    /// Event loops, each a thread [default: the number of cores] (only
    /// with --model event).
    #[arg(long, value_name = "N")]
    pub(crate) loops: Option<usize>,

    /// Runtime threads [default: the number of cores] (only with --model
    /// async).
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,

    /// io_uring rings, each a thread [default: the number of cores] (only
    /// with --model uring).
    #[arg(long, value_name = "N")]
    pub(crate) rings: Option<usize>,

    /// Answer bytes held for one client before the server stops reading
    /// from it until they drain [default: 65536] (only with --model event
    /// or uring).
    #[arg(long, value_name = "BYTES")]
    pub(crate) outbound_cap: Option<usize>,

    /// Stack size of each client thread or pool worker in KiB [default:
    /// Rust's, 2048] (only with --model thread or pool).
    #[arg(long = "stack-kib", value_name = "K", value_parser = parse_stack_kib)]
    pub(crate) stack: Option<usize>,
}

impl ModelFlags {
    /// The settings given, `--threads` before `--max-threads` (the first
    /// makes a fixed pool, the second lets it grow).
    pub(crate) fn settings(&self) -> Vec<Setting> {
        [
            self.threads.map(Setting::Threads),
            self.max_threads.map(Setting::MaxThreads),
            self.keep_alive.map(Setting::KeepAlive),
            self.queue.map(Setting::Queue),
            self.stack.map(Setting::StackSize),
            self.loops.map(Setting::Loops),
            self.workers.map(Setting::Workers),
            self.rings.map(Setting::Rings),
            self.outbound_cap.map(Setting::OutboundCap),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl ServeArgs {
    /// The operator's HTTP port, if asked for, with the flag that asked.
    pub(crate) fn http(&self) -> Option<(&'static str, &http::Addr)> {
        let http = self.http.as_ref().map(|at| ("--http", at));
        http.or_else(|| self.metrics.as_ref().map(|at| ("--metrics", at)))
    }
}

/// CPUs as `taskset -c` lists them; a type of its own, since clap takes a
/// bare `Vec` for a flag given several times.
#[derive(Clone)]
pub(crate) struct CpuList(pub(crate) Vec<usize>);

pub(crate) fn parse_cpus(s: &str) -> Result<CpuList, String> {
    concur::bench::cpus::parse_list(s).map(CpuList)
}

/// A timeout that may be switched off.
#[derive(Clone, Copy)]
pub(crate) struct Timeout(pub(crate) Option<Duration>);

pub(crate) fn parse_timeout(s: &str) -> Result<Timeout, String> {
    if s == "off" {
        return Ok(Timeout(None));
    }
    parse_duration(s)
        .map(|d| Timeout(Some(d)))
        .map_err(|e| format!("{e}, or `off`"))
}

/// A thread stack given in whole KiB, as bytes; its range is the
/// server's to check.
pub(crate) fn parse_stack_kib(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .and_then(|k| k.checked_mul(1024))
        .ok_or_else(|| format!("{s:?} is not a whole number of KiB (such as 64 or 2048)"))
}

pub(crate) fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .ok()
        .filter(|ms| *ms <= 600_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is not a whole number of milliseconds from 0 to 600000"))
}

/// A duration: plain seconds as the article's tools take them (5, 0.5),
/// or with a unit (10s, 500ms, 2m). Whether it is in range is for whoever
/// uses it to say.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let what = || {
        format!(
            "{s:?} is not a number of seconds (such as 5 or 0.5) nor a duration (such as 10s, 500ms or 2m)"
        )
    };
    match s.parse::<f64>() {
        Ok(secs) if secs < 0.0 => Err(format!(
            "{s:?} is less than no time: give 0 or more seconds"
        )),
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| what()),
        Err(_) => humantime::parse_duration(s).map_err(|_| what()),
    }
}

/// A duration of more than no time, at most a year, for the flags whose
/// range nothing else checks (`client --timeout`, `threads --secs`).
pub(crate) fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > server::limits::LONGEST {
        return Err(format!(
            "{s:?} is out of range: give more than 0, up to {} seconds (a year)",
            server::limits::LONGEST.as_secs()
        ));
    }
    Ok(d)
}
