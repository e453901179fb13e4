//! The agent's Prometheus metrics (OpenMetrics text on `/metrics`).
//!
//! Labels are at workload level, never pod names, addresses or ephemeral ports; an external
//! destination is labelled by its documented or learned name, else by its scope alone.

use std::sync::Mutex;

use observer_common::{
    Outcome,
    record::{Direction, FlowRecord, Verdict},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::architecture::{Architecture, ReloadStats};
use crate::inventory::InventoryStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    /// Where the count was lost: `ring_full`, `flow_map_full`, `socket_map_full`, ...
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

pub struct Metrics {
    registry: Registry,
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
    pub kernel_program_run_time_ns: Counter,
    pub flow_records: Counter,
    pub new_flow_hints: Counter,
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
        let mut r = Registry::with_prefix("observer");
        let m = Metrics {
            registry: Registry::default(),
            kernel_losses: Family::default(),
            agent_losses: Family::default(),
            connections: Family::default(),
            unexpected: Family::default(),
            kernel_recursion_misses: Counter::default(),
            kernel_program_runs: Counter::default(),
            kernel_program_run_time_ns: Counter::default(),
            flow_records: Counter::default(),
            new_flow_hints: Counter::default(),
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
            "kernel_losses",
            "Counts the kernel program could not record, by cause (ring_full loses only a hint: the agent rescans; start_not_seen is informational)",
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
            "kernel_program_run_time_nanoseconds",
            "Time spent in the kernel program (needs kernel.bpf_stats_enabled=1)",
            m.kernel_program_run_time_ns.clone(),
        );
        r.register(
            "flow_records",
            "Records written to the flow log",
            m.flow_records.clone(),
        );
        r.register(
            "new_flow_hints",
            "New-flow records read from the kernel ring buffer",
            m.new_flow_hints.clone(),
        );
        r.register(
            "flow_map_scans",
            "Full scans of the kernel flow map",
            m.map_scans.clone(),
        );
        r.register(
            "idle_flows_deleted",
            "Idle flows removed from the kernel flow map after being reported",
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

    /// Counts a written record.
    pub fn observe_record(&self, r: &FlowRecord) {
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
        let scope = r.dst.scope.map_or("", |s| s.name());
        let port = r.dst.port.map(|p| p.to_string()).unwrap_or_default();
        let labels = ConnectionLabels {
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
            dst_scope: scope,
            dst_port: port,
            verdict: match r.verdict {
                Some(Verdict::Expected) => "expected",
                Some(Verdict::Unexpected) => "unexpected",
                None => "",
            },
            reason: r.reason.map_or("", |x| x.name()),
        };
        self.connections.get_or_create(&labels).inc_by(r.count);
        if r.verdict == Some(Verdict::Unexpected) {
            for o in Outcome::ALL {
                let n = r.outcomes.get(o);
                if n > 0 {
                    let u = UnexpectedLabels {
                        src_namespace: labels.src_namespace.clone(),
                        src_workload: labels.src_workload.clone(),
                        src_component: labels.src_component.clone(),
                        dst_namespace: labels.dst_namespace.clone(),
                        dst_workload: labels.dst_workload.clone(),
                        dst_component: labels.dst_component.clone(),
                        dst_name: labels.dst_name.clone(),
                        dst_scope: labels.dst_scope,
                        dst_port: labels.dst_port.clone(),
                        reason: labels.reason,
                        outcome: o.name(),
                    };
                    self.unexpected.get_or_create(&u).inc_by(n);
                }
            }
        }
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
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
