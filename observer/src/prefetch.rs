//! Asks the CPU to start loading memory the agent is about to read.
//!
//! With tens of thousands of flows, a cached record's line parts (its ends' JSON, shared by the
//! flows of one pod or Service) are rarely in cache: each is a wait for main memory. Starting
//! those loads before the record's other work (metrics, numbers, timestamps) overlaps the waits
//! with that work instead of adding them to it.

/// Starts loading the first `lines` cache lines of `bytes` into the cache; does nothing else.
#[inline]
pub fn read(bytes: &[u8], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes.len()).step_by(64).take(lines) {
        // SAFETY: `prefetcht0` is a hint: it never faults, whatever the address, and changes no
        // memory or register; SSE, which it requires, is part of every x86_64 CPU. The address
        // is inside `bytes` anyway.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(offset).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, lines);
}
