//! The provided-buffer ring: the reason an idle `uring` client holds no
//! read buffer.
//!
//! A multishot receive does not name a buffer; the kernel takes one from
//! this ring when data arrives, and the completion says which (its buffer
//! id). The ring gives the buffer back here once the data has been
//! answered. So a ring of, say, 256 buffers serves any number of clients,
//! as long as not all of them are mid-read at once; when it runs dry, a
//! receive ends with `ENOBUFS` and is re-armed once buffers come back.
//!
//! Memory layout (`IORING_REGISTER_PBUF_RING`): `entries` 16-byte
//! `io_uring_buf` slots `{addr, len, bid, resv}` in one page-aligned
//! mapping. The ring's *tail* lives in the `resv` field of slot 0, so
//! slot 0 is written field by field, never whole. The buffers themselves
//! are a second mapping of `entries * size` bytes, buffer `bid` at
//! `bid * size`; untouched, they cost address space, not resident memory.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

pub(super) struct BufRing {
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    data: *mut u8,
    data_bytes: usize,
    entries: u16,
    size: u32,
    group: u16,
    tail: u16,
    registered: bool,
    /// Never unmapped: ops that may still write into the buffers are in
    /// flight (a ring that failed).
    leak: bool,
}

// SAFETY: the mappings are owned by this value alone; the ring thread that
// owns it is the only one that touches them (the kernel aside).
unsafe impl Send for BufRing {}

fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous private mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl BufRing {
    /// Maps `entries` buffers of `size` bytes (`entries` a power of two)
    /// for buffer group `group`, every one of them queued for the kernel
    /// once [`register`](BufRing::register)ed.
    pub(super) fn new(entries: u16, size: u32, group: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer ring needs a power of two of at most 32768 entries, of more than 0 bytes",
            ));
        }
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let ring_bytes =
            (entries as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let data_bytes = entries as usize * size as usize;
        let ring = map(ring_bytes)?.cast::<BufRingEntry>();
        let data = match map(data_bytes) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: mapped just above, with this length.
                unsafe { libc::munmap(ring.cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut me = BufRing {
            ring,
            ring_bytes,
            data,
            data_bytes,
            entries,
            size,
            group,
            tail: 0,
            registered: false,
            leak: false,
        };
        for bid in 0..entries {
            me.recycle(bid);
        }
        Ok(me)
    }

    /// Hands the ring to the kernel and publishes every buffer.
    pub(super) fn register(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is page aligned, sized for `entries`, and
        // stays mapped until `unregister` (or for good: see `leak`).
        unsafe {
            submitter.register_buf_ring_with_flags(self.ring as u64, self.entries, self.group, 0)?
        };
        self.registered = true;
        self.publish();
        Ok(())
    }

    pub(super) fn unregister(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        if self.registered {
            submitter.unregister_buf_ring(self.group)?;
            self.registered = false;
        }
        Ok(())
    }

    /// Gives buffer `bid` back; the kernel sees it after [`publish`](BufRing::publish).
    pub(super) fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entries);
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries, and this slot lies outside the kernel's
        // [head, tail) window, so the kernel is not reading it. The field
        // setters leave slot 0's `resv` (the tail) alone.
        let e = unsafe { &mut *self.ring.add(idx) };
        e.set_addr(self.data as u64 + bid as u64 * self.size as u64);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes every buffer given back so far, with one release store.
    pub(super) fn publish(&self) {
        // SAFETY: `ring` is the base of a live ring; the tail is an aligned
        // u16 that the kernel only reads.
        unsafe {
            let tail = BufRingEntry::tail(self.ring as *const BufRingEntry) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which a completion has just
    /// handed over (valid until it is recycled).
    pub(super) fn get(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.entries || len > self.size as usize {
            return None;
        }
        // SAFETY: in bounds; the kernel handed this buffer to us, and does
        // not write to it again until it is recycled.
        Some(unsafe {
            std::slice::from_raw_parts(self.data.add(bid as usize * self.size as usize), len)
        })
    }

    pub(super) fn leak(&mut self) {
        self.leak = true;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: both mapped in `new` with these lengths; no op that could
        // touch them is in flight (otherwise `leak` is set).
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
            libc::munmap(self.data.cast(), self.data_bytes);
        }
    }
}
