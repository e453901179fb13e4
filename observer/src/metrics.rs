//! The agent's Prometheus metrics (OpenMetrics text on `/metrics`).
//!
//! Labels are at workload level, never pod names, addresses or ephemeral ports; an external
//! destination is labelled by its documented or learned name, else by its scope alone.
//!
//! Cardinality is bounded: the flow families (`observer_connections_total` and
//! `observer_unexpected_connections_total`) hold at most `max_series` label sets between them.
//! Past the cap a new label set goes to an overflow series instead, whose workload, component,
//! name and port labels are all `_overflow` (direction, scope, verdict, reason and outcome are
//! kept, so alerts on unexpected egress still fire), and every connection counted there is
//! also counted in `observer_agent_losses_total{kind="series_overflow"}`. A series not
//! incremented for `series_ttl` is removed, which is how the series of deleted workloads go:
//! the agent does not track workload deletions for metrics, only quiet series.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use observer_common::{
    Outcome,
    record::{Direction, FlowRecord, Outcomes, Verdict},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::architecture::{Architecture, ReloadStats};
use crate::fasthash::FastHash;
use crate::inventory::InventoryStatus;

/// What became of one captured DNS response: `named` (its addresses were recorded), or why it
/// yielded none (`truncated`, `malformed`, `nx_domain`, ..., `no_namespace`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsResultLabels {
    pub result: &'static str,
}

/// What the agent does with the DNS answers pods receive.
#[derive(Default)]
pub struct DnsMetrics {
    pub responses: Family<DnsResultLabels, Counter>,
    /// (pod, address, name) entries held now.
    pub names: Gauge,
    pub names_evicted: Counter,
    pub names_expired: Counter,
}

impl DnsMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "dns_responses",
            "DNS responses captured on their way to pods: named (addresses recorded) or why they named nothing",
            self.responses.clone(),
        );
        r.register(
            "dns_names",
            "Names learned from DNS answers held now, one per pod, address and name",
            self.names.clone(),
        );
        r.register(
            "dns_names_evicted",
            "Names dropped before their TTL (and grace) ran out to stay within --dns-max-names",
            self.names_evicted.clone(),
        );
        r.register(
            "dns_names_expired",
            "Names removed after their TTL and --dns-grace ran out",
            self.names_expired.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    /// Where the count was lost: `ring_full`, `flow_map_full`, `socket_read_failed`, ...
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLossLabels {
    pub kind: &'static str,
}

/// One end pair of a flow, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    pub src_namespace: String,
    pub src_workload: String,
    pub src_component: String,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub dst_component: String,
    pub dst_name: String,
    pub dst_scope: &'static str,
    pub dst_port: String,
    pub verdict: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnexpectedLabels {
    pub src_namespace: String,
    pub src_workload: String,
    pub src_component: String,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub dst_component: String,
    pub dst_name: String,
    pub dst_scope: &'static str,
    pub dst_port: String,
    pub reason: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `exported`, `failed` (the collector refused it or could not be reached) or `queue_full`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub name: String,
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// The label value of every label an overflow series does not keep.
pub const OVERFLOW: &str = "_overflow";

/// Bounds on the flow families' series.
#[derive(Clone, Copy, Debug)]
pub struct SeriesLimits {
    /// Label sets of `observer_connections_total` and `observer_unexpected_connections_total`
    /// together, overflow series not included.
    pub max_series: usize,
    /// A series not incremented for this long is removed.
    pub ttl: Duration,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            max_series: 5000,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// One live flow series: its counter and when it was last incremented. Only read or written
/// under the [`SeriesBook`] lock; the atomics just make it shareable with [`FlowSeries`].
#[derive(Debug)]
struct Slot {
    counter: Counter,
    /// Nanoseconds from [`SeriesBook::base`] to the latest increment.
    seen: AtomicU64,
    /// Set once the series is removed: a holder must look its labels up again.
    removed: AtomicBool,
}

impl Slot {
    fn new(counter: Counter, book: &SeriesBook, now: Instant) -> Arc<Slot> {
        Arc::new(Slot {
            counter,
            seen: AtomicU64::new(book.since_base(now)),
            removed: AtomicBool::new(false),
        })
    }
}

/// The series one flow counts into, found once through its labels and then incremented
/// directly, without building or hashing label sets ([`Metrics::observe_series_at`]). A series
/// removed since (expired) is looked up again, and so is an overflow series once any series was
/// removed (the flow may then get its own).
#[derive(Clone, Debug, Default)]
pub struct FlowSeries {
    connections: Held,
    /// Only for an unexpected flow: boxed, so that the others' cached outcome stays small.
    unexpected: Option<Box<[Held; Outcome::COUNT]>>,
}

impl FlowSeries {
    /// Starts loading the slot of the series a record of the flow counts in (see
    /// [`crate::agent::pipeline::look_ahead`]).
    pub fn prefetch_slot(&self) {
        if let Held::Own(slot) = &self.connections {
            crate::prefetch::object(&**slot);
        }
    }

    /// Starts loading the counter of that series (read from its slot: loaded a stage before).
    pub fn prefetch_counter(&self) {
        if let Held::Own(slot) = &self.connections {
            crate::prefetch::object(slot.counter.inner());
        }
    }
}

#[derive(Clone, Debug, Default)]
enum Held {
    #[default]
    Nothing,
    Own(Arc<Slot>),
    /// Counted in this overflow series while [`SeriesBook::removals`] was `removals`: the book
    /// was full then and, as only a removal makes room, still is, and the flow's own labels
    /// are still not in it.
    Overflow {
        counter: Counter,
        removals: u64,
    },
}

/// When each live flow series was last incremented.
struct SeriesBook {
    /// Keyed with a fast hash: looked up for the first record of every flow.
    connections: HashMap<ConnectionLabels, Arc<Slot>, FastHash>,
    unexpected: HashMap<UnexpectedLabels, Arc<Slot>, FastHash>,
    /// Overflow series created so far (they are never removed).
    overflow_series: usize,
    last_sweep: Option<Instant>,
    /// The origin of [`Slot::seen`].
    base: Instant,
    /// Sweeps that removed series so far.
    removals: u64,
}

impl Default for SeriesBook {
    fn default() -> Self {
        SeriesBook {
            connections: HashMap::default(),
            unexpected: HashMap::default(),
            overflow_series: 0,
            last_sweep: None,
            base: Instant::now(),
            removals: 0,
        }
    }
}

impl SeriesBook {
    fn len(&self) -> usize {
        self.connections.len() + self.unexpected.len()
    }

    fn since_base(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The counter `held` says to count in, when that still holds: marks an own series
    /// incremented at `now`; `overflowed` tells an overflow series.
    fn touch<'h>(&self, held: &'h Held, now: Instant) -> Option<(&'h Counter, bool)> {
        match held {
            Held::Own(slot) if !slot.removed.load(Ordering::Relaxed) => {
                slot.seen.store(self.since_base(now), Ordering::Relaxed);
                Some((&slot.counter, false))
            }
            Held::Overflow { counter, removals } if *removals == self.removals => {
                Some((counter, true))
            }
            _ => None,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    limits: SeriesLimits,
    series: Mutex<SeriesBook>,
    /// Records of unexpected flows that made no span: the flow had one within the interval.
    pub traces_suppressed: Counter,
    /// Spans of unexpected flows, by what became of them.
    pub trace_spans: Family<SpanLabels, Counter>,
    /// Flow series currently exported (overflow series included).
    pub flow_series: Gauge,
    /// Flow series removed after `series_ttl` without an increment.
    pub series_expired: Counter,
    /// Every count the kernel program could not record, by cause (see `observer_common::loss`).
    pub kernel_losses: Family<LossLabels, Counter>,
    /// Every count the agent could not export as it should, by cause.
    pub agent_losses: Family<AgentLossLabels, Counter>,
    pub connections: Family<ConnectionLabels, Counter>,
    pub unexpected: Family<UnexpectedLabels, Counter>,
    /// Runs of the kernel program the kernel skipped (re-entered on a CPU): possible lost counts.
    pub kernel_recursion_misses: Counter,
    /// The kernel's own statistics of the program (run time only while kernel.bpf_stats_enabled=1).
    pub kernel_program_runs: Counter,
    /// Seconds (Prometheus base unit), from the kernel's nanoseconds.
    pub kernel_program_run_time: Counter<f64, std::sync::atomic::AtomicU64>,
    pub flow_records: Counter,
    pub flows_created: Counter,
    pub map_scans: Counter,
    pub idle_flows_deleted: Counter,
    pub ingress_left_to_source_node: Counter,
    pub tracked_flows: Gauge,
    pub held: Gauge,
    pub ready: Gauge,
    pub architecture_reloads: Family<ReloadLabels, Counter>,
    pub architecture_info: Family<ModelLabels, Gauge>,
    pub watcher_synced: Family<ResourceLabels, Gauge>,
    pub watcher_last_sync: Family<ResourceLabels, Gauge>,
    pub index_stale: Gauge,
    pub dns: DnsMetrics,
    reloads_seen: Mutex<(u64, u64)>,
}

pub const AGENT_LOSS_KINDS: [&str; 4] = [
    "export_queue_full",
    "unattributed",
    "flow_log_write_failed",
    "series_overflow",
];

fn or_empty(s: Option<&String>) -> String {
    s.cloned().unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_limits(SeriesLimits::default())
    }

    pub fn with_limits(limits: SeriesLimits) -> Metrics {
        let mut r = Registry::with_prefix("observer");
        let m = Metrics {
            registry: Registry::default(),
            limits,
            series: Mutex::new(SeriesBook::default()),
            flow_series: Gauge::default(),
            series_expired: Counter::default(),
            traces_suppressed: Counter::default(),
            trace_spans: Family::default(),
            kernel_losses: Family::default(),
            agent_losses: Family::default(),
            connections: Family::default(),
            unexpected: Family::default(),
            kernel_recursion_misses: Counter::default(),
            kernel_program_runs: Counter::default(),
            kernel_program_run_time: Counter::default(),
            flow_records: Counter::default(),
            flows_created: Counter::default(),
            map_scans: Counter::default(),
            idle_flows_deleted: Counter::default(),
            ingress_left_to_source_node: Counter::default(),
            tracked_flows: Gauge::default(),
            held: Gauge::default(),
            ready: Gauge::default(),
            architecture_reloads: Family::default(),
            architecture_info: Family::default(),
            watcher_synced: Family::default(),
            watcher_last_sync: Family::default(),
            index_stale: Gauge::default(),
            dns: DnsMetrics::default(),
            reloads_seen: Mutex::new((0, 0)),
        };
        r.register(
            "connections",
            "TCP connections, by source and destination workload, verdict and reason",
            m.connections.clone(),
        );
        r.register(
            "unexpected_connections",
            "Connections the architecture does not allow (for alerting), with their outcome",
            m.unexpected.clone(),
        );
        r.register(
            "flow_series",
            "Series of observer_connections_total and observer_unexpected_connections_total now exported, overflow series included",
            m.flow_series.clone(),
        );
        r.register(
            "flow_series_expired",
            "Flow series removed after --series-ttl without a new connection",
            m.series_expired.clone(),
        );
        r.register(
            "traces_suppressed",
            "Records of unexpected flows that made no span because the flow had one within --trace-resighting-interval",
            m.traces_suppressed.clone(),
        );
        r.register(
            "trace_spans",
            "Spans of unexpected flows: exported, failed (export refused or collector unreachable) or queue_full (dropped before export)",
            m.trace_spans.clone(),
        );
        r.register(
            "kernel_losses",
            "Counts the kernel program could not record, by cause (ring_full loses no count: the kernel program put the event in its map, and the agent rescans; start_not_seen is informational)",
            m.kernel_losses.clone(),
        );
        r.register(
            "agent_losses",
            "Connections the agent could not export as it should, by cause",
            m.agent_losses.clone(),
        );
        r.register(
            "kernel_program_recursion_misses",
            "Runs of the kernel program skipped by the kernel because it was already running on the CPU; each may have lost a count",
            m.kernel_recursion_misses.clone(),
        );
        r.register(
            "kernel_program_runs",
            "Runs of the kernel program (needs kernel.bpf_stats_enabled=1)",
            m.kernel_program_runs.clone(),
        );
        r.register(
            "kernel_program_run_time_seconds",
            "Time spent in the kernel program (needs kernel.bpf_stats_enabled=1)",
            m.kernel_program_run_time.clone(),
        );
        r.register(
            "flow_records",
            "Records written to the flow log",
            m.flow_records.clone(),
        );
        r.register(
            "flows_created",
            "Flows whose kernel map entries the agent created from the kernel program's flow events (after that the kernel counts their connections in place)",
            m.flows_created.clone(),
        );
        r.register(
            "flow_map_scans",
            "Full scans of the kernel flow map",
            m.map_scans.clone(),
        );
        r.register(
            "idle_flows_deleted",
            "Idle flows (TCP flows and DNS query flows) removed from the kernel maps after being reported",
            m.idle_flows_deleted.clone(),
        );
        r.register(
            "ingress_left_to_source_node",
            "Accepted connections from pods or nodes of the cluster, not reported here: the source's node reports them as egress (loopback connections are not counted: their egress is reported here)",
            m.ingress_left_to_source_node.clone(),
        );
        r.register(
            "tracked_flows",
            "Flows in the kernel flow map",
            m.tracked_flows.clone(),
        );
        r.register(
            "held_records",
            "Records waiting for the Kubernetes index to learn an address",
            m.held.clone(),
        );
        r.register(
            "ready",
            "1 when the kernel program is attached, flows are recorded and the index has synced",
            m.ready.clone(),
        );
        r.register(
            "architecture_reloads",
            "Architecture file reloads: success put a new model in force, failure kept the previous one",
            m.architecture_reloads.clone(),
        );
        r.register(
            "architecture_info",
            "The architecture model in force (value 1)",
            m.architecture_info.clone(),
        );
        r.register(
            "watcher_synced",
            "1 once the Kubernetes watcher of the resource has listed it",
            m.watcher_synced.clone(),
        );
        r.register(
            "watcher_last_sync_timestamp_seconds",
            "When the watcher of the resource last completed a list (Unix time)",
            m.watcher_last_sync.clone(),
        );
        r.register(
            "index_stale",
            "1 while a watcher has lost its watch after its first sync",
            m.index_stale.clone(),
        );
        m.dns.register(&mut r);
        for result in ["success", "failure"] {
            m.architecture_reloads
                .get_or_create(&ReloadLabels { result })
                .inc_by(0);
        }
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build_info);
        // Present from the start at 0, so alerts and `increase()` see the first loss.
        for name in observer_common::loss::NAMES {
            m.kernel_losses
                .get_or_create(&LossLabels {
                    kind: name.to_owned(),
                })
                .inc_by(0);
        }
        for result in ["exported", "failed", "queue_full"] {
            m.trace_spans
                .get_or_create(&SpanLabels { result })
                .inc_by(0);
        }
        for kind in AGENT_LOSS_KINDS {
            m.agent_losses
                .get_or_create(&AgentLossLabels { kind })
                .inc_by(0);
        }
        Metrics { registry: r, ..m }
    }

    pub fn agent_loss(&self, kind: &'static str, n: u64) {
        self.agent_losses
            .get_or_create(&AgentLossLabels { kind })
            .inc_by(n);
    }

    pub fn span(&self, result: &'static str, n: u64) {
        self.trace_spans
            .get_or_create(&SpanLabels { result })
            .inc_by(n);
    }

    /// Counts a written record.
    pub fn observe_record(&self, r: &FlowRecord) {
        self.observe_record_at(r, Instant::now());
    }

    /// Counts a written record at `now` (tests pass their own clock).
    pub fn observe_record_at(&self, r: &FlowRecord, now: Instant) {
        self.observe_series_at(
            &connection_labels(r),
            r.count,
            &r.outcomes,
            &mut FlowSeries::default(),
            now,
        );
    }

    /// Counts a written record of `count` connections (by outcome: `outcomes`) whose labels
    /// are `labels` ([`connection_labels`]), through the series `held` from the flow's previous
    /// record when they are still live; `held` is updated for the next one.
    pub fn observe_series_at(
        &self,
        labels: &ConnectionLabels,
        count: u64,
        outcomes: &Outcomes,
        held: &mut FlowSeries,
        now: Instant,
    ) {
        let mut book = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sweep(&mut book, now);
        let mut overflowed = 0;
        if let Some((counter, overflow)) = book.touch(&held.connections, now) {
            counter.inc_by(count);
            if overflow {
                overflowed = count;
            }
        } else if let Some(slot) = book.connections.get(labels) {
            slot.seen.store(book.since_base(now), Ordering::Relaxed);
            slot.counter.inc_by(count);
            held.connections = Held::Own(slot.clone());
        } else if book.len() < self.limits.max_series {
            let counter = self.connections.get_or_create(labels).clone();
            counter.inc_by(count);
            let slot = Slot::new(counter, &book, now);
            book.connections.insert(labels.clone(), slot.clone());
            held.connections = Held::Own(slot);
        } else {
            overflowed = count;
            let o = labels.overflow();
            if self.connections.get(&o).is_none() {
                book.overflow_series += 1;
            }
            let counter = self.connections.get_or_create(&o).clone();
            counter.inc_by(count);
            held.connections = Held::Overflow {
                counter,
                removals: book.removals,
            };
        }
        if labels.verdict == VERDICT_UNEXPECTED {
            let mut overflowed_outcomes = 0;
            let unexpected = held.unexpected.get_or_insert_default();
            for o in Outcome::ALL {
                let n = outcomes.get(o);
                if n == 0 {
                    continue;
                }
                let held = &mut unexpected[o as usize];
                if let Some((counter, overflow)) = book.touch(held, now) {
                    counter.inc_by(n);
                    if overflow {
                        overflowed_outcomes += n;
                    }
                    continue;
                }
                let u = labels.unexpected(o.name());
                if let Some(slot) = book.unexpected.get(&u) {
                    slot.seen.store(book.since_base(now), Ordering::Relaxed);
                    slot.counter.inc_by(n);
                    *held = Held::Own(slot.clone());
                } else if book.len() < self.limits.max_series {
                    let counter = self.unexpected.get_or_create(&u).clone();
                    counter.inc_by(n);
                    let slot = Slot::new(counter, &book, now);
                    book.unexpected.insert(u, slot.clone());
                    *held = Held::Own(slot);
                } else {
                    overflowed_outcomes += n;
                    let o = u.overflow();
                    if self.unexpected.get(&o).is_none() {
                        book.overflow_series += 1;
                    }
                    let counter = self.unexpected.get_or_create(&o).clone();
                    counter.inc_by(n);
                    *held = Held::Overflow {
                        counter,
                        removals: book.removals,
                    };
                }
            }
            // Each connection is counted once, whichever of its series overflowed.
            if overflowed == 0 {
                overflowed = overflowed_outcomes;
            }
        }
        if overflowed > 0 {
            self.agent_loss("series_overflow", overflowed);
        }
        self.flow_series
            .set((book.len() + book.overflow_series) as i64);
    }

    /// Removes the flow series not incremented for the TTL (at most once per TTL/4, or a
    /// minute, whichever is shorter). Overflow series are bounded and never expire.
    fn sweep(&self, book: &mut SeriesBook, now: Instant) {
        let every = (self.limits.ttl / 4).min(Duration::from_secs(60));
        if book
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        book.last_sweep = Some(now);
        let ttl = self.limits.ttl;
        let (base, mut expired) = (book.base, 0);
        let fresh = |slot: &Slot| {
            let seen = base + Duration::from_nanos(slot.seen.load(Ordering::Relaxed));
            let keep = now.saturating_duration_since(seen) < ttl;
            if !keep {
                slot.removed.store(true, Ordering::Relaxed);
            }
            keep
        };
        book.connections.retain(|l, slot| {
            let keep = fresh(slot);
            if !keep {
                self.connections.remove(l);
                expired += 1;
            }
            keep
        });
        book.unexpected.retain(|l, slot| {
            let keep = fresh(slot);
            if !keep {
                self.unexpected.remove(l);
                expired += 1;
            }
            keep
        });
        if expired > 0 {
            book.removals += 1;
        }
        self.series_expired.inc_by(expired);
    }

    /// Expires quiet series now (called at scrape time too, so they go without new records).
    pub fn expire_series_at(&self, now: Instant) {
        let mut book = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sweep(&mut book, now);
        self.flow_series
            .set((book.len() + book.overflow_series) as i64);
    }

    /// Mirrors the reload counters and the model in force.
    pub fn observe_model(&self, model: &Architecture, stats: &ReloadStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let (ok, failed) = (stats.successes.load(Relaxed), stats.failures.load(Relaxed));
        let Ok(mut seen) = self.reloads_seen.lock() else {
            return;
        };
        self.architecture_reloads
            .get_or_create(&ReloadLabels { result: "success" })
            .inc_by(ok.saturating_sub(seen.0));
        self.architecture_reloads
            .get_or_create(&ReloadLabels { result: "failure" })
            .inc_by(failed.saturating_sub(seen.1));
        *seen = (ok, failed);
        let labels = ModelLabels {
            name: model.name().to_owned(),
            hash: model.hash().to_owned(),
        };
        if self.architecture_info.get(&labels).is_none() {
            self.architecture_info.clear();
            self.architecture_info.get_or_create(&labels).set(1);
        }
    }

    /// Mirrors the watchers' state (at scrape time).
    pub fn observe_inventory(&self, status: &InventoryStatus) {
        for w in status.watchers() {
            let l = ResourceLabels { resource: w.kind() };
            self.watcher_synced
                .get_or_create(&l)
                .set(i64::from(w.synced()));
            self.watcher_last_sync
                .get_or_create(&l)
                .set(w.last_sync_unix_seconds() as i64);
        }
        self.index_stale.set(i64::from(status.stale()));
    }

    pub fn encode(&self) -> String {
        self.expire_series_at(Instant::now());
        self.encode_without_expiry()
    }

    /// The Prometheus text format (0.0.4), for clients that do not ask for OpenMetrics
    /// (curl, `promtool check metrics`); Prometheus itself asks for OpenMetrics.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    fn encode_without_expiry(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// OpenMetrics to the Prometheus text format: a counter family is named with its `_total`
/// suffix in `# HELP` and `# TYPE`, `unknown` is `untyped`, and `# EOF` goes. The samples are
/// the same in both.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The `verdict` label of unexpected flows.
const VERDICT_UNEXPECTED: &str = "unexpected";

/// The labels a record counts under in `observer_connections_total`.
pub fn connection_labels(r: &FlowRecord) -> ConnectionLabels {
    let dst_name = match r.dst.scope {
        Some(observer_common::record::Scope::External) => r
            .dst
            .component
            .clone()
            .or_else(|| r.dst.host.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let workload = |w: &Option<observer_common::record::Workload>| {
        w.as_ref().map(|w| w.name.clone()).unwrap_or_default()
    };
    ConnectionLabels {
        direction: match r.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        },
        src_namespace: or_empty(r.src.namespace.as_ref()),
        src_workload: workload(&r.src.workload),
        src_component: or_empty(r.src.component.as_ref()),
        dst_namespace: or_empty(r.dst.namespace.as_ref()),
        dst_workload: workload(&r.dst.workload),
        dst_component: or_empty(r.dst.component.as_ref()),
        dst_name,
        dst_scope: r.dst.scope.map_or("", |s| s.name()),
        dst_port: r.dst.port.map(|p| p.to_string()).unwrap_or_default(),
        verdict: match r.verdict {
            Some(Verdict::Expected) => "expected",
            Some(Verdict::Unexpected) => VERDICT_UNEXPECTED,
            None => "",
        },
        reason: r.reason.map_or("", |x| x.name()),
    }
}

impl ConnectionLabels {
    fn unexpected(&self, outcome: &'static str) -> UnexpectedLabels {
        UnexpectedLabels {
            src_namespace: self.src_namespace.clone(),
            src_workload: self.src_workload.clone(),
            src_component: self.src_component.clone(),
            dst_namespace: self.dst_namespace.clone(),
            dst_workload: self.dst_workload.clone(),
            dst_component: self.dst_component.clone(),
            dst_name: self.dst_name.clone(),
            dst_scope: self.dst_scope,
            dst_port: self.dst_port.clone(),
            reason: self.reason,
            outcome,
        }
    }

    /// The overflow series of this label set: direction, scope, verdict and reason kept.
    fn overflow(&self) -> ConnectionLabels {
        let o = || OVERFLOW.to_owned();
        ConnectionLabels {
            direction: self.direction,
            src_namespace: o(),
            src_workload: o(),
            src_component: o(),
            dst_namespace: o(),
            dst_workload: o(),
            dst_component: o(),
            dst_name: o(),
            dst_scope: self.dst_scope,
            dst_port: o(),
            verdict: self.verdict,
            reason: self.reason,
        }
    }
}

impl UnexpectedLabels {
    /// The overflow series: scope, reason and outcome kept.
    fn overflow(&self) -> UnexpectedLabels {
        let o = || OVERFLOW.to_owned();
        UnexpectedLabels {
            src_namespace: o(),
            src_workload: o(),
            src_component: o(),
            dst_namespace: o(),
            dst_workload: o(),
            dst_component: o(),
            dst_name: o(),
            dst_scope: self.dst_scope,
            dst_port: o(),
            reason: self.reason,
            outcome: self.outcome,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use observer_common::record::{
        Direction, Endpoint, FlowRecord, Outcomes, Protocol, Reason, Scope, Timestamp, Verdict,
        Workload,
    };

    use super::{Metrics, OVERFLOW, SeriesLimits};

    fn record(dst_workload: &str, scope: Scope, port: u16, outcomes: Outcomes) -> FlowRecord {
        let unexpected = scope == Scope::External;
        FlowRecord {
            schema: 1,
            node: "n".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count: outcomes.total(),
            outcomes,
            pre_existing: false,
            first_seen: Timestamp(SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(SystemTime::UNIX_EPOCH),
            netns: 1,
            process: None,
            src: Endpoint {
                namespace: Some("shop".into()),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                component: Some("web".into()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                namespace: (!unexpected).then(|| "shop".into()),
                workload: (!unexpected).then(|| Workload {
                    kind: "Deployment".into(),
                    name: dst_workload.into(),
                }),
                port: Some(port),
                scope: Some(scope),
                ..Default::default()
            },
            verdict: Some(if unexpected {
                Verdict::Unexpected
            } else {
                Verdict::Expected
            }),
            reason: unexpected.then_some(Reason::UnknownDestination),
            rule: None,
            model: None,
        }
    }

    /// (labels, value) of every sample of `family` in the exposition.
    fn samples(text: &str, family: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
            .map(|rest| {
                let (labels, value) = rest.rsplit_once("} ").expect("sample");
                (labels.to_owned(), value.parse().expect("value"))
            })
            .collect()
    }

    fn total(s: &[(String, f64)]) -> f64 {
        s.iter().map(|(_, v)| v).sum()
    }

    fn overflowed(s: &[(String, f64)]) -> f64 {
        let mark = format!("src_workload=\"{OVERFLOW}\"");
        s.iter()
            .filter(|(l, _)| l.contains(&mark))
            .map(|(_, v)| v)
            .sum()
    }

    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn the_text_format_names_counters_with_their_suffix() {
        let om = "# HELP observer_flow_records Records.\n# TYPE observer_flow_records counter\nobserver_flow_records_total 3\n# HELP observer_ready Ready.\n# TYPE observer_ready gauge\nobserver_ready 1\n# EOF\n";
        assert_eq!(
            super::openmetrics_to_text(om),
            "# HELP observer_flow_records_total Records.\n# TYPE observer_flow_records_total counter\nobserver_flow_records_total 3\n# HELP observer_ready Ready.\n# TYPE observer_ready gauge\nobserver_ready 1\n"
        );
    }

    const SERIES_OVERFLOW: &str = "observer_agent_losses_total{kind=\"series_overflow\"}";

    #[test]
    fn thousands_of_destinations_stay_under_the_cap_and_every_overflowed_connection_is_counted() {
        let m = Metrics::with_limits(SeriesLimits {
            max_series: 100,
            ttl: Duration::from_secs(3600),
        });
        let now = Instant::now();
        // 3000 unexpected external flows on distinct ports, each one established and one
        // refused connection: three series each (one connection series, two outcome series).
        for port in 1..=3000 {
            let o = Outcomes {
                established: 1,
                refused: 1,
                ..Default::default()
            };
            m.observe_record_at(&record("", Scope::External, port, o), now);
        }
        // 2000 expected flows to distinct workloads, three connections each.
        for i in 0..2000 {
            let o = Outcomes {
                established: 3,
                ..Default::default()
            };
            m.observe_record_at(&record(&format!("db-{i}"), Scope::Cluster, 5432, o), now);
        }
        let text = m.encode();
        let conns = samples(&text, "observer_connections_total");
        let unexp = samples(&text, "observer_unexpected_connections_total");
        // Flows 1..=33 take 99 series, flow 34 the 100th (its connection series); its two
        // outcome series and everything after go to the overflow series: one for unexpected
        // external connections, one per outcome, one for expected cluster connections.
        assert_eq!(conns.len() - 2, 34);
        assert_eq!(unexp.len() - 2, 66);
        assert_eq!(sample(&text, "observer_flow_series "), 104.0);
        assert_eq!(total(&conns), 6000.0 + 6000.0);
        assert_eq!(total(&unexp), 6000.0);
        // Past the cap: flow 34's two outcome connections, the 2966 later unexpected flows'
        // two connections, and every expected connection (2000 × 3).
        let lost = 2.0 + 2966.0 * 2.0 + 6000.0;
        assert_eq!(sample(&text, SERIES_OVERFLOW), lost);
        assert_eq!(overflowed(&conns), 2966.0 * 2.0 + 6000.0);
        assert_eq!(overflowed(&unexp), 2.0 + 2966.0 * 2.0);
        for (labels, _) in conns.iter().filter(|(l, _)| l.contains(OVERFLOW)) {
            assert!(
                labels.contains("dst_port=\"_overflow\"")
                    && labels.contains("dst_workload=\"_overflow\"")
                    && labels.contains("direction=\"egress\""),
                "{labels}"
            );
        }
        let external = conns
            .iter()
            .find(|(l, _)| l.contains(OVERFLOW) && l.contains("dst_scope=\"external\""))
            .expect("external overflow series");
        assert!(
            external.0.contains("verdict=\"unexpected\"")
                && external.0.contains("reason=\"unknown-destination\""),
            "{}",
            external.0
        );
    }

    #[test]
    fn existing_series_keep_counting_past_the_cap() {
        let m = Metrics::with_limits(SeriesLimits {
            max_series: 2,
            ttl: Duration::from_secs(3600),
        });
        let now = Instant::now();
        let one = || Outcomes {
            established: 1,
            ..Default::default()
        };
        for _ in 0..5 {
            for w in ["a", "b", "c"] {
                m.observe_record_at(&record(w, Scope::Cluster, 80, one()), now);
            }
        }
        let text = m.encode();
        let conns = samples(&text, "observer_connections_total");
        let value = |w: &str| {
            conns
                .iter()
                .find(|(l, _)| l.contains(&format!("dst_workload=\"{w}\"")))
                .map(|(_, v)| *v)
        };
        assert_eq!(
            (value("a"), value("b"), value("c")),
            (Some(5.0), Some(5.0), None)
        );
        assert_eq!(overflowed(&conns), 5.0);
        assert_eq!(sample(&text, SERIES_OVERFLOW), 5.0);
    }

    #[test]
    fn quiet_series_expire_after_the_ttl_and_free_room_under_the_cap() {
        let ttl = Duration::from_secs(60);
        let m = Metrics::with_limits(SeriesLimits { max_series: 3, ttl });
        let t0 = Instant::now();
        let one = || Outcomes {
            established: 1,
            ..Default::default()
        };
        for w in ["a", "b", "c"] {
            m.observe_record_at(&record(w, Scope::Cluster, 80, one()), t0);
        }
        // "c" is seen again half-way: it stays; "a" and "b" expire.
        m.observe_record_at(
            &record("c", Scope::Cluster, 80, one()),
            t0 + Duration::from_secs(30),
        );
        m.observe_record_at(
            &record("d", Scope::Cluster, 80, one()),
            t0 + Duration::from_secs(61),
        );
        m.observe_record_at(
            &record("e", Scope::Cluster, 80, one()),
            t0 + Duration::from_secs(62),
        );
        m.expire_series_at(t0 + Duration::from_secs(62));
        let text = m.encode_without_expiry();
        let conns = samples(&text, "observer_connections_total");
        let workloads: Vec<&str> = conns
            .iter()
            .map(|(l, _)| {
                l.split("dst_workload=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(workloads.len(), 3, "{text}");
        for w in ["c", "d", "e"] {
            assert!(workloads.contains(&w), "{workloads:?}");
        }
        assert_eq!(sample(&text, "observer_flow_series_expired_total"), 2.0);
        assert_eq!(sample(&text, SERIES_OVERFLOW), 0.0);
        assert_eq!(sample(&text, "observer_flow_series "), 3.0);
    }

    #[test]
    fn held_series_count_exactly_as_label_lookups_do() {
        // Two agents fed the same records: one looks labels up for every record, the other
        // holds each flow's series; with a tight cap, overflow and expiry on the way.
        let limits = SeriesLimits {
            max_series: 4,
            ttl: Duration::from_secs(60),
        };
        let (looked_up, held) = (Metrics::with_limits(limits), Metrics::with_limits(limits));
        let mut series: Vec<super::FlowSeries> = vec![Default::default(); 6];
        let t0 = Instant::now();
        let outcomes = |n: u64| Outcomes {
            established: n,
            refused: n % 2,
            ..Default::default()
        };
        let flows = ["a", "b", "c", "d", "e", "f"];
        for step in 0..40u64 {
            let now = t0 + Duration::from_secs(step * 13);
            for (i, w) in flows.iter().enumerate() {
                // Two groups of flows take turns every 78 s (past the TTL), each flow now and
                // then within its group's turn.
                let turn = (step / 6 + i as u64).is_multiple_of(2);
                if !turn || !(step + i as u64).is_multiple_of(i as u64 % 3 + 1) {
                    continue;
                }
                let scope = if i % 2 == 0 {
                    Scope::External
                } else {
                    Scope::Cluster
                };
                let r = record(w, scope, 80, outcomes(step % 3 + 1));
                looked_up.observe_record_at(&r, now);
                held.observe_series_at(
                    &super::connection_labels(&r),
                    r.count,
                    &r.outcomes,
                    &mut series[i],
                    now,
                );
            }
            // Families list their series in hash order: compare the sets of lines.
            let lines = |m: &Metrics| {
                let mut l: Vec<String> = m
                    .encode_without_expiry()
                    .lines()
                    .map(str::to_owned)
                    .collect();
                l.sort();
                l
            };
            assert_eq!(lines(&looked_up), lines(&held), "step {step}");
        }
        let text = held.encode_without_expiry();
        assert!(sample(&text, "observer_flow_series_expired_total") > 0.0);
        assert!(sample(&text, SERIES_OVERFLOW) > 0.0);
    }
}
