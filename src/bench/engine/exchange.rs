//! What a connection writes and reads, and how each answer is checked
//! and moves the connection on.

use std::cmp::Reverse;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::conn::{Phase, Role, micros};
use super::worker::Worker;
use crate::bench::check::{PATTERN_LEN, mismatch, same_bytes};
use crate::protocol::{ACK, MSG_START};

impl Worker {
    /// Starts the next request of `key`, due at `intended`.
    pub(super) fn send(&mut self, key: usize, intended: Instant) {
        let c = &mut self.conns[key];
        let (mut req, mut want) = (std::mem::take(&mut c.req), std::mem::take(&mut c.want));
        self.shared.request(c.spec.role, c.seq, &mut req, &mut want);
        c.req = req;
        c.want = want;
        c.req_off = 0;
        c.want_off = 0;
        c.intended = intended;
        c.sent_at = Instant::now();
        c.phase = Phase::Exchanging;
    }

    /// Writes what the connection has to write, until the kernel takes no
    /// more; whether anything was written.
    pub(super) fn write_some(&mut self, key: usize) -> io::Result<bool> {
        let deadline = self.deadline;
        let shared = &self.shared;
        let c = &mut self.conns[key];
        if !c.write_ready {
            return Ok(false);
        }
        let mut wrote = false;
        loop {
            let bytes: &[u8] = match c.phase {
                Phase::Exchanging if c.req_off < c.req.len() => &c.req[c.req_off..],
                Phase::Streaming if !c.marker_sent => &[MSG_START],
                Phase::Streaming => {
                    let at = (c.streamed % PATTERN_LEN as u64) as usize;
                    &shared.send_window[at..at + shared.params.size]
                }
                _ => return Ok(wrote),
            };
            match c.socket.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    wrote = true;
                    c.since = Instant::now();
                    match c.phase {
                        Phase::Exchanging => c.req_off += n,
                        _ if !c.marker_sent => c.marker_sent = true,
                        _ => {
                            c.streamed += n as u64;
                            // At least one write, however late this
                            // connection got going.
                            if deadline.is_some_and(|d| c.since >= d) {
                                c.socket.shutdown(Shutdown::Write)?;
                                c.phase = Phase::Closing;
                                return Ok(true);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.write_ready = false;
                    return Ok(wrote);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what has come, checks it and acts on it; whether anything was
    /// read.
    pub(super) fn read_some(&mut self, key: usize) -> io::Result<bool> {
        let c = &mut self.conns[key];
        if !c.read_ready {
            return Ok(false);
        }
        let n = match c.socket.read(&mut self.buf) {
            Ok(0) => return self.eof(key).map(|()| true),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.read_ready = false;
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) if e.kind() == ErrorKind::ConnectionReset && c.phase == Phase::Closing => {
                // A reset after everything was answered is still a close.
                return self.eof(key).map(|()| true);
            }
            Err(e) => return Err(e),
        };
        c.since = Instant::now();
        let buf = std::mem::take(&mut self.buf);
        let result = self.received(key, &buf[..n]);
        self.buf = buf;
        result.map(|()| true)
    }

    /// Checks `bytes` against what `key` expects, and moves it on.
    pub(super) fn received(&mut self, key: usize, mut bytes: &[u8]) -> io::Result<()> {
        let c = &mut self.conns[key];
        match c.phase {
            Phase::Greeting => {
                if bytes[0] != ACK {
                    return Err(mismatch("the greeting", 0, ACK, bytes[0]));
                }
                if bytes.len() > 1 {
                    return Err(unasked(bytes[1]));
                }
                self.greeted(key);
                Ok(())
            }
            Phase::Exchanging => {
                let want = &c.want[c.want_off..];
                let n = bytes.len().min(want.len());
                same_bytes("an answer", c.want_off as u64, &want[..n], &bytes[..n])?;
                if bytes.len() > want.len() {
                    return Err(unasked(bytes[want.len()]));
                }
                c.want_off += n;
                if c.want_off == c.want.len() {
                    if c.req_off < c.req.len() {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            "the whole answer came before the whole request was sent",
                        ));
                    }
                    self.answered(key);
                }
                Ok(())
            }
            Phase::Streaming | Phase::Closing if c.spec.role == Role::Stream => {
                while c.prefix_owed > 0 && !bytes.is_empty() {
                    if bytes[0] != MSG_START {
                        return Err(mismatch("the answer", 0, MSG_START, bytes[0]));
                    }
                    c.prefix_owed -= 1;
                    bytes = &bytes[1..];
                }
                let at = (c.answered % PATTERN_LEN as u64) as usize;
                let want = &self.shared.answer_window[at..at + bytes.len()];
                same_bytes("the answer", c.answered, want, bytes)?;
                if c.answered + bytes.len() as u64 > c.streamed {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "more answered ({} bytes) than sent ({})",
                            c.answered + bytes.len() as u64,
                            c.streamed
                        ),
                    ));
                }
                if c.answered == 0
                    && !bytes.is_empty()
                    && self.deadline.is_some_and(|d| c.since < d)
                {
                    self.tally.served_at_once += 1;
                }
                c.answered += bytes.len() as u64;
                self.tally.ops += bytes.len() as u64;
                self.tally.last = Some(c.since);
                Ok(())
            }
            _ => Err(unasked(bytes[0])),
        }
    }

    /// A whole answer is in and checked.
    pub(super) fn answered(&mut self, key: usize) {
        let now = Instant::now();
        let deadline = self.deadline.expect("answers come after the start");
        let c = &mut self.conns[key];
        c.seq += 1;
        let tally = &mut self.tally;
        tally.ops += 1;
        tally.last = Some(now);
        if c.seq == 1 && now < deadline && c.spec.role != Role::Churn {
            tally.served_at_once += 1;
        }
        match c.spec.role {
            Role::Probe => {
                tally.probe.saturating_record(micros(now - c.intended));
                if now >= deadline {
                    self.close_out(key);
                } else {
                    c.phase = Phase::Waiting;
                    let (at, id) = (now + self.shared.params.probe_pause, c.id);
                    self.timers.push(Reverse((at, key, id)));
                }
            }
            Role::Churn => {
                tally.latency.saturating_record(micros(now - c.opened_at));
                let spec = c.spec;
                let _ = self.poll.registry().deregister(&mut c.socket);
                if now < deadline {
                    self.open(spec, Some(key));
                } else {
                    self.conns.remove(key);
                }
            }
            Role::Rate { first, every } => {
                tally.latency.saturating_record(micros(now - c.intended));
                tally.uncorrected.saturating_record(micros(now - c.sent_at));
                let start = deadline - self.shared.params.secs;
                let due = start + first + every.mul_f64(c.seq as f64);
                if due >= deadline || now >= deadline {
                    self.unsent(key, start + first, every, deadline, now);
                    self.close_out(key);
                } else {
                    self.send_when_due(key, due, now);
                }
            }
            _ => {
                tally.latency.saturating_record(micros(now - c.intended));
                if now >= deadline {
                    self.close_out(key);
                } else {
                    self.send(key, now);
                }
            }
        }
    }

    /// The requests of an open-loop schedule that were due before the
    /// deadline but never sent, because the connection was still waiting
    /// for an earlier answer. Each has waited at least until now: leaving
    /// them out would let a stall at the end of a run show as the one
    /// request it held up (coordinated omission). Not counted as done.
    pub(super) fn unsent(
        &mut self,
        key: usize,
        first: Instant,
        every: Duration,
        deadline: Instant,
        now: Instant,
    ) {
        if every.is_zero() {
            return;
        }
        let from = self.conns[key].seq;
        for k in from.. {
            let due = first + every.mul_f64(k as f64);
            if due >= deadline {
                break;
            }
            let waited = now.saturating_duration_since(due);
            // Less than a turn late is the end of the run catching a
            // request as it went out, not a stall holding it back.
            if waited >= every {
                self.tally.latency.saturating_record(micros(waited));
                self.tally.unsent += 1;
            }
        }
    }

    /// The work is done: half-close, then the rest of the answer and the
    /// server's close.
    pub(super) fn close_out(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if let Err(e) = c.socket.shutdown(Shutdown::Write) {
            self.fail(key, e);
            return;
        }
        c.phase = Phase::Closing;
        c.read_ready = true;
        self.again.push(key);
    }

    /// The server closed its side.
    pub(super) fn eof(&mut self, key: usize) -> io::Result<()> {
        let c = &self.conns[key];
        if c.phase != Phase::Closing {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "the server closed the connection in {}, after {} bytes",
                    c.doing(),
                    c.got()
                ),
            ));
        }
        if c.spec.role == Role::Stream && (c.answered != c.streamed || c.prefix_owed > 0) {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "{} bytes sent, but {} answered before the close",
                    c.streamed, c.answered
                ),
            ));
        }
        self.finish(key);
        Ok(())
    }
}

pub(super) fn unasked(b: u8) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("the server sent a byte nobody asked for ({b:#04x})"),
    )
}
