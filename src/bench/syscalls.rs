//! The system calls a server process makes during a run, counted by the
//! kernel.
//!
//! A counting perf event (perf_event_open(2)) on the `raw_syscalls:sys_enter`
//! tracepoint is opened on every thread the server has when the counter is
//! attached, each *inherited* by the threads that thread starts later (a
//! thread per client included; their counts stay with it when they end).
//! So every call of every thread counts: `recv`, `send`, `epoll_wait`,
//! `io_uring_enter`, `futex`, `accept4` and the rest. Nothing samples and
//! nothing is copied out; the count is read from the kernel before and after.
//! (A thread started while the counter is being attached, by a thread not
//! yet attached, would be missed; `concur bench` attaches between runs,
//! when a server starts none.)
//!
//! Why not `/proc/PID/io`: its `syscr` and `syscw` count only the calls of
//! the VFS's read and write paths (`read`, `write`, `readv`, `pread64`,
//! ...). Rust's `TcpStream` reads with `recv` and writes with `send`, which
//! take the socket layer's path, and io_uring's receives and sends are no
//! system calls at all: a concur `event` server that had answered 147,000
//! requests showed `syscr: 0`, `syscw: 0` there; what those count here is
//! files read at start, log lines and a runtime's eventfd wake-ups.
//!
//! What it needs: tracefs (the tracepoint's id under `/sys/kernel/tracing`
//! or `/sys/kernel/debug/tracing`) and the right to count kernel events of
//! another process: root, `CAP_PERFMON`, or `kernel.perf_event_paranoid` at
//! 1 or less. Without them [`Counter::attach`] says which is missing, and
//! the table shows no figure rather than a wrong one. What it costs: while a
//! syscall tracepoint is enabled, every system call on the machine takes
//! the kernel's slower entry path, and the counted ones a little more; every
//! server of a run pays it alike (BENCHMARKS.md has the measured cost).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Where the tracepoint's id is read, in this order.
const ID_FILES: [&str; 2] = [
    "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
    "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id",
];

/// What the counts are, for the record.
pub const SOURCE: &str = "raw_syscalls:sys_enter tracepoint (perf_event_open, every thread)";

/// The first 64 bytes of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER0`),
/// all a counting event needs; the kernel takes the size from `size`.
#[repr(C)]
#[derive(Default)]
struct Attr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `attr.inherit`: threads the counted thread starts are counted too.
const INHERIT: u64 = 1 << 1;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// A count of one process's system calls, running from
/// [`attach`](Counter::attach) until dropped.
pub struct Counter {
    events: Vec<OwnedFd>,
}

impl Counter {
    /// Starts counting the system calls of process `pid`: each of its
    /// threads now and every thread they start from now on.
    ///
    /// # Errors
    ///
    /// Why the kernel's count cannot be had here, in words a user can act
    /// on.
    pub fn attach(pid: u32) -> Result<Counter, String> {
        let id = tracepoint_id()?;
        let tasks = super::cpus::numbered(&format!("/proc/{pid}/task"))
            .map_err(|e| format!("cannot list the threads of process {pid}: {e}"))?;
        let attr = Attr {
            kind: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<Attr>() as u32,
            config: id,
            flags: INHERIT,
            ..Attr::default()
        };
        let mut events = Vec::new();
        for tid in tasks {
            // SAFETY: a valid attr of the size it says; the descriptor, if
            // any, is owned below.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    &attr as *const Attr,
                    tid as libc::pid_t,
                    -1,
                    -1,
                    PERF_FLAG_FD_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                // A thread that ended since the listing has nothing to count.
                if e.raw_os_error() == Some(libc::ESRCH) {
                    continue;
                }
                return Err(refused(&e));
            }
            // SAFETY: a fresh descriptor nobody else owns.
            events.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        if events.is_empty() {
            return Err(format!("process {pid} has no threads left to count"));
        }
        Ok(Counter { events })
    }

    /// System calls counted since [`attach`](Counter::attach); `None` if a
    /// count cannot be read.
    pub fn now(&self) -> Option<u64> {
        let mut total = 0u64;
        for event in &self.events {
            let mut value = 0u64;
            // SAFETY: reads 8 bytes into a u64.
            let n = unsafe {
                libc::read(
                    event.as_raw_fd(),
                    (&mut value as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n != std::mem::size_of::<u64>() as isize {
                return None;
            }
            total += value;
        }
        Some(total)
    }
}

fn tracepoint_id() -> Result<u64, String> {
    for file in ID_FILES {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text
                .trim()
                .parse()
                .map_err(|_| format!("{file} holds no tracepoint id: {text:?}"));
        }
    }
    Err(format!(
        "the raw_syscalls:sys_enter tracepoint cannot be read at {} \
         (tracefs not mounted, or not readable by this user): counting another \
         process's system calls needs root or CAP_PERFMON, and tracefs",
        ID_FILES[0].trim_end_matches("/raw_syscalls/sys_enter/id")
    ))
}

fn refused(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .map(|p| p.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "the kernel refused to count another process's system calls ({e}; \
                 kernel.perf_event_paranoid is {paranoid}): run as root, with CAP_PERFMON, \
                 or with kernel.perf_event_paranoid at 1 or less"
            )
        }
        _ => format!("perf_event_open failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Where the kernel lets this process count, the count of a child
    /// that makes a known number of calls rises by at least that many;
    /// where it does not, the reason names what to change.
    #[test]
    fn a_child_s_calls_are_counted_or_the_reason_is_given() {
        let mut child = Command::new("sh")
            .args(["-c", "read _ ; head -c 4000000 /dev/zero > /dev/null"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh");
        match Counter::attach(child.id()) {
            Ok(counter) => {
                let before = counter.now().expect("a count");
                // The shell reads its line, then starts `head`, a process
                // it forks after the attach: inherited. Its 4,000,000
                // bytes take at least 31 reads and 31 writes of at most
                // 128 KiB each.
                drop(child.stdin.take());
                child.wait().unwrap();
                let after = counter.now().expect("a count");
                assert!(after >= before + 62, "{before} -> {after}");
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                // Named: what is missing, or the call that failed.
                assert!(
                    ["tracefs", "tracing", "perf_event"]
                        .iter()
                        .any(|w| why.contains(w)),
                    "{why}"
                );
                eprintln!("skipped: system calls cannot be counted here: {why}");
            }
        }
    }
}
