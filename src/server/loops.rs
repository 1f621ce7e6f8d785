//! The threads of the non-blocking models' loops (event loops, io_uring
//! rings): each named for its model and number. A loop that fails (which
//! only a bug or a broken machine can make happen) closes its clients,
//! says so and stops the server, rather than limping on; joined together,
//! the first loop's failure is the server's.
//!
//! A model's loops start together or not at all: each is set up on its
//! own thread (an io_uring ring must be: the kernel ties its clean-up to
//! the thread that made it), and none runs until all are, so that a loop
//! that cannot be set up is reported before any client is taken.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use super::registry::panic_message;
use crate::shutdown::Shutdown;

pub(crate) type LoopThread = JoinHandle<io::Result<()>>;

/// A model's loops, set up and waiting for the word to run.
pub(crate) struct Starting {
    what: &'static str,
    thread: &'static str,
    shutdown: Shutdown,
    threads: Vec<LoopThread>,
    go: Vec<mpsc::SyncSender<bool>>,
}

impl Starting {
    /// Loops that are each a `what` (say, "event loop"), on threads named
    /// `thread` and their number; a failure of one triggers `shutdown`.
    pub(crate) fn new(what: &'static str, thread: &'static str, shutdown: &Shutdown) -> Self {
        Starting {
            what,
            thread,
            shutdown: shutdown.clone(),
            threads: Vec::new(),
            go: Vec::new(),
        }
    }

    /// Starts loop `id`'s thread, where `set_up` makes the loop and what
    /// the caller is to have of it, returned once it has.
    pub(crate) fn spawn<T: Send + 'static, L: FnOnce() -> io::Result<()>>(
        &mut self,
        id: usize,
        set_up: impl FnOnce() -> io::Result<(T, L)> + Send + 'static,
    ) -> io::Result<T> {
        let what = self.what;
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot start {what} {id}: {e}"));
        let (ready, is_ready) = mpsc::sync_channel::<io::Result<T>>(1);
        let (go, goes) = mpsc::sync_channel::<bool>(1);
        let thread = format!("{}-{id}", self.thread);
        let thread = spawn(what, id, thread, self.shutdown.clone(), move || {
            // A panic is caught so that what it said reaches the caller,
            // as a set-up failure, like an error.
            let set_up = panic::catch_unwind(AssertUnwindSafe(set_up)).unwrap_or_else(|p| {
                let said = panic_message(&*p);
                Err(io::Error::other(format!(
                    "it panicked while setting up: {said}"
                )))
            });
            let run = match set_up {
                Ok((theirs, run)) => {
                    let _ = ready.send(Ok(theirs));
                    run
                }
                // Reported through `ready`, as a set-up failure.
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(());
                }
            };
            match goes.recv() {
                Ok(true) => run(),
                _ => Ok(()),
            }
        })
        .map_err(context)?;
        self.threads.push(thread);
        self.go.push(go);
        is_ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("its thread ended while setting it up")))
            .map_err(context)
    }

    /// Lets every loop run if all were set up (`set_up` is `Ok`), and
    /// returns their threads; if not, ends them all and returns its error.
    pub(crate) fn release(self, set_up: io::Result<()>) -> io::Result<Vec<LoopThread>> {
        for go in &self.go {
            let _ = go.send(set_up.is_ok());
        }
        match set_up {
            Ok(()) => Ok(self.threads),
            Err(e) => {
                let _ = join(self.threads, self.what);
                Err(e)
            }
        }
    }
}

/// Starts `what` number `id` (say, "event loop" 0) on a thread named
/// `thread`, running `run`; its failure triggers `shutdown`.
fn spawn(
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
