//! The protocol core writes each answered byte once: it does not copy a
//! span into the output and then change it in place.
//!
//! Why it matters: the copy goes through the C library's `memcpy`, whose
//! speed on 64 KiB buffers varies about tenfold between CPUs, so a core
//! built that way is fast on one machine and slow on the next. The check
//! is not a timing: this test binary defines `memcpy` and `memmove`
//! itself (an executable's definitions take precedence over the C
//! library's), counts the bytes they copy while `feed` runs, and asserts
//! that a 64 KiB message is answered without copying it. A control run of
//! a copy-then-add core shows that the counting sees such a copy.
//!
//! One test in this file: every copy in the process is counted while the
//! flag is up, so no other test may run beside it.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use concur::protocol::{MSG_START, Processor};

static COUNTING: AtomicBool = AtomicBool::new(false);
static COPIED: AtomicUsize = AtomicUsize::new(0);

/// Byte by byte through volatile pointers, so that the compiler cannot
/// turn the loop back into a call to `memcpy` (which would be this one).
/// Slow, and only this test binary uses it.
unsafe fn copy_bytes(dst: *mut u8, src: *const u8, n: usize) {
    if (dst as usize) <= (src as usize) {
        for i in 0..n {
            // SAFETY: the caller's contract of memcpy/memmove: both ranges
            // are valid for `n` bytes.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above; backwards, so overlapping moves are right.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        }
    }
}

fn count(n: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        COPIED.fetch_add(n, Ordering::Relaxed);
    }
}

/// # Safety
/// The C library's contract: both ranges valid for `n` bytes, not
/// overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    count(n);
    // SAFETY: forwarded from the caller.
    unsafe { copy_bytes(dst.cast(), src.cast(), n) };
    dst
}

/// # Safety
/// The C library's contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    count(n);
    // SAFETY: forwarded from the caller.
    unsafe { copy_bytes(dst.cast(), src.cast(), n) };
    dst
}

/// Bytes copied by `memcpy`/`memmove` while `f` ran.
fn copied_by(f: impl FnOnce()) -> usize {
    COPIED.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    COPIED.load(Ordering::SeqCst)
}

/// The way the core must not work: copy the span, then add in place.
fn copy_then_add(span: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(span);
    for b in &mut out[start..] {
        *b = b.wrapping_add(1);
    }
}

#[test]
fn a_message_is_answered_without_copying_it_first() {
    const LEN: usize = 64 * 1024;
    let mut input = vec![MSG_START];
    input.extend((0..LEN).map(|i| b'a' + (i % 26) as u8));
    let mut out = Vec::with_capacity(LEN);

    let copied = copied_by(|| Processor::new().feed(&input, &mut out));
    assert_eq!(out.len(), LEN);
    assert!(
        out.iter().zip(&input[1..]).all(|(&o, &i)| o == i + 1),
        "wrong answer"
    );
    assert!(
        copied < 1024,
        "feed copied {copied} bytes with memcpy/memmove for a {LEN}-byte message"
    );

    // The control: the counting does see a copy-then-add core.
    out.clear();
    let copied = copied_by(|| copy_then_add(&input[1..], &mut out));
    assert!(copied >= LEN, "the control copied only {copied} bytes");
    assert!(out.iter().zip(&input[1..]).all(|(&o, &i)| o == i + 1));
}
