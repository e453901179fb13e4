//! The deploy/ kustomization as the cluster would receive it: `kubectl kustomize deploy`,
//! parsed into the Kubernetes API types, with the agent's security properties asserted exactly,
//! so that a later change cannot widen them silently. Needs `kubectl` (fails if it is missing).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount, Volume},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every object of the rendered kustomization, in order.
fn render() -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", "deploy"])
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `kubectl kustomize deploy`: {e} (kubectl is needed for this test)")
        });
    assert!(
        out.status.success(),
        "`kubectl kustomize deploy` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("rendered document is no YAML object: {e}"))
        })
        .collect()
}

/// Parses an object into its API type and checks that nothing was lost on the way: a field
/// the type does not know (a typo such as `readOnlyRootFileSystem`, which the API server would
/// drop) fails here instead of silently not applying.
fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", name_of(v)));
    let back = serde_json::to_value(&t).expect("serialize");
    if let Some(path) = difference(v, &back, String::new()) {
        panic!(
            "{}: {path} is not a field of its API type (misspelt or misplaced?)",
            name_of(v)
        );
    }
    t
}

/// The path of the first value in `rendered` that `parsed` does not hold.
fn difference(rendered: &Value, parsed: &Value, path: String) -> Option<String> {
    match (rendered, parsed) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => difference(v, w, format!("{path}.{k}")),
            None => Some(format!("{path}.{k}")),
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| difference(v, w, format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(path),
    }
}

fn name_of(v: &Value) -> String {
    format!(
        "{}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

struct Objects {
    all: Vec<Value>,
}

impl Objects {
    fn load() -> Objects {
        Objects { all: render() }
    }

    fn one(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all
            .iter()
            .filter(|v| v["kind"] == kind && v["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind}/{name} is rendered");
        found[0]
    }

    fn daemonset(&self) -> DaemonSet {
        typed(self.one("DaemonSet", "observer"))
    }

    fn config_map(&self, name: &str) -> ConfigMap {
        typed(self.one("ConfigMap", name))
    }
}

fn agent(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(
        spec.init_containers.is_none(),
        "no init containers (each would need its own review)"
    );
    assert!(spec.ephemeral_containers.is_none());
    assert_eq!(spec.containers.len(), 1, "one container: the agent");
    spec.containers[0].clone()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

#[test]
fn renders_exactly_these_objects_in_namespace_observer() {
    let o = Objects::load();
    let got: BTreeSet<(String, String)> = o
        .all
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("Namespace", "observer"),
        ("ServiceAccount", "observer"),
        ("ClusterRole", "observer"),
        ("ClusterRoleBinding", "observer"),
        ("ConfigMap", "observer-settings"),
        ("ConfigMap", "observer-architecture"),
        ("ConfigMap", "observer-dashboard"),
        ("DaemonSet", "observer"),
        ("Service", "observer-metrics"),
        ("ServiceMonitor", "observer"),
        ("PrometheusRule", "observer"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(o.all.len(), want.len(), "no object rendered twice");
    for v in &o.all {
        let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"]
            .contains(&v["kind"].as_str().unwrap());
        let ns = &v["metadata"]["namespace"];
        if cluster_scoped {
            assert_eq!(ns, &Value::Null, "{}", name_of(v));
        } else {
            assert_eq!(ns, "observer", "{}", name_of(v));
        }
    }
    let namespace: Namespace = typed(o.one("Namespace", "observer"));
    assert_eq!(
        namespace.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "privileged",
        "capabilities and hostPath volumes are admitted by no stricter Pod Security level"
    );
    let _: ServiceAccount = typed(o.one("ServiceAccount", "observer"));
}

#[test]
fn rbac_is_get_list_watch_on_pods_services_endpointslices_only() {
    let o = Objects::load();
    let role: ClusterRole = typed(o.one("ClusterRole", "observer"));
    assert!(role.aggregation_rule.is_none());
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            assert!(r.resource_names.is_none(), "{r:?}");
            assert!(r.non_resource_urls.is_none(), "{r:?}");
            (r.api_groups.unwrap(), r.resources.unwrap(), r.verbs)
        })
        .collect();
    let read = strings(&["get", "list", "watch"]);
    assert_eq!(
        rules,
        vec![
            (strings(&[""]), strings(&["pods"]), read.clone()),
            (strings(&[""]), strings(&["services"]), read.clone()),
            (
                strings(&["discovery.k8s.io"]),
                strings(&["endpointslices"]),
                read.clone()
            ),
        ]
    );
    let binding: ClusterRoleBinding = typed(o.one("ClusterRoleBinding", "observer"));
    assert_eq!(
        (
            binding.role_ref.api_group.as_str(),
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("rbac.authorization.k8s.io", "ClusterRole", "observer")
    );
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            subjects[0].name.as_str(),
            subjects[0].namespace.as_deref()
        ),
        ("ServiceAccount", "observer", Some("observer"))
    );
    // No other grant of any kind is rendered.
    for kind in ["Role", "RoleBinding"] {
        assert!(o.all.iter().all(|v| v["kind"] != kind), "no {kind}");
    }
}

#[test]
fn agent_runs_with_exactly_four_capabilities_and_nothing_else_privileged() {
    let o = Objects::load();
    let ds = o.daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.host_pid, Some(false));
    assert_eq!(pod.host_network, Some(false));
    assert_eq!(pod.host_ipc, None, "hostIPC is never set");
    assert_eq!(pod.share_process_namespace, None);
    let psc = pod.security_context.clone().unwrap();
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().localhost_profile,
        None
    );
    assert_eq!(
        psc.app_armor_profile, None,
        "AppArmor stays at the runtime default"
    );
    assert_eq!(psc.run_as_user, Some(0));
    assert_eq!(psc.run_as_non_root, Some(false));
    assert_eq!(psc.sysctls, None);

    let c = agent(&ds);
    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    assert_eq!(sc.run_as_non_root, Some(false));
    assert_eq!(sc.proc_mount, None, "default /proc masking");
    assert_eq!(sc.app_armor_profile, None);
    assert_eq!(sc.seccomp_profile, None, "the pod's RuntimeDefault applies");
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(strings(&["ALL"])));
    let add = caps.add.unwrap();
    assert_eq!(add, strings(&["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"]));
    for forbidden in [
        "SYS_ADMIN",
        "CAP_SYS_ADMIN",
        "DAC_READ_SEARCH",
        "NET_RAW",
        "ALL",
    ] {
        assert!(!add.iter().any(|a| a == forbidden), "{forbidden} is added");
    }
}

#[test]
fn host_paths_are_exactly_proc_btf_and_cgroup_and_read_only() {
    let o = Objects::load();
    let ds = o.daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volumes: BTreeMap<String, Volume> = pod
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect();
    assert_eq!(
        volumes.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "architecture",
            "btf",
            "flow-log",
            "host-cgroup",
            "host-proc"
        ]
    );
    let host_paths: BTreeMap<&str, (&str, Option<&str>)> = volumes
        .iter()
        .filter_map(|(n, v)| {
            v.host_path
                .as_ref()
                .map(|h| (n.as_str(), (h.path.as_str(), h.type_.as_deref())))
        })
        .collect();
    assert_eq!(
        host_paths,
        BTreeMap::from([
            ("btf", ("/sys/kernel/btf", Some("Directory"))),
            ("host-cgroup", ("/sys/fs/cgroup", Some("Directory"))),
            ("host-proc", ("/proc", Some("Directory"))),
        ])
    );

    let c = agent(&ds);
    let mounts: BTreeMap<&str, (&str, Option<bool>)> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m.sub_path, None, "{} has a subPath", m.name);
            assert_eq!(m.sub_path_expr, None, "{} has a subPathExpr", m.name);
            assert_eq!(m.mount_propagation, None, "{}", m.name);
            (m.name.as_str(), (m.mount_path.as_str(), m.read_only))
        })
        .collect();
    assert_eq!(
        mounts,
        BTreeMap::from([
            ("architecture", ("/etc/observer/architecture", Some(true))),
            ("btf", ("/sys/kernel/btf", Some(true))),
            ("flow-log", ("/var/log/observer", None)),
            ("host-cgroup", ("/host/sys/fs/cgroup", Some(true))),
            ("host-proc", ("/host/proc", Some(true))),
        ])
    );
    for name in host_paths.keys() {
        assert_eq!(mounts[name].1, Some(true), "hostPath {name} is writable");
    }

    // The flow log: an emptyDir with a size limit, the only writable mount.
    let flow_log = volumes["flow-log"].empty_dir.clone().unwrap();
    assert_eq!(flow_log.size_limit, Some(q("256Mi")));
    assert_eq!(flow_log.medium, None, "on disk, not tmpfs (memory limit)");
}

#[test]
fn architecture_config_map_is_mounted_as_a_directory_under_a_fixed_name() {
    let o = Objects::load();
    let cm = o.config_map("observer-architecture");
    let file = std::fs::read_to_string(workspace().join("deploy/architecture/trackunit.yaml"))
        .expect("read deploy/architecture/trackunit.yaml");
    let data = cm.data.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["trackunit.yaml"],
        "one file"
    );
    assert_eq!(data["trackunit.yaml"], file);
    assert_eq!(cm.metadata.name.as_deref(), Some("observer-architecture"));

    let ds = o.daemonset();
    let pod = ds.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "architecture")
        .unwrap();
    let source = volume.config_map.unwrap();
    assert_eq!(source.name, "observer-architecture");
    assert_eq!(source.items, None, "the whole ConfigMap, not selected keys");
    let c = agent(&ds);
    let args = c.args.unwrap();
    let i = args.iter().position(|a| a == "--architecture").unwrap();
    assert_eq!(args[i + 1], "/etc/observer/architecture/trackunit.yaml");
}

#[test]
fn agent_arguments_environment_probes_and_resources() {
    let o = Objects::load();
    let ds = o.daemonset();
    let c = agent(&ds);
    assert_eq!(c.image.as_deref(), Some("ghcr.io/observer/observer:0.1.0"));
    assert_eq!(c.command, None, "the image's entrypoint");
    assert_eq!(
        c.args.clone().unwrap(),
        strings(&[
            "run",
            "--architecture",
            "/etc/observer/architecture/trackunit.yaml",
            "--flow-log",
            "/var/log/observer/flows.jsonl",
            "--flow-log-max-bytes",
            "100000000",
            "--metrics-addr",
            "0.0.0.0:9464",
            "--host-proc",
            "/host/proc",
            "--pod-cidr",
            "$(POD_CIDR)",
            "--service-cidr",
            "$(SERVICE_CIDR)",
            "--dns-cgroup",
            "/host/sys/fs/cgroup",
        ])
    );

    let env: BTreeMap<String, Value> = c
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.name.clone(), serde_json::to_value(&e).unwrap()))
        .collect();
    assert_eq!(
        env["NODE_NAME"],
        json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    for key in ["POD_CIDR", "SERVICE_CIDR"] {
        assert_eq!(
            env[key],
            json!({"name": key, "valueFrom": {"configMapKeyRef": {"name": "observer-settings", "key": key}}})
        );
    }
    assert_eq!(
        env.keys().map(String::as_str).collect::<Vec<_>>(),
        ["NODE_NAME", "POD_CIDR", "RUST_LOG", "SERVICE_CIDR"]
    );
    let settings = o.config_map("observer-settings").data.unwrap();
    assert_eq!(
        settings,
        BTreeMap::from([
            ("POD_CIDR".to_owned(), "10.244.0.0/16".to_owned()),
            ("SERVICE_CIDR".to_owned(), "10.96.0.0/12".to_owned()),
        ])
    );

    let ports = c.ports.clone().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (
            ports[0].name.as_deref(),
            ports[0].container_port,
            ports[0].host_port
        ),
        (Some("metrics"), 9464, None)
    );
    let port_of = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            assert_eq!(name, "metrics");
            9464
        }
    };
    let live = c.liveness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(
        (live.path.as_deref(), port_of(&live.port)),
        (Some("/healthz"), 9464)
    );
    let ready = c.readiness_probe.clone().unwrap().http_get.unwrap();
    assert_eq!(
        (ready.path.as_deref(), port_of(&ready.port)),
        (Some("/readyz"), 9464)
    );

    let resources = c.resources.clone().unwrap();
    assert_eq!(
        resources.requests,
        Some(BTreeMap::from([
            ("cpu".to_owned(), q("50m")),
            ("memory".to_owned(), q("64Mi"))
        ]))
    );
    assert_eq!(
        resources.limits,
        Some(BTreeMap::from([
            ("cpu".to_owned(), q("500m")),
            ("memory".to_owned(), q("256Mi"))
        ]))
    );
}

#[test]
fn daemonset_runs_on_every_node_and_rolls_one_node_at_a_time() {
    let o = Objects::load();
    let ds = o.daemonset();
    let spec = ds.spec.clone().unwrap();
    let strategy = spec.update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    let pod = spec.template.spec.unwrap();
    let tolerations = pod.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint: {tolerations:?}"
    );
    assert_eq!(pod.node_selector, None, "every node");
    assert_eq!(pod.affinity, None, "every node");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert_eq!(pod.automount_service_account_token, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("observer"));
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        spec.selector.match_labels.unwrap(),
        BTreeMap::from([("app.kubernetes.io/name".to_owned(), "observer".to_owned())])
    );
    assert_eq!(labels["app.kubernetes.io/name"], "observer");
}

#[test]
fn metrics_service_monitor_and_dashboard() {
    let o = Objects::load();
    let svc: Service = typed(o.one("Service", "observer-metrics"));
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"), "headless");
    assert_eq!(
        spec.selector.unwrap(),
        BTreeMap::from([("app.kubernetes.io/name".to_owned(), "observer".to_owned())])
    );
    let ports = spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("metrics"), 9464)
    );
    let svc_labels = svc.metadata.labels.unwrap();

    let sm = o.one("ServiceMonitor", "observer");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(svc_labels.get(k).map(String::as_str), v.as_str());
    }
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    // job="observer", which the alerts select on.
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    assert_eq!(svc_labels["app.kubernetes.io/name"], "observer");

    let pr = o.one("PrometheusRule", "observer");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert!(!pr["spec"]["groups"].as_array().unwrap().is_empty());

    let dashboard = o.config_map("observer-dashboard");
    assert_eq!(dashboard.metadata.labels.unwrap()["grafana_dashboard"], "1");
    let file = std::fs::read_to_string(workspace().join("deploy/dashboard/observer.json"))
        .expect("read deploy/dashboard/observer.json");
    let data = dashboard.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["observer.json"]);
    assert_eq!(data["observer.json"], file);
}
