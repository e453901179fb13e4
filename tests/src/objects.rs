//! Kubernetes objects for tests, as the API server would hold them.

use serde_json::{Value, json};

/// A running pod of a Deployment (`<deployment>-<hash>-<suffix>`, owned by its ReplicaSet).
pub fn deployment_pod(ns: &str, deployment: &str, suffix: &str, ip: &str) -> Value {
    let hash = "6f7d8c9b5";
    pod(
        ns,
        &format!("{deployment}-{hash}-{suffix}"),
        ip,
        json!({"app.kubernetes.io/name": deployment, "pod-template-hash": hash}),
        Some(("ReplicaSet", &format!("{deployment}-{hash}"))),
    )
}

/// A running pod on node-a with one container port 8080 named `http`.
pub fn pod(ns: &str, name: &str, ip: &str, labels: Value, owner: Option<(&str, &str)>) -> Value {
    let mut meta = json!({"namespace": ns, "name": name});
    meta["labels"] = labels;
    if let Some((kind, owner)) = owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner,
            "uid": format!("uid-{owner}"), "controller": true}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "app:1",
            "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "hostIP": "192.168.50.10", "hostIPs": [{"ip": "192.168.50.10"}],
            "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// A ClusterIP Service with port 80 (`http`) to container port `http`, selecting
/// `app.kubernetes.io/name: <app>`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app.kubernetes.io/name": app},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]}})
}

/// The Service's EndpointSlice listing `ips` on port 8080 (`http`).
pub fn endpoint_slice(ns: &str, service: &str, ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{service}-x7k2p"),
            "labels": {"kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip],
            "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}
