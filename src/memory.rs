//! Keeps the process's memory near what it uses: glibc's allocator, left to itself,
//! holds on to the 1 MiB frame and chunk buffers an install frees, in one arena per
//! thread.
//!
//! Two settings, made once at start before any thread exists:
//! - a fixed mmap threshold of 256 KiB: every buffer that large is its own mapping and
//!   goes back to the kernel when freed. (glibc raises the threshold after each such free
//!   by default, so later 1 MiB buffers land in heap arenas that are rarely trimmed.)
//! - at most two arenas: the install's worker threads share them instead of each
//!   growing its own.
//!
//! Other C libraries (musl) return large blocks to the kernel on their own; there this
//! does nothing.

/// Buffers at least this large get a mapping of their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 256 << 10;

/// Applies the settings above. Call it first thing in `main`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other
    // thread runs, as glibc asks.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}
