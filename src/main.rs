//! The `concur` command: parsing (`cli`), then a call into the library.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use cli::{BenchArgs, BenchWhat, Cli, ClientArgs, Command, ReferenceArgs, ServeArgs};
use concur::bench::{Reference, Scenario};
use concur::server::{self, Config, ConfigError, Counters, Model, ValidConfig, listener};
use concur::shutdown::Shutdown;
use concur::threads;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(args) => client(args),
        Command::Demo(args) => ExitCode::from(match &args.live {
            Some(at) => concur::demo::live(at),
            None => concur::demo::command(&args.out),
        }),
        Command::Threads(args) => {
            if let Some(bytes) = args.stack.filter(|b| !server::limits::STACK.contains(b)) {
                usage_error(
                    "threads",
                    format!(
                        "--stack-kib {} is out of range: give {} to {} KiB",
                        bytes / 1024,
                        server::limits::STACK.start() / 1024,
                        server::limits::STACK.end() / 1024
                    ),
                );
            }
            ExitCode::from(concur::threads::command(&threads::Options {
                threads: args.threads as usize,
                window: args.secs,
                stack: args.stack,
                progress: true,
            }))
        }
        Command::Bench(args) => bench(args),
        Command::Echo(args) => reference(args, Reference::Echo),
        Command::Floor(args) => reference(args, Reference::Floor),
        Command::FloorUring(args) => reference(args, Reference::FloorUring),
    }
}

/// Reports a bad flag the way clap does (the subcommand's usage line, exit
/// status 2) and exits.
fn usage_error(subcommand: &str, message: impl std::fmt::Display) -> ! {
    let mut cli = Cli::command();
    // Built, so that the usage line names the command in full.
    cli.build();
    let command = cli
        .find_subcommand_mut(subcommand)
        .expect("a subcommand of concur");
    command
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

/// `concur echo`, `concur floor`: a reference of `concur bench` as a
/// process of its own, on 127.0.0.1, announced as the servers are.
fn reference(args: ReferenceArgs, which: Reference) -> ExitCode {
    let listener = match listener::bind(([127, 0, 0, 1], args.port).into(), 4096) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("Serving on {addr} ({} reference)", which.name()),
        Err(e) => {
            eprintln!("error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = server::raise_fd_limit() {
        eprintln!("warning: cannot raise the descriptor limit: {e}");
    }
    match which.serve(listener) {
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
            usage_error(
                "bench",
                format!("{flag} does not apply to {scenario}; it is for {wanted}"),
            );
        }
    }
    let mut options = Options::new(scenario, args.secs);
    options.sweep = sweep;
    options.counts = args.counts;
    if sweep && options.counts.is_empty() {
        options.counts = vec![1, 8, 64, 512];
    }
    if !args.models.is_empty() {
        options.models = args.models;
    } else if args.addr.is_some() {
        options.models.clear();
    } else if let Err(e) = Model::Uring.available() {
        eprintln!("note: model uring left out: {e}");
    }
    options.addr = args.addr;
    options.reference = !args.no_reference;
    options.count_syscalls = !args.no_syscalls;
    options.repeat = args.repeat;
    if let Some(size) = args.size {
        options.params.size = size;
    }
    if let Some(rate) = args.rate {
        options.params.rate = rate;
    }
    if let Some(n) = args.number {
        options.params.number = n;
    }
    options.pool_threads = args.pool_threads;
    options.clients = args.clients;
    if let Some(n) = args.client_threads {
        options.client_threads = n;
    }
    options.server_cpus = args.server_cpus.map(|c| c.0);
    options.client_cpus = args.client_cpus.map(|c| c.0);
    options.out = args.out;
    options.progress = !args.quiet;
    options.command = std::env::args().collect::<Vec<_>>().join(" ");
    match options.check() {
        Ok(options) => ExitCode::from(concur::bench::command(&options)),
        Err(e) => usage_error("bench", e),
    }
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

/// The server `args` ask for, or what is wrong with them: a flag of
/// another model, a value out of range, or a model this machine cannot
/// run ([`Config::check`], once).
fn serve_config(args: &ServeArgs) -> Result<ValidConfig, ConfigError> {
    let mut config = Config::new(args.model).drain_timeout(args.drain_timeout);
    for setting in args.own.settings() {
        config.set(setting)?;
    }
    config.protocol = args.protocol;
    config.max_conns = args.max_conns;
    config.over_limit = args.over_limit;
    config.idle_timeout = args.idle_timeout;
    config.write_timeout = args.write_timeout.0;
    config.stats_interval = args.stats_interval;
    config.check()
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match serve_config(&args) {
        Ok(config) => config,
        // Before the banner: a model the kernel will not run is not serving.
        Err(e) if e.is_unavailable() => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => usage_error("serve", e),
    };
    init_logging(args.quiet);
    if let Err(e) = server::raise_fd_limit() {
        tracing::warn!("cannot raise the descriptor limit: {e}");
    }
    fewer_arenas_under_a_limit();
    let port = args.port_arg.unwrap_or(args.port);
    let listener = match concur::systemd::listener() {
        Ok(Some(passed)) => Ok(passed),
        Ok(None) => listener::bind_host(&args.host, port, args.backlog, args.reuseport)
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("socket activation: {e}")),
    };
    let listener = match listener {
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
    let http = match args.http().map(|(flag, at)| concur::http::bind(flag, at)) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Whoever reads the banner may be gone by the time the summary comes:
    // a closed stdout must not turn a clean shutdown into a panic.
    let banner = format!("Serving on {addr} ({})", config.describe());
    let _ = writeln!(std::io::stdout(), "{banner}");

    let shutdown = Shutdown::new();
    let counters = Arc::<Counters>::default();
    if let Some(http) = http {
        let watched = concur::http::Watched::new(&config, Arc::clone(&counters));
        match concur::http::serve(http, vec![watched]) {
            Ok(port) => {
                let at = port.local_addr();
                let _ = writeln!(std::io::stdout(), "Metrics on http://{at}/metrics");
                let _ = writeln!(std::io::stdout(), "Watch it live at http://{at}/");
            }
            Err(e) => {
                eprintln!("error: cannot serve the HTTP port: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = on_signals(shutdown.clone(), Arc::clone(&counters)) {
        eprintln!("error: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    // The listener is listening: clients wait in its backlog from now on.
    concur::systemd::ready(&banner);
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
    if threads::address_space_limit().is_some() {
        let cores = libc::c_int::try_from(server::cores()).unwrap_or(1);
        // SAFETY: mallopt only sets a tunable, before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores);
        }
    }
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second one
/// means the user will not wait for the drain: the counters so far go out
/// as one line, and the process exits at once with 128 + the signal's
/// number (130 for SIGINT, 143 for SIGTERM), as a shell reports a process
/// killed by it.
fn on_signals(shutdown: Shutdown, counters: Arc<Counters>) -> std::io::Result<()> {
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
                    concur::systemd::stopping();
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
