//! The article's C server: one thread per client.
//!
//! Every accepted client gets a thread of its own, so nobody waits for
//! anybody; the cost is a thread (a stack, a kernel task) per client, which
//! is what `concur threads` measures. A thread that cannot be created closes
//! that one client; the server goes on.

use std::io;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::sync::Arc;

use tracing::warn;

use super::listener::{self, Blocking};
use super::{Ctx, conn};

pub(crate) fn run(listener: TcpListener, ctx: &Arc<Ctx>) -> io::Result<()> {
    let mut next = 0u64;
    listener::accept_loop(listener, ctx, Blocking::Yes, |stream, peer| {
        next += 1;
        let client = conn::admit(ctx, stream, peer);
        let spawned = ctx
            .config
            .thread_builder(format!("client-{next}"))
            .spawn(move || client.serve());
        // On failure the closure, and with it the client, is dropped: it is
        // closed without a `*`, and its guard counts it as failed.
        if let Err(e) = spawned {
            warn!("cannot start a thread for {peer}: {e}; closing that client");
        }
        ControlFlow::Continue(())
    })
}
