//! What a server says to a client, for either protocol, with no I/O: the
//! one piece every model drives.
//!
//! The byte protocol (`PROTOCOL.md`) is answered entirely at once. The
//! primality protocol may need seconds of CPU for one request: the thread
//! models simply compute on the client's thread, but an event loop must
//! not, so [`Responder::respond`] can stop at such a request and hand it
//! back as [`Stop::Offload`]; the caller computes it elsewhere, appends
//! the answer with [`Responder::answered`] and goes on with the rest of the
//! input.

use crate::prime::{self, Lines, Request};
use crate::protocol::{ACK, Processor};

/// The protocol a server speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// `PROTOCOL.md`: `*`, then `^`...`$` messages answered byte + 1.
    #[default]
    Bytes,
    /// One decimal number per line, answered `prime` or `composite`.
    Prime,
}

/// Why [`Responder::respond`] stopped before the end of its input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// All input consumed.
    Consumed,
    /// This number needs testing off the caller's thread; call
    /// [`Responder::answered`] with the result before responding further.
    Offload(u64),
    /// Answer sent; the client must be closed, for this reason.
    Close(String),
    /// The answers so far reached [`OUT_LIMIT`]: write them, then respond
    /// to the rest of the input.
    Full,
}

/// The most answer bytes one call appends. The byte protocol never
/// answers more than it reads, but an empty line costs one input byte and
/// a 33-byte error line: without a limit, one 64 KiB read could make 2 MiB
/// of answers for a client that does not read them.
pub(crate) const OUT_LIMIT: usize = 64 * 1024;

/// More than the longest answer line: an error line quotes the request,
/// up to [`prime::MAX_LINE`] characters, each escaped to at most ten.
pub(crate) const MAX_ANSWER: usize = 1024;

/// One client's protocol state.
pub(crate) enum Responder {
    Bytes(Processor),
    Prime(Lines),
}

impl Responder {
    pub(crate) fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Bytes => Responder::Bytes(Processor::new()),
            Protocol::Prime => Responder::Prime(Lines::new()),
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        match self {
            Responder::Bytes(_) => Protocol::Bytes,
            Responder::Prime(_) => Protocol::Prime,
        }
    }

    /// What the server sends first: `*` for the byte protocol, nothing for
    /// the line protocol.
    pub(crate) fn greeting(protocol: Protocol) -> &'static [u8] {
        match protocol {
            Protocol::Bytes => &[ACK],
            Protocol::Prime => b"",
        }
    }

    /// The most bytes [`Responder::respond`] can append to `out`, which
    /// holds `out_len` bytes, for `input_len` bytes of input: reserve them
    /// first (fallibly), and answering allocates nothing. The byte protocol
    /// answers at most a byte per byte; the line protocol stops once `out`
    /// reaches [`OUT_LIMIT`], so its last line starts below it.
    pub(crate) fn max_growth(&self, out_len: usize, input_len: usize) -> usize {
        match self {
            Responder::Bytes(_) => input_len,
            Responder::Prime(_) => (OUT_LIMIT + MAX_ANSWER)
                .saturating_sub(out_len)
                .min(input_len.saturating_mul(MAX_ANSWER)),
        }
    }

    /// Answers `input` into `out`, and says how much of it was consumed
    /// and why it stopped. With `offload` false every number is tested
    /// here, so it stops only to close.
    pub(crate) fn respond(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        offload: bool,
    ) -> (usize, Stop) {
        match self {
            Responder::Bytes(p) => {
                p.feed(input, out);
                (input.len(), Stop::Consumed)
            }
            Responder::Prime(lines) => {
                let mut rest = input;
                loop {
                    if out.len() >= OUT_LIMIT && !rest.is_empty() {
                        return (input.len() - rest.len(), Stop::Full);
                    }
                    let Some(request) = lines.next_request(&mut rest) else {
                        return (input.len(), Stop::Consumed);
                    };
                    let consumed = input.len() - rest.len();
                    match request {
                        Request::Number(n) if offload && n > prime::INLINE_LIMIT => {
                            return (consumed, Stop::Offload(n));
                        }
                        Request::Number(n) => prime::answer_number(n, prime::is_prime(n), out),
                        Request::Invalid(what) => prime::answer_error(&what, out),
                        Request::TooLong => {
                            prime::answer_too_long(out);
                            return (
                                consumed,
                                Stop::Close(format!(
                                    "sent a line longer than {} bytes",
                                    prime::MAX_LINE
                                )),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Appends the answer to a number handed back as [`Stop::Offload`].
    pub(crate) fn answered(&mut self, n: u64, prime: bool, out: &mut Vec<u8>) {
        prime::answer_number(n, prime, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_numbers_are_handed_back_in_order() {
        let mut r = Responder::new(Protocol::Prime);
        let mut out = Vec::new();
        let input = b"7\n1000000000039\n8\n";
        let (used, stop) = r.respond(input, &mut out, true);
        assert_eq!(stop, Stop::Offload(1_000_000_000_039));
        assert_eq!(out, b"prime\n");
        r.answered(1_000_000_000_039, true, &mut out);
        let (rest, stop) = r.respond(&input[used..], &mut out, true);
        assert_eq!((rest, stop), (input.len() - used, Stop::Consumed));
        assert_eq!(out, b"prime\nprime\ncomposite\n");

        // Without offloading, the same input is answered in one go.
        let mut out = Vec::new();
        let mut r = Responder::new(Protocol::Prime);
        assert_eq!(
            r.respond(input, &mut out, false),
            (input.len(), Stop::Consumed)
        );
        assert_eq!(out, b"prime\nprime\ncomposite\n");
    }

    #[test]
    fn answers_stop_at_the_limit_and_go_on_from_there() {
        let mut r = Responder::new(Protocol::Prime);
        let input = vec![b'\n'; 10_000];
        let (mut at, mut out, mut calls) = (0, Vec::new(), 0);
        loop {
            let (used, stop) = r.respond(&input[at..], &mut out, false);
            calls += 1;
            at += used;
            assert!(
                out.len() < OUT_LIMIT + 64,
                "one call made {} bytes",
                out.len()
            );
            // What a server writes between calls.
            let lines = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
            out.clear();
            assert!(lines > 0);
            if stop == Stop::Consumed {
                break;
            }
            assert_eq!(stop, Stop::Full);
        }
        assert_eq!(at, input.len());
        assert!(calls > 1, "10,000 error lines need several calls");
    }

    #[test]
    fn answers_never_grow_past_what_max_growth_promises() {
        // The longest error lines: 64 bytes that each escape to six
        // characters, and 4-byte characters that escape to nine.
        let mut input = [b'\x1f'; 64].to_vec();
        input.push(b'\n');
        input.extend("\u{e0001}".repeat(16).bytes());
        input.push(b'\n');
        input.extend(b"\n7\n0\n".repeat(5000));
        for protocol in [Protocol::Bytes, Protocol::Prime] {
            let mut r = Responder::new(protocol);
            let mut out = Vec::new();
            for chunk in input.chunks(3001) {
                let mut rest = chunk;
                loop {
                    let promised = r.max_growth(out.len(), rest.len());
                    let before = out.len();
                    let (used, stop) = r.respond(rest, &mut out, false);
                    assert!(out.len() - before <= promised, "{protocol:?}");
                    rest = &rest[used..];
                    if stop == Stop::Consumed {
                        break;
                    }
                    out.clear();
                }
                if protocol == Protocol::Prime {
                    let longest = out.split(|&b| b == b'\n').map(<[u8]>::len).max();
                    assert!(longest.unwrap_or(0) < MAX_ANSWER);
                }
                out.clear();
            }
        }
    }

    #[test]
    fn a_long_line_stops_with_its_answer() {
        let mut r = Responder::new(Protocol::Prime);
        let mut out = Vec::new();
        let mut input = b"5\n".to_vec();
        input.extend([b'9'; 100]);
        let (_, stop) = r.respond(&input, &mut out, false);
        assert!(matches!(stop, Stop::Close(_)));
        assert!(out.starts_with(b"prime\nerror: line longer"), "{out:?}");
    }
}
