//! The async server: one tokio task per client on a few runtime threads.
//!
//! It reads like the thread-per-client server (`thread.rs`), with `.await`
//! where that one blocks; the runtime multiplexes the tasks over
//! `workers` threads with epoll, as the event model does by hand. A task
//! drives its client's [`Session`] (the same one the event loops and the
//! rings drive) with futures: wait until readable, read, answer, write
//! everything, again.
//!
//! - The shared accept loop (with its back-off on descriptor exhaustion)
//!   runs on its own thread and spawns a task per client onto the runtime,
//!   rather than a second accept loop written in async.
//! - A task reads into its worker thread's 64 KiB buffer, so an idle
//!   client holds no read buffer; its answer buffers are its own (a task
//!   may run on any worker thread), and it keeps at most 16 KiB of each
//!   while it is idle.
//! - The runtime takes I/O events in batches its workers' local queues
//!   can hold, so that with many busy clients none waits in the global
//!   queue while others go round (see `run`).
//! - Backpressure: a task writes all of one read's answers before it reads
//!   again, so a client that does not read stalls only its own task, and at
//!   most one read's answers (64 KiB) are held for it.
//! - Large numbers (`--protocol prime`) go to the same compute pool as the
//!   other non-blocking models', as many threads as workers, and the task
//!   awaits the answer while the runtime serves everyone else.
//! - Shutdown is the same as everywhere: the accept loop stops, tasks
//!   finish or are closed at the end of the drain, then the runtime goes.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time;
use tracing::warn;

use super::compute::{Compute, ComputePool};
use super::counters::Ended;
use super::listener::{self, Io};
use super::memory::BUF_SIZE;
use super::model::AsyncSettings;
use super::registry::{ClientGuard, Outcome};
use super::session::{Session, Spares, ToTest};
use super::state::ServerState;

/// The answers a task holds before it writes them: one read's.
const CAP: usize = BUF_SIZE;

/// The most capacity an idle task keeps in each of its buffers: a loop's
/// spares serve many clients, a task's only its own, and ten thousand idle
/// tasks must not each hold a read's worth.
const TASK_SPARE_CAPACITY: usize = BUF_SIZE / 4;

/// Tasks a runtime thread runs between two looks at the I/O driver while
/// it has tasks to run: tokio's default, named because the busy poll's
/// batch below must stay under it.
const EVENT_INTERVAL: u32 = 61;

thread_local! {
    // Each runtime thread's read buffer. A task borrows it only between
    // awaits, so tasks on one thread never see each other's bytes.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUF_SIZE].into_boxed_slice());
}

/// A task's session and the one set of buffers it keeps between requests.
struct Task {
    session: Session,
    spares: Spares,
}

pub(crate) fn run(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &AsyncSettings,
) -> io::Result<()> {
    let pool = ComputePool::for_server(state, settings.workers)?;
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
    let result = listener::accept_loop(
        listener,
        state,
        Io::NonBlocking,
        |_, stream, peer, permit| {
            // Registered with the runtime here, on the accept thread, so that a
            // socket the runtime refuses is closed before it is ever counted.
            let _runtime = runtime.enter();
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    let guard = state.registry.enter(&stream, peer, permit);
                    runtime.spawn(serve(Arc::clone(state), guard, stream, compute.clone()));
                }
                Err(e) => {
                    warn!("cannot serve {peer}: {e}");
                    state.registry.ended(permit.client(), Ended::Failed);
                }
            }
            ControlFlow::Continue(())
        },
    );
    // The tasks live on the runtime: keep it until the drain has ended
    // them all (it closes whoever stays past the drain timeout).
    state
        .registry
        .wait_idle(state.config.drain_timeout + Duration::from_secs(5));
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(pool) = pool {
        pool.stop();
    }
    result
}

async fn serve(
    state: Arc<ServerState>,
    guard: ClientGuard,
    stream: TcpStream,
    compute: Option<Compute>,
) {
    guard.connected();
    // Bound in this order so that, should the task unwind or be dropped,
    // the session (with the guard) drops before the socket (locals drop in
    // reverse): the drain's registry must never hold a closed descriptor.
    let mut stream = stream;
    let mut task = Task {
        session: Session::new(guard, &state, Instant::now()),
        spares: Spares::keeping(1, TASK_SPARE_CAPACITY),
    };
    let outcome = match serve_steps(&mut stream, &mut task, &state, compute.as_ref()).await {
        Ok(outcome) | Err(outcome) => outcome,
    };
    let Task {
        session,
        mut spares,
    } = task;
    session.end(outcome, stream, &mut spares);
}

/// Serves the client until it is finished (`Ok`) or ends otherwise
/// (`Err`).
async fn serve_steps(
    stream: &mut TcpStream,
    task: &mut Task,
    state: &ServerState,
    compute: Option<&Compute>,
) -> Result<Outcome, Outcome> {
    stream.set_nodelay(true)?;
    loop {
        send_all(stream, task, state).await?;
        if let Some(outcome) = task.session.finished() {
            return Ok(outcome);
        }
        if task.session.has_unread() {
            // Left by a number being tested, or answers at their limit.
            let test = task.session.answer_unread(state, &mut task.spares, CAP)?;
            test_elsewhere(test, stream, task, state, compute).await?;
            continue;
        }
        match state.config.idle_timeout {
            Some(limit) => match time::timeout(limit, stream.readable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(Outcome::idle_timeout(limit)),
            },
            None => stream.readable().await?,
        }
        let Task { session, spares } = task;
        let read = READ_BUF.with_borrow_mut(|buf| match stream.try_read(buf) {
            Ok(0) => {
                session.input_ended();
                Ok(None)
            }
            Ok(n) => session.receive(&buf[..n], Instant::now(), state, spares, CAP),
            Err(e) => Err(e),
        });
        match read {
            Ok(test) => test_elsewhere(test, stream, task, state, compute).await?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Has a number tested on the compute pool and gives the session its
/// answer, while the runtime serves everyone else. The answers before it
/// go out first: a long computation must not hold them back.
async fn test_elsewhere(
    test: ToTest,
    stream: &mut TcpStream,
    task: &mut Task,
    state: &ServerState,
    compute: Option<&Compute>,
) -> Result<(), Outcome> {
    let Some(n) = test else { return Ok(()) };
    send_all(stream, task, state).await?;
    // Offloading is only asked for with a pool (`--protocol prime`).
    let answer = match compute {
        Some(compute) => compute.test(n).await,
        None => None,
    };
    match answer {
        Some(prime) => Ok(task.session.answered(n, prime, state, &mut task.spares)?),
        None => Err(Outcome::ClosedAtShutdown),
    }
}

/// Writes everything the session has to send, or fails once the client
/// has taken none of it for the write timeout.
async fn send_all(
    stream: &mut TcpStream,
    task: &mut Task,
    state: &ServerState,
) -> Result<(), Outcome> {
    let limit = state.config.write_timeout;
    while let Some(bytes) = task.session.next_send() {
        let written = match limit {
            Some(limit) => time::timeout(limit, stream.write(bytes))
                .await
                .map_err(|_| Outcome::write_timeout(limit))?,
            None => stream.write(bytes).await,
        };
        match written? {
            0 => return Err(io::Error::from(ErrorKind::WriteZero).into()),
            n => task
                .session
                .sent(n, Instant::now(), state, &mut task.spares),
        }
    }
    Ok(())
}
