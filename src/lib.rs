//! `concur`: the concurrent servers of Eli Bendersky's "Concurrent servers,
//! part 2: threads" (2017), in Rust, side by side.
//!
//! Every server speaks the same small stateful byte protocol (`PROTOCOL.md`):
//! the server greets a client with `*`; then, inside a message between `^`
//! and `$`, each byte is answered with itself plus one. What differs between
//! servers is only the concurrency model: which thread runs the data flow
//! for which client, and when.
//!
//! # Layout
//!
//! - [`protocol`]: the state machine, pure and I/O-free. Whole buffers in,
//!   answers appended to a buffer; the one implementation every model uses.
//! - [`prime`]: the primality protocol (`--protocol prime`): request lines,
//!   trial division, answer lines; CPU-bound on purpose.
//! - [`server`]: [`run`](server::run) and [`start`](server::start), and
//!   the [`Summary`](server::Summary) every model returns. Inside it:
//!   - [`server::config`]: the [`Config`](server::Config) every model
//!     obeys, and the one check that makes it a
//!     [`ValidConfig`](server::ValidConfig); `model`: the
//!     [`Model`](server::Model)s and each one's own settings;
//!   - `listener` binds and accepts; `admission` is the one policy of both
//!     accept loops (the cap, the memory budget, rejections, accept
//!     errors); `registry` keeps permits and the clients being served,
//!     and ends each client once; `counters` count; `memory` keeps within
//!     an address-space limit; `responder` says what to answer;
//!   - `conn`: the blocking per-client loop of the thread models;
//!     `session`: the client of the non-blocking models, with no I/O, with
//!     `slots` (their table of clients) and `compute` (the pool that tests
//!     large numbers for them);
//!   - the models, each a file that reads like the article: `sequential`,
//!     `thread`, `pool` (fixed or adaptive, bounded hand-off), `event`
//!     (mio loops), `asynchronous` (tokio tasks) and `uring` (io_uring
//!     rings).
//! - [`http`]: the operator's HTTP port (`serve --http`), on hyper and a
//!   one-thread runtime of its own, with its limits in one place;
//!   [`http::metrics`] is its Prometheus page, read from the server's own
//!   counters at each scrape; [`http::live`] the live time chart, its
//!   stream of client events (`/events`) and their snapshot (`/clients`),
//!   read from the server's timeline.
//! - [`systemd`]: the listening socket systemd passes, and `sd_notify`.
//! - [`shutdown`]: the one signal every model obeys: stop accepting, drain,
//!   close the rest.
//! - [`client`]: the article's simulated client (N connections on a
//!   schedule, every reply checked), its timelines and the time chart.
//! - [`demo`]: the article's experiment in one call: its three servers and
//!   the three non-blocking ones, the client against each, a table and a
//!   chart per model; or, live, the six on one page as they serve.
//! - [`threads`]: the footnote's experiment: what idle threads cost.
//! - [`bench`](mod@bench): `concur bench`: one load engine (a few epoll
//!   threads driving every connection, every byte checked) for every
//!   scenario (stream, pingpong, rate, churn, idle, cpu, sweep); the
//!   servers as child processes beside two references (an echo, and the
//!   floor: the least server that answers the protocol), with the CPU
//!   time of each side, the server's system calls and the kernel's TCP
//!   counters; a table, `results.json`, latency spectra and SVG plots.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use concur::server::{self, Config, Model, listener};
//!
//! let listener = listener::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
//! let config = Config::new(Model::Pool).threads(2).check().unwrap();
//! let server = server::start(listener, config).unwrap();
//!
//! let mut client = std::net::TcpStream::connect(server.local_addr()).unwrap();
//! client.write_all(b"^abc$").unwrap();
//! client.shutdown(std::net::Shutdown::Write).unwrap();
//! let mut reply = Vec::new();
//! client.read_to_end(&mut reply).unwrap();
//! assert_eq!(reply, b"*bcd");
//!
//! let summary = server.stop();
//! assert_eq!(summary.served, 1);
//! ```

// One clear error elsewhere, rather than a wall of them from the
// Linux-only calls below.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "concur runs on Linux only: its servers and benchmarks use epoll, /proc, \
     prctl and Linux's socket errors"
);

#[cfg(target_os = "linux")]
pub mod bench;
#[cfg(target_os = "linux")]
pub mod client;
#[cfg(target_os = "linux")]
pub mod demo;
#[cfg(target_os = "linux")]
pub mod http;
pub mod prime;
pub mod protocol;
#[cfg(target_os = "linux")]
pub mod server;
#[cfg(target_os = "linux")]
pub mod shutdown;
#[cfg(target_os = "linux")]
pub mod systemd;
#[cfg(target_os = "linux")]
pub mod threads;
