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

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, select};

use super::listener::{self, Blocking};
use super::{Ctx, conn};

type Job = (TcpStream, SocketAddr);

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
        select! {
            send(jobs, (stream, peer)) -> sent => match sent {
                Ok(()) => ControlFlow::Continue(()),
                // Every worker is gone; nobody can serve this client.
                Err(_) => ControlFlow::Break(()),
            },
            recv(stop) -> _ => {
                ctx.count_dropped();
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
    for (stream, peer) in queue {
        if ctx.shutdown.is_triggered() {
            // Accepted but never served: closing it is as if it had never
            // been accepted.
            drop(stream);
            ctx.count_dropped();
            continue;
        }
        conn::admit(ctx, stream, peer).serve();
    }
}
