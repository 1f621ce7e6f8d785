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
//!   [`Config::outbound_cap`](super::Config::outbound_cap) the loop stops
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

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::info;

use super::conn::{self, BUF_SIZE, LOG_TARGET, Outcome};
use super::listener::{self, Blocking};
use super::responder::{Responder, Stop};
use super::{ClientGuard, Config, Ctx, Protocol};
use crate::prime;

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
    id: usize,
    clients: Sender<NewClient>,
    /// Set by the loop when its poll has failed.
    failed: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: thread::JoinHandle<()>,
    /// The loop's epoll descriptor, for the test that makes it fail.
    #[cfg(test)]
    poll_fd: std::os::fd::RawFd,
}

pub(crate) fn run(listener: TcpListener, ctx: &Arc<Ctx>) -> io::Result<()> {
    let compute = match ctx.config.protocol {
        Protocol::Prime => Some(ComputePool::start(ctx.config.loops, ctx.closing_flag())?),
        Protocol::Bytes => None,
    };
    let mut loops = Loops::start(ctx, compute.as_ref())?;
    let stop = ctx.shutdown.channel();
    let result = listener::accept_loop(listener, ctx, Blocking::No, |stream, peer| {
        // Admitted here, not in the loop, so that the connection limit
        // counts clients still on their way to a loop.
        let guard = ctx.enter(&stream);
        loops.hand((guard, stream, peer), &stop)
    });
    let all_failed = loops.handles.is_empty();
    loops.stop();
    if let Some(compute) = compute {
        compute.stop();
    }
    if all_failed {
        return Err(io::Error::other("every event loop failed"));
    }
    result
}

/// The running loops, taking new clients in turn.
struct Loops {
    handles: Vec<LoopHandle>,
    next: usize,
}

impl Loops {
    fn start(ctx: &Arc<Ctx>, compute: Option<&ComputePool>) -> io::Result<Self> {
        let mut loops = Loops {
            handles: Vec::with_capacity(ctx.config.loops),
            next: 0,
        };
        for id in 0..ctx.config.loops {
            match start_loop(id, ctx, compute.map(|c| c.jobs.clone())) {
                Ok(handle) => loops.handles.push(handle),
                Err(e) => {
                    ctx.shutdown.trigger();
                    loops.stop();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start event loop {id}: {e}"),
                    ));
                }
            }
        }
        Ok(loops)
    }

    /// Hands a client to the next loop in turn. A loop whose poll failed
    /// leaves the rotation and the client goes to the next one, so one
    /// broken loop costs its own clients and nobody else's. Breaks when the
    /// server stops or no loop is left.
    fn hand(&mut self, client: NewClient, stop: &Receiver<()>) -> ControlFlow<()> {
        let mut client = Some(client);
        while !self.handles.is_empty() {
            let at = self.next % self.handles.len();
            if self.handles[at].failed.load(Ordering::SeqCst) {
                self.retire(at);
                continue;
            }
            let target = &self.handles[at];
            let sent = select! {
                send(target.clients, client.take().expect("held until sent")) -> sent => sent,
                // The client's guard, dropped here, counts it as closed at
                // shutdown.
                recv(stop) -> _ => return ControlFlow::Break(()),
            };
            match sent {
                Ok(()) => {
                    self.next = at + 1;
                    let _ = target.waker.wake();
                    return ControlFlow::Continue(());
                }
                // Its thread is gone without flagging a failure (a panic).
                Err(back) => {
                    self.retire(at);
                    client = Some(back.into_inner());
                }
            }
        }
        tracing::error!("every event loop has failed: the server stops");
        // Its guard counts it as failed.
        drop(client);
        ControlFlow::Break(())
    }

    /// Takes a failed loop out of the rotation and waits for it.
    fn retire(&mut self, at: usize) {
        let LoopHandle {
            id,
            clients,
            thread,
            ..
        } = self.handles.remove(at);
        tracing::error!(
            "event loop {id} has failed; {} loops left to serve new clients",
            self.handles.len()
        );
        // Letting go of its channel ends the failed loop's last drain.
        drop(clients);
        let _ = thread.join();
    }

    /// Closes the loops' channels and waits for them: each loop ends once
    /// the shutdown has fired, its channel is closed and its last client
    /// has left.
    fn stop(self) {
        let mut threads = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            drop(handle.clients);
            let _ = handle.waker.wake();
            threads.push(handle.thread);
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn start_loop(id: usize, ctx: &Arc<Ctx>, jobs: Option<Sender<Job>>) -> io::Result<LoopHandle> {
    let (event_loop, clients, waker) = EventLoop::new(ctx, jobs)?;
    let failed = Arc::clone(&event_loop.failed);
    #[cfg(test)]
    let poll_fd = std::os::fd::AsRawFd::as_raw_fd(&event_loop.poll);
    let thread = thread::Builder::new()
        .name(format!("event-{id}"))
        .spawn(move || event_loop.run())?;
    Ok(LoopHandle {
        id,
        clients,
        failed,
        waker,
        thread,
        #[cfg(test)]
        poll_fd,
    })
}

/// How often a loop looks for clients past a timeout: an eighth of the
/// shortest timeout, so a client is closed at most 12.5% late, within
/// bounds that keep the scan rare.
fn sweep_interval(config: &Config) -> Option<Duration> {
    let shortest = [config.idle_timeout, config.write_timeout]
        .into_iter()
        .flatten()
        .min()?;
    Some((shortest / 8).clamp(Duration::from_millis(5), Duration::from_secs(1)))
}

struct EventLoop {
    poll: Poll,
    clients: Slab<Client>,
    incoming: Receiver<NewClient>,
    incoming_closed: bool,
    /// Set when the poll has failed: the acceptor stops handing clients to
    /// this loop.
    failed: Arc<AtomicBool>,
    ctx: Arc<Ctx>,
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

/// A number to test off the loop, and where its answer goes.
struct Job {
    n: u64,
    client: (usize, u64),
    reply: Sender<Answer>,
    waker: Arc<Waker>,
}

/// The answer to a [`Job`], for the client at this slab key with this id:
/// the number, and whether it is prime.
type Answer = ((usize, u64), u64, bool);

/// A loop's way to the compute pool.
struct Offloader {
    jobs: Sender<Job>,
    reply: Sender<Answer>,
    waker: Arc<Waker>,
}

impl Offloader {
    fn send(&self, n: u64, client: (usize, u64)) {
        let job = Job {
            n,
            client,
            reply: self.reply.clone(),
            waker: Arc::clone(&self.waker),
        };
        // The pool outlives the loops; a send can only fail after stop().
        let _ = self.jobs.send(job);
    }
}

/// The threads that run trial divisions for the event loops, so that a
/// request worth seconds of CPU never stalls a loop and its other clients.
/// Bounded twice over: as many threads as loops, and at most one number in
/// flight per client (a client's further input waits until its answer is
/// in, which also keeps its answers in order).
struct ComputePool {
    jobs: Sender<Job>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ComputePool {
    fn start(size: usize, closing: Arc<AtomicBool>) -> io::Result<Self> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(size);
        for id in 0..size {
            let (queue, closing) = (queue.clone(), Arc::clone(&closing));
            threads.push(thread::Builder::new().name(format!("compute-{id}")).spawn(
                move || {
                    for job in queue {
                        // Once the drain is over, the loop closes the
                        // client instead of waiting for this answer.
                        let gave_up = || closing.load(Ordering::SeqCst);
                        let Some(prime) = prime::is_prime_unless(job.n, gave_up) else {
                            continue;
                        };
                        if job.reply.send((job.client, job.n, prime)).is_ok() {
                            let _ = job.waker.wake();
                        }
                    }
                },
            )?);
        }
        Ok(ComputePool { jobs, threads })
    }

    fn stop(self) {
        drop(self.jobs);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

impl EventLoop {
    /// A loop, the way to hand it clients, and its waker.
    fn new(
        ctx: &Arc<Ctx>,
        jobs: Option<Sender<Job>>,
    ) -> io::Result<(Self, Sender<NewClient>, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        ctx.shutdown.register_waker(Arc::clone(&waker));
        let (clients, incoming) = crossbeam_channel::bounded(HANDOFF);
        let (reply, results) = crossbeam_channel::unbounded();
        let event_loop = EventLoop {
            poll,
            clients: Slab::new(),
            incoming,
            incoming_closed: false,
            failed: Arc::default(),
            ctx: Arc::clone(ctx),
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            next_id: 0,
            offload: jobs.map(|jobs| Offloader {
                jobs,
                reply,
                waker: Arc::clone(&waker),
            }),
            results,
            again: Vec::new(),
        };
        Ok((event_loop, clients, waker))
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let sweep_every = sweep_interval(&self.ctx.config);
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            if self.ctx.shutdown.is_triggered() && self.incoming_closed && self.clients.is_empty() {
                return;
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
                    // Without its poll a loop cannot serve anyone; its
                    // clients are closed as failed.
                    tracing::error!("event loop failed: {e}; closing its clients");
                    self.failed.store(true, Ordering::SeqCst);
                    let failed = || Ok(Err(io::Error::new(e.kind(), e.to_string())));
                    for client in self.clients.drain() {
                        client.close(failed());
                    }
                    // Clients handed to this loop are closed as failed too,
                    // until the acceptor, seeing the flag, lets go of the
                    // channel (or the server stops): one sent just before
                    // it looked is closed here, not left in the channel.
                    for (guard, stream, peer) in self.incoming.iter() {
                        conn::finish(guard, peer, failed());
                        drop(stream);
                    }
                    return;
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
        let expired: Vec<(usize, io::Error)> = self
            .clients
            .iter()
            .filter_map(|(key, c)| c.expired(now, &self.ctx.config).map(|e| (key, e)))
            .collect();
        for (key, error) in expired {
            let mut client = self.clients.remove(key);
            let _ = self.poll.registry().deregister(&mut client.socket);
            client.close(Ok(Err(error)));
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
            match self.clients.get_mut(key) {
                Some(client) if client.id == id => {
                    // An answer line is at most "composite\n".
                    if let Err(e) = self.ctx.budget.reserve(&mut client.out, 16) {
                        let mut client = self.clients.remove(key);
                        let _ = self.poll.registry().deregister(&mut client.socket);
                        client.close(Ok(Err(e)));
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
        let client = Client {
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
            conn::finish(client.guard, client.peer, Ok(Err(e)));
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
        let entry = std::mem::size_of::<Client>() + std::mem::size_of::<usize>();
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
            client.close(Ok(Err(conn::closed_while_computing())));
            return;
        }
        let (registry, buf, ctx) = (self.poll.registry(), &mut self.buf, &self.ctx);
        let offload = self.offload.as_ref();
        let step = panic::catch_unwind(AssertUnwindSafe(|| {
            client.progress(buf, ctx, offload.map(|o| (o, key)))?;
            client.watch_writes_while_pending(registry, Token(key))?;
            Ok(client.finished())
        }));
        if std::mem::take(&mut client.more) {
            // Readiness is edge-triggered: no new event will come for what
            // is already waiting, so the loop must remember to come back.
            self.again.push(key);
        }
        let outcome: Outcome = match step {
            Ok(Ok(None)) => return,
            Ok(Ok(Some(outcome))) => Ok(outcome),
            Ok(Err(e)) => Ok(Err(e)),
            Err(panic) => Err(conn::panic_message(&*panic)),
        };
        let mut client = self.clients.remove(key);
        let _ = self.poll.registry().deregister(&mut client.socket);
        client.close(outcome);
    }
}

/// One client of an event loop.
struct Client {
    // Declared before the socket, so it drops first: the drain's registry
    // must never hold a closed descriptor.
    guard: ClientGuard,
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    responder: Responder,
    /// Answers not yet written; `out[sent..]` is pending.
    out: Vec<u8>,
    sent: usize,
    /// Input read but not yet answered, held while a number of this
    /// client's is being tested off the loop (at most one read's worth:
    /// the client is not read from meanwhile).
    unread: Vec<u8>,
    computing: bool,
    /// Set when the client broke the protocol: close once its last answer
    /// (the error line) is out.
    close_reason: Option<String>,
    /// The client has closed its sending side; what is pending still goes.
    read_closed: bool,
    watching_writes: bool,
    /// Its turn ended with input possibly still waiting in the kernel.
    more: bool,
    /// When the client last sent anything (or arrived), for the idle
    /// timeout.
    last_heard: Instant,
    /// When its pending output last moved (or started pending), for the
    /// write timeout.
    last_progress: Instant,
}

impl Client {
    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// How the client ends, once everything owed has been sent: after its
    /// end-of-file, or after the error line for a protocol violation.
    fn finished(&self) -> Option<io::Result<()>> {
        if self.pending() > 0 || self.computing || !self.unread.is_empty() {
            return None;
        }
        match &self.close_reason {
            Some(reason) => Some(Err(conn::protocol_violation(reason.clone()))),
            None => self.read_closed.then_some(Ok(())),
        }
    }

    /// Writes and reads until the kernel says "would block", the client
    /// has said everything, its pending output is over the cap, or one of
    /// its numbers is being tested elsewhere.
    fn progress(
        &mut self,
        buf: &mut [u8],
        ctx: &Ctx,
        offload: Option<(&Offloader, usize)>,
    ) -> io::Result<()> {
        let mut reads = 0;
        loop {
            self.flush(ctx)?;
            if self.computing || self.close_reason.is_some() {
                // The answer, or the close, comes first.
                return Ok(());
            }
            if self.pending() > ctx.config.outbound_cap {
                // Flushing stopped on "would block": a writable event will
                // bring us back here.
                return Ok(());
            }
            if !self.unread.is_empty() {
                let unread = std::mem::take(&mut self.unread);
                self.answer(&unread, ctx, offload)?;
                continue;
            }
            if self.read_closed {
                return Ok(());
            }
            if reads == READS_PER_TURN {
                // Fair turns: a client that sends as fast as it reads would
                // otherwise never let its loop serve anyone else.
                self.more = true;
                return Ok(());
            }
            reads += 1;
            match self.socket.read(buf) {
                Ok(0) => self.read_closed = true,
                Ok(n) => {
                    ctx.count_bytes_in(n);
                    self.last_heard = Instant::now();
                    if self.pending() == 0 {
                        self.last_progress = self.last_heard;
                    }
                    self.answer(&buf[..n], ctx, offload)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers `input` into the outbound buffer, growing it (and the
    /// unanswered rest) only as the memory limit allows: a client whose
    /// answers do not fit is ended, not the server.
    fn answer(
        &mut self,
        input: &[u8],
        ctx: &Ctx,
        offload: Option<(&Offloader, usize)>,
    ) -> io::Result<()> {
        let growth = self.responder.max_growth(self.out.len(), input.len());
        ctx.budget.reserve(&mut self.out, growth)?;
        let (used, stop) = self
            .responder
            .respond(input, &mut self.out, offload.is_some());
        let mut keep = |rest: &[u8]| -> io::Result<()> {
            ctx.budget.reserve(&mut self.unread, rest.len())?;
            self.unread.extend_from_slice(rest);
            Ok(())
        };
        match stop {
            Stop::No => {}
            Stop::Offload(n) => {
                keep(&input[used..])?;
                if let Some((offloader, key)) = offload {
                    offloader.send(n, (key, self.id));
                }
                self.computing = true;
            }
            Stop::Close(reason) => self.close_reason = Some(reason),
            Stop::Full => keep(&input[used..])?,
        }
        ctx.note_buffered(self.pending());
        Ok(())
    }

    fn flush(&mut self, ctx: &Ctx) -> io::Result<()> {
        while self.pending() > 0 {
            match self.socket.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    ctx.count_bytes_out(n);
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // All sent: start the buffer over, and give back a large one so an
        // idle client costs next to nothing.
        if self.out.capacity() > BUF_SIZE {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.sent = 0;
        Ok(())
    }

    fn watch_writes_while_pending(
        &mut self,
        registry: &mio::Registry,
        token: Token,
    ) -> io::Result<()> {
        let want = self.pending() > 0;
        if want != self.watching_writes {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.socket, token, interest)?;
            self.watching_writes = want;
        }
        Ok(())
    }

    /// The timeout this client has run out of at `now`, if any.
    fn expired(&self, now: Instant, config: &Config) -> Option<io::Error> {
        if self.computing {
            // Waiting for us, not for the client.
            None
        } else if self.pending() > 0 {
            let limit = config.write_timeout?;
            (now.duration_since(self.last_progress) >= limit).then(|| conn::write_timeout(limit))
        } else {
            let limit = config.idle_timeout?;
            (now.duration_since(self.last_heard) >= limit).then(|| conn::idle_timeout(limit))
        }
    }

    fn close(self, outcome: Outcome) {
        let Client {
            guard,
            socket,
            peer,
            ..
        } = self;
        conn::finish(guard, peer, outcome);
        drop(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Model, snapshot};
    use std::os::fd::AsRawFd;

    /// A served connection: the client side, and the server side as the
    /// acceptor would hand it on.
    fn accept_one(
        listener: &TcpListener,
    ) -> (std::net::TcpStream, std::net::TcpStream, SocketAddr) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, server, peer)
    }

    fn round_trip(client: &mut std::net::TcpStream) {
        let mut got = [0u8; 3];
        client.read_exact(&mut got[..1]).unwrap();
        client.write_all(b"^ab$").unwrap();
        client.read_exact(&mut got[1..]).unwrap();
        assert_eq!(&got, b"*bc");
    }

    /// Makes the loop's next poll fail for real: its epoll descriptor is
    /// replaced (atomically, so no other test can be handed the number) by
    /// one that is not an epoll instance, and the loop is woken to poll
    /// again.
    fn break_loop(handle: &LoopHandle) {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_ne!(unsafe { libc::dup2(null.as_raw_fd(), handle.poll_fd) }, -1);
        handle.waker.wake().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !handle.failed.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the loop did not fail");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_client_that_never_runs_dry_gets_turns_not_the_loop() {
        let (ctx, stats) = Ctx::for_test(Config::new(Model::Event));
        let (mut event_loop, _clients, _waker) = EventLoop::new(&ctx, None).unwrap();
        // Small reads, so that a few turns' worth fits in the kernel's
        // receive queue and the turn's bound, not the queue, ends a turn.
        const READ: usize = 256;
        event_loop.buf = vec![0; READ].into_boxed_slice();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut client, server, peer) = accept_one(&listener);
        event_loop.add(ctx.enter(&server), server, peer);
        let mut star = [0u8; 1];
        client.read_exact(&mut star).unwrap();
        assert_eq!(&star, b"*");

        // Bytes outside any message: read, answered with nothing.
        let turn = READS_PER_TURN * READ;
        client.write_all(&vec![b'x'; 3 * turn]).unwrap();
        let (key, _) = event_loop.clients.iter().next().unwrap();
        let mut peek = vec![0u8; 3 * turn];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let queued = event_loop.clients[key].socket.peek(&mut peek).unwrap_or(0);
            if queued == 3 * turn {
                break;
            }
            assert!(Instant::now() < deadline, "only {queued} bytes arrived");
            thread::sleep(Duration::from_millis(1));
        }

        // Each turn reads its bound and leaves the client to come back.
        for turns in 1..=2 {
            event_loop.drive(key);
            assert_eq!(snapshot(&stats).bytes_in, (turns * turn) as u64);
            assert_eq!(std::mem::take(&mut event_loop.again), [key]);
        }
    }

    #[test]
    fn a_failed_loop_leaves_the_rotation_and_costs_only_its_own_clients() {
        let mut config = Config::new(Model::Event);
        config.loops = 2;
        let (ctx, stats) = Ctx::for_test(config);
        let stop = ctx.shutdown.channel();
        let mut loops = Loops::start(&ctx, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hand = |loops: &mut Loops| {
            let (client, server, peer) = accept_one(&listener);
            let flow = loops.hand((ctx.enter(&server), server, peer), &stop);
            (client, flow)
        };

        // Loop 0 takes the first client, then fails under it.
        let (mut first, flow) = hand(&mut loops);
        assert_eq!(flow, ControlFlow::Continue(()));
        round_trip(&mut first);
        break_loop(&loops.handles[0]);
        let mut rest = Vec::new();
        let _ = first.read_to_end(&mut rest);
        assert_eq!(rest, b"", "closed by its failed loop");
        assert_eq!(snapshot(&stats).failed, 1);

        // A client the acceptor sent before it saw the failure is closed
        // and counted by the failed loop, not left in its channel.
        let (mut late, server, peer) = accept_one(&listener);
        let guard = ctx.enter(&server);
        loops.handles[0]
            .clients
            .send((guard, server, peer))
            .unwrap();
        let _ = late.read_to_end(&mut rest);
        assert_eq!(rest, b"", "closed by its failed loop");
        assert_eq!(snapshot(&stats).failed, 2);

        // Loop 1 takes the next client; the one after, due to loop 0, goes
        // to loop 1 as well, and both are served.
        let mut served = Vec::new();
        for _ in 0..2 {
            let (mut client, flow) = hand(&mut loops);
            assert_eq!(flow, ControlFlow::Continue(()));
            round_trip(&mut client);
            served.push(client);
        }
        assert_eq!(loops.handles.len(), 1);
        assert_eq!(loops.handles[0].id, 1);

        // With no loop left, the newcomer is closed, counted, and the
        // acceptor is told to stop.
        break_loop(&loops.handles[0]);
        let (mut last, flow) = hand(&mut loops);
        assert_eq!(flow, ControlFlow::Break(()));
        assert!(loops.handles.is_empty());
        for client in served.iter_mut().chain([&mut last]) {
            let _ = client.read_to_end(&mut rest);
            assert_eq!(rest, b"", "closed: nobody is left to serve it");
        }
        let summary = snapshot(&stats);
        assert_eq!((summary.failed, summary.clients_now), (5, 0));
        ctx.shutdown.trigger();
        loops.stop();
    }
}
