//! The index fed with synthetic watcher events: no cluster needed.

use super::*;
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn wl(kind: &str, name: &str) -> Workload {
    Workload {
        kind: kind.into(),
        name: name.into(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// A running pod owned by `owner` (kind, name), with `ips` as status.podIPs.
fn pod(ns: &str, name: &str, uid: &str, ips: &[&str], owner: Option<(&str, &str)>) -> Value {
    let mut meta = json!({"namespace": ns, "name": name, "uid": uid, "resourceVersion": "1",
        "labels": {"app.kubernetes.io/name": name}});
    if let Some((kind, oname)) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": oname,
            "uid": "owner-uid", "controller": true}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"phase": "Running", "hostIP": "192.168.1.10",
            "podIP": ips.first().copied().unwrap_or(""),
            "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()}})
}

fn as_pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("test pod")
}

fn deployment_pod(ns: &str, deploy: &str, suffix: &str, uid: &str, ips: &[&str]) -> Pod {
    let mut v = pod(
        ns,
        &format!("{deploy}-7d9c5b8f4-{suffix}"),
        uid,
        ips,
        Some(("ReplicaSet", &format!("{deploy}-7d9c5b8f4"))),
    );
    v["metadata"]["labels"] =
        json!({"app.kubernetes.io/name": deploy, "pod-template-hash": "7d9c5b8f4"});
    as_pod(v)
}

fn service(ns: &str, name: &str, ips: &[&str], ports: Value, selector: Option<Value>) -> Service {
    let mut spec = json!({"clusterIP": ips[0], "clusterIPs": ips});
    spec["ports"] = ports;
    if let Some(sel) = selector {
        spec["selector"] = sel;
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "uid": format!("svc-{name}"), "resourceVersion": "1"},
        "spec": spec}))
    .expect("test service")
}

fn slice(ns: &str, name: &str, svc: &str, addrs: &[&str], ports: Value) -> EndpointSlice {
    let mut v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "uid": format!("slice-{name}"), "resourceVersion": "1",
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": addrs.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>()});
    v["ports"] = ports;
    serde_json::from_value(v).expect("test slice")
}

fn synced<K>(objs: Vec<K>) -> Vec<Event<K>> {
    let mut v = vec![Event::Init];
    v.extend(objs.into_iter().map(Event::InitApply));
    v.push(Event::InitDone);
    v
}

fn handle() -> IndexHandle {
    IndexHandle::new(NodeAddresses {
        name: Some("node-a".into()),
        ips: vec![ip("192.168.1.10")],
    })
}

fn pod_name(idx: &Index, addr: &str) -> Option<String> {
    idx.pod_by_ip(ip(addr)).map(|p| p.name.clone())
}

#[test]
fn workloads_resolve_from_owner_references() {
    let none = BTreeMap::new();
    let hash = labels(&[("pod-template-hash", "7d9c5b8f4")]);
    let owner = |kind: &str, name: &str, controller: Option<bool>| {
        vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: "u".into(),
                controller,
                block_owner_deletion: None,
            },
        ]
    };
    assert_eq!(
        resolve_workload(
            "web-7d9c5b8f4-x2x",
            &hash,
            &owner("ReplicaSet", "web-7d9c5b8f4", Some(true))
        ),
        wl("Deployment", "web")
    );
    assert_eq!(
        resolve_workload("web-abc", &none, &owner("ReplicaSet", "web", Some(true))),
        wl("ReplicaSet", "web"),
        "a ReplicaSet whose pods lack pod-template-hash is not a Deployment's"
    );
    assert_eq!(
        resolve_workload("x", &hash, &owner("ReplicaSet", "other-rs", Some(true))),
        wl("ReplicaSet", "other-rs"),
        "the hash must be the ReplicaSet name's suffix"
    );
    assert_eq!(
        resolve_workload("db-0", &none, &owner("StatefulSet", "db", Some(true))),
        wl("StatefulSet", "db")
    );
    assert_eq!(
        resolve_workload("agent-x", &none, &owner("DaemonSet", "agent", Some(true))),
        wl("DaemonSet", "agent")
    );
    assert_eq!(
        resolve_workload(
            "backup-28934560-abc",
            &none,
            &owner("Job", "backup-28934560", Some(true))
        ),
        wl("Job", "backup-28934560")
    );
    assert_eq!(resolve_workload("solo", &none, &[]), wl("Pod", "solo"));
    assert_eq!(
        resolve_workload("etcd-node-a", &none, &owner("Node", "node-a", Some(true))),
        wl("Pod", "etcd-node-a"),
        "a static pod's mirror is owned by its Node, which is no workload"
    );
    assert_eq!(
        resolve_workload("p", &none, &owner("Custom", "c", None)),
        wl("Custom", "c"),
        "without a controller reference the first owner counts"
    );
}

#[test]
fn a_job_names_its_cronjob_only_when_the_job_object_says_so() {
    let job = |name: &str, owner: Option<&str>| -> Job {
        let mut meta = json!({"namespace": "ops", "name": name, "uid": format!("job-{name}")});
        if let Some(o) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob",
                "name": o, "uid": "cj", "controller": true}]);
        }
        serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}))
            .expect("test job")
    };
    assert_eq!(
        cronjob_of(&job("backup-28934560", Some("backup"))),
        Some("backup".into())
    );
    assert_eq!(cronjob_of(&job("backup-28934560", None)), None);
    assert_eq!(cronjob_of(&job("backup-manual", Some("backup"))), None);
    assert_eq!(cronjob_of(&job("other-28934560", Some("backup"))), None);

    let h = handle();
    let mut p = pod("ops", "backup-28934560-q8x", "p1", &["10.244.3.3"], None);
    p["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "backup-28934560", "uid": "job-backup-28934560", "controller": true}]);
    h.apply_pods(synced(vec![as_pod(p)]));
    let idx = h.snapshot();
    assert_eq!(
        idx.pod_by_ip(ip("10.244.3.3")).map(|p| p.workload.clone()),
        Some(wl("Job", "backup-28934560"))
    );
    h.apply_jobs(synced(vec![job("backup-28934560", Some("backup"))]));
    let idx = h.snapshot();
    assert_eq!(
        idx.pod_by_ip(ip("10.244.3.3")).map(|p| p.workload.clone()),
        Some(wl("CronJob", "backup"))
    );
}

#[test]
fn every_pod_ip_v4_and_v6_maps_to_the_pod_and_its_workload() {
    let h = handle();
    h.apply_pods(synced(vec![deployment_pod(
        "shop",
        "web",
        "a",
        "u1",
        &["10.244.1.5", "fd00:10:244::5"],
    )]));
    let idx = h.snapshot();
    for addr in ["10.244.1.5", "fd00:10:244::5"] {
        let p = idx.pod_by_ip(ip(addr)).expect("pod by ip");
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "web-7d9c5b8f4-a")
        );
        assert_eq!(p.workload, wl("Deployment", "web"));
        assert_eq!(p.node.as_deref(), Some("node-a"));
        assert_eq!(p.ips, vec![ip("10.244.1.5"), ip("fd00:10:244::5")]);
        assert_eq!(
            p.ports,
            vec![NamedPort {
                name: Some("http".into()),
                port: 8080,
                protocol: "TCP".into()
            }]
        );
        assert!(matches!(idx.lookup(ip(addr), 8080), IpOwner::Pod(q) if q.uid == "u1"));
    }
    assert_eq!(idx.lookup(ip("10.244.9.9"), 80), IpOwner::Unknown);
}

#[test]
fn host_network_pods_never_own_the_node_address() {
    let h = handle();
    let mut hn = pod(
        "kube-system",
        "kube-proxy-x",
        "hn",
        &["192.168.1.10"],
        Some(("DaemonSet", "kube-proxy")),
    );
    hn["spec"]["hostNetwork"] = json!(true);
    let mut other_node = pod(
        "shop",
        "db-0",
        "db0",
        &["10.244.2.7"],
        Some(("StatefulSet", "db")),
    );
    other_node["spec"]["nodeName"] = json!("node-b");
    other_node["status"]["hostIP"] = json!("192.168.1.11");
    h.apply_pods(synced(vec![as_pod(hn), as_pod(other_node)]));
    let idx = h.snapshot();
    assert_eq!(idx.pod_by_ip(ip("192.168.1.10")), None);
    assert_eq!(
        idx.lookup(ip("192.168.1.10"), 10250),
        IpOwner::Node {
            name: Some("node-a")
        }
    );
    assert_eq!(
        idx.lookup(ip("192.168.1.11"), 22),
        IpOwner::Node {
            name: Some("node-b")
        },
        "node addresses are learned from pods' hostIP"
    );
    let on_a: Vec<&str> = idx
        .host_network_pods("node-a")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(on_a, vec!["kube-proxy-x"]);
    assert!(idx.host_network_pods("node-b").is_empty());
    let a = idx.attribute(ip("192.168.1.10"), None);
    assert_eq!(
        (a.reserved, a.scope, a.pod),
        (Some(NODE), Some(Scope::Node), None)
    );
}

/// kube-proxy (ClusterIP) and socket-level load balancing (backend pod IP) give the same answer.
#[test]
fn cluster_ip_and_backend_pod_ip_name_the_same_service_and_workload() {
    let h = handle();
    h.apply_pods(synced(vec![
        deployment_pod("shop", "web", "a", "u1", &["10.244.1.5"]),
        deployment_pod("shop", "web", "b", "u2", &["10.244.1.6"]),
        deployment_pod("shop", "worker", "c", "u3", &["10.244.1.7"]),
    ]));
    h.apply_services(synced(vec![service(
        "shop",
        "web",
        &["10.96.0.20", "fd00:10:96::20"],
        json!([{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]),
        Some(json!({"app.kubernetes.io/name": "web"})),
    )]));
    h.apply_endpoint_slices(synced(vec![slice(
        "shop",
        "web-abcde",
        "web",
        &["10.244.1.5", "10.244.1.6"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
    )]));
    let idx = h.snapshot();
    let port = ServicePort {
        name: Some("http".into()),
        port: 80,
        protocol: "TCP".into(),
        target_port: Some(TargetPort::Name("http".into())),
    };
    for vip in ["10.96.0.20", "fd00:10:96::20"] {
        match idx.lookup(ip(vip), 80) {
            IpOwner::Service { service, port: p } => {
                assert_eq!(service.key(), ServiceKey::new("shop", "web"));
                assert_eq!(p, Some(&port));
            }
            other => panic!("{vip}: {other:?}"),
        }
    }
    assert!(matches!(
        idx.lookup(ip("10.96.0.20"), 81),
        IpOwner::Service { port: None, .. }
    ));

    let via_vip = idx.attribute(ip("10.96.0.20"), Some(80));
    let via_pod = idx.attribute(ip("10.244.1.6"), Some(8080));
    assert_eq!(via_vip.workload, Some(wl("Deployment", "web")));
    assert_eq!(via_pod.workload, via_vip.workload);
    assert_eq!(via_vip.service.as_deref(), Some("web"));
    assert_eq!(via_pod.service.as_deref(), Some("web"));
    assert_eq!(via_vip.service_port, Some(port.clone()));
    assert_eq!(via_pod.service_port, Some(port.clone()));
    assert_eq!(via_vip.namespace.as_deref(), Some("shop"));
    assert_eq!(via_vip.pod, None);
    assert_eq!(via_pod.pod.as_deref(), Some("web-7d9c5b8f4-b"));
    assert_eq!(
        *via_vip.labels,
        labels(&[
            ("app.kubernetes.io/name", "web"),
            ("pod-template-hash", "7d9c5b8f4")
        ])
    );
    // A port the slice does not list is no Service's.
    assert_eq!(idx.attribute(ip("10.244.1.6"), Some(9090)).service, None);
    assert_eq!(idx.service_for_pod_ip_port(ip("10.244.1.7"), 8080), None);

    let svc = idx
        .service(&ServiceKey::new("shop", "web"))
        .expect("service");
    let mut behind: Vec<&str> = idx.pods_for_service(svc).map(|p| p.name.as_str()).collect();
    behind.sort_unstable();
    assert_eq!(behind, vec!["web-7d9c5b8f4-a", "web-7d9c5b8f4-b"]);

    let mut ep = Endpoint::default();
    via_vip.fill(&mut ep);
    assert_eq!(ep.service.as_deref(), Some("web"));
    assert_eq!(ep.workload, Some(wl("Deployment", "web")));
    assert_eq!(ep.scope, Some(Scope::Cluster));
}

#[test]
fn a_service_over_several_workloads_names_none() {
    let h = handle();
    h.apply_pods(synced(vec![
        deployment_pod("shop", "web", "a", "u1", &["10.244.1.5"]),
        deployment_pod("shop", "canary", "b", "u2", &["10.244.1.6"]),
    ]));
    h.apply_services(synced(vec![service(
        "shop",
        "front",
        &["10.96.0.30"],
        json!([{"port": 80}]),
        Some(json!({})),
    )]));
    h.apply_endpoint_slices(synced(vec![slice(
        "shop",
        "front-1",
        "front",
        &["10.244.1.5", "10.244.1.6"],
        json!([{"port": 80}]),
    )]));
    let idx = h.snapshot();
    let svc = idx
        .service(&ServiceKey::new("shop", "front"))
        .expect("service");
    assert_eq!(idx.pods_for_service(svc).count(), 2);
    assert_eq!(idx.workload_for_service(svc), None);
    let (s, p) = idx
        .service_for_pod_ip_port(ip("10.244.1.6"), 80)
        .expect("endpoint");
    assert_eq!(
        (s.name.as_str(), p.map(|p| p.port)),
        ("front", Some(80)),
        "unnamed slice port matches unnamed service port"
    );
}

#[test]
fn the_kubernetes_service_and_its_endpoints_are_the_api_server() {
    let h = handle();
    h.apply_services(synced(vec![service(
        "default",
        "kubernetes",
        &["10.96.0.1"],
        json!([{"name": "https", "port": 443, "targetPort": 6443}]),
        None,
    )]));
    h.apply_endpoint_slices(synced(vec![slice(
        "default",
        "kubernetes",
        "kubernetes",
        &["192.168.1.10"],
        json!([{"name": "https", "port": 6443}]),
    )]));
    let idx = h.snapshot();
    assert_eq!(idx.lookup(ip("10.96.0.1"), 443), IpOwner::KubeApiserver);
    assert_eq!(idx.lookup(ip("192.168.1.10"), 6443), IpOwner::KubeApiserver);
    assert_eq!(
        idx.lookup(ip("192.168.1.10"), 10250),
        IpOwner::Node {
            name: Some("node-a")
        },
        "the control-plane node's other ports are the node's"
    );
    let a = idx.attribute(ip("10.96.0.1"), Some(443));
    assert_eq!(a.reserved, Some(KUBE_APISERVER));
    assert_eq!(
        (a.namespace.as_deref(), a.service.as_deref()),
        (Some("default"), Some("kubernetes"))
    );
    assert_eq!(a.service_port.map(|p| p.port), Some(443));
}

#[test]
fn a_reused_ip_belongs_to_the_new_pod_even_before_the_old_one_is_deleted() {
    let h = handle();
    let old = as_pod(pod("shop", "old", "u-old", &["10.244.1.5"], None));
    h.apply_pods(synced(vec![old.clone()]));
    assert_eq!(
        pod_name(&h.snapshot(), "10.244.1.5").as_deref(),
        Some("old")
    );

    let new = as_pod(pod("shop", "new", "u-new", &["10.244.1.5"], None));
    h.apply_pods([Event::Apply(new.clone())]);
    assert_eq!(
        pod_name(&h.snapshot(), "10.244.1.5").as_deref(),
        Some("new")
    );

    // A late update of the old pod (same uid and address) keeps its older claim.
    h.apply_pods([Event::Apply(old.clone())]);
    assert_eq!(
        pod_name(&h.snapshot(), "10.244.1.5").as_deref(),
        Some("new")
    );

    h.apply_pods([Event::Delete(old)]);
    assert_eq!(
        pod_name(&h.snapshot(), "10.244.1.5").as_deref(),
        Some("new")
    );
    assert_eq!(h.snapshot().stats().pods, 1);

    h.apply_pods([Event::Delete(new)]);
    assert_eq!(h.snapshot().lookup(ip("10.244.1.5"), 80), IpOwner::Unknown);
}

#[test]
fn a_terminating_pod_yields_its_address() {
    let h = handle();
    let new = as_pod(pod("shop", "new", "u-new", &["10.244.1.5"], None));
    h.apply_pods(synced(vec![new]));
    let mut old = pod("shop", "old", "u-old", &["10.244.1.5"], None);
    old["metadata"]["deletionTimestamp"] = json!("2025-11-24T16:00:00Z");
    // Seen after the new pod (a newer claim), but it is going away.
    h.apply_pods([Event::Apply(as_pod(old))]);
    assert_eq!(
        pod_name(&h.snapshot(), "10.244.1.5").as_deref(),
        Some("new")
    );
}

#[test]
fn deleting_an_old_object_does_not_remove_its_same_named_successor() {
    let h = handle();
    let old = as_pod(pod("shop", "db-0", "u-old", &["10.244.1.5"], None));
    let new = as_pod(pod("shop", "db-0", "u-new", &["10.244.1.9"], None));
    h.apply_pods(synced(vec![old.clone()]));
    h.apply_pods([Event::Apply(new)]);
    h.apply_pods([Event::Delete(old)]);
    let idx = h.snapshot();
    assert_eq!(pod_name(&idx, "10.244.1.9").as_deref(), Some("db-0"));
    assert_eq!(
        idx.pod_by_ip(ip("10.244.1.9")).map(|p| p.uid.as_str()),
        Some("u-new")
    );
    assert_eq!(
        idx.pod_by_ip(ip("10.244.1.5")),
        None,
        "the old address went with the old pod"
    );
}

#[test]
fn finished_and_pending_pods_own_no_address() {
    let h = handle();
    let mut done = pod("ci", "build-1", "u1", &["10.244.1.5"], None);
    done["status"]["phase"] = json!("Succeeded");
    let mut failed = pod("ci", "build-2", "u2", &["10.244.1.6"], None);
    failed["status"]["phase"] = json!("Failed");
    let pending = as_pod(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "ci", "name": "build-3", "uid": "u3"},
        "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}));
    h.apply_pods(synced(vec![as_pod(done), as_pod(failed), pending]));
    let idx = h.snapshot();
    assert_eq!(idx.pod_by_ip(ip("10.244.1.5")), None);
    assert_eq!(idx.pod_by_ip(ip("10.244.1.6")), None);
    let s = idx.stats();
    assert_eq!((s.pods, s.pod_ips), (3, 0));
}

#[test]
fn a_relist_is_invisible_until_done_and_then_replaces_everything() {
    let h = handle();
    h.apply_pods(synced(vec![
        as_pod(pod("shop", "a", "ua", &["10.244.1.1"], None)),
        as_pod(pod("shop", "b", "ub", &["10.244.1.2"], None)),
    ]));
    let before = h.snapshot();

    // b was deleted while the watch was down: the relist no longer lists it.
    h.apply_pods([
        Event::Init,
        Event::InitApply(as_pod(pod("shop", "a", "ua", &["10.244.1.1"], None))),
        Event::InitApply(as_pod(pod("shop", "c", "uc", &["10.244.1.3"], None))),
    ]);
    let mid = h.snapshot();
    assert_eq!(
        pod_name(&mid, "10.244.1.2").as_deref(),
        Some("b"),
        "half a relist never shows"
    );
    assert_eq!(pod_name(&mid, "10.244.1.3"), None);

    h.apply_pods([Event::<Pod>::InitDone]);
    let after = h.snapshot();
    assert_eq!(pod_name(&after, "10.244.1.1").as_deref(), Some("a"));
    assert_eq!(pod_name(&after, "10.244.1.2"), None);
    assert_eq!(pod_name(&after, "10.244.1.3").as_deref(), Some("c"));
    // Snapshots already handed out do not change.
    assert_eq!(pod_name(&before, "10.244.1.2").as_deref(), Some("b"));
    assert_eq!(pod_name(&before, "10.244.1.3"), None);
}

#[test]
fn a_failed_relist_is_started_over_not_merged() {
    let h = handle();
    h.apply_pods(synced(vec![as_pod(pod(
        "shop",
        "a",
        "ua",
        &["10.244.1.1"],
        None,
    ))]));
    h.apply_pods([
        Event::Init,
        Event::InitApply(as_pod(pod("shop", "x", "ux", &["10.244.1.8"], None))),
        // the list failed here; the watcher starts over
        Event::Init,
        Event::InitApply(as_pod(pod("shop", "y", "uy", &["10.244.1.9"], None))),
        Event::InitDone,
    ]);
    let idx = h.snapshot();
    assert_eq!(pod_name(&idx, "10.244.1.8"), None);
    assert_eq!(pod_name(&idx, "10.244.1.9").as_deref(), Some("y"));
    assert_eq!(pod_name(&idx, "10.244.1.1"), None);
}

#[test]
fn each_kind_relists_on_its_own() {
    let h = handle();
    h.apply_services(synced(vec![service(
        "shop",
        "web",
        &["10.96.0.20"],
        json!([{"port": 80}]),
        None,
    )]));
    h.apply_pods([Event::<Pod>::Init]);
    h.apply_services([Event::<Service>::Init, Event::InitDone]);
    let idx = h.snapshot();
    assert_eq!(idx.service_by_cluster_ip(ip("10.96.0.20")), None);
    assert_eq!(idx.stats().services, 0);
}

#[test]
fn malformed_objects_are_skipped_and_counted_never_fatal() {
    let h = handle();
    let mut bad = pod(
        "shop",
        "weird",
        "u1",
        &["10.244.1.5", "not-an-ip", "10.244.1.5"],
        None,
    );
    bad["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(70000);
    let nameless =
        as_pod(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x"}}));
    h.apply_pods(synced(vec![as_pod(bad), nameless]));
    h.apply_services(synced(vec![serde_json::from_value::<Service>(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "shop", "name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}))
        .expect("test service")]));
    let idx = h.snapshot();
    let p = idx
        .pod_by_ip(ip("10.244.1.5"))
        .expect("the good address still counts");
    assert_eq!(p.ips, vec![ip("10.244.1.5")]);
    assert!(p.ports.is_empty());
    let s = idx.stats();
    // "not-an-ip", port 70000, the nameless pod
    assert_eq!(s.skipped, 3);
    assert_eq!((s.pods, s.services, s.service_ips), (1, 1, 0));
}

#[test]
fn subscribers_see_each_published_change() {
    let h = handle();
    let mut rx = h.subscribe();
    h.apply_pods(synced(vec![as_pod(pod(
        "shop",
        "a",
        "ua",
        &["10.244.1.1"],
        None,
    ))]));
    assert!(rx.has_changed().expect("sender alive"));
    assert_eq!(
        pod_name(&rx.borrow_and_update(), "10.244.1.1").as_deref(),
        Some("a")
    );
    // InitApply alone changes nothing visible and publishes nothing.
    h.apply_pods([
        Event::Init,
        Event::InitApply(as_pod(pod("shop", "b", "ub", &["10.244.1.2"], None))),
    ]);
    assert!(!rx.has_changed().expect("sender alive"));
}

#[test]
fn pods_with_the_same_labels_share_one_copy_until_none_has_them() {
    let h = handle();
    h.apply_pods(synced(vec![
        deployment_pod("shop", "web", "a", "u1", &["10.0.0.1"]),
        deployment_pod("shop", "web", "b", "u2", &["10.0.0.2"]),
        deployment_pod("shop", "api", "a", "u3", &["10.0.0.3"]),
    ]));
    let idx = h.snapshot();
    let (a, b, c) = (
        idx.pod_by_ip(ip("10.0.0.1")).expect("web a"),
        idx.pod_by_ip(ip("10.0.0.2")).expect("web b"),
        idx.pod_by_ip(ip("10.0.0.3")).expect("api a"),
    );
    assert!(Arc::ptr_eq(&a.labels, &b.labels));
    assert!(!Arc::ptr_eq(&a.labels, &c.labels));
    assert_eq!(
        *a.labels,
        labels(&[
            ("app.kubernetes.io/name", "web"),
            ("pod-template-hash", "7d9c5b8f4")
        ])
    );
    assert_eq!(h.shared.builder.lock().unwrap().labels.len(), 2);
    drop(idx);

    // Once the web pods are gone (and no snapshot holds them), their set goes too.
    h.apply_pods(synced(vec![deployment_pod(
        "shop",
        "api",
        "a",
        "u3",
        &["10.0.0.3"],
    )]));
    let builder = h.shared.builder.lock().unwrap();
    assert_eq!(builder.labels.len(), 1);
    assert_eq!(
        builder
            .labels
            .iter()
            .next()
            .map(|l| l["app.kubernetes.io/name"].as_str()),
        Some("api")
    );
}
