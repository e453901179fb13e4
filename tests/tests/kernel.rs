//! The kernel program on this kernel: `observer kernel-check` loads every program as the agent
//! does and reports the verifier's own stack depths, which the build's measure (`bpf-stack`,
//! the budget check in observer/build.rs) must bound from above without being vacuous.

use std::process::Command;

use observer_tests::{observer_bin, require_root};
use serde_json::Value;

/// The verifier's granularity for a chain's frames (kernels before 6.8 round each to 32).
const FRAME: u64 = 32;

fn rounded(depth: u64) -> u64 {
    depth.max(1).div_ceil(FRAME) * FRAME
}

fn numbers(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|n| n.as_u64().expect("a number"))
        .collect()
}

#[test]
fn every_program_loads_and_the_builds_stack_measure_bounds_the_verifiers() {
    require_root();
    let out = Command::new(observer_bin())
        .args(["kernel-check", "--format", "json"])
        .output()
        .expect("observer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).expect("JSON");
    let programs = doc["programs"].as_array().expect("programs");
    let names: Vec<&str> = programs
        .iter()
        .map(|p| p["program"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dns_queries", "dns_responses", "inet_sock_set_state"]
    );
    for p in programs {
        let name = &p["program"];
        assert_eq!(p["loaded"], true, "{p}");
        let verifier = numbers(&p["stack_depth"]);
        let measured = numbers(&p["measured_depth"]);
        assert_eq!(
            verifier.len(),
            measured.len(),
            "{name}: the verifier and the build see the same functions: {p}"
        );
        // The entry first; the functions it calls in any order (the verifier's is the
        // linker's), so compare them sorted.
        let mut called = verifier[1..].to_vec();
        called.sort_unstable();
        let verifier: Vec<u64> = std::iter::once(verifier[0]).chain(called).collect();
        for (v, m) in verifier.iter().zip(&measured) {
            assert!(
                v <= m && m - v < FRAME,
                "{name}: the build measured {m} where the verifier counts {v}: {p}"
            );
        }
        let chain = p["measured_chain"].as_u64().unwrap();
        let verifier_chain: u64 = verifier.iter().map(|&d| rounded(d)).sum();
        assert!(
            verifier_chain <= chain && chain <= 384,
            "{name}: verifier's chain {verifier_chain}, measured {chain}, budget 384"
        );
    }
}
