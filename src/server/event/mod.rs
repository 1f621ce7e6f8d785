//! The event-driven server: a few mio event loops, no thread per client.
//!
//! Where the thread models park a thread in `read` for every client, an
//! event loop asks the kernel (epoll) which of its clients can make
//! progress and serves exactly those, never blocking. A client is then just
//! a small struct: its [`Session`] (protocol state, answers, timeouts) and
//! its socket. This file is the loop; `client` is what one turn of a
//! client does with the readiness it was given.
//!
//! - **Reads** drain the socket (readiness is edge-triggered) through one
//!   64 KiB buffer per loop; a read that comes back short has emptied it,
//!   and the next arrival brings a new edge, so the loop does not read
//!   again to be told "would block". The answers go into the client's
//!   session.
//! - **Writes** drain the session's answers until the kernel takes no
//!   more. The client is watched for writability only while something is
//!   pending.
//! - **Backpressure**: the loop reads from a client only while its
//!   pending answers are at most half of [`EventSettings::outbound_cap`]
//!   (so that a read is good for a useful amount, not one buffer at a
//!   time at the cap), and what it read waits unanswered while they are
//!   over the cap. A client that sends and never reads thus costs at most
//!   the cap plus one read, and loses nothing: its unread bytes wait in the
//!   kernel, and TCP flow control slows it down.
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
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

mod client;
#[cfg(test)]
mod tests;

use client::LoopClient;

use super::compute::{Compute, ComputePool, Offloader};
use super::listener::{self, Io};
use super::loops::{self, LoopThread};
use super::memory::BUF_SIZE;
use super::model::EventSettings;
use super::registry::{ClientGuard, Outcome};
use super::session::{self, HANDOFF, Handed, NewClient, Session, Spares};
use super::slots::{ClientId, Slots};
use super::state::ServerState;

/// The waker's token; a client's is its id, which never reaches it.
const WAKE: Token = Token(usize::MAX);

fn token(id: ClientId) -> Token {
    Token(id.to_u64() as usize)
}

/// A running loop, as the acceptor hands it clients.
struct LoopHandle {
    clients: Sender<NewClient>,
    waker: Arc<Waker>,
}

pub(crate) fn run(
    listener: TcpListener,
    state: &Arc<ServerState>,
    settings: &EventSettings,
) -> io::Result<()> {
    let compute = ComputePool::for_server(state, settings.loops)?;
    let loops = Loops::start(state, settings, compute.as_ref().map(ComputePool::handle));
    let result = loops.and_then(|mut loops| {
        let stop = state.shutdown.channel();
        let accepted = listener::accept_loop(
            listener,
            state,
            Io::NonBlocking,
            |_, stream, peer, permit| {
                // Registered here, not in the loop, so that the drain knows of
                // clients still on their way to a loop.
                let guard = state.registry.enter(&stream, peer, permit);
                loops.hand((guard, stream), &stop)
            },
        );
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
    threads: Vec<LoopThread>,
    next: usize,
}

impl Loops {
    fn start(
        state: &Arc<ServerState>,
        settings: &EventSettings,
        compute: Option<Compute>,
    ) -> io::Result<Self> {
        let mut starting = loops::Starting::new("event loop", "event", &state.shutdown);
        let mut handles = Vec::with_capacity(settings.loops);
        let set_up = (0..settings.loops).try_for_each(|id| {
            let (state, settings, compute) = (Arc::clone(state), settings.clone(), compute.clone());
            handles.push(starting.spawn(id, move || {
                let (event_loop, clients, waker) = EventLoop::new(&state, &settings, compute)?;
                Ok((LoopHandle { clients, waker }, move || event_loop.run()))
            })?);
            Ok(())
        });
        Ok(Loops {
            threads: starting.release(set_up)?,
            handles,
            next: 0,
        })
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
        for handle in self.handles {
            drop(handle.clients);
            let _ = handle.waker.wake();
        }
        loops::join(self.threads, "event loop")
    }
}

struct EventLoop {
    poll: Poll,
    clients: Slots<LoopClient>,
    incoming: Receiver<NewClient>,
    incoming_closed: bool,
    state: Arc<ServerState>,
    outbound_cap: usize,
    // Shared by all of this loop's clients: reading is synchronous, so no
    // client needs a read buffer of its own between events.
    buf: Box<[u8]>,
    spares: Spares,
    offload: Option<Offloader>,
    /// Clients whose turn ended before their input did.
    again: Vec<ClientId>,
}

impl EventLoop {
    /// A loop, the way to hand it clients, and its waker.
    fn new(
        state: &Arc<ServerState>,
        settings: &EventSettings,
        compute: Option<Compute>,
    ) -> io::Result<(Self, Sender<NewClient>, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        state.shutdown.register_waker(waker.clone());
        let (clients, incoming) = crossbeam_channel::bounded(HANDOFF);
        let offload = compute.map(|compute| Offloader::new(compute, waker.clone()));
        let event_loop = EventLoop {
            poll,
            clients: Slots::default(),
            incoming,
            incoming_closed: false,
            state: Arc::clone(state),
            outbound_cap: settings.outbound_cap,
            buf: vec![0; BUF_SIZE].into_boxed_slice(),
            spares: Spares::default(),
            offload,
            again: Vec::new(),
        };
        Ok((event_loop, clients, waker))
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let sweep_every = session::sweep_interval(&self.state.config);
        let mut next_sweep = sweep_every.map(|every| Instant::now() + every);
        loop {
            if self.state.shutdown.is_triggered() && self.incoming_closed && self.clients.is_empty()
            {
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
                        let failed = io::Error::new(e.kind(), e.to_string());
                        client.end(failed.into(), &mut self.spares);
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
                    Token(id) => {
                        let id = ClientId::from_u64(id as u64);
                        if (event.is_read_closed() || event.is_error())
                            && let Some(client) = self.clients.get_mut(id)
                        {
                            client.hung_up = true;
                        }
                        self.drive(id);
                    }
                }
            }
            for id in std::mem::take(&mut self.again) {
                self.drive(id);
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
        let expired: Vec<(ClientId, Outcome)> = self
            .clients
            .iter()
            .filter_map(|(id, c)| c.session.expired(now, &self.state.config).map(|e| (id, e)))
            .collect();
        for (id, outcome) in expired {
            self.end(id, outcome);
        }
    }

    fn take_new_clients(&mut self) {
        // Handles of their own (reference counts), so that the clients can
        // be added to the loop as they are taken.
        let (incoming, shutdown) = (self.incoming.clone(), self.state.shutdown.clone());
        let mut handed = Handed::from(&incoming, &shutdown);
        for (guard, stream) in &mut handed {
            self.add(guard, stream);
        }
        self.incoming_closed |= handed.closed;
    }

    fn take_answers(&mut self) {
        while let Some((id, n, prime)) = self.offload.as_ref().and_then(Offloader::answer) {
            // No answer: the drain is over, and `drive` closes the client.
            let Some(prime) = prime else {
                self.drive(id);
                continue;
            };
            // None: its client left while the number was being tested.
            let Some(c) = self.clients.get_mut(id) else {
                continue;
            };
            match c.session.answered(n, prime, &self.state, &mut self.spares) {
                Ok(()) => self.drive(id),
                Err(e) => self.end(id, e.into()),
            }
        }
    }

    fn add(&mut self, guard: ClientGuard, stream: std::net::TcpStream) {
        guard.connected();
        let socket = TcpStream::from_std(stream);
        let session = Session::new(guard, &self.state, Instant::now());
        let ready = self
            .clients
            .room_for_one(&self.state.budget)
            .and_then(|()| socket.set_nodelay(true));
        if let Err(e) = ready {
            session.end(e.into(), socket, &mut self.spares);
            return;
        }
        let id = self.clients.insert(LoopClient::new(session, socket));
        let Some(client) = self.clients.get_mut(id) else {
            return;
        };
        let registered =
            self.poll
                .registry()
                .register(&mut client.socket, token(id), Interest::READABLE);
        if let Err(e) = registered {
            self.end(id, e.into());
            return;
        }
        // The greeting goes out now; the socket is writable from the start.
        self.drive(id);
    }

    /// Lets one client make all the progress it can.
    fn drive(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(id) else {
            // An event for a client closed earlier in this batch.
            return;
        };
        if client.session.is_computing() && self.state.registry.is_closing() {
            // The drain is over; its number will not be waited for.
            self.end(id, Outcome::ClosedAtShutdown);
            return;
        }
        let (registry, buf, state, spares) = (
            self.poll.registry(),
            &mut self.buf,
            &self.state,
            &mut self.spares,
        );
        let (offload, cap) = (self.offload.as_ref(), self.outbound_cap);
        let step = panic::catch_unwind(AssertUnwindSafe(|| {
            client.progress(buf, state, spares, cap, offload.map(|o| (o, id)))?;
            client.watch_writes_while_pending(registry, token(id))
        }));
        if std::mem::take(&mut client.more) {
            // Readiness is edge-triggered: no new event will come for what
            // is already waiting, so the loop must remember to come back.
            self.again.push(id);
        }
        let outcome = match Outcome::of_step(step) {
            Err(failed) => failed,
            Ok(()) => match client.session.finished() {
                Some(outcome) => outcome,
                None => return,
            },
        };
        self.end(id, outcome);
    }

    /// Ends a client: out of the table and the poll, then counted, logged
    /// and closed.
    fn end(&mut self, id: ClientId, outcome: Outcome) {
        if let Some(mut client) = self.clients.remove(id) {
            let _ = self.poll.registry().deregister(&mut client.socket);
            client.end(outcome, &mut self.spares);
        }
    }
}
