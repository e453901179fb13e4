//! A cluster in a box: one network namespace per workload of the architecture, test hosts for
//! the internet client and the external services, all on one bridge with no route off the
//! machine; ClusterIPs emulated with DNAT the way kube-proxy does it; pods' processes in cgroups
//! named like kubelet's; and the matching Kubernetes objects as an inventory file.
//!
//! The node itself is this machine's own network namespace: kubelet probes and API server
//! traffic start there, as on a real node. It gets one address on the bridge (the node IP) and a
//! route to the control-plane address, both removed with the bridge.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::model::Model;

pub const BRIDGE: &str = "obdemo0";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
const LAB_ROUTES: [&str; 5] = [
    "10.244.0.0/16",
    "10.96.0.0/12",
    "172.18.0.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
];

/// Runs a command that must succeed.
pub fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A workload's pod (or a test host): a network namespace with one address on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    /// Component or test host name.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Kubernetes namespace and labels, for pods.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub uid: String,
    /// Host names the hosts file gives this address (externals).
    pub hostnames: Vec<String>,
}

impl Host {
    /// The cgroup2 directory (relative to the demo's cgroup root) its processes run in.
    pub fn cgroup(&self) -> String {
        if self.namespace.is_some() {
            format!("kubepods/pod{}", self.uid)
        } else {
            format!("hosts/{}", self.name)
        }
    }
}

/// A Service: ClusterIP and (port, target port) pairs, backed by one pod.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub ports: Vec<(u16, u16)>,
    pub backend: String,
}

pub struct Cluster {
    pub hosts: Vec<Host>,
    pub services: Vec<Service>,
    pub cgroup_root: PathBuf,
    processes: Vec<Child>,
    pub netpeer: PathBuf,
}

fn short(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect()
}

fn uid(i: usize) -> String {
    format!("0b5e7e00-0000-4000-8000-{:012x}", 0xdead0000 + i)
}

impl Cluster {
    /// Plans the system described by `model`, plus the extra workload and host the demo uses
    /// for undocumented traffic. Nothing is created yet.
    pub fn plan(model: &Model, netpeer: PathBuf, cgroup2: &Path) -> Cluster {
        let mut hosts = Vec::new();
        for (i, c) in model.components.iter().enumerate() {
            hosts.push(Host {
                name: c.name.clone(),
                netns: format!("obd-{}", short(&c.name)),
                ip: Ipv4Addr::new(10, 244, 0, 10 + i as u8),
                namespace: Some(c.namespace.clone()),
                labels: c.labels(),
                uid: uid(i),
                hostnames: vec![],
            });
        }
        // A workload the architecture does not know.
        hosts.push(Host {
            name: "legacy-reporter".into(),
            netns: "obd-legacy".into(),
            ip: Ipv4Addr::new(10, 244, 0, 99),
            namespace: Some("legacy".into()),
            labels: BTreeMap::from([("app.kubernetes.io/name".into(), "legacy-reporter".into())]),
            uid: uid(99),
            hostnames: vec![],
        });
        hosts.push(Host {
            name: "control-plane".into(),
            netns: "obd-cplane".into(),
            ip: CONTROL_PLANE_IP,
            namespace: None,
            labels: BTreeMap::new(),
            uid: uid(200),
            hostnames: vec![],
        });
        for (i, e) in model.externals.iter().enumerate() {
            let catch_all = e.cidrs.iter().any(|c| c.ends_with("/0"));
            let ip = if catch_all {
                Ipv4Addr::new(198, 51, 100, 10 + i as u8)
            } else {
                Ipv4Addr::new(203, 0, 113, 20 + i as u8)
            };
            let hostnames = e
                .hosts
                .iter()
                .map(|h| match h.strip_prefix("*.") {
                    Some(suffix) => format!("{}.demo-tailnet.{suffix}", short(&e.name)),
                    None => h.clone(),
                })
                .collect();
            hosts.push(Host {
                name: e.name.clone(),
                netns: format!("obd-x{}", short(&e.name)),
                ip,
                namespace: None,
                labels: BTreeMap::new(),
                uid: uid(300 + i),
                hostnames,
            });
        }
        // An address nobody documented.
        hosts.push(Host {
            name: "undocumented-host".into(),
            netns: "obd-xundoc".into(),
            ip: Ipv4Addr::new(203, 0, 113, 66),
            namespace: None,
            labels: BTreeMap::new(),
            uid: uid(400),
            hostnames: vec!["paste.example.net".into()],
        });

        // One Service per component, on every port a flow names, plus rabbitmq's management
        // port (the demo's wrong-port flow). graph-gateway's Service listens on 80 and targets
        // 8080, to show a rule written on the target port matching a connection to the Service.
        let mut services = Vec::new();
        for (i, c) in model.components.iter().enumerate() {
            let mut ports: Vec<(u16, u16)> = model
                .flows
                .iter()
                .filter(|f| f.to == c.name && !f.port_forward())
                .flat_map(|f| f.ports.iter().map(|&p| (p, p)))
                .collect();
            if c.name == "rabbitmq" {
                ports.push((15672, 15672));
            }
            if c.name == "graph-gateway" {
                for p in &mut ports {
                    if p.1 == 8080 {
                        p.0 = 80;
                    }
                }
            }
            ports.sort_unstable();
            ports.dedup();
            if ports.is_empty() {
                continue;
            }
            services.push(Service {
                name: c.name.clone(),
                namespace: c.namespace.clone(),
                ip: Ipv4Addr::new(10, 96, 0, 10 + i as u8),
                ports,
                backend: c.name.clone(),
            });
        }
        Cluster {
            hosts,
            services,
            cgroup_root: cgroup2.join("observer-demo"),
            processes: Vec::new(),
            netpeer,
        }
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Creates the bridge, namespaces, addresses, routes, DNAT rules and cgroups.
    pub fn create(&mut self) -> Result<()> {
        sh("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        sh("ip", &["link", "set", BRIDGE, "up"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE],
        )?;
        sh(
            "ip",
            &[
                "route",
                "add",
                &format!("{CONTROL_PLANE_IP}/32"),
                "dev",
                BRIDGE,
            ],
        )?;
        let node_ip = NODE_IP.to_string();
        sh(
            "ip",
            &[
                "route",
                "add",
                "10.96.0.0/12",
                "dev",
                BRIDGE,
                "src",
                &node_ip,
            ],
        )?;
        // kube-proxy translates the kubernetes Service on the node itself too.
        let dnat = root_dnat("-A");
        sh(
            "iptables",
            &dnat.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        std::fs::create_dir_all(self.cgroup_root.join("runtime"))?;
        for (i, h) in self.hosts.clone().iter().enumerate() {
            let veth = format!("obdv{i}");
            sh("ip", &["netns", "add", &h.netns])?;
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &h.netns,
                ],
            )?;
            sh("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
            let ns = |args: &[&str]| {
                let mut full = vec!["netns", "exec", &h.netns];
                full.extend_from_slice(args);
                sh("ip", &full)
            };
            ns(&["ip", "link", "set", "lo", "up"])?;
            ns(&["ip", "link", "set", "eth0", "up"])?;
            ns(&["ip", "addr", "add", &format!("{}/32", h.ip), "dev", "eth0"])?;
            for r in LAB_ROUTES {
                ns(&["ip", "route", "add", r, "dev", "eth0"])?;
            }
            std::fs::create_dir_all(self.cgroup_root.join(h.cgroup()))?;
            // kube-proxy's ClusterIP translation, in every pod's namespace.
            if h.namespace.is_some() {
                // Pods resolve names through the cluster DNS, as kubelet configures them:
                // `ip netns exec` mounts this file over /etc/resolv.conf.
                if let Some(dns) = self.host(DNS_COMPONENT) {
                    let dir = netns_etc(&h.netns);
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(
                        dir.join("resolv.conf"),
                        format!("nameserver {}\noptions attempts:2 timeout:2\n", dns.ip),
                    )?;
                }
                for s in &self.services {
                    let backend = self
                        .host(&s.backend)
                        .map(|b| b.ip)
                        .context("service backend")?;
                    for (port, target) in &s.ports {
                        ns(&[
                            "iptables",
                            "-t",
                            "nat",
                            "-A",
                            "OUTPUT",
                            "-d",
                            &s.ip.to_string(),
                            "-p",
                            "tcp",
                            "--dport",
                            &port.to_string(),
                            "-j",
                            "DNAT",
                            "--to-destination",
                            &format!("{backend}:{target}"),
                        ])?;
                    }
                }
                ns(&[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "OUTPUT",
                    "-d",
                    &KUBERNETES_SERVICE_IP.to_string(),
                    "-p",
                    "tcp",
                    "--dport",
                    "443",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &format!("{CONTROL_PLANE_IP}:6443"),
                ])?;
            }
        }
        Ok(())
    }

    /// Starts `netpeer ARGS` in `host`'s namespace and cgroup (or the demo's runtime cgroup, or
    /// in the node's own namespace when `host` is None).
    pub fn spawn(
        &mut self,
        host: Option<&Host>,
        cgroup: &str,
        args: &[String],
        wait: bool,
    ) -> Result<Option<String>> {
        let procs = self.cgroup_root.join(cgroup).join("cgroup.procs");
        let mut script = format!("echo $$ > {} && exec ", procs.display());
        if let Some(h) = host {
            script.push_str(&format!("ip netns exec {} ", h.netns));
        }
        script.push_str(&self.netpeer.display().to_string());
        for a in args {
            script.push(' ');
            script.push_str(a);
        }
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if wait {
            let out = cmd.output().context("netpeer")?;
            return Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()));
        }
        let mut child = cmd.spawn().context("netpeer")?;
        // Wait for the "listening" line so clients never race the server.
        if let Some(out) = child.stdout.as_mut() {
            let mut b = [0u8; 1];
            let _ = std::io::Read::read(out, &mut b);
        }
        self.processes.push(child);
        Ok(None)
    }

    /// Starts the cluster DNS (Debian's dnsmasq) in the kube-dns pod, answering the external
    /// test hosts' names from `names` (hosts-file format) with a 5-minute TTL, on UDP and TCP 53.
    pub fn start_dns(&mut self, names: &Path) -> Result<()> {
        let dns = self
            .host(DNS_COMPONENT)
            .cloned()
            .context("the model has no kube-dns component")?;
        let procs = self.cgroup_root.join(dns.cgroup()).join("cgroup.procs");
        let script = format!(
            "echo $$ > {} && exec ip netns exec {} dnsmasq --keep-in-foreground --no-resolv \
             --no-hosts --no-poll --conf-file=/dev/null --user=root --bind-interfaces \
             --listen-address={} --addn-hosts={} --local-ttl=300 --pid-file=",
            procs.display(),
            dns.netns,
            dns.ip,
            names.display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (installed by scripts/bootstrap.sh: dnsmasq-base)")?;
        self.processes.push(child);
        let addr = std::net::SocketAddr::from((dns.ip, 53));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                bail!("the cluster DNS (dnsmasq) did not answer on {addr} within 10 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }

    /// The `/etc/hosts`-format names of the external test hosts (what DNS would answer).
    pub fn hosts_file(&self) -> String {
        let mut s = String::from("# observer demo: names of the external test hosts\n");
        for h in &self.hosts {
            for n in &h.hostnames {
                s.push_str(&format!("{} {n}\n", h.ip));
            }
        }
        s
    }

    /// The Kubernetes objects of the system, as `kubectl get pods,services,endpointslices -A -o json`
    /// prints them.
    pub fn inventory(&self) -> Value {
        let mut items = Vec::new();
        for h in self.hosts.iter().filter(|h| h.namespace.is_some()) {
            let ns = h.namespace.clone().unwrap_or_default();
            let rs = format!("{}-5d8f7c9b6", h.name);
            items.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": format!("{rs}-x7k2p"), "namespace": ns, "uid": h.uid,
                    "labels": labels_with_hash(&h.labels),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": format!("{}-rs", h.uid), "controller": true}]
                },
                "spec": {"nodeName": "demo-node", "containers": [{"name": h.name, "image": "demo"}]},
                "status": {"phase": "Running", "podIP": h.ip.to_string(), "podIPs": [{"ip": h.ip.to_string()}], "hostIP": NODE_IP.to_string()}
            }));
        }
        let mut services = self.services.clone();
        services.push(Service {
            name: "kubernetes".into(),
            namespace: "default".into(),
            ip: KUBERNETES_SERVICE_IP,
            ports: vec![(443, 6443)],
            backend: "control-plane".into(),
        });
        for s in &services {
            let selector = if s.name == "kubernetes" {
                None
            } else {
                self.host(&s.backend).map(|b| b.labels.clone())
            };
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|(p, t)| json!({"name": format!("p{p}"), "port": p, "targetPort": t, "protocol": "TCP"}))
                .collect();
            let mut spec = json!({"type": "ClusterIP", "clusterIP": s.ip.to_string(), "clusterIPs": [s.ip.to_string()], "ports": ports});
            if let Some(sel) = selector {
                spec["selector"] = json!(sel);
            }
            items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": s.name, "namespace": s.namespace}, "spec": spec}));
            let backend = self.host(&s.backend);
            let mut endpoint = json!({"addresses": [backend.map(|b| b.ip.to_string()).unwrap_or_default()], "conditions": {"ready": true}});
            if let Some(b) = backend.filter(|b| b.namespace.is_some()) {
                endpoint["targetRef"] = json!({"kind": "Pod", "namespace": b.namespace, "name": format!("{}-5d8f7c9b6-x7k2p", b.name)});
            }
            let slice_ports: Vec<Value> = s
                .ports
                .iter()
                .map(|(p, t)| json!({"name": format!("p{p}"), "port": t, "protocol": "TCP"}))
                .collect();
            items.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{}-abc12", s.name), "namespace": s.namespace, "labels": {"kubernetes.io/service-name": s.name}},
                "addressType": "IPv4", "endpoints": [endpoint], "ports": slice_ports
            }));
        }
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
    }

    /// Stops every process and removes everything `create` made. Safe to call twice.
    pub fn teardown(&mut self) {
        for mut p in self.processes.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        for h in &self.hosts {
            let _ = std::fs::remove_dir_all(netns_etc(&h.netns));
            // Also kills anything left in the namespace.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &h.netns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &h.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("iptables")
            .args(root_dnat("-D"))
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", BRIDGE])
            .stderr(Stdio::null())
            .status();
        // Empty cgroups are removed leaves first.
        let mut dirs = Vec::new();
        collect_dirs(&self.cgroup_root, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The component that serves the cluster DNS.
pub const DNS_COMPONENT: &str = "kube-dns";

/// Files `ip netns exec NETNS` mounts over /etc.
fn netns_etc(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// The node's own DNAT of the kubernetes Service (`-A` adds it, `-D` removes it).
fn root_dnat(op: &str) -> Vec<String> {
    [
        "-t",
        "nat",
        op,
        "OUTPUT",
        "-d",
        "10.96.0.1",
        "-p",
        "tcp",
        "--dport",
        "443",
        "-m",
        "comment",
        "--comment",
        "observer-demo",
        "-j",
        "DNAT",
        "--to-destination",
        "172.18.0.2:6443",
    ]
    .map(String::from)
    .to_vec()
}

/// A Deployment's pods carry their ReplicaSet's pod-template-hash.
fn labels_with_hash(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.insert("pod-template-hash".into(), "5d8f7c9b6".into());
    l
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
