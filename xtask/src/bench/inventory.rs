//! A generated Kubernetes inventory on the Trackunit model (`--inventory` of `observer run`): the
//! components of deploy/architecture/trackunit.yaml in their namespaces plus filler teams, every
//! Service backed by a Deployment's pods and an EndpointSlice.

use serde_json::{Value, json};

/// Namespace, app label and Service port of the model's components (other labels the model's
/// selectors need are added in `labels`).
const COMPONENTS: [(&str, &str, u16); 8] = [
    ("kong", "kong", 8443),
    ("oauth2-proxy", "oauth2-proxy", 4180),
    ("graph-gateway", "graph-gateway", 8080),
    ("rabbitmq", "rabbitmq", 5672),
    (
        "svc-analysis-orchestrator",
        "svc-analysis-orchestrator",
        8080,
    ),
    ("svc-messaging-bridge", "svc-messaging-bridge", 8080),
    ("redpanda", "redpanda", 9092),
    ("kube-system", "kube-dns", 53),
];

fn labels(ns: &str, app: &str) -> Value {
    match ns {
        "kong" => json!({"app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": "kong"}),
        "kube-system" => json!({"k8s-app": app, "app.kubernetes.io/name": app}),
        _ => json!({"app.kubernetes.io/name": app}),
    }
}

fn ip(prefix: [u8; 2], i: usize) -> String {
    format!("{}.{}.{}.{}", prefix[0], prefix[1], i / 200, i % 200 + 10)
}

/// `pods` pods behind `services` Services (pods / services each), as one `kind: List`, plus
/// `extra` pods (namespace, app, address): the lab's hosts, so that the agent attributes their
/// connections at once instead of holding them for an index that would never learn them.
pub fn generate(pods: usize, services: usize, extra: &[(&str, &str, String)]) -> Value {
    let per = pods.div_ceil(services).max(1);
    let mut items = Vec::with_capacity(pods + 2 * services);
    let mut pod = 0;
    for s in 0..services {
        let (ns, app, port) = match COMPONENTS.get(s) {
            Some(&(ns, app, port)) => (ns.to_owned(), app.to_owned(), port),
            None => (format!("team-{:02}", s % 40), format!("svc-{s:04}"), 8080),
        };
        let sel = labels(&ns, &app);
        let cluster_ip = ip([10, 96], s);
        items.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": app},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                "selector": sel,
                "ports": [{"name": "main", "port": port, "protocol": "TCP", "targetPort": port}]}}));
        let mut ips = Vec::new();
        for r in 0..per {
            if pod == pods {
                break;
            }
            let pod_ip = ip([10, 244], pod);
            let hash = format!("{:08x}", s * 7919);
            let mut meta_labels = sel.clone();
            meta_labels["pod-template-hash"] = json!(hash);
            items.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": ns, "name": format!("{app}-{hash}-{r:05}"),
                    "labels": meta_labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": format!("{app}-{hash}"), "uid": format!("uid-{s}"), "controller": true}]},
                "spec": {"nodeName": format!("node-{}", pod % 50),
                    "containers": [{"name": "app", "image": "app:1",
                        "ports": [{"containerPort": port, "name": "main", "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "hostIP": "192.168.50.10",
                    "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}}));
            ips.push(pod_ip);
            pod += 1;
        }
        items.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": format!("{app}-abcde"),
                "labels": {"kubernetes.io/service-name": app}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip],
                "conditions": {"ready": true, "serving": true, "terminating": false}})).collect::<Vec<_>>(),
            "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}));
    }
    for (i, (ns, app, pod_ip)) in extra.iter().enumerate() {
        items.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": format!("{app}-bench-{i}"), "labels": labels(ns, app)},
            "spec": {"nodeName": "bench-node", "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "hostIP": "192.168.50.10",
                "podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}}));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

#[cfg(test)]
mod tests {
    #[test]
    fn has_the_requested_pods_and_services() {
        let inv = super::generate(100, 20, &[("rabbitmq", "rabbitmq", "10.1.2.3".into())]);
        let items = inv["items"].as_array().unwrap();
        let count = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
        assert_eq!(
            (count("Pod"), count("Service"), count("EndpointSlice")),
            (101, 20, 20)
        );
        assert_eq!(items[0]["metadata"]["namespace"], "kong");
    }
}
