//! What a load sends and how it checks what comes back: the endless
//! pattern a stream sends, and the first wrong byte named with its offset.

use std::io::{self, ErrorKind};
use std::time::Duration;

use crate::protocol::MSG_END;

/// How long any single read or write of a load may block before the run
/// fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The message body that the `stream` scenario sends: every byte value but `$`, in
/// turn, so the whole alphabet is answered (`^` and 0xFF included) and the
/// message never ends early.
pub(crate) const PATTERN_LEN: usize = 255;

fn pattern(i: usize) -> u8 {
    let b = (i % PATTERN_LEN) as u8;
    if b >= MSG_END { b + 1 } else { b }
}

/// `pattern` laid out `len + PATTERN_LEN` long, so that any `len` bytes of
/// the endless pattern, starting anywhere, are one slice of it.
pub(crate) fn pattern_window(len: usize, map: impl Fn(u8) -> u8) -> Vec<u8> {
    (0..len + PATTERN_LEN).map(|i| map(pattern(i))).collect()
}

/// Checks `got` against `want` (as long), the bytes of `what` from
/// `offset` on: the first byte that differs is the error.
pub(crate) fn same_bytes(what: &str, offset: u64, want: &[u8], got: &[u8]) -> io::Result<()> {
    let n = got.len().min(want.len());
    // A slice comparison is one `memcmp`, many bytes a step; looking for
    // the position byte by byte made it half the load generator's CPU when
    // streaming. Only a mismatch is looked at closely.
    if got[..n] == want[..n] {
        return Ok(());
    }
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => Err(mismatch(what, offset + i as u64, want[i], got[i])),
    }
}

pub(crate) fn mismatch(what: &str, at: u64, expected: u8, got: u8) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("wrong byte in {what} at offset {at}: expected {expected:#04x}, got {got:#04x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_never_ends_a_message_and_covers_every_other_byte() {
        let seen: std::collections::HashSet<u8> = (0..PATTERN_LEN).map(pattern).collect();
        assert_eq!(seen.len(), 255);
        assert!(!seen.contains(&MSG_END));
        assert_eq!(pattern(PATTERN_LEN), pattern(0));
    }

    #[test]
    fn same_bytes_names_the_first_wrong_byte_and_its_offset() {
        let want: Vec<u8> = (0..4096).map(pattern).collect();
        assert!(same_bytes("x", 0, &want, &want[..100]).is_ok());
        let mut got = want.clone();
        got[3000] ^= 1;
        got[4000] ^= 1;
        let e = same_bytes("x", 10, &want, &got).unwrap_err().to_string();
        assert!(e.contains("at offset 3010"), "{e}");
        assert!(e.contains(&format!("expected {:#04x}", want[3000])), "{e}");
    }
}
