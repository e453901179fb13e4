//! End-to-end capture tests: real network namespaces on an isolated bridge, real TCP peers, the
//! real kernel program loaded and attached by the real agent. Run as root by `cargo xtask test`.

use std::{collections::BTreeMap, net::IpAddr, process::Command, time::Duration};

use observer_common::record::{Direction, FlowRecord, Outcomes, Scope};
use observer_tests::{
    Agent, Background, DELETE_AT_EVERY_SCAN, Host, Lab, netpeer, of_netns, peer, serve, serve_idle,
    sh,
};
use serde_json::json;

/// How long a test waits for records and metrics to catch up (under software emulation, in the
/// kernel matrix's virtual machines, the agent takes seconds where it takes milliseconds here).
const SETTLE: Duration = Duration::from_secs(30);

/// The test hosts' ranges are the cluster's; every accepted connection is reported, so both
/// ends of each connection can be checked on this one node.
const CLUSTER: [&str; 6] = [
    "--pod-cidr",
    "10.0.0.0/8",
    "--pod-cidr",
    "fd0b::/16",
    "--ingress",
    "all",
];

fn sum(records: &[&FlowRecord]) -> u64 {
    records.iter().map(|r| r.count).sum()
}

/// Flows (direction, src ip, dst ip, dst port) with their summed counts.
fn flows(records: &[&FlowRecord]) -> BTreeMap<(Direction, IpAddr, IpAddr, u16), u64> {
    let mut m = BTreeMap::new();
    for r in records {
        let k = (
            r.direction,
            r.src.ip.expect("src ip"),
            r.dst.ip.expect("dst ip"),
            r.dst.port.expect("dst port"),
        );
        *m.entry(k).or_insert(0) += r.count;
    }
    m
}

/// Connects once from `client` to each of `ports` on `server`, where nothing listens: every
/// connect is refused, and each is a flow of its own.
fn refuse_each(client: &Host, server: &Host, ports: std::ops::RangeInclusive<u16>) {
    let (first, last) = (ports.start().to_string(), ports.end().to_string());
    let out = peer(client, &["storm", &server.ip4.to_string(), &first, &last]).0;
    assert_eq!(out, json!({"refused": ports.count()}));
}

/// Asserts that the refused connects from `netns` were to exactly `ports`, each counted once.
fn assert_refused_once_each(
    records: &[FlowRecord],
    netns: u32,
    ports: std::ops::RangeInclusive<u16>,
) {
    let per_port: BTreeMap<u16, u64> = of_netns(records, netns)
        .iter()
        .map(|r| (r.dst.port.unwrap_or(0), r.outcomes.refused))
        .collect();
    assert!(per_port.keys().copied().eq(ports), "{per_port:?}");
    assert!(
        per_port.values().all(|&n| n == 1),
        "every flow counted exactly once: {per_port:?}"
    );
}

#[test]
fn connections_between_namespaces_ipv4_ipv6_and_v4_mapped() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    let agent = Agent::start(&CLUSTER);
    let _srv = serve(server, "[::]:8080");
    let (out, pid4) = peer(client, &["connect", &format!("{}:8080", server.ip4), "3"]);
    assert_eq!(out, json!({"established": 3}));
    let (out, pid6) = peer(client, &["connect", &format!("[{}]:8080", server.ip6), "2"]);
    assert_eq!(out, json!({"established": 2}));
    // An AF_INET6 socket to a v4-mapped address is the same IPv4 flow.
    let (out, _) = peer(
        client,
        &["connect", &format!("[::ffff:{}]:8080", server.ip4), "4"],
    );
    assert_eq!(out, json!({"established": 4}));

    let (c, s) = (client.netns_inode(), server.netns_inode());
    agent.wait_for(Duration::from_secs(10), "all 18 connection ends", |r| {
        sum(&of_netns(r, c)) == 9 && sum(&of_netns(r, s)) == 9
    });
    let records = agent.stop();
    let (cr, sr) = (of_netns(&records, c), of_netns(&records, s));
    let (c4, s4) = (IpAddr::V4(client.ip4), IpAddr::V4(server.ip4));
    let (c6, s6) = (IpAddr::V6(client.ip6), IpAddr::V6(server.ip6));
    assert_eq!(
        flows(&cr),
        BTreeMap::from([
            ((Direction::Egress, c4, s4, 8080), 7),
            ((Direction::Egress, c6, s6, 8080), 2)
        ])
    );
    assert_eq!(
        flows(&sr),
        BTreeMap::from([
            ((Direction::Ingress, c4, s4, 8080), 7),
            ((Direction::Ingress, c6, s6, 8080), 2)
        ])
    );
    for r in &cr {
        assert_eq!(r.outcomes.established, r.count);
        let p = r
            .process
            .as_ref()
            .expect("egress records carry the connecting process");
        assert_eq!(p.comm, "netpeer");
        let expected_pid = if r.dst.ip == Some(s4) { pid4 } else { pid6 };
        assert_eq!(
            (p.pid, p.tgid),
            (expected_pid, expected_pid),
            "the first connecting task of the flow"
        );
        assert_eq!(
            (r.src.scope, r.dst.scope),
            (Some(Scope::Cluster), Some(Scope::Cluster))
        );
        assert_eq!(
            (r.schema, r.node.as_str(), r.pre_existing),
            (1, "test-node", false)
        );
    }
    for r in &sr {
        assert!(r.process.is_none(), "accepts run in softirq: no process");
        assert_eq!(r.outcomes.established, r.count);
    }
}

#[test]
fn each_outcome_of_an_active_open() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    client.sh("sysctl", &["-qw", "net.ipv4.tcp_syn_retries=1"]);
    server.sh(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "7001", "-j", "DROP"],
    );
    server.sh(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "7002",
            "-j",
            "REJECT",
            "--reject-with",
            "icmp-host-unreachable",
        ],
    );
    let agent = Agent::start(&CLUSTER);
    let _srv = serve(server, "0.0.0.0:7003");
    let ip = server.ip4.to_string();
    assert_eq!(
        peer(client, &["connect", &format!("{ip}:7000"), "1"]).0,
        json!({"refused": 1})
    );
    assert_eq!(
        peer(client, &["connect", &format!("{ip}:7001"), "1"]).0,
        json!({"timed-out": 1})
    );
    assert_eq!(
        peer(client, &["connect", &format!("{ip}:7002"), "1"]).0,
        json!({"unreachable": 1})
    );
    assert_eq!(
        peer(client, &["abort", &format!("{ip}:7001"), "300"]).0,
        json!({"aborted": 1})
    );
    assert_eq!(
        peer(client, &["connect", &format!("{ip}:7003"), "1"]).0,
        json!({"established": 1})
    );

    let c = client.netns_inode();
    let records = agent.wait_for(Duration::from_secs(10), "five outcomes", |r| {
        sum(&of_netns(r, c)) == 5
    });
    let mine = of_netns(&records, c);
    let by_port = |port: u16| {
        let mut o = Outcomes::default();
        for r in mine.iter().filter(|r| r.dst.port == Some(port)) {
            o.established += r.outcomes.established;
            o.refused += r.outcomes.refused;
            o.timed_out += r.outcomes.timed_out;
            o.unreachable += r.outcomes.unreachable;
            o.aborted += r.outcomes.aborted;
        }
        o
    };
    assert_eq!(
        by_port(7000),
        Outcomes {
            refused: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        by_port(7001),
        Outcomes {
            timed_out: 1,
            aborted: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        by_port(7002),
        Outcomes {
            unreachable: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        by_port(7003),
        Outcomes {
            established: 1,
            ..Default::default()
        }
    );
}

#[test]
fn loopback_inside_one_namespace_is_local() {
    let lab = Lab::new(1);
    let host = &lab.hosts[0];
    let agent = Agent::start(&CLUSTER);
    let _srv = serve(host, "127.0.0.1:9000");
    assert_eq!(
        peer(host, &["connect", "127.0.0.1:9000", "2"]).0,
        json!({"established": 2})
    );
    let n = host.netns_inode();
    agent.wait_for(Duration::from_secs(10), "both ends", |r| {
        sum(&of_netns(r, n)) == 4
    });
    let records = agent.stop();
    let mine = of_netns(&records, n);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        flows(&mine),
        BTreeMap::from([
            ((Direction::Egress, lo, lo, 9000), 2),
            ((Direction::Ingress, lo, lo, 9000), 2)
        ])
    );
    for r in mine {
        assert_eq!(
            (r.src.scope, r.dst.scope),
            (Some(Scope::Local), Some(Scope::Local))
        );
    }
}

#[test]
fn a_connection_open_before_start_is_recorded_once_as_pre_existing() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    // The server keeps the idle connection for the whole test: the agent may take more than
    // `serve`'s 2 s to start (seconds on an emulated kernel in the kernel matrix), and a
    // connection the server closed is no longer established when the agent looks.
    let _srv = serve_idle(server, "0.0.0.0:8081", Duration::from_secs(120));
    let mut hold = client.cmd(netpeer());
    hold.args(["hold", &format!("{}:8081", server.ip4)])
        .stdout(std::process::Stdio::piped());
    let mut child = hold.spawn().expect("hold");
    let mut byte = [0u8; 1];
    std::io::Read::read(child.stdout.as_mut().expect("stdout"), &mut byte).expect("holding");
    let holder_pid = child.id();
    let _hold = Background(child);

    let agent = Agent::start(&CLUSTER);
    std::thread::sleep(Duration::from_millis(1200)); // more than two flush intervals
    let records = agent.stop();
    let (c, s) = (client.netns_inode(), server.netns_inode());
    let cr = of_netns(&records, c);
    assert_eq!(cr.len(), 1, "{cr:#?}");
    assert!(cr[0].pre_existing);
    assert_eq!(
        (cr[0].direction, cr[0].count, cr[0].outcomes.established),
        (Direction::Egress, 1, 1)
    );
    assert_eq!(cr[0].dst.port, Some(8081));
    let p = cr[0]
        .process
        .as_ref()
        .expect("process found through /proc/PID/fd");
    assert_eq!((p.tgid, p.comm.as_str()), (holder_pid, "netpeer"));
    let sr = of_netns(&records, s);
    assert_eq!(sr.len(), 1, "{sr:#?}");
    assert!(sr[0].pre_existing);
    assert_eq!(
        (sr[0].direction, sr[0].count, sr[0].src.ip),
        (Direction::Ingress, 1, Some(IpAddr::V4(client.ip4)))
    );
}

#[test]
fn ten_thousand_connections_are_counted_exactly() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    let agent = Agent::start(&CLUSTER);
    let _srv = serve(server, "0.0.0.0:8082");
    let out = peer(
        client,
        &["connect", &format!("{}:8082", server.ip4), "10000"],
    )
    .0;
    assert_eq!(out, json!({"established": 10000}));
    let (c, s) = (client.netns_inode(), server.netns_inode());
    let records = agent.wait_for(
        Duration::from_secs(20),
        "10,000 connections at both ends",
        |r| sum(&of_netns(r, c)) == 10_000 && sum(&of_netns(r, s)) == 10_000,
    );
    // The agent creates each flow's entry once; the kernel counts the rest in place.
    let hints = agent.metric("observer_flows_created_total");
    let distinct: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| {
            (
                r.netns,
                r.direction,
                r.src.ip,
                r.dst.ip,
                r.dst.port,
                r.process.as_ref().map(|p| p.cgroup_id),
            )
        })
        .collect();
    assert!(
        hints >= 2.0 && hints <= distinct.len() as f64,
        "{hints} hints for {} flows",
        distinct.len()
    );
    for kind in ["ring_full", "flow_map_full", "socket_read_failed"] {
        assert_eq!(
            agent.metric(&format!("observer_kernel_losses_total{{kind=\"{kind}\"}}")),
            0.0,
            "{kind}"
        );
    }
    let records = agent.stop();
    // Reading, then deleting in a second step, lost 254 of these connections. What is left is
    // the program's own step from its lookup of the entry to its add: with preemption off it
    // is a few instructions, but an interrupt there while the entry is deleted sends the count
    // to the deleted entry (README, known limitations); one connection, once in some twenty
    // runs of this test.
    for (end, netns) in [("client", c), ("server", s)] {
        let counted = sum(&of_netns(&records, netns));
        assert!(
            counted <= 10_000 && 10_000 - counted <= 1,
            "{counted} of 10000 connections counted at the {end}"
        );
    }
}

#[test]
fn a_tiny_ring_makes_the_kernel_create_flows_and_loses_no_count() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    // One page of ring (42 events) and a slow drain: a burst of 500 new flows overflows it, and
    // the kernel program creates the flows' entries itself.
    let agent = Agent::start(&[
        "--ring-bytes",
        "4096",
        "--poll-interval",
        "1s",
        "--flush-interval",
        "2s",
    ]);
    refuse_each(client, server, 20000..=20499);
    let c = client.netns_inode();
    let records = agent.wait_for(Duration::from_secs(15), "500 refused flows", |r| {
        sum(&of_netns(r, c)) == 500
    });
    assert!(agent.metric("observer_kernel_losses_total{kind=\"ring_full\"}") > 0.0);
    assert_refused_once_each(&records, c, 20000..=20499);
}

#[test]
fn flows_a_full_map_cannot_hold_are_counted_by_the_agent() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    let agent = Agent::start(&["--flow-map-size", "64"]);
    refuse_each(client, server, 21000..=21199);
    let c = client.netns_inode();
    let records = agent.wait_for(Duration::from_secs(10), "200 refused flows", |r| {
        sum(&of_netns(r, c)) == 200
    });
    assert_refused_once_each(&records, c, 21000..=21199);
    assert_eq!(
        agent.metric("observer_kernel_losses_total{kind=\"flow_map_full\"}"),
        0.0
    );
    let log = agent.log();
    assert!(
        log.contains("the kernel flow map refused a new flow"),
        "{log}"
    );
}

#[test]
fn a_tiny_flow_map_and_ring_count_what_they_cannot_hold() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    // One page of ring (42 events) drained every second: the kernel program creates entries
    // itself, and the 64-entry map fills.
    let agent = Agent::start(&[
        "--flow-map-size",
        "64",
        "--ring-bytes",
        "4096",
        "--poll-interval",
        "1s",
    ]);
    let overflow = || agent.metric("observer_kernel_losses_total{kind=\"flow_map_full\"}") as u64;
    // The test's own scrapes of /metrics are flows too: their entries are made (at the next
    // drain) before the storm fills the map, so that only the storm's flows overflow.
    assert_eq!(overflow(), 0);
    std::thread::sleep(Duration::from_millis(1500));
    refuse_each(client, server, 21000..=21199);
    let c = client.netns_inode();
    agent.wait_for(
        Duration::from_secs(10),
        "recorded + overflowed = 200",
        |r| sum(&of_netns(r, c)) + overflow() == 200,
    );
    let lost = overflow();
    // The kernel program's own diagnostic, through aya-log into the agent's log.
    let log = agent.log();
    assert!(
        log.contains("loss counter 1 reached 1 on this CPU"),
        "{log}"
    );
    let records = agent.stop();
    let recorded = sum(&of_netns(&records, c));
    assert!(lost > 0 && recorded > 0, "recorded {recorded}, lost {lost}");
    assert_eq!(recorded + lost, 200);
}

/// `observer run` for a second with only the capabilities of `bounding` (setpriv's syntax):
/// its exit code and standard error.
fn run_with_capabilities(bounding: &str) -> (Option<i32>, String) {
    let out = Command::new("setpriv")
        .args([
            &format!("--bounding-set={bounding}"),
            "--inh-caps=-all",
            "--",
        ])
        .arg(observer_tests::observer_bin())
        .args(["run", "--duration", "1s", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("setpriv");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_capabilities_are_named_with_exit_code_2() {
    observer_tests::require_root();
    let (code, stderr) = run_with_capabilities("-all");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing capability CAP_BPF"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("observer:"))
            .count(),
        1,
        "one line: {stderr}"
    );

    // With the capture's capabilities but not the DNS programs' one: named, with the way out.
    let (code, stderr) = run_with_capabilities("-all,+bpf,+perfmon");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("missing capability CAP_NET_ADMIN") && stderr.contains("run with --no-dns"),
        "{stderr}"
    );
}

/// With a 64 KiB locked-memory limit and no CAP_SYS_RESOURCE to lift it: a kernel that
/// charges BPF maps to the memory cgroup (5.11+) runs the agent as if there were no limit; one
/// that charges them to the limit (before 5.11: it still has `bpf_map_charge_init`) makes the
/// agent name the limit and the fix, exit code 2, instead of failing on an opaque EPERM.
#[test]
fn a_memlock_limit_matters_only_where_the_kernel_charges_maps_to_it() {
    observer_tests::require_root();
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    let charged_to_memlock = kallsyms
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf_map_charge_init"));
    let out = Command::new("prlimit")
        .args(["--memlock=65536:65536", "--", "setpriv"])
        .args(["--bounding-set=-sys_resource", "--inh-caps=-all", "--"])
        .arg(observer_tests::observer_bin())
        .args([
            "run",
            "--duration",
            "1s",
            "--no-dns",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--no-kubernetes", "--flow-log", "/dev/null"])
        .output()
        .expect("prlimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if charged_to_memlock {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("charges BPF maps to the locked-memory limit")
                && stderr.contains("65536 bytes")
                && stderr.contains("CAP_SYS_RESOURCE"),
            "{stderr}"
        );
    } else {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
}

/// An idle flow leaves the kernel map only after its report, and a connection after that
/// starts it again: every connection counted once. Connections come in two bursts, each far
/// shorter than the idle timeout, with the deletions between them, so this checks the delete
/// path itself (lookup-and-delete, or the read-then-delete fallback before Linux 5.14) on any
/// kernel, virtual machines included, without provoking the race of the storm test below.
#[test]
fn an_idle_flow_is_deleted_after_its_report_and_counted_again_when_it_returns() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    let mut args = CLUSTER.to_vec();
    args.extend([
        "--idle-timeout",
        "3s",
        "--flush-interval",
        "100ms",
        "--poll-interval",
        "50ms",
    ]);
    let agent = Agent::start(&args);
    let _srv = serve(server, "0.0.0.0:8086");
    let target = format!("{}:8086", server.ip4);
    let (c, s) = (client.netns_inode(), server.netns_inode());
    let mut deleted = 0.0;
    for burst in 1..=2u64 {
        let out = peer(client, &["connect", &target, "100"]).0;
        assert_eq!(out, json!({"established": 100}));
        // Both ends' flows reported and deleted: the burst's counts were read with the delete.
        agent.wait_for(SETTLE, "the burst's records", |rs| {
            sum(&of_netns(rs, c)) == 100 * burst && sum(&of_netns(rs, s)) == 100 * burst
        });
        let deadline = std::time::Instant::now() + SETTLE;
        while agent.metric("observer_idle_flows_deleted_total") < deleted + 2.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the burst's two flows were not deleted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        deleted = agent.metric("observer_idle_flows_deleted_total");
    }
    let records = agent.stop();
    assert_eq!(sum(&of_netns(&records, c)), 200, "client");
    assert_eq!(sum(&of_netns(&records, s)), 200, "server");
    assert!(deleted >= 4.0, "{deleted} deletions");
}

#[test]
fn duration_bounds_a_run_and_the_last_flush_is_kept() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    let _srv = serve(server, "0.0.0.0:8083");
    let dir = std::env::temp_dir().join(format!("observer-duration-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join("flows.jsonl");
    let _ = std::fs::remove_file(&log);
    let mut agent = Command::new(observer_tests::observer_bin())
        .args([
            "run",
            "--duration",
            "3s",
            "--flush-interval",
            "1h",
            "--poll-interval",
            "1h",
        ])
        .args(["--metrics-addr", "127.0.0.1:0", "--flow-log"])
        .arg(&log)
        .spawn()
        .expect("agent");
    std::thread::sleep(Duration::from_millis(1000)); // attached by now
    let out = peer(client, &["connect", &format!("{}:8083", server.ip4), "5"]).0;
    assert_eq!(out, json!({"established": 5}));
    let status = agent.wait().expect("agent");
    assert!(status.success());
    let text = std::fs::read_to_string(&log).expect("log");
    let records: Vec<FlowRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    // Neither timer fired after start: only the final flush can have written these.
    assert_eq!(sum(&of_netns(&records, client.netns_inode())), 5);
    sh("rm", &["-rf", &dir.display().to_string()]);
}

#[test]
fn a_new_flow_is_logged_from_its_hint_before_any_flush() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    // The full-map flush never comes during the test: only the ring hint can log the flow.
    let agent = Agent::start(&["--flush-interval", "1h", "--poll-interval", "200ms"]);
    let _srv = serve(server, "0.0.0.0:8084");
    assert_eq!(
        peer(client, &["connect", &format!("{}:8084", server.ip4), "1"]).0,
        json!({"established": 1})
    );
    let c = client.netns_inode();
    let records = agent.wait_for(Duration::from_secs(10), "the new flow", |r| {
        sum(&of_netns(r, c)) == 1
    });
    assert_eq!(of_netns(&records, c)[0].dst.port, Some(8084));
    assert_eq!(
        agent.metric("observer_flow_map_scans_total"),
        0.0,
        "no full scan happened"
    );
}

#[test]
fn deleting_idle_flows_during_a_storm_loses_no_count() {
    let lab = Lab::new(2);
    let (client, server) = (&lab.hosts[0], &lab.hosts[1]);
    // Every flow is idle at every scan (1 ns), and a scan comes every 10 ms: the storm's two
    // flows are deleted from the kernel map over and over while connections keep adding to
    // them, so some land between the scan's reading and the delete.
    let mut args = CLUSTER.to_vec();
    args.extend(DELETE_AT_EVERY_SCAN);
    let agent = Agent::start(&args);
    let _srv = serve(server, "0.0.0.0:8085");
    let out = peer(
        client,
        &["connect", &format!("{}:8085", server.ip4), "10000"],
    )
    .0;
    assert_eq!(out, json!({"established": 10000}));
    let (c, s) = (client.netns_inode(), server.netns_inode());
    let deleted = agent.metric("observer_idle_flows_deleted_total");
    assert!(deleted >= 20.0, "only {deleted} deletions during the storm");
    let records = agent.stop();
    // Reading, then deleting in a second step, lost 254 of these connections. What is left is
    // the program's own step from its lookup of the entry to its add: with preemption off it
    // is a few instructions, but an interrupt there while the entry is deleted sends the count
    // to the deleted entry (README, known limitations); one connection, once in some twenty
    // runs of this test.
    for (end, netns) in [("client", c), ("server", s)] {
        let counted = sum(&of_netns(&records, netns));
        assert!(
            counted <= 10_000 && 10_000 - counted <= 1,
            "{counted} of 10000 connections counted at the {end}"
        );
    }
}
