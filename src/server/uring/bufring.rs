//! The provided-buffer ring: the reason an idle `uring` client holds no
//! read buffer.
//!
//! A multishot receive does not name a buffer; the kernel takes one from
//! this ring when data arrives, and the completion says which (its buffer
//! id). The ring gives the buffer back here once the data has been
//! answered. So a ring of, say, 64 buffers serves any number of clients,
//! as long as not all of them are mid-read at once; when it runs dry, a
//! receive ends with `ENOBUFS` and is re-armed once buffers come back.
//!
//! Consumed *incrementally* (`IOU_PBUF_RING_INC`, Linux 6.12+), a buffer
//! is not spent on one receive: each takes only the bytes that arrived,
//! from where the last one stopped, and the kernel flags every completion
//! but the one that fills the buffer (`IORING_CQE_F_BUF_MORE`). So a
//! buffer can be as large as a streaming read wants without small
//! receives using up the ring, and the data of each completion is found
//! by keeping count of what the buffer's earlier completions took.
//!
//! Memory layout (`IORING_REGISTER_PBUF_RING`): `entries` 16-byte
//! `io_uring_buf` slots `{addr, len, bid, resv}` at the start of one
//! page-aligned mapping. The ring's *tail* lives in the `resv` field of
//! slot 0, so slot 0 is written field by field, never whole. The buffers
//! follow from the next page on, `entries * size` bytes, buffer `bid` at
//! `bid * size`; untouched, they cost address space, not resident memory.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

use crate::server::memory;

/// `IOU_PBUF_RING_INC` of the kernel's `io_uring.h` (Linux 6.12), which
/// io-uring 0.7 does not export.
const IOU_PBUF_RING_INC: u16 = 2;

pub(super) struct BufRing {
    ring: *mut BufRingEntry,
    data: *mut u8,
    /// The whole mapping, ring and buffers.
    bytes: usize,
    entries: u16,
    size: u32,
    group: u16,
    tail: u16,
    /// Bytes of each buffer that completions have taken so far: only
    /// buffers consumed incrementally are ever taken in part.
    taken: Box<[u32]>,
    registered: bool,
    /// Never unmapped: ops that may still write into the buffers are in
    /// flight (a ring that failed).
    leak: bool,
}

// SAFETY: the mappings are owned by this value alone; the ring thread that
// owns it is the only one that touches them (the kernel aside).
unsafe impl Send for BufRing {}

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
        let page = memory::page_size();
        let ring_bytes =
            (entries as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let bytes = ring_bytes + entries as usize * size as usize;
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let ring = unsafe {
            libc::mmap(
                ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut me = BufRing {
            ring: ring.cast(),
            // SAFETY: within the mapping.
            data: unsafe { ring.cast::<u8>().add(ring_bytes) },
            bytes,
            entries,
            size,
            group,
            tail: 0,
            taken: vec![0; usize::from(entries)].into_boxed_slice(),
            registered: false,
            leak: false,
        };
        for bid in 0..entries {
            me.recycle(bid);
        }
        Ok(me)
    }

    /// Hands the ring to the kernel, its buffers to be consumed
    /// `incrementally` or whole, and publishes every buffer. A kernel
    /// that does not know a flag refuses it with `EINVAL`.
    pub(super) fn register(
        &mut self,
        submitter: &Submitter<'_>,
        incrementally: bool,
    ) -> io::Result<()> {
        let flags = if incrementally { IOU_PBUF_RING_INC } else { 0 };
        // SAFETY: the ring memory is page aligned, sized for `entries`, and
        // stays mapped until `unregister` (or for good: see `leak`).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.ring as u64,
                self.entries,
                self.group,
                flags,
            )?
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
    fn recycle(&mut self, bid: u16) {
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

    /// The `len` bytes a completion has just put in buffer `bid`, after
    /// what its earlier completions took (valid until [`taken`](BufRing::taken)).
    pub(super) fn get(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let at = *self.taken.get(usize::from(bid))? as usize;
        if at + len > self.size as usize {
            return None;
        }
        // SAFETY: in bounds; the kernel wrote these bytes and writes the
        // next receive's after them, or into this buffer again only once
        // it is recycled.
        Some(unsafe {
            std::slice::from_raw_parts(self.data.add(bid as usize * self.size as usize + at), len)
        })
    }

    /// A completion's `len` bytes of buffer `bid` have been dealt with;
    /// unless the kernel goes on filling it (`more`), it is given back.
    /// Whether it was.
    pub(super) fn taken(&mut self, bid: u16, len: usize, more: bool) -> bool {
        let Some(taken) = self.taken.get_mut(usize::from(bid)) else {
            return false;
        };
        if more {
            *taken = taken.saturating_add(len as u32);
            return false;
        }
        *taken = 0;
        self.recycle(bid);
        true
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
        // SAFETY: mapped in `new` with this length; no op that could touch
        // it is in flight (otherwise `leak` is set).
        unsafe { libc::munmap(self.ring.cast(), self.bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_taken_in_part_hands_out_each_receive_after_the_last() {
        let mut bufs = BufRing::new(2, 64, 0).unwrap();
        let base = |bufs: &BufRing, bid, len| bufs.get(bid, len).unwrap().as_ptr() as usize;
        let start = base(&bufs, 1, 10);
        assert!(
            !bufs.taken(1, 10, true),
            "given back while the kernel fills it"
        );
        assert_eq!(base(&bufs, 1, 50), start + 10);
        assert_eq!(bufs.get(1, 55), None, "past its end");
        assert!(bufs.taken(1, 50, false), "not given back once full");
        assert_eq!(base(&bufs, 1, 64), start, "a recycled buffer starts over");
        assert_eq!(bufs.get(2, 1), None, "no such buffer");
    }
}
