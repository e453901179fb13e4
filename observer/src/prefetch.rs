//! Asks the CPU to start loading memory the agent is about to read.
//!
//! With tens of thousands of flows, what a cached record reads (its flow's cache slot, its ends'
//! JSON shared by the flows of one pod or Service, its metric series) is rarely in cache: each
//! is a wait for main memory. Starting those loads for a group of readings before taking them
//! overlaps the waits instead of adding them up.

/// Starts loading the first `lines` cache lines of `bytes`.
#[inline]
pub fn read(bytes: &[u8], lines: usize) {
    for offset in (0..bytes.len()).step_by(64).take(lines) {
        hint(bytes[offset..].as_ptr());
    }
}

/// Starts loading every cache line of `value` (not what it points to).
#[inline]
pub fn object<T>(value: &T) {
    let start: *const u8 = std::ptr::from_ref(value).cast();
    for offset in (0..size_of::<T>()).step_by(64) {
        hint(start.wrapping_add(offset));
    }
}

#[inline]
fn hint(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is a hint: it never faults, whatever the address, and changes no
    // memory or register; SSE, which it requires, is part of every x86_64 CPU. The address comes
    // from a reference anyway.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
