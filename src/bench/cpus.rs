//! Which CPUs the server and the load generator may run on
//! (`--server-cpus`, `--client-cpus`), and who used how much of them.

use std::io;

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,2`, `1-3`, `0,2-3`.
/// Every CPU must exist on this machine.
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let online = crate::server::cores();
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let parse = |x: &str| {
            x.trim().parse::<usize>().map_err(|_| {
                format!("{s:?} is not a CPU list: give CPU numbers like 0, 0,1 or 0-1")
            })
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo > hi {
            return Err(format!("{part:?} is an empty range: give LOW-HIGH"));
        }
        if hi >= online {
            return Err(format!(
                "CPU {hi} does not exist: this machine has CPUs 0 to {}",
                online - 1
            ));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes one bit of the set; `cpu` was checked to
        // be below the machine's count, far below the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pins the calling thread (and the threads and processes it starts
/// afterwards) to `cpus`.
///
/// Async-signal-safe, so that it can run between `fork` and `exec`.
pub fn pin_thread(cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of
    // the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The machine's busy and total CPU ticks (from `/proc/stat`); `None` off
/// Linux.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user, nice, system, irq, softirq: loopback traffic is processed in
    // softirqs, on behalf of whoever sent it, so they count as busy too.
    let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| all.get(i)).sum();
    Some((busy, all.iter().sum()))
}

/// CPU ticks (user + system) of process `pid`, its exited threads
/// included; `None` once it is gone.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let (user, system) = user_system_ticks(pid)?;
    Some(user + system)
}

/// CPU ticks of process `pid` in user mode and in the kernel, apart.
pub fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// The process listening on TCP `port` of this machine, found through its
/// socket's inode (`/proc/net/tcp*`, then `/proc/*/fd`), so that the CPU
/// time of a server started elsewhere (`--addr`) can be read too; `None`
/// when it cannot be told (no permission, several listeners).
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&state), Some(&inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening = state == "0A";
            let same_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && same_port && inode != "0" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut found = None;
    for pid in numbered("/proc").ok()? {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        });
        if holds {
            if found.is_some_and(|f| f != pid) {
                // Shared by several processes (a fork, SO_REUSEPORT): whose
                // CPU to count cannot be told.
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

/// The entries of `dir` named by a number: the processes in `/proc`, the
/// threads in `/proc/PID/task`.
pub(crate) fn numbered(dir: &str) -> io::Result<impl Iterator<Item = u32> + use<>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_as_taskset_takes_them() {
        assert_eq!(parse_list("0"), Ok(vec![0]));
        if crate::server::cores() >= 2 {
            assert_eq!(parse_list("1,0"), Ok(vec![0, 1]));
            assert_eq!(parse_list("0-1"), Ok(vec![0, 1]));
        }
        for bad in ["", "a", "1-0", "0-x", "99999"] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
        assert!(parse_list("99999").unwrap_err().contains("does not exist"));
    }

    #[test]
    fn the_process_behind_a_listening_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        drop(listener);
        assert_eq!(listener_pid(port), None);
    }
}
