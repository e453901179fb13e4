//! Turns the kernel's cumulative per-flow counters into exact per-record deltas.
//!
//! The kernel map is the truth: the tracker remembers what it last reported for each flow and
//! reports only the difference, so a flow read twice (from a ring hint and from a full scan) is
//! never counted twice, and a flow whose hint was lost is still counted by the next scan.
//!
//! Each flow's entry also holds what the caller keeps per flow (the agent: its flow cache slot),
//! so that a reading costs one lookup in all: with tens of thousands of flows each lookup is a
//! wait for main memory, which the table lets a batch of readings start early
//! ([`super::flow_table`]).

use observer_common::{FlowCounters, FlowKey, Outcome};

use super::flow_table::FlowTable;

/// What was last reported for one flow, and what the caller keeps with it.
#[derive(Debug)]
struct Reported<S> {
    outcomes: [u64; Outcome::COUNT],
    /// The kernel's `last_seen_ns` when the flow last changed; for idle detection.
    last_seen_ns: u64,
    state: S,
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

/// The flows read so far; `S` is what the caller keeps per flow (`S::default()` for a new one).
pub struct Tracker<S = ()> {
    reported: FlowTable<Reported<S>>,
}

impl<S> Default for Tracker<S> {
    fn default() -> Self {
        Tracker {
            reported: FlowTable::default(),
        }
    }
}

impl<S: Default> Tracker<S> {
    /// Records a reading of `key` and returns its delta, or `None` when nothing changed; with
    /// the delta, the flow's state.
    pub fn observe(&mut self, key: FlowKey, counters: FlowCounters) -> Option<(Delta, &mut S)> {
        // One lookup per reading, whether the flow is new or known.
        let reported = self.reported.get_or_insert_with(key, || Reported {
            outcomes: [0; Outcome::COUNT],
            last_seen_ns: 0,
            state: S::default(),
        });
        let previous = std::mem::replace(&mut reported.outcomes, counters.outcomes);
        reported.last_seen_ns = counters.last_seen_ns;
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
        (delta.count() > 0).then_some((delta, &mut reported.state))
    }

    /// The state of a flow read before.
    pub fn state(&mut self, key: &FlowKey) -> Option<&mut S> {
        self.reported.get_mut(key).map(|r| &mut r.state)
    }

    // Looking a batch of readings up ahead of taking them, in stages (see
    // [`crate::agent::pipeline::look_ahead`]): the hash, then the bucket, then the entry, then its state.

    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.reported.hash(key)
    }

    /// Starts loading the first index bucket of the flow whose key hashes to `hash`.
    pub fn prefetch_bucket(&self, hash: u64) {
        self.reported.prefetch_bucket(hash);
    }

    /// Starts loading the flow's entry (its bucket loaded a stage before).
    pub fn prefetch_entry(&self, hash: u64) {
        self.reported.prefetch_entry(hash);
    }

    /// The state of a flow read before, read-only, `hash` being its key's [`hash`](Self::hash).
    pub fn peek(&self, hash: u64, key: &FlowKey) -> Option<&S> {
        self.reported.get_hashed(hash, key).map(|r| &r.state)
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
    use crate::capture::flow_table::tests::key;

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
        let mut t = Tracker::<()>::default();
        let (d, ()) = t.observe(key(80), counters(3, 0, 10)).unwrap();
        assert_eq!((d.count(), d.outcomes[0]), (3, 3));
        // The same reading again (a hint and a scan of the same state): nothing new.
        assert_eq!(t.observe(key(80), counters(3, 0, 10)), None);
        let (d, ()) = t.observe(key(80), counters(5, 2, 20)).unwrap();
        assert_eq!(d.outcomes[Outcome::Established as usize], 2);
        assert_eq!(d.outcomes[Outcome::Refused as usize], 2);
        assert_eq!(d.count(), 4);
    }

    #[test]
    fn a_flows_state_lives_as_long_as_its_entry() {
        let mut t = Tracker::<u32>::default();
        let (_, state) = t.observe(key(80), counters(1, 0, 10)).unwrap();
        assert_eq!(*state, 0, "a new flow starts from the default");
        *state = 7;
        assert_eq!(t.observe(key(80), counters(1, 0, 10)), None);
        assert_eq!(t.state(&key(80)), Some(&mut 7));
        let (_, state) = t.observe(key(80), counters(2, 0, 20)).unwrap();
        assert_eq!(*state, 7);
        assert_eq!(t.state(&key(81)), None);
        t.forget(&key(80));
        let (_, state) = t.observe(key(80), counters(2, 0, 30)).unwrap();
        assert_eq!(*state, 0, "forgotten with its entry");
    }

    #[test]
    fn a_recreated_entry_counts_from_zero() {
        let mut t = Tracker::<()>::default();
        t.observe(key(80), counters(10, 0, 10));
        let (d, ()) = t.observe(key(80), counters(2, 0, 30)).unwrap();
        assert_eq!(d.count(), 2);
    }

    #[test]
    fn only_flows_quiet_since_the_cutoff_are_idle() {
        let mut t = Tracker::<()>::default();
        t.observe(key(1), counters(1, 0, 100));
        t.observe(key(2), counters(1, 0, 500));
        assert_eq!(t.idle(200), vec![key(1)]);
        t.forget(&key(1));
        assert_eq!(t.len(), 1);
        assert!(t.idle(200).is_empty());
    }
}
