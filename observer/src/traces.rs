//! Unexpected flows as OpenTelemetry spans, exported over OTLP (HTTP/protobuf).
//!
//! The first sighting of each unexpected flow becomes a span; later records of the same flow
//! become a span again at most once per `--trace-resighting-interval` (the records in between
//! are counted in `observer_traces_suppressed_total`, and their connections are added to the
//! next span's `observer.count`). A flow is the kernel's flow: network namespace, direction,
//! addresses, server port and cgroup.
//!
//! The agent loop never waits for the collector: spans go through a bounded queue
//! (`try_send`) to an export thread; when the queue is full the span is dropped and its
//! connections are counted in `observer_agent_losses_total{kind="export_queue_full"}`. The
//! thread sends batches through the OTLP exporter, which times out on its own
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s); every span ends in
//! `observer_trace_spans_total{result}`.
//!
//! Tracing is off unless an endpoint is configured (`--otlp-endpoint`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), and
//! `OTEL_TRACES_EXPORTER=none` turns it off whatever else is set.

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant, SystemTime},
};

use observer_common::record::{Direction, FlowRecord, Verdict, Workload};
use opentelemetry::{
    InstrumentationScope, KeyValue, Value,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
    trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanExporter, SpanLinks},
};

use crate::http::Health;

/// Spans sent in one export request at most.
const BATCH: usize = 512;

/// How the agent exports traces.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// Base URL of the collector's OTLP/HTTP receiver (`/v1/traces` is appended).
    pub endpoint: Option<String>,
    pub resighting_interval: Duration,
    /// Spans waiting for the export thread, at most.
    pub queue: usize,
    /// `k8s.node.name` of the resource.
    pub node: String,
}

/// Where the spans go, as decided from the options and the `OTEL_*` environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Off(&'static str),
    /// This URL, used as is.
    Url(String),
    /// The exporter reads `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    FromEnv,
}

/// Decides whether and where to export, given `--otlp-endpoint` and an environment lookup.
pub fn target(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Target {
    let set = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none")) {
        return Target::Off("OTEL_TRACES_EXPORTER=none");
    }
    if let Some(base) = endpoint.filter(|e| !e.trim().is_empty()) {
        return Target::Url(format!("{}/v1/traces", base.trim().trim_end_matches('/')));
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return Target::FromEnv;
    }
    Target::Off("no OTLP endpoint configured")
}

/// The resource of every span: `service.name` (`observer` unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` names it), `service.version`, `k8s.node.name`, the SDK's
/// `telemetry.sdk.*`, and `OTEL_RESOURCE_ATTRIBUTES` over all of these.
pub fn resource(node: &str) -> Resource {
    let env = EnvResourceDetector::new().detect();
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Value::from)
        .or_else(|| env.get(&opentelemetry::Key::new("service.name")))
        .unwrap_or_else(|| Value::from("observer"));
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("k8s.node.name", node.to_owned()),
        ])
        .with_detectors(&[
            Box::new(TelemetryResourceDetector),
            Box::new(EnvResourceDetector::new()),
        ])
        .with_attribute(KeyValue::new("service.name", service))
        .build()
}

/// One flow as the kernel counts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlowId {
    netns: u32,
    direction: Direction,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    port: Option<u16>,
    cgroup: u64,
}

impl FlowId {
    fn of(r: &FlowRecord) -> FlowId {
        FlowId {
            netns: r.netns,
            direction: r.direction,
            src: r.src.ip,
            dst: r.dst.ip,
            port: r.dst.port,
            cgroup: r.process.as_ref().map_or(0, |p| p.cgroup_id),
        }
    }
}

/// A flow's rate-limit state: 24 bytes, times as nanoseconds, because the table holds every
/// unexpected flow of the last two intervals (see [`Sightings::flows`]).
struct Seen {
    /// When the last span of the flow was made: ns since [`Sightings::origin`].
    at: u64,
    /// Its end (wall clock), ns since the Unix epoch: the next span starts there.
    until: u64,
    /// Connections since the last span.
    pending: u64,
}

/// What to do with an unexpected record.
#[derive(Debug, PartialEq, Eq)]
pub enum Sighting {
    /// Make a span covering `count` connections from `start`.
    Span {
        first: bool,
        count: u64,
        start: SystemTime,
    },
    Suppressed,
}

/// The per-flow rate limit: a span at the first sighting, then at most one per interval.
pub struct Sightings {
    interval: Duration,
    origin: Instant,
    /// By a keyed 64-bit hash of the flow ([`FlowId`]), not the flow itself: an entry is 32
    /// bytes instead of 96, which with the bench's 50,000 unexpected flows is some 4 MiB of the
    /// agent's memory. Two flows share an entry only if their hashes collide (for 50,000 flows,
    /// about once in 10^10 tables); the random key keeps anyone from colliding them on purpose.
    flows: HashMap<u64, Seen>,
    flow_hash: RandomState,
    last_sweep: Option<Instant>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn since_epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, nanos)
}

impl Sightings {
    pub fn new(interval: Duration) -> Sightings {
        Sightings {
            interval,
            origin: Instant::now(),
            flows: HashMap::new(),
            flow_hash: RandomState::new(),
            last_sweep: None,
        }
    }

    pub fn sight(&mut self, r: &FlowRecord, now: Instant) -> Sighting {
        self.sweep(now);
        let at = nanos(now.saturating_duration_since(self.origin));
        let end = since_epoch(r.last_seen.0);
        let interval = nanos(self.interval);
        let key = self.flow_hash.hash_one(FlowId::of(r));
        match self.flows.get_mut(&key) {
            None => {
                self.flows.insert(
                    key,
                    Seen {
                        at,
                        until: end,
                        pending: 0,
                    },
                );
                Sighting::Span {
                    first: true,
                    count: r.count,
                    start: r.first_seen.0,
                }
            }
            Some(seen) if at.saturating_sub(seen.at) >= interval => {
                let s = Sighting::Span {
                    first: false,
                    count: seen.pending + r.count,
                    start: SystemTime::UNIX_EPOCH + Duration::from_nanos(seen.until.min(end)),
                };
                *seen = Seen {
                    at,
                    until: end,
                    pending: 0,
                };
                s
            }
            Some(seen) => {
                seen.pending += r.count;
                Sighting::Suppressed
            }
        }
    }

    /// Forgets flows with no span for two intervals and no suppressed connection since,
    /// so the table holds only flows seen recently.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval)
        {
            return;
        }
        self.last_sweep = Some(now);
        let at = nanos(now.saturating_duration_since(self.origin));
        let keep = nanos(self.interval.saturating_mul(2));
        self.flows
            .retain(|_, s| s.pending > 0 || at.saturating_sub(s.at) < keep);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// The OpenTelemetry semantic-convention key for a workload kind's name.
fn workload_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => "k8s.deployment.name",
        "StatefulSet" => "k8s.statefulset.name",
        "DaemonSet" => "k8s.daemonset.name",
        "ReplicaSet" => "k8s.replicaset.name",
        "Job" => "k8s.job.name",
        "CronJob" => "k8s.cronjob.name",
        _ => return None,
    })
}

/// The span's attributes. The `k8s.*` attributes describe the source pod (the client), or the
/// destination pod when the source is no pod (a connection accepted from outside).
pub fn attributes(r: &FlowRecord, count: u64, first: bool) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(24);
    let pod_end = if r.src.pod.is_some() || r.dst.pod.is_none() {
        &r.src
    } else {
        &r.dst
    };
    if let Some(ns) = &pod_end.namespace {
        a.push(KeyValue::new("k8s.namespace.name", ns.clone()));
    }
    if let Some(pod) = &pod_end.pod {
        a.push(KeyValue::new("k8s.pod.name", pod.clone()));
    }
    if let Some(Workload { kind, name }) = &pod_end.workload
        && let Some(key) = workload_key(kind)
    {
        a.push(KeyValue::new(key, name.clone()));
    }
    a.push(KeyValue::new("network.transport", "tcp"));
    if let Some(ip) = r.dst.ip.or(r.src.ip) {
        a.push(KeyValue::new(
            "network.type",
            if ip.is_ipv4() { "ipv4" } else { "ipv6" },
        ));
    }
    if let Some(ip) = r.src.ip {
        a.push(KeyValue::new("source.address", ip.to_string()));
    }
    if let Some(ip) = r.dst.ip {
        a.push(KeyValue::new("destination.address", ip.to_string()));
    }
    if let Some(port) = r.dst.port {
        a.push(KeyValue::new("destination.port", i64::from(port)));
    }
    // The server's name when known without a reverse lookup, else its address.
    let server = r
        .dst
        .host
        .clone()
        .or_else(|| {
            r.dst
                .service
                .as_ref()
                .zip(r.dst.namespace.as_ref())
                .map(|(s, ns)| format!("{s}.{ns}.svc"))
        })
        .or_else(|| r.dst.ip.map(|ip| ip.to_string()));
    if let Some(server) = server {
        a.push(KeyValue::new("server.address", server));
    }
    if let Some(port) = r.dst.port {
        a.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(p) = &r.process {
        a.push(KeyValue::new("process.pid", i64::from(p.tgid)));
        a.push(KeyValue::new("process.executable.name", p.comm.clone()));
    }
    let verdict = match r.verdict {
        Some(Verdict::Expected) => "expected",
        Some(Verdict::Unexpected) => "unexpected",
        None => "",
    };
    a.push(KeyValue::new("observer.verdict", verdict));
    if let Some(reason) = r.reason {
        a.push(KeyValue::new("observer.reason", reason.name()));
    }
    a.push(KeyValue::new(
        "observer.direction",
        match r.direction {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        },
    ));
    if let Some(c) = &r.src.component {
        a.push(KeyValue::new("observer.src.component", c.clone()));
    }
    if let Some(c) = &r.dst.component {
        a.push(KeyValue::new("observer.dst.component", c.clone()));
    }
    if let Some(s) = r.dst.scope {
        a.push(KeyValue::new("observer.dst.scope", s.name()));
    }
    if let Some(rule) = &r.rule {
        a.push(KeyValue::new("observer.rule", rule.clone()));
    }
    if let Some(model) = &r.model {
        a.push(KeyValue::new("observer.model", model.clone()));
    }
    a.push(KeyValue::new("observer.count", count as i64));
    a.push(KeyValue::new("observer.first_sighting", first));
    a
}

/// A span ready for the export thread, with the connections it stands for.
struct Pending {
    span: SpanData,
    connections: u64,
}

/// The agent loop's side: rate limit, build spans, hand them to the export thread.
pub struct Traces {
    inner: Option<Inner>,
}

struct Inner {
    sightings: Sightings,
    tx: SyncSender<Pending>,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    health: Arc<Health>,
    /// Closed by the export thread when it ends.
    done: Option<Receiver<()>>,
}

impl Traces {
    pub fn off() -> Traces {
        Traces { inner: None }
    }

    /// Starts the export thread when an endpoint is configured; otherwise tracing is off.
    pub fn start(opts: &TraceOptions, health: Arc<Health>) -> Traces {
        let target = target(opts.endpoint.as_deref(), |k| std::env::var(k).ok());
        let builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        let builder = match &target {
            Target::Off(why) => {
                tracing::info!("traces off: {why}");
                return Traces::off();
            }
            Target::Url(url) => builder.with_endpoint(url.clone()),
            Target::FromEnv => builder,
        };
        let mut exporter = match builder.build() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("traces off: cannot build the OTLP exporter: {e}");
                return Traces::off();
            }
        };
        exporter.set_resource(&resource(&opts.node));
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let (done_tx, done_rx) = sync_channel::<()>(0);
        let thread_health = health.clone();
        let spawned = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                export_loop(exporter, rx, thread_health);
                drop(done_tx);
            });
        if let Err(e) = spawned {
            tracing::warn!("traces off: cannot start the export thread: {e}");
            return Traces::off();
        }
        tracing::info!(?target, "exporting unexpected flows as OTLP traces");
        let mut t = Traces::with_queue(tx, opts.resighting_interval, health);
        if let Some(inner) = &mut t.inner {
            inner.done = Some(done_rx);
        }
        t
    }

    fn with_queue(tx: SyncSender<Pending>, interval: Duration, health: Arc<Health>) -> Traces {
        Traces {
            inner: Some(Inner {
                sightings: Sightings::new(interval),
                tx,
                ids: RandomIdGenerator::default(),
                scope: InstrumentationScope::builder("observer")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
                health,
                done: None,
            }),
        }
    }

    /// Called for every written record; spans only unexpected ones.
    /// Whether spans are exported at all ([`observe`](Self::observe) does nothing otherwise).
    pub fn active(&self) -> bool {
        self.inner.is_some()
    }

    pub fn observe(&mut self, r: &FlowRecord) {
        let Some(inner) = &mut self.inner else {
            return;
        };
        if r.verdict != Some(Verdict::Unexpected) || r.count == 0 {
            return;
        }
        let m = &inner.health.metrics;
        let (first, count, start) = match inner.sightings.sight(r, Instant::now()) {
            Sighting::Suppressed => {
                m.traces_suppressed.inc();
                return;
            }
            Sighting::Span {
                first,
                count,
                start,
            } => (first, count, start),
        };
        let span = SpanData {
            span_context: SpanContext::new(
                inner.ids.new_trace_id(),
                inner.ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed("unexpected flow"),
            start_time: start,
            end_time: r.last_seen.0.max(start),
            attributes: attributes(r, count, first),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: inner.scope.clone(),
        };
        match inner.tx.try_send(Pending {
            span,
            connections: count,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
                m.agent_loss("export_queue_full", p.connections);
                m.span("queue_full", 1);
            }
        }
    }
}

impl Drop for Traces {
    /// Closes the queue and gives the export thread a few seconds to send what is queued, so
    /// the spans of the agent's last records are not lost at shutdown.
    fn drop(&mut self) {
        if let Some(Inner { tx, done, .. }) = self.inner.take() {
            drop(tx);
            if let Some(done) = done {
                let _ = done.recv_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// The export thread: batches of up to `BATCH` spans, one request each, until the agent ends.
#[expect(
    clippy::needless_pass_by_value,
    reason = "the export thread's body: it owns the exporter and the channel until it ends"
)]
fn export_loop(exporter: opentelemetry_otlp::SpanExporter, rx: Receiver<Pending>, h: Arc<Health>) {
    let mut failures = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first.span];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p.span),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match futures::executor::block_on(exporter.export(batch)) {
            Ok(()) => h.metrics.span("exported", n),
            Err(e) => {
                h.metrics.span("failed", n);
                failures += 1;
                // The first failure, then one in a hundred: a dead collector must not flood the log.
                if failures % 100 == 1 {
                    tracing::warn!(failures, "OTLP export of {n} spans failed: {e}");
                }
            }
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        sync::{Arc, mpsc::sync_channel},
        time::{Duration, Instant, SystemTime},
    };

    use observer_common::record::{
        Direction, Endpoint, FlowRecord, Outcomes, Process, Protocol, Reason, Scope, Timestamp,
        Verdict, Workload,
    };
    use opentelemetry::{KeyValue, Value};

    use super::{Sighting, Sightings, Target, Traces, attributes, target};
    use crate::http::Health;

    fn at(ms: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms))
    }

    fn unexpected(count: u64, port: u16) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: "node-a".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count,
            outcomes: Outcomes {
                established: count,
                ..Default::default()
            },
            pre_existing: false,
            first_seen: at(0),
            last_seen: at(500),
            netns: 7,
            process: Some(Process {
                pid: 41,
                tgid: 40,
                comm: "curl".into(),
                cgroup_id: 9,
            }),
            src: Endpoint {
                ip: Some("10.244.1.7".parse().unwrap()),
                namespace: Some("shop".into()),
                pod: Some("web-6f7d8c9b5-x1".into()),
                workload: Some(Workload {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                component: Some("web".into()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                ip: Some("192.0.2.9".parse().unwrap()),
                port: Some(port),
                host: Some("pay.example.com".into()),
                component: Some("payments".into()),
                scope: Some(Scope::External),
                ..Default::default()
            },
            verdict: Some(Verdict::Unexpected),
            reason: Some(Reason::WrongPort),
            rule: None,
            model: Some("sha256:ab".into()),
        }
    }

    #[test]
    fn attributes_follow_the_semantic_conventions() {
        let got = attributes(&unexpected(3, 8443), 3, true);
        let s = |k: &'static str, v: &str| KeyValue::new(k, v.to_owned());
        let want = vec![
            s("k8s.namespace.name", "shop"),
            s("k8s.pod.name", "web-6f7d8c9b5-x1"),
            s("k8s.deployment.name", "web"),
            KeyValue::new("network.transport", "tcp"),
            KeyValue::new("network.type", "ipv4"),
            s("source.address", "10.244.1.7"),
            s("destination.address", "192.0.2.9"),
            KeyValue::new("destination.port", 8443i64),
            s("server.address", "pay.example.com"),
            KeyValue::new("server.port", 8443i64),
            KeyValue::new("process.pid", 40i64),
            s("process.executable.name", "curl"),
            KeyValue::new("observer.verdict", "unexpected"),
            KeyValue::new("observer.reason", "wrong-port"),
            KeyValue::new("observer.direction", "egress"),
            s("observer.src.component", "web"),
            s("observer.dst.component", "payments"),
            KeyValue::new("observer.dst.scope", "external"),
            s("observer.model", "sha256:ab"),
            KeyValue::new("observer.count", 3i64),
            KeyValue::new("observer.first_sighting", true),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_stateful_set_and_an_ipv6_service_destination() {
        let mut r = unexpected(1, 80);
        r.src.workload = Some(Workload {
            kind: "StatefulSet".into(),
            name: "db".into(),
        });
        r.dst = Endpoint {
            ip: Some("fd00::10".parse::<IpAddr>().unwrap()),
            port: Some(80),
            namespace: Some("shop".into()),
            service: Some("api".into()),
            scope: Some(Scope::Cluster),
            ..Default::default()
        };
        let got = attributes(&r, 1, false);
        let get = |k: &str| {
            got.iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(get("k8s.statefulset.name"), Some(Value::from("db")));
        assert_eq!(get("k8s.deployment.name"), None);
        assert_eq!(get("network.type"), Some(Value::from("ipv6")));
        assert_eq!(get("server.address"), Some(Value::from("api.shop.svc")));
        assert_eq!(get("observer.first_sighting"), Some(Value::from(false)));
    }

    #[test]
    fn a_sighting_entry_is_a_hash_and_three_words() {
        // The table holds every unexpected flow of two intervals; its entry size is the
        // agent's memory per such flow (the bench's memory scenario has 50,000).
        assert_eq!(size_of::<(u64, super::Seen)>(), 32);
    }

    #[test]
    fn one_span_per_flow_per_interval_carrying_the_suppressed_connections() {
        let mut s = Sightings::new(Duration::from_secs(600));
        let t0 = Instant::now();
        let r = unexpected(2, 443);
        assert_eq!(
            s.sight(&r, t0),
            Sighting::Span {
                first: true,
                count: 2,
                start: at(0).0
            }
        );
        assert_eq!(
            s.sight(&r, t0 + Duration::from_secs(5)),
            Sighting::Suppressed
        );
        assert_eq!(
            s.sight(&r, t0 + Duration::from_secs(599)),
            Sighting::Suppressed
        );
        // Another port is another flow.
        assert!(matches!(
            s.sight(&unexpected(1, 444), t0 + Duration::from_secs(599)),
            Sighting::Span { first: true, .. }
        ));
        let mut later = unexpected(1, 443);
        later.last_seen = at(700_000);
        assert_eq!(
            s.sight(&later, t0 + Duration::from_secs(600)),
            Sighting::Span {
                first: false,
                count: 2 + 2 + 1,
                start: at(500).0
            }
        );
        assert_eq!(s.len(), 2);
        // Quiet for two intervals: forgotten, so the next record is a first sighting again.
        assert!(matches!(
            s.sight(&later, t0 + Duration::from_secs(1801)),
            Sighting::Span { first: true, .. }
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_endpoint_comes_from_the_flag_or_the_environment_and_none_disables() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            target(Some("http://c:4318/"), env(&[])),
            Target::Url("http://c:4318/v1/traces".into())
        );
        assert_eq!(
            target(None, env(&[])),
            Target::Off("no OTLP endpoint configured")
        );
        assert_eq!(
            target(
                None,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            ),
            Target::FromEnv
        );
        assert_eq!(
            target(
                None,
                env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/x")])
            ),
            Target::FromEnv
        );
        assert_eq!(
            target(
                Some("http://c:4318"),
                env(&[("OTEL_TRACES_EXPORTER", "none")])
            ),
            Target::Off("OTEL_TRACES_EXPORTER=none")
        );
    }

    #[test]
    fn a_full_queue_drops_the_span_and_counts_its_connections() {
        let health = Arc::new(Health::new());
        let (tx, rx) = sync_channel(1);
        let mut t = Traces::with_queue(tx, Duration::from_secs(600), health.clone());
        t.observe(&unexpected(4, 1)); // queued
        t.observe(&unexpected(5, 2)); // queue full
        t.observe(&unexpected(6, 3)); // queue full
        t.observe(&unexpected(7, 1)); // suppressed re-sighting
        let mut expected = unexpected(8, 4);
        expected.verdict = Some(Verdict::Expected);
        expected.reason = None;
        t.observe(&expected); // not traced
        assert_eq!(
            rx.try_iter().map(|p| p.connections).collect::<Vec<_>>(),
            [4]
        );
        let text = health.metrics.encode();
        for sample in [
            "observer_agent_losses_total{kind=\"export_queue_full\"} 11",
            "observer_traces_suppressed_total 1",
            "observer_trace_spans_total{result=\"queue_full\"} 2",
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample} in\n{text}");
        }
    }
}
