//! The look-ahead pipeline: how a batch of kernel readings becomes records. Readings are taken
//! in groups, each group's tracker bucket and entry, cached outcome, line parts and series
//! counter loaded stages ahead ([`look_ahead`]); a cached flow's record is then written from its
//! cache slot, any other goes through attribution, the hold queue and judgement
//! (`Agent::finish_flow`), and is cached for its next records. Its own module because it is
//! the tuned hot path, and the only code that reaches into tracker buckets, flow-cache slots and
//! metric series together.

use observer_common::{
    FlowCounters, FlowKey,
    record::{Direction, FlowRecord, Scope},
};
use tokio::time::Instant;

use super::{
    Agent,
    flowcache::{Epoch, Fate, Slot},
    hold::{Held, strip_attribution},
    naming::dns_host,
    options::IngressMode,
    record::{emit_cached, fresh},
};
use crate::{
    capture::tracker::Tracker,
    inventory::IndexHandle,
    judge,
    metrics::{FlowSeries, connection_labels},
};

impl Agent {
    /// Takes a batch of readings, each group of [`AHEAD`] looked up ahead ([`look_ahead`]).
    pub(super) fn observe_batch(&mut self, readings: &[(FlowKey, FlowCounters)]) {
        let (epoch, now) = (self.epoch(), std::time::Instant::now());
        look_ahead(
            self,
            readings,
            |agent| &agent.tracker,
            |agent, key, counters| agent.observe(key, counters, epoch, now),
        );
    }

    /// Takes one reading of a flow. `epoch` was read before this batch of readings, so before
    /// the index, model and names that attribution uses: a change after that point is cached
    /// under the older epoch, which the flow's next record no longer matches. `now` is when the
    /// batch was read (it marks the flow's series as incremented).
    pub(super) fn observe(
        &mut self,
        key: FlowKey,
        counters: FlowCounters,
        epoch: Epoch,
        now: std::time::Instant,
    ) {
        let Some((delta, slot)) = self.tracker.observe(key, counters) else {
            return;
        };
        if let Some(cached) = slot.get(epoch) {
            if let Some(learned) = &mut cached.netns_pod {
                self.attributor.relearn(learned);
            }
            // No record: a cached flow's line is written from what its reading says anew.
            let fresh = fresh(&key, &delta.outcomes, &counters, false, |ns| {
                self.clock.wall(ns)
            });
            match &mut cached.fate {
                Fate::LeftToSourceNode { counted } => {
                    if *counted {
                        self.health
                            .metrics
                            .ingress_left_to_source_node
                            .inc_by(fresh.count());
                    }
                }
                Fate::Emit(emitted) => emit_cached(
                    emitted,
                    &fresh,
                    &self.health.metrics,
                    &mut self.traces,
                    &mut self.log,
                    &mut self.line,
                    now,
                ),
            }
            return;
        }
        let record = self.record(&key, &delta.outcomes, &counters, false);
        self.finish_flow(record, None, Some((key, epoch)));
    }

    /// The generations of the index, model and names in force.
    pub(super) fn epoch(&self) -> Epoch {
        Epoch {
            index: self.index.as_ref().map(IndexHandle::generation),
            model: self.opts.model.as_ref().map(|(_, h)| h.generation()),
            names: self
                .names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .generation(),
        }
    }

    /// Attributes and judges `record`; holds it while the index does not know one of its
    /// cluster addresses (at most `--hold`), then writes it.
    pub(super) fn finish(&mut self, record: FlowRecord, held_until: Option<Instant>) {
        self.finish_flow(record, held_until, None);
    }

    /// [`finish`](Self::finish), caching the outcome as that of the flow `key` under the epoch
    /// read before attribution.
    pub(super) fn finish_flow(
        &mut self,
        mut record: FlowRecord,
        held_until: Option<Instant>,
        flow: Option<(FlowKey, Epoch)>,
    ) {
        let index = self.index.as_ref().map(IndexHandle::snapshot);
        let model = self.opts.model.as_ref().map(|(_, h)| h.current());
        // A flow to an outside address is named by DNS answers that come and expire between
        // its records, which no epoch of the cache tracks: such flows are never cached.
        let flow = flow.filter(|_| self.dns.is_none() || record.dst.scope != Some(Scope::External));
        if let Some(dns) = &self.dns
            && record.dst.scope == Some(Scope::External)
            && record.dst.host.is_none()
            && let Some(ip) = record.dst.ip
        {
            // Before any other naming: what this pod asked its resolver for.
            record.dst.host = dns_host(
                &dns.names,
                model.as_deref(),
                record.netns,
                ip,
                std::time::Instant::now(),
            );
        }
        // Borrowed under the lock, never copied: this runs once per record.
        let names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let attributed =
            self.attributor
                .attribute(&mut record, index.as_deref(), model.as_deref(), &names);
        drop(names);
        let learned = flow.and_then(|_| self.attributor.learned(&record));
        if left_to_source_node(self.opts.ingress, &record) {
            // Decided before holding: whatever the index learns, this agent will not report it,
            // so it neither waits nor counts as unattributed.
            if record.src.scope != Some(Scope::Local) {
                self.health
                    .metrics
                    .ingress_left_to_source_node
                    .inc_by(record.count);
            }
            if let Some((key, epoch)) = flow
                && let Some(slot) = self.tracker.state(&key)
            {
                self.cache
                    .left_to_source_node(slot, epoch, &record, learned);
            }
            return;
        }
        let now = Instant::now();
        let incomplete = attributed.incomplete && self.index.is_some();
        if incomplete {
            let until = held_until.unwrap_or(now + self.opts.hold);
            if now < until {
                self.held.push_back(Held {
                    record: strip_attribution(record),
                    until,
                });
                return;
            }
            self.health.metrics.agent_loss("unattributed", record.count);
        }
        if let Some(model) = &model {
            judge::judge(model, &mut record, attributed.ctx);
        }
        let labels = connection_labels(&record);
        let mut series = FlowSeries::default();
        self.emit(&record, &labels, &mut series);
        if let Some((key, epoch)) = flow
            && !incomplete
            && let Some(slot) = self.tracker.state(&key)
        {
            self.cache
                .emitted(slot, epoch, &record, &self.line, labels, series, learned);
        }
    }
}

/// An accepted connection this agent does not report: with `--ingress external`, one whose source
/// is a pod or node of the cluster (its own node reports it as egress) or a loopback peer (whose
/// connect this agent reports itself, as egress with scope `local`).
pub(super) fn left_to_source_node(mode: IngressMode, r: &FlowRecord) -> bool {
    r.direction == Direction::Ingress
        && mode == IngressMode::External
        && r.src.scope != Some(Scope::External)
}

/// Moves the readings of loopback flows behind all others. A loopback flow is named after the
/// pod that owns its network namespace, which the agent learns from that pod's other flows; a
/// pod's first flows often arrive in the same drain as its first loopback connection (a
/// port-forward right after the pod served a request), and the drain's order is the kernel's.
pub(super) fn loopback_last(readings: &mut [(FlowKey, FlowCounters)]) {
    let loopback = |key: &FlowKey| {
        key.local_ip().to_canonical().is_loopback() || key.remote_ip().to_canonical().is_loopback()
    };
    let mut first_loopback = 0;
    for i in 0..readings.len() {
        if !loopback(&readings[i].0) {
            readings.swap(first_loopback, i);
            first_loopback += 1;
        }
    }
}

/// How many readings are looked up together before they are taken: the lookups of a group wait
/// for main memory at the same time. Enough to cover a memory latency with the group's other
/// lookups, few enough that what they load is still in cache when the group is taken.
pub const AHEAD: usize = 16;

/// What is loaded ahead of a reading, one stage per group: what one stage loads is read by the
/// next one a group later (by then it has arrived), so no stage waits for memory on the one
/// before it.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// The key's hash, and its first bucket in the tracker's index.
    Bucket,
    /// The tracker's entry the bucket points to.
    Entry,
    /// The flow's cached outcome (the entry holds its address).
    Outcome,
    /// What the outcome points to: the line's parts, the labels' verdict, the series slot.
    Parts,
    /// The series' counter (the series slot holds its address).
    Counter,
}

const STAGES: [Stage; 5] = [
    Stage::Bucket,
    Stage::Entry,
    Stage::Outcome,
    Stage::Parts,
    Stage::Counter,
];

impl Stage {
    /// Starts this stage's loads for `key`; `hash` is the key's, worked out by the first stage.
    fn load(self, tracker: &Tracker<Slot>, key: &FlowKey, hash: &mut u64) {
        let slot = || tracker.peek(*hash, key);
        match self {
            Stage::Bucket => {
                *hash = tracker.hash(key);
                tracker.prefetch_bucket(*hash);
            }
            Stage::Entry => tracker.prefetch_entry(*hash),
            Stage::Outcome => slot().map_or((), Slot::prefetch_outcome),
            Stage::Parts => slot().map_or((), Slot::prefetch_parts),
            Stage::Counter => slot().map_or((), Slot::prefetch_counter),
        }
    }
}

/// Takes `readings` (one scan's) in groups of [`AHEAD`] with `take`, each group loaded
/// [`STAGES`] groups ahead: while group `g` is taken, group `g + 1` is in the last stage, group
/// `g + 2` in the one before, and so on. `tracker` is where the flows are (a flow not tracked
/// yet loads nothing past its bucket).
pub fn look_ahead<T>(
    on: &mut T,
    readings: &[(FlowKey, FlowCounters)],
    tracker: impl Fn(&T) -> &Tracker<Slot>,
    mut take: impl FnMut(&mut T, FlowKey, FlowCounters),
) {
    let groups = readings.len().div_ceil(AHEAD);
    let group = |g: usize| &readings[g * AHEAD..((g + 1) * AHEAD).min(readings.len())];
    // The hashes of the groups in the stages: group `g`'s at `g % STAGES.len()`.
    let mut hashes = [[0u64; AHEAD]; STAGES.len()];
    for step in 0..groups + STAGES.len() {
        // Stage `s` on the group taken `STAGES.len() - s` steps from now.
        for (s, stage) in STAGES.iter().enumerate() {
            if let Some(g) = step.checked_sub(s).filter(|&g| g < groups) {
                let t = tracker(on);
                let ring = &mut hashes[g % STAGES.len()];
                for ((key, _), hash) in group(g).iter().zip(ring.iter_mut()) {
                    stage.load(t, key, hash);
                }
            }
        }
        if let Some(g) = step.checked_sub(STAGES.len()).filter(|&g| g < groups) {
            for &(key, counters) in group(g) {
                take(on, key, counters);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use observer_common::record::{Endpoint, Outcomes, Protocol, Timestamp};

    use super::*;

    #[test]
    fn look_ahead_takes_every_reading_once_in_order() {
        struct Agent {
            tracker: Tracker<Slot>,
            taken: Vec<u32>,
        }
        let reading = |i: u32| {
            let key = FlowKey {
                cgroup_id: 0,
                netns: i,
                server_port: 80,
                family: 2,
                direction: 1,
                local_addr: [0; 16],
                remote_addr: [0; 16],
            };
            let mut counters = FlowCounters::default();
            counters.outcomes[0] = 1;
            (key, counters)
        };
        // Empty, shorter than a group, a group exactly, one past it, more groups than stages.
        for n in [
            0,
            1,
            AHEAD - 1,
            AHEAD,
            AHEAD + 1,
            (STAGES.len() + 2) * AHEAD + 3,
        ] {
            let readings: Vec<_> = (0..n as u32).map(reading).collect();
            let mut agent = Agent {
                tracker: Tracker::default(),
                taken: Vec::new(),
            };
            // Every other flow tracked already (the stages load its entry), the rest new.
            for &(key, counters) in readings.iter().step_by(2) {
                agent.tracker.observe(key, counters);
            }
            look_ahead(
                &mut agent,
                &readings,
                |a| &a.tracker,
                |a, key, mut counters| {
                    counters.outcomes[0] += 1;
                    // Inserting (and growing the table) while later groups are in their stages.
                    assert!(a.tracker.observe(key, counters).is_some());
                    a.taken.push(key.netns);
                },
            );
            assert_eq!(
                agent.taken,
                (0..n as u32).collect::<Vec<_>>(),
                "{n} readings"
            );
            assert_eq!(agent.tracker.len(), n);
        }
    }

    #[test]
    fn loopback_readings_are_taken_after_all_others() {
        let reading = |i: u32, remote: [u8; 4]| {
            let mut remote_addr = [0; 16];
            remote_addr[..4].copy_from_slice(&remote);
            let key = FlowKey {
                cgroup_id: 0,
                netns: i,
                server_port: 5672,
                family: observer_common::FAMILY_V4,
                direction: observer_common::DIRECTION_CONNECT,
                local_addr: remote_addr,
                remote_addr,
            };
            (key, FlowCounters::default())
        };
        let mut readings = vec![
            reading(0, [127, 0, 0, 1]),
            reading(1, [10, 244, 0, 13]),
            reading(2, [127, 0, 0, 1]),
            reading(3, [10, 96, 0, 13]),
            reading(4, [10, 244, 0, 12]),
        ];
        loopback_last(&mut readings);
        let order: Vec<u32> = readings.iter().map(|(k, _)| k.netns).collect();
        assert_eq!(order.len(), 5);
        let (others, loopback) = order.split_at(3);
        let sorted = |s: &[u32]| {
            let mut s = s.to_vec();
            s.sort_unstable();
            s
        };
        assert_eq!(sorted(others), [1, 3, 4]);
        assert_eq!(sorted(loopback), [0, 2]);
    }

    fn record(direction: Direction, src: Scope) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: "n".into(),
            protocol: Protocol::Tcp,
            direction,
            count: 1,
            outcomes: Outcomes::default(),
            pre_existing: false,
            first_seen: Timestamp(SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(SystemTime::UNIX_EPOCH),
            netns: 1,
            process: None,
            src: Endpoint {
                scope: Some(src),
                ..Default::default()
            },
            dst: Endpoint::default(),
            verdict: None,
            reason: None,
            rule: None,
            model: None,
        }
    }

    #[test]
    fn only_ingress_from_outside_the_cluster_is_reported_in_external_mode() {
        use Direction::{Egress, Ingress};
        let ext = IngressMode::External;
        for scope in [Scope::Cluster, Scope::Node, Scope::Local] {
            assert!(
                left_to_source_node(ext, &record(Ingress, scope)),
                "{scope:?}"
            );
            assert!(!left_to_source_node(ext, &record(Egress, scope)));
            assert!(!left_to_source_node(
                IngressMode::All,
                &record(Ingress, scope)
            ));
        }
        assert!(!left_to_source_node(ext, &record(Ingress, Scope::External)));
    }
}
