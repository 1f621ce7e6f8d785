//! The floor reference: the least a server can do and still answer the
//! protocol right, run beside the models (`concur floor`) so that a table
//! shows what the machine and its TCP stack cost before any model's
//! choices.
//!
//! One thread and one epoll loop (mio, edge-triggered) for every client;
//! one 64 KiB read buffer for all of them, as the models read; each read
//! goes through the protocol core once ([`Processor::feed`]) and its answer
//! out in one write. No limits, no timeouts, no counters, no logs, no
//! shutdown but the end of the process. A read shorter than the buffer has
//! emptied the socket, so the loop does not read again to hear `EAGAIN`:
//! the next arrival is a new edge. A client that does not take its answers
//! is not read from until it has (what is owed is all it holds), which is
//! the one thing more than a bare loop it must do to stay correct.
//!
//! What a model spends above this on the same load (CPU per request,
//! system calls per request) is the model's own.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpListener;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::echo::ECHO_BUF_SIZE;
use crate::protocol::{ACK, Processor};

const LISTENER: Token = Token(usize::MAX);

struct Client {
    stream: TcpStream,
    core: Processor,
    /// Answers the socket had no room for; empty but under backpressure.
    owed: Vec<u8>,
}

/// Runs the floor reference on `listener`, on the calling thread, for as
/// long as the process lives (or until its epoll loop fails).
pub fn serve_floor(listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut clients: Slab<Client> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; ECHO_BUF_SIZE];
    let mut out = Vec::with_capacity(ECHO_BUF_SIZE);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut clients);
                continue;
            }
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            // After a hang-up the socket is read to its end, whatever the
            // length of the read before.
            let to_end = event.is_read_closed() || event.is_error();
            if !matches!(client.serve(&mut buf, &mut out, to_end), Ok(true)) {
                // Closing the socket takes it out of the epoll set.
                clients.remove(key);
            }
        }
    }
}

/// Accepts every connection waiting and greets it. An accept that fails
/// for want of descriptors leaves the connection queued; the next arrival
/// tries again.
fn accept_all(listener: &mio::net::TcpListener, poll: &Poll, clients: &mut Slab<Client>) {
    while let Ok((mut stream, _)) = listener.accept() {
        let entry = clients.vacant_entry();
        let token = Token(entry.key());
        let interest = Interest::READABLE | Interest::WRITABLE;
        if stream.set_nodelay(true).is_err()
            || poll
                .registry()
                .register(&mut stream, token, interest)
                .is_err()
        {
            continue;
        }
        let mut client = Client {
            stream,
            core: Processor::new(),
            owed: Vec::new(),
        };
        if client.send(&[ACK]).is_ok() {
            entry.insert(client);
        }
    }
}

impl Client {
    /// Sends what is owed, then reads and answers until the socket is
    /// empty (or, `to_end`, closed). `Ok(false)` when the client has gone.
    fn serve(&mut self, buf: &mut [u8], out: &mut Vec<u8>, to_end: bool) -> io::Result<bool> {
        if !self.owed.is_empty() {
            let owed = std::mem::take(&mut self.owed);
            self.send(&owed)?;
            if !self.owed.is_empty() {
                return Ok(true);
            }
        }
        loop {
            let n = match self.stream.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out.clear();
            self.core.feed(&buf[..n], out);
            self.send(out)?;
            if !self.owed.is_empty() || (n < buf.len() && !to_end) {
                return Ok(true);
            }
        }
    }

    /// One write of `bytes`; what the socket has no room for is owed.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let written = loop {
            match self.stream.write(bytes) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.owed.extend_from_slice(&bytes[written..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdStream;
    use std::time::Duration;

    fn start() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_floor(listener));
        addr
    }

    fn connect(addr: std::net::SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    #[test]
    fn the_protocol_is_answered_across_reads_and_clients() {
        let addr = start();
        let (mut a, mut b) = (connect(addr), connect(addr));
        let mut got = [0u8; 4];
        a.read_exact(&mut got[..1]).unwrap();
        b.read_exact(&mut got[..1]).unwrap();
        assert_eq!(got[0], ACK);
        // State kept per client across its writes: the message goes on.
        a.write_all(b"xx^ab").unwrap();
        b.write_all(b"^z$").unwrap();
        a.read_exact(&mut got[..2]).unwrap();
        assert_eq!(&got[..2], b"bc");
        a.write_all(b"c$d^e").unwrap();
        a.read_exact(&mut got[..2]).unwrap();
        assert_eq!(&got[..2], b"df");
        b.read_exact(&mut got[..1]).unwrap();
        assert_eq!(got[0], b'{');
        // A half-close is answered with the rest and the server's close.
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(a.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn a_client_that_reads_late_gets_every_byte() {
        let addr = start();
        let mut s = connect(addr);
        let mut star = [0u8; 1];
        s.read_exact(&mut star).unwrap();
        // Far more than the socket buffers hold, sent before a byte is
        // read back: the server must hold what it owes and stop reading.
        let len = 32 << 20;
        let writer = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut msg = vec![b'a'; len];
                msg[0] = b'^';
                s.write_all(&msg).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        writer.join().unwrap();
        assert_eq!(answer.len(), len - 1);
        assert!(answer.iter().all(|&b| b == b'b'));
    }
}
