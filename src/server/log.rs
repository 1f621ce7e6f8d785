//! What every model logs the same way: the target of the per-client
//! lines, and a limit on how often one kind of warning goes out.

use std::time::{Duration, Instant};

/// Per-client log lines use this target, so that `--quiet` can silence
/// them alone.
pub(crate) const LOG_TARGET: &str = "concur::conn";

/// Lets a message through at most once per period, and says how many were
/// held back in between.
pub(crate) struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    /// At most one message a second: what every rate-limited warning of a
    /// server uses.
    pub(crate) fn per_second() -> Self {
        RateLimited::new(Duration::from_secs(1))
    }

    pub(crate) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(held back since the last one)` if a message may go out now.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut log = RateLimited::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
