//! The process allocator: mimalloc, asked for a plain block whenever a plain block is aligned
//! enough, and for an aligned one only when it is not.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`. For a
//! block above 1 KiB whose size class is not a power of two — the relay's 2.4 KiB exchange,
//! one per request — mimalloc's aligned path cannot rely on natural alignment, so it
//! over-allocates and marks the page as holding aligned blocks, and every free from that page
//! then takes the slow path as well. Plain `mi_malloc` blocks are aligned to 16 bytes (blocks of
//! 16 bytes or more come in multiples of two machine words, from 16-byte-aligned pages; a
//! block of 8 is 8-aligned), so a plain block serves every layout aligned to 16 or less whose
//! size is at least its alignment (a type's always is: its size is a multiple of it). Only the
//! rare others — larger alignments such as tokio's 128-byte cache-line-padded cells, and
//! layouts aligned above their size — still go through `mi_malloc_aligned`.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc as the global allocator.
pub struct Mimalloc;

/// The alignment every plain mimalloc block of at least this size has (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// Whether a plain block of `size` bytes is aligned enough for `align`.
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// A new block for `layout`, zeroed or not: plain where that is aligned enough.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline]
unsafe fn block(layout: Layout, zero: bool) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    let p = unsafe {
        match (plain(size, align), zero) {
            (true, false) => mi::mi_malloc(size),
            (true, true) => mi::mi_zalloc(size),
            (false, false) => mi::mi_malloc_aligned(size, align),
            (false, true) => mi::mi_zalloc_aligned(size, align),
        }
    };
    p.cast()
}

// SAFETY: every block comes from mimalloc, aligned as the layout asks (see `plain`), and goes
// back to it through `mi_free`, which takes plain and aligned blocks alike.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { block(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { block(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // `mi_realloc` keeps the block when it still fits, else moves it to a plain block of
        // the new size, aligned enough by the same rule.
        let p = if plain(new_size, layout.align()) {
            unsafe { mi::mi_realloc(ptr.cast(), new_size) }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()) }
        };
        p.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 9 KiB (past mimalloc's small and into its medium size classes) at
    /// every alignment from 1 to 4 KiB, including alignments above the size (which a `Layout`
    /// allows, and a plain block would not meet): the block is aligned as asked, holds its
    /// bytes, keeps them when it grows or shrinks, and comes zeroed when asked.
    #[test]
    fn blocks_are_aligned_as_asked_and_keep_their_bytes_through_realloc() {
        let a = Mimalloc;
        let sizes = (1..=600)
            .chain((600..=9216).step_by(37))
            .chain([1024, 2048, 2408, 4096]);
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let grown = size * 3 + 5;
                    let q = a.realloc(p, layout, grown);
                    assert_eq!(q as usize % align, 0, "grown from {size}, align {align}");
                    assert!((0..size).all(|i| *q.add(i) == i as u8));
                    let shrunk = (size / 2).max(1);
                    let r = a.realloc(q, Layout::from_size_align(grown, align).unwrap(), shrunk);
                    assert_eq!(r as usize % align, 0, "shrunk from {grown}, align {align}");
                    assert!((0..shrunk.min(size)).all(|i| *r.add(i) == i as u8));
                    a.dealloc(r, Layout::from_size_align(shrunk, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
