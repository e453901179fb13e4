//! DNS naming in the agent: the answers pods received (`DnsState`), drained from the kernel
//! each tick, name the external addresses of later records ([`dns_host`]); the UDP query flows
//! to port 53 are read here too. Its own module so that the loop does not carry DNS; the
//! decoding itself is in [`crate::dns`], the kernel side in [`crate::capture`].

use observer_common::{DnsResponseHead, IPPROTO_TCP, record::Protocol};

use super::Agent;
use crate::{
    architecture,
    capture::tracker::Tracker,
    dns::{DnsCounts, DnsNames},
    metrics::DnsResultLabels,
};

/// The names pods resolved, and the UDP query flows' deltas.
pub(super) struct DnsState {
    pub(super) names: DnsNames,
    /// Counts already exported, to export only what each tick adds.
    pub(super) exported: DnsCounts,
    pub(super) queries: Tracker,
}

impl Agent {
    /// Takes the DNS responses the kernel captured since the last tick into the names table.
    pub(super) fn drain_dns(&mut self) {
        let (Some(capture), Some(dns)) = (self.capture.dns.as_mut(), self.dns.as_mut()) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut no_namespace = 0;
        capture.drain_responses(|head, payload| {
            if head.netns == 0 {
                // The kernel could not read the receiving socket's namespace.
                no_namespace += 1;
                return;
            }
            // Errors are counted by kind inside; a response that names nothing is not used.
            let _ = dns
                .names
                .ingest(head.netns, dns_message(head, payload), now);
        });
        dns.names.expire(now);
        let m = &self.health.metrics.dns;
        let counts = dns.names.counts();
        let was = dns.exported;
        let result = |r| DnsResultLabels { result: r };
        m.responses
            .get_or_create(&result("named"))
            .inc_by(counts.responses - was.responses);
        for (kind, n) in counts.rejected_by_kind() {
            m.responses
                .get_or_create(&result(kind.label()))
                .inc_by(n - was.rejected(kind));
        }
        m.responses
            .get_or_create(&result("no_namespace"))
            .inc_by(no_namespace);
        m.names_evicted.inc_by(counts.evictions - was.evictions);
        m.names_expired.inc_by(counts.expired - was.expired);
        m.names.set(dns.names.entries() as i64);
        dns.exported = counts;
    }

    /// Reads the kernel's UDP DNS query flows; each new query since the last reading is a
    /// connection of a UDP flow to port 53, judged like any other.
    pub(super) fn scan_dns_queries(&mut self) {
        let Some(capture) = self.capture.dns.as_mut() else {
            return;
        };
        let mut readings = Vec::new();
        capture.scan_queries(|k, v| readings.push((k, v)));
        let idle_before = self
            .clock
            .mono_now_ns()
            .saturating_sub(self.opts.idle_timeout.as_nanos() as u64);
        let mut records = Vec::new();
        if let Some(dns) = self.dns.as_mut() {
            for (key, counters) in readings {
                if let Some((delta, ())) = dns.queries.observe(key, counters) {
                    records.push((key, delta.outcomes, counters));
                }
            }
            let idle = dns.queries.idle(idle_before);
            self.health
                .metrics
                .idle_flows_deleted
                .inc_by(idle.len() as u64);
            for key in idle {
                // A query counted after this scan's reading comes back with the delete.
                let last = capture.take_query(&key);
                if let Some((delta, ())) = last.and_then(|last| dns.queries.observe(key, last)) {
                    records.push((key, delta.outcomes, delta.counters));
                }
                dns.queries.forget(&key);
            }
        }
        for (key, outcomes, counters) in records {
            let mut record = self.record(&key, &outcomes, &counters, false);
            record.protocol = Protocol::Udp;
            self.finish(record, None);
        }
    }
}

/// The DNS message in a captured payload: over TCP it follows a 2-byte length (a segment that
/// does not hold the whole message gives a cut message, which the parser counts as truncated).
pub(super) fn dns_message<'a>(head: &DnsResponseHead, payload: &'a [u8]) -> &'a [u8] {
    if head.transport != IPPROTO_TCP {
        return payload;
    }
    match payload {
        [hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            rest.get(..len).unwrap_or(rest)
        }
        _ => &[],
    }
}

/// The name a pod's DNS answers give `ip`: the first of its names (the question first, then the
/// CNAME chain) that names an external of the model, else the question.
pub(super) fn dns_host(
    names: &DnsNames,
    model: Option<&architecture::Architecture>,
    netns: u32,
    ip: std::net::IpAddr,
    now: std::time::Instant,
) -> Option<String> {
    let documented = model.and_then(|m| {
        names
            .names_for(netns, ip, now)
            .find(|n| m.external_for_host(n).is_some())
    });
    documented
        .or_else(|| names.name_for(netns, ip, now))
        .map(str::to_owned)
}
