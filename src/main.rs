//! The `concur` command: parsing, then a call into the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use concur::bench::Scenario;
use concur::server::{self, Config, Model, OverLimit, Protocol, listener};
use concur::shutdown::Shutdown;
use concur::threads;
use tracing_subscriber::EnvFilter;

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server until SIGINT or SIGTERM, then drain and print a summary.
    Serve(ServeArgs),
    /// The article's simulated client: N connections on its schedule, every
    /// reply checked against the protocol.
    Client(ClientArgs),
    /// The article's experiment: sequential, thread and pool -n 2 servers
    /// (and event, async), three clients against each, a table and a time
    /// chart per server.
    Demo(DemoArgs),
    /// The footnote's experiment: start N idle threads and measure what
    /// they cost the process.
    Threads(ThreadsArgs),
    /// Benchmark models side by side against the echo reference: a table,
    /// and with --out, results.json and SVG plots.
    Bench(BenchArgs),
    /// The echo reference that `concur bench` measures the models against
    /// (a thread per client, every byte sent back unchanged), as a process
    /// of its own; it runs until killed.
    #[command(hide = true)]
    Echo(EchoArgs),
}

#[derive(Args)]
struct EchoArgs {
    /// Port to listen on, on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// `concur bench`'s first argument: a scenario, or a sweep of one. Its
/// values and their help are the scenarios' own, plus `sweep`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchWhat {
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
                        shown, and the exit code is 1. Only servers on this machine are measured."
)]
struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    scenario: BenchWhat,

    /// The scenario a sweep runs [default: pingpong] (only with sweep).
    #[arg(long, value_enum, value_name = "SCENARIO")]
    of: Option<Scenario>,

    /// Connections (churn: workers; idle: idle clients; cpu: heavy
    /// clients), comma-separated for several [default: the scenario's;
    /// sweep: 1,8,64,512].
    #[arg(short = 'c', long = "connections", value_name = "N,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=concur::bench::run::MAX_COUNT as i64))]
    counts: Vec<u32>,

    /// Models to start and measure, comma-separated [default: all five;
    /// none with --addr].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODEL,...")]
    models: Vec<Model>,

    /// Also measure the server of the protocol listening here (a loopback
    /// address).
    #[arg(long, value_name = "IP:PORT")]
    addr: Option<std::net::SocketAddr>,

    /// Leave out the echo reference.
    #[arg(long)]
    no_reference: bool,

    /// Seconds per run (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    secs: Duration,

    /// Runs of each server at each count, interleaved.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,

    /// Bytes per write (stream) or payload bytes (pingpong, rate)
    /// [default: 65536 for stream, 16 otherwise].
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    size: Option<u64>,

    /// Requests per second over all connections (only with rate).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate: Option<u64>,

    /// The number the heavy clients ask about (only with cpu) [default:
    /// 99999999999973, a prime: five million trial divisions].
    #[arg(long, value_name = "N")]
    number: Option<u64>,

    /// Workers of the pool model [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pool_threads: Option<u32>,

    /// Threads of the load generator, each an event loop driving its share
    /// of the connections [default: half the cores, at least 1].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=concur::bench::run::MAX_CLIENT_THREADS as i64))]
    client_threads: Option<u32>,

    /// Pin the servers to these CPUs, as taskset -c takes them (0, 0,1,
    /// 0-1) [default: any].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    server_cpus: Option<CpuList>,

    /// Pin the load generator to these CPUs [default: any].
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    client_cpus: Option<CpuList>,

    /// Write results.json and the plots here (created if missing).
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,

    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
#[command(
    after_help = "Script format (--script): one step a line, '#' comments:\n  \
                        send BYTES   one write; escapes \\\\ \\n \\r \\t \\s \\xNN\n  \
                        pause SECS   wait, fractions allowed\n\
                        The default is the article's: send ^abc$de^abte$f, pause 1.0, \
                        send xyz^123, pause 1.0, send 25$^ab0000$abab, pause 0.2."
)]
struct ClientArgs {
    /// Server host name or address.
    host: String,

    /// Server port.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Concurrent connections.
    #[arg(short = 'n', long = "connections", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,

    /// Run this schedule instead of the article's (format below).
    #[arg(long, value_name = "FILE")]
    script: Option<std::path::PathBuf>,

    /// Milliseconds between one connection's arrival and the next.
    #[arg(long, value_name = "MS", default_value = "0", allow_negative_numbers = true,
          value_parser = parse_millis)]
    stagger: Duration,

    /// Longest wait, in seconds, to connect, for the '*', for a write, and
    /// after the last step for the rest of the reply.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    timeout: Duration,

    /// Write each connection's timeline to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,

    /// Draw the time chart of the run to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    chart: Option<std::path::PathBuf>,

    /// What the server is, for the chart's title and the JSON (such as
    /// "model pool, 2 threads").
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,

    /// No log lines; only the elapsed time and errors.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Directory for the charts and timelines (created if missing).
    #[arg(long, value_name = "DIR", default_value = "demo")]
    out: std::path::PathBuf,
}

#[derive(Args)]
struct ThreadsArgs {
    /// Threads to start.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    threads: u32,

    /// Seconds to measure once they are all started; then it exits.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    secs: Duration,

    /// Stack size of each thread in KiB [default: Rust's, 2048].
    #[arg(long = "stack-kib", value_name = "K", value_parser = parse_stack_kib)]
    stack: Option<usize>,
}

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 after a drain (the summary on standard output); \
                        1 if it cannot listen or set itself up; 2 for a bad flag; \
                        128 + the signal's number (130 for SIGINT, 143 for SIGTERM) when a \
                        second signal cuts the drain short, after one line of the counters so far."
)]
struct ServeArgs {
    /// Concurrency model.
    #[arg(long, value_enum, default_value_t = Model::Pool)]
    model: Model,

    /// Protocol: `bytes` is PROTOCOL.md (`*`, then `^...$` messages
    /// answered byte + 1); `prime` answers each line holding a number with
    /// `prime` or `composite` (`neither` for 0 and 1), by trial division
    /// (CPU-bound on purpose).
    #[arg(long, value_enum, default_value_t = Protocol::Bytes)]
    protocol: Protocol,

    /// Worker threads of the pool [default: 64]; with --max-threads, the
    /// fewest it shrinks to (only with --model pool).
    #[arg(short = 'n', long, visible_alias = "min-threads", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    threads: Option<u32>,

    /// Let the pool grow up to this many workers while every worker is
    /// busy and clients wait [default: --threads, a fixed pool] (only with
    /// --model pool).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_threads: Option<u32>,

    /// Seconds a worker above --threads may sit idle before it leaves
    /// [default: 10] (only with --model pool).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    keep_alive: Option<Duration>,

    /// Clients the pool's hand-off holds while all workers are busy; 0 means
    /// the accept loop waits for a free worker and later clients wait in the
    /// listen backlog, as in the article [default: 0] (only with --model
    /// pool).
    #[arg(long, value_name = "Q",
          value_parser = clap::value_parser!(u32).range(0..=server::MAX_QUEUE as i64))]
    queue: Option<u32>,

    /// Event loops, each a thread [default: the number of cores] (only
    /// with --model event).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    loops: Option<u32>,

    /// Runtime threads [default: the number of cores] (only with --model
    /// async).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,

    /// Answer bytes held for one client before the server stops reading
    /// from it until they drain [default: 65536] (only with --model event).
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    outbound_cap: Option<u64>,

    /// Stack size of each client thread or pool worker in KiB [default:
    /// Rust's, 2048] (only with --model thread or pool).
    #[arg(long = "stack-kib", value_name = "K", value_parser = parse_stack_kib)]
    stack: Option<usize>,

    /// Address to listen on: an IPv4 or IPv6 address, or a name. A name
    /// is resolved and only the first of its addresses that can be bound
    /// is listened on (`localhost`: 127.0.0.1, not also ::1); the banner
    /// says which.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on; 0 picks a free one (the banner shows which).
    #[arg(long, default_value_t = 9090, conflicts_with = "port_arg")]
    port: u16,

    /// The port, given bare as the article's servers take it.
    #[arg(value_name = "PORT")]
    port_arg: Option<u16>,

    /// The most clients served at once.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNS as u64,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_conns: u64,

    /// What a client over --max-conns gets: `wait` in the listen backlog
    /// until a client leaves, or `reject`ion (closed at once, no `*`).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OverLimit::Wait)]
    over_limit: OverLimit,

    /// Close a client that sends nothing for this many seconds [default:
    /// off].
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    idle_timeout: Option<Duration>,

    /// Close a client that takes none of its answers for this many
    /// seconds; `off` to wait forever.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_timeout,
          allow_negative_numbers = true)]
    write_timeout: Timeout,

    /// Log the live figures (clients now, accepted, rejected, timed out,
    /// bytes in and out) every this many seconds [default: never].
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs,
          allow_negative_numbers = true)]
    stats_interval: Option<Duration>,

    /// Length of the kernel's queue of connections not yet accepted.
    #[arg(long, value_name = "N", default_value_t = listener::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(i32).range(1..=65_535))]
    backlog: i32,

    /// Seconds that clients being served may go on after SIGINT/SIGTERM
    /// before they are closed (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs,
          allow_negative_numbers = true)]
    drain_timeout: Duration,

    /// No per-connection log lines (warnings and the summary still show).
    #[arg(short, long)]
    quiet: bool,
}

/// CPUs as `taskset -c` lists them; a type of its own, since clap takes a
/// bare `Vec` for a flag given several times.
#[derive(Clone)]
struct CpuList(Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    concur::bench::cpus::parse_list(s).map(CpuList)
}

/// A timeout that may be switched off.
#[derive(Clone, Copy)]
struct Timeout(Option<Duration>);

fn parse_timeout(s: &str) -> Result<Timeout, String> {
    if s == "off" {
        return Ok(Timeout(None));
    }
    parse_positive_secs(s)
        .map(|d| Timeout(Some(d)))
        .map_err(|e| format!("{e}, or `off`"))
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    match secs_within(s, "more than 0, up to")? {
        d if d.is_zero() => Err(format!("{s:?} is no time at all: give more than 0 seconds")),
        d => Ok(d),
    }
}

/// A thread stack given in KiB, as bytes.
fn parse_stack_kib(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|k| (16..=1_048_576).contains(k))
        .map(|k| k * 1024)
        .ok_or_else(|| format!("{s:?} is not a whole number of KiB in 16..=1048576"))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .ok()
        .filter(|ms| *ms <= 600_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is not a whole number of milliseconds from 0 to 600000"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    secs_within(s, "0 to")
}

/// Seconds from 0 to a year; `range` begins the error's statement of what
/// is allowed ("0 to", "more than 0, up to").
fn secs_within(s: &str, range: &str) -> Result<Duration, String> {
    // Plain seconds as the article's tools take them, or a duration with
    // its unit (10s, 500ms, 2m) for whoever finds that clearer.
    let secs: f64 = match s.parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(s)
            .map_err(|_| {
                format!(
                    "{s:?} is not a number of seconds (such as 5 or 0.5) nor a duration \
                     (such as 10s, 500ms or 2m)"
                )
            })?
            .as_secs_f64(),
    };
    // A year is more than any timeout here needs, and far enough from the
    // limits of `Instant` arithmetic that adding it to now cannot overflow.
    const MOST: f64 = 365.0 * 24.0 * 3600.0;
    if !(0.0..=MOST).contains(&secs) {
        return Err(format!(
            "{s:?} is out of range: give {range} {MOST} seconds (a year)"
        ));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{s:?} is not a usable number of seconds: give 0 or more"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(args) => client(args),
        Command::Demo(args) => ExitCode::from(concur::demo::command(&args.out)),
        Command::Threads(args) => ExitCode::from(concur::threads::command(&threads::Options {
            threads: args.threads as usize,
            window: args.secs,
            stack: args.stack,
            progress: true,
        })),
        Command::Bench(args) => bench(args),
        Command::Echo(args) => echo(args),
    }
}

fn echo(args: EchoArgs) -> ExitCode {
    let listener = match listener::bind(([127, 0, 0, 1], args.port).into(), 4096) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("Serving on {addr} (echo reference)"),
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = server::raise_fd_limit() {
        eprintln!("warning: cannot raise the descriptor limit: {e}");
    }
    match concur::bench::serve_echo(listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    use concur::bench::Options;
    let sweep = args.scenario == BenchWhat::Sweep;
    let scenario = match args.scenario {
        BenchWhat::Run(scenario) => scenario,
        BenchWhat::Sweep => args.of.unwrap_or(Scenario::Pingpong),
    };
    let misplaced = [
        ("--of", args.of.is_some() && !sweep, "sweep"),
        (
            "--rate",
            args.rate.is_some() && scenario != Scenario::Rate,
            "rate",
        ),
        (
            "--number",
            args.number.is_some() && scenario != Scenario::Cpu,
            "cpu",
        ),
    ];
    for (flag, wrong, wanted) in misplaced {
        if wrong {
            eprintln!("error: {flag} does not apply to {scenario}; it is for {wanted}");
            return ExitCode::from(2);
        }
    }
    let mut options = Options::new(scenario, args.secs);
    options.sweep = sweep;
    options.counts = args.counts.iter().map(|&c| c as usize).collect();
    if sweep && options.counts.is_empty() {
        options.counts = vec![1, 8, 64, 512];
    }
    if !args.models.is_empty() {
        options.models = args.models;
    } else if args.addr.is_some() {
        options.models.clear();
    }
    options.addr = args.addr;
    options.reference = !args.no_reference;
    options.repeat = args.repeat as usize;
    if let Some(size) = args.size {
        options.params.size = size as usize;
    }
    if let Some(rate) = args.rate {
        options.params.rate = rate;
    }
    if let Some(n) = args.number {
        options.params.number = n;
    }
    options.pool_threads = args.pool_threads.map(|n| n as usize);
    if let Some(n) = args.client_threads {
        options.client_threads = n as usize;
    }
    options.server_cpus = args.server_cpus.map(|c| c.0);
    options.client_cpus = args.client_cpus.map(|c| c.0);
    options.out = args.out;
    options.progress = !args.quiet;
    options.command = std::env::args().collect::<Vec<_>>().join(" ");
    if let Err(e) = options.check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(concur::bench::command(&options))
}

fn client(args: ClientArgs) -> ExitCode {
    use concur::client::{self, Options, Outputs, Script};
    let script = match &args.script {
        Some(path) => match Script::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Script::article(),
    };
    let mut options = Options::new(args.connections as usize)
        .script(script)
        .stagger(args.stagger)
        .timeout(args.timeout)
        .echo(!args.quiet);
    options.server = args.label;
    let outputs = Outputs {
        json: args.json,
        chart: args.chart,
    };
    ExitCode::from(client::command(&args.host, args.port, &options, &outputs))
}

fn init_logging(quiet: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if quiet {
            "info,concur::conn=warn"
        } else {
            "info"
        })
    });
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_thread_names(true)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(args: ServeArgs) -> ExitCode {
    let misplaced: [(&[Model], &str, bool); 8] = [
        (&[Model::Pool], "--keep-alive", args.keep_alive.is_some()),
        (&[Model::Pool], "--threads", args.threads.is_some()),
        (&[Model::Pool], "--queue", args.queue.is_some()),
        (&[Model::Pool], "--max-threads", args.max_threads.is_some()),
        (&[Model::Event], "--loops", args.loops.is_some()),
        (
            &[Model::Event],
            "--outbound-cap",
            args.outbound_cap.is_some(),
        ),
        (&[Model::Async], "--workers", args.workers.is_some()),
        (
            &[Model::Thread, Model::Pool],
            "--stack-kib",
            args.stack.is_some(),
        ),
    ];
    for (models, flag, given) in misplaced {
        if given && !models.contains(&args.model) {
            let names: Vec<String> = models.iter().map(|m| format!("--model {m}")).collect();
            eprintln!(
                "error: {flag} does not apply to --model {}; it is for {}",
                args.model,
                names.join(" or ")
            );
            return ExitCode::from(2);
        }
    }
    init_logging(args.quiet);
    let mut config = Config::new(args.model).drain_timeout(args.drain_timeout);
    config.protocol = args.protocol;
    if let Some(n) = args.threads {
        config.threads = n as usize;
    }
    if let Some(max) = args.max_threads {
        if (max as usize) < config.threads {
            eprintln!(
                "error: --max-threads {max} is below the pool's {} threads; give at least that \
                 (or lower --threads)",
                config.threads
            );
            return ExitCode::from(2);
        }
        config.max_threads = max as usize;
    }
    if let Some(keep_alive) = args.keep_alive {
        config.keep_alive = keep_alive;
    }
    if let Some(queue) = args.queue {
        config.queue = queue as usize;
    }
    if let Some(n) = args.loops {
        config.loops = n as usize;
    }
    if let Some(n) = args.workers {
        config.workers = n as usize;
    }
    if let Some(cap) = args.outbound_cap {
        config.outbound_cap = cap as usize;
    }
    config.max_conns = args.max_conns as usize;
    config.over_limit = args.over_limit;
    config.idle_timeout = args.idle_timeout;
    config.write_timeout = args.write_timeout.0;
    config.stats_interval = args.stats_interval;
    config.stack_size = args.stack;

    if let Err(e) = server::raise_fd_limit() {
        tracing::warn!("cannot raise the descriptor limit: {e}");
    }
    fewer_arenas_under_a_limit();
    let port = args.port_arg.unwrap_or(args.port);
    let listener = match listener::bind_host(&args.host, port, args.backlog) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Whoever reads the banner may be gone by the time the summary comes:
    // a closed stdout must not turn a clean shutdown into a panic.
    let _ = writeln!(
        std::io::stdout(),
        "Serving on {addr} ({})",
        config.describe()
    );

    let shutdown = Shutdown::new();
    let counters = server::Counters::default();
    if let Err(e) = on_signals(shutdown.clone(), counters.clone()) {
        eprintln!("error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match server::run_counted(listener, config, shutdown, counters) {
        Ok(summary) => {
            let _ = writeln!(std::io::stdout(), "{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Under an address-space limit (`ulimit -v`), caps glibc's malloc arenas
/// at one per core. Each thread that allocates gets an arena of its own
/// while there are fewer than eight per core, and each reserves 64 MiB of
/// address space: a few client threads would otherwise spend the limit on
/// arenas, and stacks as small as `--stack-kib 64` would buy nothing.
/// Called before any thread starts; without a limit, malloc is left alone.
fn fewer_arenas_under_a_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the local rlimit it is given;
        // mallopt only sets a tunable, before any other thread exists.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_AS, &mut lim) == 0
                && lim.rlim_cur != libc::RLIM_INFINITY
            {
                let cores = libc::c_int::try_from(server::cores()).unwrap_or(1);
                libc::mallopt(libc::M_ARENA_MAX, cores);
            }
        }
    }
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second one
/// means the user will not wait for the drain: the counters so far go out
/// as one line, and the process exits at once with 128 + the signal's
/// number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process
/// killed by it.
fn on_signals(shutdown: Shutdown, counters: server::Counters) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!("signal {signal}: shutting down (again to exit at once)");
                    shutdown.trigger();
                } else {
                    let summary = counters.summary();
                    let _ = writeln!(
                        std::io::stdout(),
                        "{summary}; exited on a second signal with {} clients still connected",
                        summary.clients_now
                    );
                    std::process::exit(128 + signal);
                }
            }
        })?;
    Ok(())
}
