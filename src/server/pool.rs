//! The article's Python server: a fixed pool of worker threads.
//!
//! `threads` workers each take one client at a time from a bounded channel
//! and serve it to the end. The accept loop puts each accepted client into
//! that channel. With the default capacity of zero the channel is a
//! rendezvous: the accept loop blocks until a worker is free, and further
//! clients wait, unserved, in the kernel's listen backlog. This is how a
//! pool rate-limits: at most `threads` clients are served at once, however
//! many arrive, and the rest queue instead of costing threads.
//!
//! On shutdown the accept loop drops the sender; workers finish their
//! clients, close any still queued without serving them, see the channel
//! disconnect and exit, and are joined.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use tracing::info;

use crossbeam_channel::{Receiver, select};

use super::listener::{self, Blocking};
use super::{Ctx, conn};

/// A client waiting for a worker, with the moment it was accepted.
type Job = (TcpStream, SocketAddr, Instant);

pub(crate) fn run(listener: TcpListener, ctx: &Arc<Ctx>) -> io::Result<()> {
    let (jobs, queue) = crossbeam_channel::bounded::<Job>(ctx.config.queue);
    let mut workers = Vec::with_capacity(ctx.config.threads);
    for id in 0..ctx.config.threads {
        let (ctx_for_worker, queue) = (Arc::clone(ctx), queue.clone());
        match thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || work(&ctx_for_worker, &queue))
        {
            Ok(worker) => workers.push(worker),
            Err(e) => {
                // Starting the pool is setting the server up: without its
                // workers it cannot serve anyone.
                ctx.shutdown.trigger();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start pool worker {id}: {e}"),
                ));
            }
        }
    }
    drop(queue);

    let stop = ctx.shutdown.channel();
    let result = listener::accept_loop(listener, ctx, Blocking::Yes, |stream, peer| {
        ctx.set_off();
        select! {
            send(jobs, (stream, peer, Instant::now())) -> sent => match sent {
                Ok(()) => ControlFlow::Continue(()),
                // Every worker is gone; nobody can serve this client.
                Err(_) => {
                    ctx.arrived();
                    ControlFlow::Break(())
                }
            },
            recv(stop) -> _ => {
                ctx.count_dropped();
                ctx.arrived();
                ControlFlow::Break(())
            }
        }
    });
    drop(jobs);
    for worker in workers {
        let _ = worker.join();
    }
    result
}

fn work(ctx: &Arc<Ctx>, queue: &Receiver<Job>) {
    for (stream, peer, accepted) in queue {
        if ctx.shutdown.is_triggered() {
            // Accepted but never served: closing it is as if it had never
            // been accepted.
            drop(stream);
            ctx.count_dropped();
            ctx.arrived();
            continue;
        }
        if idled_out_in_queue(ctx, &stream, accepted) {
            info!(target: conn::LOG_TARGET, "peer {peer} closed unserved: sent nothing while it waited past the idle timeout");
            drop(stream);
            ctx.count_timed_out();
            ctx.arrived();
            continue;
        }
        let client = conn::admit(ctx, stream, peer);
        ctx.arrived();
        client.serve();
    }
}

/// Whether a client that waited in the hand-off has already been silent
/// for the whole idle timeout. Serving it would hold a worker for another
/// full timeout; with a few idle clients queued per worker, everyone behind
/// them would wait that long again and again. Its idle time is counted
/// from its accept; the time it spent in the kernel's backlog before that
/// is unknown to the server, which is why a queue (`--queue`) lets the idle
/// timeout clear idle clients out faster than a rendezvous does.
fn idled_out_in_queue(ctx: &Ctx, stream: &TcpStream, accepted: Instant) -> bool {
    let Some(limit) = ctx.config.idle_timeout else {
        return false;
    };
    if accepted.elapsed() < limit {
        return false;
    }
    let mut probe = [0u8; 1];
    let silent = stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut probe), Err(e) if e.kind() == ErrorKind::WouldBlock);
    // Served after all: back to blocking I/O for the worker.
    silent || stream.set_nonblocking(false).is_err()
}
