//! `concur bench`: the load engine, the reference server the models are
//! compared with, and the scenarios, reports and plots.
//!
//! - [`engine`]: the one load generator: a few threads, each an epoll
//!   loop driving its share of the connections, every received byte
//!   checked; it measures the load generator's CPU time and the server's.
//! - [`scenario`]: what can be run (stream, pingpong, rate, churn, idle,
//!   cpu) and its knobs.
//! - [`idle`]: idle clients held open against a child server, its memory
//!   and threads read from `/proc`.
//! - [`report`]: runs, the rows of the table, `results.json`; [`latency`]:
//!   the latency histograms and spectra.
//! - [`echo`]: the echo reference and [`Peer`], what tells its answers
//!   from a concur server's; [`child`]: a server run as a child process.
//! - [`table`]: the table printed at the end, and the notes under it.
//! - [`plot`]: throughput and latency pictures (SVG).
//! - [`options`]: what a run is asked for, and its one check.
//! - [`contender`]: the servers measured: the models and the references as
//!   child processes, or a server started elsewhere.
//! - [`run`](mod@run): the interleaved repeats, the kernel's counters, the
//!   progress bar, the outputs written.
//! - [`cpus`], [`kernel`], [`syscalls`]: pinning and CPU accounting; the
//!   TCP counters; the server's system calls, counted by the kernel.
//! - [`floor`]: the floor reference, the least server that answers the
//!   protocol.
//!
//! What a concur server costs is only meaningful next to what the machine
//! and its TCP stack cost anyway, so two references run beside the models.
//! [`start_echo`] is a plain echo server that moves bytes the way the
//! thread models do (one thread per client, 64 KiB reads, one `write_all`
//! per read, `TCP_NODELAY`) but does no protocol work: the yardstick of
//! throughput. [`serve_floor`] answers the protocol with the least there
//! is (one thread, one epoll loop, one pass of the core and one write per
//! read): the yardstick of CPU and system calls per request. A [`Peer`]
//! says what is listening, since they answer differently: a concur server
//! (and the floor) greets with `*` and answers each byte of a message plus
//! one; the echo sends back exactly what came.
//!
//! ```
//! use std::time::Duration;
//! use concur::bench::engine::{self, Plan, Speaks};
//! use concur::bench::{Peer, Scenario};
//! use concur::server::{self, Config, Model};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! let config = Config::new(Model::Thread).check().unwrap();
//! let server = server::start(listener, config).unwrap();
//!
//! let secs = Duration::from_millis(100);
//! let speaks = Speaks::Bytes(Peer::Concur);
//! let plan = Plan::new(Scenario::Pingpong, server.local_addr(), speaks, 4, secs);
//! let outcome = engine::run(&plan).unwrap();
//! assert_eq!(outcome.errors, 0);
//! assert!(outcome.ops > 0);
//! println!("{:.0} req/s", outcome.throughput(Scenario::Pingpong));
//! server.stop();
//! ```

pub mod check;
pub mod child;
pub mod contender;
pub mod cpus;
pub mod echo;
pub mod engine;
pub mod floor;
pub mod floor_uring;
pub mod idle;
pub mod kernel;
pub mod latency;
pub mod options;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;
pub mod syscalls;
pub mod table;

pub use check::IO_TIMEOUT;
pub use contender::Reference;
pub use echo::{ECHO_BUF_SIZE, EchoServer, Peer, serve_echo, start_echo};
pub use floor::serve_floor;
pub use floor_uring::serve_floor_uring;
pub use options::{Options, ValidOptions};
pub use report::{Percentiles, Results, Row, Run};
pub use run::command;
pub use scenario::{Params, Scenario};
