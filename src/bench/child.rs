//! A server under test as a process of its own (`concur serve`, or
//! `concur echo` for the reference), so that its CPU time and memory are
//! its own, apart from the load generator's.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running server process; dropping it stops it (SIGTERM, then wait).
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `exe ARGS...`, which must print `Serving on ADDR ...` as its
    /// first line, pinned to `cpus` if given.
    pub fn spawn(exe: &Path, args: &[String], cpus: Option<&[usize]>) -> io::Result<Self> {
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(cpus) = cpus {
            let cpus = cpus.to_vec();
            // SAFETY: sched_setaffinity is async-signal-safe, and the
            // closure allocates nothing (the list was copied before fork).
            unsafe {
                command.pre_exec(move || super::cpus::pin_thread(&cpus));
            }
        }
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", exe.display()))
        })?;
        let banner = first_line(child.stdout.as_mut().expect("piped stdout"));
        let addr = banner
            .as_deref()
            .and_then(|b| b.strip_prefix("Serving on "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        // Built before the check, so that a child that said something else
        // is stopped on the way out.
        let server = ServerProcess {
            child,
            addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        };
        match addr {
            Some(_) => Ok(server),
            None => Err(io::Error::other(format!(
                "{} {} did not print 'Serving on ADDR' first (got {banner:?})",
                exe.display(),
                args.join(" ")
            ))),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which has not been
        // waited for yet, so it cannot have been reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn first_line(out: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte: a buffered reader would swallow what comes after, and
    // the rest of stdout is the child's business.
    while out.read(&mut b).ok()? == 1 && b[0] != b'\n' {
        line.push(b[0]);
        if line.len() > 1000 {
            return None;
        }
    }
    String::from_utf8(line).ok()
}
