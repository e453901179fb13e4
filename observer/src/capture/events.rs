//! The kernel's flow events ([`FlowEvent`]) folded per flow: what the kernel program counted for
//! flows its map did not hold, and the tasks of connects that started them.
//!
//! The kernel program never creates flow entries while its ring has room (an insert into the
//! map costs several times a ring record); the agent drains the ring, folds each batch's events
//! per flow, and creates the entries, after which the kernel adds to them.

use std::collections::HashMap;

use observer_common::{FlowCounters, FlowEvent, FlowKey, Outcome};

use crate::fasthash::FastHash;

/// How long a connect's start waits for its flow's first count. A handshake ends within about
/// two minutes (Linux retries a SYN 6 times by default, 127 s in all); a start older than this
/// belongs to a connect whose end was counted elsewhere (by the kernel itself, with the ring
/// full) and is dropped.
pub const START_TTL_NS: u64 = 5 * 60 * 1_000_000_000;

/// A connect's task, from its start, until its flow's first count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Start {
    pid_tgid: u64,
    comm: [u8; 16],
    time_ns: u64,
}

/// The events of the batches drained so far, per flow.
#[derive(Default)]
pub struct Events {
    /// Connections counted in the current batch, per flow, with the task joined in
    /// [`Events::take_counted`].
    counted: HashMap<FlowKey, FlowCounters, FastHash>,
    /// Starts of connects whose flow has no count yet (its handshake has not ended, or its end
    /// is in a later batch).
    waiting: HashMap<FlowKey, Start, FastHash>,
}

impl Events {
    pub fn add(&mut self, e: &FlowEvent) {
        if e.kind == FlowEvent::START {
            // The first connect's task is the flow's, as when the kernel kept it.
            self.waiting.entry(e.key).or_insert(Start {
                pid_tgid: e.pid_tgid,
                comm: e.comm,
                time_ns: e.time_ns,
            });
            return;
        }
        let Some(outcome) = Outcome::ALL.get(e.kind as usize) else {
            return; // never written by the kernel program
        };
        let c = self.counted.entry(e.key).or_insert(FlowCounters {
            first_seen_ns: e.time_ns,
            last_seen_ns: e.time_ns,
            ..FlowCounters::default()
        });
        c.outcomes[*outcome as usize] += 1;
        c.first_seen_ns = c.first_seen_ns.min(e.time_ns);
        c.last_seen_ns = c.last_seen_ns.max(e.time_ns);
    }

    /// Moves the batch's counted flows into `into`, each with the task of its connect's start
    /// when one was seen, and drops starts older than [`START_TTL_NS`] before `now_ns`.
    pub fn take_counted(&mut self, now_ns: u64, into: &mut Vec<(FlowKey, FlowCounters)>) {
        for (key, mut counters) in self.counted.drain() {
            if let Some(start) = self.waiting.remove(&key) {
                counters.pid_tgid = start.pid_tgid;
                counters.comm = start.comm;
            }
            into.push((key, counters));
        }
        let oldest = now_ns.saturating_sub(START_TTL_NS);
        self.waiting.retain(|_, s| s.time_ns >= oldest);
    }

    /// Starts still waiting for their flow's first count.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Decodes a ring record; `None` for a record of another size (the kernel never writes one).
pub fn decode(raw: &[u8]) -> Option<FlowEvent> {
    if raw.len() != std::mem::size_of::<FlowEvent>() {
        return None;
    }
    let u64_at = |o: usize| u64::from_ne_bytes(raw[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_ne_bytes(raw[o..o + 4].try_into().unwrap_or_default());
    let u16_at = |o: usize| u16::from_ne_bytes(raw[o..o + 2].try_into().unwrap_or_default());
    let bytes16 = |o: usize| -> [u8; 16] { raw[o..o + 16].try_into().unwrap_or_default() };
    Some(FlowEvent {
        key: FlowKey {
            cgroup_id: u64_at(0),
            netns: u32_at(8),
            server_port: u16_at(12),
            family: raw[14],
            direction: raw[15],
            local_addr: bytes16(16),
            remote_addr: bytes16(32),
        },
        time_ns: u64_at(48),
        pid_tgid: u64_at(56),
        comm: bytes16(64),
        kind: u32_at(80),
        _pad: u32_at(84),
    })
}

/// One flow's cumulative counters from two places that each hold part of its connections: the
/// kernel map's entry and what the agent holds for it ([`super::Capture`]). Counts add up; the
/// first and last times are the earliest and the latest; the task is the entry's if it has one.
pub fn combine(a: Option<FlowCounters>, b: Option<&FlowCounters>) -> Option<FlowCounters> {
    match (a, b) {
        (a, None) => a,
        (None, Some(b)) => Some(*b),
        (Some(mut a), Some(b)) => {
            for (x, y) in a.outcomes.iter_mut().zip(b.outcomes) {
                *x += y;
            }
            a.first_seen_ns = a.first_seen_ns.min(b.first_seen_ns);
            a.last_seen_ns = a.last_seen_ns.max(b.last_seen_ns);
            if a.pid_tgid == 0 {
                a.pid_tgid = b.pid_tgid;
                a.comm = b.comm;
            }
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::flow_table::tests::key;

    fn event(key: FlowKey, kind: u32, time_ns: u64, pid_tgid: u64) -> FlowEvent {
        let mut comm = [0; 16];
        comm[..4].copy_from_slice(b"curl");
        FlowEvent {
            key,
            time_ns,
            pid_tgid,
            comm: if pid_tgid == 0 { [0; 16] } else { comm },
            kind,
            _pad: 0,
        }
    }

    fn count(key: FlowKey, o: Outcome, time_ns: u64) -> FlowEvent {
        event(key, o as u32, time_ns, 0)
    }

    fn taken(events: &mut Events, now_ns: u64) -> Vec<(FlowKey, FlowCounters)> {
        let mut out = Vec::new();
        events.take_counted(now_ns, &mut out);
        out.sort_by_key(|(k, _)| k.cgroup_id);
        out
    }

    #[test]
    fn a_batch_folds_each_flows_counts_and_joins_its_start() {
        let mut events = Events::default();
        let (a, b) = (key(1), key(2));
        events.add(&event(a, FlowEvent::START, 90, 7 << 32 | 7));
        events.add(&event(a, FlowEvent::START, 95, 8 << 32 | 8)); // a second connect's start
        events.add(&count(a, Outcome::Established, 100));
        events.add(&count(b, Outcome::Refused, 120));
        events.add(&count(a, Outcome::Refused, 110));
        events.add(&count(a, Outcome::Established, 105));
        let out = taken(&mut events, 200);
        assert_eq!(out.len(), 2);
        let (ka, ca) = out[0];
        assert_eq!(ka, a);
        assert_eq!(ca.outcome(Outcome::Established), 2);
        assert_eq!(ca.outcome(Outcome::Refused), 1);
        assert_eq!((ca.first_seen_ns, ca.last_seen_ns), (100, 110));
        assert_eq!(ca.pid_tgid, 7 << 32 | 7, "the first connect's task");
        assert_eq!(&ca.comm[..4], b"curl");
        let (kb, cb) = out[1];
        assert_eq!(kb, b);
        assert_eq!(cb.connections(), 1);
        assert_eq!(cb.pid_tgid, 0, "no start seen");
        assert_eq!(events.waiting(), 0);
        assert!(taken(&mut events, 200).is_empty(), "a batch is taken once");
    }

    #[test]
    fn a_start_waits_for_its_count_in_a_later_batch_until_it_is_stale() {
        let mut events = Events::default();
        let (a, b) = (key(1), key(2));
        events.add(&event(a, FlowEvent::START, 1_000, 42));
        events.add(&event(b, FlowEvent::START, 2_000, 43));
        assert!(taken(&mut events, 3_000).is_empty());
        assert_eq!(events.waiting(), 2);
        events.add(&count(a, Outcome::TimedOut, START_TTL_NS));
        let out = taken(&mut events, START_TTL_NS + 2_500);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.pid_tgid, 42);
        // b's start is older than the limit now: dropped.
        assert_eq!(events.waiting(), 0);
    }

    #[test]
    fn records_decode_to_what_the_kernel_wrote() {
        let e = FlowEvent {
            key: FlowKey {
                cgroup_id: 0x0102_0304_0506_0708,
                netns: 4026531840,
                server_port: 5672,
                family: 4,
                direction: 2,
                local_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            },
            time_ns: 123_456_789,
            pid_tgid: 77 << 32 | 78,
            comm: *b"graph-gateway\0\0\0",
            kind: Outcome::Unreachable as u32,
            _pad: 0,
        };
        let mut raw = Vec::new();
        raw.extend_from_slice(&e.key.cgroup_id.to_ne_bytes());
        raw.extend_from_slice(&e.key.netns.to_ne_bytes());
        raw.extend_from_slice(&e.key.server_port.to_ne_bytes());
        raw.extend_from_slice(&[e.key.family, e.key.direction]);
        raw.extend_from_slice(&e.key.local_addr);
        raw.extend_from_slice(&e.key.remote_addr);
        raw.extend_from_slice(&e.time_ns.to_ne_bytes());
        raw.extend_from_slice(&e.pid_tgid.to_ne_bytes());
        raw.extend_from_slice(&e.comm);
        raw.extend_from_slice(&e.kind.to_ne_bytes());
        raw.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(decode(&raw), Some(e));
        assert_eq!(decode(&raw[..raw.len() - 1]), None);
    }

    #[test]
    fn an_entry_and_held_counts_combine_into_one_flow() {
        let entry = FlowCounters {
            first_seen_ns: 50,
            last_seen_ns: 300,
            outcomes: [3, 0, 0, 0, 1],
            pid_tgid: 0,
            comm: [0; 16],
        };
        let held = FlowCounters {
            first_seen_ns: 40,
            last_seen_ns: 60,
            outcomes: [1, 2, 0, 0, 0],
            pid_tgid: 9,
            comm: *b"rabbitmq\0\0\0\0\0\0\0\0",
        };
        let both = combine(Some(entry), Some(&held)).unwrap();
        assert_eq!(both.outcomes, [4, 2, 0, 0, 1]);
        assert_eq!((both.first_seen_ns, both.last_seen_ns), (40, 300));
        assert_eq!(both.pid_tgid, 9);
        assert_eq!(combine(Some(entry), None), Some(entry));
        assert_eq!(combine(None, Some(&held)), Some(held));
        assert_eq!(combine(None, None), None);
    }
}
