//! The throughput reference: a plain echo server that moves bytes the
//! way the thread models do but does no protocol work, and [`Peer`], which
//! tells its answers from a concur server's.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The echo server's read size: the same as the concur servers', so that
/// the two make the same number of system calls for the same load.
pub const ECHO_BUF_SIZE: usize = 64 * 1024;

/// What kind of server listens at an address, which decides what the
/// load expects back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A concur server: `*` on connect, then each byte inside a message
    /// plus one, the markers themselves unanswered.
    Concur,
    /// The echo reference of [`start_echo`]: `*` on connect as well, then
    /// every byte back unchanged, markers included.
    Echo,
}

impl Peer {
    /// What this server sends back for byte `b` of a message.
    pub fn answer(self, b: u8) -> u8 {
        match self {
            Peer::Concur => b.wrapping_add(1),
            Peer::Echo => b,
        }
    }
}

/// A running echo server; [`stop`](EchoServer::stop) it (or drop it) to end
/// it and every connection it has.
pub struct EchoServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    clients: Arc<Mutex<Vec<EchoClient>>>,
    acceptor: Option<JoinHandle<()>>,
}

struct EchoClient {
    // A second handle on the socket, so that stopping can wake the thread
    // blocked reading it.
    socket: TcpStream,
    thread: JoinHandle<()>,
}

/// Starts a plain echo server on `listener`: one thread per client, `*`
/// on connect, then 64 KiB reads, each written back whole with
/// `write_all`, `TCP_NODELAY` on.
///
/// It is the yardstick for the concur servers, doing the same system calls
/// minus the protocol work: it greets as they do (so a load generator can
/// tell, as with them, that it has been accepted), then changes no byte
/// ([`Peer::Echo`]).
pub fn start_echo(listener: TcpListener) -> io::Result<EchoServer> {
    let addr = listener.local_addr()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let clients = Arc::new(Mutex::new(Vec::new()));
    let acceptor = {
        let (stopping, clients) = (Arc::clone(&stopping), Arc::clone(&clients));
        thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || echo_accept(listener, &stopping, Some(&clients)))?
    };
    Ok(EchoServer {
        addr,
        stopping,
        clients,
        acceptor: Some(acceptor),
    })
}

/// The accept loop of the echo. With `clients`, every client is kept
/// track of (a second handle on its socket and its thread) so that
/// [`EchoServer::stop`] can end them; without, as in the process of
/// [`serve_echo`], which only ever ends whole, a client costs one
/// descriptor, as it does in the concur servers.
fn echo_accept(
    listener: TcpListener,
    stopping: &AtomicBool,
    clients: Option<&Mutex<Vec<EchoClient>>>,
) {
    let mut kept = 0;
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        // The reference only has to keep going for the connections that
        // do arrive; the pause keeps an out-of-descriptors error (which
        // leaves the connection queued) from spinning a core.
        let Ok(stream) = stream else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Some(clients) = clients else {
            let _ = thread::Builder::new()
                .name("echo-client".into())
                .spawn(move || echo(&stream));
            continue;
        };
        let Ok(socket) = stream.try_clone() else {
            continue;
        };
        let Ok(thread) = thread::Builder::new()
            .name("echo-client".into())
            .spawn(move || {
                let _ = echo(&stream);
                // The registry's handle keeps the socket open after this
                // thread drops its own, so close it explicitly: the client
                // waits for the close.
                let _ = stream.shutdown(Shutdown::Both);
            })
        else {
            continue;
        };
        let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
        // Long runs open many connections one after another; forget the
        // ones that are over, once the list has doubled since the last
        // look: a look per accept would cost the accept loop time in
        // proportion to the clients, and it would fall behind a burst.
        if clients.len() >= 2 * kept.max(64) {
            clients.retain(|c| !c.thread.is_finished());
            kept = clients.len();
        }
        clients.push(EchoClient { socket, thread });
    }
}

/// Runs the echo reference on the calling thread for as long as the
/// process lives: `concur echo`, the process `concur bench` starts as its
/// reference.
pub fn serve_echo(listener: TcpListener) -> io::Result<()> {
    echo_accept(listener, &AtomicBool::new(false), None);
    Ok(())
}

fn echo(mut stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(&[crate::protocol::ACK])?;
    let mut buf = vec![0u8; ECHO_BUF_SIZE];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stream.write_all(&buf[..n])?;
    }
}

impl EchoServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and waits for all its
    /// threads.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // The acceptor is blocked in accept(); a connection of our own
        // wakes it to see the flag.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = acceptor.join();
        }
        // If the wake-up failed the acceptor is left blocked (detached);
        // the clients below still end.
        let clients = std::mem::take(&mut *self.clients.lock().unwrap_or_else(|e| e.into_inner()));
        for client in &clients {
            let _ = client.socket.shutdown(Shutdown::Both);
        }
        for client in clients {
            let _ = client.thread.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

// ---------------------------------------------------------------------
// What a stream sends and gets back
// ---------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_stop_ends_open_connections() {
        let echo = start_echo(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        let mut client = TcpStream::connect(echo.local_addr()).unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"*hi");
        echo.stop();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
}
