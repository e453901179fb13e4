//! Turns the kernel's cumulative per-flow counters into exact per-record deltas.
//!
//! The kernel map is the truth: the tracker remembers what it last reported for each flow and
//! reports only the difference, so a flow read twice (from a ring hint and from a full scan) is
//! never counted twice, and a flow whose hint was lost is still counted by the next scan.

use std::collections::{HashMap, hash_map::Entry};

use observer_common::{FlowCounters, FlowKey, Outcome};

use crate::fasthash::FastHash;

/// What was last reported for one flow.
#[derive(Clone, Copy, Debug)]
struct Reported {
    outcomes: [u64; Outcome::COUNT],
    /// The kernel's `last_seen_ns` when the flow last changed; for idle detection.
    last_seen_ns: u64,
}

/// New connections of one flow since its previous report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub key: FlowKey,
    pub outcomes: [u64; Outcome::COUNT],
    pub counters: FlowCounters,
}

impl Delta {
    pub fn count(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}

#[derive(Default)]
pub struct Tracker {
    /// Keyed with a fast hash: this is looked up for every reading of every flow.
    reported: HashMap<FlowKey, Reported, FastHash>,
}

impl Tracker {
    /// Records a reading of `key` and returns its delta, or `None` when nothing changed.
    pub fn observe(&mut self, key: FlowKey, counters: FlowCounters) -> Option<Delta> {
        let reading = Reported {
            outcomes: counters.outcomes,
            last_seen_ns: counters.last_seen_ns,
        };
        // One hash lookup per reading, whether the flow is new or known.
        let previous = match self.reported.entry(key) {
            Entry::Occupied(mut e) => std::mem::replace(e.get_mut(), reading).outcomes,
            Entry::Vacant(e) => {
                e.insert(reading);
                [0; Outcome::COUNT]
            }
        };
        let mut outcomes = [0u64; Outcome::COUNT];
        for (i, slot) in outcomes.iter_mut().enumerate() {
            // Counters only grow while an entry lives; a smaller value means the entry was
            // deleted and re-created between readings, so the whole value is new.
            *slot = counters.outcomes[i]
                .checked_sub(previous[i])
                .unwrap_or(counters.outcomes[i]);
        }
        let delta = Delta {
            key,
            outcomes,
            counters,
        };
        (delta.count() > 0).then_some(delta)
    }

    /// Flows whose latest connection is older than `idle_before_ns` (kernel monotonic time) and
    /// that have been fully reported: safe to delete from the kernel map.
    pub fn idle(&self, idle_before_ns: u64) -> Vec<FlowKey> {
        self.reported
            .iter()
            .filter(|(_, r)| r.last_seen_ns < idle_before_ns)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Forgets a flow after its kernel entry was deleted.
    pub fn forget(&mut self, key: &FlowKey) {
        self.reported.remove(key);
    }

    pub fn len(&self) -> usize {
        self.reported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            cgroup_id: 0,
            netns: 1,
            server_port: port,
            family: 4,
            direction: 1,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        }
    }

    fn counters(established: u64, refused: u64, last_seen_ns: u64) -> FlowCounters {
        let mut c = FlowCounters {
            last_seen_ns,
            ..Default::default()
        };
        c.outcomes[Outcome::Established as usize] = established;
        c.outcomes[Outcome::Refused as usize] = refused;
        c
    }

    #[test]
    fn reports_each_connection_exactly_once_however_often_a_flow_is_read() {
        let mut t = Tracker::default();
        let d = t.observe(key(80), counters(3, 0, 10)).unwrap();
        assert_eq!((d.count(), d.outcomes[0]), (3, 3));
        // The same reading again (a hint and a scan of the same state): nothing new.
        assert_eq!(t.observe(key(80), counters(3, 0, 10)), None);
        let d = t.observe(key(80), counters(5, 2, 20)).unwrap();
        assert_eq!(d.outcomes[Outcome::Established as usize], 2);
        assert_eq!(d.outcomes[Outcome::Refused as usize], 2);
        assert_eq!(d.count(), 4);
    }

    #[test]
    fn a_recreated_entry_counts_from_zero() {
        let mut t = Tracker::default();
        t.observe(key(80), counters(10, 0, 10));
        let d = t.observe(key(80), counters(2, 0, 30)).unwrap();
        assert_eq!(d.count(), 2);
    }

    #[test]
    fn only_flows_quiet_since_the_cutoff_are_idle() {
        let mut t = Tracker::default();
        t.observe(key(1), counters(1, 0, 100));
        t.observe(key(2), counters(1, 0, 500));
        assert_eq!(t.idle(200), vec![key(1)]);
        t.forget(&key(1));
        assert_eq!(t.len(), 1);
        assert!(t.idle(200).is_empty());
    }
}
