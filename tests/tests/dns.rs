//! DNS-aware egress end to end: the kernel's DNS programs attached at the cgroup2 root, real
//! name servers (Debian's `dnsmasq`) in test namespaces, and pods that resolve names with the
//! system resolver (glibc's getaddrinfo, reading the resolv.conf that `ip netns exec` gives their
//! namespace) before connecting, as applications do.
//!
//! Hosts, all on one isolated bridge:
//! - gateway (pod): resolves through the documented resolver, over UDP;
//! - reporter (pod): resolves through an undocumented resolver;
//! - tcp-client (pod): resolves through the documented resolver over TCP (`options use-vc`);
//! - resolver: the documented name server; rogue: an undocumented one;
//! - entra, funnel, paste, brief: servers on 443 that the answers point to.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use observer_common::record::{FlowRecord, Protocol, Reason, Verdict};
use observer_tests::{
    Agent, Background, DELETE_AT_EVERY_SCAN, Host, Lab, objects::deployment_pod, of_netns, peer,
    serve,
};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(15);
const NS: &str = "shop";

/// A name server of the test's own: dnsmasq answering only from its command line, logging every
/// query so the test can count what the pods sent.
struct NameServer {
    _process: Background,
    log: PathBuf,
}

impl NameServer {
    fn start(host: &Host, dir: &Path, records: &[String]) -> NameServer {
        let log = dir.join(format!("{}.dnsmasq.log", host.netns));
        let mut cmd = host.cmd("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--user=root",
            "--bind-interfaces",
            "--log-queries",
            &format!("--listen-address={}", host.ip4),
            &format!("--log-facility={}", log.display()),
            &format!(
                "--pid-file={}",
                dir.join(format!("{}.pid", host.netns)).display()
            ),
        ]);
        cmd.args(records);
        let process = Background(cmd.spawn().expect("spawn dnsmasq"));
        let pid = process.0.id();
        let server = NameServer {
            _process: process,
            log,
        };
        // Ready once it listens on TCP 53 (it binds UDP first), as the namespace's own socket
        // table says (`/proc/PID/net/tcp` of the process, which is in it): a connect from this
        // process, in the machine's namespace, would follow its default route off the machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        let table = format!("/proc/{pid}/net/tcp");
        let listening = || {
            fs::read_to_string(&table)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(1).is_some_and(|a| a.ends_with(":0035")) && f.get(3) == Some(&"0A")
                })
        };
        while !listening() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq on {}:53 did not start",
                host.ip4
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Queries the server logged from `client`, e.g. `query[A] name from 10.1.2.3`.
    fn queries_from(&self, client: Ipv4Addr) -> u64 {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let from = format!(" from {client}");
        text.lines()
            .filter(|l| l.contains("query[") && l.ends_with(&from))
            .count() as u64
    }
}

/// `/etc/netns/<netns>/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf.
struct ResolvConf(PathBuf);

impl ResolvConf {
    fn write(host: &Host, nameserver: Ipv4Addr, options: &str) -> ResolvConf {
        ResolvConf::write_any(host, &nameserver.to_string(), options)
    }

    fn write_any(host: &Host, nameserver: &str, options: &str) -> ResolvConf {
        let dir = PathBuf::from("/etc/netns").join(&host.netns);
        fs::create_dir_all(&dir).expect("/etc/netns dir");
        fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions attempts:1 timeout:2 {options}\n"),
        )
        .expect("resolv.conf");
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Resolves `name` in `host` and connects `n` times to its address on 443; returns the address.
fn resolve(host: &Host, name: &str, n: u64) -> Ipv4Addr {
    let (out, _) = peer(host, &["resolve", name, "443", &n.to_string()]);
    let addr = out["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} did not resolve in {}: {out}", host.netns));
    if n > 0 {
        assert_eq!(out["outcomes"], json!({"established": n}), "{name}");
    }
    addr.parse().expect("an IPv4 address")
}

fn connect(host: &Host, addr: Ipv4Addr, n: u64) {
    let (out, _) = peer(host, &["connect", &format!("{addr}:443"), &n.to_string()]);
    assert_eq!(out, json!({"established": n}));
}

/// One line per (protocol, destination, host, component, verdict, reason, rule) with its count.
fn tally(records: &[&FlowRecord]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in records {
        let line = format!(
            "{:?} {}:{} host={} component={} {:?} {:?} rule={}",
            r.protocol,
            r.dst.ip.map(|i| i.to_string()).unwrap_or_default(),
            r.dst.port.unwrap_or(0),
            r.dst.host.as_deref().unwrap_or("-"),
            r.dst.component.as_deref().unwrap_or("-"),
            r.verdict,
            r.reason,
            r.rule.as_deref().unwrap_or("-"),
        );
        *out.entry(line).or_default() += r.count;
    }
    out
}

fn udp_queries(records: &[&FlowRecord], server: Ipv4Addr) -> u64 {
    records
        .iter()
        .filter(|r| r.protocol == Protocol::Udp && r.dst.ip == Some(server.into()))
        .map(|r| r.count)
        .sum()
}

#[test]
fn pods_egress_is_named_by_the_dns_answers_each_pod_received() {
    let lab = Lab::new(10);
    let h = &lab.hosts;
    let (gateway, reporter, tcp_client) = (&h[0], &h[1], &h[2]);
    let (resolver, rogue) = (&h[3], &h[4]);
    let (entra, funnel, paste, brief, unnamed) = (&h[5], &h[6], &h[7], &h[8], &h[9]);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();

    // The documented resolver: Entra ID's name is a CNAME, as the real one is; a Tailscale
    // funnel name; an undocumented paste site; and a name whose answer lives one second.
    let resolver_server = NameServer::start(
        resolver,
        d,
        &[
            "--cname=login.microsoftonline.com,login.mso.msidentity.com,300".into(),
            format!("--host-record=login.mso.msidentity.com,{},300", entra.ip4),
            format!(
                "--host-record=tu-ingestion.tail1234.ts.net,{},300",
                funnel.ip4
            ),
            format!("--host-record=paste.example.net,{},300", paste.ip4),
            format!("--host-record=brief.tail1234.ts.net,{},1", brief.ip4),
        ],
    );
    let rogue_server = NameServer::start(
        rogue,
        d,
        &[format!(
            "--host-record=tu-ingestion.tail1234.ts.net,{},300",
            unnamed.ip4
        )],
    );
    let _conf = [
        ResolvConf::write(gateway, resolver.ip4, ""),
        ResolvConf::write(reporter, rogue.ip4, ""),
        ResolvConf::write(tcp_client, resolver.ip4, "use-vc"),
    ];
    let _servers: Vec<_> = [entra, funnel, paste, brief, unnamed]
        .iter()
        .map(|s| serve(s, &format!("{}:443", s.ip4)))
        .collect();

    let arch = d.join("architecture.yaml");
    fs::write(
        &arch,
        format!(
            "apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: dns\n\
             components:\n\
             - {{name: gateway, namespace: {NS}, selector: {{app.kubernetes.io/name: gateway}}}}\n\
             - {{name: reporter, namespace: {NS}, selector: {{app.kubernetes.io/name: reporter}}}}\n\
             - {{name: tcp-client, namespace: {NS}, selector: {{app.kubernetes.io/name: tcp-client}}}}\n\
             externals:\n\
             - {{name: cluster-resolver, cidrs: [{}/32]}}\n\
             - {{name: microsoft-entra-id, hosts: [login.microsoftonline.com]}}\n\
             - {{name: tu-ingestion-service, hosts: [\"*.ts.net\"]}}\n\
             flows:\n\
             - {{id: gateway-dns, from: gateway, to: cluster-resolver, ports: [53]}}\n\
             - {{id: reporter-dns, from: reporter, to: cluster-resolver, ports: [53]}}\n\
             - {{id: tcp-client-dns, from: tcp-client, to: cluster-resolver, ports: [53]}}\n\
             - {{id: gateway-entra, from: gateway, to: microsoft-entra-id, ports: [443]}}\n\
             - {{id: reporter-entra, from: reporter, to: microsoft-entra-id, ports: [443]}}\n\
             - {{id: gateway-funnel, from: gateway, to: tu-ingestion-service, ports: [443]}}\n\
             - {{id: tcp-client-funnel, from: tcp-client, to: tu-ingestion-service, ports: [443]}}\n",
            resolver.ip4
        ),
    )
    .expect("architecture");
    let inventory = d.join("inventory.yaml");
    let pods: Vec<_> = [
        ("gateway", gateway),
        ("reporter", reporter),
        ("tcp-client", tcp_client),
    ]
    .iter()
    .map(|(name, host)| deployment_pod(NS, name, "x1", &host.ip4.to_string()))
    .collect();
    fs::write(
        &inventory,
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": pods}))
            .expect("inventory"),
    )
    .expect("inventory");
    // No agent-side resolution: every name below comes from the pods' own answers.
    let hosts = d.join("hosts");
    fs::write(&hosts, "").expect("hosts file");
    let pod_cidrs: Vec<String> = [gateway, reporter, tcp_client]
        .iter()
        .flat_map(|h| ["--pod-cidr".to_owned(), format!("{}/32", h.ip4)])
        .collect();
    let mut args: Vec<String> = [
        "--architecture",
        &arch.display().to_string(),
        "--inventory",
        &inventory.display().to_string(),
        "--hosts-file",
        &hosts.display().to_string(),
        "--service-cidr",
        "10.250.0.0/24",
        "--dns-grace",
        "1s",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(pod_cidrs);
    let agent = Agent::start(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // 1. A documented name behind a CNAME, and a *.ts.net name: named, judged expected.
    assert_eq!(resolve(gateway, "login.microsoftonline.com", 2), entra.ip4);
    assert_eq!(
        resolve(gateway, "tu-ingestion.tail1234.ts.net", 1),
        funnel.ip4
    );
    // 2. An undocumented name: unexpected egress, with its name.
    assert_eq!(resolve(gateway, "paste.example.net", 1), paste.ip4);
    // 3. Over TCP.
    assert_eq!(
        resolve(tcp_client, "tu-ingestion.tail1234.ts.net", 1),
        funnel.ip4
    );
    // 4. Another pod reaching Entra's address without resolving it (its resolver answers
    //    nothing for it): the gateway's answer must not name it.
    connect(reporter, entra.ip4, 1);
    // ... and it resolves through an undocumented resolver.
    assert_eq!(
        resolve(reporter, "tu-ingestion.tail1234.ts.net", 0),
        unnamed.ip4
    );
    // 5. An answer that lived 1 s (+ 1 s grace) names nothing 3 s later.
    assert_eq!(resolve(gateway, "brief.tail1234.ts.net", 0), brief.ip4);
    std::thread::sleep(Duration::from_secs(3));
    connect(gateway, brief.ip4, 1);

    let (g, r, t) = (
        gateway.netns_inode(),
        reporter.netns_inode(),
        tcp_client.netns_inode(),
    );
    let gateway_queries = resolver_server.queries_from(gateway.ip4);
    let reporter_queries = rogue_server.queries_from(reporter.ip4);
    // getaddrinfo asks for A and AAAA: two queries per name, four names.
    assert_eq!(
        gateway_queries, 8,
        "queries the resolver logged from the gateway"
    );
    assert_eq!(
        reporter_queries, 2,
        "queries the rogue logged from the reporter"
    );
    let records = agent.wait_for(SETTLE, "every flow, the UDP queries included", |rs| {
        let (gr, rr) = (of_netns(rs, g), of_netns(rs, r));
        udp_queries(&gr, resolver.ip4) == gateway_queries
            && udp_queries(&rr, rogue.ip4) == reporter_queries
            && gr.iter().any(|x| x.dst.ip == Some(brief.ip4.into()))
            && rr.iter().any(|x| x.dst.ip == Some(entra.ip4.into()))
            && of_netns(rs, t).iter().any(|x| x.dst.port == Some(443))
    });

    let rs = |ns| of_netns(&records, ns);
    let expect =
        |lines: &[(String, u64)]| -> BTreeMap<String, u64> { lines.iter().cloned().collect() };
    let ok = format!("{:?} None", Some(Verdict::Expected));
    let bad = |reason: Reason| format!("{:?} {:?}", Some(Verdict::Unexpected), Some(reason));
    assert_eq!(
        tally(&rs(g)),
        expect(&[
            (
                format!(
                    "Udp {}:53 host=- component=cluster-resolver {ok} rule=gateway-dns",
                    resolver.ip4
                ),
                8
            ),
            (
                format!(
                    "Tcp {}:443 host=login.microsoftonline.com component=microsoft-entra-id {ok} rule=gateway-entra",
                    entra.ip4
                ),
                2
            ),
            (
                format!(
                    "Tcp {}:443 host=tu-ingestion.tail1234.ts.net component=tu-ingestion-service {ok} rule=gateway-funnel",
                    funnel.ip4
                ),
                1
            ),
            (
                format!(
                    "Tcp {}:443 host=paste.example.net component=- {} rule=-",
                    paste.ip4,
                    bad(Reason::UnknownDestination)
                ),
                1
            ),
            (
                format!(
                    "Tcp {}:443 host=- component=- {} rule=-",
                    brief.ip4,
                    bad(Reason::UnknownDestination)
                ),
                1
            ),
        ]),
        "the gateway's flows"
    );
    assert_eq!(
        tally(&rs(r)),
        expect(&[
            (
                format!(
                    "Udp {}:53 host=- component=- {} rule=-",
                    rogue.ip4,
                    bad(Reason::UnknownDestination)
                ),
                2
            ),
            (
                format!(
                    "Tcp {}:443 host=- component=- {} rule=-",
                    entra.ip4,
                    bad(Reason::UnknownDestination)
                ),
                1
            ),
        ]),
        "the reporter's flows: its own answers only"
    );
    // Over TCP the DNS exchange is itself a TCP connection to port 53: glibc sends both
    // queries over one connection.
    assert_eq!(resolver_server.queries_from(tcp_client.ip4), 2);
    assert_eq!(
        tally(&rs(t)),
        expect(&[
            (
                format!(
                    "Tcp {}:53 host=- component=cluster-resolver {ok} rule=tcp-client-dns",
                    resolver.ip4
                ),
                1
            ),
            (
                format!(
                    "Tcp {}:443 host=tu-ingestion.tail1234.ts.net component=tu-ingestion-service {ok} rule=tcp-client-funnel",
                    funnel.ip4
                ),
                1
            ),
        ]),
        "the TCP client's flows"
    );

    // The unexpected egress metric carries the learned name.
    let (_, metrics) = agent.get("/metrics");
    let paste_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("observer_unexpected_connections_total{")
                && l.contains("dst_name=\"paste.example.net\"")
        })
        .unwrap_or_else(|| {
            panic!("no unexpected-egress series named paste.example.net:\n{metrics}")
        });
    assert!(paste_line.ends_with(" 1"), "{paste_line}");
    assert_eq!(
        agent.metric("observer_kernel_losses_total{kind=\"dns_ring_full\"}"),
        0.0
    );
    assert!(
        agent.metric("observer_dns_names_expired_total") >= 1.0,
        "the brief answer expired"
    );
}

/// Every place a DNS count or name can be lost has a counter that rises: a full response ring
/// (`dns_ring_full`), a full query map (`dns_query_map_full`, one entry here) and the names
/// table's bound (`observer_dns_names_evicted_total`, one name here).
#[test]
fn dns_losses_are_counted_where_they_happen() {
    let lab = Lab::new(5);
    let h = &lab.hosts;
    let (busy, quiet, resolver, funnel, paste) = (&h[0], &h[1], &h[2], &h[3], &h[4]);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = NameServer::start(
        resolver,
        dir.path(),
        &[
            format!(
                "--host-record=tu-ingestion.tail1234.ts.net,{},300",
                funnel.ip4
            ),
            format!("--host-record=paste.example.net,{},300", paste.ip4),
        ],
    );
    let _conf = [
        ResolvConf::write(busy, resolver.ip4, ""),
        ResolvConf::write(quiet, resolver.ip4, ""),
    ];
    let _servers = [
        serve(funnel, &format!("{}:443", funnel.ip4)),
        serve(paste, &format!("{}:443", paste.ip4)),
    ];
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "").expect("hosts file");
    // The ring is drained every 2 s: 80 responses in a burst do not fit in 4 KiB.
    let agent = Agent::start(&[
        "--no-kubernetes",
        "--hosts-file",
        &hosts.display().to_string(),
        "--dns-ring-bytes",
        "4096",
        "--dns-query-map-size",
        "1",
        "--dns-max-names",
        "1",
        "--poll-interval",
        "2s",
        "--flush-interval",
        "2s",
    ]);
    let ring_full = "observer_kernel_losses_total{kind=\"dns_ring_full\"}";
    let map_full = "observer_kernel_losses_total{kind=\"dns_query_map_full\"}";
    // Responses by outcome, all outcomes (dnsmasq refuses AAAA for a name it holds only an
    // IPv4 record of).
    let responses = |agent: &Agent| -> f64 {
        let (_, m) = agent.get("/metrics");
        m.lines()
            .filter(|l| l.starts_with("observer_dns_responses_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };

    let (out, _) = peer(busy, &["lookups", "tu-ingestion.tail1234.ts.net", "40"]);
    assert_eq!(out, json!({"resolved": 40}));
    // The busy pod's query flow holds the map's only entry: the quiet pod's queries are lost.
    let (out, _) = peer(quiet, &["lookups", "tu-ingestion.tail1234.ts.net", "1"]);
    assert_eq!(out, json!({"resolved": 1}));
    let (sent_busy, sent_quiet) = (
        server.queries_from(busy.ip4),
        server.queries_from(quiet.ip4),
    );
    assert_eq!((sent_busy, sent_quiet), (80, 2));
    let b = busy.netns_inode();
    let records = agent.wait_for(SETTLE, "the busy pod's 80 queries", |rs| {
        udp_queries(&of_netns(rs, b), resolver.ip4) == 80
    });
    assert!(of_netns(&records, quiet.netns_inode()).is_empty());
    assert_eq!(agent.metric(map_full), 2.0, "the quiet pod's two queries");
    // Every response the server sent was either taken in (named or counted by why not) or
    // lost to the full ring.
    let deadline = Instant::now() + SETTLE;
    while responses(&agent) + agent.metric(ring_full) < 82.0 {
        let (_, m) = agent.get("/metrics");
        let dns: Vec<&str> = m.lines().filter(|l| l.contains("dns")).collect();
        assert!(
            Instant::now() < deadline,
            "responses not accounted for:\n{}",
            dns.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lost = agent.metric(ring_full);
    assert!(lost > 0.0, "a 4 KiB ring held 80 responses");
    assert_eq!(responses(&agent) + lost, 82.0);

    // One name at most: the second answer evicts the first.
    let evicted = agent.metric("observer_dns_names_evicted_total");
    assert_eq!(resolve(busy, "paste.example.net", 1), paste.ip4);
    std::thread::sleep(Duration::from_millis(2500));
    connect(busy, funnel.ip4, 1);
    let records = agent.wait_for(SETTLE, "both connections", |rs| {
        of_netns(rs, b)
            .iter()
            .filter(|r| r.protocol == Protocol::Tcp)
            .count()
            == 2
    });
    let host_of = |ip: Ipv4Addr| {
        of_netns(&records, b)
            .into_iter()
            .find(|r| r.protocol == Protocol::Tcp && r.dst.ip == Some(ip.into()))
            .map(|r| r.dst.host.clone())
    };
    assert_eq!(host_of(paste.ip4), Some(Some("paste.example.net".into())));
    assert_eq!(
        host_of(funnel.ip4),
        Some(None),
        "evicted by the later answer"
    );
    assert!(agent.metric("observer_dns_names_evicted_total") > evicted);
}

/// Over IPv6: an AAAA answer received over IPv6 names the flow to that address.
#[test]
fn an_answer_received_over_ipv6_names_the_ipv6_flow() {
    let lab = Lab::new(3);
    let (pod, resolver, server) = (&lab.hosts[0], &lab.hosts[1], &lab.hosts[2]);
    let dir = tempfile::tempdir().expect("temp dir");
    let _resolver = NameServer::start(
        resolver,
        dir.path(),
        &[
            format!("--listen-address={}", resolver.ip6),
            format!("--host-record=v6.tail1234.ts.net,{},300", server.ip6),
        ],
    );
    let _conf = ResolvConf::write_any(pod, &resolver.ip6.to_string(), "");
    let _server = serve(server, &format!("[{}]:443", server.ip6));
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "").expect("hosts file");
    let agent = Agent::start(&[
        "--no-kubernetes",
        "--hosts-file",
        &hosts.display().to_string(),
    ]);
    let (out, _) = peer(pod, &["resolve", "v6.tail1234.ts.net", "443", "2"]);
    assert_eq!(out["address"], json!(server.ip6.to_string()), "{out}");
    let p = pod.netns_inode();
    let records = agent.wait_for(SETTLE, "the IPv6 connections and queries", |rs| {
        let mine = of_netns(rs, p);
        mine.iter()
            .filter(|r| r.protocol == Protocol::Tcp)
            .map(|r| r.count)
            .sum::<u64>()
            == 2
            && mine.iter().any(|r| r.protocol == Protocol::Udp)
    });
    let tcp: Vec<_> = of_netns(&records, p)
        .into_iter()
        .filter(|r| r.protocol == Protocol::Tcp)
        .collect();
    assert!(
        tcp.iter().all(|r| r.dst.ip == Some(server.ip6.into())
            && r.dst.host.as_deref() == Some("v6.tail1234.ts.net")),
        "{tcp:#?}"
    );
    // The queries went over IPv6 too: a UDP flow to the resolver's IPv6 address.
    assert!(
        of_netns(&records, p)
            .iter()
            .any(|r| r.protocol == Protocol::Udp && r.dst.ip == Some(resolver.ip6.into())),
        "{records:#?}"
    );
}

/// Query flows deleted as idle while a pod keeps querying: what the kernel counted after the
/// scan that found a flow idle comes back with its delete, so no query goes unreported.
#[test]
fn deleting_idle_query_flows_during_lookups_loses_no_query() {
    let lab = Lab::new(2);
    let (pod, resolver) = (&lab.hosts[0], &lab.hosts[1]);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = NameServer::start(
        resolver,
        dir.path(),
        &[format!(
            "--host-record=svc.example.net,{},300",
            resolver.ip4
        )],
    );
    let _conf = ResolvConf::write(pod, resolver.ip4, "");
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "").expect("hosts file");
    // Every flow is idle at every scan (1 ns), and a scan comes every 10 ms.
    let agent = Agent::start(
        &[
            "--no-kubernetes",
            "--hosts-file",
            &hosts.display().to_string(),
        ]
        .into_iter()
        .chain(DELETE_AT_EVERY_SCAN)
        .collect::<Vec<_>>(),
    );
    // Batches of lookups until the flow has been deleted and re-created at least 20 times
    // while they ran (a batch takes 0.1 to 1 s, depending on the machine), at most 10 batches.
    let mut batches = 0;
    while batches < 10 && agent.metric("observer_idle_flows_deleted_total") < 20.0 {
        let (out, _) = peer(pod, &["lookups", "svc.example.net", "3000"]);
        assert_eq!(out, json!({"resolved": 3000}));
        batches += 1;
    }
    // getaddrinfo asks for A and AAAA.
    let sent = server.queries_from(pod.ip4);
    assert_eq!(sent, 6000 * batches);
    let p = pod.netns_inode();
    agent.wait_for(SETTLE, "the queries", |rs| {
        udp_queries(&of_netns(rs, p), resolver.ip4) + 1 >= sent
    });
    let deleted = agent.metric("observer_idle_flows_deleted_total");
    assert!(
        deleted >= 20.0,
        "only {deleted} deletions during {batches} batches of lookups"
    );
    let records = agent.stop();
    let counted = udp_queries(&of_netns(&records, p), resolver.ip4);
    // Reading, then deleting in a second step, lost 13 to 22 of these 6,000 queries. What is
    // left is the cgroup program's own step from its lookup of the entry to its add: it runs
    // preemptibly, and a query whose program is preempted there while the entry is deleted
    // goes to the deleted entry (README, known limitations); about one run in fifteen here.
    assert!(
        counted <= sent && sent - counted <= 1,
        "{counted} of {sent} queries counted"
    );
}
