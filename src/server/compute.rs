//! The threads that test large numbers for the models that must never
//! block (`event`, `async`, `uring`), so that a request worth seconds of CPU never
//! stalls a loop and its other clients.
//!
//! Bounded twice over: as many threads as the model has loops or workers,
//! and at most one number in flight per client (a client's further input
//! waits until its answer is in, which also keeps its answers in order).
//! Each number comes back through a callback, which an event loop or a
//! ring turns into an [`Answer`] on its channel and a wake-up (an
//! [`Offloader`]), and the async model into a future.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

use super::responder::Protocol;
use super::slots::ClientId;
use super::state::ServerState;
use crate::prime;
use crate::shutdown::Wake;

/// A number to test, and who to tell. The answer is `None` when the drain
/// ended before the test did.
struct Test {
    n: u64,
    done: Box<dyn FnOnce(Option<bool>) + Send>,
}

/// The pool's threads; [`stop`](ComputePool::stop) it after the last
/// client that could use it.
pub(crate) struct ComputePool {
    tests: Sender<Test>,
    // Dropped to stop the threads, whoever still holds a handle.
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

/// A way to hand numbers to a [`ComputePool`], one per loop or task.
#[derive(Clone)]
pub(crate) struct Compute {
    tests: Sender<Test>,
}

impl ComputePool {
    /// Starts `size` threads; once `closing` is set (the drain is over), a
    /// test under way gives up.
    pub(crate) fn start(size: usize, closing: Arc<AtomicBool>) -> io::Result<Self> {
        let (tests, queue) = crossbeam_channel::unbounded::<Test>();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::with_capacity(size);
        for id in 0..size {
            let (queue, stopped) = (queue.clone(), stopped.clone());
            let closing = Arc::clone(&closing);
            let spawned = thread::Builder::new()
                .name(format!("compute-{id}"))
                .spawn(move || {
                    loop {
                        let test = crossbeam_channel::select! {
                            recv(queue) -> test => match test {
                                Ok(test) => test,
                                Err(_) => return,
                            },
                            recv(stopped) -> _ => return,
                        };
                        let gave_up = || closing.load(Ordering::SeqCst);
                        (test.done)(prime::is_prime_unless(test.n, gave_up));
                    }
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    ComputePool {
                        tests,
                        stop,
                        threads,
                    }
                    .stop();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot start the compute pool: {e}"),
                    ));
                }
            }
        }
        Ok(ComputePool {
            tests,
            stop,
            threads,
        })
    }

    /// The pool a non-blocking model of `state` needs: `size` threads for
    /// `--protocol prime`, none for the byte protocol, which never
    /// computes.
    pub(crate) fn for_server(state: &ServerState, size: usize) -> io::Result<Option<Self>> {
        match state.config.protocol {
            Protocol::Prime => Ok(Some(ComputePool::start(
                size,
                state.registry.closing_flag(),
            )?)),
            Protocol::Bytes => Ok(None),
        }
    }

    /// A handle to give numbers to the pool.
    pub(crate) fn handle(&self) -> Compute {
        Compute {
            tests: self.tests.clone(),
        }
    }

    /// Stops the threads once each has finished its current test, and
    /// waits for them. Tests still queued are dropped unanswered; a test
    /// submitted afterwards is answered at once with `None`.
    pub(crate) fn stop(self) {
        drop(self.tests);
        drop(self.stop);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

impl Compute {
    /// Tests `n` on a pool thread and calls `done` with the answer there.
    pub(crate) fn submit(&self, n: u64, done: impl FnOnce(Option<bool>) + Send + 'static) {
        let test = Test {
            n,
            done: Box::new(done),
        };
        // The pool outlives every loop and task that holds a handle; if it
        // is gone all the same, the drain is over and nobody waits.
        if let Err(back) = self.tests.send(test) {
            (back.into_inner().done)(None);
        }
    }

    /// Tests `n` on a pool thread; the answer as a future.
    pub(crate) fn test(&self, n: u64) -> impl Future<Output = Option<bool>> + use<> {
        let slot = Arc::new(Mutex::new(Slot::default()));
        let theirs = Arc::clone(&slot);
        self.submit(n, move |answer| {
            let waker = {
                let mut slot = theirs.lock().unwrap_or_else(|e| e.into_inner());
                slot.answer = Some(answer);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        Tested { slot }
    }
}

/// The answer to a number a client sent: for which client of its loop or
/// ring, the number, and whether it is prime (`None` if the drain ended
/// first).
struct Answer {
    client: ClientId,
    n: u64,
    prime: Option<bool>,
}

/// A loop's (or a ring's) way to the compute pool and back: answers come
/// back on a channel the loop reads, and its waker tells it to look.
pub(crate) struct Offloader {
    compute: Compute,
    reply: Sender<Answer>,
    answers: Receiver<Answer>,
    wake: Arc<dyn Wake>,
}

impl Offloader {
    /// An offloader whose answers wake `wake`.
    pub(crate) fn new(compute: Compute, wake: Arc<dyn Wake>) -> Self {
        let (reply, answers) = crossbeam_channel::unbounded();
        Offloader {
            compute,
            reply,
            answers,
            wake,
        }
    }

    /// The next answer that has come back, if any: for which client, the
    /// number, and whether it is prime (`None` if the drain ended first).
    pub(crate) fn answer(&self) -> Option<(ClientId, u64, Option<bool>)> {
        let Answer { client, n, prime } = self.answers.try_recv().ok()?;
        Some((client, n, prime))
    }

    /// Has `n` tested for `client`.
    pub(crate) fn send(&self, client: ClientId, n: u64) {
        let (reply, wake) = (self.reply.clone(), Arc::clone(&self.wake));
        self.compute.submit(n, move |prime| {
            if reply.send(Answer { client, n, prime }).is_ok() {
                wake.wake();
            }
        });
    }
}

#[derive(Default)]
struct Slot {
    answer: Option<Option<bool>>,
    waker: Option<Waker>,
}

/// The answer of [`Compute::test`], once a pool thread has it.
struct Tested {
    slot: Arc<Mutex<Slot>>,
}

impl Future for Tested {
    type Output = Option<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match slot.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn answers_come_back_to_whoever_asked() {
        let pool = ComputePool::start(2, Arc::default()).unwrap();
        let compute = pool.handle();
        let (tx, rx) = mpsc::channel();
        for n in [97u64, 91, 1_000_000_007] {
            let tx = tx.clone();
            compute.submit(n, move |answer| tx.send((n, answer)).unwrap());
        }
        let mut got: Vec<(u64, Option<bool>)> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (91, Some(false)),
                (97, Some(true)),
                (1_000_000_007, Some(true))
            ]
        );
        pool.stop();
    }

    #[test]
    fn a_test_under_way_gives_up_when_the_drain_ends() {
        let closing = Arc::new(AtomicBool::new(true));
        let pool = ComputePool::start(1, Arc::clone(&closing)).unwrap();
        let (tx, rx) = mpsc::channel();
        // 2^61 - 1: over a second of trial division, were it not cut short.
        pool.handle()
            .submit(2_305_843_009_213_693_951, move |a| tx.send(a).unwrap());
        assert_eq!(rx.recv().unwrap(), None);
        pool.stop();
    }

    #[test]
    fn a_stopped_pool_answers_at_once_that_nobody_waits() {
        let pool = ComputePool::start(1, Arc::default()).unwrap();
        let compute = pool.handle();
        pool.stop();
        let (tx, rx) = mpsc::channel();
        compute.submit(97, move |a| tx.send(a).unwrap());
        assert_eq!(rx.recv().unwrap(), None);
    }
}
