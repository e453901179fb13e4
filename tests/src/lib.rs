//! Helpers shared by the end-to-end tests: isolated test hosts in network namespaces, the real
//! agent binary, and reading what it recorded.
//!
//! Test hosts sit on a bridge of their own that has no address and no route off the machine, so
//! their traffic can only reach each other. Names and subnets are unique per process and per lab,
//! and everything is removed in `Drop`, also when a test fails.
#![forbid(unsafe_code)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use observer_common::record::FlowRecord;

static LABS: AtomicU32 = AtomicU32::new(0);

/// Runs a command that must succeed; panics with its output otherwise.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Fails loudly unless running as root: the end-to-end tests load BPF programs and create
/// network namespaces, which they cannot do otherwise, and they must not pass by skipping.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|r| r.split_whitespace().next().unwrap_or("").to_owned())
            })
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "the end-to-end tests must run as root (cargo xtask test does)"
    );
}

/// One test host: a network namespace with one interface on the lab's bridge.
pub struct Host {
    pub netns: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Host {
    /// A command run inside this host's network namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs a command in the namespace and requires success.
    pub fn sh(&self, program: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.netns, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Inode of the host's network namespace, as the agent records it.
    pub fn netns_inode(&self) -> u32 {
        let meta = std::fs::metadata(format!("/run/netns/{}", self.netns)).expect("netns file");
        std::os::unix::fs::MetadataExt::ino(&meta) as u32
    }
}

/// Hosts on an isolated bridge.
pub struct Lab {
    pub bridge: String,
    pub hosts: Vec<Host>,
}

impl Lab {
    pub fn new(n: usize) -> Lab {
        require_root();
        let id = LABS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}{:x}", pid % 0xffff, id);
        let (a, b) = (100 + (pid % 100) as u8, (id % 250) as u8);
        let bridge = format!("ob{tag}br");
        let mut lab = Lab {
            bridge: bridge.clone(),
            hosts: Vec::new(),
        };
        sh("ip", &["link", "add", &bridge, "type", "bridge"]);
        sh("ip", &["link", "set", &bridge, "up"]);
        for i in 0..n {
            let netns = format!("ob{tag}h{i}");
            let veth = format!("ob{tag}v{i}");
            sh("ip", &["netns", "add", &netns]);
            let host = Host {
                netns: netns.clone(),
                ip4: Ipv4Addr::new(10, a, b, (i + 2) as u8),
                ip6: format!("fd0b:{a:x}:{b:x}::{:x}", i + 2)
                    .parse()
                    .expect("ipv6"),
            };
            lab.hosts.push(host);
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ],
            );
            sh("ip", &["link", "set", &veth, "master", &bridge, "up"]);
            let h = lab.hosts.last().expect("host");
            h.sh("ip", &["link", "set", "lo", "up"]);
            h.sh("ip", &["link", "set", "eth0", "up"]);
            h.sh(
                "ip",
                &["addr", "add", &format!("{}/24", h.ip4), "dev", "eth0"],
            );
            h.sh(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/64", h.ip6),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A background process (a server, a held connection) killed on drop.
pub struct Background(pub Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `netpeer` binary of this package, built beside the test executables (`target/<profile>/`).
pub fn netpeer() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("netpeer"))
        .expect("target dir");
    assert!(
        p.exists(),
        "no netpeer at {}: build it with `cargo build -p observer-tests`",
        p.display()
    );
    p
}

/// Starts `netpeer serve` in `host` and waits until it listens. It serves one connection at a
/// time and closes one whose client sent nothing for 2 s.
pub fn serve(host: &Host, addr: &str) -> Background {
    serve_idle(host, addr, Duration::from_secs(2))
}

/// [`serve`], closing a connection whose client sent nothing for `idle` (rounded to seconds).
pub fn serve_idle(host: &Host, addr: &str, idle: Duration) -> Background {
    let mut child = host
        .cmd(netpeer())
        .args(["serve", addr, &idle.as_secs().max(1).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn netpeer serve");
    let mut first = [0u8; 1];
    // The first byte of its "listening" line means the socket is bound.
    let _ = child.stdout.as_mut().expect("stdout").read(&mut first);
    Background(child)
}

/// Runs `netpeer ARGS` in `host` to completion; returns its JSON result line and its pid.
pub fn peer(host: &Host, args: &[&str]) -> (serde_json::Value, u32) {
    let child = host
        .cmd(netpeer())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn netpeer");
    let pid = child.id();
    let out = child.wait_with_output().expect("netpeer");
    assert!(out.status.success(), "netpeer {args:?} failed");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("netpeer output {:?}: {e}", out.stdout));
    (v, pid)
}

/// Path of the agent binary: `OBSERVER_BIN` (set by `cargo xtask test`) or the debug build.
pub fn observer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OBSERVER_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/observer");
    assert!(
        p.exists(),
        "no agent binary at {}: run `cargo build -p observer` or `cargo xtask test`",
        p.display()
    );
    p
}

/// A running agent with its own flow log and metrics port.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub metrics_addr: String,
}

static AGENTS: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Starts `observer run` with fast test intervals plus `extra` arguments, and waits until
    /// `/readyz` says it is capturing.
    pub fn start(extra: &[&str]) -> Agent {
        let agent = Agent::spawn(extra);
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// Waits (at most `timeout`) until `/readyz` answers 200; returns its body.
    pub fn wait_ready(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/readyz");
            if status == 200 {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready within {timeout:?} (last answer {status} {body:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the agent process runs.
    pub fn running(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(std::process::Child::try_wait),
            Some(Ok(None))
        )
    }

    /// Starts `observer run` like [`start`](Self::start) but returns as soon as it serves its
    /// endpoints, ready or not.
    pub fn spawn(extra: &[&str]) -> Agent {
        let dir = std::env::temp_dir().join(format!(
            "observer-e2e-{}-{}",
            std::process::id(),
            AGENTS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("agent dir");
        let stderr = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let mut args: Vec<String> = vec![
            "run".into(),
            "--flow-log".into(),
            dir.join("flows.jsonl").display().to_string(),
        ];
        // Fast test intervals, unless the test sets its own.
        for (flag, value) in [
            ("--metrics-addr", "127.0.0.1:0"),
            ("--poll-interval", "100ms"),
            ("--flush-interval", "500ms"),
            ("--node", "test-node"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(ToString::to_string));
        let child = Command::new(observer_bin())
            .args(&args)
            .stderr(stderr)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn observer");
        let mut agent = Agent {
            child: Some(child),
            dir,
            metrics_addr: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.metrics_addr.is_empty() {
            let log = agent.log();
            if let Some(rest) = log.split("on http://").nth(1) {
                rest.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .clone_into(&mut agent.metrics_addr);
            }
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(std::process::Child::try_wait)
            {
                panic!("agent exited with {status} before serving:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// A plain HTTP/1.0 GET on the agent's endpoint: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path)
    }

    /// The value of a metric sample, e.g. `observer_kernel_losses_total{kind="ring_full"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }

    /// Every complete record written so far (a line still being written is left for later).
    pub fn records(&self) -> Vec<FlowRecord> {
        let text = std::fs::read_to_string(self.dir.join("flows.jsonl")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}")))
            .collect()
    }

    /// Waits (at most `timeout`) until `done` holds for the records written so far.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[FlowRecord]) -> bool,
    ) -> Vec<FlowRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; records so far:\n{records:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then wait for a clean exit; returns every record, the final flush included.
    pub fn stop(mut self) -> Vec<FlowRecord> {
        let mut child = self.child.take().expect("running");
        sh("kill", &["-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "agent exited with {status}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.records()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Kept after a failure, for its flow log and agent log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain HTTP/1.0 GET on `addr` (host:port): (status, body); status 0 when nothing answers.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Records of `netns` only: the agent sees the whole machine, the tests judge their own hosts.
/// Agent arguments that make every flow idle at every scan (1 ns) and scan every 10 ms: flows
/// are deleted from the kernel maps over and over while connections keep coming.
pub const DELETE_AT_EVERY_SCAN: [&str; 6] = [
    "--idle-timeout",
    "1ns",
    "--flush-interval",
    "10ms",
    "--poll-interval",
    "5ms",
];

pub fn of_netns(records: &[FlowRecord], netns: u32) -> Vec<&FlowRecord> {
    records.iter().filter(|r| r.netns == netns).collect()
}

pub mod apiserver;
pub mod objects;
pub mod otlp;
pub mod prometheus;

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `timeout`. Returns how
/// long it took.
pub async fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() <= timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}
