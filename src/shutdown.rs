//! The one shutdown signal every model obeys.
//!
//! A [`Shutdown`] is a cheap, clonable handle. Any clone may
//! [`trigger`](Shutdown::trigger) it (the signal handler, a test, the
//! benchmark harness); every part of a server that blocks learns of it in
//! the way that suits how it blocks:
//!
//! - an accept loop parked in `epoll_wait` registers a [`mio::Waker`], which
//!   the trigger wakes (an io_uring ring registers its eventfd the same
//!   way, through `Wake`);
//! - a thread blocked on a channel `select!`s on [`Shutdown::channel`], a
//!   receiver that becomes ready (disconnected) when the trigger fires;
//! - anything else [`wait`](Shutdown::wait)s or polls
//!   [`is_triggered`](Shutdown::is_triggered).
//!
//! Triggering twice is harmless, and a waker or waiter that arrives after
//! the trigger sees it at once, so there is no window in which a late
//! starter misses the signal.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// A handle on one server's shutdown signal. Clones share the signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    triggered: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    // Never sent on: dropping the sender is the signal, so any number of
    // receivers wake at once.
    rx: Receiver<()>,
}

/// Something that wakes a thread blocked in the kernel: a [`mio::Waker`]
/// for an epoll loop, an eventfd for an io_uring ring.
pub(crate) trait Wake: Send + Sync {
    /// Wakes it; an error means nobody is left to wake.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        let _ = mio::Waker::wake(self);
    }
}

/// An eventfd that wakes an io_uring ring: the ring keeps a read of it in
/// flight, and whoever has news for the ring (the shutdown, a computed
/// answer, a place freed among the clients) adds to it.
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // Blocking on purpose: io_uring fails a read of an O_NONBLOCK file
        // with EAGAIN instead of waiting for it.
        // SAFETY: eventfd has no memory arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Wake for EventFd {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
        // It cannot block (the counter would have to near 2^64), and a
        // failure leaves nobody to wake.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }
}

struct State {
    wakers: Vec<Arc<dyn Wake>>,
    tx: Option<Sender<()>>,
}

impl Default for Inner {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Inner {
            triggered: AtomicBool::new(false),
            state: Mutex::new(State {
                wakers: Vec::new(),
                tx: Some(tx),
            }),
            changed: Condvar::new(),
            rx,
        }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    /// A new signal, not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal: servers stop accepting at once and start draining.
    pub fn trigger(&self) {
        let mut state = self.lock();
        if self.inner.triggered.swap(true, Ordering::SeqCst) {
            return;
        }
        state.tx = None;
        for waker in &state.wakers {
            // A waker whose poll is gone has nobody left to wake.
            waker.wake();
        }
        self.inner.changed.notify_all();
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::SeqCst)
    }

    /// Blocks until the signal fires.
    pub fn wait(&self) {
        let mut state = self.lock();
        while !self.is_triggered() {
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the signal fires or `timeout` passes; true if it fired.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let state = self.lock();
        let (_state, _) = self
            .inner
            .changed
            .wait_timeout_while(state, timeout, |_| !self.is_triggered())
            .unwrap_or_else(|e| e.into_inner());
        self.is_triggered()
    }

    /// A receiver that becomes ready, as disconnected, when the signal
    /// fires: put it in a `crossbeam_channel::select!` beside a blocking
    /// send or receive.
    pub fn channel(&self) -> Receiver<()> {
        self.inner.rx.clone()
    }

    /// Wakes `waker` when the signal fires (at once if it already has).
    pub(crate) fn register_waker(&self, waker: Arc<dyn Wake>) {
        let mut state = self.lock();
        if self.is_triggered() {
            waker.wake();
        } else {
            state.wakers.push(waker);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update to it is a single push, drain or take.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn trigger_wakes_waiters_and_channel() {
        let s = Shutdown::new();
        let rx = s.channel();
        let waiter = {
            let s = s.clone();
            thread::spawn(move || s.wait())
        };
        assert!(!s.is_triggered());
        assert!(!s.wait_timeout(Duration::from_millis(1)));
        s.trigger();
        waiter.join().unwrap();
        assert!(s.is_triggered());
        assert!(rx.recv().is_err(), "channel must read as disconnected");
        assert!(s.wait_timeout(Duration::from_secs(10)));
        s.trigger();
    }

    #[test]
    fn late_waker_is_woken_at_once() {
        let s = Shutdown::new();
        s.trigger();
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(7)).unwrap());
        s.register_waker(waker.clone());
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(events.iter().next().map(|e| e.token()), Some(mio::Token(7)));
    }
}
