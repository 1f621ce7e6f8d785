//! One connection of the simulated client, on its own thread: connect,
//! wait for `*`, follow the script while a second thread reads, wait for
//! the whole reply, and keep the timeline of it all.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use super::log::{Level, Log, py_bytes};
use super::options::Options;
use super::report::{Chunk, Connection};
use super::script::Step;
use crate::protocol::ACK;

/// What every connection of one run shares.
pub(super) struct Run<'a> {
    pub(super) addr: SocketAddr,
    pub(super) options: &'a Options,
    pub(super) expected: &'a [u8],
    pub(super) start: Instant,
    pub(super) log: &'a Log,
}

/// What the reader thread has seen, shared with the sender, which waits on
/// it for the whole reply.
#[derive(Default)]
struct Received {
    chunks: Vec<Chunk>,
    reply: Vec<u8>,
    /// Set when the reader stops: why it stopped.
    ended: Option<String>,
}

impl Run<'_> {
    fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.start).as_secs_f64()
    }

    fn now(&self) -> f64 {
        self.secs(Instant::now())
    }

    fn info(&self, name: &str, what: &str) {
        self.log.log(Level::Info, &format!("{name} {what}"));
    }

    fn error(&self, name: &str, what: &str) {
        self.log.log(Level::Error, &format!("{name} {what}"));
    }

    pub(super) fn never_ran(&self, name: String, why: String) -> Connection {
        let now = self.now();
        Connection {
            name,
            arrival: now,
            admitted: None,
            done: now,
            sent: Vec::new(),
            received: Vec::new(),
            reply: Vec::new(),
            failure: Some(why),
        }
    }

    pub(super) fn connection(&self, i: usize, name: String) -> Connection {
        let opts = self.options;
        let arrive_at = self.start + opts.stagger.saturating_mul(i as u32);
        std::thread::sleep(arrive_at.saturating_duration_since(Instant::now()));

        let mut conn = Connection {
            name,
            arrival: self.now(),
            admitted: None,
            done: 0.0,
            sent: Vec::new(),
            received: Vec::new(),
            reply: Vec::new(),
            failure: None,
        };
        let name = conn.name.clone();
        let stream = match TcpStream::connect_timeout(&self.addr, opts.timeout) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot connect to {}: {e}", self.addr);
                self.error(&name, &why);
                conn.done = self.now();
                conn.failure = Some(why);
                return conn;
            }
        };
        // Short scripts send small writes in quick succession; Nagle would
        // hold them back for an ACK and blur the timeline.
        let _ = stream.set_nodelay(true);
        let timeouts = stream
            .set_read_timeout(Some(opts.timeout))
            .and_then(|()| stream.set_write_timeout(Some(opts.timeout)));
        if let Err(e) = timeouts {
            conn.failure = Some(format!("cannot set socket timeouts: {e}"));
            conn.done = self.now();
        } else if let Err(why) = self.greeting(&stream) {
            self.error(
                &name,
                &format!("Something is wrong! Did not receive * ({why})"),
            );
            conn.failure = Some(format!("did not receive *: {why}"));
            conn.done = self.now();
        } else {
            conn.admitted = Some(self.now());
            self.info(&name, "connected...");
            self.session(&stream, &mut conn);
        }
        drop(stream);
        self.info(&name, "disconnecting");
        conn
    }

    /// Waits for the `*`; on anything else says what came instead.
    fn greeting(&self, mut stream: &TcpStream) -> Result<(), String> {
        let mut first = [0u8; 1];
        loop {
            return match stream.read(&mut first) {
                Ok(1) if first[0] == ACK => Ok(()),
                Ok(0) => Err("the server closed the connection".into()),
                Ok(_) => Err(format!("the first byte was {}", py_bytes(&first))),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) => {
                    Err(format!("nothing within {:?}", self.options.timeout))
                }
                Err(e) => Err(e.to_string()),
            };
        }
    }

    /// The schedule, with a reader alongside; then the wait for the rest of
    /// the reply, the close, and the check.
    fn session(&self, stream: &TcpStream, conn: &mut Connection) {
        let name = conn.name.clone();
        let name = name.as_str();
        let received = (Mutex::new(Received::default()), Condvar::new());
        let mut send_error = None;
        let mut timed_out = false;
        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name(format!("{name}-reader"))
                .spawn_scoped(scope, || self.read_replies(stream, name, &received));
            if let Err(e) = &reader {
                send_error = Some(format!("cannot start its reader thread: {e}"));
            } else {
                send_error = self.follow_script(stream, conn);
                let (lock, cond) = &received;
                let state = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (state, wait) = cond
                    .wait_timeout_while(state, self.options.timeout, |r| {
                        send_error.is_none()
                            && r.ended.is_none()
                            && r.reply.len() < self.expected.len()
                    })
                    .unwrap_or_else(|e| e.into_inner());
                timed_out = wait.timed_out();
                drop(state);
            }
            // Recorded before the close, so that a server which admits the
            // next client on seeing our EOF admits it strictly after `done`.
            conn.done = self.now();
            // Also wakes the reader out of its blocking read.
            let _ = stream.shutdown(Shutdown::Both);
            if let Ok(reader) = reader {
                let _ = reader.join();
            }
        });

        let received = received.0.into_inner().unwrap_or_else(|e| e.into_inner());
        conn.received = received.chunks;
        conn.reply = received.reply;
        conn.failure =
            send_error.or_else(|| self.check(&conn.reply, timed_out, received.ended.as_deref()));
    }

    /// Sends and pauses as the script says; stops at the first failed write.
    fn follow_script(&self, mut stream: &TcpStream, conn: &mut Connection) -> Option<String> {
        for (k, step) in self.options.script.steps().iter().enumerate() {
            match step {
                Step::Send(bytes) => {
                    self.info(&conn.name, &format!("sending {}", py_bytes(bytes)));
                    conn.sent.push(Chunk {
                        at: self.now(),
                        bytes: bytes.clone(),
                    });
                    if let Err(e) = stream.write_all(bytes) {
                        let why = format!("step {} (send) failed: {e}", k + 1);
                        self.error(&conn.name, &why);
                        return Some(why);
                    }
                }
                Step::Pause(d) => std::thread::sleep(*d),
            }
        }
        None
    }

    /// Reads until the server closes, the socket fails or the sender shuts
    /// it down, logging each chunk as the article's client does.
    fn read_replies(
        &self,
        mut stream: &TcpStream,
        name: &str,
        shared: &(Mutex<Received>, Condvar),
    ) {
        let (lock, cond) = shared;
        let mut buf = vec![0u8; 8 * 1024];
        let ended = loop {
            match stream.read(&mut buf) {
                Ok(0) => break "the server closed the connection".to_string(),
                Ok(n) => {
                    let at = self.now();
                    self.info(name, &format!("received {}", py_bytes(&buf[..n])));
                    let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
                    r.reply.extend_from_slice(&buf[..n]);
                    r.chunks.push(Chunk {
                        at,
                        bytes: buf[..n].to_vec(),
                    });
                    cond.notify_all();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The read timeout only bounds each read; the sender
                // decides when to stop waiting and shuts the socket down.
                Err(e) if is_timeout(&e) => {}
                Err(e) => break format!("reading failed: {e}"),
            }
        };
        let mut r = lock.lock().unwrap_or_else(|e| e.into_inner());
        r.ended = Some(ended);
        cond.notify_all();
    }

    /// `None` if `reply` is exactly what the schedule is owed; otherwise
    /// what is wrong with it.
    fn check(&self, reply: &[u8], timed_out: bool, ended: Option<&str>) -> Option<String> {
        let expected = self.expected;
        if reply == expected {
            return None;
        }
        if expected.starts_with(reply) {
            let why = if timed_out {
                format!("no more within {:?}", self.options.timeout)
            } else {
                ended.unwrap_or("the reader stopped").to_string()
            };
            return Some(format!(
                "reply cut short: got {} of {} bytes ({why}): got {}, expected {}",
                reply.len(),
                expected.len(),
                shorten(reply),
                shorten(expected)
            ));
        }
        if reply.starts_with(expected) {
            return Some(format!(
                "reply too long: {} bytes more than the {} expected: got {}, expected {}",
                reply.len() - expected.len(),
                expected.len(),
                shorten(reply),
                shorten(expected)
            ));
        }
        let at = reply
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        Some(format!(
            "wrong reply from byte {at} on: got {}, expected {}",
            shorten(reply),
            shorten(expected)
        ))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// A bytes literal short enough for an error line.
fn shorten(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    if bytes.len() <= MAX {
        py_bytes(bytes)
    } else {
        format!("{}... ({} bytes)", py_bytes(&bytes[..MAX]), bytes.len())
    }
}
