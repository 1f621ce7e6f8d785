//! The command line: bad input gets a clear error that says what is
//! allowed, and nothing starts.

use std::process::{Command, Output};

fn concur(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_concur"))
        .args(args)
        .output()
        .expect("run concur")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_unknown_model_lists_the_models() {
    let o = concur(&["serve", "--model", "fibers"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for name in ["sequential", "thread", "pool", "event", "async", "uring"] {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn out_of_range_numbers_are_refused() {
    for args in [
        &["serve", "-n", "0"][..],
        &["serve", "--port", "70000"],
        &["serve", "--backlog", "0"],
        &["serve", "--drain-timeout", "soon"],
        &["serve", "--drain-timeout", "-1"],
        &["serve", "--drain-timeout", "1e19"],
        &["serve", "--idle-timeout", "1e300"],
    ] {
        let o = concur(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("error:"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn durations_take_plain_seconds_or_a_unit() {
    for (value, ok) in [("0.5", true), ("500ms", true), ("2m", true), ("5x", false)] {
        let o = concur(&["bench", "pingpong", "--secs", value, "--repeat", "0"]);
        // --repeat 0 is refused after the durations are parsed, so a good
        // duration gets that error and a bad one its own.
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{value}: {err}");
        if ok {
            assert!(err.contains("--repeat"), "{value}: {err}");
        } else {
            assert!(
                err.contains("nor a duration (such as 10s, 500ms or 2m)"),
                "{err}"
            );
        }
    }
    // With a unit, still at most a year.
    let o = concur(&["serve", "--idle-timeout", "2y"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("out of range"), "{}", stderr(&o));
}

#[test]
fn bad_values_say_what_is_allowed() {
    for (args, wanted) in [
        // Its slots are allocated up front: this used to abort the server.
        (&["serve", "--queue", "99999999999"][..], "give 0 to 100000"),
        (&["serve", "--idle-timeout", "-1"], "give 0 or more"),
        (
            &["serve", "--idle-timeout", "0"],
            "more than 0, up to 31536000",
        ),
        (&["serve", "--write-timeout", "-1"], "or `off`"),
        (&["serve", "--write-timeout", "0"], "more than 0"),
        (
            &["serve", "--keep-alive", "0", "--model", "pool"],
            "more than 0",
        ),
        (&["serve", "--stats-interval", "0"], "more than 0"),
        (&["serve", "--drain-timeout", "-1"], "give 0 or more"),
        (
            &["serve", "--drain-timeout", "1e9"],
            "give 0, up to 31536000",
        ),
        (
            &["serve", "-n", "0"],
            "--threads 0 is out of range: give 1 to 100000",
        ),
        (
            &["serve", "--model", "event", "--loops", "2000"],
            "give 1 to 1024",
        ),
        (
            &["serve", "--model", "uring", "--outbound-cap", "0"],
            "--outbound-cap 0 is out of range: give 1 to 1073741824 bytes",
        ),
        (
            &["serve", "--model", "thread", "--stack-kib", "4"],
            "give 16 to",
        ),
        (
            &["serve", "-n", "8", "--max-threads", "4"],
            "below the pool's 8 threads",
        ),
        // A flag is not taken for a missing value.
        (
            &["serve", "--idle-timeout", "--quiet"],
            "a value is required",
        ),
    ] {
        let o = concur(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(wanted), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_setting_out_of_range_is_clap_s_error_with_the_usage_line() {
    let o = concur(&["serve", "--model", "async", "--workers", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: --workers 0 is out of range"),
        "{err}"
    );
    assert!(err.contains("Usage: concur serve"), "{err}");
}

#[test]
fn pool_flags_with_another_model_are_refused() {
    for (args, wanted) in [
        (
            &["serve", "--model", "thread", "-n", "4"][..],
            "--model pool",
        ),
        (
            &["serve", "--model", "pool", "--loops", "2"],
            "--model event",
        ),
        (
            &["serve", "--model", "event", "--workers", "2"],
            "--model async",
        ),
        (
            &["serve", "--model", "async", "--stack-kib", "64"],
            "--model thread or --model pool",
        ),
        (
            &["serve", "--model", "thread", "--keep-alive", "3"],
            "--model pool",
        ),
        (
            &["serve", "--model", "pool", "--outbound-cap", "65536"],
            "it is for --model event or --model uring",
        ),
        (
            &["serve", "--model", "event", "--rings", "2"],
            "--rings does not apply to --model event; it is for --model uring",
        ),
    ] {
        let o = concur(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(wanted), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn the_port_is_given_once() {
    let o = concur(&["serve", "--port", "1", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn a_port_in_use_is_a_clear_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = concur(&["serve", &port]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "no banner for a server that never started"
    );
}

#[test]
fn help_explains_the_models_and_flags() {
    let o = concur(&["serve", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "--model",
        "sequential",
        "--threads",
        "--queue",
        "--drain-timeout",
        "[PORT]",
    ] {
        assert!(help.contains(needle), "missing {needle}: {help}");
    }
}

/// A name is listened on at the first of its addresses that binds, and
/// `--help` says so rather than letting `localhost` promise ::1 as well.
#[test]
fn a_host_name_is_listened_on_at_its_first_address() {
    use std::io::{BufRead, BufReader};
    use std::net::ToSocketAddrs;

    let help = String::from_utf8_lossy(&concur(&["serve", "--help"]).stdout).into_owned();
    // Wherever the help's lines are wrapped.
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("only the first of its addresses"), "{help}");

    let first = ("localhost", 0)
        .to_socket_addrs()
        .unwrap()
        .next()
        .expect("localhost resolves");
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur"))
        .args([
            "serve",
            "--host",
            "localhost",
            "--port",
            "0",
            "--model",
            "thread",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run concur");
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
    let addr: std::net::SocketAddr = banner.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(addr.ip(), first.ip(), "{banner}");
}

/// Makes the process that runs next refuse `io_uring_setup` with EPERM,
/// as a container runtime's default seccomp profile does. Called between
/// fork and exec: it allocates nothing.
fn refuse_io_uring() -> std::io::Result<()> {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
    };
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut filter = [
        // The system call's number is the first word of seccomp_data.
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    ];
    let program = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: a valid filter program that lives through both calls; only
    // the calling (child) process is affected.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn concur_without_io_uring(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_concur"));
    command.args(args);
    // SAFETY: `refuse_io_uring` makes two system calls and allocates
    // nothing, as code between fork and exec must.
    unsafe { command.pre_exec(refuse_io_uring) };
    command.output().expect("run concur")
}

#[test]
fn where_the_kernel_refuses_io_uring_serve_says_why_and_exits_1() {
    let o = concur_without_io_uring(&["serve", "--model", "uring", "--port", "0"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("io_uring is unavailable here"), "{err}");
    assert!(err.contains("EPERM") && err.contains("seccomp"), "{err}");
    assert!(
        err.contains("--model sequential, thread, pool, event, async"),
        "names the other models: {err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("Serving on"), "no banner: {out}");

    // A flag out of range is still refused first, as a usage error.
    let o = concur_without_io_uring(&["serve", "--model", "uring", "--rings", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--rings 0 is out of range"),
        "{}",
        stderr(&o)
    );
    let o = concur_without_io_uring(&[
        "bench", "pingpong", "--models", "uring", "--secs", "0.1", "--repeat", "1",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--models uring: io_uring is unavailable here"),
        "{err}"
    );
}
