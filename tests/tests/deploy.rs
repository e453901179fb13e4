//! The alert rules and the Grafana dashboard of deploy/: `promtool check rules` and
//! `promtool test rules` pass, the PrometheusRule object carries exactly the plain rules file,
//! every alert has a firing and a silent unit test, and every PromQL expression names only
//! metrics the agent exports. Needs `promtool` (scripts/bootstrap.sh installs Debian's
//! `prometheus`); fails if it is missing.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// Every metric the agent exposes (OpenMetrics, prefix `observer_`).
const METRICS: [&str; 11] = [
    "observer_connections_total",
    "observer_unexpected_connections_total",
    "observer_kernel_losses_total",
    "observer_agent_losses_total",
    "observer_ready",
    "observer_watcher_synced",
    "observer_watcher_last_sync_timestamp_seconds",
    "observer_index_stale",
    "observer_architecture_reloads_total",
    "observer_architecture_info",
    "observer_build_info",
];

/// Alert name -> severity. Critical: unexpected egress and lost counts.
const ALERTS: [(&str, &str); 12] = [
    ("ObserverUnexpectedEgress", "critical"),
    ("ObserverUndocumentedInternalFlow", "warning"),
    ("ObserverWrongPort", "warning"),
    ("ObserverUnknownSourceWorkload", "warning"),
    ("ObserverUnknownDestination", "warning"),
    ("ObserverLosingCounts", "critical"),
    ("ObserverAgentAbsent", "warning"),
    ("ObserverAgentNotReady", "warning"),
    ("ObserverIndexStale", "warning"),
    ("ObserverWatcherNotSynced", "warning"),
    ("ObserverArchitectureReloadFailing", "warning"),
    ("ObserverArchitectureMismatch", "warning"),
];

const RULES: &str = "deploy/alerts/observer-rules.yaml";
const RULE_TESTS: &str = "deploy/alerts/tests/observer-rules.test.yaml";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Runs promtool in the workspace root; panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool {args:?}: {e}. It comes with Debian's `prometheus` package, \
                 which scripts/bootstrap.sh installs"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `observer_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("observer_") {
        let start = i + at;
        let mut end = start + "observer_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

fn rules() -> Vec<Value> {
    yaml(RULES)["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn promtool_check_rules_passes() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{out}"
    );
}

#[test]
fn promtool_unit_tests_pass() {
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn alerts_are_exactly_these_with_severity_and_annotations() {
    let got: BTreeMap<String, String> = rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().expect("only alerting rules").to_owned();
            let annotations = r["annotations"].as_object().unwrap();
            assert_eq!(
                annotations.keys().map(String::as_str).collect::<Vec<_>>(),
                ["description", "runbook", "summary"],
                "{name}"
            );
            assert_eq!(r["labels"].as_object().unwrap().len(), 1, "{name}");
            (name, r["labels"]["severity"].as_str().unwrap().to_owned())
        })
        .collect();
    let want: BTreeMap<String, String> = ALERTS
        .iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect();
    assert_eq!(got, want);
    for r in rules() {
        let expr = r["expr"].as_str().unwrap();
        for name in metric_names(expr) {
            assert!(
                METRICS.contains(&name.as_str()),
                "{}: {name} is no metric the agent exports",
                r["alert"]
            );
        }
    }
    // The flow alerts point at the flow log and the report, with the paths the DaemonSet uses.
    for r in &rules()[..5] {
        let runbook = r["annotations"]["runbook"].as_str().unwrap();
        assert!(
            runbook.contains(
                "observer report --architecture /etc/observer/architecture/trackunit.yaml \
                 --flow-log /var/log/observer/flows.jsonl --since 1h"
            ),
            "{runbook}"
        );
        assert!(
            runbook.contains(r#"jq -c 'select(.verdict=="unexpected""#),
            "{runbook}"
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let tests = yaml(RULE_TESTS);
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for group in tests["tests"].as_array().unwrap() {
        for case in group["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let alerts = case["exp_alerts"].as_array().unwrap();
            for alert in alerts {
                let annotations = alert["exp_annotations"].as_object().unwrap();
                assert_eq!(annotations.len(), 3, "{name}: every annotation asserted");
                assert!(alert["exp_labels"]["severity"].is_string(), "{name}");
            }
            if alerts.is_empty() {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    let all: BTreeSet<String> = ALERTS.iter().map(|(a, _)| a.to_string()).collect();
    assert_eq!(fires, all, "alerts with a case that fires");
    assert_eq!(silent, all, "alerts with a case that must not fire");
}

#[test]
fn prometheusrule_object_carries_exactly_the_rules_file() {
    let object = yaml("deploy/prometheusrule.yaml");
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["metadata"]["name"], "observer");
    assert_eq!(
        object["spec"],
        yaml(RULES),
        "deploy/prometheusrule.yaml is out of date: run deploy/alerts/gen-prometheusrule.sh"
    );
}

/// Every PromQL expression of the dashboard (`expr` of targets, `query` of variables).
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query" | "definition", Value::String(s)) if s.contains('(') => {
                        out.push(s.clone());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_name_only_exported_metrics_and_parse() {
    let path = workspace().join("deploy/dashboard/observer.json");
    let text = std::fs::read_to_string(&path).expect("read deploy/dashboard/observer.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "observer-flows");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert_eq!(variables[0]["name"], "DS_PROMETHEUS");
    assert_eq!(variables[0]["type"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");

    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "{q} reads no observer metric");
        for name in names {
            assert!(
                METRICS.contains(&name.as_str()),
                "dashboard query {q} names {name}, which the agent does not export"
            );
            used.insert(name);
        }
    }
    let all: BTreeSet<String> = METRICS.iter().map(ToString::to_string).collect();
    assert_eq!(used, all, "the dashboard shows every metric");

    // Every panel reads the DS_PROMETHEUS data source.
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }

    // Each target's PromQL parses: promtool checks it as a recording rule once Grafana's
    // variables are replaced by values of their kind.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, p) in panels.iter().filter(|p| p["type"] != "row").enumerate() {
        for (j, t) in p["targets"].as_array().unwrap().iter().enumerate() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "2m")
                .replace("$__range", "6h")
                .replace("$node", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            rules.push_str(&format!(
                "      - record: dashboard:panel{i}_{j}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-queries.rules.yaml");
    std::fs::write(&file, rules).expect("write the dashboard's queries");
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

#[test]
fn metric_names_finds_whole_names_only() {
    assert_eq!(
        metric_names(
            "sum(rate(observer_connections_total{a=\"observer_x\"}[5m])) / my_observer_y + observer_ready"
        ),
        BTreeSet::from([
            "observer_connections_total".to_owned(),
            "observer_ready".to_owned(),
            "observer_x".to_owned(),
        ])
    );
}
