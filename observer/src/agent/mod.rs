//! `observer run`: capture, attribute, judge, record and serve until the duration ends or a
//! signal arrives.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime},
};

use observer_common::{
    DnsResponseHead, FlowCounters, FlowKey, IPPROTO_TCP, Outcome, comm_text, loss,
    record::{
        self, Direction, Endpoint, FlowRecord, Outcomes, Process, Protocol, Scope, Timestamp,
    },
};
use tokio::{net::TcpListener, signal::unix::SignalKind, time::Instant};

pub mod flowcache;
pub mod options;

use self::{
    flowcache::{Emitted, Epoch, Fate, FlowCache, Fresh, ProcessRef, Slot},
    options::{IngressMode, InventorySource, RunError, RunOptions},
};
use crate::{
    architecture::{self, ModelHandle, ReloadStats},
    attribution::Attributor,
    capture::{Capture, ProgramStats, preexisting, tracker::Tracker},
    dns::{DnsCounts, DnsNames},
    flowlog::FlowLog,
    http::{self, Health},
    inventory::{self, IndexHandle, InventoryStatus, NodeAddresses},
    judge,
    metrics::{
        ConnectionLabels, DnsResultLabels, FlowSeries, LossLabels, Metrics, connection_labels,
    },
    names::HostNames,
    scope::Scoper,
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

/// A record waiting for the index to learn one of its addresses.
struct Held {
    record: FlowRecord,
    until: Instant,
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

/// The names pods resolved, and the UDP query flows' deltas.
struct DnsState {
    names: DnsNames,
    /// Counts already exported, to export only what each tick adds.
    exported: DnsCounts,
    queries: Tracker,
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

    /// Takes a batch of readings, each group of [`AHEAD`] looked up ahead ([`look_ahead`]).
    fn observe_batch(&mut self, readings: &[(FlowKey, FlowCounters)]) {
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
    fn observe(
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
    fn epoch(&self) -> Epoch {
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
    fn finish(&mut self, record: FlowRecord, held_until: Option<Instant>) {
        self.finish_flow(record, held_until, None);
    }

    /// [`finish`](Self::finish), caching the outcome as that of the flow `key` under the epoch
    /// read before attribution.
    fn finish_flow(
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
    /// Retries held records; writes those whose hold expired (or all, at shutdown).
    fn release_held(&mut self, all: bool) {
        let now = Instant::now();
        let pending: Vec<Held> = self.held.drain(..).collect();
        for h in pending {
            let until = if all { now } else { h.until };
            self.finish(h.record, Some(until));
        }
        self.health.metrics.held.set(self.held.len() as i64);
    }

    fn emit(&mut self, record: &FlowRecord, labels: &ConnectionLabels, series: &mut FlowSeries) {
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

    fn record(
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

    /// Takes the DNS responses the kernel captured since the last tick into the names table.
    fn drain_dns(&mut self) {
        let (Some(capture), Some(dns)) = (self.capture.dns.as_mut(), self.dns.as_mut()) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut no_namespace = 0;
        capture.drain_responses(|head, payload| {
            if head.netns == 0 {
                // The kernel could not read the receiving socket's namespace.
                no_namespace += 1;
                return;
            }
            // Errors are counted by kind inside; a response that names nothing is not used.
            let _ = dns
                .names
                .ingest(head.netns, dns_message(head, payload), now);
        });
        dns.names.expire(now);
        let m = &self.health.metrics.dns;
        let counts = dns.names.counts();
        let was = dns.exported;
        let result = |r| DnsResultLabels { result: r };
        m.responses
            .get_or_create(&result("named"))
            .inc_by(counts.responses - was.responses);
        for (kind, n) in counts.rejected_by_kind() {
            m.responses
                .get_or_create(&result(kind.label()))
                .inc_by(n - was.rejected(kind));
        }
        m.responses
            .get_or_create(&result("no_namespace"))
            .inc_by(no_namespace);
        m.names_evicted.inc_by(counts.evictions - was.evictions);
        m.names_expired.inc_by(counts.expired - was.expired);
        m.names.set(dns.names.entries() as i64);
        dns.exported = counts;
    }

    /// Reads the kernel's UDP DNS query flows; each new query since the last reading is a
    /// connection of a UDP flow to port 53, judged like any other.
    fn scan_dns_queries(&mut self) {
        let Some(capture) = self.capture.dns.as_mut() else {
            return;
        };
        let mut readings = Vec::new();
        capture.scan_queries(|k, v| readings.push((k, v)));
        let idle_before = self
            .clock
            .mono_now_ns()
            .saturating_sub(self.opts.idle_timeout.as_nanos() as u64);
        let mut records = Vec::new();
        if let Some(dns) = self.dns.as_mut() {
            for (key, counters) in readings {
                if let Some((delta, ())) = dns.queries.observe(key, counters) {
                    records.push((key, delta.outcomes, counters));
                }
            }
            let idle = dns.queries.idle(idle_before);
            self.health
                .metrics
                .idle_flows_deleted
                .inc_by(idle.len() as u64);
            for key in idle {
                // A query counted after this scan's reading comes back with the delete.
                let last = capture.take_query(&key);
                if let Some((delta, ())) = last.and_then(|last| dns.queries.observe(key, last)) {
                    records.push((key, delta.outcomes, delta.counters));
                }
                dns.queries.forget(&key);
            }
        }
        for (key, outcomes, counters) in records {
            let mut record = self.record(&key, &outcomes, &counters, false);
            record.protocol = Protocol::Udp;
            self.finish(record, None);
        }
    }

    /// Records, once, the connections that were open before the program was attached.
    fn record_preexisting(&mut self) {
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

/// An accepted connection this agent does not report: with `--ingress external`, one whose source
/// is a pod or node of the cluster (its own node reports it as egress) or a loopback peer (whose
/// connect this agent reports itself, as egress with scope `local`).
fn left_to_source_node(mode: IngressMode, r: &FlowRecord) -> bool {
    r.direction == Direction::Ingress
        && mode == IngressMode::External
        && r.src.scope != Some(Scope::External)
}

/// The DNS message in a captured payload: over TCP it follows a 2-byte length (a segment that
/// does not hold the whole message gives a cut message, which the parser counts as truncated).
fn dns_message<'a>(head: &DnsResponseHead, payload: &'a [u8]) -> &'a [u8] {
    if head.transport != IPPROTO_TCP {
        return payload;
    }
    match payload {
        [hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            rest.get(..len).unwrap_or(rest)
        }
        _ => &[],
    }
}

/// The name a pod's DNS answers give `ip`: the first of its names (the question first, then the
/// CNAME chain) that names an external of the model, else the question.
fn dns_host(
    names: &DnsNames,
    model: Option<&architecture::Architecture>,
    netns: u32,
    ip: std::net::IpAddr,
    now: std::time::Instant,
) -> Option<String> {
    let documented = model.and_then(|m| {
        names
            .names_for(netns, ip, now)
            .find(|n| m.external_for_host(n).is_some())
    });
    documented
        .or_else(|| names.name_for(netns, ip, now))
        .map(str::to_owned)
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

/// Moves the readings of loopback flows behind all others. A loopback flow is named after the
/// pod that owns its network namespace, which the agent learns from that pod's other flows; a
/// pod's first flows often arrive in the same drain as its first loopback connection (a
/// port-forward right after the pod served a request), and the drain's order is the kernel's.
fn loopback_last(readings: &mut [(FlowKey, FlowCounters)]) {
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

/// A held record goes through attribution again from its raw addresses and scopes.
fn strip_attribution(r: FlowRecord) -> FlowRecord {
    // The name from a DNS answer stays: the answer may expire while the record waits.
    let raw = |ep: Endpoint| Endpoint {
        ip: ep.ip,
        port: ep.port,
        scope: ep.scope,
        host: ep.host,
        ..Default::default()
    };
    FlowRecord {
        src: raw(r.src),
        dst: raw(r.dst),
        ..r
    }
}

#[cfg(test)]
mod tests {
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
