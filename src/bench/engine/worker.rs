//! One load thread: an epoll loop over its share of the connections, its
//! timers, the set-up and the run. What a connection does with the bytes
//! is in `exchange`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::clock::{TimerFd, thread_cpu};
use super::conn::{Conn, Phase, READ_BUF, Role, Shared, Spec, Tally};
use super::plan::{Go, SWEEP, Setup, TIMER, TURN};
use crate::bench::echo::Peer;

// ---------------------------------------------------------------------
// One thread
// ---------------------------------------------------------------------

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) poll: Poll,
    pub(super) conns: Slab<Conn>,
    pub(super) to_open: VecDeque<Spec>,
    /// Connections connecting or waiting for their `*`.
    pub(super) opening: usize,
    pub(super) window: usize,
    pub(super) timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    pub(super) timer: TimerFd,
    /// Connections whose turn ended before their work did.
    pub(super) again: Vec<usize>,
    pub(super) buf: Box<[u8]>,
    pub(super) next_id: u64,
    /// Set when the clock starts.
    pub(super) deadline: Option<Instant>,
    /// The last time a connection was established or greeted (set-up).
    pub(super) progress: Instant,
    pub(super) connected: usize,
    pub(super) greeted: usize,
    pub(super) tally: Tally,
}

impl Worker {
    pub(super) fn new(shared: Arc<Shared>, share: Vec<Spec>, window: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Worker {
            shared,
            poll,
            conns: Slab::with_capacity(share.len()),
            to_open: share.into(),
            opening: 0,
            window,
            timers: BinaryHeap::new(),
            timer,
            again: Vec::new(),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            next_id: 0,
            deadline: None,
            progress: Instant::now(),
            connected: 0,
            greeted: 0,
            tally: Tally::new(),
        })
    }

    /// Set-up, the wait for the clock, the run; returns what it measured.
    pub(super) fn live(mut self, ready: &mpsc::Sender<Setup>, go: &mpsc::Receiver<Go>) -> Tally {
        let churn = self.to_open.front().is_some_and(|s| s.role == Role::Churn);
        // Churn's connections are what it measures: none before the clock.
        if !churn {
            self.set_up();
        }
        let setup = Setup {
            connected: self.connected,
            greeted: self.greeted,
            unopened: self.to_open.len(),
            errors: self.tally.error_samples.clone(),
        };
        if ready.send(setup).is_err() {
            return self.tally;
        }
        let start = match go.recv() {
            Ok(Go::Start(at)) => at,
            Ok(Go::Release) | Err(_) => return self.tally,
        };
        let cpu_before = thread_cpu();
        self.run(start);
        self.tally.cpu = thread_cpu().saturating_sub(cpu_before);
        self.tally
    }

    pub(super) fn set_up(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        self.progress = Instant::now();
        loop {
            self.fill_window();
            let all_in = self.to_open.is_empty() && self.opening == 0;
            if all_in || self.progress.elapsed() >= self.shared.stall {
                return;
            }
            let wait = self.shared.stall.saturating_sub(self.progress.elapsed());
            self.turn(&mut events, Some(wait.min(SWEEP)));
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + SWEEP;
            }
        }
    }

    pub(super) fn run(&mut self, start: Instant) {
        let deadline = start + self.shared.params.secs;
        self.deadline = Some(deadline);
        // Those greeted during set-up begin now.
        let waiting: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Waiting | Phase::Holding))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.begin(key);
        }
        // Churn opens its connections now; the others open what set-up
        // left.
        self.fill_window();
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        let mut deadline_seen = false;
        while !(self.conns.is_empty() && self.to_open.is_empty()) {
            let now = Instant::now();
            let wake = if deadline_seen {
                next_sweep
            } else {
                next_sweep.min(deadline)
            };
            self.turn(&mut events, Some(wake.saturating_duration_since(now)));
            let now = Instant::now();
            if !deadline_seen && now >= deadline {
                deadline_seen = true;
                self.at_deadline();
            }
            if now >= next_sweep {
                self.sweep();
                next_sweep = now + SWEEP;
            }
            self.fill_window();
        }
    }

    /// One poll and everything it makes ready; timers; connections whose
    /// turn ended early get the next.
    pub(super) fn turn(&mut self, events: &mut Events, wait: Option<Duration>) {
        let wait = if self.again.is_empty() {
            wait
        } else {
            Some(Duration::ZERO)
        };
        self.arm_timer();
        match self.poll.poll(events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(e) => {
                // Without its poll this thread can drive nothing: every
                // connection it has is an error.
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.fail(
                        key,
                        io::Error::new(e.kind(), format!("the load's poll failed: {e}")),
                    );
                }
                let left = self.to_open.len();
                self.to_open.clear();
                for _ in 0..left {
                    self.tally
                        .error(format!("never opened: the load's poll failed: {e}"));
                }
                return;
            }
        }
        for event in events.iter() {
            match event.token() {
                TIMER => self.timer.clear(),
                Token(key) => {
                    if let Some(c) = self.conns.get_mut(key) {
                        // Errors and hang-ups surface in the read or write
                        // that follows.
                        c.read_ready |=
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        c.write_ready |=
                            event.is_writable() || event.is_write_closed() || event.is_error();
                        self.drive(key);
                    }
                }
            }
        }
        self.fire_timers();
        for key in std::mem::take(&mut self.again) {
            if self.conns.contains(key) {
                self.drive(key);
            }
        }
    }

    pub(super) fn fill_window(&mut self) {
        while self.opening < self.window {
            let Some(spec) = self.to_open.pop_front() else {
                return;
            };
            self.open(spec, None);
        }
    }

    /// Opens a connection for `spec`, in a new slot or in `key`'s (churn
    /// reconnects).
    pub(super) fn open(&mut self, spec: Spec, key: Option<usize>) {
        let mut socket = match TcpStream::connect(self.shared.addr) {
            Ok(s) => s,
            Err(e) => {
                self.tally.error(format!("cannot connect: {e}"));
                if let Some(key) = key {
                    self.conns.remove(key);
                }
                return;
            }
        };
        let now = Instant::now();
        let entry = match key {
            Some(key) => key,
            None => self.conns.vacant_key(),
        };
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(entry),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.tally.error(format!("cannot watch a connection: {e}"));
            if let Some(key) = key {
                self.conns.remove(key);
            }
            return;
        }
        self.next_id += 1;
        let conn = Conn {
            spec,
            socket,
            id: self.next_id,
            phase: Phase::Connecting,
            since: now,
            read_ready: false,
            write_ready: false,
            seq: 0,
            req: Vec::new(),
            req_off: 0,
            want: Vec::new(),
            want_off: 0,
            intended: now,
            sent_at: now,
            opened_at: now,
            streamed: 0,
            marker_sent: false,
            prefix_owed: 0,
            answered: 0,
        };
        match key {
            Some(key) => self.conns[key] = conn,
            None => {
                self.conns.insert(conn);
            }
        }
        self.opening += 1;
    }

    /// Does what `key` can do now, up to a turn's worth.
    pub(super) fn drive(&mut self, key: usize) {
        for _ in 0..TURN {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let progressed = match c.phase {
                Phase::Connecting => {
                    if !c.write_ready {
                        return;
                    }
                    self.connected_or_not(key)
                }
                _ => {
                    let wrote = match self.write_some(key) {
                        Ok(w) => w,
                        Err(e) => {
                            self.fail(key, e);
                            return;
                        }
                    };
                    let read = match self.read_some(key) {
                        Ok(r) => r,
                        Err(e) => {
                            self.fail(key, e);
                            return;
                        }
                    };
                    wrote || read
                }
            };
            if !progressed {
                return;
            }
        }
        // The turn is used up with more to do, and edge-triggered readiness
        // will not say so again.
        self.again.push(key);
    }

    /// A connect finished, one way or the other (or the wake-up was early).
    pub(super) fn connected_or_not(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        match c.socket.take_error() {
            Ok(Some(e)) | Err(e) => {
                self.fail(
                    key,
                    io::Error::new(e.kind(), format!("cannot connect: {e}")),
                );
                return false;
            }
            Ok(None) => {}
        }
        match c.socket.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                c.write_ready = false;
                return false;
            }
            Err(e) => {
                self.fail(
                    key,
                    io::Error::new(e.kind(), format!("cannot connect: {e}")),
                );
                return false;
            }
        }
        if let Err(e) = c.socket.set_nodelay(true) {
            self.fail(key, e);
            return false;
        }
        c.since = Instant::now();
        self.progress = c.since;
        if self.deadline.is_none() {
            self.connected += 1;
        }
        if self.shared.greets {
            c.phase = Phase::Greeting;
        } else {
            self.greeted(key);
        }
        true
    }

    /// The connection has its `*` (or needs none).
    pub(super) fn greeted(&mut self, key: usize) {
        self.opening -= 1;
        let now = Instant::now();
        self.progress = now;
        let c = &mut self.conns[key];
        c.since = now;
        match self.deadline {
            None => {
                self.greeted += 1;
                c.phase = if c.spec.role == Role::Idle {
                    Phase::Holding
                } else {
                    Phase::Waiting
                };
            }
            Some(_) => self.begin(key),
        }
    }

    /// The clock runs and the connection is greeted: its work starts.
    pub(super) fn begin(&mut self, key: usize) {
        let deadline = self.deadline.expect("begun after the start");
        let now = Instant::now();
        let c = &mut self.conns[key];
        match c.spec.role {
            Role::Stream => {
                c.phase = Phase::Streaming;
                c.prefix_owed = match self.shared.peer {
                    Peer::Concur => 0,
                    Peer::Echo => 1,
                };
            }
            Role::Rate { first, every: _ } => {
                let start = deadline - self.shared.params.secs;
                let due = start + first;
                // A first send scheduled past the end is the schedule, not
                // lateness, and is kept to.
                if due >= deadline {
                    self.close_out(key);
                } else {
                    self.send_when_due(key, due, now);
                }
            }
            Role::Idle => c.phase = Phase::Holding,
            Role::Ping | Role::Heavy | Role::Probe | Role::Churn => self.send(key, now),
        }
        self.drive_later(key);
    }

    /// Sends `key`'s next request at `due`: now if it is due already,
    /// else when its timer fires.
    pub(super) fn send_when_due(&mut self, key: usize, due: Instant, now: Instant) {
        if due > now {
            let c = &mut self.conns[key];
            c.phase = Phase::Waiting;
            c.intended = due;
            let id = c.id;
            self.timers.push(Reverse((due, key, id)));
        } else {
            self.send(key, due);
        }
    }

    /// Queues `key` for a turn in this pass (it may have bytes to write).
    pub(super) fn drive_later(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.write_ready = true;
            c.read_ready = true;
            self.again.push(key);
        }
    }
}

impl Worker {
    /// The connection ended well.
    pub(super) fn finish(&mut self, key: usize) {
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.socket);
        if matches!(c.phase, Phase::Connecting | Phase::Greeting) {
            self.opening -= 1;
        }
    }

    /// The connection ended by an error: counted, and dropped.
    pub(super) fn fail(&mut self, key: usize, e: io::Error) {
        let Some(mut c) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.socket);
        if matches!(c.phase, Phase::Connecting | Phase::Greeting) {
            self.opening -= 1;
        }
        self.tally.error(e.to_string());
    }

    /// The deadline: streams stop writing, idle connections close.
    pub(super) fn at_deadline(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let c = &mut self.conns[key];
            match c.phase {
                // At least one write before it stops.
                Phase::Streaming if c.streamed > 0 => self.close_out(key),
                Phase::Holding => self.finish(key),
                _ => {}
            }
        }
    }

    /// Ends connections that made no progress for the timeout.
    pub(super) fn sweep(&mut self) {
        let now = Instant::now();
        let limit = self.shared.timeout;
        let stuck: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                // Held and waiting connections wait for us, not the server.
                !matches!(c.phase, Phase::Holding | Phase::Waiting)
                    && now.duration_since(c.since) >= limit
            })
            .map(|(k, _)| k)
            .collect();
        for key in stuck {
            let c = &self.conns[key];
            let e = io::Error::new(
                ErrorKind::TimedOut,
                format!(
                    "nothing came for {limit:?} in {}, after {} bytes",
                    c.doing(),
                    c.got()
                ),
            );
            self.fail(key, e);
        }
    }

    pub(super) fn arm_timer(&mut self) {
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            self.timer.set(*at);
        }
    }

    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get(key) else {
                continue;
            };
            if c.id != id || c.phase != Phase::Waiting {
                continue;
            }
            let deadline = self.deadline.expect("timers run after the start");
            match c.spec.role {
                Role::Probe if now >= deadline => self.close_out(key),
                Role::Rate { .. } => {
                    let due = c.intended;
                    self.send(key, due);
                    self.drive_later(key);
                }
                _ => {
                    self.send(key, now);
                    self.drive_later(key);
                }
            }
        }
    }
}
