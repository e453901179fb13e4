//! Agent pipeline throughput without the kernel: kernel readings (flow key and cumulative
//! counters, as the agent reads them from the flow map) go through what `observer run` does with
//! each of them — delta (tracker), record, attribution through the Kubernetes index, verdict,
//! metrics and the flow-log line — on one thread. Run by `cargo xtask bench`:
//!
//!   pipeline --architecture FILE --inventory FILE [--events N] [--flows N]
//!
//! prints one JSON line: events, wall seconds, thread CPU seconds, events per second per core.
#![forbid(unsafe_code)]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use observer::{
    architecture::{Architecture, ModelHandle},
    attribution::Attributor,
    capture::tracker::Tracker,
    inventory::{IndexHandle, NodeAddresses, offline},
    judge,
    metrics::Metrics,
    names::HostNames,
    run::flow_record,
    scope::Scoper,
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

/// A deterministic mix of flows a node sees: pods to Services (most), pods to pods, pods to
/// the internet, and accepted connections from outside.
fn flows(n: usize, pods: &[[u8; 4]], services: &[Endpoint]) -> Vec<FlowKey> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let src = pods[next() as usize % pods.len()];
            let (direction, local, remote, port) = match i % 10 {
                0..=5 => {
                    let (ip, port) = services[next() as usize % services.len()];
                    (DIRECTION_CONNECT, src, ip, port)
                }
                6 | 7 => (
                    DIRECTION_CONNECT,
                    src,
                    pods[next() as usize % pods.len()],
                    8080,
                ),
                8 => (DIRECTION_CONNECT, src, [20, 190, 160, (i % 250) as u8], 443),
                _ => (DIRECTION_ACCEPT, src, [198, 51, 100, (i % 250) as u8], 8443),
            };
            FlowKey {
                cgroup_id: 10_000 + (next() % 5_000),
                netns: 4_026_532_000 + (next() % 10_000) as u32,
                server_port: port,
                family: FAMILY_V4,
                direction,
                local_addr: addr16(local),
                remote_addr: addr16(remote),
            }
        })
        .collect()
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
    let text = std::fs::read_to_string(&inventory).expect("inventory");
    let (pods, services) = endpoints(&text);
    assert!(!pods.is_empty() && !services.is_empty(), "empty inventory");
    let keys = flows(n_flows, &pods, &services);
    let scoper = Scoper {
        pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
        node_ips: Default::default(),
        host_netns: Some(4_026_531_840),
    };
    let names = HostNames::default();
    let metrics = Metrics::new();
    let mut attributor = Attributor::new(scoper.host_netns);
    let mut tracker = Tracker::default();
    let mut counters = vec![FlowCounters::default(); keys.len()];
    let wall0 = SystemTime::now();
    let wall = |ns: u64| Timestamp(wall0 + Duration::from_nanos(ns));
    let mut line = Vec::with_capacity(1024);
    let (mut expected, mut unexpected, mut bytes) = (0u64, 0u64, 0u64);

    let (t0, c0) = (Instant::now(), thread_cpu());
    for e in 0..events {
        let i = e % keys.len();
        // One more connection on this flow since its previous reading.
        let c = &mut counters[i];
        c.outcomes[Outcome::Established as usize] += 1;
        c.last_seen_ns = e as u64;
        let Some(delta) = tracker.observe(keys[i], *c) else {
            continue;
        };
        let mut record = flow_record(
            &keys[i],
            &delta.outcomes,
            &delta.counters,
            false,
            "bench-node",
            &scoper,
            wall,
        );
        // What Agent::finish does per record: the current index, model and names.
        let snapshot = index.snapshot();
        let current = model.current();
        let names = names.clone();
        let attributed = attributor.attribute(&mut record, Some(&snapshot), Some(&current), &names);
        judge::judge(&current, &mut record, attributed.ctx);
        metrics.observe_record(&record);
        line.clear();
        serde_json::to_writer(&mut line, &record).expect("serialise");
        line.push(b'\n');
        bytes += line.len() as u64;
        match record.verdict {
            Some(observer_common::record::Verdict::Expected) => expected += 1,
            _ => unexpected += 1,
        }
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
            "expected": expected,
            "unexpected": unexpected,
            "log_bytes": bytes,
            "wall_seconds": wall_s,
            "cpu_seconds": cpu_s,
            "events_per_second": events as f64 / wall_s,
            "events_per_cpu_second": events as f64 / cpu_s,
        })
    );
}
