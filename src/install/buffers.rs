//! Recycles the large buffers of a format 2 install (frames of up to 8 MiB, their
//! compressed bytes) from the writer back to the planner and the workers.
//!
//! Every buffer of 256 KiB or more is a mapping of its own ([`crate::memory`]), so a new
//! one costs a page fault per 4 KiB as it is filled, and freeing it unmaps it again. For
//! an image of 8 MiB frames that was about a tenth of the install's time on this machine
//! (benches/install-local.sh). A buffer that is done with comes back here instead, and
//! the next item of about its size takes it.
//!
//! Memory: the pool keeps at most [`KEEP`] idle buffers, and frees them when a large
//! buffer is asked for that none of them fits (a new one is made then). A buffer is
//! handed out only for a length it fits without more than half again as much room, so
//! an item never holds much more than the credit it took for its bytes.

use std::sync::Mutex;

/// Smaller buffers come from the allocator's heap, which reuses them already.
const MIN_POOLED: usize = 256 << 10;

/// Idle buffers kept at most: one frame's raw bytes and one's compressed bytes, about
/// what the stages free between two takes. Four bought no speed for 8 MiB a buffer
/// (benches/install-local.sh, Debian image, 8 MiB frames: 38 MiB peak RSS with two,
/// 46 MiB with four, before idle buffers were freed on a miss).
pub const KEEP: usize = 2;

/// Idle buffers, for the stages of one install.
#[derive(Default)]
pub struct BufferPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// A buffer of exactly `len` bytes. Its bytes are unspecified (a recycled buffer
    /// keeps what it held): the caller overwrites all of them.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_POOLED {
            if let Ok(mut idle) = self.idle.lock() {
                let fits = |b: &Vec<u8>| b.capacity() >= len && b.capacity() <= len + len / 2;
                let best = idle
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| fits(b))
                    .min_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let mut b = idle.swap_remove(i);
                    drop(idle);
                    // Shorter: just forget the tail; longer: zero only the growth.
                    b.resize(len, 0);
                    return b;
                }
                // None fits: a new buffer is made, and the idle ones are freed first, so
                // that idle and busy buffers together stay within what was in flight.
                idle.clear();
            }
        }
        // Zeroed pages straight from the kernel: nothing is written until it is filled.
        vec![0u8; len]
    }

    /// Takes back a buffer that is done with; kept if it is large and there is room.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < MIN_POOLED {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < KEEP {
                idle.push(buf);
            }
        }
    }

    #[cfg(test)]
    fn idle(&self) -> Vec<usize> {
        let mut caps: Vec<usize> = self
            .idle
            .lock()
            .map(|i| i.iter().map(Vec::capacity).collect())
            .unwrap_or_default();
        caps.sort_unstable();
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_buffer_given_back_is_taken_again_with_the_length_asked_for() {
        let pool = BufferPool::default();
        let mut a = pool.take(8 * MIB);
        assert_eq!(a.len(), 8 * MIB);
        a[0] = 7;
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.idle(), [8 * MIB]);
        let b = pool.take(6 * MIB);
        assert_eq!(
            (b.as_ptr(), b.len()),
            (ptr, 6 * MIB),
            "the same memory, shorter"
        );
        assert!(pool.idle().is_empty());
        pool.give(b);
        let c = pool.take(8 * MIB);
        assert_eq!((c.as_ptr(), c.len()), (ptr, 8 * MIB), "and long again");
    }

    #[test]
    fn the_smallest_buffer_that_fits_is_taken_and_none_much_larger() {
        let pool = BufferPool::default();
        pool.give(Vec::with_capacity(8 * MIB));
        pool.give(Vec::with_capacity(4 * MIB));
        let _ = pool.take(3 * MIB + 1);
        assert_eq!(pool.idle(), [8 * MIB], "4 MiB: the smallest that fits");
        pool.give(Vec::with_capacity(3 * MIB));
        let eight = pool.take(6 * MIB);
        assert_eq!(pool.idle(), [3 * MIB], "3 MiB is too small for 6 MiB");
        pool.give(eight);
        let small = pool.take(MIB);
        assert_eq!(small.len(), MIB);
        assert!(
            pool.idle().is_empty(),
            "3 MiB is too large for 1 MiB: a new buffer, and the idle ones are freed"
        );
    }

    #[test]
    fn the_pool_keeps_few_and_only_large_buffers() {
        let pool = BufferPool::default();
        pool.give(vec![0u8; 64 << 10]);
        assert!(pool.idle().is_empty(), "the heap reuses small buffers");
        for _ in 0..KEEP + 3 {
            pool.give(Vec::with_capacity(MIB));
        }
        assert_eq!(pool.idle().len(), KEEP);
        let small = pool.take(4096);
        assert_eq!(small.len(), 4096);
        assert_eq!(
            pool.idle().len(),
            KEEP,
            "small lengths are not served from the pool"
        );
    }
}
