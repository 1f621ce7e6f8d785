//! Part 1's server: one client at a time.
//!
//! The accept loop serves each client itself, start to finish, before it
//! accepts the next. Clients arriving meanwhile are complete TCP
//! connections, but they wait in the kernel's listen backlog and see no `*`
//! until everyone before them has left.

use std::io;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::conn::{self, ThreadBuffers};
use super::listener::{self, Io};
use super::state::ServerState;

pub(crate) fn run(listener: TcpListener, state: &Arc<ServerState>) -> io::Result<()> {
    // One client at a time: one set of buffers, reserved as the server
    // sets itself up.
    let mut buffers = ThreadBuffers::reserve(state)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reserve the buffers: {e}")))?;
    listener::accept_loop(listener, state, Io::Blocking, |_, stream, peer, permit| {
        conn::admit(state, stream, peer, permit).serve(&mut buffers);
        ControlFlow::Continue(())
    })
}
