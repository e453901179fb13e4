//! The report's Prometheus source against a real Prometheus server (Debian's `prometheus`,
//! installed by scripts/bootstrap.sh): it scrapes a fixed exposition every second, and the
//! report reads `observer_connections_total` back through the HTTP API. Fails loudly, never
//! skips, when the binary is missing.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use observer::report::{Format, ReportOptions, TimeSpec, prometheus, report_to};
use serde_json::{Value, json};

/// Stands in for the agents' `/metrics`: what `observer_connections_total` will look like once
/// the agent exports it with these labels. Two series of api → db differ only in a label the
/// report sums over (`node`); one ingress series repeats an egress one (counted once).
const EXPOSITION: &str = r#"# HELP observer_connections_total TCP connections by flow and verdict.
# TYPE observer_connections_total counter
observer_connections_total{direction="egress",src_namespace="shop",src_workload="web",src_component="web",dst_namespace="shop",dst_workload="api",dst_component="api",dst_name="api",dst_scope="cluster",dst_port="8080",verdict="expected",reason=""} 10
observer_connections_total{direction="ingress",src_namespace="shop",src_workload="web",src_component="web",dst_namespace="shop",dst_workload="api",dst_component="api",dst_name="api",dst_scope="cluster",dst_port="8080",verdict="expected",reason=""} 10
observer_connections_total{node="node-a",direction="egress",src_namespace="shop",src_workload="api",src_component="api",dst_namespace="shop",dst_workload="db",dst_component="db",dst_name="db",dst_scope="cluster",dst_port="5432",verdict="expected",reason=""} 7
observer_connections_total{node="node-b",direction="egress",src_namespace="shop",src_workload="api",src_component="api",dst_namespace="shop",dst_workload="db",dst_component="db",dst_name="db",dst_scope="cluster",dst_port="5432",verdict="expected",reason=""} 2
observer_connections_total{direction="egress",src_namespace="shop",src_workload="api",src_component="api",dst_namespace="",dst_workload="",dst_component="payments",dst_name="api.payments.example",dst_scope="external",dst_port="443",verdict="expected",reason=""} 4
observer_connections_total{direction="egress",src_namespace="shop",src_workload="api",src_component="api",dst_namespace="",dst_workload="",dst_component="",dst_name="exfil.example.net",dst_scope="external",dst_port="443",verdict="unexpected",reason="unknown-destination"} 3
observer_connections_total{direction="egress",src_namespace="shop",src_workload="web",src_component="web",dst_namespace="shop",dst_workload="db",dst_component="db",dst_name="db",dst_scope="cluster",dst_port="5432",verdict="unexpected",reason="undocumented-flow"} 5
observer_connections_total{direction="egress",src_namespace="",src_workload="",src_component="node",dst_namespace="shop",dst_workload="api",dst_component="api",dst_name="",dst_scope="cluster",dst_port="8080",verdict="unexpected",reason="undocumented-flow"} 3
"#;

/// A tiny HTTP server on 127.0.0.1 answering every request with [`EXPOSITION`]; stops on drop.
struct Exposition {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Exposition {
    fn start() -> Exposition {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the exposition server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => serve(s),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Exposition { port, stop }
    }
}

impl Drop for Exposition {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{EXPOSITION}",
        EXPOSITION.len()
    );
}

/// The Prometheus server; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn start_prometheus(target_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run prometheus ({e}): this test needs Debian's prometheus package \
                 (/usr/bin/prometheus); scripts/bootstrap.sh installs it"
            )
        });
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/report")
}

#[test]
fn report_from_a_real_prometheus_scraping_an_exposition() {
    let started = SystemTime::now();
    let exposition = Exposition::start();
    let mut prom = start_prometheus(exposition.port);

    // Bounded wait until all 8 series are queryable.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = prometheus::query(
            &prom.url,
            "count(observer_connections_total)",
            SystemTime::now(),
        )
        .ok()
        .and_then(|d| d["result"][0]["value"][1].as_str().map(str::to_owned));
        if ready.as_deref() == Some("8") {
            break;
        }
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("prometheus exited early ({status}); see its log");
        }
        assert!(
            Instant::now() < deadline,
            "the samples did not become queryable within 60 s (last answer: {ready:?})"
        );
        thread::sleep(Duration::from_millis(250));
    }

    let since = started - Duration::from_secs(60);
    let opts = ReportOptions {
        architecture: fixtures().join("architecture.yaml"),
        prometheus: Some(prom.url.clone()),
        since: Some(TimeSpec::At(since)),
        format: Format::Json,
        ..Default::default()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let now = SystemTime::now();
    let code = report_to(&opts, now, &mut out, &mut err);
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, 1, "{err}");
    let v: Value = serde_json::from_slice(&out).expect("JSON report");

    assert_eq!(v["source"]["kind"], "prometheus");
    assert_eq!(v["source"]["url"], prom.url.as_str());
    assert_eq!(v["source"]["granularity"], "workload");
    assert_eq!(v["nodes"], json!([]));
    assert_eq!(
        v["totals"],
        json!({"connections": 34, "expected": 23, "unexpected": 11, "local": 0, "outcomes": null})
    );
    let i = &v["input"];
    assert_eq!(
        (
            &i["records"],
            &i["ingress_duplicates"],
            &i["rejudged"],
            &i["verdicts_kept"],
            &i["corrupt_lines"]
        ),
        (&json!(7), &json!(1), &json!(6), &json!(0), &json!(0))
    );
    let coverage: Vec<(String, bool, u64)> = v["coverage"]["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("").to_owned(),
                f["seen"].as_bool().unwrap_or(false),
                f["connections"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(
        coverage,
        vec![
            ("web-to-api".into(), true, 10),
            ("api-to-db".into(), true, 9),
            ("api-to-payments".into(), true, 4),
            ("probe-web".into(), false, 0),
            ("db-backup".into(), false, 0),
        ]
    );
    let u = &v["unexpected"];
    assert_eq!(
        (&u["flows"], &u["sources"], &u["connections"]),
        (&json!(3), &json!(3), &json!(11))
    );
    let flows: Vec<(String, String, u64, String, u64)> = u["by_source"]
        .as_array()
        .expect("by_source")
        .iter()
        .flat_map(|g| {
            let src = g["source"]["label"].as_str().unwrap_or("").to_owned();
            g["flows"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |f| {
                    (
                        src.clone(),
                        f["destination"]["label"].as_str().unwrap_or("").to_owned(),
                        f["port"].as_u64().unwrap_or(0),
                        f["reason"].as_str().unwrap_or("").to_owned(),
                        f["connections"].as_u64().unwrap_or(0),
                    )
                })
        })
        .collect();
    assert_eq!(
        flows,
        vec![
            (
                "shop/web".into(),
                "shop/db".into(),
                5432,
                "undocumented-flow".into(),
                5
            ),
            (
                "node".into(),
                "shop/api".into(),
                8080,
                "undocumented-flow".into(),
                3
            ),
            (
                "shop/api".into(),
                "exfil.example.net".into(),
                443,
                "unknown-destination".into(),
                3
            ),
        ]
    );
    // Prometheus knows no outcomes, processes or addresses; first/last seen are scrape times.
    let f = &u["by_source"][0]["flows"][0];
    assert_eq!(
        (
            &f["outcomes"],
            &f["processes"],
            &f["destination"]["addresses"]
        ),
        (&Value::Null, &json!([]), &json!([]))
    );
    let seen = |k: &str| {
        f[k].as_str()
            .and_then(|s| s.parse::<TimeSpec>().ok())
            .map_or_else(|| panic!("{k} missing: {f}"), |t| t.resolve(now))
    };
    assert!(
        seen("first_seen") >= started - Duration::from_secs(1) && seen("last_seen") <= now,
        "{f}"
    );
    assert_eq!(
        seen("first_seen"),
        seen("last_seen"),
        "the counters rose once, at their first scrape"
    );
    assert_eq!(
        v["verdict"]["summary"].as_str().map(|s| s
            .split(" between ")
            .next()
            .unwrap_or("")
            .to_owned()),
        Some("NOT CONFORMANT: 3 unexpected flows from 3 sources (11 connections)".to_owned())
    );

    // A server that is not Prometheus: exit 2, saying so.
    let mut not_prom = opts.clone();
    not_prom.prometheus = Some(format!("http://127.0.0.1:{}", exposition.port));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        report_to(&not_prom, SystemTime::now(), &mut out, &mut err),
        2
    );
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("answered HTTP 200 with something that is not its API's JSON"),
        "{err}"
    );

    // A window before the samples: no connections, exit 2.
    let mut empty = opts.clone();
    empty.since = Some(TimeSpec::At(since - Duration::from_secs(7200)));
    empty.until = Some(TimeSpec::At(since - Duration::from_secs(3600)));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(report_to(&empty, SystemTime::now(), &mut out, &mut err), 2);
    assert!(String::from_utf8_lossy(&err).contains("no connections in the window"));

    // Prometheus gone: unreachable, exit 2.
    let url = prom.url.clone();
    drop(prom);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(report_to(&opts, SystemTime::now(), &mut out, &mut err), 2);
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.starts_with(&format!("error: cannot reach Prometheus at {url}: ")),
        "{err}"
    );
}
