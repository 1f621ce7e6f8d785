//! Where the kernel refuses io_uring, `serve --model uring` ends at once
//! with a message that says why and names the other models. A refusal is
//! made for real: the child runs under a seccomp filter that fails
//! `io_uring_setup(2)`, as a container runtime's default profile does.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Runs `concur serve --model uring` with `io_uring_setup` failing with
/// `errno`; its exit code and standard error.
fn serve_refused(errno: i32) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_concur"));
    command
        .args(["serve", "--model", "uring", "--port", "0", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only makes two system
    // calls on data of its own, and allocates nothing.
    unsafe {
        command.pre_exec(move || refuse_io_uring(errno));
    }
    let mut child = command.spawn().expect("start concur");
    // Bounded: a server that did start would otherwise run for ever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A seccomp filter: `io_uring_setup` fails with `errno`, every other
/// call is allowed. (The number is the same on every architecture.)
fn refuse_io_uring(errno: i32) -> std::io::Result<()> {
    let filter = [
        // The system call's number, the first field of `seccomp_data`.
        bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        bpf(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_io_uring_setup as u32,
        ),
        bpf(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | errno as u32,
        ),
        bpf(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain system calls; `program` outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

#[test]
fn a_seccomp_refusal_ends_serve_with_the_reason_and_the_other_models() {
    for (errno, reason) in [(libc::EPERM, "seccomp"), (libc::ENOSYS, "ENOSYS")] {
        let (code, stderr) = serve_refused(errno);
        assert_eq!(code, Some(1), "errno {errno}: {stderr}");
        assert!(
            stderr.contains("io_uring is unavailable here"),
            "errno {errno}: {stderr}"
        );
        assert!(stderr.contains(reason), "errno {errno}: {stderr}");
        for other in ["sequential", "thread", "pool", "event", "async"] {
            assert!(stderr.contains(other), "errno {errno}, {other}: {stderr}");
        }
    }
}
