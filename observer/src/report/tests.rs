//! Unit tests of the report and learn commands, on the recorded scenario of
//! tests/fixtures/report (its README.md gives every number).

use std::{path::PathBuf, time::SystemTime};

use serde_json::{Value, json};

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/report")
}

fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).expect("test timestamp")
}

fn scenario(format: Format) -> ReportOptions {
    let f = fixtures();
    ReportOptions {
        architecture: f.join("architecture.yaml"),
        flow_logs: vec![f.join("node-a.jsonl"), f.join("node-b.jsonl")],
        prometheus: None,
        since: Some(TimeSpec::At(at("2026-11-25T10:00:00Z"))),
        until: Some("2026-11-25T11:00:00Z".parse().expect("time")),
        format,
        output: None,
    }
}

/// Runs the report; returns (exit code, stdout, stderr).
fn run(opts: &ReportOptions) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = report_to(opts, at("2026-11-25T12:00:00Z"), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn report_json(opts: &ReportOptions) -> (i32, Value, String) {
    let (code, out, err) = run(opts);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    (code, v, err)
}

const HASH: &str = "sha256:7d91410d00a4942e7d458e2775f179cf2013c08ac65be828d7a7d84d87499fdd";

fn outcomes(e: u64, r: u64, t: u64, u: u64, a: u64) -> Value {
    json!({"established": e, "refused": r, "timed-out": t, "unreachable": u, "aborted": a})
}

#[test]
fn scenario_report_in_json_has_every_number() {
    let (code, v, err) = report_json(&scenario(Format::Json));
    assert_eq!(code, EXIT_UNEXPECTED, "{err}");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["generated_at"], "2026-11-25T12:00:00Z");
    let summary = "NOT CONFORMANT: 5 unexpected flows from 4 sources (14 connections) between \
                   2026-11-25T10:00:00Z and 2026-11-25T11:00:00Z; 2 of 5 documented flows not \
                   observed; 2 corrupt lines skipped";
    assert_eq!(
        v["verdict"],
        json!({"conformant": false, "exit_code": 1, "summary": summary})
    );
    assert_eq!(
        v["window"],
        json!({"since": "2026-11-25T10:00:00Z", "until": "2026-11-25T11:00:00Z",
               "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T11:00:00Z"})
    );
    assert_eq!(v["source"]["kind"], "flow-logs");
    assert_eq!(v["source"]["granularity"], "connection");
    assert_eq!(v["source"]["files"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["model"]["name"], "shop");
    assert_eq!(v["model"]["hash"], HASH);
    assert_eq!(
        v["model"]["hashes_in_input"],
        json!([{"hash": format!("sha256:{}", "0".repeat(64)), "records": 1}, {"hash": HASH, "records": 1}])
    );
    assert_eq!(v["model"]["records_without_model"], 8);
    assert_eq!(v["nodes"], json!(["node-a", "node-b"]));
    let input = &v["input"];
    assert_eq!(
        (
            &input["lines"],
            &input["records"],
            &input["records_outside_window"],
            &input["corrupt_lines"],
            &input["ingress_duplicates"],
            &input["rejudged"],
            &input["verdicts_kept"]
        ),
        (
            &json!(15),
            &json!(12),
            &json!(1),
            &json!(2),
            &json!(2),
            &json!(9),
            &json!(1)
        )
    );
    let corrupt: Vec<(String, u64, String)> = input["corrupt"]
        .as_array()
        .expect("corrupt")
        .iter()
        .map(|c| {
            (
                c["file"]
                    .as_str()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                c["line"].as_u64().unwrap_or(0),
                c["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        corrupt,
        vec![
            (
                "node-a.jsonl".into(),
                5,
                "not JSON: key must be a string at line 1 column 2".into()
            ),
            (
                "node-a.jsonl".into(),
                12,
                "schema 2 is not supported (this release reads schema 1)".into()
            ),
        ]
    );
    assert_eq!(
        v["totals"],
        json!({"connections": 43, "expected": 29, "unexpected": 14, "local": 6,
               "outcomes": outcomes(32, 3, 7, 1, 0)})
    );

    let c = &v["coverage"];
    assert_eq!(
        (&c["documented"], &c["seen"], &c["unseen"]),
        (&json!(5), &json!(3), &json!(2))
    );
    assert_eq!(c["unseen_rules"], json!(["probe-web", "db-backup"]));
    assert_eq!(
        c["flows"],
        json!([
            {"rule": "web-to-api", "from": "web", "to": "api", "ports": [8080], "via": "direct",
             "description": "web calls the API", "seen": true, "connections": 10, "records": 1,
             "first_seen": "2026-11-25T10:00:05.000Z", "last_seen": "2026-11-25T10:05:00.000Z",
             "outcomes": outcomes(10, 0, 0, 0, 0), "nodes": ["node-a"]},
            {"rule": "api-to-db", "from": "api", "to": "db", "ports": [5432], "via": "direct",
             "description": "the API stores orders", "seen": true, "connections": 9, "records": 2,
             "first_seen": "2026-11-25T10:01:00.000Z", "last_seen": "2026-11-25T10:45:00.000Z",
             "outcomes": outcomes(8, 1, 0, 0, 0), "nodes": ["node-a"]},
            {"rule": "api-to-payments", "from": "api", "to": "payments", "ports": [443], "via": "direct",
             "description": "the API charges cards", "seen": true, "connections": 4, "records": 1,
             "first_seen": "2026-11-25T10:02:00.000Z", "last_seen": "2026-11-25T10:30:00.000Z",
             "outcomes": outcomes(4, 0, 0, 0, 0), "nodes": ["node-a"]},
            {"rule": "probe-web", "from": "node", "to": "web", "ports": [8080], "via": "direct",
             "description": "kubelet probes web", "seen": false, "connections": 0, "records": 0,
             "first_seen": null, "last_seen": null, "outcomes": null, "nodes": []},
            {"rule": "db-backup", "from": "db", "to": "backup-store", "ports": [443], "via": "direct",
             "description": "nightly backups", "seen": false, "connections": 0, "records": 0,
             "first_seen": null, "last_seen": null, "outcomes": null, "nodes": []},
        ])
    );

    let u = &v["unexpected"];
    assert_eq!(
        (&u["flows"], &u["sources"], &u["connections"]),
        (&json!(5), &json!(4), &json!(14))
    );
    let party = |label: &str, party: Value, ns: Value, wl: Value, addrs: &[&str]| {
        json!({"label": label, "party": party, "namespace": ns, "workload": wl, "service": null,
               "host": null, "addresses": addrs})
    };
    let flow = |dest: Value,
                port: u16,
                scope: &str,
                reason: &str,
                n: u64,
                o: Value,
                first: &str,
                last: &str,
                comm: &str,
                node: &str| {
        json!({"destination": dest, "port": port, "scope": scope, "reason": reason,
               "connections": n, "records": 1, "outcomes": o, "first_seen": first,
               "last_seen": last, "processes": [comm], "nodes": [node]})
    };
    let api = || {
        party(
            "shop/api",
            json!("api"),
            json!("shop"),
            json!("api"),
            &["10.244.1.20"],
        )
    };
    let db = || {
        party(
            "shop/db",
            json!("db"),
            json!("shop"),
            json!("db"),
            &["10.244.2.30"],
        )
    };
    assert_eq!(
        u["by_source"],
        json!([
            {"source": party("shop/web", json!("web"), json!("shop"), json!("web"), &["10.244.1.10"]),
             "connections": 5,
             "flows": [flow(db(), 5432, "cluster", "undocumented-flow", 5, outcomes(0, 0, 5, 0, 0),
                            "2026-11-25T10:15:00.000Z", "2026-11-25T10:16:00.000Z", "python3", "node-a")]},
            {"source": api(),
             "connections": 4,
             "flows": [
                 flow(party("203.0.113.99", json!(null), json!(null), json!(null), &["203.0.113.99"]),
                      443, "external", "unknown-destination", 3, outcomes(1, 0, 2, 0, 0),
                      "2026-11-25T10:10:00.000Z", "2026-11-25T10:12:30.000Z", "curl", "node-a"),
                 flow(db(), 6379, "cluster", "wrong-port", 1, outcomes(0, 0, 0, 1, 0),
                      "2026-11-25T10:25:00.000Z", "2026-11-25T10:25:00.000Z", "redis-cli", "node-a"),
             ]},
            {"source": party("node", json!("node"), json!(null), json!(null), &["192.168.5.2"]),
             "connections": 3,
             "flows": [flow(api(), 8080, "cluster", "undocumented-flow", 3, outcomes(3, 0, 0, 0, 0),
                            "2026-11-25T10:03:00.000Z", "2026-11-25T10:33:00.000Z", "kubelet", "node-b")]},
            {"source": party("shop/debug", json!(null), json!("shop"), json!("debug"), &["10.244.1.99"]),
             "connections": 2,
             "flows": [flow(api(), 9090, "cluster", "unknown-source", 2, outcomes(0, 2, 0, 0, 0),
                            "2026-11-25T10:20:00.000Z", "2026-11-25T10:20:01.500Z", "nc", "node-a")]},
        ])
    );
    assert_eq!(v["outcome_meanings"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        v["diagram"]["nodes"],
        json!([
            {"name": "web", "kind": "component"}, {"name": "api", "kind": "component"},
            {"name": "db", "kind": "component"}, {"name": "payments", "kind": "external"},
            {"name": "backup-store", "kind": "external"}, {"name": "node", "kind": "reserved"},
            {"name": "203.0.113.99", "kind": "unknown"}, {"name": "shop/debug", "kind": "unknown"},
        ])
    );
    let edges: Vec<(String, String, String, Value, u64)> = v["diagram"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_owned(),
                e["to"].as_str().unwrap_or("").to_owned(),
                e["style"].as_str().unwrap_or("").to_owned(),
                e["ports"].clone(),
                e["connections"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let e = |f: &str, t: &str, s: &str, p: u16, n: u64| {
        (f.to_owned(), t.to_owned(), s.to_owned(), json!([p]), n)
    };
    assert_eq!(
        edges,
        expected_edges()
            .iter()
            .map(|&(f, t, s, p, n)| e(f, t, s, p, n))
            .collect::<Vec<_>>()
    );

    // Each corrupt line is named on stderr with its file and line number, then the verdict.
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].ends_with("node-a.jsonl:5: corrupt flow record skipped: not JSON: key must be a string at line 1 column 2"), "{err}");
    assert!(lines[1].ends_with("node-a.jsonl:12: corrupt flow record skipped: schema 2 is not supported (this release reads schema 1)"), "{err}");
    assert_eq!(lines[2], summary);
}

/// The scenario's diagram edges: (from, to, style, port, connections).
fn expected_edges() -> [(&'static str, &'static str, &'static str, u16, u64); 10] {
    [
        ("web", "api", "seen", 8080, 10),
        ("api", "db", "seen", 5432, 9),
        ("api", "payments", "seen", 443, 4),
        ("node", "web", "unseen", 8080, 0),
        ("db", "backup-store", "unseen", 443, 0),
        ("api", "203.0.113.99", "undocumented", 443, 3),
        ("api", "db", "undocumented", 6379, 1),
        ("node", "api", "undocumented", 8080, 3),
        ("shop/debug", "api", "undocumented", 9090, 2),
        ("web", "db", "undocumented", 5432, 5),
    ]
}

#[test]
fn markdown_has_the_verdict_and_a_mermaid_edge_per_diagram_edge() {
    let (code, md, _) = run(&scenario(Format::Markdown));
    assert_eq!(code, EXIT_UNEXPECTED);
    assert!(
        md.contains("\n**NOT CONFORMANT: 5 unexpected flows from 4 sources (14 connections)"),
        "{md}"
    );
    let start = md
        .find("```mermaid\nflowchart LR\n")
        .expect("a mermaid block");
    let block = &md[start..];
    let block = &block[..block[3..].find("```").map_or(block.len(), |i| i + 3)];
    let ids = [
        "web",
        "api",
        "db",
        "payments",
        "backup-store",
        "node",
        "203.0.113.99",
        "shop/debug",
    ];
    let edge_lines: Vec<&str> = block.lines().filter(|l| l.contains("|\"")).collect();
    let expected: Vec<String> = expected_edges()
        .iter()
        .map(|&(f, t, s, p, n)| {
            let id = |x: &str| ids.iter().position(|&i| i == x).expect("node");
            let (arrow, label) = match s {
                "seen" => ("-->", format!("{p} ({n})")),
                "unseen" => ("-.->", format!("{p}")),
                _ => ("==>", format!("{p} ({n})")),
            };
            format!("    n{} {arrow}|\"{label}\"| n{}", id(f), id(t))
        })
        .collect();
    assert_eq!(edge_lines, expected);
    let styles: Vec<&str> = block
        .lines()
        .filter(|l| l.trim_start().starts_with("linkStyle"))
        .collect();
    let expected_styles: Vec<String> = expected_edges()
        .iter()
        .enumerate()
        .map(|(i, &(_, _, s, _, _))| {
            let style = match s {
                "seen" => "stroke:#2b8a3e,stroke-width:2px",
                "unseen" => "stroke:#9aa0a6,stroke-width:1px,stroke-dasharray:5 5",
                _ => "stroke:#d62728,stroke-width:3px",
            };
            format!("    linkStyle {i} {style}")
        })
        .collect();
    assert_eq!(styles, expected_styles);
    assert!(
        block.contains("    n6>\"203.0.113.99\"]:::unknown\n"),
        "{block}"
    );
    assert!(
        md.contains("## Stale documentation: 2 documented flows not observed"),
        "{md}"
    );
    assert!(
        md.contains("- `probe-web`: node → web on 8080 — kubelet probes web\n"),
        "{md}"
    );
    assert!(md.contains("- to shop/db :5432 — 5 timed-out: no answer to the SYN: the usual signature of a network policy or firewall that drops\n"), "{md}");
    assert!(
        md.contains("- tests/fixtures/report/node-a.jsonl:5: not JSON")
            || md.contains("node-a.jsonl:5: not JSON"),
        "{md}"
    );
}

/// (class, data-from, data-to) of every `<g class="edge …">` in `html`.
pub(crate) fn svg_edges(html: &str) -> Vec<(String, String, String)> {
    let attr = |tag: &str, name: &str| {
        let k = format!(" {name}=\"");
        tag.find(&k).map(|i| {
            let rest = &tag[i + k.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_owned()
        })
    };
    html.match_indices("<g class=\"edge ")
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            (
                attr(tag, "class").unwrap_or_default(),
                attr(tag, "data-from").unwrap_or_default(),
                attr(tag, "data-to").unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn html_is_self_contained_with_an_svg_edge_per_diagram_edge() {
    let (code, html, _) = run(&scenario(Format::Html));
    assert_eq!(code, EXIT_UNEXPECTED);
    assert!(html.starts_with("<!DOCTYPE html>"));
    for banned in [
        "<script",
        "<link",
        "@import",
        "url(http",
        "src=\"http",
        "href=\"http",
    ] {
        assert!(!html.contains(banned), "{banned} in a self-contained page");
    }
    let expected: Vec<(String, String, String)> = expected_edges()
        .iter()
        .map(|&(f, t, s, _, _)| (format!("edge {s}"), f.to_owned(), t.to_owned()))
        .collect();
    assert_eq!(svg_edges(&html), expected);
    assert_eq!(html.matches("<g class=\"node ").count(), 8);
    assert!(html.contains(
        "<p class=\"verdict not-conformant\" id=\"verdict\">NOT CONFORMANT: 5 unexpected flows"
    ));
}

#[test]
fn svg_layout_ranks_are_deterministic_topological_columns() {
    let report = build_report(
        &scenario(Format::Json),
        at("2026-11-25T12:00:00Z"),
        &mut Vec::new(),
    )
    .expect("report");
    let d = &report.diagram;
    // node → web → api → db → backup-store; payments after api; unknowns by their edges.
    assert_eq!(svg::ranks(d), vec![1, 2, 3, 3, 4, 0, 3, 0]);
    assert_eq!(svg::render(d), svg::render(d));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write fixture");
    p
}

/// The scenario's lines that are records judged expected, as one log.
fn expected_only(dir: &Path) -> PathBuf {
    let a = std::fs::read_to_string(fixtures().join("node-a.jsonl")).expect("fixture");
    let keep: Vec<&str> = a
        .lines()
        .enumerate()
        .filter(|(i, _)| [0, 1, 2, 3, 8, 12].contains(i))
        .map(|(_, l)| l)
        .collect();
    write(dir, "expected.jsonl", &(keep.join("\n") + "\n"))
}

#[test]
fn a_report_without_unexpected_flows_is_conformant_exit_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = scenario(Format::Json);
    opts.flow_logs = vec![expected_only(dir.path())];
    let (code, v, _) = report_json(&opts);
    assert_eq!(code, EXIT_CONFORMANT);
    assert_eq!(
        v["verdict"]["summary"],
        "CONFORMANT: no unexpected flows; all 29 connections were documented between \
         2026-11-25T10:00:00Z and 2026-11-25T11:00:00Z; 2 of 5 documented flows not observed"
    );
    assert_eq!(v["unexpected"]["by_source"], json!([]));
    // Without --since/--until the window is what the records cover.
    opts.since = None;
    opts.until = None;
    let (code, v, _) = report_json(&opts);
    assert_eq!(code, EXIT_CONFORMANT);
    assert_eq!(
        v["window"],
        json!({"since": null, "until": null, "from": "2026-11-25T10:00:05Z", "to": "2026-11-25T10:50:00Z"})
    );
}

#[test]
fn bad_inputs_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |opts: &ReportOptions, message: &str| {
        let (code, out, err) = run(opts);
        assert_eq!(code, EXIT_BAD_INPUT, "{err}");
        assert_eq!(out, "", "nothing on stdout");
        assert!(err.contains(message), "{message:?} not in {err:?}");
    };
    // An empty window: records exist, none in it.
    let mut o = scenario(Format::Json);
    o.since = Some(TimeSpec::At(at("2026-11-26T00:00:00Z")));
    o.until = Some(TimeSpec::At(at("2026-11-26T01:00:00Z")));
    check(
        &o,
        "error: no flow records in the window (2026-11-26T00:00:00Z to 2026-11-26T01:00:00Z): 13 records read from",
    );
    check(&o, "13 outside the window, 2 corrupt lines skipped");
    // since after until.
    o.since = Some(TimeSpec::At(at("2026-11-26T02:00:00Z")));
    check(
        &o,
        "the window is empty: --since 2026-11-26T02:00:00Z is not before --until 2026-11-26T01:00:00Z",
    );
    // A file that does not exist.
    let mut o = scenario(Format::Json);
    o.flow_logs.push(dir.path().join("missing.jsonl"));
    check(&o, "cannot read the flow log");
    // Only corrupt lines.
    let mut o = scenario(Format::Json);
    o.flow_logs = vec![write(
        dir.path(),
        "garbage.jsonl",
        "garbage\n\n{\"schema\":1}\n",
    )];
    check(&o, "garbage.jsonl:1: corrupt flow record skipped: not JSON");
    check(
        &o,
        "garbage.jsonl:3: corrupt flow record skipped: not a flow record: missing field",
    );
    check(&o, "0 records read from");
    // An invalid architecture.
    let mut o = scenario(Format::Json);
    o.architecture = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: observer/v1alpha1\nkind: Nope\n",
    );
    check(&o, "the architecture was not accepted");
    // No source, or both.
    let mut o = scenario(Format::Json);
    o.flow_logs.clear();
    check(
        &o,
        "no traffic to report on: give --flow-log FILE (repeatable) or --prometheus URL",
    );
    let mut o = scenario(Format::Json);
    o.prometheus = Some("http://127.0.0.1:9".into());
    check(&o, "give either --flow-log or --prometheus, not both");
    // An unwritable output.
    let mut o = scenario(Format::Json);
    o.output = Some(dir.path().join("no/such/dir/report.json"));
    check(&o, "cannot write");
}

#[test]
fn an_overlong_or_binary_line_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(expected_only(dir.path())).expect("read");
    let mut text = "x".repeat(70_000);
    text.push('\n');
    text.push_str(&good);
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n");
    let p = dir.path().join("mixed.jsonl");
    std::fs::write(&p, bytes).expect("write");
    let mut opts = scenario(Format::Json);
    opts.flow_logs = vec![p];
    let (code, v, err) = report_json(&opts);
    assert_eq!(code, EXIT_CONFORMANT, "{err}");
    assert_eq!(v["input"]["corrupt_lines"], 2);
    assert_eq!(v["input"]["corrupt"][0]["line"], 1);
    assert_eq!(
        v["input"]["corrupt"][0]["error"],
        "longer than 65536 bytes; not a flow record"
    );
    assert_eq!(v["input"]["corrupt"][1]["line"], 8);
    assert_eq!(v["totals"]["connections"], 29);
    assert!(
        err.contains("mixed.jsonl:8: corrupt flow record skipped: not UTF-8 text"),
        "{err}"
    );
}

#[test]
fn output_goes_to_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = scenario(Format::Html);
    opts.output = Some(dir.path().join("report.html"));
    let (code, out, _) = run(&opts);
    assert_eq!((code, out.as_str()), (EXIT_UNEXPECTED, ""));
    let html = std::fs::read_to_string(dir.path().join("report.html")).expect("written");
    assert_eq!(svg_edges(&html).len(), 10);
}

#[test]
fn options_parse() {
    assert_eq!("md".parse(), Ok(Format::Markdown));
    assert_eq!("html".parse(), Ok(Format::Html));
    assert_eq!("json".parse(), Ok(Format::Json));
    assert_eq!(
        "pdf".parse::<Format>(),
        Err("unknown format \"pdf\": use md, html or json".into())
    );
    let now = at("2026-11-25T12:00:00Z");
    assert_eq!(
        "1h".parse::<TimeSpec>().map(|t| t.resolve(now)),
        Ok(at("2026-11-25T11:00:00Z"))
    );
    assert_eq!(
        "90m".parse::<TimeSpec>().map(|t| t.resolve(now)),
        Ok(at("2026-11-25T10:30:00Z"))
    );
    assert_eq!(
        "2026-11-25T10:00:00Z".parse::<TimeSpec>(),
        Ok(TimeSpec::At(at("2026-11-25T10:00:00Z")))
    );
    assert!(
        "yesterday"
            .parse::<TimeSpec>()
            .is_err_and(|e| e.contains("RFC 3339"))
    );
}

#[test]
fn prometheus_counts_are_exact_rises_with_resets() {
    // Samples every 10 s; the window is (100, 200].
    let s = [
        (90.0, 5.0),
        (100.0, 7.0),
        (110.0, 7.0),
        (120.0, 9.0),
        (130.0, 2.0),
        (140.0, 4.0),
        (210.0, 50.0),
    ];
    // 7 → 9 (+2), reset to 2 (+2), → 4 (+2); the sample after the window is ignored.
    assert_eq!(
        prometheus::count_series(&s, 100.0, 200.0),
        (6, Some(120.0), Some(140.0))
    );
    // A series born in the window counts from zero.
    assert_eq!(
        prometheus::count_series(&[(150.0, 3.0), (160.0, 3.0)], 100.0, 200.0),
        (3, Some(150.0), Some(150.0))
    );
    // A series flat over the window counts nothing.
    assert_eq!(
        prometheus::count_series(&[(90.0, 3.0), (150.0, 3.0)], 100.0, 200.0),
        (0, None, None)
    );
}

#[test]
fn an_unreachable_prometheus_is_exit_2() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut opts = scenario(Format::Json);
    opts.flow_logs.clear();
    opts.prometheus = Some(format!("http://127.0.0.1:{port}"));
    let (code, out, err) = run(&opts);
    assert_eq!((code, out.as_str()), (EXIT_BAD_INPUT, ""));
    assert!(
        err.starts_with(&format!(
            "error: cannot reach Prometheus at http://127.0.0.1:{port}: "
        )),
        "{err}"
    );
}

#[test]
fn learned_draft_validates_and_judges_every_record_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixtures();
    let opts = LearnOptions {
        flow_logs: vec![f.join("node-a.jsonl"), f.join("node-b.jsonl")],
        inventory: None,
        output: Some(dir.path().join("draft.yaml")),
        name: Some("shop-draft".into()),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        learn_to(&opts, &mut out, &mut err),
        0,
        "{}",
        String::from_utf8_lossy(&err)
    );
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("node-a.jsonl:5: corrupt flow record skipped"),
        "{err}"
    );
    assert!(err.ends_with(
        "draft: 4 components, 2 externals, 9 flows from 13 records; 1 left out; review every \"# REVIEW:\" line, then `observer validate`\n"
    ), "{err}");
    let path = dir.path().join("draft.yaml");
    assert_eq!(crate::architecture::validate_command(&path), 0);
    let arch = Architecture::load(&path).expect("the draft validates");
    let names = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        arch.components()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        names(vec!["api", "db", "debug", "web"])
    );
    assert_eq!(
        arch.externals()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        names(vec!["api.payments.example", "ip-203-0-113-99"])
    );
    let rules: Vec<String> = arch.rules().iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        rules,
        names(vec![
            "api-to-api.payments.example-443",
            "api-to-db-5432",
            "api-to-db-6379",
            "api-to-db-15432",
            "api-to-ip-203-0-113-99-443",
            "debug-to-api-9090",
            "node-to-api-8080",
            "web-to-api-8080",
            "web-to-db-5432",
        ])
    );
    // Every record learned from is expected under the draft.
    let logs = read_flow_logs(&opts.flow_logs, &mut Vec::new()).expect("read");
    assert_eq!(logs.records.len(), 13);
    for r in &logs.records {
        let (j, kept) = model::judge(&arch, &model::Observation::from_record(r));
        assert!(!kept);
        assert!(j.is_expected(), "{j:?} for {r:?}");
    }
    let yaml = std::fs::read_to_string(&path).expect("draft");
    assert!(yaml.contains("    # REVIEW: selector guessed from the workload name (Pod debug); records carry no pod labels.\n"), "{yaml}");
    assert!(yaml.contains("  # 5 connections (5 timed-out), first seen 2026-11-25T10:15:00.000Z, last seen 2026-11-25T10:16:00.000Z, by python3\n  # REVIEW: no connection was established"), "{yaml}");
    // Counted once: node-b's ingress twin of node-a's api → db records adds nothing.
    assert!(yaml.contains("  # 7 connections (6 established, 1 refused), first seen 2026-11-25T10:01:00.000Z, last seen 2026-11-25T10:40:00.000Z, by api\n  - from: \"api\"\n    to: \"db\"\n    ports: [5432]\n"), "{yaml}");
    assert!(yaml.contains("# 6 connections stayed inside one pod (loopback): expected without a flow (rule local).\n"), "{yaml}");
}

#[test]
fn learn_without_records_or_with_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(dir.path(), "empty.jsonl", "\n");
    let opts = LearnOptions {
        flow_logs: vec![empty],
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(learn_to(&opts, &mut out, &mut err), EXIT_BAD_INPUT);
    assert_eq!(
        String::from_utf8_lossy(&err),
        "error: no flow records to learn from (0 corrupt lines skipped)\n"
    );
    // A missing inventory is bad input.
    let opts = LearnOptions {
        flow_logs: vec![expected_only(dir.path())],
        inventory: Some(dir.path().join("missing.json")),
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(learn_to(&opts, &mut out, &mut err), EXIT_BAD_INPUT);
    assert!(
        String::from_utf8_lossy(&err).contains("cannot read inventory"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    // With one: the web workload's selector is the labels its pods carry, without the
    // per-revision pod-template-hash.
    let pods = write(
        dir.path(),
        "pods.json",
        r#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-7d9f-abcde","namespace":"shop","uid":"u1",
            "labels":{"app":"web","tier":"front","pod-template-hash":"7d9f"},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d9f","uid":"r1","controller":true}]},
           "spec":{"containers":[{"name":"web","image":"x"}]},"status":{"phase":"Running","podIP":"10.244.1.10"}}]}"#,
    );
    let opts = LearnOptions {
        flow_logs: vec![expected_only(dir.path())],
        inventory: Some(pods),
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        learn_to(&opts, &mut out, &mut err),
        0,
        "{}",
        String::from_utf8_lossy(&err)
    );
    let yaml = String::from_utf8(out).expect("utf-8");
    assert!(
        yaml.contains("# REVIEW: selector: the labels every pod of the workload carries in the inventory.\n    selector:\n      \"app\": \"web\"\n      \"tier\": \"front\"\n"),
        "{yaml}"
    );
    assert!(yaml.contains("  name: \"learned\"\n"), "{yaml}");
}

#[test]
fn the_same_model_keeps_the_agents_verdict_others_are_rejudged() {
    let arch = Architecture::load(&fixtures().join("architecture.yaml")).expect("fixture model");
    let logs = read_flow_logs(&[fixtures().join("node-a.jsonl")], &mut Vec::new()).expect("read");
    // Line 13: a Service port only the agent could match (target port 5432).
    let mut o = model::Observation::from_record(&logs.records[10]);
    assert_eq!(o.port, 15432);
    assert_eq!(
        model::judge(&arch, &o),
        (
            crate::architecture::Judgement::Expected {
                rule: "api-to-db".into()
            },
            true
        )
    );
    o.recorded.model = Some("sha256:other".into());
    assert_eq!(
        model::judge(&arch, &o),
        (
            crate::architecture::Judgement::Unexpected {
                reason: observer_common::record::Reason::WrongPort
            },
            false
        )
    );
}
