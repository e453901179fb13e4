//! The hold queue: a record whose cluster addresses the index does not know yet waits (at most
//! `--hold`) for the index to learn them, stripped of its attribution, and is retried each tick.
//! Its own module because waiting is a state of its own beside the pipeline's straight path.

use observer_common::record::{Endpoint, FlowRecord};
use tokio::time::Instant;

use super::Agent;

/// A record waiting for the index to learn one of its addresses.
pub(super) struct Held {
    pub(super) record: FlowRecord,
    pub(super) until: Instant,
}

impl Agent {
    /// Retries held records; writes those whose hold expired (or all, at shutdown).
    pub(super) fn release_held(&mut self, all: bool) {
        let now = Instant::now();
        let pending: Vec<Held> = self.held.drain(..).collect();
        for h in pending {
            let until = if all { now } else { h.until };
            self.finish(h.record, Some(until));
        }
        self.health.metrics.held.set(self.held.len() as i64);
    }
}

/// A held record goes through attribution again from its raw addresses and scopes.
pub(super) fn strip_attribution(r: FlowRecord) -> FlowRecord {
    // The name from a DNS answer stays: the answer may expire while the record waits.
    let raw = |ep: Endpoint| Endpoint {
        ip: ep.ip,
        port: ep.port,
        scope: ep.scope,
        host: ep.host,
        ..Default::default()
    };
    FlowRecord {
        src: raw(r.src),
        dst: raw(r.dst),
        ..r
    }
}
