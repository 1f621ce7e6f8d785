//! Serving under an address-space limit (`ulimit -v`).
//!
//! Rust aborts the whole process when an allocation fails, so one client
//! too many must never be what makes an allocation fail. Under a limit,
//! the server keeps [`RESERVE`] of address space free for the small
//! allocations nobody can make fallible (log lines, a thread's signal
//! stack, bookkeeping), and everything large that one client costs is
//! checked against what is left first:
//!
//! - a newcomer is accepted and closed at once, unserved and counted as
//!   rejected, when what it needs to begin with does not fit: its buffers
//!   ([`client_cost`]), or its thread ([`Stacks::check_thread`]). A
//!   growing pool that cannot start another worker, with none free and no
//!   place in its queue, rejects the client too;
//! - a client's buffers are reserved, and later grown, through
//!   [`Budget::reserve`]: the check, then `try_reserve`. A client whose
//!   buffers do not fit is closed and counted as failed; the others go on;
//! - a thread (a client's own, or a pool worker) is started only when it
//!   fits, and the next check waits until it is running and has made its
//!   first allocations (glibc may map a 64 MiB malloc arena for it then),
//!   so that each check sees what the one before admitted.
//!
//! "Used" is the process's virtual size, what the limit counts, read from
//! `/proc/self/statm`: a read of a few microseconds, made only under a
//! limit. Without one, every check passes without looking.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::config::Config;
use super::model::Model;
use super::responder::{MAX_ANSWER, Protocol};
use crate::threads;

/// Bytes read per `read` call, and the most one answer write holds: what
/// a blocking client's buffers and a loop's shared read buffer hold.
pub(crate) const BUF_SIZE: usize = 64 * 1024;

/// Address space kept free under a limit, for the allocations that cannot
/// fail gracefully. Near the limit glibc maps a page (or, for the main
/// heap, a megabyte) for each allocation its heaps can no longer hold, so
/// a few thousand small ones add up to megabytes.
pub(crate) const RESERVE: u64 = 8 << 20;

/// What a new thread maps besides its stack: a guard page and its signal
/// stack, with room to spare.
pub(crate) const THREAD_EXTRA: u64 = 256 << 10;

/// A blocking client's buffers: one read's worth of input and of answers
/// (with `--protocol prime`, one answer line more).
pub(crate) fn buffers_cost(protocol: Protocol) -> u64 {
    (BUF_SIZE + answer_capacity(protocol)) as u64
}

/// The answer buffer a blocking client needs so that answering one read
/// never grows it.
pub(crate) fn answer_capacity(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Bytes => BUF_SIZE,
        Protocol::Prime => BUF_SIZE + MAX_ANSWER,
    }
}

/// The stack of each client thread or pool worker.
pub(crate) fn stack_size(config: &Config) -> u64 {
    config.stack_size().unwrap_or_else(threads::default_stack) as u64
}

/// What a newcomer needs to begin with, in address space, beyond what its
/// thread (checked apart) or its worker already holds: for the
/// event-driven models, a read's worth of answers and its bookkeeping.
/// Growth beyond that is checked as it comes.
pub(crate) fn client_cost(config: &Config) -> u64 {
    let buffers = buffers_cost(config.protocol);
    match config.model() {
        // Their buffers are reserved as the server (or a worker) starts,
        // and serve one client after another: a client costs nothing more,
        // and is refused only once the reserve itself is in use.
        Model::Sequential | Model::Pool => 0,
        // Its thread is checked as it starts ([`Stacks::check_thread`]),
        // since its stack may be one already mapped.
        Model::Thread => 0,
        // Answers to one read, its state, and the runtime's or the loop's
        // share (a task, a registration).
        Model::Event | Model::Async | Model::Uring => buffers + (16 << 10),
    }
}

/// What a new client thread or worker maps besides its stack.
pub(crate) fn thread_cost(config: &Config) -> u64 {
    THREAD_EXTRA + buffers_cost(config.protocol)
}

/// The stacks of threads that have ended. glibc keeps them mapped (up to
/// 40 MiB of them) and gives them to the next threads it starts, so the
/// address space they hold is not given back, and a new thread may cost no
/// new stack at all. Counting every new thread's stack as new would then
/// refuse clients for good once a burst has passed: threads come and go,
/// the size stays.
#[derive(Debug, Default)]
pub(crate) struct Stacks {
    ended: AtomicUsize,
}

impl Stacks {
    /// A thread of ours has ended: its stack may wait for the next.
    pub(crate) fn thread_ended(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a new thread with `stack` and `rest` besides fits. When the
    /// stack does not but a thread has ended since the last start, the
    /// stack is probably that one's, and only the rest must fit; should it
    /// be new after all, it takes at most half the reserve (larger stacks
    /// are never assumed reused), and the next check sees it. Call it just
    /// before starting the thread; a pass counts one ended stack as taken.
    pub(crate) fn check_thread(
        &self,
        budget: &Budget,
        stack: u64,
        rest: u64,
    ) -> Result<(), Shortfall> {
        let fits = budget.check(stack.saturating_add(rest)).or_else(|short| {
            let maybe_reused = stack <= RESERVE / 2 && self.ended.load(Ordering::SeqCst) > 0;
            if maybe_reused {
                budget.check(rest).map_err(|_| short)
            } else {
                Err(short)
            }
        });
        if fits.is_ok() {
            let _ = self
                .ended
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        }
        fits
    }
}

/// Why something does not fit.
#[derive(Debug)]
pub(crate) struct Shortfall {
    used: u64,
    need: u64,
    limit: u64,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of the address-space limit (ulimit -v) of {} in use; {} more and the {} kept in \
             reserve do not fit",
            mib(self.used),
            mib(self.limit),
            mib(self.need),
            mib(RESERVE)
        )
    }
}

impl From<Shortfall> for io::Error {
    fn from(short: Shortfall) -> Self {
        io::Error::new(io::ErrorKind::OutOfMemory, short.to_string())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The process's address-space limit, and the checks against it.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Option<u64>,
    /// What is in use: [`used`], but for tests.
    used: fn() -> io::Result<u64>,
    // /proc could not be read: checks pass, and that is said once.
    blind: AtomicBool,
}

impl Budget {
    /// The limit this process has now (`RLIMIT_AS`).
    pub(crate) fn from_rlimit() -> Self {
        Budget::new(threads::address_space_limit(), used)
    }

    pub(crate) fn new(limit: Option<u64>, used: fn() -> io::Result<u64>) -> Self {
        Budget {
            limit,
            used,
            blind: AtomicBool::new(false),
        }
    }

    /// Whether there is a limit to keep to.
    pub(crate) fn limited(&self) -> bool {
        self.limit.is_some()
    }

    /// Whether `bytes` more fit beside what is used and the reserve.
    pub(crate) fn check(&self, bytes: u64) -> Result<(), Shortfall> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let used = match (self.used)() {
            Ok(used) => used,
            Err(e) => {
                if !self.blind.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot read /proc/self/statm ({e}): clients are admitted without \
                         checking the address-space limit"
                    );
                }
                return Ok(());
            }
        };
        if used.saturating_add(bytes).saturating_add(RESERVE) <= limit {
            Ok(())
        } else {
            Err(Shortfall {
                used,
                need: bytes,
                limit,
            })
        }
    }

    /// Makes room for `additional` more bytes in `buf`, or fails with
    /// [`io::ErrorKind::OutOfMemory`] (never an abort): checked against the
    /// limit first, then reserved fallibly. Free when the room is there.
    pub(crate) fn reserve(&self, buf: &mut Vec<u8>, additional: usize) -> io::Result<()> {
        if buf.capacity() - buf.len() >= additional {
            return Ok(());
        }
        // A growing Vec may double; count the larger of the two.
        self.check(additional.max(buf.capacity()) as u64)?;
        buf.try_reserve(additional).map_err(|e| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot reserve {additional} bytes for this client: {e}"),
            )
        })
    }
}

/// The process's virtual size in bytes.
fn used() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no size in statm"))?;
    Ok(pages * page_size() as u64)
}

/// The size of a memory page (4096 if the system does not say).
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 { page as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A limit of 100 MiB, 50 of them in use.
    fn half_full() -> Budget {
        Budget::new(Some(100 * MIB), || Ok(50 * MIB))
    }

    #[test]
    fn without_a_limit_everything_fits() {
        let budget = Budget::new(None, || panic!("not even looked at"));
        assert!(budget.check(u64::MAX).is_ok());
        let mut buf = Vec::new();
        budget.reserve(&mut buf, 1000).unwrap();
        assert!(buf.capacity() >= 1000);
    }

    #[test]
    fn the_reserve_stays_free_and_what_does_not_fit_is_not_allocated() {
        let budget = half_full();
        assert!(budget.check(50 * MIB - RESERVE).is_ok());
        let said = budget
            .check(50 * MIB - RESERVE + 1)
            .unwrap_err()
            .to_string();
        assert!(
            said.contains("ulimit -v") && said.contains("reserve"),
            "{said}"
        );

        let mut buf = Vec::new();
        let e = budget.reserve(&mut buf, 64 * MIB as usize).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert_eq!(buf.capacity(), 0, "nothing was allocated");
        // Room already there needs no check.
        let full = Budget::new(Some(MIB), || Ok(MIB));
        let mut roomy = Vec::with_capacity(100);
        full.reserve(&mut roomy, 100).unwrap();
    }

    #[test]
    fn unreadable_usage_admits() {
        let budget = Budget::new(Some(MIB), || Err(io::ErrorKind::NotFound.into()));
        assert!(budget.check(64 * MIB).is_ok());
    }

    #[test]
    fn this_process_size_is_read() {
        assert!(used().unwrap() > 0);
    }

    #[test]
    fn an_ended_threads_stack_is_taken_as_reused_once() {
        let budget = half_full();
        let room = 50 * MIB - RESERVE;
        let stack = 2 * MIB;
        let stacks = Stacks::default();
        // The stack and the rest do not fit; the rest alone does.
        let rest = room - MIB;
        assert!(stacks.check_thread(&budget, stack, rest).is_err());
        stacks.thread_ended();
        assert!(
            stacks.check_thread(&budget, stack, rest).is_ok(),
            "one ended"
        );
        assert!(stacks.check_thread(&budget, stack, rest).is_err(), "taken");
        // A stack over half the reserve is never assumed reused.
        stacks.thread_ended();
        assert!(stacks.check_thread(&budget, RESERVE, rest).is_err());
        // Nor is a thread whose rest does not fit started.
        assert!(stacks.check_thread(&budget, stack, room + 1).is_err());
        // What fits whole takes an ended stack too.
        assert!(stacks.check_thread(&budget, stack, MIB).is_ok());
        assert!(stacks.check_thread(&budget, stack, rest).is_err());
    }
}
