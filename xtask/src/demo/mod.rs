//! `cargo xtask demo`: the Trackunit system as a cluster in a box, watched by the real agent.
//!
//! Builds the system of `deploy/architecture/trackunit.yaml` (see `cluster.rs`), starts the
//! agent on that model with the matching inventory, drives every documented flow and four
//! undocumented ones, shows the flows and verdicts live, serves `/metrics`, and ends with a
//! summary that checks every verdict against what was driven (and an audit report).

mod cluster;
mod model;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use cluster::{CONTROL_PLANE_IP, Cluster, Host, KUBERNETES_SERVICE_IP, NODE_IP};
use observer_common::record::{Direction, Endpoint, FlowRecord, Protocol, Scope, Verdict};
use serde_json::json;

pub struct DemoOptions {
    /// How long to keep showing live traffic after the scripted flows.
    pub linger: Duration,
    pub out_dir: PathBuf,
    pub metrics_addr: String,
}

/// What the demo drove and what the agent must have concluded.
#[derive(Clone, Debug)]
struct Expect {
    from: String,
    to: String,
    port: u16,
    /// `Ok(rule id)` for a documented flow, `Err(reason)` for an undocumented one.
    verdict: Result<String, &'static str>,
    port_forward: bool,
    what: String,
}

fn party(ep: &Endpoint) -> String {
    ep.component
        .clone()
        .or_else(|| ep.workload.as_ref().map(|w| w.name.clone()))
        .or_else(|| ep.host.clone())
        .or_else(|| ep.ip.map(|i| i.to_string()))
        .unwrap_or_else(|| "?".into())
}

fn line(r: &FlowRecord) -> String {
    let arrow = match r.direction {
        Direction::Egress => "->",
        Direction::Ingress => "=>",
    };
    let dst = match (&r.dst.host, r.dst.scope) {
        (Some(h), _) => format!("{} ({h})", party(&r.dst)),
        (None, Some(Scope::External)) => format!(
            "{} ({})",
            party(&r.dst),
            r.dst.ip.map(|i| i.to_string()).unwrap_or_default()
        ),
        _ => party(&r.dst),
    };
    let flow = format!(
        "{} {arrow} {dst}:{}",
        party(&r.src),
        r.dst.port.unwrap_or(0)
    );
    match r.verdict {
        Some(Verdict::Expected) => format!(
            "  ok          {flow:<64} x{:<4} rule {}",
            r.count,
            r.rule.as_deref().unwrap_or("")
        ),
        Some(Verdict::Unexpected) => format!(
            "  UNEXPECTED  {flow:<64} x{:<4} {} [{}]",
            r.count,
            r.reason.map_or("", observer_common::record::Reason::name),
            r.dst.scope.map_or("", observer_common::record::Scope::name)
        ),
        None => format!("  ?           {flow:<64} x{}", r.count),
    }
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup2 mount in /proc/self/mounts: the demo places pods' processes in cgroup2 like kubelet does")
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

/// Prints each record as the agent writes it, until `stop` is set.
fn live_view(log: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut offset = 0u64;
        let mut pending = String::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut f) = std::fs::File::open(&log)
                && f.seek(SeekFrom::Start(offset)).is_ok()
            {
                let mut chunk = String::new();
                if let Ok(n) = f.read_to_string(&mut chunk) {
                    offset += n as u64;
                    pending.push_str(&chunk);
                }
                while let Some(end) = pending.find('\n') {
                    let l: String = pending.drain(..=end).collect();
                    if let Ok(r) = serde_json::from_str::<FlowRecord>(&l)
                        && r.src.ip.is_some_and(in_lab)
                        && r.dst.ip.is_some_and(|ip| in_lab(ip) || ip.is_loopback())
                    {
                        println!("{}", line(&r));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Addresses of the demo system (everything else on this machine is not the demo's).
fn in_lab(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 10 && (o[1] == 244 || (96..112).contains(&o[1])))
                || (o[0] == 172 && o[1] == 18 && o[2] == 0)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || o[0] == 127
        }
        std::net::IpAddr::V6(_) => false,
    }
}

struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(root: &Path, opts: &DemoOptions, interrupted: &AtomicBool) -> Result<bool> {
    let target = root.join("target/debug");
    let model_path = root.join("deploy/architecture/trackunit.yaml");
    let model = model::load(&model_path)?;
    std::fs::create_dir_all(&opts.out_dir)?;
    let out = |name: &str| opts.out_dir.join(name);
    let flow_log = out("flows.jsonl");
    let _ = std::fs::remove_file(&flow_log);

    // A crashed earlier run may have left its system behind.
    if Path::new("/sys/class/net").join(cluster::BRIDGE).exists() {
        println!("removing the system a previous demo left behind");
        Cluster::plan(&model, target.join("netpeer"), &cgroup2_mount()?).teardown();
    }
    let mut cluster = Cluster::plan(&model, target.join("netpeer"), &cgroup2_mount()?);
    println!(
        "== building the Trackunit system: {} workloads and test hosts on bridge {}",
        cluster.hosts.len(),
        cluster::BRIDGE
    );
    cluster.create()?;
    std::fs::write(
        out("inventory.json"),
        serde_json::to_string_pretty(&cluster.inventory())?,
    )?;
    // The external test hosts' names, answered by the cluster DNS. The agent gets no names of
    // its own: every name it shows comes from the DNS answers the pods received.
    std::fs::write(out("dns-hosts"), cluster.hosts_file())?;
    std::fs::write(
        out("hosts"),
        "# observer demo: empty; names come from the DNS answers pods receive\n",
    )?;
    cluster.start_dns(&out("dns-hosts"))?;

    // Servers on every documented port (the target port of a Service), and on the ports of
    // the undocumented flows.
    let mut servers: BTreeMap<(String, u16), ()> = BTreeMap::new();
    for f in &model.flows {
        for &p in &f.ports {
            let key = match f.to.as_str() {
                "kube-apiserver" => ("control-plane".to_owned(), 6443),
                "*" => continue,
                // dnsmasq serves TCP 53 there.
                cluster::DNS_COMPONENT if p == 53 => continue,
                other => (other.to_owned(), p),
            };
            servers.insert(key, ());
        }
    }
    servers.insert(("rabbitmq".into(), 15672), ());
    servers.insert(("undocumented-host".into(), 443), ());
    for (name, port) in servers.keys() {
        if name == "node" {
            cluster.spawn(
                None,
                "runtime",
                &["serve".into(), format!("{NODE_IP}:{port}")],
                false,
            )?;
        } else if let Some(h) = cluster.host(name).cloned() {
            let cg = h.cgroup();
            cluster.spawn(
                Some(&h),
                &cg,
                &["serve".into(), format!("0.0.0.0:{port}")],
                false,
            )?;
        }
    }

    let observer = target.join("observer");
    let agent_log = std::fs::File::create(out("agent.log"))?;
    let child = Command::new(&observer)
        .args(["run", "--architecture"])
        .arg(&model_path)
        .arg("--inventory")
        .arg(out("inventory.json"))
        .arg("--hosts-file")
        .arg(out("hosts"))
        .args([
            "--pod-cidr",
            cluster::POD_CIDR,
            "--service-cidr",
            cluster::SERVICE_CIDR,
        ])
        .args(["--node-ip", &NODE_IP.to_string(), "--node", "demo-node"])
        .args([
            "--metrics-addr",
            &opts.metrics_addr,
            "--poll-interval",
            "200ms",
            "--flush-interval",
            "2s",
        ])
        .arg("--flow-log")
        .arg(&flow_log)
        .stdout(Stdio::null())
        .stderr(agent_log)
        .spawn()
        .with_context(|| format!("starting {}", observer.display()))?;
    let agent = AgentProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&opts.metrics_addr, "/readyz").map(|r| r.0) != Some(200) {
        if Instant::now() > deadline {
            bail!(
                "the agent did not become ready within 30 s; see {}",
                out("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "== agent ready: metrics on http://{}/metrics, flow log {}",
        opts.metrics_addr,
        flow_log.display()
    );
    println!("   (-> a connection opened here, => one accepted from outside the cluster)");
    let stop_view = Arc::new(AtomicBool::new(false));
    let view = live_view(flow_log.clone(), stop_view.clone());

    let mut expects = Vec::new();
    let first_component = model
        .components
        .iter()
        .find(|c| c.name == "graph-gateway")
        .or(model.components.first());
    // Direct flows first: the agent learns which pod lives in which namespace from them, which
    // the port-forward (a loopback connection inside the rabbitmq pod) relies on.
    let mut flows: Vec<_> = model.flows.iter().collect();
    flows.sort_by_key(|f| f.port_forward());
    for f in flows {
        for &port in &f.ports {
            if interrupted.load(Ordering::Relaxed) {
                break;
            }
            let from = if f.from == "*" {
                first_component.map(|c| c.name.clone()).unwrap_or_default()
            } else {
                f.from.clone()
            };
            let Some((client, cgroup, addr, shown_port)) =
                route(&cluster, &from, &f.to, port, f.port_forward())
            else {
                println!(
                    "  (cannot drive {} {from} -> {}:{port} in the demo)",
                    f.id, f.to
                );
                continue;
            };
            let name = dns_name(&cluster, client.as_ref(), &f.to);
            drive(
                &mut cluster,
                client.as_ref(),
                &cgroup,
                &addr,
                name.as_deref(),
            )?;
            expects.push(Expect {
                from: from.clone(),
                to: f.to.clone(),
                port: shown_port,
                verdict: Ok(f.id.clone()),
                port_forward: f.port_forward(),
                what: format!("{} ({from} -> {}:{port})", f.id, f.to),
            });
        }
    }
    println!("== now four flows nobody documented");
    let undocumented: [(&str, &str, u16, &str, &str); 4] = [
        (
            "graph-gateway",
            "undocumented-host",
            443,
            "unknown-destination",
            "egress to an undocumented host (paste.example.net)",
        ),
        (
            "graph-gateway",
            "redpanda",
            9092,
            "undocumented-flow",
            "graph-gateway straight to redpanda",
        ),
        (
            "graph-gateway",
            "rabbitmq",
            15672,
            "wrong-port",
            "graph-gateway to rabbitmq on the management port",
        ),
        (
            "legacy-reporter",
            "rabbitmq",
            5672,
            "unknown-source",
            "a workload missing from the model",
        ),
    ];
    for (from, to, port, reason, what) in undocumented {
        let Some((client, cgroup, addr, shown_port)) = route(&cluster, from, to, port, false)
        else {
            continue;
        };
        let name = dns_name(&cluster, client.as_ref(), to);
        drive(
            &mut cluster,
            client.as_ref(),
            &cgroup,
            &addr,
            name.as_deref(),
        )?;
        let to_party = if to == "undocumented-host" {
            "paste.example.net".to_owned()
        } else {
            to.to_owned()
        };
        expects.push(Expect {
            from: from.into(),
            to: to_party,
            port: shown_port,
            verdict: Err(reason),
            port_forward: false,
            what: what.into(),
        });
    }

    // Let the agent's next poll (200 ms) pick up the last flows before anything is read back.
    std::thread::sleep(Duration::from_secs(1));
    let until = Instant::now() + opts.linger;
    if !opts.linger.is_zero() {
        println!(
            "== watching for {}s more (Ctrl-C ends the demo; metrics on http://{}/metrics)",
            opts.linger.as_secs(),
            opts.metrics_addr
        );
    }
    while Instant::now() < until && !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some((_, body)) = http_get(&opts.metrics_addr, "/metrics") {
        std::fs::write(out("metrics.txt"), body)?;
    }
    drop(agent); // SIGTERM: the agent flushes every counted connection, then detaches.
    std::thread::sleep(Duration::from_millis(400));
    stop_view.store(true, Ordering::Relaxed);
    let _ = view.join();
    // The test hosts outside the cluster (the internet client, the external services) share
    // this kernel, so the agent sees their sockets too; a real node would not. The summary
    // keeps what a node sees: the pods, the control plane (another node) and the node itself.
    let outside: Vec<u32> = cluster
        .hosts
        .iter()
        .filter(|h| h.namespace.is_none() && h.name != "control-plane")
        .filter_map(|h| netns_inode(&h.netns))
        .collect();
    drop(cluster);
    println!("== the demo system is removed");

    let records = read_records(&flow_log)?;
    let demo: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| !outside.contains(&r.netns))
        .filter(|r| r.src.ip.is_some_and(in_lab) && r.dst.ip.is_some_and(in_lab))
        .collect();
    let ok = summarize(&demo, &expects, &opts.out_dir)?;
    let report = Command::new(&observer)
        .args(["report", "--architecture"])
        .arg(&model_path)
        .arg("--flow-log")
        .arg(&flow_log)
        .args(["--format", "html", "--output"])
        .arg(out("report.html"))
        .status();
    let report_md = Command::new(&observer)
        .args(["report", "--architecture"])
        .arg(&model_path)
        .arg("--flow-log")
        .arg(&flow_log)
        .args(["--format", "md", "--output"])
        .arg(out("report.md"))
        .status();
    if report.is_ok() && report_md.is_ok() {
        println!(
            "audit report: {} and {}",
            out("report.html").display(),
            out("report.md").display()
        );
    }
    Ok(ok)
}

fn netns_inode(name: &str) -> Option<u32> {
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
}

fn read_records(path: &Path) -> Result<Vec<FlowRecord>> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for l in BufReader::new(f).lines() {
        let l = l?;
        if let Ok(r) = serde_json::from_str(&l) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Where a connection from `from` to `to` on `port` starts and goes: (client host, cgroup,
/// address, the port the record will show).
fn route(
    c: &Cluster,
    from: &str,
    to: &str,
    port: u16,
    port_forward: bool,
) -> Option<(Option<Host>, String, String, u16)> {
    if port_forward {
        // The container runtime, outside every pod, enters the pod's network namespace.
        return Some((
            Some(c.host(to)?.clone()),
            "runtime".into(),
            format!("127.0.0.1:{port}"),
            port,
        ));
    }
    let client = match from {
        "node" => None,
        "kube-apiserver" => Some(c.host("control-plane")?.clone()),
        other => Some(c.host(other)?.clone()),
    };
    let cgroup = client.as_ref().map_or("runtime".to_owned(), Host::cgroup);
    let from_pod = client.as_ref().is_some_and(|h| h.namespace.is_some());
    let (addr, shown): (String, u16) = match to {
        "node" => (format!("{NODE_IP}:{port}"), port),
        "kube-apiserver" if (from_pod || client.is_none()) && port == 443 => {
            (format!("{KUBERNETES_SERVICE_IP}:443"), 443)
        }
        "kube-apiserver" => (format!("{CONTROL_PLANE_IP}:6443"), 6443),
        other => {
            let host = c.host(other)?;
            match c.service(other) {
                // Pods reach a component through its Service (kube-proxy's DNAT).
                Some(s) if from_pod => {
                    let (sp, _) = s
                        .ports
                        .iter()
                        .find(|(_, t)| *t == port)
                        .or_else(|| s.ports.iter().find(|(p, _)| *p == port))?;
                    (format!("{}:{sp}", s.ip), *sp)
                }
                // Outside clients and the node reach the pod itself.
                _ => (format!("{}:{port}", host.ip), port),
            }
        }
    };
    Some((client, cgroup, addr, shown))
}

/// The name a pod looks up to reach `to`, when `to` is an external test host with one.
fn dns_name(c: &Cluster, client: Option<&Host>, to: &str) -> Option<String> {
    client.filter(|h| h.namespace.is_some())?;
    c.host(to)?.hostnames.first().cloned()
}

/// Three connections from `client` to `addr`; a pod reaching an external by `name` looks the
/// name up through the cluster DNS first, as an application does.
fn drive(
    c: &mut Cluster,
    client: Option<&Host>,
    cgroup: &str,
    addr: &str,
    name: Option<&str>,
) -> Result<()> {
    let (args, ok): (Vec<String>, &str) = match name {
        Some(name) => {
            let port = addr.rsplit(':').next().unwrap_or_default();
            (
                vec!["resolve".into(), name.into(), port.into(), "3".into()],
                r#""outcomes":{"established":3}"#,
            )
        }
        None => (
            vec!["connect".into(), addr.into(), "3".into()],
            r#"{"established":3}"#,
        ),
    };
    let result = c.spawn(client, cgroup, &args, true)?;
    if !result.as_deref().is_some_and(|r| r.contains(ok)) {
        println!(
            "  (connections to {addr} ended {})",
            result.unwrap_or_default()
        );
    }
    Ok(())
}

/// Checks every driven flow against the records; prints and writes the summary.
fn summarize(records: &[&FlowRecord], expects: &[Expect], out_dir: &Path) -> Result<bool> {
    let mut expected_ok = Vec::new();
    let mut unexpected_ok = Vec::new();
    let mut mismatches = Vec::new();
    let matches = |e: &Expect, r: &FlowRecord| {
        let src_ok = e.port_forward || party(&r.src) == e.from;
        let dst = r
            .dst
            .component
            .clone()
            .or_else(|| r.dst.host.clone())
            .unwrap_or_else(|| party(&r.dst));
        // The demo drives TCP connections; the pods' DNS queries are UDP flows of their own.
        r.protocol == Protocol::Tcp
            && src_ok
            && dst == e.to
            && r.dst.port == Some(e.port)
            && (!e.port_forward || r.dst.scope == Some(Scope::Local))
    };
    for e in expects {
        let found: Vec<&&FlowRecord> = records.iter().filter(|r| matches(e, r)).collect();
        let total: u64 = found.iter().map(|r| r.count).sum();
        let verdicts_ok = !found.is_empty()
            && found.iter().all(|r| match &e.verdict {
                Ok(rule) => {
                    r.verdict == Some(Verdict::Expected) && r.rule.as_deref() == Some(rule.as_str())
                }
                Err(reason) => {
                    r.verdict == Some(Verdict::Unexpected)
                        && r.reason.map(observer_common::record::Reason::name) == Some(*reason)
                }
            });
        let entry = json!({"flow": e.what, "from": e.from, "to": e.to, "port": e.port, "connections": total,
            "rule": e.verdict.as_ref().ok(), "reason": e.verdict.as_ref().err()});
        match (verdicts_ok, &e.verdict) {
            (true, Ok(_)) => expected_ok.push(entry),
            (true, Err(_)) => unexpected_ok.push(entry),
            (false, _) => mismatches.push(json!({"flow": e.what, "records": found.iter().map(|r| line(r)).collect::<Vec<_>>()})),
        }
    }
    // Any other unexpected flow of the demo system is a surprise.
    for r in records
        .iter()
        .filter(|r| r.verdict == Some(Verdict::Unexpected))
    {
        if !expects.iter().any(|e| e.verdict.is_err() && matches(e, r)) {
            mismatches.push(json!({"flow": "not driven as unexpected", "records": [line(r)]}));
        }
    }
    println!();
    let queries: Vec<&&FlowRecord> = records
        .iter()
        .filter(|r| r.protocol == Protocol::Udp)
        .collect();
    println!(
        "== the pods' DNS queries over UDP: {} in {} flows, {} judged expected; external destinations were named by the answers each pod received",
        queries.iter().map(|r| r.count).sum::<u64>(),
        queries.len(),
        queries
            .iter()
            .filter(|r| r.verdict == Some(Verdict::Expected))
            .map(|r| r.count)
            .sum::<u64>()
    );
    let documented = expects.iter().filter(|e| e.verdict.is_ok()).count();
    println!(
        "== summary: {documented} documented flows driven, {} undocumented",
        expects.len() - documented
    );
    println!("expected (documented and seen):");
    for e in &expected_ok {
        println!(
            "  ok          {:<60} rule {}",
            e["flow"].as_str().unwrap_or(""),
            e["rule"].as_str().unwrap_or("")
        );
    }
    println!("unexpected (caught):");
    for e in &unexpected_ok {
        println!(
            "  UNEXPECTED  {:<60} {}",
            e["flow"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or("")
        );
    }
    if mismatches.is_empty() {
        println!(
            "verdict: every documented flow was judged expected and exactly the {} undocumented flows were caught",
            unexpected_ok.len()
        );
    } else {
        println!("MISMATCHES ({}):", mismatches.len());
        for m in &mismatches {
            println!("  {m}");
        }
    }
    let summary =
        json!({"expected": expected_ok, "unexpected": unexpected_ok, "mismatches": mismatches});
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "summary written to {}",
        out_dir.join("summary.json").display()
    );
    Ok(mismatches.is_empty())
}
