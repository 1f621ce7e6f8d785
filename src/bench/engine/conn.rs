//! What each connection of a run is for, what all of them share, and one
//! connection's state.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;

use super::plan::{ERRORS_KEPT, Plan, Speaks};
use crate::bench::check::pattern_window;
use crate::bench::echo::Peer;
use crate::bench::latency::new_histogram;
use crate::bench::scenario::{Params, Scenario};
use crate::protocol::{MSG_END, MSG_START};

// ---------------------------------------------------------------------
// What the connections do
// ---------------------------------------------------------------------

/// What one connection is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// Streams one endless message, checking its answer.
    Stream,
    /// Closed loop of byte-protocol requests.
    Ping,
    /// Requests at `first + k * every`, whatever the answers do.
    Rate { first: Duration, every: Duration },
    /// Closed loop of the large number (`cpu`).
    Heavy,
    /// Small numbers with a pause between them (`cpu`).
    Probe,
    /// Connect, `*`, one request, close; again until the deadline.
    Churn,
    /// Connect, `*`, nothing more (`idle`).
    Idle,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Spec {
    pub(super) role: Role,
}

pub(super) fn specs(plan: &Plan) -> Vec<Spec> {
    let n = plan.count;
    let spec = |role| Spec { role };
    match plan.scenario {
        Scenario::Stream => vec![spec(Role::Stream); n],
        Scenario::Pingpong => vec![spec(Role::Ping); n],
        Scenario::Rate => {
            // Each connection sends every `every`; the connections are
            // spread evenly over it.
            let every = Duration::from_secs_f64(n as f64 / plan.params.rate.max(1) as f64);
            (0..n)
                .map(|i| {
                    spec(Role::Rate {
                        first: every.mul_f64(i as f64 / n as f64),
                        every,
                    })
                })
                .collect()
        }
        Scenario::Churn => vec![spec(Role::Churn); n],
        Scenario::Idle => vec![spec(Role::Idle); n],
        Scenario::Cpu => {
            // The probe last: it arrives after the heavy clients, as a
            // small request does at a server already busy with large ones.
            let mut all = vec![spec(Role::Heavy); n];
            all.push(spec(Role::Probe));
            all
        }
    }
}

/// What every thread of a run reads and nobody changes.
pub(super) struct Shared {
    pub(super) addr: SocketAddr,
    pub(super) peer: Peer,
    pub(super) greets: bool,
    pub(super) params: Params,
    pub(super) timeout: Duration,
    /// Setup patience: this long without a connection established or
    /// greeted ends the set-up.
    pub(super) stall: Duration,
    /// `stream`: what is sent, laid out so that any write of `size` bytes
    /// from any position is one slice.
    pub(super) send_window: Vec<u8>,
    /// `stream`: what must come back, the same way, for reads of up to a
    /// whole read buffer.
    pub(super) answer_window: Vec<u8>,
    /// `cpu`: the heavy request and its answer.
    pub(super) heavy: (Vec<u8>, Vec<u8>),
    /// `cpu`: the probe's requests and answers, in turn.
    pub(super) probes: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The read buffer of a thread: the servers' read size.
pub(super) const READ_BUF: usize = 64 * 1024;

impl Shared {
    pub(super) fn new(plan: &Plan) -> Self {
        let (peer, prime) = match plan.speaks {
            Speaks::Bytes(peer) => (peer, false),
            Speaks::Prime => (Peer::Concur, true),
        };
        let stream = plan.scenario == Scenario::Stream;
        let line = |n: u64| {
            let mut answer = Vec::new();
            crate::prime::answer_number(n, crate::prime::is_prime(n), &mut answer);
            (format!("{n}\n").into_bytes(), answer)
        };
        Shared {
            addr: plan.addr,
            peer,
            greets: !prime,
            params: plan.params,
            timeout: plan.timeout,
            stall: if plan.scenario == Scenario::Idle {
                Duration::from_secs(1)
            } else {
                // Long enough for a server busy starting thousands of
                // threads; short beside a run.
                Duration::from_millis(250)
            },
            send_window: if stream {
                pattern_window(plan.params.size, |b| b)
            } else {
                Vec::new()
            },
            answer_window: if stream {
                pattern_window(READ_BUF, |b| peer.answer(b))
            } else {
                Vec::new()
            },
            heavy: line(plan.params.number),
            // Small numbers, answered in microseconds by any model that
            // gets to them: what the probe measures is the wait.
            probes: if prime {
                (1000..1100).map(line).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The `seq`-th request of a connection of `role`, and its answer.
    pub(super) fn request(&self, role: Role, seq: u64, req: &mut Vec<u8>, want: &mut Vec<u8>) {
        req.clear();
        want.clear();
        match role {
            Role::Heavy => {
                req.extend_from_slice(&self.heavy.0);
                want.extend_from_slice(&self.heavy.1);
            }
            Role::Probe => {
                let (r, w) = &self.probes[seq as usize % self.probes.len()];
                req.extend_from_slice(r);
                want.extend_from_slice(w);
            }
            Role::Churn => {
                req.extend_from_slice(b"^a$");
                want.extend_from_slice(match self.peer {
                    Peer::Concur => b"b",
                    Peer::Echo => b"^a$",
                });
            }
            _ => {
                // Lowercase letters shifted by the sequence number: no
                // marker, and consecutive requests differ, so an answer
                // to another request does not pass the check.
                let size = self.params.size;
                req.push(MSG_START);
                req.extend((0..size).map(|j| b'a' + ((seq as usize + j) % 26) as u8));
                req.push(MSG_END);
                match self.peer {
                    Peer::Concur => want.extend(req[1..=size].iter().map(|b| b + 1)),
                    Peer::Echo => want.extend_from_slice(req),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// `connect` issued, not yet established.
    Connecting,
    /// Established, waiting for `*`.
    Greeting,
    /// Greeted; waiting for the clock, or for its next turn (a timer).
    Waiting,
    /// A request being written or its answer read.
    Exchanging,
    /// Streaming (`stream`).
    Streaming,
    /// Half-closed: the rest of the answer, then the server's close.
    Closing,
    /// Greeted and kept open (`idle`).
    Holding,
}

pub(super) struct Conn {
    pub(super) spec: Spec,
    pub(super) socket: TcpStream,
    /// Tells this connection apart from a later one in the same slab slot,
    /// for timers that fire after it left.
    pub(super) id: u64,
    pub(super) phase: Phase,
    /// The last time anything happened on it, for the timeout.
    pub(super) since: Instant,
    pub(super) read_ready: bool,
    pub(super) write_ready: bool,
    /// Exchanges completed (the request sequence number).
    pub(super) seq: u64,
    pub(super) req: Vec<u8>,
    pub(super) req_off: usize,
    pub(super) want: Vec<u8>,
    pub(super) want_off: usize,
    /// When the request was due (closed loop: when it was sent).
    pub(super) intended: Instant,
    /// When its first byte was written.
    pub(super) sent_at: Instant,
    /// `churn`: when its connect began.
    pub(super) opened_at: Instant,
    /// `stream`: message bytes written, the `^` not counted.
    pub(super) streamed: u64,
    /// `stream`: whether the `^` went out.
    pub(super) marker_sent: bool,
    /// `stream`: the echo sends the `^` back before the answers.
    pub(super) prefix_owed: usize,
    /// `stream`: message bytes answered and checked.
    pub(super) answered: u64,
}

impl Conn {
    /// What it was doing, for error messages.
    pub(super) fn doing(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "connecting",
            Phase::Greeting => "the greeting",
            Phase::Streaming | Phase::Closing if self.spec.role == Role::Stream => "the answer",
            Phase::Closing => "waiting for the close",
            Phase::Holding => "an idle connection",
            _ => "an answer",
        }
    }

    /// Bytes received in the current phase, for error messages.
    pub(super) fn got(&self) -> u64 {
        match self.spec.role {
            Role::Stream => self.answered,
            _ => self.want_off as u64,
        }
    }
}

/// What a thread brings back.
pub(super) struct Tally {
    pub(super) ops: u64,
    pub(super) last: Option<Instant>,
    pub(super) latency: Histogram<u64>,
    pub(super) uncorrected: Histogram<u64>,
    pub(super) probe: Histogram<u64>,
    pub(super) unsent: u64,
    pub(super) served_at_once: usize,
    pub(super) errors: u64,
    pub(super) error_samples: Vec<String>,
    pub(super) cpu: Duration,
}

impl Tally {
    pub(super) fn new() -> Self {
        Tally {
            ops: 0,
            last: None,
            latency: new_histogram(),
            uncorrected: new_histogram(),
            probe: new_histogram(),
            unsent: 0,
            served_at_once: 0,
            errors: 0,
            error_samples: Vec::new(),
            cpu: Duration::ZERO,
        }
    }

    pub(super) fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < ERRORS_KEPT {
            self.error_samples.push(e);
        }
    }

    pub(super) fn merge(&mut self, other: Tally) -> io::Result<()> {
        let merge = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b)
                .map_err(|e| io::Error::other(format!("merging histograms: {e}")))
        };
        self.ops += other.ops;
        self.last = self.last.max(other.last);
        merge(&mut self.latency, &other.latency)?;
        merge(&mut self.uncorrected, &other.uncorrected)?;
        merge(&mut self.probe, &other.probe)?;
        self.unsent += other.unsent;
        self.served_at_once += other.served_at_once;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < ERRORS_KEPT {
                self.error_samples.push(e);
            }
        }
        self.cpu += other.cpu;
        Ok(())
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}
