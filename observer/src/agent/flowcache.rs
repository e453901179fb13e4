//! What the agent concluded about each flow, kept so that the flow's next records cost a hash
//! lookup instead of attribution, a verdict, a label set and a JSON serialisation.
//!
//! A flow's attribution and verdict depend only on its key (addresses, port, direction,
//! network namespace), the Kubernetes index, the architecture and the host names, so they are
//! cached under the generations of those three ([`Epoch`]): after any change of one of them,
//! every flow goes through the full path once more. A flow's cached outcome lives in its
//! [`Slot`], which the tracker keeps with the flow (one hash lookup per reading for both); an
//! outcome of an older epoch stays there, unused, until the flow's next record replaces it or
//! the flow is forgotten, so for a while after a change both generations' parts are in memory.
//! Loopback flows (destination scope `local`) are never cached: their attribution also reads
//! state the attributor learns from other flows and the cgroup of the connecting task. Records
//! that wait for the index (attribution incomplete) are not cached either.
//!
//! A cached record is written from the JSON of its full first record, cut into the parts that
//! are the same for every record of the flow (interned, as flows share their ends) and the
//! parts written anew (counts, timestamps, process). The cut is checked when the flow is cached:
//! a flow whose line written this way differs in any byte from serde's is not cached, so a
//! field added to [`FlowRecord`] costs speed, never correctness.

use std::{borrow::Cow, collections::HashSet, sync::Arc};

use observer_common::record::{FlowRecord, Outcomes, Process, Scope, Timestamp, Verdict};

use crate::{
    attribution::NetnsPod,
    fasthash::FastHash,
    metrics::{ConnectionLabels, FlowSeries},
};

/// The generations of everything attribution and verdicts read besides the flow key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    /// [`crate::inventory::IndexHandle::generation`], `None` without an index.
    pub index: Option<u64>,
    /// [`crate::architecture::ModelHandle::generation`], `None` without a model.
    pub model: Option<u64>,
    /// [`crate::names::HostNames::generation`].
    pub names: u64,
}

/// What the agent does with each record of a cached flow.
#[derive(Debug)]
pub enum Fate {
    /// Written to the log and counted in metrics.
    Emit(Emitted),
    /// An accepted connection left to its source's node (`--ingress external`); `counted`: it
    /// counts in `observer_ingress_left_to_source_node_total`.
    LeftToSourceNode { counted: bool },
}

/// A cached flow whose records are written.
#[derive(Debug)]
pub struct Emitted {
    /// `{"schema":…,"count":`
    head: Arc<str>,
    /// `,"src":{…}`
    src: Arc<str>,
    /// `,"dst":{…}`
    dst: Arc<str>,
    /// `,"verdict":…}`
    verdict: Arc<str>,
    pub unexpected: bool,
    pub labels: Arc<ConnectionLabels>,
    pub series: FlowSeries,
}

/// One cached flow.
#[derive(Debug)]
pub struct Cached {
    /// What the flow was attributed and judged under.
    epoch: Epoch,
    pub fate: Fate,
    /// The pod the flow's local end named, which the attributor learns for the flow's network
    /// namespace on every record ([`crate::attribution::Attributor::relearn`]).
    pub netns_pod: Option<NetnsPod>,
}

/// A flow's place in the cache: empty, or its outcome under some epoch. Boxed, so that the
/// tracker's table of all flows stays small (and its lookups touch less memory).
#[derive(Debug, Default)]
pub struct Slot(Option<Box<Cached>>);

impl Slot {
    /// The cached outcome, when it was cached under `epoch` (an outcome of an older epoch is
    /// never used again, and is replaced when the flow's next record has gone the full path).
    pub fn get(&mut self, epoch: Epoch) -> Option<&mut Cached> {
        self.0.as_deref_mut().filter(|c| c.epoch == epoch)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    // What a record of this flow will read, loaded in stages (see [`crate::agent::pipeline::look_ahead`]):
    // each stage reads only what the stage before loaded, so none waits for main memory.

    /// Starts loading the cached outcome.
    pub fn prefetch_outcome(&self) {
        if let Some(cached) = &self.0 {
            crate::prefetch::object(&**cached);
        }
    }

    /// Starts loading what the outcome points to: the parts of the line, the labels' verdict and
    /// the series slot.
    pub fn prefetch_parts(&self) {
        if let Some(Fate::Emit(emitted)) = self.0.as_deref().map(|c| &c.fate) {
            for part in [&emitted.src, &emitted.dst] {
                crate::prefetch::read(part.as_bytes(), 4);
            }
            // The series update reads the verdict of the labels (the rest only on a miss).
            crate::prefetch::object(&emitted.labels.verdict);
            emitted.series.prefetch_slot();
        }
    }

    /// Starts loading the series' counter (which the series slot points to).
    pub fn prefetch_counter(&self) {
        if let Some(Fate::Emit(emitted)) = self.0.as_deref().map(|c| &c.fate) {
            emitted.series.prefetch_counter();
        }
    }
}

/// What cached flows share: interned line parts and label sets.
#[derive(Default)]
pub struct FlowCache {
    /// The epoch the interned parts were made under: they are dropped when it changes (flows
    /// cached under an older epoch keep theirs until replaced).
    epoch: Epoch,
    /// Interned JSON parts and label sets: thousands of flows share each end and verdict.
    parts: HashSet<Arc<str>, FastHash>,
    labels: HashSet<Arc<ConnectionLabels>, FastHash>,
    /// Flows not cached because their line could not be cut (see the module comment).
    pub uncuttable: u64,
}

impl FlowCache {
    /// Caches in `slot` a flow left to its source's node.
    pub fn left_to_source_node(
        &mut self,
        slot: &mut Slot,
        epoch: Epoch,
        record: &FlowRecord,
        netns_pod: Option<NetnsPod>,
    ) {
        slot.0 = self.cacheable(epoch, record).then(|| {
            Box::new(Cached {
                epoch,
                fate: Fate::LeftToSourceNode {
                    counted: record.src.scope != Some(Scope::Local),
                },
                netns_pod,
            })
        });
    }

    /// Caches in `slot` a written flow from its first record, attributed and judged under
    /// `epoch`, its JSON `line` (as serde wrote it) and the series it counted in (under `labels`,
    /// [`crate::metrics::connection_labels`] of the record).
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one part of the flow's outcome"
    )]
    pub fn emitted(
        &mut self,
        slot: &mut Slot,
        epoch: Epoch,
        record: &FlowRecord,
        line: &[u8],
        labels: ConnectionLabels,
        series: FlowSeries,
        netns_pod: Option<NetnsPod>,
    ) {
        // Whatever happens below, an older outcome is not kept.
        slot.0 = None;
        if !self.cacheable(epoch, record) {
            return;
        }
        let Some(cut) = std::str::from_utf8(line).ok().and_then(Cut::of) else {
            self.uncuttable += 1;
            return;
        };
        let labels = Arc::new(labels);
        let labels = match self.labels.get(&labels) {
            Some(l) => l.clone(),
            None => {
                self.labels.insert(labels.clone());
                labels
            }
        };
        let mut intern = |s: &str| -> Arc<str> {
            match self.parts.get(s) {
                Some(p) => p.clone(),
                None => {
                    let p: Arc<str> = Arc::from(s);
                    self.parts.insert(p.clone());
                    p
                }
            }
        };
        let emitted = Emitted {
            head: intern(cut.head),
            src: intern(cut.src),
            dst: intern(cut.dst),
            verdict: intern(cut.verdict),
            unexpected: record.verdict == Some(Verdict::Unexpected),
            labels,
            series,
        };
        let mut check = Vec::with_capacity(line.len());
        if emitted.write_line(&mut check, &Fresh::of(record)).is_err() || check != line {
            self.uncuttable += 1;
            return;
        }
        slot.0 = Some(Box::new(Cached {
            epoch,
            fate: Fate::Emit(emitted),
            netns_pod,
        }));
    }

    fn cacheable(&mut self, epoch: Epoch, record: &FlowRecord) -> bool {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.parts.clear();
            self.labels.clear();
        }
        record.dst.scope != Some(Scope::Local)
    }
}

/// What each record of a flow says anew, written into its line around the cached parts.
#[derive(Clone, Debug)]
pub struct Fresh<'a> {
    pub outcomes: Outcomes,
    pub pre_existing: bool,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub netns: u32,
    pub process: Option<ProcessRef<'a>>,
}

/// A record's [`Process`], its command name borrowed where it can be.
#[derive(Clone, Debug)]
pub struct ProcessRef<'a> {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Cow<'a, str>,
    pub cgroup_id: u64,
}

impl ProcessRef<'_> {
    pub fn to_process(&self) -> Process {
        Process {
            pid: self.pid,
            tgid: self.tgid,
            comm: self.comm.clone().into_owned(),
            cgroup_id: self.cgroup_id,
        }
    }
}

impl<'a> Fresh<'a> {
    /// What `record` says anew.
    pub fn of(record: &'a FlowRecord) -> Fresh<'a> {
        Fresh {
            outcomes: record.outcomes,
            pre_existing: record.pre_existing,
            first_seen: record.first_seen,
            last_seen: record.last_seen,
            netns: record.netns,
            process: record.process.as_ref().map(|p| ProcessRef {
                pid: p.pid,
                tgid: p.tgid,
                comm: Cow::Borrowed(&p.comm),
                cgroup_id: p.cgroup_id,
            }),
        }
    }

    /// Its connections: a record's `count`.
    pub fn count(&self) -> u64 {
        self.outcomes.total()
    }
}

/// A record's JSON line cut around the fields written anew for each record.
struct Cut<'a> {
    head: &'a str,
    src: &'a str,
    dst: &'a str,
    verdict: &'a str,
}

impl<'a> Cut<'a> {
    /// Inside JSON strings every `"` is escaped, so each of these keys is found where the record
    /// writes it, never inside a value.
    fn of(line: &'a str) -> Option<Cut<'a>> {
        // Each key is looked for after the one before it (the order serde writes them in).
        let after = |from: usize, key: &str| line[from..].find(key).map(|i| from + i);
        let count = after(0, ",\"count\":")? + ",\"count\":".len();
        let src = after(count, ",\"src\":")?;
        let dst = after(src, ",\"dst\":")?;
        let verdict = after(dst, ",\"verdict\":")?;
        Some(Cut {
            head: &line[..count],
            src: &line[src..dst],
            dst: &line[dst..verdict],
            verdict: &line[verdict..],
        })
    }
}

impl Emitted {
    /// The JSON line of a record (without the newline): what it says anew (`record`), then the
    /// cached rest.
    pub fn write_line(&self, out: &mut Vec<u8>, record: &Fresh) -> std::io::Result<()> {
        let o = &record.outcomes;
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(n.format(record.count()).as_bytes());
        out.extend_from_slice(b",\"outcomes\":{\"established\":");
        out.extend_from_slice(n.format(o.established).as_bytes());
        out.extend_from_slice(b",\"refused\":");
        out.extend_from_slice(n.format(o.refused).as_bytes());
        out.extend_from_slice(b",\"timed-out\":");
        out.extend_from_slice(n.format(o.timed_out).as_bytes());
        out.extend_from_slice(b",\"unreachable\":");
        out.extend_from_slice(n.format(o.unreachable).as_bytes());
        out.extend_from_slice(b",\"aborted\":");
        out.extend_from_slice(n.format(o.aborted).as_bytes());
        out.extend_from_slice(if record.pre_existing {
            b"},\"pre_existing\":true,\"first_seen\":\""
        } else {
            b"},\"pre_existing\":false,\"first_seen\":\""
        });
        out.extend_from_slice(&record.first_seen.rfc3339_millis());
        out.extend_from_slice(b"\",\"last_seen\":\"");
        out.extend_from_slice(&record.last_seen.rfc3339_millis());
        out.extend_from_slice(b"\",\"netns\":");
        out.extend_from_slice(n.format(record.netns).as_bytes());
        out.extend_from_slice(b",\"process\":");
        match &record.process {
            None => out.extend_from_slice(b"null"),
            Some(p) => {
                out.extend_from_slice(b"{\"pid\":");
                out.extend_from_slice(n.format(p.pid).as_bytes());
                out.extend_from_slice(b",\"tgid\":");
                out.extend_from_slice(n.format(p.tgid).as_bytes());
                out.extend_from_slice(b",\"comm\":");
                serde_json::to_writer(&mut *out, &p.comm)?;
                out.extend_from_slice(b",\"cgroup_id\":");
                out.extend_from_slice(n.format(p.cgroup_id).as_bytes());
                out.push(b'}');
            }
        }
        out.extend_from_slice(self.src.as_bytes());
        out.extend_from_slice(self.dst.as_bytes());
        out.extend_from_slice(self.verdict.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use observer_common::record::{
        Direction, Endpoint, Outcomes, Process, Protocol, Reason, Timestamp, Workload,
    };

    use super::*;
    use crate::metrics::connection_labels;

    fn judged(node: &str, comm: &str) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: node.into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count: 3,
            outcomes: Outcomes {
                established: 2,
                refused: 1,
                ..Default::default()
            },
            pre_existing: false,
            first_seen: Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_624_511_545),
            ),
            last_seen: Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_nanos(1_795_624_512_999_999_999),
            ),
            netns: 4026532000,
            process: Some(Process {
                pid: 12,
                tgid: 10,
                comm: comm.into(),
                cgroup_id: 7,
            }),
            src: Endpoint {
                ip: Some("10.244.0.5".parse().unwrap()),
                namespace: Some("shop".into()),
                pod: Some("web-\"1\"".into()),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                component: Some("web".into()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                ip: Some("10.96.0.9".parse().unwrap()),
                port: Some(5432),
                namespace: Some("data".into()),
                service: Some("db".into()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            verdict: Some(Verdict::Unexpected),
            reason: Some(Reason::UnknownDestination),
            rule: None,
            model: Some("sha256:00".into()),
        }
    }

    /// The slot of a flow whose first record is `record`, and the cache holding its parts.
    fn cache(record: &FlowRecord, epoch: Epoch) -> (Slot, FlowCache) {
        let mut c = FlowCache::default();
        let mut slot = Slot::default();
        let line = serde_json::to_vec(record).unwrap();
        c.emitted(
            &mut slot,
            epoch,
            record,
            &line,
            connection_labels(record),
            FlowSeries::default(),
            None,
        );
        (slot, c)
    }

    #[test]
    fn a_cached_flow_writes_exactly_the_line_serde_writes() {
        let epoch = Epoch::default();
        for (node, comm) in [("n", "curl"), ("nöde\\", "a\"b\n\u{1}"), ("", "")] {
            let first = judged(node, comm);
            let (mut slot, _parts) = cache(&first, epoch);
            let Some(Cached {
                fate: Fate::Emit(e),
                ..
            }) = slot.get(epoch)
            else {
                panic!("{node:?} {comm:?} not cached");
            };
            // A later record of the flow: other counts, times and process.
            let mut next = first.clone();
            next.count = 1_000_000_007;
            next.outcomes = Outcomes {
                established: 1,
                refused: 2,
                timed_out: 3,
                unreachable: 4,
                aborted: 1_000_000_007 - 10,
            };
            next.pre_existing = true;
            next.first_seen = Timestamp(SystemTime::UNIX_EPOCH);
            next.last_seen = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(999_999));
            for process in [
                None,
                Some(Process {
                    pid: u32::MAX,
                    tgid: 0,
                    comm: "x\u{7f}\t".into(),
                    cgroup_id: u64::MAX,
                }),
            ] {
                next.process = process;
                let mut line = Vec::new();
                e.write_line(&mut line, &Fresh::of(&next)).unwrap();
                assert_eq!(
                    String::from_utf8(line).unwrap(),
                    serde_json::to_string(&next).unwrap()
                );
            }
        }
    }

    #[test]
    fn an_outcome_serves_only_its_epoch_and_loopback_is_never_cached() {
        let epoch = Epoch {
            index: Some(1),
            model: Some(1),
            names: 0,
        };
        let r = judged("n", "c");
        let (mut slot, mut c) = cache(&r, epoch);
        assert!(slot.get(epoch).is_some());
        let later = Epoch {
            index: Some(2),
            ..epoch
        };
        assert!(slot.get(later).is_none());
        assert!(slot.get(epoch).is_some(), "still there, for nothing");
        // The flow's next full-path record under the new epoch replaces it; one that cannot be
        // cached leaves the slot empty rather than holding the old outcome.
        let mut local = r.clone();
        local.dst.scope = Some(Scope::Local);
        let line = serde_json::to_vec(&local).unwrap();
        let labels = connection_labels(&local);
        c.emitted(
            &mut slot,
            later,
            &local,
            &line,
            labels,
            FlowSeries::default(),
            None,
        );
        assert!(slot.is_empty());
        let (slot, _) = cache(&local, epoch);
        assert!(slot.is_empty());
    }
}
