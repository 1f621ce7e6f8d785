//! The footnote's experiment: what do idle threads cost?
//!
//! The article's thread-per-client server is often dismissed because
//! "threads are expensive". Its footnote tries it: start many threads that
//! do almost nothing and look at the process. [`run`] starts N threads that
//! each wake every 50 ms, then reads from `/proc/self` how many threads the
//! process has, how much memory it holds (resident and virtual), and how
//! much CPU the sleeping threads burn over a measuring window.
//!
//! A thread that cannot be created (too many threads, no memory for a
//! stack) ends the creation, and the report says how many were made.
//!
//! Under an address-space limit (`ulimit -v`) the creation stops short of
//! the limit instead of running into it: at the very edge a thread can be
//! created and then fail to map its signal stack, and Rust's runtime then
//! aborts the whole process. See [`AS_HEADROOM`].

use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often each idle thread wakes up.
pub const WAKE_EVERY: Duration = Duration::from_millis(50);

/// Address space left free under an address-space limit, beyond the next
/// thread's stack: a new thread maps a signal stack, and its first
/// allocation may make glibc reserve a 64 MiB malloc arena. Each thread
/// is waited for until it runs before the next check, so that nothing
/// maps behind the check's back.
pub const AS_HEADROOM: u64 = 65 << 20;

/// Rust's default thread stack, where `RUST_MIN_STACK` does not set one.
const DEFAULT_STACK: usize = 2 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Threads to start.
    pub threads: usize,
    /// How long to measure once they are all started.
    pub window: Duration,
    /// Stack size of each thread in bytes; `None` for Rust's default
    /// (2 MiB unless `RUST_MIN_STACK` says otherwise).
    pub stack: Option<usize>,
    /// Show a progress line on standard error (when it is a terminal).
    pub progress: bool,
}

/// A process's memory and thread count as `/proc/self/status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// `Threads:`: threads in the process, the main one included.
    pub threads: u64,
    /// `VmRSS:` in KiB: memory resident in RAM.
    pub rss_kib: u64,
    /// `VmSize:` in KiB: address space reserved, stacks included.
    pub virtual_kib: u64,
}

impl Status {
    /// Reads `/proc/self/status`.
    pub fn now() -> std::io::Result<Status> {
        Ok(Status::parse(&std::fs::read_to_string(
            "/proc/self/status",
        )?))
    }

    /// Picks the fields out of the text of a `status` file; missing ones
    /// stay zero.
    pub fn parse(text: &str) -> Status {
        let mut s = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let number = || {
                value
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            match key {
                "Threads" => s.threads = number(),
                "VmRSS" => s.rss_kib = number(),
                "VmSize" => s.virtual_kib = number(),
                _ => {}
            }
        }
        s
    }
}

/// CPU time the whole process has used (all its threads), from
/// `/proc/self/stat`.
pub fn cpu_time() -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    parse_cpu_time(&stat, clock_ticks()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "cannot read utime and stime in /proc/self/stat",
        )
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name in
/// field 2 may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn parse_cpu_time(stat: &str, ticks_per_sec: u64) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(
        Duration::from_secs(ticks / ticks_per_sec)
            + Duration::from_nanos((ticks % ticks_per_sec) * 1_000_000_000 / ticks_per_sec),
    )
}

/// What the experiment found.
#[derive(Clone, Debug)]
pub struct Report {
    /// Threads asked for.
    pub asked: usize,
    /// Threads created.
    pub created: usize,
    /// Why creation stopped early, if it did.
    pub spawn_error: Option<String>,
    /// How long creating them took.
    pub startup: Duration,
    /// The process before any thread was started.
    pub before: Status,
    /// The process at the end of the window, the threads still alive.
    pub during: Status,
    /// The measuring window.
    pub window: Duration,
    /// CPU the process used during the window.
    pub cpu: Duration,
}

impl Report {
    /// CPU used in the window, as a share of one core.
    pub fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }
}

/// Starts the threads, measures for `options.window`, stops and joins them.
pub fn run(options: &Options) -> std::io::Result<Report> {
    let before = Status::now()?;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = progress_bar(options);

    let started = Instant::now();
    let mut handles: Vec<JoinHandle<()>> = Vec::with_capacity(options.threads);
    let mut spawn_error = None;
    let as_limit = address_space_limit();
    let stack = options.stack.unwrap_or_else(default_stack);
    for i in 0..options.threads {
        if let Some(limit) = as_limit {
            let used = match Status::now() {
                Ok(status) => status.virtual_kib.saturating_mul(1024),
                Err(e) => {
                    // The threads made so far are still stopped and joined.
                    spawn_error = Some(format!("cannot read /proc/self/status: {e}"));
                    break;
                }
            };
            let need = used
                .saturating_add(stack as u64)
                .saturating_add(AS_HEADROOM);
            if need > limit {
                spawn_error = Some(format!(
                    "thread {} could not be created: {} of the address-space limit \
                     (ulimit -v) of {} are in use; its {} stack and {} of headroom \
                     do not fit",
                    i + 1,
                    mib(used / 1024),
                    mib(limit / 1024),
                    mib(stack as u64 / 1024),
                    mib(AS_HEADROOM / 1024),
                ));
                break;
            }
        }
        let builder = std::thread::Builder::new().stack_size(stack);
        let stop = Arc::clone(&stop);
        let (running, started) = std::sync::mpsc::sync_channel::<()>(1);
        match builder.spawn(move || {
            let _ = running.send(());
            idle(&stop)
        }) {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_error = Some(format!("thread {} could not be created: {e}", i + 1));
                break;
            }
        }
        if as_limit.is_some() {
            // Whatever the new thread maps as it starts is in the next
            // check's figure.
            let _ = started.recv();
        }
        if let Some(p) = &progress {
            p.inc(1);
        }
    }
    let startup = started.elapsed();
    let created = handles.len();
    if let Some(p) = &progress {
        p.finish_and_clear();
    }

    let cpu_start = cpu_time()?;
    let window_start = Instant::now();
    std::thread::sleep(options.window);
    let cpu_end = cpu_time()?;
    let window = window_start.elapsed();
    let during = Status::now()?;

    stop.store(true, Ordering::Relaxed);
    for h in handles.drain(..) {
        // An idle thread cannot panic; nothing to report if one did.
        let _ = h.join();
    }
    Ok(Report {
        asked: options.threads,
        created,
        spawn_error,
        startup,
        before,
        during,
        window,
        cpu: cpu_end.saturating_sub(cpu_start),
    })
}

/// The process's address-space limit in bytes (`ulimit -v`), if any.
pub fn address_space_limit() -> Option<u64> {
    match rlimit::Resource::AS.get() {
        Ok((soft, _)) if soft != rlimit::INFINITY => Some(soft),
        _ => None,
    }
}

/// The stack Rust gives a thread whose builder sets none.
pub(crate) fn default_stack() -> usize {
    std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_STACK)
}

fn idle(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(WAKE_EVERY);
    }
}

fn progress_bar(options: &Options) -> Option<indicatif::ProgressBar> {
    if !options.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(options.threads as u64);
    let style = indicatif::ProgressStyle::with_template("starting threads {pos}/{len} {bar:30}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "threads: {} of {} created in {:.2} s, each waking every {} ms; {} threads in the process",
            self.created,
            self.asked,
            self.startup.as_secs_f64(),
            WAKE_EVERY.as_millis(),
            self.during.threads
        )?;
        if let Some(e) = &self.spawn_error {
            writeln!(f, "stopped creating: {e}")?;
        }
        let per = |now: u64, then: u64| {
            if self.created == 0 {
                String::new()
            } else {
                let kib = now.saturating_sub(then) as f64 / self.created as f64;
                format!(", {kib:.1} KiB per thread")
            }
        };
        writeln!(
            f,
            "memory: {} resident (was {}{}), {} virtual (was {}{})",
            mib(self.during.rss_kib),
            mib(self.before.rss_kib),
            per(self.during.rss_kib, self.before.rss_kib),
            mib(self.during.virtual_kib),
            mib(self.before.virtual_kib),
            per(self.during.virtual_kib, self.before.virtual_kib),
        )?;
        write!(
            f,
            "cpu: {:.3} s over {:.2} s, {:.2}% of one core",
            self.cpu.as_secs_f64(),
            self.window.as_secs_f64(),
            self.cpu_share() * 100.0
        )
    }
}

/// `concur threads` once its arguments are parsed: runs and prints the
/// report. Returns the exit status: 0 if it could measure (even if not
/// every thread could be created), else 1.
pub fn command(options: &Options) -> u8 {
    eprintln!(
        "starting {} threads, each waking every {} ms, then measuring for {:.1} s",
        options.threads,
        WAKE_EVERY.as_millis(),
        options.window.as_secs_f64()
    );
    match run(options) {
        Ok(report) => {
            println!("{report}");
            0
        }
        Err(e) => {
            eprintln!("error: cannot read /proc/self: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let text = "Name:\tconcur\nVmSize:\t  812345 kB\nVmRSS:\t    4321 kB\nThreads:\t17\n";
        assert_eq!(
            Status::parse(text),
            Status {
                threads: 17,
                rss_kib: 4321,
                virtual_kib: 812_345
            }
        );
    }

    #[test]
    fn cpu_time_counts_from_the_last_parenthesis() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 1 0";
        assert_eq!(parse_cpu_time(stat, 100), Some(Duration::from_millis(3800)));
        assert_eq!(parse_cpu_time("garbage", 100), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let s = Status::now().unwrap();
        assert!(s.threads >= 1 && s.rss_kib > 0 && s.virtual_kib >= s.rss_kib);
        cpu_time().unwrap();
    }
}
