//! Feeds arbitrary bytes through the agent's DNS path: parse, record into the per-namespace
//! cache, and look every answered address up again. Any panic, overflow or sanitizer report is
//! a bug: the bytes come from whatever a pod's DNS traffic carries.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

// The module's own source, not the `observer` crate: linking the crate would build the whole
// agent (Kubernetes client, aya, OpenTelemetry) under the sanitizer for a module that needs
// only hickory-proto and thiserror.
#[path = "../../observer/src/dns/mod.rs"]
#[expect(
    dead_code,
    unused_imports,
    reason = "the target uses part of the module's API"
)]
mod dns;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a scope and the cache bound, so eviction paths run too.
    let (netns, max, message) = match data.split_first() {
        Some((&b, rest)) => (u32::from(b & 3), usize::from(b >> 2).max(1), rest),
        None => (0, 1, data),
    };
    let t0 = Instant::now();
    let mut cache = dns::DnsNames::new(max, Duration::from_secs(5));
    // The same message twice: the second is a refresh of every naming.
    for now in [t0, t0 + Duration::from_secs(1)] {
        let Ok(answers) = cache.ingest(netns, message, now) else {
            return;
        };
        for address in &answers.addresses {
            if let Some(name) = cache.name_for(netns, address.addr, now) {
                assert_eq!(name, answers.question());
            }
            assert!(cache.names_for(netns, address.addr, now).count() <= answers.names.len());
            assert_eq!(cache.name_for(netns ^ 4, address.addr, now), None);
        }
        assert!(cache.entries() <= max);
    }
    let ttl_max = Duration::from_secs(u64::from(u32::MAX));
    cache.expire(t0 + ttl_max + Duration::from_secs(10));
    assert_eq!(cache.entries(), 0);
});
