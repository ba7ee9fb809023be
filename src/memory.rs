//! A global allocator that asks the kernel for transparent huge pages on large allocations.
//!
//! The ledger's tables are hundreds of megabytes of flat arrays probed at random: with 4 KiB
//! pages nearly every probe is also a TLB miss, and a software prefetch that misses the TLB
//! arrives late. Where THP is in `madvise` mode (a common default), a table gets huge pages
//! only if advised before it is first touched, which is exactly when the allocator returns
//! it. The core stays free of system calls; the binary chooses its allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are advised.
const ADVISE_SIZE_MIN_BYTES: usize = 4 << 20;
const HUGE_PAGE_SIZE_BYTES: usize = 2 << 20;

/// The system allocator, plus `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned interior of
/// every allocation of at least 4 MiB.
pub struct HugePages;

impl HugePages {
    fn advise(pointer: *mut u8, size_bytes: usize) {
        if pointer.is_null() || size_bytes < ADVISE_SIZE_MIN_BYTES {
            return;
        }
        let start = (pointer as usize).next_multiple_of(HUGE_PAGE_SIZE_BYTES);
        let end = (pointer as usize + size_bytes) & !(HUGE_PAGE_SIZE_BYTES - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the allocation just returned; MADV_HUGEPAGE is
            // a hint that never changes the memory's contents. Its failure (no THP support)
            // leaves ordinary pages, so the result is ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}

// SAFETY: every method forwards to `System` unchanged and only adds an advisory madvise on
// memory the allocation owns.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc's contract for `layout`.
        let pointer = unsafe { System.alloc(layout) };
        Self::advise(pointer, layout.size());
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Allocate, advise, then zero: zeroing first would fault in small pages.
        // SAFETY: as in alloc.
        let pointer = unsafe { System.alloc(layout) };
        Self::advise(pointer, layout.size());
        if !pointer.is_null() {
            // SAFETY: `pointer` is valid for `layout.size()` bytes.
            unsafe { pointer.write_bytes(0, layout.size()) };
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator with `layout`.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: as in dealloc; the new size is the caller's.
        let moved = unsafe { System.realloc(pointer, layout, size) };
        Self::advise(moved, size);
        moved
    }
}
