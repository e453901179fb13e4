//! Record building: the flow record of one kernel reading ([`flow_record`]), the part of it
//! that a cached flow's record says anew ([`fresh`]), and writing records to the flow log and
//! metrics ([`emit_cached`], `Agent::emit`), including those of connections open before start.
//! Its own module because these are pure of the loop (the pipeline bench calls them directly).

use std::collections::HashMap;

use observer_common::{
    FlowCounters, FlowKey, Outcome, comm_text,
    record::{self, Direction, Endpoint, FlowRecord, Outcomes, Process, Protocol, Timestamp},
};

use super::{
    Agent,
    flowcache::{Emitted, Fresh, ProcessRef},
};
use crate::{
    capture::preexisting,
    flowlog::FlowLog,
    metrics::{ConnectionLabels, FlowSeries, Metrics},
    scope::Scoper,
    traces::Traces,
};

impl Agent {
    pub(super) fn emit(
        &mut self,
        record: &FlowRecord,
        labels: &ConnectionLabels,
        series: &mut FlowSeries,
    ) {
        let m = &self.health.metrics;
        m.observe_series_at(
            labels,
            record.count,
            &record.outcomes,
            series,
            std::time::Instant::now(),
        );
        self.traces.observe(record);
        // Serialised into `line`, where the flow cache finds it.
        self.line.clear();
        let written = serde_json::to_writer(&mut self.line, record)
            .map_err(std::io::Error::from)
            .and_then(|()| self.log.write_line(&self.line));
        match written {
            Ok(()) => {
                self.health.metrics.flow_records.inc();
            }
            Err(e) => {
                self.health
                    .metrics
                    .agent_loss("flow_log_write_failed", record.count);
                tracing::warn!("flow log write failed: {e}");
            }
        }
    }

    pub(super) fn record(
        &self,
        key: &FlowKey,
        outcomes: &[u64; Outcome::COUNT],
        c: &FlowCounters,
        pre_existing: bool,
    ) -> FlowRecord {
        flow_record(
            key,
            outcomes,
            c,
            pre_existing,
            &self.opts.node,
            &self.opts.scoper,
            |ns| self.clock.wall(ns),
        )
    }

    /// Records, once, the connections that were open before the program was attached.
    pub(super) fn record_preexisting(&mut self) {
        let now_ns = self.clock.mono_now_ns();
        let found: HashMap<_, _> = preexisting::scan(&self.opts.host_proc)
            .into_iter()
            .collect();
        let mut n = 0;
        for (_, (existing, count)) in found {
            let mut outcomes = [0; Outcome::COUNT];
            outcomes[Outcome::Established as usize] = count;
            let counters = FlowCounters {
                first_seen_ns: now_ns,
                last_seen_ns: now_ns,
                ..Default::default()
            };
            let mut record = self.record(&existing.key, &outcomes, &counters, true);
            if let Some((tgid, comm)) = existing.process
                && existing.key.is_connect()
            {
                record.process = Some(Process {
                    pid: tgid,
                    tgid,
                    comm,
                    cgroup_id: 0,
                });
            }
            self.finish(record, None);
            n += count;
        }
        tracing::info!(connections = n, "recorded connections open before start");
    }
}

/// What [`Agent::emit`] does, for a record of a cached flow: `record` is as the kernel reading
/// made it, `emitted` holds the rest; `line` is scratch space. Public for the pipeline bench.
pub fn emit_cached(
    emitted: &mut Emitted,
    record: &Fresh,
    metrics: &Metrics,
    traces: &mut Traces,
    log: &mut FlowLog,
    line: &mut Vec<u8>,
    now: std::time::Instant,
) {
    metrics.observe_series_at(
        &emitted.labels,
        record.count(),
        &record.outcomes,
        &mut emitted.series,
        now,
    );
    line.clear();
    let written = emitted.write_line(line, record).and_then(|()| {
        if emitted.unexpected && traces.active() {
            // The line is exactly the record (checked when the flow was cached).
            traces.observe(&serde_json::from_slice(line)?);
        }
        log.write_line(line)
    });
    match written {
        Ok(()) => {
            metrics.flow_records.inc();
        }
        Err(e) => {
            metrics.agent_loss("flow_log_write_failed", record.count());
            tracing::warn!("flow log write failed: {e}");
        }
    }
}

/// The flow record of one kernel reading: `outcomes` are the new connections since the flow's
/// previous record, `c` the kernel's counters; ends are classified by `scoper` and not yet
/// attributed or judged. Pure, so the pipeline can be measured without the kernel.
pub fn flow_record(
    key: &FlowKey,
    outcomes: &[u64; Outcome::COUNT],
    c: &FlowCounters,
    pre_existing: bool,
    node: &str,
    scoper: &Scoper,
    wall: impl Fn(u64) -> Timestamp,
) -> FlowRecord {
    let local = key.local_ip();
    let remote = key.remote_ip();
    let s = scoper;
    let (direction, src, dst) = if key.is_connect() {
        let src = Endpoint {
            ip: Some(local),
            scope: Some(s.of_local_end(key.netns, local)),
            ..Default::default()
        };
        let dst = Endpoint {
            ip: Some(remote),
            port: Some(key.server_port),
            scope: Some(s.of_addr(remote)),
            ..Default::default()
        };
        (Direction::Egress, src, dst)
    } else {
        let src = Endpoint {
            ip: Some(remote),
            scope: Some(s.of_addr(remote)),
            ..Default::default()
        };
        let dst = Endpoint {
            ip: Some(local),
            port: Some(key.server_port),
            scope: Some(s.of_local_end(key.netns, local)),
            ..Default::default()
        };
        (Direction::Ingress, src, dst)
    };
    let fresh = fresh(key, outcomes, c, pre_existing, wall);
    FlowRecord {
        schema: record::SCHEMA_VERSION,
        node: node.to_owned(),
        protocol: Protocol::Tcp,
        direction,
        count: fresh.count(),
        outcomes: fresh.outcomes,
        pre_existing,
        first_seen: fresh.first_seen,
        last_seen: fresh.last_seen,
        netns: key.netns,
        process: fresh.process.as_ref().map(ProcessRef::to_process),
        src,
        dst,
        verdict: None,
        reason: None,
        rule: None,
        model: None,
    }
}

/// What the record of one kernel reading says anew each time (see [`flow_record`]): all a
/// cached flow's line needs, without allocating.
pub fn fresh<'a>(
    key: &FlowKey,
    outcomes: &[u64; Outcome::COUNT],
    c: &'a FlowCounters,
    pre_existing: bool,
    wall: impl Fn(u64) -> Timestamp,
) -> Fresh<'a> {
    Fresh {
        outcomes: Outcomes::from_counts(outcomes),
        pre_existing,
        first_seen: wall(c.first_seen_ns),
        last_seen: wall(c.last_seen_ns),
        netns: key.netns,
        process: (key.is_connect() && c.pid_tgid != 0).then(|| ProcessRef {
            pid: c.pid_tgid as u32,
            tgid: (c.pid_tgid >> 32) as u32,
            comm: comm_text(&c.comm),
            cgroup_id: key.cgroup_id,
        }),
    }
}
