//! The HTML report in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/bootstrap.sh) loads the report of the recorded scenario (tests/fixtures/report), and
//! the diagram's edges are read back from the DOM Chromium built. A screenshot is kept in
//! tests/artifacts/ (ignored by git) for a person to look at. Fails loudly, never skips, when
//! Chromium is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use observer::report::{Format, ReportOptions, TimeSpec, report_to};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn at(s: &str) -> SystemTime {
    match s.parse::<TimeSpec>() {
        Ok(TimeSpec::At(t)) => t,
        other => panic!("bad test time {s}: {other:?}"),
    }
}

/// The diagram's edges: (class, data-from, data-to), in document order.
const EDGES: [(&str, &str, &str); 10] = [
    ("edge seen", "web", "api"),
    ("edge seen", "api", "db"),
    ("edge seen", "api", "payments"),
    ("edge unseen", "node", "web"),
    ("edge unseen", "db", "backup-store"),
    ("edge undocumented", "api", "203.0.113.99"),
    ("edge undocumented", "api", "db"),
    ("edge undocumented", "node", "api"),
    ("edge undocumented", "shop/debug", "api"),
    ("edge undocumented", "web", "db"),
];

/// Runs Chromium headless with `args`, bounded in time; returns its stdout.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile directory");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run chromium ({e}): this test needs Debian's chromium package; \
             install it with `apt-get install -y chromium` (scripts/bootstrap.sh does)"
        )
    });
    let pid = child.id();
    // Bounded: a hung browser fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(out) => {
                let out = out.expect("chromium output");
                assert!(
                    out.status.success(),
                    "chromium {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            Err(_) if Instant::now() < deadline => {}
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!("chromium {args:?} did not finish within 90 s");
            }
        }
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let k = format!(" {name}=\"");
    let i = tag.find(&k)?;
    let rest = &tag[i + k.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[test]
fn chromium_renders_the_diagram_with_every_edge_in_its_style() {
    let f = root().join("fixtures/report");
    let artifacts = root().join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("tests/artifacts");
    let html = artifacts.join("report.html");
    let opts = ReportOptions {
        architecture: f.join("architecture.yaml"),
        flow_logs: vec![f.join("node-a.jsonl"), f.join("node-b.jsonl")],
        since: Some(TimeSpec::At(at("2026-11-25T10:00:00Z"))),
        until: Some(TimeSpec::At(at("2026-11-25T11:00:00Z"))),
        format: Format::Html,
        output: Some(html.clone()),
        ..Default::default()
    };
    let mut err = Vec::new();
    let code = report_to(&opts, at("2026-11-25T12:00:00Z"), &mut Vec::new(), &mut err);
    assert_eq!(code, 1, "{}", String::from_utf8_lossy(&err));

    let url = format!("file://{}", html.display());
    let dom = chromium(&["--dump-dom", &url]);
    assert!(dom.contains("<svg"), "no SVG in the rendered DOM: {dom}");
    let edges: Vec<(String, String, String)> = dom
        .match_indices("<g class=\"edge ")
        .map(|(i, _)| {
            let tag = &dom[i..i + dom[i..].find('>').unwrap_or(0)];
            (
                attr(tag, "class").unwrap_or_default(),
                attr(tag, "data-from").unwrap_or_default(),
                attr(tag, "data-to").unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = EDGES
        .iter()
        .map(|&(c, f, t)| (c.to_owned(), f.to_owned(), t.to_owned()))
        .collect();
    assert_eq!(edges, expected);
    // Each edge is drawn: a path with its style's stroke and arrowhead.
    for (style, stroke) in [
        ("seen", "#2b8a3e"),
        ("unseen", "#9aa0a6"),
        ("undocumented", "#d62728"),
    ] {
        let drawn = dom
            .match_indices(&format!("<g class=\"edge {style}\""))
            .filter(|(i, _)| {
                let g = &dom[*i..*i + dom[*i..].find("</g>").unwrap_or(0)];
                g.contains(&format!("stroke=\"{stroke}\""))
                    && g.contains(&format!("url(#arrow-{style})"))
            })
            .count();
        let want = EDGES
            .iter()
            .filter(|(c, _, _)| *c == format!("edge {style}"))
            .count();
        assert_eq!(drawn, want, "{style} edges drawn");
    }
    assert_eq!(dom.matches("<g class=\"node ").count(), 8);
    assert!(dom.contains("NOT CONFORMANT: 5 unexpected flows from 4 sources (14 connections)"));

    let png = artifacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    chromium(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1400,1000",
        &url,
    ]);
    let bytes =
        std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        bytes.len() > 10_000,
        "a blank screenshot? {} bytes",
        bytes.len()
    );
}
