//! The event-driven server: a few mio event loops, no thread per client.
//!
//! Where the thread models park a thread in `read` for every client, an
//! event loop asks the kernel (epoll) which of its clients can make
//! progress and serves exactly those, never blocking. A client is then just
//! a small struct: its protocol state and an outbound buffer.
//!
//! - **Reads** drain the socket (readiness is edge-triggered) through one
//!   64 KiB buffer per loop; the answers go into the client's outbound
//!   buffer.
//! - **Writes** drain the outbound buffer until the kernel takes no more.
//!   The client is watched for writability only while something is pending.
//! - **Backpressure**: once a client's pending output exceeds
//!   [`EventSettings::outbound_cap`] the loop stops
//!   reading from it until the output drains. A client that sends and never
//!   reads thus costs at most the cap plus one read, and loses nothing: its
//!   unread bytes wait in the kernel, and TCP flow control slows it down.
//!
//! **Several loops, one acceptor.** `loops` threads each run an event loop;
//! the shared accept loop (with its back-off on descriptor exhaustion)
//! hands each new client to the next loop in turn, over a channel plus a
//! waker. The alternative, one `SO_REUSEPORT` listener per loop, lets the
//! kernel spread clients by a hash of their addresses, which can leave one
//! loop with most of them, and it needs every listener bound by the server
//! itself, while `run` is handed one listener that is already bound.
//! Round-robin keeps the loops even and every model on the same accept code.
//!
//! A loop whose `epoll_wait` fails (which only a bug can make happen: a
//! closed or foreign descriptor) closes its clients as failed and stops
//! the server with that error, rather than limping on.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::info;

mod client;
#[cfg(test)]
mod tests;

use client::LoopClient;

use super::compute::{Compute, ComputePool};
use super::conn::{self, BUF_SIZE, LOG_TARGET, Outcome};
use super::listener::{self, Io};
use super::responder::Responder;
use super::{ClientGuard, Config, EventSettings, Protocol, ServerState};

/// Reads one client may make in a turn (up to 1 MiB) before the loop
/// serves the others.
const READS_PER_TURN: usize = 16;

/// The waker's token; clients use their slab keys, which never reach it.
const WAKE: Token = Token(usize::MAX);

/// New clients a loop may have waiting to be registered before the
/// acceptor waits for it (and further clients wait in the backlog).
const HANDOFF: usize = 1024;

/// A client admitted (counted) by the acceptor, on its way to a loop.
/// The guard comes first so that it drops before the socket.
type NewClient = (ClientGuard, std::net::TcpStream, SocketAddr);

struct LoopHandle {
    clients: Sender<NewClient>,
    waker: Arc<Waker>,
    thread: thread::JoinHandle<io::Result<()>>,
}

pub(crate) fn run(
    listener: TcpListener,
    ctx: &Arc<ServerState>,
    settings: &EventSettings,
) -> io::Result<()> {
    let compute = match ctx.config.protocol {
        Protocol::Prime => Some(ComputePool::start(settings.loops, ctx.closing_flag())?),
        Protocol::Bytes => None,
    };
    let loops = Loops::start(ctx, settings, compute.as_ref().map(ComputePool::handle));
    let result = loops.and_then(|mut loops| {
        let stop = ctx.shutdown.channel();
        let accepted =
            listener::accept_loop(listener, ctx, Io::NonBlocking, |stream, peer, permit| {
                // Registered here, not in the loop, so that the drain knows of
                // clients still on their way to a loop.
                let guard = ctx.enter(&stream, permit);
                loops.hand((guard, stream, peer), &stop)
            });
        // A loop's own failure says more than what the acceptor saw.
        loops.stop().and(accepted)
    });
    if let Some(compute) = compute {
        compute.stop();
    }
    result
}

/// The running loops, taking new clients in turn.
struct Loops {
    handles: Vec<LoopHandle>,
    next: usize,
}

impl Loops {
    fn start(
        ctx: &Arc<ServerState>,
        settings: &EventSettings,
        compute: Option<Compute>,
    ) -> io::Result<Self> {
        let mut loops = Loops {
            handles: Vec::with_capacity(settings.loops),
            next: 0,
        };
        for id in 0..settings.loops {
            match start_loop(id, ctx, settings, compute.clone()) {
                Ok(handle) => loops.handles.push(handle),
                Err(e) => {
                    ctx.shutdown.trigger();
                    let _ = loops.stop();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start event loop {id}: {e}"),
                    ));
                }
            }
        }
        Ok(loops)
    }

    /// Hands a client to the next loop in turn. Breaks when the server
    /// stops, or when a loop has failed (and with it, the server).
    fn hand(&mut self, client: NewClient, stop: &Receiver<()>) -> ControlFlow<()> {
        let target = &self.handles[self.next % self.handles.len()];
        self.next += 1;
        select! {
            send(target.clients, client) -> sent => match sent {
                Ok(()) => {
                    let _ = target.waker.wake();
                    ControlFlow::Continue(())
                }
                // The loop has ended on an error; its guard, dropped here,
                // counts the client.
                Err(_) => ControlFlow::Break(()),
            },
            // The client's guard, dropped here, counts it as closed at
            // shutdown.
            recv(stop) -> _ => ControlFlow::Break(()),
        }
    }

    /// Closes the loops' channels and waits for them: each loop ends once
    /// the shutdown has fired, its channel is closed and its last client
    /// has left. The first loop's error, if any loop failed.
    fn stop(self) -> io::Result<()> {
        let mut threads = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            drop(handle.clients);
            let _ = handle.waker.wake();
            threads.push(handle.thread);
        }
        let mut result = Ok(());
        for thread in threads {
            let ended = thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("an event loop panicked")));
            if result.is_ok() {
                result = ended;
            }
        }
        result
    }
}

fn start_loop(
    id: usize,
    ctx: &Arc<ServerState>,
    settings: &EventSettings,
    compute: Option<Compute>,
) -> io::Result<LoopHandle> {
    let (event_loop, clients, waker) = EventLoop::new(ctx, settings, compute)?;
    let ctx = Arc::clone(ctx);
    let thread = thread::Builder::new()
        .name(format!("event-{id}"))
        .spawn(move || {
            let ended = event_loop.run();
            if let Err(e) = &ended {
                tracing::error!("event loop {id} failed: {e}; the server stops");
                ctx.shutdown.trigger();
            }
            ended.map_err(|e| io::Error::new(e.kind(), format!("event loop {id} failed: {e}")))
        })?;
    Ok(LoopHandle {
        clients,
        waker,
        thread,
    })
}

/// How often a loop looks for clients past a timeout: an eighth of the
/// shortest timeout, so a client is closed at most 12.5% late, within
/// bounds that keep the scan rare.
pub(super) fn sweep_interval(config: &Config) -> Option<Duration> {
    let shortest = [config.idle_timeout, config.write_timeout]
        .into_iter()
        .flatten()
        .min()?;
    Some((shortest / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)))
}

struct EventLoop {
    poll: Poll,
    clients: Slab<LoopClient>,
    incoming: Receiver<NewClient>,
    incoming_closed: bool,
    ctx: Arc<ServerState>,
    outbound_cap: usize,
    // Shared by all of this loop's clients: reading is synchronous, so no
    // client needs a read buffer of its own between events.
    buf: Box<[u8]>,
    // Tells a client apart from a later one in the same slab slot, for
    // results that come back after their client left.
    next_id: u64,
    offload: Option<Offloader>,
    results: Receiver<Answer>,
    /// Clients whose turn ended before their input did.
    again: Vec<usize>,
}

/// The answer to a number a client sent, for the client at this slab key
/// with this id: the number, and whether it is prime (`None` if the drain
/// ended first).
type Answer = ((usize, u64), u64, Option<bool>);

/// A loop's way to the compute pool, and back.
struct Offloader {
    compute: Compute,
    reply: Sender<Answer>,
    waker: Arc<Waker>,
}

impl Offloader {
    fn send(&self, n: u64, client: (usize, u64)) {
        let (reply, waker) = (self.reply.clone(), Arc::clone(&self.waker));
        self.compute.submit(n, move |prime| {
            if reply.send((client, n, prime)).is_ok() {
                let _ = waker.wake();
            }
        });
    }
}

impl EventLoop {
    /// A loop, the way to hand it clients, and its waker.
    fn new(
        ctx: &Arc<ServerState>,
        settings: &EventSettings,
        compute: Option<Compute>,
    ) -> io::Result<(Self, Sender<NewClient>, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        ctx.shutdown.register_waker(waker.clone());
        let (clients, incoming) = crossbeam_channel::bounded(HANDOFF);
        let (reply, results) = crossbeam_channel::unbounded();
        let event_loop = EventLoop {
            poll,
            clients: Slab::new(),
            incoming,
            incoming_closed: false,
            ctx: Arc::clone(ctx),
            outbound_cap: settings.outbound_cap,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            next_id: 0,
            offload: compute.map(|compute| Offloader {
                compute,
                reply,
                waker: Arc::clone(&waker),
            }),
            results,
            again: Vec::new(),
        };
        Ok((event_loop, clients, waker))
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let sweep_every = sweep_interval(&self.ctx.config);
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            if self.ctx.shutdown.is_triggered() && self.incoming_closed && self.clients.is_empty() {
                return Ok(());
            }
            let timeout = if self.again.is_empty() {
                next_sweep.map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                // Clients with more to read get their next turn at once.
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Without its poll a loop cannot serve anyone: its
                    // clients are closed as failed, and the server stops.
                    for client in self.clients.drain() {
                        client.close(io::Error::new(e.kind(), e.to_string()).into());
                    }
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    WAKE => {
                        self.take_new_clients();
                        self.take_answers();
                    }
                    Token(key) => self.drive(key),
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.drive(key);
            }
            if let (Some(at), Some(every)) = (next_sweep, sweep_every) {
                let now = Instant::now();
                if now >= at {
                    self.close_expired(now);
                    next_sweep = Some(now + every);
                }
            }
        }
    }

    /// Closes the clients that ran out of a timeout. A scan of every client
    /// every few milliseconds is cheap next to a timer per client: ten
    /// thousand clients take microseconds to scan.
    fn close_expired(&mut self, now: Instant) {
        let expired: Vec<(usize, Outcome)> = self
            .clients
            .iter()
            .filter_map(|(key, c)| c.expired(now, &self.ctx.config).map(|e| (key, e)))
            .collect();
        for (key, error) in expired {
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.socket);
            client.close(error);
        }
    }

    fn take_new_clients(&mut self) {
        loop {
            match self.incoming.try_recv() {
                Ok(client) => {
                    if self.ctx.shutdown.is_triggered() {
                        // Its guard counts it as closed at shutdown.
                        drop(client);
                    } else {
                        let (guard, stream, peer) = client;
                        self.add(guard, stream, peer);
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.incoming_closed = true;
                    return;
                }
            }
        }
    }

    fn take_answers(&mut self) {
        while let Ok(((key, id), n, prime)) = self.results.try_recv() {
            // No answer: the drain is over, and `drive` closes the client.
            let Some(prime) = prime else {
                self.drive(key);
                continue;
            };
            match self.clients.get_mut(key) {
                Some(client) if client.id == id => {
                    // An answer line is at most "composite\n".
                    if let Err(e) = self.ctx.budget.reserve(&mut client.out, 16) {
                        let mut client = self.clients.remove(key);
                        let _ = self.poll.registry().deregister(&mut client.socket);
                        client.close(e.into());
                        continue;
                    }
                    client.responder.answered(n, prime, &mut client.out);
                    client.computing = false;
                    self.drive(key);
                }
                // Its client left while the number was being tested.
                _ => {}
            }
        }
    }

    fn add(&mut self, guard: ClientGuard, stream: std::net::TcpStream, peer: SocketAddr) {
        info!(target: LOG_TARGET, "peer {peer} connected");
        let key = self.clients.vacant_key();
        let mut socket = TcpStream::from_std(stream);
        let protocol = self.ctx.config.protocol;
        let greeting = Responder::greeting(protocol);
        let mut out = Vec::new();
        let setup = self
            .room_for_one()
            .and_then(|()| self.ctx.budget.reserve(&mut out, greeting.len()))
            .and_then(|()| socket.set_nodelay(true))
            .and_then(|()| {
                self.poll
                    .registry()
                    .register(&mut socket, Token(key), Interest::READABLE)
            });
        out.extend_from_slice(greeting);
        self.next_id += 1;
        let client = LoopClient {
            guard,
            socket,
            peer,
            id: self.next_id,
            responder: Responder::new(protocol),
            out,
            sent: 0,
            unread: Vec::new(),
            computing: false,
            close_reason: None,
            read_closed: false,
            watching_writes: false,
            more: false,
            last_heard: Instant::now(),
            last_progress: Instant::now(),
        };
        if let Err(e) = setup {
            let mut socket = client.socket;
            let _ = self.poll.registry().deregister(&mut socket);
            conn::finish(client.guard, client.peer, e.into());
            return;
        }
        self.clients.insert(client);
        // The greeting goes out now; the socket is writable from the start.
        self.drive(key);
    }

    /// Checks that one more client fits in the slab: it doubles as it
    /// fills, and under an address-space limit that growth is checked like
    /// any other (without one the check is free).
    fn room_for_one(&self) -> io::Result<()> {
        if self.clients.len() < self.clients.capacity() {
            return Ok(());
        }
        let entry = std::mem::size_of::<LoopClient>() + std::mem::size_of::<usize>();
        let growth = self.clients.capacity().max(4) * entry;
        Ok(self.ctx.budget.check(growth as u64)?)
    }

    /// Lets one client make all the progress it can.
    fn drive(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else {
            // An event for a client closed earlier in this batch.
            return;
        };
        if client.computing && self.ctx.is_closing() {
            // The drain is over; its number will not be waited for.
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.socket);
            client.close(Outcome::ClosedAtShutdown);
            return;
        }
        let (registry, buf, ctx) = (self.poll.registry(), &mut self.buf, &self.ctx);
        let (offload, cap) = (self.offload.as_ref(), self.outbound_cap);
        let step = panic::catch_unwind(AssertUnwindSafe(|| {
            client.progress(buf, ctx, cap, offload.map(|o| (o, key)))?;
            client.watch_writes_while_pending(registry, Token(key))?;
            Ok::<_, io::Error>(client.finished())
        }));
        if std::mem::take(&mut client.more) {
            // Readiness is edge-triggered: no new event will come for what
            // is already waiting, so the loop must remember to come back.
            self.again.push(key);
        }
        let outcome = match step {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(outcome))) => outcome,
            Ok(Err(e)) => e.into(),
            Err(panic) => Outcome::Panicked(conn::panic_message(&*panic)),
        };
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.socket);
        client.close(outcome);
    }
}
