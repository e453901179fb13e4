//! Agent pipeline throughput without the kernel: kernel readings (flow key and cumulative
//! counters, as the agent reads them from the flow map) go through what `observer run` does with
//! each of them (`Agent::observe`, then `Agent::finish_flow` or `record::emit_cached`) — delta
//! (tracker), record, the flow cache or else attribution through the Kubernetes index and the
//! verdict, metrics, and the flow-log line written to /dev/null — on one thread. Run by
//! `cargo xtask bench`:
//!
//!   pipeline --architecture FILE --inventory FILE [--events N] [--flows N] [--node-pods N]
//!
//! prints one JSON line: events, wall seconds, thread CPU seconds, events per second per core,
//! how many records took the full path, and this process's resident memory.
//!
//! One event is one reading of one flow that found one new connection, so every event makes
//! one record (the worst case for the agent: in `observer run` the kernel adds up a flow's
//! connections between readings, and a reading that finds nothing new costs only the tracker's
//! lookup). The `--flows` flows (50,000 by default) are read round-robin, a pass over all of them
//! at a time taken as `Agent::observe_batch` takes a scan (`pipeline::look_ahead`): each flow's first
//! reading takes the full path (attribution, verdict, series lookup, serde), later ones the flow
//! cache, as in the agent while the index, the model and the host names stay the same. The
//! flows' local ends are `--node-pods` pods of the inventory (every pod when 0, the default),
//! each with its own network namespace and two cgroups, as on a node.
#![forbid(unsafe_code)]

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use observer::{
    agent::{
        flowcache::{Epoch, Fate, FlowCache, Slot},
        pipeline::look_ahead,
        record::{emit_cached, flow_record, fresh},
    },
    architecture::{Architecture, ModelHandle},
    attribution::Attributor,
    capture::tracker::Tracker,
    flowlog::FlowLog,
    http::Health,
    inventory::{IndexHandle, NodeAddresses, offline},
    judge,
    metrics::{FlowSeries, connection_labels},
    names::HostNames,
    scope::Scoper,
    traces::{TraceOptions, Traces},
};
use observer_common::{
    DIRECTION_ACCEPT, DIRECTION_CONNECT, FAMILY_V4, FlowCounters, FlowKey, Outcome,
    record::Timestamp,
};
use serde_json::Value;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn v4(ip: &str) -> Option<[u8; 4]> {
    ip.parse::<Ipv4Addr>().ok().map(|a| a.octets())
}

fn addr16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// An IPv4 address and a port.
type Endpoint = ([u8; 4], u16);

/// Pod addresses and (cluster IP, port) of Services, from the inventory file.
fn endpoints(inventory: &str) -> (Vec<[u8; 4]>, Vec<Endpoint>) {
    let doc: Value = serde_json::from_str(inventory).expect("inventory is JSON");
    let items = doc["items"].as_array().expect("a List");
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for item in items {
        match item["kind"].as_str() {
            Some("Pod") => pods.extend(item["status"]["podIP"].as_str().and_then(v4)),
            Some("Service") => {
                let ip = item["spec"]["clusterIP"].as_str().and_then(v4);
                let port = item["spec"]["ports"][0]["port"].as_u64();
                if let (Some(ip), Some(port)) = (ip, port) {
                    services.push((ip, port as u16));
                }
            }
            _ => {}
        }
    }
    (pods, services)
}

/// A deterministic mix of `n` distinct flows a node sees: its `local` pods to Services (most),
/// to any pod, to the internet, and accepted connections from outside. Each local pod has its
/// own network namespace and two containers (cgroups), as on a node: a flow's namespace and
/// cgroup are its pod's.
fn flows(n: usize, local: &[[u8; 4]], pods: &[[u8; 4]], services: &[Endpoint]) -> Vec<FlowKey> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut keys = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0.. {
        if keys.len() == n {
            break;
        }
        // A few local pods make the same flow twice now and then: drawn again.
        assert!(i < 100 * n.max(1), "cannot make {n} distinct flows");
        let pod = next() as usize % local.len();
        let src = local[pod];
        // Outside addresses spread over 20.190.160.0/19 and 198.51.100.0/24.
        let outside = [160 + (i / 2_500 % 32) as u8, (i / 10 % 250) as u8];
        let (direction, remote, port) = match i % 10 {
            0..=5 => {
                let (ip, port) = services[next() as usize % services.len()];
                (DIRECTION_CONNECT, ip, port)
            }
            6 | 7 => (DIRECTION_CONNECT, pods[next() as usize % pods.len()], 8080),
            8 => (DIRECTION_CONNECT, [20, 190, outside[0], outside[1]], 443),
            _ => (DIRECTION_ACCEPT, [198, 51, 100, (i % 250) as u8], 8443),
        };
        let key = FlowKey {
            // Accepted connections carry no cgroup (see FlowKey).
            cgroup_id: if direction == DIRECTION_CONNECT {
                10_000 + 2 * pod as u64 + next() % 2
            } else {
                0
            },
            netns: 4_026_532_000 + pod as u32,
            server_port: port,
            family: FAMILY_V4,
            direction,
            local_addr: addr16(src),
            remote_addr: addr16(remote),
        };
        if seen.insert(key) {
            keys.push(key);
        }
    }
    keys
}

/// `n` pods of `pods` picked evenly over the inventory (its order groups pods by namespace and
/// workload), or all of them when `n` is 0 or more than there are.
fn local_pods(pods: &[[u8; 4]], n: usize) -> Vec<[u8; 4]> {
    if n == 0 || n >= pods.len() {
        return pods.to_vec();
    }
    (0..n).map(|i| pods[i * pods.len() / n]).collect()
}

/// This process's resident set, MiB (`VmRSS`): one thread and no runtime, so not the agent's;
/// the memory scenario of `cargo xtask bench` measures the agent itself.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let architecture = PathBuf::from(arg(&args, "--architecture").expect("--architecture FILE"));
    let inventory = PathBuf::from(arg(&args, "--inventory").expect("--inventory FILE"));
    let events: usize = arg(&args, "--events").map_or(1_000_000, |v| v.parse().expect("N"));
    let n_flows: usize = arg(&args, "--flows").map_or(50_000, |v| v.parse().expect("N"));

    let model = ModelHandle::new(Architecture::load(&architecture).expect("architecture"));
    let index = IndexHandle::new(NodeAddresses {
        name: Some("bench-node".into()),
        ips: Default::default(),
    });
    let report = offline::load_file(&inventory, &index).expect("inventory");
    // As `observer run` does after loading an inventory.
    observer::memory::release_free_heap();
    let rss_inventory = rss_mib();
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    let (pods, services) = endpoints(&text);
    assert!(!pods.is_empty() && !services.is_empty(), "empty inventory");
    // The pods on this node, whose connections its agent records: the first `--node-pods` of a
    // shuffled inventory (every pod when 0).
    let node_pods: usize = arg(&args, "--node-pods").map_or(0, |v| v.parse().expect("N"));
    let local = local_pods(&pods, node_pods);
    let keys = flows(n_flows, &local, &pods, &services);
    let scoper = Scoper {
        pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        node_ips: Default::default(),
        host_netns: Some(4_026_531_840),
    };
    let names = HostNames::default();
    let health = Arc::new(Health::new());
    let metrics = &health.metrics;
    let mut traces = Traces::start(
        &TraceOptions {
            endpoint: None,
            resighting_interval: Duration::from_secs(60),
            queue: 1024,
            node: "bench-node".into(),
        },
        health.clone(),
    );
    let mut log = FlowLog::open(Path::new("/dev/null"), 0).expect("/dev/null");
    let mut attributor = Attributor::new(scoper.host_netns);
    let mut tracker = Tracker::<Slot>::default();
    let mut cache = FlowCache::default();
    let mut counters = vec![FlowCounters::default(); keys.len()];
    let wall0 = SystemTime::now();
    let wall = |ns: u64| Timestamp(wall0 + Duration::from_nanos(ns));
    let mut line = Vec::with_capacity(1024);
    let (mut slow, mut left) = (0u64, 0u64);

    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut readings = Vec::with_capacity(keys.len());
    for pass in (0..events).step_by(keys.len()) {
        // As a scan of the flow map hands them to Agent::observe_batch: every flow once, each
        // with one more connection since its previous reading.
        readings.clear();
        for e in pass..(pass + keys.len()).min(events) {
            let i = e % keys.len();
            let c = &mut counters[i];
            c.outcomes[Outcome::Established as usize] += 1;
            c.last_seen_ns = e as u64;
            readings.push((keys[i], *c));
        }
        // As Agent::observe_batch: the epoch and the time are read once per batch.
        let epoch = Epoch {
            index: Some(index.generation()),
            model: Some(model.generation()),
            names: names.generation(),
        };
        let now = Instant::now();
        look_ahead(
            &mut tracker,
            &readings,
            |tracker| tracker,
            |tracker, key, c| {
                // From here on, what Agent::observe does with a reading.
                let Some((delta, slot)) = tracker.observe(key, c) else {
                    return;
                };
                if let Some(cached) = slot.get(epoch) {
                    if let Some(learned) = &mut cached.netns_pod {
                        attributor.relearn(learned);
                    }
                    let fresh = fresh(&key, &delta.outcomes, &delta.counters, false, wall);
                    match &mut cached.fate {
                        Fate::LeftToSourceNode { .. } => left += 1,
                        Fate::Emit(emitted) => emit_cached(
                            emitted,
                            &fresh,
                            metrics,
                            &mut traces,
                            &mut log,
                            &mut line,
                            now,
                        ),
                    }
                    return;
                }
                let mut record = flow_record(
                    &key,
                    &delta.outcomes,
                    &delta.counters,
                    false,
                    "bench-node",
                    &scoper,
                    wall,
                );
                // Agent::finish_flow (the bench's index knows every address, so nothing is held).
                slow += 1;
                let snapshot = index.snapshot();
                let current = model.current();
                let attributed =
                    attributor.attribute(&mut record, Some(&snapshot), Some(&current), &names);
                let learned = attributor.learned(&record);
                judge::judge(&current, &mut record, attributed.ctx);
                let labels = connection_labels(&record);
                let mut series = FlowSeries::default();
                metrics.observe_series_at(
                    &labels,
                    record.count,
                    &record.outcomes,
                    &mut series,
                    Instant::now(),
                );
                traces.observe(&record);
                line.clear();
                serde_json::to_writer(&mut line, &record).expect("serialise");
                log.write_line(&line).expect("/dev/null");
                if let Some(slot) = tracker.state(&key) {
                    cache.emitted(slot, epoch, &record, &line, labels, series, learned);
                }
            },
        );
    }
    let (wall_s, cpu_s) = (
        t0.elapsed().as_secs_f64(),
        (thread_cpu() - c0).as_secs_f64(),
    );
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "flows": keys.len(),
            "pods": report.pods,
            "services": report.services,
            "rss_mib_inventory_only": rss_inventory,
            "rss_mib_end": rss_mib(),
            "records": log.records,
            "full_path_records": slow,
            "left_to_source_node": left,
            "cache_uncuttable": cache.uncuttable,
            "wall_seconds": wall_s,
            "cpu_seconds": cpu_s,
            "events_per_second": events as f64 / wall_s,
            "events_per_cpu_second": events as f64 / cpu_s,
        })
    );
}
