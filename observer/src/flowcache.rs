//! What the agent concluded about each flow, kept so that the flow's next records cost a hash
//! lookup instead of attribution, a verdict, a label set and a JSON serialisation.
//!
//! A flow's attribution and verdict depend only on its key (addresses, port, direction,
//! network namespace), the Kubernetes index, the architecture and the host names, so they are
//! cached under the generations of those three ([`Epoch`]): any change of one of them empties
//! the cache and every flow goes through the full path once more. Loopback flows (destination
//! scope `local`) are never cached: their attribution also reads state the attributor learns
//! from other flows and the cgroup of the connecting task. Records that wait for the index
//! (attribution incomplete) are not cached either.
//!
//! A cached record is written from the JSON of its full first record, cut into the parts that
//! are the same for every record of the flow (interned, as flows share their ends) and the
//! parts written anew (counts, timestamps, process). The cut is checked when the flow is cached:
//! a flow whose line written this way differs in any byte from serde's is not cached, so a
//! field added to [`FlowRecord`] costs speed, never correctness.

use std::{collections::HashSet, sync::Arc};

use observer_common::{
    FlowKey,
    record::{FlowRecord, Scope, Verdict},
};

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
    Emit(Box<Emitted>),
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
    pub fate: Fate,
    /// The pod the flow's local end named, which the attributor learns for the flow's network
    /// namespace on every record ([`crate::attribution::Attributor::relearn`]).
    pub netns_pod: Option<NetnsPod>,
}

#[derive(Default)]
pub struct FlowCache {
    epoch: Epoch,
    flows: std::collections::HashMap<FlowKey, Cached, FastHash>,
    /// Interned JSON parts and label sets: thousands of flows share each end and verdict.
    parts: HashSet<Arc<str>, FastHash>,
    labels: HashSet<Arc<ConnectionLabels>, FastHash>,
    /// Flows not cached because their line could not be cut (see the module comment).
    pub uncuttable: u64,
}

impl FlowCache {
    /// The cached flow, when it was cached under `epoch`; a different epoch empties the cache.
    pub fn get(&mut self, key: &FlowKey, epoch: Epoch) -> Option<&mut Cached> {
        if epoch != self.epoch {
            self.clear(epoch);
            return None;
        }
        self.flows.get_mut(key)
    }

    fn clear(&mut self, epoch: Epoch) {
        self.epoch = epoch;
        self.flows.clear();
        self.parts.clear();
        self.labels.clear();
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Forgets a flow (its kernel entry was deleted).
    pub fn forget(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Caches a flow left to its source's node.
    pub fn left_to_source_node(
        &mut self,
        key: FlowKey,
        epoch: Epoch,
        record: &FlowRecord,
        netns_pod: Option<NetnsPod>,
    ) {
        if !self.cacheable(epoch, record) {
            return;
        }
        self.flows.insert(
            key,
            Cached {
                fate: Fate::LeftToSourceNode {
                    counted: record.src.scope != Some(Scope::Local),
                },
                netns_pod,
            },
        );
    }

    /// Caches a written flow from its first record, attributed and judged under `epoch`, its
    /// JSON `line` (as serde wrote it) and the series it counted in (under `labels`,
    /// [`crate::metrics::connection_labels`] of the record).
    #[expect(
        clippy::too_many_arguments,
        reason = "each is one part of the flow's outcome"
    )]
    pub fn emitted(
        &mut self,
        key: FlowKey,
        epoch: Epoch,
        record: &FlowRecord,
        line: &[u8],
        labels: ConnectionLabels,
        series: FlowSeries,
        netns_pod: Option<NetnsPod>,
    ) {
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
        if emitted.write_line(&mut check, record).is_err() || check != line {
            self.uncuttable += 1;
            return;
        }
        self.flows.insert(
            key,
            Cached {
                fate: Fate::Emit(Box::new(emitted)),
                netns_pod,
            },
        );
    }

    fn cacheable(&mut self, epoch: Epoch, record: &FlowRecord) -> bool {
        if epoch != self.epoch {
            self.clear(epoch);
        }
        record.dst.scope != Some(Scope::Local)
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
        let count = line.find(",\"count\":")? + ",\"count\":".len();
        let src = line.find(",\"src\":")?;
        let dst = line.find(",\"dst\":")?;
        let verdict = line.find(",\"verdict\":")?;
        (count < src && src < dst && dst < verdict).then(|| Cut {
            head: &line[..count],
            src: &line[src..dst],
            dst: &line[dst..verdict],
            verdict: &line[verdict..],
        })
    }
}

impl Emitted {
    /// Starts loading the parts a line is written from (see [`crate::prefetch`]).
    pub fn prefetch(&self) {
        for part in [&self.src, &self.dst] {
            crate::prefetch::read(part.as_bytes(), 4);
        }
    }

    /// The JSON line of `record` (without the newline): its own counts, timestamps, network
    /// namespace and process, the cached rest.
    pub fn write_line(&self, out: &mut Vec<u8>, record: &FlowRecord) -> std::io::Result<()> {
        let o = &record.outcomes;
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(n.format(record.count).as_bytes());
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

    fn key(port: u16) -> FlowKey {
        FlowKey {
            cgroup_id: 7,
            netns: 4026532000,
            server_port: port,
            family: 4,
            direction: 1,
            local_addr: [10, 244, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [10, 96, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }

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

    fn cache(record: &FlowRecord, epoch: Epoch) -> FlowCache {
        let mut c = FlowCache::default();
        let line = serde_json::to_vec(record).unwrap();
        c.emitted(
            key(5432),
            epoch,
            record,
            &line,
            connection_labels(record),
            FlowSeries::default(),
            None,
        );
        c
    }

    #[test]
    fn a_cached_flow_writes_exactly_the_line_serde_writes() {
        let epoch = Epoch::default();
        for (node, comm) in [("n", "curl"), ("nöde\\", "a\"b\n\u{1}"), ("", "")] {
            let first = judged(node, comm);
            let mut c = cache(&first, epoch);
            let Some(Cached {
                fate: Fate::Emit(e),
                ..
            }) = c.get(&key(5432), epoch)
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
                e.write_line(&mut line, &next).unwrap();
                assert_eq!(
                    String::from_utf8(line).unwrap(),
                    serde_json::to_string(&next).unwrap()
                );
            }
        }
    }

    #[test]
    fn another_epoch_empties_the_cache_and_loopback_is_never_cached() {
        let epoch = Epoch {
            index: Some(1),
            model: Some(1),
            names: 0,
        };
        let r = judged("n", "c");
        let mut c = cache(&r, epoch);
        assert_eq!(c.len(), 1);
        let later = Epoch {
            index: Some(2),
            ..epoch
        };
        assert!(c.get(&key(5432), later).is_none());
        assert!(c.is_empty());

        let mut local = r.clone();
        local.dst.scope = Some(Scope::Local);
        let c = cache(&local, epoch);
        assert!(c.is_empty());
    }
}
