//! The agent's Prometheus metrics (OpenMetrics text on `/metrics`).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabels {
    /// Where the count was lost: `ring_full`, `flow_map_full`, `socket_map_full`, ...
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub direction: &'static str,
    pub outcome: &'static str,
    pub dst_scope: &'static str,
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
pub struct BuildLabels {
    pub version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Every count the kernel program could not record, by cause (see `observer_common::loss`).
    pub kernel_losses: Family<LossLabels, Counter>,
    /// Connections recorded, by direction, outcome and destination scope.
    pub connections: Family<ConnectionLabels, Counter>,
    /// Runs of the kernel program the kernel skipped (re-entered on a CPU): possible lost counts.
    pub kernel_recursion_misses: Counter,
    /// The kernel's own statistics of the program (run time only while kernel.bpf_stats_enabled=1).
    pub kernel_program_runs: Counter,
    pub kernel_program_run_time_ns: Counter,
    pub flow_records: Counter,
    pub flow_log_write_errors: Counter,
    pub new_flow_hints: Counter,
    pub map_scans: Counter,
    pub idle_flows_deleted: Counter,
    pub tracked_flows: Gauge,
    pub ready: Gauge,
    pub architecture_reloads: Family<ReloadLabels, Counter>,
    pub architecture_info: Family<ModelLabels, Gauge>,
    reloads_seen: std::sync::Mutex<(u64, u64)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("observer");
        let m = Metrics {
            kernel_losses: Family::default(),
            connections: Family::default(),
            kernel_recursion_misses: Counter::default(),
            kernel_program_runs: Counter::default(),
            kernel_program_run_time_ns: Counter::default(),
            flow_records: Counter::default(),
            flow_log_write_errors: Counter::default(),
            new_flow_hints: Counter::default(),
            map_scans: Counter::default(),
            idle_flows_deleted: Counter::default(),
            tracked_flows: Gauge::default(),
            ready: Gauge::default(),
            architecture_reloads: Family::default(),
            architecture_info: Family::default(),
            reloads_seen: std::sync::Mutex::new((0, 0)),
            registry: Registry::default(),
        };
        registry.register(
            "kernel_losses",
            "Counts the kernel program could not record, by cause (ring_full loses only a hint: the agent rescans)",
            m.kernel_losses.clone(),
        );
        registry.register(
            "connections",
            "TCP connections recorded",
            m.connections.clone(),
        );
        registry.register(
            "flow_records",
            "Records written to the flow log",
            m.flow_records.clone(),
        );
        registry.register(
            "flow_log_write_errors",
            "Records that could not be written to the flow log",
            m.flow_log_write_errors.clone(),
        );
        registry.register(
            "new_flow_hints",
            "New-flow records read from the kernel ring buffer",
            m.new_flow_hints.clone(),
        );
        registry.register(
            "flow_map_scans",
            "Full scans of the kernel flow map",
            m.map_scans.clone(),
        );
        registry.register(
            "idle_flows_deleted",
            "Idle flows removed from the kernel flow map after being reported",
            m.idle_flows_deleted.clone(),
        );
        registry.register(
            "tracked_flows",
            "Flows in the kernel flow map",
            m.tracked_flows.clone(),
        );
        registry.register(
            "ready",
            "1 when the kernel program is attached and flows are being recorded",
            m.ready.clone(),
        );
        registry.register(
            "architecture_reloads",
            "Architecture file reloads: success put a new model in force, failure kept the previous one",
            m.architecture_reloads.clone(),
        );
        registry.register(
            "architecture",
            "The architecture model in force (value 1)",
            m.architecture_info.clone(),
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
        registry.register("build", "Build information", build_info);
        for name in observer_common::loss::NAMES {
            // Present from the start at 0, so alerts and `increase()` see the first loss.
            m.kernel_losses
                .get_or_create(&LossLabels {
                    kind: name.to_owned(),
                })
                .inc_by(0);
        }
        Metrics { registry, ..m }
    }

    /// Mirrors the reload counters and the model in force.
    pub fn observe_model(
        &self,
        model: &crate::architecture::Architecture,
        stats: &crate::architecture::ReloadStats,
    ) {
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
