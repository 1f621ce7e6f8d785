//! The threads of the non-blocking models' loops (event loops, io_uring
//! rings): each named for its model and number. A loop that fails (which
//! only a bug or a broken machine can make happen) closes its clients,
//! says so and stops the server, rather than limping on; joined together,
//! the first loop's failure is the server's.

use std::io;
use std::thread::{self, JoinHandle};

use crate::shutdown::Shutdown;

pub(crate) type LoopThread = JoinHandle<io::Result<()>>;

/// Starts `what` number `id` (say, "event loop" 0) on a thread named
/// `thread`, running `run`; its failure triggers `shutdown`.
pub(crate) fn spawn(
    what: &'static str,
    id: usize,
    thread: String,
    shutdown: Shutdown,
    run: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> io::Result<LoopThread> {
    thread::Builder::new().name(thread).spawn(move || {
        let ended = run();
        if let Err(e) = &ended {
            tracing::error!("{what} {id} failed: {e}; the server stops");
            shutdown.trigger();
        }
        ended.map_err(|e| io::Error::new(e.kind(), format!("{what} {id} failed: {e}")))
    })
}

/// Waits for every loop; the first one's error, if any failed.
pub(crate) fn join(threads: Vec<LoopThread>, what: &str) -> io::Result<()> {
    let mut result = Ok(());
    for thread in threads {
        let ended = thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other(format!("a {what} panicked"))));
        if result.is_ok() {
            result = ended;
        }
    }
    result
}
