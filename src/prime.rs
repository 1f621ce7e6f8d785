//! The primality protocol: CPU-bound work per request.
//!
//! The article warns that "a non-trivial amount of CPU-bound computation"
//! per client lets a few dozen clients swamp a thread-per-client server;
//! the series later makes that concrete with a server that tests numbers
//! for primality. `concur serve --protocol prime` is that server:
//!
//! - each request is a line (`\n`, an optional `\r` before it) holding a
//!   decimal `u64`, with optional spaces around it;
//! - the answer is the line `prime` or `composite`, or `neither` for 0
//!   and 1, which are neither prime nor composite;
//! - a line that is not such a number gets `error: <what was wrong>` and
//!   the connection goes on;
//! - a line over [`MAX_LINE`] bytes gets an error line and ends the
//!   connection: a server must bound what it buffers for one request.
//!
//! There is no greeting: `echo 97 | nc localhost 9090` answers `prime`.
//!
//! [`is_prime`] is deliberately plain trial division, so its cost grows
//! with the square root of the number: 2^61-1 takes seconds, which is the
//! point.
//!
//! ```
//! use concur::prime::{Lines, Request, is_prime};
//!
//! assert!(is_prime(97) && !is_prime(91));
//! let mut lines = Lines::new();
//! let mut input: &[u8] = b"97\r\nnine\n12";
//! assert_eq!(lines.next_request(&mut input), Some(Request::Number(97)));
//! assert!(matches!(lines.next_request(&mut input), Some(Request::Invalid(_))));
//! assert_eq!(lines.next_request(&mut input), None); // `12` waits for its newline
//! ```

use memchr::memchr;

/// The longest request line, newline excluded.
pub const MAX_LINE: usize = 64;

/// Numbers up to this are answered at once even by the event-driven
/// models: their trial division takes microseconds (at most 2^15
/// divisions), less than handing them to another thread would.
pub const INLINE_LIMIT: u64 = 1 << 32;

/// Whether `n` is prime, by trial division by 2 and the odd numbers up to
/// its square root.
pub fn is_prime(n: u64) -> bool {
    is_prime_unless(n, || false).unwrap_or(false)
}

/// [`is_prime`], giving up (`None`) once `give_up` says so; it is asked
/// every 65,536 divisions, a fraction of a millisecond apart. A server
/// that must close its clients cannot wait seconds for a number.
pub fn is_prime_unless(n: u64, give_up: impl Fn() -> bool) -> Option<bool> {
    if n < 2 {
        return Some(false);
    }
    if n % 2 == 0 {
        return Some(n == 2);
    }
    let mut d = 3u64;
    let mut until_check = 1u32 << 16;
    // `d <= n / d` rather than `d * d <= n`: the square of a divisor near
    // 2^32 overflows a u64, the quotient never does.
    while d <= n / d {
        if n % d == 0 {
            return Some(false);
        }
        d += 2;
        until_check -= 1;
        if until_check == 0 {
            if give_up() {
                return None;
            }
            until_check = 1 << 16;
        }
    }
    Some(true)
}

/// One request line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Test this number.
    Number(u64),
    /// Not a number: answer with this error and go on.
    Invalid(String),
    /// Over [`MAX_LINE`]: answer with an error and close.
    TooLong,
}

impl Request {
    fn parse(line: &[u8]) -> Request {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            return Request::TooLong;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Request::Invalid("not text".into());
        };
        let text = text.trim();
        if text.is_empty() {
            return Request::Invalid("empty line; send a number".into());
        }
        match text.parse::<u64>() {
            Ok(n) => Request::Number(n),
            Err(e) => Request::Invalid(match e.kind() {
                std::num::IntErrorKind::PosOverflow => {
                    format!("{text:?} is larger than {}", u64::MAX)
                }
                _ => format!("{text:?} is not a whole number from 0 to {}", u64::MAX),
            }),
        }
    }
}

/// Splits a byte stream into request lines, across reads.
#[derive(Clone, Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// A splitter with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next complete line from `input` (advancing it past the
    /// line), or keeps what is left of `input` as the start of a line and
    /// returns `None`. Never buffers more than [`MAX_LINE`] bytes.
    pub fn next_request(&mut self, input: &mut &[u8]) -> Option<Request> {
        // One byte over the limit is a `\r` before the `\n`.
        let over = |len: usize| len > MAX_LINE + 1;
        match memchr(b'\n', input) {
            Some(end) => {
                let line = &input[..end];
                *input = &input[end + 1..];
                let request = if over(self.partial.len() + line.len()) {
                    Request::TooLong
                } else if self.partial.is_empty() {
                    Request::parse(line)
                } else {
                    self.partial.extend_from_slice(line);
                    Request::parse(&self.partial)
                };
                self.partial.clear();
                Some(request)
            }
            None => {
                let rest = std::mem::take(input);
                if over(self.partial.len() + rest.len()) {
                    self.partial.clear();
                    return Some(Request::TooLong);
                }
                self.partial.extend_from_slice(rest);
                None
            }
        }
    }
}

/// Appends the answer line for `n`, tested `prime` or not: `prime`,
/// `composite`, or `neither` for 0 and 1. Those two have no prime factor
/// at all, so calling them composite (a product of primes) would be wrong.
pub fn answer_number(n: u64, prime: bool, out: &mut Vec<u8>) {
    if n < 2 {
        out.extend_from_slice(b"neither\n");
    } else {
        answer(prime, out);
    }
}

/// Appends `prime` or `composite`, for a number of 2 or more; see
/// [`answer_number`] for any number.
pub fn answer(prime: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(if prime { b"prime\n" } else { b"composite\n" });
}

/// Appends the answer line for a request that is not a number.
pub fn answer_error(what: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"error: ");
    out.extend_from_slice(what.as_bytes());
    out.push(b'\n');
}

/// The error line sent before closing a client whose line is too long.
pub fn answer_too_long(out: &mut Vec<u8>) {
    answer_error(&format!("line longer than {MAX_LINE} bytes; closing"), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_numbers() {
        let primes: Vec<u64> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            primes,
            [
                2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59
            ]
        );
    }

    #[test]
    fn a_long_test_gives_up_when_told() {
        // 10^18+3 is prime and needs 5·10^8 divisions; told to give up at
        // the first check, it stops after 65,536.
        assert_eq!(is_prime_unless(1_000_000_000_000_000_003, || true), None);
        assert_eq!(is_prime_unless(97, || true), Some(true));
    }

    #[test]
    fn known_primes_and_composites() {
        for p in [4_294_967_311u64, 1_000_000_000_039, 2_147_483_647] {
            assert!(is_prime(p), "{p}");
        }
        // u64::MAX = 3 × 5 × 17 × 257 × 641 × 65537 × 6700417.
        for c in [u64::MAX, u64::MAX - 1, 4_294_967_297, 1_000_000_000_037 * 3] {
            assert!(!is_prime(c), "{c}");
        }
    }

    /// Seconds of trial division each: run with `cargo test --release --
    /// --ignored`.
    #[test]
    #[ignore = "slow: seconds of trial division; run in release with --ignored"]
    fn large_primes_and_a_square_near_the_top() {
        assert!(is_prime(2_305_843_009_213_693_951)); // 2^61 - 1
        assert!(is_prime(18_446_744_073_709_551_557)); // the largest u64 prime
        // The square of the largest prime under 2^32: the divisor loop runs
        // to the very edge of the u64 range without overflowing.
        assert!(!is_prime(4_294_967_291 * 4_294_967_291));
    }

    fn all(input: &[&[u8]]) -> Vec<Request> {
        let mut lines = Lines::new();
        let mut got = Vec::new();
        for chunk in input {
            let mut rest = *chunk;
            while let Some(r) = lines.next_request(&mut rest) {
                got.push(r);
            }
        }
        got
    }

    #[test]
    fn lines_split_across_reads() {
        assert_eq!(
            all(&[b"1", b"7\n2", b"3\r", b"\n  5 \n"]),
            [17, 23, 5].map(Request::Number)
        );
    }

    #[test]
    fn malformed_lines_are_errors_not_ends() {
        let got = all(&[b"\n-1\nx7\n18446744073709551616\n\xff\n7\n"]);
        assert_eq!(got.len(), 6);
        for (r, what) in got[..5].iter().zip([
            "empty",
            "not a whole",
            "not a whole",
            "larger than",
            "not text",
        ]) {
            match r {
                Request::Invalid(e) => assert!(e.contains(what), "{e}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got[5], Request::Number(7));
    }

    #[test]
    fn a_line_over_the_limit_is_too_long_however_it_arrives() {
        let long = vec![b'1'; MAX_LINE + 1];
        assert_eq!(all(&[&long, b"\n"]), [Request::TooLong]);
        let mut with_newline = long.clone();
        with_newline.push(b'\n');
        assert_eq!(all(&[&with_newline]), [Request::TooLong]);
        // Without a newline it is refused as soon as it is over.
        assert_eq!(all(&[&long[..40], &long[40..], &long]), [Request::TooLong]);
        // Exactly at the limit, with a `\r`, is fine.
        let mut edge = vec![b'0'; MAX_LINE];
        edge.extend_from_slice(b"\r\n");
        assert_eq!(all(&[&edge]), [Request::Number(0)]);
    }

    #[test]
    fn answers() {
        let mut out = Vec::new();
        answer_number(97, true, &mut out);
        answer_number(91, false, &mut out);
        answer_number(0, false, &mut out);
        answer_number(1, false, &mut out);
        answer_error("bad", &mut out);
        answer_too_long(&mut out);
        assert_eq!(
            out,
            b"prime\ncomposite\nneither\nneither\nerror: bad\nerror: line longer than 64 bytes; closing\n"
        );
    }
}
