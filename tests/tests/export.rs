//! Export of unexpected flows, end to end: real network namespaces on an isolated bridge, the
//! real kernel program and agent, judged against a small architecture written by the test.
//! Spans reach an OTLP receiver built on the official protocol definitions; a real scrape
//! passes `promtool check metrics`; a real Prometheus loads the project's alert rules and fires
//! the unexpected-egress alert, and nothing else about this test's traffic or agent.
//!
//! The agent sees the whole machine: where other traffic could add to a global number, the
//! assertions are made on this test's own hosts (network namespace, addresses, the test's
//! unique Kubernetes namespace name).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer_common::record::{FlowRecord, Verdict};
use observer_tests::{
    Agent, Lab,
    objects::deployment_pod,
    of_netns,
    otlp::{Attr, Receiver},
    peer,
    prometheus::{Prometheus, free_port},
    serve,
};
use serde_json::{Value, json};

const DB_PORT: u16 = 5432;
const EGRESS_PORT: u16 = 8443;

/// Three test hosts: `web` and `db` are pods of the "cluster" (the pod range is exactly their
/// two addresses), `outside` is outside it. The architecture documents web → db:5432 only.
struct Setup {
    lab: Lab,
    ns: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let lab = Lab::new(3);
        let ns = format!("export-{}-{}", std::process::id(), free_port());
        let dir = tempfile::tempdir().expect("temp dir");
        let model = format!(
            "apiVersion: observer/v1alpha1
kind: Architecture
metadata: {{name: export-test}}
components:
  - {{name: web, namespace: {ns}}}
  - {{name: db, namespace: {ns}}}
flows:
  - {{from: web, to: db, ports: [{DB_PORT}], id: web-to-db}}
"
        );
        std::fs::write(dir.path().join("architecture.yaml"), model).expect("model");
        let inventory = json!({"apiVersion": "v1", "kind": "List", "items": [
            deployment_pod(&ns, "web", "x1", &lab.hosts[0].ip4.to_string()),
            deployment_pod(&ns, "db", "y2", &lab.hosts[1].ip4.to_string()),
        ]});
        std::fs::write(
            dir.path().join("inventory.json"),
            serde_json::to_vec(&inventory).expect("json"),
        )
        .expect("inventory");
        Setup { lab, ns, dir }
    }

    fn web(&self) -> &observer_tests::Host {
        &self.lab.hosts[0]
    }
    fn db(&self) -> &observer_tests::Host {
        &self.lab.hosts[1]
    }
    fn outside(&self) -> &observer_tests::Host {
        &self.lab.hosts[2]
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `observer run` arguments: the model, the inventory, the pod range, plus `extra`.
    fn agent(&self, extra: &[&str]) -> Agent {
        let web = format!("{}/32", self.web().ip4);
        let db = format!("{}/32", self.db().ip4);
        let (model, inventory) = (self.path("architecture.yaml"), self.path("inventory.json"));
        let mut args = vec![
            "--architecture",
            &model,
            "--inventory",
            &inventory,
            "--pod-cidr",
            &web,
            "--pod-cidr",
            &db,
        ];
        args.extend_from_slice(extra);
        Agent::start(&args)
    }

    /// The documented flow (web → db:5432, `n` connections) and the undocumented egress
    /// (web → outside:8443, one connection); returns the egress client's pid.
    fn drive(&self, n: u64) -> u32 {
        let _db = serve(self.db(), &format!("0.0.0.0:{DB_PORT}"));
        let _out = serve(self.outside(), &format!("0.0.0.0:{EGRESS_PORT}"));
        let db = format!("{}:{DB_PORT}", self.db().ip4);
        assert_eq!(
            peer(self.web(), &["connect", &db, &n.to_string()]).0,
            json!({"established": n})
        );
        let out = format!("{}:{EGRESS_PORT}", self.outside().ip4);
        let (result, pid) = peer(self.web(), &["connect", &out, "1"]);
        assert_eq!(result, json!({"established": 1}));
        pid
    }

    /// Waits for `n` documented and one unexpected connection in the web host's records.
    fn wait_judged(&self, agent: &Agent, n: u64) -> Vec<FlowRecord> {
        let netns = self.web().netns_inode();
        let count = |r: &[FlowRecord], v: Verdict| -> u64 {
            of_netns(r, netns)
                .iter()
                .filter(|r| r.verdict == Some(v))
                .map(|r| r.count)
                .sum()
        };
        agent.wait_for(Duration::from_secs(20), "both flows judged", |r| {
            count(r, Verdict::Expected) == n && count(r, Verdict::Unexpected) == 1
        })
    }
}

/// Polls `done` every 200 ms for at most `timeout`; panics with `what` and the last value.
fn wait<T: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, value) = probe();
        if done {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {value:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_first_sighting_of_an_unexpected_flow_is_a_span_with_semantic_attributes() {
    let s = Setup::new();
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let agent = s.agent(&["--otlp-endpoint", &endpoint]);
    let pid = s.drive(3);
    let records = s.wait_judged(&agent, 3);
    let model = records
        .iter()
        .find_map(|r| r.model.clone())
        .expect("judged records carry the model hash");

    let (web, outside) = (s.web().ip4.to_string(), s.outside().ip4.to_string());
    let mine = |sp: &observer_tests::otlp::ReceivedSpan| {
        sp.attrs().get("source.address") == Some(&Attr::from(web.as_str()))
    };
    wait(
        Duration::from_secs(20),
        "the span of web -> outside",
        || {
            let spans: Vec<_> = receiver.spans().into_iter().filter(mine).collect();
            (!spans.is_empty(), spans)
        },
    );
    // Stopping flushes: every span the agent made is exported by now.
    agent.stop();
    let spans: Vec<_> = receiver.spans().into_iter().filter(mine).collect();
    assert_eq!(
        spans.len(),
        1,
        "one span, none for the documented flow: {spans:#?}"
    );
    let span = &spans[0];
    let want: BTreeMap<String, Attr> = [
        ("k8s.namespace.name", Attr::from(s.ns.as_str())),
        ("k8s.pod.name", "web-6f7d8c9b5-x1".into()),
        ("k8s.deployment.name", "web".into()),
        ("network.transport", "tcp".into()),
        ("network.type", "ipv4".into()),
        ("source.address", web.as_str().into()),
        ("destination.address", outside.as_str().into()),
        ("destination.port", i64::from(EGRESS_PORT).into()),
        ("server.address", outside.as_str().into()),
        ("server.port", i64::from(EGRESS_PORT).into()),
        ("process.pid", i64::from(pid).into()),
        ("process.executable.name", "netpeer".into()),
        ("observer.verdict", "unexpected".into()),
        ("observer.reason", "unknown-destination".into()),
        ("observer.direction", "egress".into()),
        ("observer.src.component", "web".into()),
        ("observer.dst.scope", "external".into()),
        ("observer.model", model.as_str().into()),
        ("observer.count", 1i64.into()),
        ("observer.first_sighting", true.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(span.attrs(), want);
    assert_eq!(span.span.name, "unexpected flow");
    assert_eq!(span.span.kind, 1, "SPAN_KIND_INTERNAL");
    assert_eq!(span.span.trace_id.len(), 16);
    assert_eq!(span.span.span_id.len(), 8);
    assert!(span.span.parent_span_id.is_empty());
    assert!(span.span.start_time_unix_nano <= span.span.end_time_unix_nano);
    assert_eq!(span.scope, "observer");
    let resource: BTreeMap<&str, &Attr> =
        span.resource.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(resource.get("service.name"), Some(&&Attr::from("observer")));
    assert_eq!(
        resource.get("service.version"),
        Some(&&Attr::from(env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        resource.get("k8s.node.name"),
        Some(&&Attr::from("test-node"))
    );
    assert_eq!(
        resource.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "k8s.node.name",
            "service.name",
            "service.version",
            "telemetry.sdk.language",
            "telemetry.sdk.name",
            "telemetry.sdk.version",
        ])
    );
}

#[test]
fn an_unreachable_collector_slows_nothing_and_every_span_is_accounted() {
    let s = Setup::new();
    // Nothing listens there: every export fails at once.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let agent = s.agent(&["--otlp-endpoint", &closed, "--trace-queue-size", "4"]);
    let _db = serve(s.db(), &format!("0.0.0.0:{DB_PORT}"));
    let db = format!("{}:{DB_PORT}", s.db().ip4);
    assert_eq!(
        peer(s.web(), &["connect", &db, "500"]).0,
        json!({"established": 500})
    );
    // 200 unexpected flows: one refused connection to each of 200 closed ports outside.
    let outside = s.outside().ip4.to_string();
    assert_eq!(
        peer(s.web(), &["storm", &outside, "23000", "23199"]).0,
        json!({"refused": 200})
    );
    let netns = s.web().netns_inode();
    let sum = |r: &[FlowRecord], v: Verdict| -> u64 {
        of_netns(r, netns)
            .iter()
            .filter(|r| r.verdict == Some(v))
            .map(|r| r.count)
            .sum()
    };
    agent.wait_for(Duration::from_secs(20), "700 connections judged", |r| {
        sum(r, Verdict::Expected) == 500 && sum(r, Verdict::Unexpected) == 200
    });
    let m = |sample: &str| agent.metric(sample) as u64;
    // Every span ends exported, failed or dropped at the full queue; none can be exported.
    let (failed, dropped) = wait(
        Duration::from_secs(30),
        "200 spans failed or dropped",
        || {
            let failed = m("observer_trace_spans_total{result=\"failed\"}");
            let dropped = m("observer_trace_spans_total{result=\"queue_full\"}");
            (failed + dropped >= 200, (failed, dropped))
        },
    );
    assert_eq!(m("observer_trace_spans_total{result=\"exported\"}"), 0);
    // A dropped span's connections are agent losses (each of these spans is one connection).
    assert!(
        m("observer_agent_losses_total{kind=\"export_queue_full\"}") >= dropped,
        "failed {failed}, dropped {dropped}"
    );
    let records = agent.stop();
    assert_eq!(sum(&records, Verdict::Expected), 500);
    assert_eq!(sum(&records, Verdict::Unexpected), 200);
    let ports: BTreeSet<u16> = of_netns(&records, netns)
        .iter()
        .filter(|r| r.verdict == Some(Verdict::Unexpected))
        .filter_map(|r| r.dst.port)
        .collect();
    assert_eq!(ports, (23000..=23199).collect());
}

/// `promtool check metrics` on stdin; panics with its output unless it exits 0.
fn promtool_check_metrics(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool: {e}. It comes with Debian's `prometheus` package, which \
                 scripts/bootstrap.sh installs"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{report}\non:\n{text}",
        out.status
    );
    report
}

#[test]
fn a_real_scrape_passes_promtool_check_metrics() {
    let s = Setup::new();
    let agent = s.agent(&[]);
    s.drive(2);
    s.wait_judged(&agent, 2);
    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!("src_namespace=\"{}\"", s.ns)),
        "the flow families have this test's series:\n{text}"
    );
    let report = promtool_check_metrics(&text);
    assert_eq!(report.trim(), "", "no lint findings");
    agent.stop();
}

/// The project's alert rules with every `for:` set to 0s, so a test need not wait minutes
/// for an alert to go from pending to firing.
fn rules_without_for() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alerts/observer-rules.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut rewritten = 0;
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                rewritten += 1;
                format!("{indent}for: 0s")
            }
            _ => l.to_owned(),
        })
        .collect();
    assert!(rewritten > 0, "no `for:` in {}", path.display());
    out.join("\n") + "\n"
}

/// Labels of an alert, without the empty ones (Prometheus drops them).
fn labels(alert: &Value) -> BTreeMap<String, String> {
    alert["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The alerts about flows; each names the flow's source and destination.
const FLOW_ALERTS: [&str; 5] = [
    "ObserverUnexpectedEgress",
    "ObserverUndocumentedInternalFlow",
    "ObserverWrongPort",
    "ObserverUnknownSourceWorkload",
    "ObserverUnknownDestination",
];

/// A record with an end in the cluster that the index did not know.
fn unattributed(r: &FlowRecord) -> bool {
    [&r.src, &r.dst].iter().any(|ep| {
        ep.scope == Some(observer_common::record::Scope::Cluster)
            && ep.namespace.is_none()
            && ep.component.is_none()
    })
}

#[test]
fn prometheus_fires_unexpected_egress_and_no_other_alert() {
    let s = Setup::new();
    // The cap is not under test here, and on a shared machine other tests' flows to thousands
    // of ports could push this agent past it (series_overflow fires ObserverLosingCounts).
    let agent = s.agent(&["--max-series", "1000000"]);
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [observer-rules.yaml]
scrape_configs:
  - job_name: observer
    static_configs:
      - targets: ['{}']
        labels: {{node: test-node}}
",
        agent.metrics_addr
    );
    let prom = Prometheus::start(&config, &[("observer-rules.yaml", rules_without_for())]);
    let rules = prom.api("/api/v1/rules");
    let loaded = rules["groups"].as_array().map_or(0, |g| {
        g.iter()
            .map(|g| g["rules"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    });
    assert_eq!(loaded, 12, "every rule of the project loaded: {rules}");
    wait(Duration::from_secs(30), "the agent scraped", || {
        let up = prom.query("up{job=\"observer\"}");
        (up.len() == 1 && up[0]["value"][1] == "1", up)
    });

    s.drive(3);
    s.wait_judged(&agent, 3);

    // The agent sees the whole machine, and other tests' network namespaces look like pods
    // it has no inventory for. So a flow alert is this test's when it names the test's
    // namespace, and an agent alert is this test's except `unattributed` losses, which are
    // checked against the flow log below. The rest is listed, not judged.
    let ns = s.ns.clone();
    let ours = |a: &Value| {
        let l = labels(a);
        let name = l.get("alertname").map_or("", String::as_str);
        if FLOW_ALERTS.contains(&name) {
            l.get("src_namespace") == Some(&ns) || l.get("dst_namespace") == Some(&ns)
        } else {
            !(name == "ObserverLosingCounts" && l.get("kind").is_some_and(|k| k == "unattributed"))
        }
    };
    let egress: BTreeMap<String, String> = [
        ("alertname", "ObserverUnexpectedEgress"),
        ("severity", "critical"),
        ("node", "test-node"),
        ("src_namespace", ns.as_str()),
        ("src_workload", "web"),
        ("src_component", "web"),
        ("dst_scope", "external"),
        ("dst_port", "8443"),
        ("reason", "unknown-destination"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let alerts = wait(
        Duration::from_secs(60),
        "exactly the unexpected-egress alert firing",
        || {
            let all = prom.alerts();
            let mine: Vec<(String, BTreeMap<String, String>)> = all
                .iter()
                .filter(|a| ours(a))
                .map(|a| (a["state"].as_str().unwrap_or("").to_owned(), labels(a)))
                .collect();
            (mine == [("firing".to_owned(), egress.clone())], all)
        },
    );
    // The documented flow is in Prometheus, counted exactly, and raised nothing.
    let expected = prom.query(&format!(
        "sum(observer_connections_total{{src_namespace=\"{ns}\", dst_workload=\"db\", verdict=\"expected\"}})"
    ));
    assert_eq!(expected.len(), 1, "{expected:?}");
    assert_eq!(expected[0]["value"][1], "3");
    // Unattributed connections: never this test's hosts (all in the inventory, or outside
    // the pod range); an `unattributed` alert must come from records of other namespaces.
    let records = agent.records();
    let hosts: BTreeSet<u32> = s
        .lab
        .hosts
        .iter()
        .map(observer_tests::Host::netns_inode)
        .collect();
    let (mine, others): (Vec<&FlowRecord>, Vec<&FlowRecord>) = records
        .iter()
        .filter(|r| unattributed(r))
        .partition(|r| hosts.contains(&r.netns));
    assert!(
        mine.is_empty(),
        "unattributed records of this test: {mine:#?}"
    );
    let unattributed_alert = alerts.iter().any(|a| {
        let l = labels(a);
        l.get("alertname")
            .is_some_and(|n| n == "ObserverLosingCounts")
            && l.get("kind").is_some_and(|k| k == "unattributed")
    });
    if unattributed_alert {
        assert!(
            !others.is_empty(),
            "an unattributed-loss alert with no unattributed record in the flow log"
        );
    }
    let foreign: Vec<_> = alerts.iter().filter(|a| !ours(a)).map(labels).collect();
    if !foreign.is_empty() {
        eprintln!("alerts about other traffic on this machine (not judged): {foreign:#?}");
    }
    drop(prom);
    agent.stop();
}
