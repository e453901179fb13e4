//! `observer run`: capture, attribute, judge, record and serve until the duration ends or a
//! signal arrives.
//!
//! This module holds the start-up wiring ([`run`]: the kernel program, the flow log, the
//! `/metrics` server, the inventory, the architecture's reload and the host names), the
//! [`Agent`] that owns them, and its tick (drain, mirror the kernel's loss and program counters,
//! scan, forget idle flows). What a tick does with each reading is in the submodules: the
//! look-ahead [`pipeline`] (with the per-flow [`flowcache`] and [`crate::prefetch`]), record
//! building ([`record`]), DNS naming ([`naming`]) and the [`hold`] queue; what `observer run` is
//! given is in [`options`].

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use observer_common::{FlowCounters, FlowKey, loss, record::Timestamp};
use tokio::{net::TcpListener, signal::unix::SignalKind, time::Instant};

pub mod flowcache;
mod hold;
mod naming;
pub mod options;
pub mod pipeline;
pub mod record;

use self::{
    flowcache::{FlowCache, Slot},
    hold::Held,
    naming::DnsState,
    options::{InventorySource, RunError, RunOptions},
    pipeline::loopback_last,
};
use crate::{
    architecture::{self, ModelHandle, ReloadStats},
    attribution::Attributor,
    capture::{Capture, ProgramStats, tracker::Tracker},
    dns::{DnsCounts, DnsNames},
    flowlog::FlowLog,
    http::{self, Health},
    inventory::{self, IndexHandle, InventoryStatus, NodeAddresses},
    metrics::{LossLabels, Metrics},
    names::HostNames,
    traces::Traces,
};

/// Converts the kernel's CLOCK_MONOTONIC nanoseconds to wall-clock time.
struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    fn now() -> Clock {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Clock {
            wall_at_zero: SystemTime::now() - mono,
        }
    }
    fn wall(&self, mono_ns: u64) -> Timestamp {
        Timestamp(self.wall_at_zero + Duration::from_nanos(mono_ns))
    }
    fn mono_now_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(self.wall_at_zero)
            .unwrap_or_default()
            .as_nanos() as u64
    }
}

/// Everything the agent loop owns.
struct Agent {
    capture: Capture,
    /// Each flow's last reading, and its slot in the flow cache.
    tracker: Tracker<Slot>,
    log: FlowLog,
    health: Arc<Health>,
    opts: RunOptions,
    clock: Clock,
    losses_seen: [u64; loss::COUNT as usize],
    reload_stats: Arc<ReloadStats>,
    stats_seen: ProgramStats,
    /// The flows of the latest drain of the kernel's flow events, reused between ticks.
    drained: Vec<(FlowKey, FlowCounters)>,
    attributor: Attributor,
    index: Option<IndexHandle>,
    names: Arc<Mutex<HostNames>>,
    held: VecDeque<Held>,
    traces: Traces,
    /// What flows' cached attribution, verdict and series share (each flow's own is in its
    /// tracker entry), so that its next records skip them.
    cache: FlowCache,
    /// The JSON line of the record being written (reused).
    line: Vec<u8>,
    /// What the DNS answers pods received say, when DNS capture is on.
    dns: Option<DnsState>,
}

pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let capture = Capture::start(opts.map_sizes, opts.dns.as_ref().map(|d| &d.capture))?;
    let log = FlowLog::open(&opts.flow_log, opts.flow_log_max_bytes).map_err(|source| {
        RunError::FlowLog {
            path: opts.flow_log.clone(),
            source,
        }
    })?;
    let health = Arc::new(Health::with_metrics(Metrics::with_limits(
        opts.series_limits,
    )));
    let listener = TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(|source| RunError::Listen {
            addr: opts.metrics_addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Listen {
        addr: opts.metrics_addr,
        source,
    })?;
    tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");

    let mut tasks = Vec::new();
    let node = NodeAddresses {
        name: Some(opts.node.clone()),
        ips: opts.scoper.node_ips.iter().copied().collect(),
    };
    let index = match &opts.inventory {
        InventorySource::None => None,
        InventorySource::File(path) => {
            let handle = IndexHandle::new(node);
            let report = inventory::offline::load_file(path, &handle)?;
            crate::memory::release_free_heap();
            tracing::info!(?report, "inventory loaded from {}", path.display());
            Some(handle)
        }
        InventorySource::Api { kubeconfig } => {
            let handle = IndexHandle::new(node);
            let client =
                inventory::client_from_kubeconfig_or_incluster(kubeconfig.as_deref()).await?;
            let status = Arc::new(InventoryStatus::new());
            *health
                .inventory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status.clone());
            tasks.push(tokio::spawn(inventory::run_watchers(
                client,
                handle.clone(),
                status,
            )));
            Some(handle)
        }
    };
    tasks.push(tokio::spawn(http::serve(listener, health.clone())));
    let reload_stats = Arc::new(ReloadStats::default());
    if let Some((path, handle)) = &opts.model {
        tasks.push(tokio::spawn(architecture::watch(
            path.clone(),
            handle.clone(),
            reload_stats.clone(),
        )));
    }
    let names = Arc::new(Mutex::new(HostNames::default()));
    if let Some(path) = &opts.hosts_file {
        let loaded = HostNames::load_hosts_file(path).map_err(|source| RunError::HostsFile {
            path: path.clone(),
            source,
        })?;
        names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .merge(&loaded);
    } else if let Some((_, handle)) = &opts.model {
        tasks.push(tokio::spawn(resolve_exact_hosts(
            handle.clone(),
            names.clone(),
        )));
    }

    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let deadline = opts.duration.map(|d| Instant::now() + d);

    let mut agent = Agent {
        capture,
        tracker: Tracker::default(),
        log,
        health: health.clone(),
        clock: Clock::now(),
        losses_seen: [0; loss::COUNT as usize],
        reload_stats,
        stats_seen: ProgramStats::default(),
        drained: Vec::with_capacity(1024),
        attributor: Attributor::new(opts.scoper.host_netns),
        index,
        names,
        held: VecDeque::new(),
        traces: Traces::start(&opts.traces, health.clone()),
        dns: opts.dns.as_ref().map(|d| DnsState {
            names: DnsNames::new(d.max_names, d.grace),
            exported: DnsCounts::default(),
            queries: Tracker::default(),
        }),
        cache: FlowCache::default(),
        line: Vec::with_capacity(1024),
        opts,
    };
    agent.record_preexisting();
    let mut ticker = tokio::time::interval(agent.opts.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_flush = Instant::now() + agent.opts.flush_interval;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            () = sleep_until(deadline) => break,
        }
        let full_scan = Instant::now() >= next_flush;
        agent.tick(full_scan);
        if full_scan {
            next_flush = Instant::now() + agent.opts.flush_interval;
            // Records, lines and batches are short-lived and come from several threads'
            // malloc arenas, whose freed pages glibc keeps; a trim per flush hands them back
            // (about 4 ms per trim with 50,000 flows; 67 instead of 127 MiB resident).
            crate::memory::release_free_heap();
        }
        health.capturing.store(true, Ordering::Relaxed);
    }
    // A last pass so every counted connection reaches the log before the program detaches;
    // records still held are written as they are.
    agent.tick(true);
    agent.release_held(true);
    let _ = agent.log.flush();
    tracing::info!(records = agent.log.records, "flushed; detaching");
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Re-resolves the exact host names of the architecture every minute.
async fn resolve_exact_hosts(model: ModelHandle, names: Arc<Mutex<HostNames>>) {
    loop {
        let hosts: Vec<String> = model.current().exact_hosts().map(str::to_owned).collect();
        let resolved = tokio::task::spawn_blocking(move || {
            HostNames::resolve(hosts.iter().map(String::as_str))
        })
        .await
        .unwrap_or_default();
        *names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = resolved;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// One pass: the kernel's flow events first (so new flows reach the log within a poll
    /// interval), then, every flush interval or after the ring was full, the whole map.
    fn tick(&mut self, mut full_scan: bool) {
        let mut readings = std::mem::take(&mut self.drained);
        readings.clear();
        let created = self.capture.drain(self.clock.mono_now_ns(), &mut readings);
        self.health.metrics.flows_created.inc_by(created as u64);
        // Answers after the flow events, before the flows are named: a pod resolves a name,
        // then connects, and the kernel puts the answer in its ring before the pod can read it.
        // So every answer that a drained connection used is in that ring by now; read before
        // the flow events, one that came in between would be missed.
        self.drain_dns();
        loopback_last(&mut readings);
        // Taken like a scan's readings: a burst of new flows is as many misses.
        self.observe_batch(&readings);
        self.drained = readings;

        let losses = self.capture.losses();
        for (i, &total) in losses.iter().enumerate() {
            let new = total.saturating_sub(self.losses_seen[i]);
            if new > 0 {
                self.health
                    .metrics
                    .kernel_losses
                    .get_or_create(&LossLabels {
                        kind: loss::NAMES[i].to_owned(),
                    })
                    .inc_by(new);
                if i == loss::RING_FULL as usize {
                    // The kernel created flows itself: only a scan of the map finds them.
                    full_scan = true;
                }
            }
        }
        self.losses_seen = losses;
        let stats = self.capture.program_stats();
        let m = &self.health.metrics;
        m.kernel_recursion_misses.inc_by(
            stats
                .recursion_misses
                .saturating_sub(self.stats_seen.recursion_misses),
        );
        m.kernel_program_runs
            .inc_by(stats.run_count.saturating_sub(self.stats_seen.run_count));
        m.kernel_program_run_time.inc_by(
            stats
                .run_time_ns
                .saturating_sub(self.stats_seen.run_time_ns) as f64
                / 1e9,
        );
        self.stats_seen = stats;
        if let Some((_, handle)) = &self.opts.model {
            self.health
                .metrics
                .observe_model(&handle.current(), &self.reload_stats);
        }

        if full_scan {
            let mut readings = Vec::new();
            let entries = self.capture.scan(|k, v| readings.push((k, v)));
            self.health.metrics.map_scans.inc();
            loopback_last(&mut readings);
            self.observe_batch(&readings);
            let idle_before = self
                .clock
                .mono_now_ns()
                .saturating_sub(self.opts.idle_timeout.as_nanos() as u64);
            let idle = self.tracker.idle(idle_before);
            // What the kernel counted after this scan's reading comes back with the delete
            // and is reported before the flow is forgotten; the kernel re-creates the entry
            // if the flow returns.
            let last: Vec<_> = idle
                .iter()
                .filter_map(|key| Some((*key, self.capture.take(key)?)))
                .collect();
            self.observe_batch(&last);
            for key in &idle {
                self.tracker.forget(key);
            }
            self.health
                .metrics
                .idle_flows_deleted
                .inc_by(idle.len() as u64);
            self.health
                .metrics
                .tracked_flows
                .set((entries - idle.len()) as i64);
            self.scan_dns_queries();
        }
        self.release_held(false);
        if let Err(e) = self.log.flush() {
            tracing::warn!("flow log flush failed: {e}");
        }
    }
}
