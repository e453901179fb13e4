//! The demo, in its short mode, end to end: the Trackunit system in network namespaces, the
//! real agent and kernel program. Its summary must name exactly the four undocumented flows it
//! drove as unexpected and every documented flow of the model as expected.

use std::{collections::BTreeSet, path::Path, process::Command};

#[test]
fn the_demo_judges_every_documented_flow_expected_and_catches_exactly_the_undocumented_ones() {
    observer_tests::require_root();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let xtask = root.join("target/debug/xtask");
    assert!(
        xtask.exists(),
        "no {}: `cargo xtask test` builds it",
        xtask.display()
    );
    let out = std::env::temp_dir().join(format!("observer-demo-test-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let status = Command::new(&xtask)
        .current_dir(&root)
        .args([
            "demo",
            "--no-build",
            "--linger-seconds",
            "0",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run the demo");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
    )
    .expect("json");
    assert!(status.success(), "demo failed; summary: {summary:#}");
    assert_eq!(summary["mismatches"], serde_json::json!([]));

    let reasons: BTreeSet<&str> = summary["unexpected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            "undocumented-flow",
            "unknown-destination",
            "unknown-source",
            "wrong-port"
        ])
    );
    assert_eq!(summary["unexpected"].as_array().unwrap().len(), 4);

    // Every (rule, port) of the shipped model was driven and judged expected by that rule.
    let model: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("deploy/architecture/trackunit.yaml")).unwrap(),
    )
    .unwrap();
    let mut documented = BTreeSet::new();
    for f in model["flows"].as_sequence().unwrap() {
        for p in f["ports"].as_sequence().unwrap() {
            documented.insert((f["id"].as_str().unwrap().to_owned(), p.as_u64().unwrap()));
        }
    }
    let seen: BTreeSet<(String, u64)> = summary["expected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let what = e["flow"].as_str().unwrap();
            let port = what
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches(')')
                .parse()
                .unwrap();
            (e["rule"].as_str().unwrap().to_owned(), port)
        })
        .collect();
    assert_eq!(seen, documented);
    for e in summary["expected"]
        .as_array()
        .unwrap()
        .iter()
        .chain(summary["unexpected"].as_array().unwrap())
    {
        assert_eq!(
            e["connections"].as_u64(),
            Some(3),
            "each flow was driven with 3 connections: {e}"
        );
    }
    // The undocumented egress is on /metrics for the alert, named by the name the pod used.
    let metrics = std::fs::read_to_string(out.join("metrics.txt")).expect("metrics.txt");
    let egress: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            // The pods' egress: the machine's own processes (the node, whose series this agent
            // also exports) are not part of the demo system and may reach out on their own.
            l.starts_with("observer_unexpected_connections_total{")
                && l.contains(r#"dst_scope="external""#)
                && !l.contains(r#"src_namespace="""#)
        })
        .collect();
    assert_eq!(egress.len(), 1, "{egress:?}");
    assert!(
        egress[0].contains(r#"src_workload="graph-gateway""#)
            && egress[0].contains(r#"dst_name="paste.example.net""#)
    );
    assert!(
        egress[0].contains(r#"reason="unknown-destination""#) && egress[0].ends_with("} 3"),
        "{}",
        egress[0]
    );
    let _ = std::fs::remove_dir_all(&out);
}
