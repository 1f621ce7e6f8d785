//! The article's C server: one thread per client.
//!
//! Every accepted client gets a thread of its own, so nobody waits for
//! anybody; the cost is a thread (a stack, a kernel task) per client, which
//! is what `concur threads` measures. A thread that cannot be created closes
//! that one client; the server goes on.

use std::io;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::sync::{Arc, mpsc};

use tracing::warn;

use super::admission::Refusal;
use super::conn;
use super::listener::{self, Io};
use super::memory;
use super::state::ServerState;

pub(crate) fn run(listener: TcpListener, state: &Arc<ServerState>) -> io::Result<()> {
    let mut next = 0u64;
    // Under an address-space limit the accept loop checks that each
    // newcomer's thread fits (see `memory`); waiting until the previous
    // thread has mapped all it will (its stack, its signal stack, maybe a
    // malloc arena, its buffers) makes that check see it.
    let wait_for_start = state.budget.limited();
    let (stack, rest) = (
        memory::stack_size(&state.config),
        memory::thread_cost(&state.config),
    );
    listener::accept_loop(
        listener,
        state,
        Io::Blocking,
        |admission, stream, peer, permit| {
            if let Err(short) = state.stacks.check_thread(&state.budget, stack, rest) {
                let client = permit.client();
                admission.reject((stream, permit), peer, client, Refusal::NoThread(short));
                return ControlFlow::Continue(());
            }
            next += 1;
            let client = conn::admit(state, stream, peer, permit);
            let (ready, started) = mpsc::sync_channel::<()>(1);
            let ended = Arc::clone(state);
            let spawned = state
                .config
                .thread_builder(format!("client-{next}"))
                .spawn(move || {
                    client.serve_alone(move || {
                        let _ = ready.send(());
                    });
                    ended.stacks.thread_ended();
                });
            match spawned {
                // A thread that ends without saying so drops its sender: the
                // wait ends either way.
                Ok(_) if wait_for_start => {
                    let _ = started.recv();
                }
                Ok(_) => {}
                // The closure, and with it the client, is dropped: it is
                // closed without a `*`, and its guard counts it as failed.
                Err(e) => warn!("cannot start a thread for {peer}: {e}; closing that client"),
            }
            ControlFlow::Continue(())
        },
    )
}
