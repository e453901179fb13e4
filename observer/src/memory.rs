//! Hands freed heap back to the kernel after the agent's large, short-lived allocations.
//!
//! Loading an inventory (a file, or a watcher's first list) parses every object in full and
//! keeps a small part of each. glibc's malloc returns memory to the kernel only from the top of
//! its heaps, so without a trim the agent stays at the peak of the parse: for 10,000 pods, about
//! four times what the index needs. The records and batches of each pass over the flow map are
//! short-lived too, and come from several threads' arenas, so the run loop also trims once per
//! flush interval.

/// Releases the free pages of every malloc arena (glibc's `malloc_trim(0)`); elsewhere, nothing.
/// Costs a walk of the free lists (milliseconds): call it after a load and once per flush
/// interval, never per event.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock while it walks the
    // arena's own free chunks and advises the kernel that their pages are unused.
    unsafe {
        libc::malloc_trim(0);
    }
}
