//! The protocol core: a pure state machine, no I/O.
//!
//! The rules live in `PROTOCOL.md`; in short, a client's bytes are one stream
//! with two states. While *waiting*, everything up to the next `^` is ignored.
//! While *in message*, every byte up to the next `$` is answered with itself
//! plus one (mod 256), and `$` itself switches back to waiting.
//!
//! [`Processor::feed`] takes a whole buffer, finds the next `^` or `$` with
//! [`memchr`](memchr::memchr()) and maps whole spans with one tight loop that the compiler
//! vectorises, writing each answered byte once, so the core runs at memory
//! speed rather than branching on every byte. The state carries over from one call to the next, so the
//! output never depends on how the stream was split into reads.
//!
//! ```
//! use concur::protocol::Processor;
//!
//! let mut p = Processor::new();
//! let mut out = Vec::new();
//! p.feed(b"xx^ab", &mut out); // the message goes on past this read...
//! p.feed(b"c$de^^", &mut out); // ...and ends here; a second `^` is data
//! assert_eq!(out, b"bcd_");
//! ```

use memchr::memchr;

/// The byte a server sends right after it accepts a connection, before
/// anything else: the sign that the client is now being served.
pub const ACK: u8 = b'*';

/// Switches from [`State::Waiting`] to [`State::InMessage`].
pub const MSG_START: u8 = b'^';

/// Switches from [`State::InMessage`] back to [`State::Waiting`].
pub const MSG_END: u8 = b'$';

/// Where a client's stream is between two reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum State {
    /// Outside a message: bytes are ignored until `^`.
    #[default]
    Waiting,
    /// Inside a message: bytes are answered until `$`.
    InMessage,
}

/// One client's protocol state. Cheap to create; one per connection.
#[derive(Clone, Debug, Default)]
pub struct Processor {
    state: State,
}

impl Processor {
    /// A processor in the initial state, [`State::Waiting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The state the next byte will be read in.
    pub fn state(&self) -> State {
        self.state
    }

    /// Consumes `input` and appends its answer to `out`.
    ///
    /// Appends exactly as many bytes as `input` holds answered bytes, so
    /// `out` never grows by more than `input.len()`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            match self.state {
                State::Waiting => match memchr(MSG_START, rest) {
                    Some(i) => {
                        self.state = State::InMessage;
                        rest = &rest[i + 1..];
                    }
                    None => return,
                },
                State::InMessage => {
                    let end = memchr(MSG_END, rest);
                    let span = &rest[..end.unwrap_or(rest.len())];
                    answer_span(span, out);
                    match end {
                        Some(i) => {
                            self.state = State::Waiting;
                            rest = &rest[i + 1..];
                        }
                        None => return,
                    }
                }
            }
        }
    }
}

/// Appends `span` with every byte incremented, in one pass: each answered
/// byte is written once, straight from the input. Copying the span first
/// and adding in place would also vectorise, but it leans on the C
/// library's `memmove`, whose speed on buffers this size varies about
/// tenfold between CPUs (glibc's `rep movsb` path is slow on some AMD
/// parts); a single mapped pass runs at the same speed everywhere.
fn answer_span(span: &[u8], out: &mut Vec<u8>) {
    out.extend(span.iter().map(|b| b.wrapping_add(1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_carries_over_reads() {
        let mut p = Processor::new();
        let mut out = Vec::new();
        p.feed(b"ab^", &mut out);
        assert_eq!(p.state(), State::InMessage);
        p.feed(b"x$", &mut out);
        assert_eq!(p.state(), State::Waiting);
        assert_eq!(out, b"y");
    }

    #[test]
    fn empty_input_changes_nothing() {
        let mut p = Processor::new();
        let mut out = vec![7];
        p.feed(b"", &mut out);
        assert_eq!(out, [7]);
        assert_eq!(p.state(), State::Waiting);
    }
}
