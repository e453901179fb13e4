//! End-to-end attribution: real network namespaces as pods, the real kernel program, the real
//! agent binary, a Kubernetes index from an inventory file or from the test API server
//! (`observer_tests::apiserver`, which kube-rs's real watcher runs against), and an architecture
//! per test. Every record of the test's hosts is compared whole: both ends' namespace, pod,
//! workload, Service, component and scope, the verdict with its rule or reason, and the count.
//!
//! The agent sees the whole machine; each test judges only the records of its own hosts (by
//! network namespace) and the metrics its own hosts move. Its pod and Service ranges are its
//! lab's own subnet and a Service /24 derived from it, so other traffic on the machine never falls
//! inside them.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use observer::architecture::Architecture;
use observer_common::record::{Endpoint, FlowRecord};
use observer_tests::{
    Agent, Host, Lab,
    apiserver::{ApiServer, Kind},
    netpeer, of_netns, peer, serve, sh,
};
use serde_json::{Value, json};

const HASH: &str = "6f7d8c9b5";
const NS: &str = "shop";
/// Generous for a loaded 2-core machine; records normally arrive within a poll interval.
const SETTLE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Addresses, files and objects

/// The addresses a test uses, derived from its lab's unique /24.
struct Net {
    /// The lab's /24: the pods' range.
    pods: String,
    /// A Service range of the test's own, outside every lab subnet.
    services: String,
    cluster_ip: String,
    named_cluster_ip: String,
    /// An address for the root namespace on the lab bridge (the node's own address).
    node_ip: Ipv4Addr,
}

fn net(lab: &Lab) -> Net {
    let [_, a, b, _] = lab.hosts[0].ip4.octets();
    // Lab subnets are 10.100-199.*; service ranges 10.200-239.* never overlap them (nor the
    // demo's 10.244.0.0/16).
    let x = 200 + a % 40;
    Net {
        pods: format!("10.{a}.{b}.0/24"),
        services: format!("10.{x}.{b}.0/24"),
        cluster_ip: format!("10.{x}.{b}.10"),
        named_cluster_ip: format!("10.{x}.{b}.11"),
        node_ip: Ipv4Addr::new(10, a, b, 250),
    }
}

/// The test's files (architecture, inventory, kubeconfig, flow logs), removed on drop.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().expect("temp dir"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.path().join(name);
        fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// A `kind: List` as `kubectl get pods,services,endpointslices -A -o yaml` prints it.
    fn inventory(&self, items: &[Value]) -> PathBuf {
        let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": items});
        self.write(
            "inventory.yaml",
            &serde_yaml_ng::to_string(&list).expect("inventory yaml"),
        )
    }

    fn architecture(&self, name: &str, body: &str) -> PathBuf {
        self.write(
            "architecture.yaml",
            &format!("apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: {name}\n{body}"),
        )
    }

    /// A kubeconfig for the test API server (plain HTTP, no credentials).
    fn kubeconfig(&self, server: &ApiServer) -> PathBuf {
        self.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
                 current-context: test\nusers:\n- name: test\n  user: {{}}\n",
                server.url()
            ),
        )
    }
}

static UIDS: AtomicU32 = AtomicU32::new(1);

fn uid() -> String {
    format!(
        "0b5e7e57-{:04x}-4000-8000-{:012x}",
        std::process::id() % 0xffff,
        UIDS.fetch_add(1, Ordering::SeqCst)
    )
}

fn pod_name(deployment: &str, suffix: &str) -> String {
    format!("{deployment}-{HASH}-{suffix}")
}

/// A running pod of Deployment `deployment` (owned by its ReplicaSet `<deployment>-<hash>`) at
/// `ip` on `node`, with container port 8080 named `http`.
fn pod(deployment: &str, suffix: &str, ip: Ipv4Addr, node: &str, host_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": NS, "name": pod_name(deployment, suffix), "uid": uid(),
            "labels": {"app.kubernetes.io/name": deployment, "pod-template-hash": HASH},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-{HASH}"), "uid": format!("rs-{deployment}"),
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1",
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}})
}

/// A pod of this node (`test-node`, whose address in these tests is a documentation address).
fn local_pod(deployment: &str, ip: Ipv4Addr) -> Value {
    pod(deployment, "a", ip, "test-node", "192.0.2.1")
}

/// A ClusterIP Service selecting `app.kubernetes.io/name: <app>`, `port` to `target_port`.
fn service(name: &str, cluster_ip: &str, app: &str, port: u16, target_port: Value) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": NS, "name": name, "uid": uid()},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app.kubernetes.io/name": app},
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}});
    v["spec"]["ports"][0]["targetPort"] = target_port;
    v
}

/// The Service's EndpointSlice listing `ips` on `port` (`http`).
fn endpoint_slice(service: &str, ips: &[Ipv4Addr], port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": NS, "name": format!("{service}-x7k2p"), "uid": uid(),
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip.to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

// ---------------------------------------------------------------------------------------------
// Records as one line each

fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn opt(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

fn endpoint(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_string(),
        _ => "-".into(),
    };
    let workload = e
        .workload
        .as_ref()
        .map_or("-".into(), |w| format!("{}/{}", w.kind, w.name));
    format!(
        "{addr} {}/{} {workload} svc={} comp={} {}",
        opt(e.namespace.as_deref()),
        opt(e.pod.as_deref()),
        opt(e.service.as_deref()),
        opt(e.component.as_deref()),
        e.scope.map_or("-".into(), |s| wire(&s))
    )
}

/// `direction src -> dst : verdict rule-or-reason`, everything the test judges but the counts.
fn describe(r: &FlowRecord) -> String {
    let judged = match (r.verdict, r.reason, r.rule.as_deref()) {
        (Some(v), Some(reason), _) => format!("{} {}", wire(&v), reason.name()),
        (Some(v), None, rule) => format!("{} {}", wire(&v), opt(rule)),
        (None, ..) => "unjudged".into(),
    };
    format!(
        "{} {} -> {} : {judged}",
        wire(&r.direction),
        endpoint(&r.src),
        endpoint(&r.dst)
    )
}

/// Connections per described flow.
fn tally<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(describe(r)).or_insert(0) += r.count;
    }
    m
}

fn sum(records: &[&FlowRecord]) -> u64 {
    records.iter().map(|r| r.count).sum()
}

fn expect(lines: &[(String, u64)]) -> BTreeMap<String, u64> {
    lines.iter().cloned().collect()
}

/// Runs `netpeer connect` from `host` and requires every connection to be established.
fn connect(host: &Host, addr: &str, n: u64) {
    let (out, _) = peer(host, &["connect", addr, &n.to_string()]);
    assert_eq!(out, json!({"established": n}), "{addr} from {}", host.netns);
}

/// Waits until `sample` satisfies `done`; returns its value.
fn wait_metric(agent: &Agent, sample: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = agent.metric(sample);
        if done(v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {sample} (now {v})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const LEFT: &str = "observer_ingress_left_to_source_node_total";
const UNATTRIBUTED: &str = "observer_agent_losses_total{kind=\"unattributed\"}";
const HELD: &str = "observer_held_records";

/// The agent's flags for a test: its model, ranges and index.
fn agent_args(arch: &Path, n: &Net, index: &[&str], extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--architecture".into(),
        arch.display().to_string(),
        "--pod-cidr".into(),
        n.pods.clone(),
        "--service-cidr".into(),
        n.services.clone(),
    ];
    v.extend(index.iter().map(ToString::to_string));
    v.extend(extra.iter().map(ToString::to_string));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The test API server on its own runtime, so that the tests stay plain blocking code.
struct Api {
    server: ApiServer,
    rt: tokio::runtime::Runtime,
}

impl Api {
    /// `running: false` reserves the port only: an API server that is not there yet.
    fn new(running: bool) -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(async {
                if running {
                    ApiServer::start().await
                } else {
                    ApiServer::reserve().await
                }
            })
            .expect("test API server");
        Api { server, rt }
    }

    fn apply(&self, objects: &[Value]) {
        for o in objects {
            self.server.apply(o.clone()).expect("apply");
        }
    }

    fn stop(&self) {
        self.rt.block_on(self.server.stop());
    }

    fn restart(&self) {
        self.rt.block_on(self.server.restart()).expect("restart");
    }
}

/// The records of `host`'s namespace, waiting until they sum to `n` connections.
fn wait_count(agent: &Agent, host: &Host, n: u64) -> Vec<FlowRecord> {
    let ns = host.netns_inode();
    agent.wait_for(SETTLE, &format!("{n} connections of {}", host.netns), |r| {
        sum(&of_netns(r, ns)) == n
    })
}

fn mine(records: &[FlowRecord], host: &Host) -> Vec<FlowRecord> {
    of_netns(records, host.netns_inode())
        .into_iter()
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: a ClusterIP through kube-proxy's DNAT, and the backend pod directly

#[test]
fn a_cluster_ip_and_its_backend_pod_name_the_same_service_and_component() {
    let lab = Lab::new(2);
    let (front, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    // The rule names the target port only: a connection to the Service port matches through
    // the Service's targetPort.
    let arch = files.architecture(
        "attrib-service",
        "components:\n  - {name: front, namespace: shop}\n  - {name: web, namespace: shop}\n\
         flows:\n  - {id: front-to-web, from: front, to: web, ports: [8080]}\n",
    );
    let inventory = files.inventory(&[
        local_pod("front", front.ip4),
        local_pod("web", web.ip4),
        service("web", &n.cluster_ip, "web", 80, json!(8080)),
        endpoint_slice("web", &[web.ip4], 8080),
        // The same pods behind a Service whose targetPort names the container port.
        service("web-named", &n.named_cluster_ip, "web", 81, json!("http")),
        endpoint_slice("web-named", &[web.ip4], 8080),
    ]);
    // kube-proxy's iptables mode, in the client's namespace: the socket keeps the ClusterIP,
    // packets go to the pod.
    front.sh("ip", &["route", "add", &n.services, "dev", "eth0"]);
    for (cluster_ip, port) in [(&n.cluster_ip, "80"), (&n.named_cluster_ip, "81")] {
        front.sh(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                cluster_ip,
                "-p",
                "tcp",
                "--dport",
                port,
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{}:8080", web.ip4),
            ],
        );
    }
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--inventory", &inventory.display().to_string()],
        &[],
    );
    let agent = Agent::start(&strs(&args));

    connect(front, &format!("{}:80", n.cluster_ip), 3);
    connect(front, &format!("{}:8080", web.ip4), 2);
    connect(front, &format!("{}:81", n.named_cluster_ip), 4);
    wait_count(&agent, front, 9);
    // All reached the web pod, whose agent (this one) leaves them to the client's node.
    wait_metric(&agent, LEFT, |v| v >= 9.0);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(agent.metric(LEFT), 9.0);
    let records = agent.stop();

    let f = format!(
        "{} shop/{} Deployment/front svc=- comp=front cluster",
        front.ip4,
        pod_name("front", "a")
    );
    let web_pod = pod_name("web", "a");
    assert_eq!(
        tally(&mine(&records, front)),
        expect(&[
            (
                format!(
                    "egress {f} -> {}:80 shop/- Deployment/web svc=web comp=web cluster : expected front-to-web",
                    n.cluster_ip
                ),
                3
            ),
            (
                format!(
                    "egress {f} -> {}:8080 shop/{web_pod} Deployment/web svc=web comp=web cluster : expected front-to-web",
                    web.ip4
                ),
                2
            ),
            (
                format!(
                    "egress {f} -> {}:81 shop/- Deployment/web svc=web-named comp=web cluster : expected front-to-web",
                    n.named_cluster_ip
                ),
                4
            ),
        ])
    );
    assert_eq!(
        tally(&mine(&records, web)),
        BTreeMap::new(),
        "ingress from pods is left to their node"
    );
}

// ---------------------------------------------------------------------------------------------
// 3: a pod IP reused by a new pod

const TWO_WEBS: &str = "components:\n  - {name: front, namespace: shop}\n  - {name: web-v1, namespace: shop}\n  - {name: web-v2, namespace: shop}\n\
    flows:\n  - {id: to-v1, from: front, to: web-v1, ports: [8080]}\n  - {id: to-v2, from: front, to: web-v2, ports: [8080]}\n";

/// The record line of `front` -> `web` pod of deployment `deployment`.
fn front_to(front: &Host, web: &Host, deployment: &str, rule: &str) -> String {
    format!(
        "egress {} shop/{} Deployment/front svc=- comp=front cluster -> {}:8080 shop/{} Deployment/{deployment} svc=- comp={deployment} cluster : expected {rule}",
        front.ip4,
        pod_name("front", "a"),
        web.ip4,
        pod_name(deployment, "a"),
    )
}

#[test]
fn a_pod_ip_reused_by_a_new_pod_names_the_new_pod() {
    let lab = Lab::new(2);
    let (front, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture("attrib-reuse", TWO_WEBS);
    let api = Api::new(true);
    api.apply(&[local_pod("front", front.ip4), local_pod("web-v1", web.ip4)]);
    let kubeconfig = files.kubeconfig(&api.server);
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--kubeconfig", &kubeconfig.display().to_string()],
        &[],
    );
    let agent = Agent::start(&strs(&args));
    assert_eq!(agent.get("/readyz"), (200, "ready: capturing\n".into()));

    connect(front, &format!("{}:8080", web.ip4), 2);
    wait_count(&agent, front, 2);
    // Pod A goes, pod B comes with the same address and other labels.
    assert!(api.server.delete(Kind::Pod, NS, &pod_name("web-v1", "a")));
    api.apply(&[local_pod("web-v2", web.ip4)]);
    // One connection at a time until the agent has seen the change (milliseconds, normally):
    // each one's record is waited for, so each record is one known batch.
    let mut total = 2;
    let mut polls = 0;
    let deadline = Instant::now() + SETTLE;
    loop {
        connect(front, &format!("{}:8080", web.ip4), 1);
        total += 1;
        polls += 1;
        let records = wait_count(&agent, front, total);
        let last = mine(&records, front).pop().expect("a record");
        if last.dst.pod.as_deref() == Some(pod_name("web-v2", "a").as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the new pod never showed");
        std::thread::sleep(Duration::from_millis(200));
    }
    connect(front, &format!("{}:8080", web.ip4), 3);
    wait_count(&agent, front, total + 3);
    let records = mine(&agent.stop(), front);

    // Every record before the change names A, every one after it B.
    let pods: Vec<&str> = records.iter().map(|r| opt(r.dst.pod.as_deref())).collect();
    let first_b = pods
        .iter()
        .position(|p| p.contains("web-v2"))
        .expect("B named");
    assert!(
        pods[..first_b].iter().all(|p| p.contains("web-v1")),
        "{pods:?}"
    );
    assert!(
        pods[first_b..].iter().all(|p| p.contains("web-v2")),
        "{pods:?}"
    );
    assert_eq!(
        tally(&records),
        expect(&[
            (front_to(front, web, "web-v1", "to-v1"), 2 + polls - 1),
            (front_to(front, web, "web-v2", "to-v2"), 1 + 3),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// 4: no API server at start

#[test]
fn without_the_api_server_the_agent_counts_but_is_not_ready_until_the_first_sync() {
    let lab = Lab::new(2);
    let (front, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture("attrib-absent", TWO_WEBS);
    let api = Api::new(false);
    api.apply(&[local_pod("front", front.ip4), local_pod("web-v1", web.ip4)]);
    let kubeconfig = files.kubeconfig(&api.server);
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--kubeconfig", &kubeconfig.display().to_string()],
        &["--hold", "60s"],
    );
    let agent = Agent::spawn(&strs(&args));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = agent.get("/readyz");
        if body.contains("waiting for the first sync") {
            assert_eq!(status, 503, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never waited for the sync: {status} {body:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Already counting: the connections are counted and held for the index.
    connect(front, &format!("{}:8080", web.ip4), 3);
    wait_metric(&agent, HELD, |v| v >= 1.0);
    wait_metric(&agent, LEFT, |v| v == 3.0);
    assert_eq!(sum(&of_netns(&agent.records(), front.netns_inode())), 0);
    let (status, body) = agent.get("/readyz");
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: waiting for the first sync of the Kubernetes index\n"
        )
    );
    assert_eq!(agent.metric("observer_ready"), 0.0);

    api.restart();
    let up = Instant::now();
    let body = agent.wait_ready(Duration::from_secs(10));
    assert_eq!(body, "ready: capturing\n");
    let records = mine(&wait_count(&agent, front, 3), front);
    assert!(up.elapsed() < Duration::from_secs(10), "{:?}", up.elapsed());
    assert_eq!(
        tally(&records),
        expect(&[(front_to(front, web, "web-v1", "to-v1"), 3)])
    );
    assert_eq!(agent.metric(HELD), 0.0);
    assert_eq!(agent.metric(UNATTRIBUTED), 0.0);
    assert_eq!(agent.metric("observer_ready"), 1.0);
    agent.stop();
}

// ---------------------------------------------------------------------------------------------
// 5: the API server killed and restarted mid-run

#[test]
fn an_api_server_restart_leaves_the_agent_ready_then_resynced_within_ten_seconds() {
    let lab = Lab::new(2);
    let (front, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture("attrib-restart", TWO_WEBS);
    let api = Api::new(true);
    api.apply(&[local_pod("front", front.ip4), local_pod("web-v1", web.ip4)]);
    let kubeconfig = files.kubeconfig(&api.server);
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--kubeconfig", &kubeconfig.display().to_string()],
        &[],
    );
    let mut agent = Agent::start(&strs(&args));
    connect(front, &format!("{}:8080", web.ip4), 1);
    wait_count(&agent, front, 1);

    api.stop();
    // Ready throughout; stale once the watches notice.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        if body.contains("index stale") {
            break;
        }
        assert!(Instant::now() < deadline, "never stale: {body:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.metric("observer_index_stale"), 1.0);
    // The cluster changes while the API server is away (etcd outlives it).
    assert!(api.server.delete(Kind::Pod, NS, &pod_name("web-v1", "a")));
    api.server
        .apply(local_pod("web-v2", web.ip4))
        .expect("apply");
    // Long enough for the watchers' backoff to reach its cap; still ready and alive.
    let outage = Instant::now() + Duration::from_secs(4);
    while Instant::now() < outage {
        let (status, body) = agent.get("/readyz");
        assert_eq!(
            (status, body.as_str()),
            (
                200,
                "ready: capturing; index stale (lost the API server watch, retrying)\n"
            )
        );
        assert!(agent.running(), "the agent died:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    api.restart();
    let back = Instant::now();
    loop {
        let (status, body) = agent.get("/readyz");
        assert_eq!(status, 200, "{body}");
        if body == "ready: capturing\n" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "no resync within 10 s of the restart: {body:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.metric("observer_index_stale"), 0.0);
    connect(front, &format!("{}:8080", web.ip4), 2);
    wait_count(&agent, front, 3);
    let records = mine(&agent.stop(), front);
    assert_eq!(
        tally(&records),
        expect(&[
            (front_to(front, web, "web-v1", "to-v1"), 1),
            (front_to(front, web, "web-v2", "to-v2"), 2),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// 6: the node-scope table

/// An address of the root namespace on the lab bridge, so that host processes reach the lab
/// hosts (and only them: the address is inside the lab's own /24). Removed on drop.
struct BridgeAddress {
    bridge: String,
    cidr: String,
}

impl BridgeAddress {
    fn add(lab: &Lab, ip: Ipv4Addr) -> BridgeAddress {
        let cidr = format!("{ip}/24");
        sh("ip", &["addr", "add", &cidr, "dev", &lab.bridge]);
        BridgeAddress {
            bridge: lab.bridge.clone(),
            cidr,
        }
    }
}

impl Drop for BridgeAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &self.cidr, "dev", &self.bridge])
            .status();
    }
}

#[test]
fn each_row_of_the_node_scope_table() {
    let lab = Lab::new(5);
    let [front, web, other, node_b, outside] = [0, 1, 2, 3, 4].map(|i| &lab.hosts[i]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture(
        "attrib-scope",
        &format!(
            "components:\n  - {{name: front, namespace: shop}}\n  - {{name: web, namespace: shop}}\n  - {{name: other, namespace: shop}}\n\
             externals:\n  - {{name: outside, cidrs: [{}/32]}}\n\
             flows:\n  - {{id: front-to-web, from: front, to: web, ports: [8080]}}\n  - {{id: front-to-outside, from: front, to: outside, ports: [9000]}}\n\
             \x20 - {{id: node-to-web, from: node, to: web, ports: [8080]}}\n  - {{id: other-to-web, from: other, to: web, ports: [8080]}}\n\
             \x20 - {{id: outside-to-web, from: outside, to: web, ports: [8080]}}\n",
            outside.ip4
        ),
    );
    // front and web run here; other runs on node-b, whose address is node_b's.
    let inventory = files.inventory(&[
        local_pod("front", front.ip4),
        local_pod("web", web.ip4),
        pod("other", "a", other.ip4, "node-b", &node_b.ip4.to_string()),
    ]);
    let _bridge = BridgeAddress::add(&lab, n.node_ip);
    let _srv = serve(web, "0.0.0.0:8080");
    let _srv_out = serve(outside, "0.0.0.0:9000");
    // The pod range is the three pods' addresses: node_b and outside lie outside it.
    let pod_cidrs: Vec<String> = [front, web, other]
        .iter()
        .flat_map(|h| ["--pod-cidr".to_owned(), format!("{}/32", h.ip4)])
        .collect();
    let mut args = vec![
        "--architecture".to_owned(),
        arch.display().to_string(),
        "--inventory".into(),
        inventory.display().to_string(),
        "--service-cidr".into(),
        n.services.clone(),
        "--node-ip".into(),
        n.node_ip.to_string(),
        "--hold".into(),
        "1s".into(),
    ];
    args.extend(pod_cidrs);
    let agent = Agent::start(&strs(&args));

    let to_web = format!("{}:8080", web.ip4);
    connect(front, &to_web, 2);
    connect(front, &format!("{}:9000", outside.ip4), 1);
    // A host process in the root namespace (kubelet's probes, a host-network pod).
    let out = Command::new(netpeer())
        .args(["connect", &to_web, "3"])
        .output()
        .expect("netpeer in the root namespace");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json"),
        json!({"established": 3})
    );
    connect(other, &to_web, 4);
    connect(node_b, &to_web, 5);
    connect(outside, &to_web, 6);

    for (h, count) in [(front, 3), (web, 6), (other, 4), (node_b, 5), (outside, 6)] {
        wait_count(&agent, h, count);
    }
    let root = fs::metadata("/proc/self/ns/net").expect("root netns").ino() as u32;
    let from_root = |r: &[FlowRecord]| -> Vec<FlowRecord> {
        r.iter()
            .filter(|r| r.netns == root && r.dst.ip == Some(web.ip4.into()))
            .cloned()
            .collect()
    };
    agent.wait_for(SETTLE, "3 host-process connections", |r| {
        from_root(r).iter().map(|r| r.count).sum::<u64>() == 3
    });
    // Accepted on this machine from in-cluster sources: by web from front 2, the host 3,
    // other 4 and node-b 5; by the outside host (which lives here too) from front 1.
    wait_metric(&agent, LEFT, |v| v >= 15.0);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(agent.metric(LEFT), 15.0);
    // The outside host lives on this machine too: its connect comes from a namespace that is
    // not the node's, at an address outside the pod ranges, so it is scoped by that address
    // (external) and named by the model's external; nothing waits for the index.
    assert_eq!(agent.metric(UNATTRIBUTED), 0.0);
    let records = agent.stop();

    let web_end = format!(
        "{to_web} shop/{} Deployment/web svc=- comp=web cluster",
        pod_name("web", "a")
    );
    let front_end = format!(
        "{} shop/{} Deployment/front svc=- comp=front cluster",
        front.ip4,
        pod_name("front", "a")
    );
    assert_eq!(
        tally(&mine(&records, front)),
        expect(&[
            (
                format!("egress {front_end} -> {web_end} : expected front-to-web"),
                2
            ),
            (
                format!(
                    "egress {front_end} -> {}:9000 -/- - svc=- comp=outside external : expected front-to-outside",
                    outside.ip4
                ),
                1
            ),
        ]),
        "pod on this node -> anything: egress"
    );
    assert_eq!(
        tally(&from_root(&records)),
        expect(&[(
            format!(
                "egress {} -/- - svc=- comp=node node -> {web_end} : expected node-to-web",
                n.node_ip
            ),
            3
        )]),
        "host process on this node: egress from node"
    );
    assert_eq!(
        tally(&mine(&records, web)),
        expect(&[(
            format!(
                "ingress {} -/- - svc=- comp=outside external -> {web_end} : expected outside-to-web",
                outside.ip4
            ),
            6
        )]),
        "only the ingress from outside the cluster is reported here"
    );
    // What the other hosts opened is egress of theirs, reported by whichever agent sees it
    // (here, this one).
    assert_eq!(
        tally(&mine(&records, other)),
        expect(&[(
            format!(
                "egress {} shop/{} Deployment/other svc=- comp=other cluster -> {web_end} : expected other-to-web",
                other.ip4,
                pod_name("other", "a")
            ),
            4
        )])
    );
    assert_eq!(
        tally(&mine(&records, node_b)),
        expect(&[(
            format!(
                "egress {} -/- - svc=- comp=node node -> {web_end} : expected node-to-web",
                node_b.ip4
            ),
            5
        )])
    );
    assert_eq!(
        tally(&mine(&records, outside)),
        expect(&[(
            format!(
                "egress {} -/- - svc=- comp=outside external -> {web_end} : expected outside-to-web",
                outside.ip4
            ),
            6
        )])
    );
}

// ---------------------------------------------------------------------------------------------
// 7: late attribution

const LATE: &str = "components:\n  - {name: late, namespace: shop}\n  - {name: web, namespace: shop}\n\
    flows:\n  - {id: late-to-web, from: late, to: web, ports: [8080]}\n";

#[test]
fn a_flow_from_a_pod_the_index_learns_late_is_held_then_attributed() {
    let lab = Lab::new(2);
    let (late, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture("attrib-late", LATE);
    let api = Api::new(true);
    api.apply(&[local_pod("web", web.ip4)]);
    let kubeconfig = files.kubeconfig(&api.server);
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--kubeconfig", &kubeconfig.display().to_string()],
        &[],
    );
    let agent = Agent::start(&strs(&args));

    connect(late, &format!("{}:8080", web.ip4), 2);
    let connected = Instant::now();
    wait_metric(&agent, HELD, |v| v >= 1.0);
    std::thread::sleep(Duration::from_secs(2).saturating_sub(connected.elapsed()));
    assert_eq!(sum(&of_netns(&agent.records(), late.netns_inode())), 0);
    api.apply(&[local_pod("late", late.ip4)]);
    let records = mine(&wait_count(&agent, late, 2), late);
    assert_eq!(
        tally(&records),
        expect(&[(
            format!(
                "egress {} shop/{} Deployment/late svc=- comp=late cluster -> {}:8080 shop/{} Deployment/web svc=- comp=web cluster : expected late-to-web",
                late.ip4,
                pod_name("late", "a"),
                web.ip4,
                pod_name("web", "a")
            ),
            2
        )])
    );
    assert_eq!(agent.metric(UNATTRIBUTED), 0.0);
    assert_eq!(agent.metric(HELD), 0.0);
    agent.stop();
}

#[test]
fn a_flow_from_a_pod_never_known_is_written_unknown_after_the_hold_and_counted() {
    let lab = Lab::new(2);
    let (late, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture("attrib-never", LATE);
    let inventory = files.inventory(&[local_pod("web", web.ip4)]);
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--inventory", &inventory.display().to_string()],
        &["--hold", "1s"],
    );
    let agent = Agent::start(&strs(&args));

    let start = Instant::now();
    connect(late, &format!("{}:8080", web.ip4), 3);
    let records = mine(&wait_count(&agent, late, 3), late);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "written before the hold ended"
    );
    assert_eq!(
        tally(&records),
        expect(&[(
            format!(
                "egress {} -/- - svc=- comp=- cluster -> {}:8080 shop/{} Deployment/web svc=- comp=web cluster : unexpected unknown-source",
                late.ip4,
                web.ip4,
                pod_name("web", "a")
            ),
            3
        )])
    );
    // The connect half only: the accept half, left to the source's node, is no loss of ours.
    assert_eq!(agent.metric(UNATTRIBUTED), 3.0);
    assert_eq!(agent.metric(LEFT), 3.0);
    agent.stop();
}

// ---------------------------------------------------------------------------------------------
// 8: observer check on a recorded flow log

/// Runs `observer check`: (exit code, stdout, stderr).
fn check(arch: &Path, inventory: &Path, flow_log: &Path) -> (i32, String, String) {
    let out = Command::new(observer_tests::observer_bin())
        .args(["check", "--architecture"])
        .arg(arch)
        .arg("--inventory")
        .arg(inventory)
        .arg("--flow-log")
        .arg(flow_log)
        .output()
        .expect("observer check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flow log's lines of the given namespaces, verbatim.
fn lines_of(agent: &Agent, netns: &[u32]) -> String {
    let text = fs::read_to_string(agent.dir.join("flows.jsonl")).expect("flow log");
    let mut out = String::new();
    for line in text.lines() {
        let r: FlowRecord = serde_json::from_str(line).expect("record");
        if netns.contains(&r.netns) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn observer_check_judges_a_recorded_flow_log() {
    let lab = Lab::new(3);
    let (front, web, db) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture(
        "attrib-check",
        "components:\n  - {name: front, namespace: shop}\n  - {name: web, namespace: shop}\n  - {name: db, namespace: shop}\n\
         flows:\n  - {id: front-to-web, from: front, to: web, ports: [8080]}\n",
    );
    let inventory = files.inventory(&[
        local_pod("front", front.ip4),
        local_pod("web", web.ip4),
        local_pod("db", db.ip4),
    ]);
    let _web = serve(web, "0.0.0.0:8080");
    let _db = serve(db, "0.0.0.0:5432");
    let args = agent_args(
        &arch,
        &n,
        &["--inventory", &inventory.display().to_string()],
        &[],
    );
    let agent = Agent::start(&strs(&args));
    let hosts = [front, web, db].map(observer_tests::Host::netns_inode);
    connect(front, &format!("{}:8080", web.ip4), 2);
    wait_count(&agent, front, 2);
    let expected_log = files.write("expected.jsonl", &lines_of(&agent, &hosts));
    // One connection nobody documented.
    connect(front, &format!("{}:5432", db.ip4), 1);
    wait_count(&agent, front, 3);
    let all_log = files.write("all.jsonl", &lines_of(&agent, &hosts));
    agent.stop();

    let hash = Architecture::load(&arch)
        .expect("architecture")
        .hash()
        .to_owned();
    let header = format!(
        "{:<11} {:<26} {:<36} {:<36} {:>6} {:>8}",
        "VERDICT", "RULE/REASON", "SOURCE", "DESTINATION", "PORT", "CONNS"
    );
    let row = |v: &str, why: &str, dst: &str, port: u16, n: u64| {
        format!(
            "{v:<11} {why:<26} {:<36} {dst:<36} {port:>6} {n:>8}",
            "front"
        )
    };

    let (code, stdout, stderr) = check(&arch, &inventory, &expected_log);
    assert_eq!(
        (code, stdout, stderr),
        (
            0,
            format!(
                "{header}\n{}\n2 connections judged against attrib-check ({hash}): 0 unexpected\n",
                row("expected", "front-to-web", "web", 8080, 2)
            ),
            String::new()
        )
    );

    let (code, stdout, stderr) = check(&arch, &inventory, &all_log);
    assert_eq!(
        (code, stdout, stderr),
        (
            1,
            format!(
                "{header}\n{}\n{}\n3 connections judged against attrib-check ({hash}): 1 unexpected\n",
                row("UNEXPECTED", "undocumented-flow", "db", 5432, 1),
                row("expected", "front-to-web", "web", 8080, 2)
            ),
            String::new()
        )
    );

    let good = fs::read_to_string(&all_log).expect("log");
    let bad_line = good.lines().count() + 1;
    let corrupt = files.write("corrupt.jsonl", &format!("{good}{{\"schema\": 1, oops\n"));
    let (code, stdout, stderr) = check(&arch, &inventory, &corrupt);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "observer check: {}:{bad_line}: not a flow record:",
            corrupt.display()
        )),
        "{stderr}"
    );

    let missing = files.0.path().join("missing.jsonl");
    let (code, stdout, stderr) = check(&arch, &inventory, &missing);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "observer check: cannot read flow log {}: No such file or directory",
            missing.display()
        )),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9: port-forward

/// cgroup2 directories of this test under the cgroup2 mount (found in /proc/self/mounts). On
/// drop, every process still in them goes back to the root cgroup and they are removed, deepest
/// first.
struct Cgroups {
    mount: PathBuf,
    base: PathBuf,
}

impl Cgroups {
    fn new() -> Cgroups {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
        let mount = observer::cgroups::cgroup2_mount(&mounts).expect("a cgroup2 mount");
        static N: AtomicU32 = AtomicU32::new(0);
        let base = mount.join(format!(
            "observer-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&base).unwrap_or_else(|e| panic!("mkdir {}: {e}", base.display()));
        Cgroups { mount, base }
    }

    /// Creates `rel` (and its parents) under the test's directory; returns it and its cgroup id.
    fn dir(&self, rel: &str) -> (PathBuf, u64) {
        let p = self.base.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        let id = fs::metadata(&p).expect("cgroup").ino();
        (p, id)
    }

    fn remove(&self, dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    self.remove(&e.path());
                }
            }
        }
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let _ = fs::write(self.mount.join("cgroup.procs"), pid);
        }
        let _ = fs::remove_dir(dir);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove(&self.base.clone());
    }
}

/// `netpeer ARGS` in `host`'s namespace, started in cgroup `cgroup` (the shell moves itself
/// there before it becomes netpeer).
fn peer_in_cgroup(host: &Host, cgroup: &Path, args: &[&str]) -> Value {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} {}",
        cgroup.display(),
        host.netns,
        netpeer().display(),
        args.join(" ")
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("netpeer json")
}

#[test]
fn a_loopback_connection_into_a_pod_from_outside_every_pod_is_a_port_forward() {
    let lab = Lab::new(2);
    let (front, web) = (&lab.hosts[0], &lab.hosts[1]);
    let n = net(&lab);
    let files = Files::new();
    let arch = files.architecture(
        "attrib-forward",
        "components:\n  - {name: front, namespace: shop}\n  - {name: web, namespace: shop}\n\
         flows:\n  - {id: front-to-web, from: front, to: web, ports: [8080]}\n\
         \x20 - {id: forward-to-web, from: front, to: web, ports: [8080], via: port-forward}\n",
    );
    let web_pod = local_pod("web", web.ip4);
    let web_uid = web_pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let inventory = files.inventory(&[local_pod("front", front.ip4), web_pod]);
    // The container runtime's cgroup (no pod in its path) and a container of the web pod.
    let cgroups = Cgroups::new();
    let (runtime, runtime_id) = cgroups.dir("runtime");
    let (container, container_id) = cgroups.dir(&format!("kubepods/pod{web_uid}/c1"));
    let _srv = serve(web, "0.0.0.0:8080");
    let args = agent_args(
        &arch,
        &n,
        &["--inventory", &inventory.display().to_string()],
        &[],
    );
    let agent = Agent::start(&strs(&args));

    // An ordinary connection into the pod first: the agent learns whose namespace it is.
    connect(front, &format!("{}:8080", web.ip4), 1);
    wait_count(&agent, front, 1);
    wait_metric(&agent, LEFT, |v| v == 1.0);
    assert_eq!(
        peer_in_cgroup(web, &runtime, &["connect", "127.0.0.1:8080", "2"]),
        json!({"established": 2})
    );
    assert_eq!(
        peer_in_cgroup(web, &container, &["connect", "127.0.0.1:8080", "3"]),
        json!({"established": 3})
    );
    let records = mine(&wait_count(&agent, web, 5), web);
    agent.stop();
    drop(cgroups);

    let pod_end = format!(
        "shop/{} Deployment/web svc=- comp=web local",
        pod_name("web", "a")
    );
    assert_eq!(
        tally(&records),
        expect(&[
            (
                format!(
                    "egress 127.0.0.1 -/- - svc=- comp=- local -> 127.0.0.1:8080 {pod_end} : expected forward-to-web"
                ),
                2
            ),
            (
                format!("egress 127.0.0.1 {pod_end} -> 127.0.0.1:8080 {pod_end} : expected local"),
                3
            ),
        ])
    );
    for r in &records {
        let cgroup = r.process.as_ref().expect("process").cgroup_id;
        let expected = if r.rule.as_deref() == Some("local") {
            container_id
        } else {
            runtime_id
        };
        assert_eq!(cgroup, expected, "{}", describe(r));
    }
}
