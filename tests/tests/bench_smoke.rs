//! `cargo xtask bench --smoke --no-build`: every scenario of the benchmark at tiny sizes, through the real
//! command. It checks the harness and the report's shape, never timings (the machine may be
//! busy); the exactness scenario's counts are a correctness property and are checked.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_smoke_mode_produces_a_complete_report() {
    observer_tests::require_root();
    let out = tempfile::tempdir().expect("tempdir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The bench's output is kept in a file and its end quoted on failure: a CI log shows only
    // its last lines, and the cause would otherwise scroll away behind the backtrace.
    let log_path = out.path().join("bench.log");
    let log = std::fs::File::create(&log_path).expect("bench log");
    let status = Command::new(cargo)
        .args([
            "run", "-q", "-p", "xtask", "--", "bench", "--smoke", "--output",
        ])
        .arg(out.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(log.try_clone().expect("bench log"))
        .stderr(log)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .expect("run cargo xtask bench --smoke");
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("{text}");
        panic!(
            "cargo xtask bench --smoke failed: {status}; its last lines:\n{}",
            lines[lines.len().saturating_sub(12)..].join("\n")
        );
    }
    let text = std::fs::read_to_string(out.path().join("report.json")).expect("report.json");
    let r: Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(r["mode"], "smoke");
    for key in ["kernel", "nproc", "cpu", "loadavg_start", "loadavg_end"] {
        assert!(
            !r["machine"][key].is_null(),
            "machine.{key} missing:\n{text}"
        );
    }

    let rows = r["connection_cost"]["rows"].as_array().expect("rows");
    // Four workloads, each with the agent, the agent without DNS, the no-op program and both
    // peers.
    assert_eq!(rows.len(), 20, "{rows:#?}");
    for row in rows {
        for key in [
            "workload",
            "config",
            "pairs",
            "baseline_per_second",
            "attached_per_second",
        ] {
            assert!(!row[key].is_null(), "{key} missing in {row}");
        }
        assert!(
            row["ratio_median"].as_f64().is_some_and(|x| x > 0.0),
            "{row}"
        );
        assert_eq!(row["ratio_ci95"].as_array().map(Vec::len), Some(2), "{row}");
    }
    let configs: Vec<&str> = rows.iter().filter_map(|x| x["config"].as_str()).collect();
    assert!(configs.contains(&"agent"));
    assert!(
        configs.contains(&"no-op"),
        "the hook's own cost is measured: {configs:?}"
    );
    assert!(
        configs.contains(&"agent --no-dns"),
        "the DNS programs' share is measured: {configs:?}"
    );
    // Both peers are measured (scripts/bootstrap.sh installs them).
    for peer in ["bpftrace", "tcplife"] {
        assert!(configs.contains(&peer), "{peer} not measured: {configs:?}");
    }

    // The storm's CPU profile (scripts/bootstrap.sh installs perf): each tool's parts, which
    // add up.
    let profile = &r["storm_profile"];
    let rows = profile["rows"].as_array().expect("profile rows");
    // The agent, the agent without DNS capture and the peers, each on two workloads.
    let configs: Vec<&str> = rows.iter().filter_map(|x| x["config"].as_str()).collect();
    assert_eq!(
        configs,
        [
            "agent",
            "agent",
            "agent --no-dns",
            "agent --no-dns",
            "bpftrace",
            "bpftrace",
            "tcplife",
            "tcplife"
        ],
        "{profile:#}"
    );
    for row in rows {
        assert!(row["connections"].as_u64().is_some_and(|n| n > 0), "{row}");
        assert!(row["samples"].as_u64().is_some_and(|n| n > 0), "{row}");
        let parts = row["parts"].as_array().expect("parts");
        assert_eq!(parts.len(), 5, "{row}");
        let sum: f64 = parts
            .iter()
            .map(|p| p["ns_per_connection"].as_f64().unwrap())
            .sum();
        let all = row["ns_per_connection"].as_f64().unwrap();
        assert!((sum - all).abs() < 1e-6, "parts {sum} != all {all}");
    }
    // The agent with DNS capture runs the cgroup skb hooks; without it, never.
    let part = |config: &str, name: &str| -> f64 {
        rows.iter()
            .filter(|x| x["config"] == config)
            .flat_map(|x| x["parts"].as_array().unwrap())
            .filter(|p| p["part"].as_str().unwrap().starts_with(name))
            .map(|p| p["samples"].as_f64().unwrap())
            .sum()
    };
    assert_eq!(part("agent --no-dns", "cgroup skb"), 0.0, "{profile:#}");
    assert_eq!(part("agent --no-dns", "DNS programs"), 0.0, "{profile:#}");

    let k = &r["kernel_program"];
    for key in [
        "recording_new_flow_ns_per_run",
        "recording_existing_flow_ns_per_run",
        "filtered_ns_per_run",
        "dns_filter_ns_per_packet",
        "recording_new_flow_noop_ns_per_run",
        "recording_existing_flow_noop_ns_per_run",
        "filtered_noop_ns_per_run",
    ] {
        assert!(k[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {k}");
    }
    // Each kind in its windows, every window with runs; own time is a median of differences.
    let windows = k["windows_per_kind"].as_u64().expect("windows_per_kind");
    assert!(windows >= 3, "{k}");
    for kind in ["recording_new_flow", "recording_existing_flow", "filtered"] {
        let ws = k[format!("{kind}_windows")].as_array().expect(kind);
        assert_eq!(ws.len() as u64, windows, "{kind}: {k}");
        assert!(
            ws.iter().all(|w| w["runs"].as_u64() > Some(0)),
            "{kind}: {k}"
        );
        let runs: u64 = ws.iter().filter_map(|w| w["runs"].as_u64()).sum();
        assert_eq!(k[format!("{kind}_runs")].as_u64(), Some(runs), "{kind}");
        assert!(
            k[format!("{kind}_own_ns_per_run")].as_f64().is_some(),
            "{kind}"
        );
    }
    // Both variants: the node's 110 pods local, and every pod local. The smoke run reads fewer
    // events than there are flows, so every event is a flow's first reading (the full path).
    let p = &r["pipeline"];
    assert_eq!(p["node_pods"], 110, "{p}");
    for variant in [p, &p["all_pods_local"]] {
        assert!(
            variant["events_per_cpu_second"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "{variant}"
        );
        assert_eq!(variant["full_path_records"], variant["events"], "{variant}");
    }
    assert!(r["memory"]["rss_mib"].as_f64().is_some_and(|x| x > 0.0));
    assert!(
        r["memory"]["bpf_maps_mib"]
            .as_f64()
            .is_some_and(|x| x > 0.0)
    );

    let e = &r["exactness"];
    assert!(e["connections_made"].as_u64().is_some_and(|n| n > 0), "{e}");
    assert_eq!(e["exported_egress"], e["connections_made"], "{e}");
    assert_eq!(e["exported_ingress"], e["connections_made"], "{e}");
    assert_eq!(e["lost"].as_f64(), Some(0.0), "{e}");
    assert_eq!(r["latency"]["missed"], 0, "{}", r["latency"]);

    // The agent runs in full: the storms' flows (graph-gateway to rabbitmq on ports the model
    // does not allow, and to addresses outside the cluster) are unexpected, so it exports spans.
    let t = &r["traces"];
    assert!(t["exported_to"].is_string(), "{t}");
    assert!(t["requests"].as_u64().is_some_and(|n| n > 0), "{t}");
    assert!(t["spans"].as_u64().is_some_and(|n| n > 0), "{t}");

    let targets = r["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 9, "{targets:#?}");
    for t in targets {
        assert!(t["target"].is_string() && t["value"].is_string(), "{t}");
        assert!(t["met"].is_boolean() || t["met"].is_null(), "{t}");
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("| target | measured |"), "{md}");
}
