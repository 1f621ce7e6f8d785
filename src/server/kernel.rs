//! Whether this kernel lets this process use io_uring, asked once, and a
//! ring set up the way the `uring` model wants it.
//!
//! io_uring can be missing or refused for reasons that have nothing to do
//! with this program: a kernel built without it (`ENOSYS`), the
//! `kernel.io_uring_disabled` sysctl (Linux 6.6+: 1 limits it to a group,
//! 2 disables it), or a seccomp filter (container runtimes' default
//! profiles refuse it: `EPERM`). Each is turned into an error that says
//! which. It lives outside the model because the configuration asks it
//! ([`Model::available`](super::Model::available)) before any server
//! starts.

use std::io;
use std::sync::OnceLock;

use io_uring::{IoUring, Probe, opcode};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// The oldest kernel with everything the model uses: multishot receive
/// (6.0), provided buffer rings and multishot accept (5.19), `MSG_RING`
/// (5.18).
const OLDEST: (u32, u32) = (6, 0);

fn unavailable(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring is unavailable here: {why}"),
    )
}

/// Turns a failed `io_uring_setup(2)` into an error that says why.
/// `sysctl` is the content of `/proc/sys/kernel/io_uring_disabled`, if it
/// could be read (there is none before Linux 6.6).
fn setup_error(e: io::Error, sysctl: Option<&str>) -> io::Error {
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
/// enables it, which makes it that ring's only submitter. Tries the flags
/// that suit one thread per ring first (`SINGLE_ISSUER`, `DEFER_TASKRUN`:
/// completions are run only when the ring's own thread asks for them, in
/// batches) and falls back to a plain ring on kernels that refuse them
/// (`EINVAL`).
pub(crate) fn io_uring(sq: u32, cq: u32) -> io::Result<IoUring> {
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
    match b.build(sq) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_clamp().setup_r_disabled();
            b.build(sq).map_err(|e| setup_error(e, sysctl.as_deref()))
        }
        Err(e) => Err(setup_error(e, sysctl.as_deref())),
    }
}

/// Whether this kernel lets this process serve with io_uring: a small
/// ring is set up, the operations the model needs are probed, and the
/// kernel must be recent enough for multishot receive. Found out once per
/// process; a refusal is of kind [`io::ErrorKind::Unsupported`].
pub(crate) fn io_uring_available() -> io::Result<()> {
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
    let ring = io_uring(4, 8)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(errno: i32, sysctl: Option<&str>) -> String {
        let e = setup_error(io::Error::from_raw_os_error(errno), sysctl);
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        let m = e.to_string();
        assert!(m.starts_with("io_uring is unavailable here"), "{m}");
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
