//! The real watchers (`run_watchers`, kube-rs's client and watcher) against the test API server,
//! and the offline inventory against the same objects.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use observer::inventory::{
    Attribution, IndexHandle, InventoryStatus, IpOwner, NodeAddresses, ServiceKey,
    index::{KUBE_APISERVER, NODE},
    offline, run_watchers,
};
use observer_common::record::{Scope, Workload};
use observer_tests::{
    apiserver::{ApiServer, Kind},
    eventually, init_tracing,
    objects::{deployment_pod, endpoint_slice, service},
};
use tokio::task::JoinHandle;

/// Generous for a loaded 2-core machine; the index normally follows in milliseconds.
const SETTLE: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn wl(kind: &str, name: &str) -> Option<Workload> {
    Some(Workload {
        kind: kind.into(),
        name: name.into(),
    })
}

/// The agent's inventory side: watchers running into an index.
struct Agent {
    index: IndexHandle,
    status: Arc<InventoryStatus>,
    task: JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn agent(server: &ApiServer) -> Agent {
    let index = IndexHandle::new(NodeAddresses {
        name: Some("node-a".into()),
        ips: vec![ip("192.168.50.10")],
    });
    let status = Arc::new(InventoryStatus::new());
    let client = server.client().expect("client");
    let task = tokio::spawn(run_watchers(client, index.clone(), status.clone()));
    Agent {
        index,
        status,
        task,
    }
}

impl Agent {
    async fn ready(&self) {
        eventually(SETTLE, "every watcher synced", || self.status.ready()).await;
    }

    fn pod_at(&self, addr: &str) -> Option<String> {
        self.index
            .snapshot()
            .pod_by_ip(ip(addr))
            .map(|p| p.name.clone())
    }
}

/// A client pod, the `web` Deployment's two pods behind the `web` Service.
fn seed_shop(server: &ApiServer) {
    for obj in [
        deployment_pod("shop", "front", "c1", "10.244.2.10"),
        deployment_pod("shop", "web", "a", "10.244.1.5"),
        deployment_pod("shop", "web", "b", "10.244.1.6"),
        service("shop", "web", "10.96.0.20", "web"),
        endpoint_slice("shop", "web", &["10.244.1.5", "10.244.1.6"]),
    ] {
        server.apply(obj).expect("apply");
    }
}

#[tokio::test]
async fn cluster_ip_and_backend_pod_ip_give_the_same_service_and_workload() {
    init_tracing();
    let server = ApiServer::start().await.expect("server");
    seed_shop(&server);
    let a = agent(&server);
    a.ready().await;

    let idx = a.index.snapshot();
    let src = idx.attribute(ip("10.244.2.10"), None);
    assert_eq!(src.workload, wl("Deployment", "front"));
    assert_eq!(src.service, None);
    let via_vip = idx.attribute(ip("10.96.0.20"), Some(80));
    let via_pod = idx.attribute(ip("10.244.1.6"), Some(8080));
    for a in [&via_vip, &via_pod] {
        assert_eq!(a.namespace.as_deref(), Some("shop"));
        assert_eq!(a.workload, wl("Deployment", "web"));
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(a.service_port.as_ref().map(|p| p.port), Some(80));
        assert_eq!(a.scope, Some(Scope::Cluster));
    }
    assert_eq!(via_vip.pod, None);
    assert_eq!(via_pod.pod.as_deref(), Some("web-6f7d8c9b5-b"));

    // Live changes follow: a third replica joins the Service.
    server
        .apply(deployment_pod("shop", "web", "c", "10.244.1.7"))
        .expect("apply");
    server
        .apply(endpoint_slice(
            "shop",
            "web",
            &["10.244.1.5", "10.244.1.6", "10.244.1.7"],
        ))
        .expect("apply");
    eventually(SETTLE, "the new replica behind the Service", || {
        let idx = a.index.snapshot();
        idx.service_for_pod_ip_port(ip("10.244.1.7"), 8080)
            .is_some_and(|(s, _)| s.name == "web")
    })
    .await;
    let idx = a.index.snapshot();
    let svc = idx
        .service(&ServiceKey::new("shop", "web"))
        .expect("service");
    assert_eq!(idx.pods_for_service(svc).count(), 3);

    // The watchers list with kube's page size and watch with bookmarks, all namespaces.
    let reqs = server.requests();
    for path in [
        "/api/v1/pods",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ] {
        assert!(
            reqs.iter().any(|r| r == &format!("GET {path}?&limit=500")),
            "no list of {path}: {reqs:?}"
        );
        assert!(
            reqs.iter()
                .any(|r| r.starts_with(&format!("GET {path}?&watch=true"))
                    && r.contains("allowWatchBookmarks=true")),
            "no watch of {path}: {reqs:?}"
        );
    }
    assert!(!a.status.stale());
    assert_eq!(a.status.pods.syncs(), 1);
}

#[tokio::test]
async fn a_reused_pod_ip_belongs_to_the_new_pod_from_its_added_event() {
    init_tracing();
    let server = ApiServer::start().await.expect("server");
    seed_shop(&server);
    let a = agent(&server);
    a.ready().await;
    assert_eq!(a.pod_at("10.244.1.5").as_deref(), Some("web-6f7d8c9b5-a"));

    // The new pod is reported with the address before the old pod's deletion.
    server
        .apply(deployment_pod("shop", "cache", "z", "10.244.1.5"))
        .expect("apply");
    eventually(SETTLE, "the address moves to the new pod", || {
        a.pod_at("10.244.1.5").as_deref() == Some("cache-6f7d8c9b5-z")
    })
    .await;
    assert!(server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-a"));
    eventually(SETTLE, "the old pod's deletion is seen", || {
        a.index.snapshot().stats().pods == 3
    })
    .await;
    assert_eq!(a.pod_at("10.244.1.5").as_deref(), Some("cache-6f7d8c9b5-z"));
    assert_eq!(
        a.index
            .snapshot()
            .attribute(ip("10.244.1.5"), Some(8080))
            .workload,
        wl("Deployment", "cache")
    );
}

/// 410 forces a relist; a pod deleted while the relist is held (so no DELETED event ever
/// reaches the agent) is gone once the relist completes; the agent stays ready but stale
/// meanwhile.
#[tokio::test]
async fn a_pod_deleted_during_a_relist_is_gone_after_it() {
    init_tracing();
    let server = ApiServer::start().await.expect("server");
    server.set_page_size(1);
    seed_shop(&server);
    let a = agent(&server);
    a.ready().await;
    let syncs = a.status.pods.syncs();
    assert_eq!(a.pod_at("10.244.1.6").as_deref(), Some("web-6f7d8c9b5-b"));

    server.hold_lists(Kind::Pod);
    server.expire_history();
    eventually(SETTLE, "the pod watcher relisting", || {
        server.pending_lists(Kind::Pod) == 1
    })
    .await;
    assert!(a.status.pods.stale(), "a watch error after the first sync");
    assert!(
        a.status.ready(),
        "an outage after the first sync is not unready"
    );
    assert_eq!(
        a.pod_at("10.244.1.6").as_deref(),
        Some("web-6f7d8c9b5-b"),
        "the index keeps serving what it knew"
    );

    assert!(server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-b"));
    server
        .apply(deployment_pod("shop", "web", "d", "10.244.1.8"))
        .expect("apply");
    server.unhold_lists(Kind::Pod);
    eventually(SETTLE, "the relist completing", || {
        a.status.pods.syncs() > syncs && !a.status.pods.stale()
    })
    .await;
    assert_eq!(a.pod_at("10.244.1.6"), None);
    assert_eq!(a.pod_at("10.244.1.8").as_deref(), Some("web-6f7d8c9b5-d"));
    assert_eq!(a.pod_at("10.244.1.5").as_deref(), Some("web-6f7d8c9b5-a"));
    assert_eq!(a.index.snapshot().stats().pods, 3);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?&limit=500&continue=")),
        "the relist was paged"
    );
}

/// A deletion between two pages of a relist is not in the relist (pages come from one
/// snapshot) but arrives as the first event of the watch that follows.
#[tokio::test]
async fn a_pod_deleted_between_relist_pages_is_removed_by_the_following_watch() {
    init_tracing();
    let server = ApiServer::start().await.expect("server");
    server.set_page_size(1);
    seed_shop(&server);
    let a = agent(&server);
    a.ready().await;
    let syncs = a.status.pods.syncs();

    server.hold_lists(Kind::Pod);
    server.expire_history();
    eventually(SETTLE, "the first page requested", || {
        server.pending_lists(Kind::Pod) == 1
    })
    .await;
    server.release_lists(Kind::Pod, 1);
    eventually(SETTLE, "the second page requested", || {
        server.pending_lists(Kind::Pod) == 1
            && server
                .requests()
                .iter()
                .filter(|r| r.starts_with("GET /api/v1/pods?&limit=500&continue="))
                .count()
                >= 3
    })
    .await;
    // Pages run front-…, web-a, web-b: web-b is still to come.
    assert!(server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-b"));
    server.unhold_lists(Kind::Pod);
    eventually(SETTLE, "the relist and the deletion after it", || {
        a.status.pods.syncs() > syncs && a.pod_at("10.244.1.6").is_none()
    })
    .await;
    assert_eq!(a.index.snapshot().stats().pods, 2);
}

#[tokio::test]
async fn the_agent_survives_an_api_server_restart_and_resyncs_within_seconds() {
    init_tracing();
    let server = ApiServer::start().await.expect("server");
    seed_shop(&server);
    let a = agent(&server);
    a.ready().await;

    server.stop().await;
    eventually(SETTLE, "every watcher stale", || {
        a.status.watchers().iter().all(|w| w.stale())
    })
    .await;
    assert!(a.status.ready());
    assert_eq!(a.pod_at("10.244.1.5").as_deref(), Some("web-6f7d8c9b5-a"));
    // Meanwhile the cluster changes (etcd outlives the API server).
    assert!(server.delete(Kind::Pod, "shop", "web-6f7d8c9b5-a"));
    server
        .apply(deployment_pod("shop", "web", "e", "10.244.1.9"))
        .expect("apply");
    server
        .apply(endpoint_slice("shop", "web", &["10.244.1.6", "10.244.1.9"]))
        .expect("apply");
    // Long enough for the backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!a.task.is_finished(), "the watchers never give up");

    let back = Instant::now();
    server.restart().await.expect("restart");
    let took = eventually(Duration::from_secs(10), "resync after the restart", || {
        !a.status.stale()
            && a.pod_at("10.244.1.5").is_none()
            && a.pod_at("10.244.1.9").as_deref() == Some("web-6f7d8c9b5-e")
            && a.index
                .snapshot()
                .service_for_pod_ip_port(ip("10.244.1.9"), 8080)
                .is_some()
    })
    .await;
    assert!(took < Duration::from_secs(10), "resynced in {took:?}");
    tracing::info!(
        "resynced {:?} after the API server returned",
        back.elapsed()
    );
    assert_eq!(
        a.index
            .snapshot()
            .attribute(ip("10.96.0.20"), Some(80))
            .workload,
        wl("Deployment", "web")
    );
    assert!(a.status.watchers().iter().all(|w| w.errors() > 0));
}

#[tokio::test]
async fn an_absent_api_server_leaves_the_agent_unready_until_it_appears() {
    init_tracing();
    let server = ApiServer::reserve().await.expect("port");
    seed_shop(&server);
    let a = agent(&server);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.status.ready());
    for w in a.status.watchers() {
        assert!(!w.synced(), "{}", w.kind());
        assert!(
            !w.stale(),
            "{}: never synced, so not stale either",
            w.kind()
        );
        assert!(
            w.errors() >= 2,
            "{}: keeps retrying ({})",
            w.kind(),
            w.errors()
        );
        assert_eq!(w.last_sync_unix_seconds(), 0);
    }
    assert_eq!(
        a.index.snapshot().lookup(ip("10.96.0.20"), 80),
        IpOwner::Unknown
    );

    server.restart().await.expect("start");
    let took = eventually(
        Duration::from_secs(10),
        "ready once the server is up",
        || a.status.ready(),
    )
    .await;
    assert!(took < Duration::from_secs(10));
    assert_eq!(
        a.index
            .snapshot()
            .attribute(ip("10.96.0.20"), Some(80))
            .workload,
        wl("Deployment", "web")
    );
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inventory-trackunit.yaml")
}

fn offline_index() -> IndexHandle {
    let index = IndexHandle::new(NodeAddresses::default());
    let report = offline::load_file(&fixture(), &index).expect("fixture loads");
    assert_eq!(
        (report.pods, report.services, report.endpoint_slices),
        (13, 10, 10)
    );
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    index
}

#[test]
fn the_trackunit_inventory_attributes_every_component() {
    let idx = offline_index().snapshot();
    let check = |addr: &str, port: u16, ns: &str, kind: &str, name: &str, svc: Option<&str>| {
        let a = idx.attribute(ip(addr), Some(port));
        assert_eq!(a.namespace.as_deref(), Some(ns), "{addr}:{port}");
        assert_eq!(a.workload, wl(kind, name), "{addr}:{port}");
        assert_eq!(a.service.as_deref(), svc, "{addr}:{port}");
        a
    };
    let kong = check(
        "10.96.120.10",
        80,
        "kong",
        "Deployment",
        "kong-kong",
        Some("kong-kong-proxy"),
    );
    assert_eq!(
        kong.labels
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("kong")
    );
    assert_eq!(
        kong.service_port.map(|p| p.name),
        Some(Some("kong-proxy".into()))
    );
    check(
        "10.244.0.21",
        8000,
        "kong",
        "Deployment",
        "kong-kong",
        Some("kong-kong-proxy"),
    );
    check(
        "10.96.45.20",
        80,
        "oauth2-proxy",
        "Deployment",
        "oauth2-proxy",
        Some("oauth2-proxy"),
    );
    check(
        "10.96.88.30",
        80,
        "graph-gateway",
        "Deployment",
        "graph-gateway",
        Some("graph-gateway"),
    );
    check(
        "10.96.200.40",
        5672,
        "rabbitmq",
        "StatefulSet",
        "rabbitmq",
        Some("rabbitmq"),
    );
    check(
        "10.96.150.50",
        80,
        "svc-analysis-orchestrator",
        "Deployment",
        "svc-analysis-orchestrator",
        Some("svc-analysis-orchestrator"),
    );
    check(
        "10.96.150.60",
        80,
        "svc-messaging-bridge",
        "Deployment",
        "svc-messaging-bridge",
        Some("svc-messaging-bridge"),
    );
    // Redpanda's Service is headless: clients reach the broker pod, which still names it.
    check(
        "10.244.0.81",
        9093,
        "redpanda",
        "StatefulSet",
        "redpanda",
        Some("redpanda"),
    );
    let dns = check(
        "10.96.0.10",
        53,
        "kube-system",
        "Deployment",
        "coredns",
        Some("kube-dns"),
    );
    assert_eq!(
        dns.labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("kube-dns")
    );
    for (addr, port) in [("10.96.0.1", 443), ("172.18.0.2", 6443)] {
        let a = idx.attribute(ip(addr), Some(port));
        assert_eq!(a.reserved, Some(KUBE_APISERVER), "{addr}:{port}");
    }
    // The node's other ports belong to the node, never to its host-network pods.
    let kubelet = idx.attribute(ip("172.18.0.2"), Some(10250));
    assert_eq!(
        (kubelet.reserved, kubelet.scope, kubelet.pod),
        (Some(NODE), Some(Scope::Node), None)
    );
    let hn: Vec<&str> = idx
        .host_network_pods("trackunit-node-1")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(hn, ["kube-apiserver-trackunit-node-1", "kube-proxy-q7w2c"]);
    assert_eq!(
        idx.attribute(ip("10.244.9.9"), Some(80)),
        Attribution::default()
    );
}

/// Loading the file and watching the same objects from the API give the same answers.
#[tokio::test]
async fn live_watchers_and_the_offline_inventory_agree() {
    init_tracing();
    let offline = offline_index().snapshot();
    let text = std::fs::read_to_string(fixture()).expect("fixture");
    let list: serde_json::Value = serde_yaml_ng::from_str(&text).expect("fixture yaml");
    let server = ApiServer::start().await.expect("server");
    assert_eq!(server.apply_list(&list).expect("apply"), 33);
    let index = IndexHandle::new(NodeAddresses::default());
    let status = Arc::new(InventoryStatus::new());
    let task = tokio::spawn(run_watchers(
        server.client().expect("client"),
        index.clone(),
        status.clone(),
    ));
    eventually(SETTLE, "ready", || status.ready()).await;
    let live = index.snapshot();
    assert_eq!(live.stats(), offline.stats());
    let mut checked = 0;
    for item in list["items"].as_array().expect("items") {
        let addrs: Vec<&str> = match item["kind"].as_str() {
            Some("Pod") => vec![item["status"]["podIP"].as_str().expect("podIP")],
            Some("Service") => vec![item["spec"]["clusterIP"].as_str().expect("clusterIP")],
            _ => continue,
        };
        for addr in addrs.into_iter().filter(|a| *a != "None") {
            for port in [53, 80, 443, 5672, 6443, 8000, 8080, 9093, 10250] {
                assert_eq!(
                    live.attribute(ip(addr), Some(port)),
                    offline.attribute(ip(addr), Some(port)),
                    "{addr}:{port}"
                );
                checked += 1;
            }
            assert_eq!(
                live.attribute(ip(addr), None),
                offline.attribute(ip(addr), None)
            );
        }
    }
    assert_eq!(checked, 21 * 9);
    task.abort();
}
