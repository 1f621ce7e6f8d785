//! Running under systemd: the listening socket it passes (socket
//! activation, the `sd_listen_fds` protocol: `LISTEN_FDS` and
//! `LISTEN_PID`), and telling it how the server is (`sd_notify`:
//! `READY=1` once it takes clients, `STOPPING=1` when the drain starts).
//!
//! Both are no-ops when the process was started any other way, so
//! `serve` calls them unconditionally. `deploy/systemd/` has the units.

use std::io;
use std::net::TcpListener;

use sd_notify::NotifyState;

/// The listening socket systemd passed this process, or `None` if it passed
/// none (`LISTEN_FDS` unset, or meant for another process by
/// `LISTEN_PID`). Any model serves it as it would a socket it bound.
///
/// Call it before any thread starts: it removes `LISTEN_FDS` and
/// `LISTEN_PID` from the environment, which is safe only then.
///
/// The error says what is wrong with what was passed: more than the one
/// socket `serve` takes, or one that is not a listening TCP socket (a
/// datagram or Unix socket, or a connection passed by `Accept=yes`).
pub fn listener() -> io::Result<Option<TcpListener>> {
    let mut passed = listenfd::ListenFd::from_env();
    let wrong = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}; concur.socket needs one ListenStream= with Accept=no"),
        )
    };
    match passed.len() {
        0 => return Ok(None),
        1 => {}
        n => {
            return Err(wrong(format!(
                "systemd passed {n} sockets and serve takes one, the protocol's"
            )));
        }
    }
    let listener = passed
        .take_tcp_listener(0)
        .map_err(|e| {
            wrong(format!(
                "the socket systemd passed is not a TCP socket ({e})"
            ))
        })?
        .ok_or_else(|| wrong("the socket systemd passed was taken already".into()))?;
    if !socket2::SockRef::from(&listener).is_listener()? {
        return Err(wrong(
            "the socket systemd passed is a connection, not a listening socket".into(),
        ));
    }
    Ok(Some(listener))
}

/// Tells systemd that the server takes clients, with `status` for
/// `systemctl status` (the banner).
pub fn ready(status: &str) {
    // Outside systemd there is no one to tell, and within it a failure
    // shows as the unit's start timing out: nothing to do here either way.
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd that the server is draining and will exit.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}
