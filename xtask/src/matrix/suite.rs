//! What runs in each guest: the privileged capture tests, picked by name from the test
//! executables that `cargo build --workspace --all-targets` already built, and what their
//! libtest output says.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

/// The tests each kernel runs, by test executable (the file in tests/tests/). Together: every
/// program loads, and the verifier's own stack depths stay within the build's measure
/// (`kernel`); every program attaches (each test's agent waits for `/readyz` to say it is
/// capturing, DNS programs included); v4, v6 and v4-mapped connects and accepts; every outcome
/// of an active open; exact counts on 10,000 connections; a connection open before start; a DNS
/// answer naming an external destination (over IPv6); idle flows deleted after their report and
/// counted again (on 5.10, whose hash maps have no lookup-and-delete, through the agent's
/// fallback); the locked-memory limit, which only kernels before 5.11 charge maps to. The storm
/// test that provokes the race between a delete and a count stays on the host: under software
/// emulation a descheduled virtual CPU widens its window, whatever the kernel.
pub const SELECTION: &[(&str, &[&str])] = &[
    (
        "kernel",
        &["every_program_loads_and_the_builds_stack_measure_bounds_the_verifiers"],
    ),
    (
        "capture",
        &[
            "connections_between_namespaces_ipv4_ipv6_and_v4_mapped",
            "each_outcome_of_an_active_open",
            "a_connection_open_before_start_is_recorded_once_as_pre_existing",
            "ten_thousand_connections_are_counted_exactly",
            "an_idle_flow_is_deleted_after_its_report_and_counted_again_when_it_returns",
            "a_memlock_limit_matters_only_where_the_kernel_charges_maps_to_it",
        ],
    ),
    ("dns", &["an_answer_received_over_ipv6_names_the_ipv6_flow"]),
];

/// The selection as (executable, test), or only the tests named in `only` (each must be in it).
pub fn selected(only: &[String]) -> Result<Vec<(&'static str, &'static str)>> {
    let all: Vec<(&'static str, &'static str)> = SELECTION
        .iter()
        .flat_map(|(exe, tests)| tests.iter().map(move |t| (*exe, *t)))
        .collect();
    if let Some(unknown) = only.iter().find(|n| !all.iter().any(|(_, t)| t == n)) {
        bail!("{unknown} is not one of the matrix's tests (xtask/src/matrix/suite.rs)");
    }
    Ok(all
        .into_iter()
        .filter(|(_, t)| only.is_empty() || only.iter().any(|n| n == t))
        .collect())
}

/// The test executables of observer-tests by name ("capture" -> target/debug/deps/capture-…),
/// from cargo's JSON messages (a build that is already done only reports them).
pub fn executables(root: &std::path::Path) -> Result<BTreeMap<String, PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "observer-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test -p observer-tests --no-run failed");
    }
    Ok(test_executables(&String::from_utf8_lossy(&out.stdout)))
}

/// The integration-test executables in cargo's `--message-format=json` output.
pub fn test_executables(messages: &str) -> BTreeMap<String, PathBuf> {
    let mut m = BTreeMap::new();
    for line in messages.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["target"]["kind"] != serde_json::json!(["test"])
        {
            continue;
        }
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            m.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    m
}

/// Checks that every selected test exists in its executable (`--list`), so that a renamed test
/// fails here instead of running nothing in the guests.
pub fn check_selection(executables: &BTreeMap<String, PathBuf>) -> Result<()> {
    for (exe, names) in SELECTION {
        let path = executables
            .get(*exe)
            .with_context(|| format!("no test executable {exe} in observer-tests"))?;
        let out = Command::new(path)
            .args(["--list", "--format=terse"])
            .output()
            .with_context(|| format!("running {} --list", path.display()))?;
        let listed = String::from_utf8_lossy(&out.stdout);
        for name in *names {
            if !listed.lines().any(|l| l == format!("{name}: test")) {
                bail!("{exe} has no test {name} (selection in xtask/src/matrix/suite.rs)");
            }
        }
    }
    Ok(())
}

/// What one libtest run reported: each test's result, and whether its summary line came.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Libtest {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub finished: bool,
}

/// Parses libtest's human output (`test NAME ... ok`, `test NAME ... FAILED`, `test result: …`).
pub fn parse_libtest(text: &str) -> Libtest {
    let mut r = Libtest::default();
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with("test result: ") {
            r.finished = true;
        } else if let Some((name, result)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.rsplit_once(" ... "))
        {
            match result {
                "ok" => r.passed.push(name.to_owned()),
                "FAILED" => r.failed.push(name.to_owned()),
                _ => {}
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_results_and_summary() {
        let out = "
running 3 tests
test each_outcome_of_an_active_open ... ok
test ten_thousand_connections_are_counted_exactly ... FAILED
test deleting_idle_flows_during_a_storm_loses_no_count ... ok

failures:

---- ten_thousand_connections_are_counted_exactly stdout ----
thread 'ten_thousand_connections_are_counted_exactly' panicked at tests/tests/capture.rs:1:1:
test result: this line is printed by a test, not libtest ... ok

failures:
    ten_thousand_connections_are_counted_exactly

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 8 filtered out; finished in 9.01s
";
        let r = parse_libtest(out);
        assert_eq!(
            r.passed,
            [
                "each_outcome_of_an_active_open",
                "deleting_idle_flows_during_a_storm_loses_no_count"
            ]
        );
        assert_eq!(r.failed, ["ten_thousand_connections_are_counted_exactly"]);
        assert!(r.finished);
    }

    #[test]
    fn the_selection_or_some_of_it() {
        assert_eq!(selected(&[]).unwrap().len(), 8);
        let one = selected(&["each_outcome_of_an_active_open".into()]).unwrap();
        assert_eq!(one, [("capture", "each_outcome_of_an_active_open")]);
        assert!(selected(&["no_such_test".into()]).is_err());
    }

    #[test]
    fn a_run_cut_short_has_no_summary() {
        let r = parse_libtest("running 2 tests\ntest a ... ok\ntest b ... ");
        assert_eq!((r.passed.len(), r.failed.len(), r.finished), (1, 0, false));
    }

    #[test]
    fn test_executables_from_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"observer_tests"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"capture"},"executable":"/r/target/debug/deps/capture-0a1b"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"netpeer"},"executable":"/r/target/debug/netpeer"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"dns"},"executable":"/r/target/debug/deps/dns-99"}
not json
{"reason":"build-finished","success":true}"#;
        let m = test_executables(msgs);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["capture"],
            PathBuf::from("/r/target/debug/deps/capture-0a1b")
        );
        assert_eq!(m["dns"], PathBuf::from("/r/target/debug/deps/dns-99"));
    }
}
