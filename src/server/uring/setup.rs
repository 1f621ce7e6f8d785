//! Setting a ring up, and saying clearly when the kernel will not.
//!
//! io_uring can be missing or refused for reasons that have nothing to do
//! with this program: a kernel built without it (`ENOSYS`), the
//! `kernel.io_uring_disabled` sysctl (Linux 6.6+: 1 limits it to a group,
//! 2 disables it), or a seccomp filter (container runtimes' default
//! profiles refuse it: `EPERM`). Each is turned into an error that says
//! which, and names the models that need no io_uring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use io_uring::{IoUring, Probe, opcode};

use crate::server::Model;
use crate::shutdown::Wake;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Submission queue entries per ring; more wait in the ring's own backlog.
const SQ_ENTRIES: u32 = 1024;

/// Completion queue entries per ring. The kernel keeps what does not fit
/// (`IORING_FEAT_NODROP`), so this only sets how much one wait can reap.
const CQ_ENTRIES: u32 = 8192;

/// The oldest kernel with everything the model uses: multishot receive
/// (6.0), provided buffer rings and multishot accept (5.19), `MSG_RING`
/// (5.18).
const OLDEST: (u32, u32) = (6, 0);

/// The models a user can turn to instead.
fn others() -> String {
    let names: Vec<&str> = Model::ALL
        .iter()
        .filter(|&&m| m != Model::Uring)
        .map(|m| m.name())
        .collect();
    format!(
        "serve with another model instead: --model {}",
        names.join(", ")
    )
}

fn unavailable(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring is unavailable here: {why}; {}", others()),
    )
}

/// Turns a failed `io_uring_setup(2)` into an error that says why.
/// `sysctl` is the content of `/proc/sys/kernel/io_uring_disabled`, if it
/// could be read (there is none before Linux 6.6).
pub(super) fn setup_error(e: io::Error, sysctl: Option<&str>) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup(2) failed with ENOSYS (a kernel built without \
                               CONFIG_IO_URING, or a filter that hides the call)"
            .to_string(),
        Some(libc::EPERM) => {
            let cause = match sysctl.map(str::trim) {
                Some("2") => {
                    "kernel.io_uring_disabled is 2: io_uring is disabled for every process"
                }
                Some("1") => {
                    "kernel.io_uring_disabled is 1: only members of kernel.io_uring_group \
                     (or CAP_SYS_ADMIN) may use it"
                }
                _ => "probably a seccomp filter, such as a container runtime's default profile",
            };
            format!("io_uring_setup(2) failed with EPERM ({cause})")
        }
        Some(libc::ENOMEM) => "io_uring_setup(2) failed with ENOMEM (RLIMIT_MEMLOCK too low, \
                               on kernels before 5.12, or out of memory)"
            .to_string(),
        _ => return io::Error::new(e.kind(), format!("cannot set up an io_uring ring: {e}")),
    };
    unavailable(why)
}

/// The running kernel's version, from uname(2).
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates `release`.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A ring for one thread, created disabled: the thread that will use it
/// enables it ([`enable`]), which makes it that ring's only submitter.
/// Tries the flags that suit one thread per ring first
/// (`SINGLE_ISSUER`, `DEFER_TASKRUN`: completions are run only when the
/// ring's own thread asks for them, in batches) and falls back to a plain
/// ring on kernels that refuse them (`EINVAL`).
pub(super) fn ring(sq: u32, cq: u32) -> io::Result<IoUring> {
    let sysctl = std::fs::read_to_string(SYSCTL).ok();
    if sysctl.as_deref().map(str::trim) == Some("2") {
        // It would fail with EPERM: say why without trying.
        return Err(setup_error(
            io::Error::from_raw_os_error(libc::EPERM),
            Some("2"),
        ));
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cq)
        .setup_clamp()
        .setup_r_disabled()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun();
    let ring = match b.build(sq) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp().setup_r_disabled();
            b.build(sq).map_err(|e| setup_error(e, sysctl.as_deref()))?
        }
        Err(e) => return Err(setup_error(e, sysctl.as_deref())),
    };
    Ok(ring)
}

/// A ring of the usual size.
pub(super) fn full_ring() -> io::Result<IoUring> {
    ring(SQ_ENTRIES, CQ_ENTRIES)
}

/// Makes the calling thread the ring's submitter.
pub(super) fn enable(ring: &IoUring) -> io::Result<()> {
    ring.submitter().register_enable_rings()
}

/// Whether this kernel lets this process serve with io_uring: a small
/// ring is set up, the operations the model needs are probed, and the
/// kernel must be recent enough for multishot receive. Found out once per
/// process.
pub(crate) fn check() -> io::Result<()> {
    static FOUND: OnceLock<Result<(), (io::ErrorKind, String)>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        // On a thread of its own: closing a ring interrupts a blocking call
        // of the thread that made it (the kernel's clean-up runs as that
        // thread's task work), which the caller need not expect.
        std::thread::scope(|s| s.spawn(probe).join())
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring probe panicked")))
            .map_err(|e| (e.kind(), e.to_string()))
    });
    found
        .clone()
        .map_err(|(kind, message)| io::Error::new(kind, message))
}

fn probe() -> io::Result<()> {
    let ring = ring(4, 8)?;
    if let Some(version) = kernel_version()
        && version < OLDEST
    {
        return Err(unavailable(format!(
            "this kernel is {}.{}, and the model needs multishot receive, from Linux {}.{}",
            version.0, version.1, OLDEST.0, OLDEST.1
        )));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| unavailable(format!("cannot probe io_uring's operations: {e}")))?;
    let needed = [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::AsyncCancel2::CODE, "async_cancel"),
        (opcode::Timeout::CODE, "timeout"),
        (opcode::Read::CODE, "read"),
        (opcode::MsgRingData::CODE, "msg_ring"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(unavailable(format!(
                "this kernel's io_uring has no {name} operation"
            )));
        }
    }
    Ok(())
}

/// An eventfd that wakes a ring: the ring keeps a read of it in flight,
/// and whoever has news for the ring (the shutdown, a computed answer, a
/// place freed among the clients) adds to it.
pub(super) struct EventFd(OwnedFd);

impl EventFd {
    pub(super) fn new() -> io::Result<Self> {
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

    pub(super) fn fd(&self) -> i32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(errno: i32, sysctl: Option<&str>) -> String {
        let e = setup_error(io::Error::from_raw_os_error(errno), sysctl);
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        let m = e.to_string();
        assert!(m.starts_with("io_uring is unavailable here"), "{m}");
        assert!(
            m.contains("--model sequential, thread, pool, event, async"),
            "names the others: {m}"
        );
        m
    }

    #[test]
    fn each_refusal_says_why() {
        assert!(message(libc::ENOSYS, None).contains("CONFIG_IO_URING"));
        assert!(message(libc::EPERM, Some("2\n")).contains("io_uring_disabled is 2"));
        assert!(message(libc::EPERM, Some("1\n")).contains("io_uring_group"));
        assert!(message(libc::EPERM, Some("0\n")).contains("seccomp"));
        assert!(message(libc::EPERM, None).contains("seccomp"));
        assert!(message(libc::ENOMEM, None).contains("RLIMIT_MEMLOCK"));
        // Anything else is an ordinary set-up failure.
        let e = setup_error(io::Error::from_raw_os_error(libc::EFAULT), None);
        assert_ne!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("cannot set up"), "{e}");
    }

    #[test]
    fn the_version_is_read() {
        let (major, _) = kernel_version().expect("uname");
        assert!(major >= 3);
    }
}
