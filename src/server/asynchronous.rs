//! The async server: one tokio task per client on a few runtime threads.
//!
//! It reads like the thread-per-client server (`thread.rs`), with `.await`
//! where that one blocks; the runtime multiplexes the tasks over
//! `workers` threads with epoll, as the event model does by hand.
//!
//! - The shared accept loop (with its back-off on descriptor exhaustion)
//!   runs on its own thread and spawns a task per client onto the runtime,
//!   rather than a second accept loop written in async.
//! - A task waits for readability, then reads into its worker thread's
//!   64 KiB buffer, so an idle client holds no read buffer of its own.
//! - The runtime takes I/O events in batches its workers' local queues
//!   can hold, so that with many busy clients none waits in the global
//!   queue while others go round (see `run`).
//! - Backpressure is `write_all(..).await`: a client that does not read
//!   stalls only its own task, which stops reading it; at most one read's
//!   answers (64 KiB) are buffered per client.
//! - Large numbers (`--protocol prime`) go to the same compute pool as the
//!   event model's, as many threads as workers, and the task awaits the
//!   answer while the runtime serves everyone else.
//! - Shutdown is the same as everywhere: the accept loop stops, tasks
//!   finish or are closed at the end of the drain, then the runtime goes.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time;
use tracing::{info, warn};

use super::compute::{Compute, ComputePool};
use super::conn::{self, BUF_SIZE, LOG_TARGET, Outcome};
use super::listener::{self, Io};
use super::responder::{Responder, Stop};
use super::{AsyncSettings, ClientGuard, Protocol, ServerState};

/// Tasks a runtime thread runs between two looks at the I/O driver while
/// it has tasks to run: tokio's default, named because the busy poll's
/// batch below must stay under it.
const EVENT_INTERVAL: u32 = 61;

thread_local! {
    // Each runtime thread's read buffer. A task borrows it only between
    // awaits, so tasks on one thread never see each other's bytes.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF_SIZE].into_boxed_slice());
}

pub(crate) fn run(
    listener: TcpListener,
    ctx: &Arc<ServerState>,
    settings: &AsyncSettings,
) -> io::Result<()> {
    let pool = match ctx.config.protocol {
        Protocol::Prime => Some(ComputePool::start(settings.workers, ctx.closing_flag())?),
        Protocol::Bytes => None,
    };
    let compute = pool.as_ref().map(ComputePool::handle);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.workers)
        .thread_name("async-worker")
        // Each runtime thread's read buffer is made as it starts, with the
        // server, rather than by whichever client comes first: near an
        // address-space limit that could be the allocation that fails.
        .on_thread_start(|| READ_BUF.with(|_| ()))
        // Fairness with many busy clients: every task a poll of the I/O
        // driver wakes goes to that worker's local queue, which holds 256;
        // the rest overflow to the global queue, which a busy worker takes
        // one task from only every few dozen polls. By default a poll takes
        // up to 1,024 events, and a busy worker polls every 61 tasks: with
        // 1,000 clients pinned to one core, about 770 of the tasks sat in
        // the global queue at any moment while the others went round, and
        // p99 was about a hundred times p50. Taking no more events than the
        // local queue has room for (128 when the worker waits; 32, fewer
        // than it runs between two polls, when it is busy) leaves the rest
        // ready in the kernel, whose ready list hands them out in the order
        // they came.
        .event_interval(EVENT_INTERVAL)
        .max_io_events_per_tick(128)
        .max_io_events_per_busy_tick(32)
        .enable_io()
        .enable_time()
        .build()?;
    let result = listener::accept_loop(listener, ctx, Io::NonBlocking, |stream, peer, permit| {
        // Registered with the runtime here, on the accept thread, so that a
        // socket the runtime refuses is closed before it is ever counted.
        let _runtime = runtime.enter();
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let guard = ctx.enter(&stream, permit);
                runtime.spawn(serve(guard, stream, peer, compute.clone()));
            }
            Err(e) => {
                warn!("cannot serve {peer}: {e}");
                ctx.count_failed();
            }
        }
        ControlFlow::Continue(())
    });
    // The tasks live on the runtime: keep it until the drain has ended
    // them all (it closes whoever stays past the drain timeout).
    ctx.wait_idle(ctx.config.drain_timeout + Duration::from_secs(5));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(pool) = pool {
        pool.stop();
    }
    result
}

async fn serve(guard: ClientGuard, stream: TcpStream, peer: SocketAddr, compute: Option<Compute>) {
    // Bound in this order so that, should the task unwind or be dropped,
    // the guard drops before the socket (locals drop in reverse): the
    // drain's registry must never hold a closed descriptor.
    let mut stream = stream;
    let guard = guard;
    info!(target: LOG_TARGET, "peer {peer} connected");
    let outcome = session(&mut stream, guard.ctx(), compute.as_ref()).await;
    conn::finish(guard, peer, outcome.err().unwrap_or(Outcome::Done));
}

async fn session(
    stream: &mut TcpStream,
    ctx: &ServerState,
    compute: Option<&Compute>,
) -> Result<(), Outcome> {
    stream.set_nodelay(true)?;
    let (idle, write) = (ctx.config.idle_timeout, ctx.config.write_timeout);
    let greeting = Responder::greeting(ctx.config.protocol);
    if !greeting.is_empty() {
        send(stream, greeting, write).await?;
        ctx.count_bytes_out(greeting.len());
    }
    let mut responder = Responder::new(ctx.config.protocol);
    let mut out = Vec::new();
    // Input read but not answered yet, while a number is being tested.
    let mut unread = Vec::new();
    loop {
        match idle {
            Some(limit) => match time::timeout(limit, stream.readable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(conn::idle_timeout(limit)),
            },
            None => stream.readable().await?,
        }
        let read = READ_BUF.with_borrow_mut(|buf| {
            let n = stream.try_read(buf)?;
            // Grown only as the memory limit allows: a client whose answers
            // do not fit is ended, not the server.
            let growth = responder.max_growth(out.len(), n);
            ctx.budget.reserve(&mut out, growth)?;
            let (used, stop) = responder.respond(&buf[..n], &mut out, compute.is_some());
            ctx.budget.reserve(&mut unread, n - used)?;
            unread.extend_from_slice(&buf[used..n]);
            Ok::<_, io::Error>((n, stop))
        });
        let mut stop = match read {
            Ok((0, _)) => return Ok(()),
            Ok((n, stop)) => {
                ctx.count_bytes_in(n);
                stop
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Going idle: an idle client keeps no large buffer.
                if out.capacity() > BUF_SIZE / 4 {
                    out = Vec::new();
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        loop {
            if !out.is_empty() {
                ctx.note_buffered(out.len());
                send(stream, &out, write).await?;
                ctx.count_bytes_out(out.len());
                out.clear();
            }
            match stop {
                Stop::Consumed => break,
                Stop::Close(reason) => return Err(conn::protocol_violation(reason)),
                Stop::Full => {}
                Stop::Offload(n) => {
                    let answer = match compute {
                        Some(compute) => compute.test(n).await,
                        // Offloading is only asked for with a pool.
                        None => None,
                    };
                    match answer {
                        Some(prime) => {
                            ctx.budget.reserve(&mut out, 16)?;
                            responder.answered(n, prime, &mut out)
                        }
                        None => return Err(Outcome::ClosedAtShutdown),
                    }
                }
            }
            let input = std::mem::take(&mut unread);
            let growth = responder.max_growth(out.len(), input.len());
            ctx.budget.reserve(&mut out, growth)?;
            let (used, next) = responder.respond(&input, &mut out, compute.is_some());
            ctx.budget.reserve(&mut unread, input.len() - used)?;
            unread.extend_from_slice(&input[used..]);
            stop = next;
        }
    }
}

/// Writes everything, or fails once the client has taken none of it for
/// `limit`.
async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Option<Duration>,
) -> Result<(), Outcome> {
    let Some(limit) = limit else {
        return Ok(stream.write_all(bytes).await?);
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        match time::timeout(limit, stream.write(rest)).await {
            Ok(Ok(0)) => return Err(io::Error::from(ErrorKind::WriteZero).into()),
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(conn::write_timeout(limit)),
        }
    }
    Ok(())
}
