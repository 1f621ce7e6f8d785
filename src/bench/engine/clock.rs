//! Clocks: a thread's timer that epoll can watch, and CPU time, the load
//! thread's own and a server process's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------
// Clocks
// ---------------------------------------------------------------------

/// A thread's timer as a descriptor epoll can watch, with nanosecond
/// resolution.
pub(super) struct TimerFd {
    pub(super) fd: OwnedFd,
    pub(super) armed: Option<Instant>,
}

impl TimerFd {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the descriptor is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(TimerFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: None,
        })
    }

    /// Fires at `at` (now, if that has passed).
    pub(super) fn set(&mut self, at: Instant) {
        if self.armed == Some(at) {
            return;
        }
        // Relative, from `Instant`'s clock: a zero value would disarm it.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid descriptor and a valid spec; the old value is
        // not asked for.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
        self.armed = Some(at);
    }

    /// Takes the expiry off the descriptor (edge-triggered: it must be
    /// read for the next one to show).
    pub(super) fn clear(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads 8 bytes into a buffer of 8.
        unsafe {
            libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8);
        }
        self.armed = None;
    }
}

/// Asks the kernel to wake this thread on time: the default timer slack
/// (50 µs) would add itself to every open-loop latency, since those count
/// from the intended send time.
pub(super) fn tight_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the
    // calling thread; a failure leaves the default slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

pub(super) fn read_clock(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The CPU time the calling thread has used.
pub(super) fn thread_cpu() -> Duration {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// The CPU clock of another process: every thread it has or had.
pub struct ProcessClock(Option<libc::clockid_t>);

impl ProcessClock {
    /// The clock of process `pid`.
    pub fn of(pid: u32) -> Self {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: a valid pointer to a local clockid.
        let ok = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } == 0;
        ProcessClock(ok.then_some(clock))
    }

    /// Its CPU time so far; `None` once it is gone.
    pub fn now(&self) -> Option<Duration> {
        read_clock(self.0?)
    }
}
