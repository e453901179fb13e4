//! The agent under test (`observer run` in full), what the kernel and /proc say about it, and
//! the peers measured on the same hook (bpftrace, BCC's tcplife).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::lab::{Proc, sh};

/// The cluster ranges the bench's agents are given; the lab's hosts lie outside both.
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Paths the agent runs with.
#[derive(Clone)]
pub struct AgentSetup {
    pub bin: PathBuf,
    pub architecture: PathBuf,
    pub inventory: PathBuf,
    pub dir: PathBuf,
    /// Where the agent exports its traces (`--otlp-endpoint`): a [`TraceSink`].
    pub otlp_endpoint: String,
}

pub struct Agent {
    proc: Option<Proc>,
    pub pid: u32,
    pub metrics_addr: String,
    pub flow_log: PathBuf,
    log: PathBuf,
    scraping: Arc<AtomicBool>,
}

impl Agent {
    /// `observer run` with the Trackunit model, the generated inventory, a flow log file and
    /// /metrics on a free port that the bench scrapes once a second, as Prometheus would.
    pub fn start(setup: &AgentSetup, name: &str) -> Result<Agent> {
        Agent::start_with(setup, name, &[])
    }

    /// [`start`](Self::start) with more arguments for `observer run`.
    pub fn start_with(setup: &AgentSetup, name: &str, extra: &[&str]) -> Result<Agent> {
        let flow_log = setup.dir.join(format!("{name}.flows.jsonl"));
        let log = setup.dir.join(format!("{name}.agent.log"));
        let _ = std::fs::remove_file(&flow_log);
        let mut cmd = Command::new(&setup.bin);
        cmd.arg("run")
            .arg("--architecture")
            .arg(&setup.architecture)
            .arg("--inventory")
            .arg(&setup.inventory)
            .arg("--flow-log")
            .arg(&flow_log)
            .args(["--metrics-addr", "127.0.0.1:0", "--node", "bench-node"])
            // Both ends of every storm connection live on this one machine: report the
            // accepted side too, so exactness can be checked at both ends.
            .args(["--ingress", "all"])
            .args(["--pod-cidr", POD_CIDR, "--service-cidr", SERVICE_CIDR])
            .args(["--otlp-endpoint", &setup.otlp_endpoint])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("agent log")?);
        let mut proc = Proc::spawn(cmd)?;
        let pid = proc.0.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        let metrics_addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("on http://").nth(1) {
                break rest.split_whitespace().next().unwrap_or("").to_owned();
            }
            if let Some(status) = proc.0.try_wait()? {
                bail!("agent exited with {status} before serving:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("agent did not serve within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let agent = Agent {
            proc: Some(proc),
            pid,
            metrics_addr,
            flow_log,
            log,
            scraping: Arc::new(AtomicBool::new(true)),
        };
        while agent.get("/readyz").0 != 200 {
            if Instant::now() > deadline {
                bail!("agent not ready within 60 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (addr, on) = (agent.metrics_addr.clone(), agent.scraping.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let _ = http_get(&addr, "/metrics");
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Ok(agent)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path)
    }

    /// Every sample of /metrics: (name with labels, value).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        self.get("/metrics")
            .1
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM and wait for the final flush (at most 30 s).
    pub fn stop(mut self) -> Result<()> {
        self.scraping.store(false, Ordering::Relaxed);
        let Some(mut proc) = self.proc.take() else {
            return Ok(());
        };
        sh("kill", &["-TERM", &self.pid.to_string()])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.0.try_wait()? {
                if !status.success() {
                    bail!("agent exited with {status}:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.scraping.store(false, Ordering::Relaxed);
    }
}

/// A plain HTTP/1.0 GET: (status, body); (0, "") when the agent does not answer.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n");
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

/// CPU time and context switches of a process and all its threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub at: Option<Instant>,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// voluntary + nonvoluntary context switches over all threads: wake-ups.
    pub switches: u64,
    pub rss_kib: u64,
}

impl ProcSample {
    pub fn take(pid: u32) -> ProcSample {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command (which may contain spaces) start at field 3.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux): 10 ms,
        // more than the agent spends in a whole storm block. The threads' schedstat (time on
        // a CPU, in ns) resolves it; the ticks stand in where schedstat is missing.
        let mut cpu_ns = 0;
        let mut switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                switches += status_field(&status, "voluntary_ctxt_switches:")
                    + status_field(&status, "nonvoluntary_ctxt_switches:");
                cpu_ns += std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        let cpu_s = if cpu_ns > 0 {
            cpu_ns as f64 / 1e9
        } else {
            (ticks(11) + ticks(12)) as f64 / 100.0
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        ProcSample {
            at: Some(Instant::now()),
            cpu_s,
            switches,
            rss_kib: status_field(&status, "VmRSS:"),
        }
    }

    /// (CPU seconds, wake-ups per second) between `self` and a later sample.
    pub fn until(&self, later: &ProcSample) -> (f64, f64) {
        let secs = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        };
        (
            later.cpu_s - self.cpu_s,
            later.switches.saturating_sub(self.switches) as f64 / secs,
        )
    }
}

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `(fdinfo text)` of every BPF object fd the process holds, with the given marker line.
fn bpf_fdinfos(pid: u32, marker: &str) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.lines().any(|l| l.starts_with(marker)))
        .collect()
}

/// `prog_type` of the raw tracepoint program and of the DNS programs (uapi `bpf_prog_type`).
const RAW_TRACEPOINT: u64 = 17;
const CGROUP_SKB: u64 = 8;

/// The kernel's run statistics of the agent's programs of one type, summed, from their fds'
/// fdinfo: (run time in ns, runs). By the agent's pid: other agents may be loaded on the same
/// machine.
fn stats_of_type(pid: u32, prog_type: u64) -> Result<(u64, u64)> {
    let infos: Vec<String> = bpf_fdinfos(pid, "prog_type:")
        .into_iter()
        .filter(|i| status_field(i, "prog_type:") == prog_type)
        .collect();
    anyhow::ensure!(
        !infos.is_empty(),
        "the agent holds no BPF program of type {prog_type}"
    );
    Ok(infos.iter().fold((0, 0), |(t, n), i| {
        (
            t + status_field(i, "run_time_ns:"),
            n + status_field(i, "run_cnt:"),
        )
    }))
}

/// The connection-counting program's statistics (the raw tracepoint).
pub fn program_stats(pid: u32) -> Result<(u64, u64)> {
    stats_of_type(pid, RAW_TRACEPOINT)
}

/// The two DNS programs' statistics together (each packet to or from a socket runs one).
pub fn dns_program_stats(pid: u32) -> Result<(u64, u64)> {
    stats_of_type(pid, CGROUP_SKB)
}

/// Memory charged for the agent's BPF maps (fdinfo `memlock`), by map name (from bpftool).
pub fn map_memory(pid: u32) -> Result<Vec<(String, u64)>> {
    let mut seen = std::collections::BTreeMap::new();
    for info in bpf_fdinfos(pid, "map_type:") {
        seen.insert(
            status_field(&info, "map_id:"),
            status_field(&info, "memlock:"),
        );
    }
    Ok(seen
        .into_iter()
        .map(|(id, bytes)| {
            let name = sh("bpftool", &["map", "show", "id", &id.to_string(), "--json"])
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["name"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("id {id}"));
            (name, bytes)
        })
        .collect())
}

/// A peer tracer on the same tracepoint, started and stopped around a block of storms.
pub struct Peer {
    proc: Proc,
}

/// Connects per flow (source, destination, port), counted when the handshake ends. bpftrace 0.17
/// takes no arrays as map keys, hence `ntop` (which stores the address; it is formatted only
/// when the map is printed).
pub const BPFTRACE_SCRIPT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->oldstate == 2/ { @connects[ntop(args->saddr), ntop(args->daddr), args->dport] = count(); }";

/// The peers measured on the same hook, by their configuration names.
pub const PEERS: [&str; 2] = ["bpftrace", "tcplife"];

/// Fails, naming each missing tool, its Debian package and the command that installs it,
/// unless the peers and perf are installed (scripts/bootstrap.sh installs them all).
pub fn require_tools() -> Result<()> {
    let missing: Vec<String> = [
        ("/usr/bin/bpftrace", "bpftrace"),
        (TCPLIFE, "libbpf-tools"),
        (super::profile::PERF, "linux-perf"),
    ]
    .iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(path, package)| format!("{path} (Debian {package})"))
    .collect();
    if !missing.is_empty() {
        bail!(
            "the bench needs {}: run `cargo xtask bootstrap` as root, which installs them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// tcplife as libbpf-tools builds it (Debian `libbpf-tools`): BCC's tool ported to CO-RE. BCC's
/// own `tcplife-bpfcc` compiles its program at start and needs the running kernel's headers,
/// which kernels without CONFIG_IKHEADERS and without a headers package (this one) lack.
pub const TCPLIFE: &str = "/usr/sbin/tcplife";

impl Peer {
    pub fn start(name: &'static str, dir: &Path) -> Result<Peer> {
        let out = dir.join(format!("{name}.out"));
        // Both attach classic tracepoints through tracefs. Each gets a tracefs of its own in
        // a private mount namespace, so that it neither depends on the machine's mounts nor
        // loses its tracefs when another run on the machine unmounts one (that once failed a
        // run). `exec` keeps the pid: the peer's own.
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tracefs tracefs /sys/kernel/tracing && exec \"$@\"",
            "sh",
        ]);
        match name {
            "bpftrace" => cmd.args(["bpftrace", "-e", BPFTRACE_SCRIPT]),
            _ => cmd.arg(TCPLIFE),
        };
        cmd.stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(dir.join(format!("{name}.err")))?);
        let mut proc = Proc::spawn(cmd)?;
        // Loaded once it holds a BPF program (its output is block-buffered in a file, so a
        // banner may not show); both attach right after loading.
        let deadline = Instant::now() + Duration::from_secs(120);
        let pid = proc.0.id();
        while bpf_fdinfos(pid, "prog_type:").is_empty() {
            if let Some(status) = proc.0.try_wait()? {
                let err =
                    std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
                bail!("{name} exited with {status} before attaching: {err}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not load a BPF program within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1000));
        Ok(Peer { proc })
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// SIGINT (bpftrace prints its maps then), then wait at most 10 s.
    pub fn stop(mut self) {
        let _ = sh("kill", &["-INT", &self.proc.0.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A local OTLP receiver the agents export their traces to (`otlp-sink`, from the tests
/// crate): the agent in full exports traces, as a node's agent does to its collector.
pub struct TraceSink {
    proc: Proc,
    pub endpoint: String,
}

impl TraceSink {
    pub fn start(bin: &Path) -> Result<TraceSink> {
        let mut cmd = Command::new(bin);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut proc = Proc::spawn_piped(cmd)?;
        let mut line = String::new();
        BufReader::new(proc.0.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("otlp-sink did not start: {line:?}"))?;
        let endpoint = v["endpoint"]
            .as_str()
            .with_context(|| format!("otlp-sink printed no endpoint: {line:?}"))?
            .to_owned();
        Ok(TraceSink { proc, endpoint })
    }

    /// Closes the receiver; what it received over its life: {"requests":N,"spans":M}.
    pub fn finish(mut self) -> Result<Value> {
        drop(self.proc.0.stdin.take());
        let mut line = String::new();
        BufReader::new(self.proc.0.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("otlp-sink's last line: {line:?}"))
    }
}
