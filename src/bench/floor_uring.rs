//! The io_uring floor: the simplest io_uring server that answers the
//! protocol, run beside the models (`concur floor-uring`) so that a table
//! shows what io_uring itself costs on the machine it ran on, per byte
//! and per request, and `uring` is judged against that rather than
//! against epoll.
//!
//! One ring on one thread, set up as the `uring` model's rings are. One
//! accept at a time. Each client has its own 64 KiB read buffer and one
//! operation in flight at a time: a single-shot receive into that buffer;
//! its answer (one pass of the protocol core) sent whole, a send again
//! for whatever a send left; then the next receive. No provided buffers,
//! no multishot, no limits, no timeouts, no counters, no shutdown but the
//! end of the process. A client that does not take its answers is not
//! read from until it has: what is owed is all it holds.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use io_uring::{opcode, squeue, types};
use slab::Slab;

use super::echo::ECHO_BUF_SIZE;
use crate::protocol::{ACK, Processor};

/// The `user_data` of the accept; a client's operation is its slab key.
const ACCEPT: u64 = u64::MAX;

struct Client {
    stream: TcpStream,
    core: Processor,
    buf: Box<[u8]>,
    /// Its answers, and how much of them has gone.
    out: Vec<u8>,
    sent: usize,
    /// Its one operation in flight is a send (else a receive).
    sending: bool,
}

impl Client {
    fn recv(&mut self) -> squeue::Entry {
        self.sending = false;
        let fd = types::Fd(self.stream.as_raw_fd());
        opcode::Recv::new(fd, self.buf.as_mut_ptr(), self.buf.len() as u32).build()
    }

    fn send(&mut self) -> squeue::Entry {
        self.sending = true;
        let fd = types::Fd(self.stream.as_raw_fd());
        let rest = &self.out[self.sent..];
        let len = rest.len().min(u32::MAX as usize) as u32;
        opcode::Send::new(fd, rest.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }

    /// Its operation completed with `res`: the next one, or `None` when
    /// it has gone.
    fn next(&mut self, res: i32) -> Option<squeue::Entry> {
        if res <= 0 {
            // The client's end (0 from a receive), or an error of its.
            return None;
        }
        let n = res as usize;
        if self.sending {
            self.sent += n;
            if self.sent < self.out.len() {
                return Some(self.send());
            }
            return Some(self.recv());
        }
        self.out.clear();
        self.sent = 0;
        self.core.feed(&self.buf[..n], &mut self.out);
        if self.out.is_empty() {
            return Some(self.recv());
        }
        Some(self.send())
    }
}

/// Runs the io_uring floor on `listener`, on the calling thread, for as
/// long as the process lives (or until its ring fails).
pub fn serve_floor_uring(listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(false)?;
    let mut ring = crate::server::kernel::io_uring(1024, 8192)?;
    ring.submitter().register_enable_rings()?;
    let mut clients: Slab<Client> = Slab::new();
    let accept = || {
        opcode::Accept::new(
            types::Fd(listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .build()
        .user_data(ACCEPT)
    };
    let mut queue = vec![accept()];
    loop {
        {
            let mut sq = ring.submission();
            for e in queue.drain(..) {
                // SAFETY: every buffer an entry points to belongs to a
                // client in the slab, which is removed only after its one
                // operation has completed.
                if unsafe { sq.push(&e) }.is_err() {
                    return Err(io::Error::other("the submission queue is full"));
                }
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (key, res) in done {
            if key == ACCEPT {
                if res >= 0 {
                    // SAFETY: a descriptor the accept just made, owned here.
                    let stream = unsafe { TcpStream::from_raw_fd(res) };
                    if let Some(e) = greet(stream, &mut clients) {
                        queue.push(e);
                    }
                }
                queue.push(accept());
                continue;
            }
            let key = key as usize;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            match client.next(res) {
                Some(e) => queue.push(e.user_data(key as u64)),
                None => {
                    clients.remove(key);
                }
            }
        }
    }
}

/// Takes on a client: its greeting is its first send.
fn greet(stream: TcpStream, clients: &mut Slab<Client>) -> Option<squeue::Entry> {
    stream.set_nodelay(true).ok()?;
    let entry = clients.vacant_entry();
    let key = entry.key() as u64;
    let client = entry.insert(Client {
        stream,
        core: Processor::new(),
        buf: vec![0u8; ECHO_BUF_SIZE].into_boxed_slice(),
        out: vec![ACK],
        sent: 0,
        sending: false,
    });
    Some(client.send().user_data(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn start() -> Option<std::net::SocketAddr> {
        if let Err(e) = crate::server::kernel::io_uring_available() {
            eprintln!("skipped: io_uring floor: {e}");
            return None;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_floor_uring(listener));
        Some(addr)
    }

    fn connect(addr: std::net::SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    #[test]
    fn the_protocol_is_answered_across_reads_and_clients() {
        let Some(addr) = start() else { return };
        let (mut a, mut b) = (connect(addr), connect(addr));
        let mut got = [0u8; 4];
        a.read_exact(&mut got[..1]).unwrap();
        b.read_exact(&mut got[..1]).unwrap();
        assert_eq!(got[0], ACK);
        a.write_all(b"xx^ab").unwrap();
        b.write_all(b"^z$").unwrap();
        a.read_exact(&mut got[..2]).unwrap();
        assert_eq!(&got[..2], b"bc");
        a.write_all(b"c$d^e").unwrap();
        a.read_exact(&mut got[..2]).unwrap();
        assert_eq!(&got[..2], b"df");
        b.read_exact(&mut got[..1]).unwrap();
        assert_eq!(got[0], b'{');
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(a.read(&mut got).unwrap(), 0);
    }

    #[test]
    fn a_client_that_reads_late_gets_every_byte() {
        let Some(addr) = start() else { return };
        let mut s = connect(addr);
        let mut star = [0u8; 1];
        s.read_exact(&mut star).unwrap();
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
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        writer.join().unwrap();
        assert_eq!(answer.len(), len - 1);
        assert!(answer.iter().all(|&b| b == b'b'));
    }
}
