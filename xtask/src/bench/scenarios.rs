//! The measurements: connection cost against a baseline and peers, the kernel program's run
//! time, memory, exactness under load and detection latency. Each returns a JSON section of the
//! report; every load loop is bounded in count and time.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    agent::{Agent, AgentSetup, Peer, ProcSample, dns_program_stats, map_memory, program_stats},
    lab::{Lab, Proc},
    noop::{NoopProbe, RunTimeStats},
    stats::{bootstrap_ci95_median, median, percentile},
};

/// Sizes of one run; the smoke mode shrinks them to seconds.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub pairs: usize,
    pub storm_count: u64,
    pub storm_seconds: f64,
    pub kernel_count: u64,
    pub held: u64,
    pub flows: u64,
    pub exact_count: u64,
    pub latency_flows: usize,
    pub idle_seconds: f64,
}

pub struct Ctx {
    pub lab: Lab,
    pub storm: PathBuf,
    pub agent: AgentSetup,
    pub sizes: Sizes,
    pub server: Option<Proc>,
}

/// Ports the storm server listens on (on `.3`); cost storms use the first 4.
const SERVE_PORTS: std::ops::RangeInclusive<u16> = 7001..=7032;

impl Ctx {
    pub fn start_server(&mut self) -> Result<()> {
        let list: Vec<String> = SERVE_PORTS
            .map(|p| format!("{}.3:{p}", self.lab.net))
            .collect();
        let mut cmd = self
            .lab
            .cmd(&self.lab.server, &self.storm.display().to_string());
        cmd.args(["serve", &list.join(","), "2"])
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(cmd)?;
        let mut line = String::new();
        BufReader::new(proc.0.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        if !line.contains("listening") {
            bail!("storm server did not start: {line:?}");
        }
        self.server = Some(proc);
        Ok(())
    }

    pub fn targets(&self, ports: usize) -> String {
        SERVE_PORTS
            .take(ports)
            .map(|p| format!("{}.3:{p}", self.lab.net))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `storm ARGS` in the client namespace to completion; its JSON line.
    fn storm(&self, args: &[&str]) -> Result<Value> {
        self.storm_under(&[], args)
    }

    /// [`storm`](Self::storm) as the command of `wrapper` (e.g. `perf record ... --`).
    pub fn storm_under(&self, wrapper: &[&str], args: &[&str]) -> Result<Value> {
        let storm = self
            .lab
            .cmd(&self.lab.client, &self.storm.display().to_string());
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args)
                    .arg(storm.get_program())
                    .args(storm.get_args());
                c
            }
            None => storm,
        };
        let out = cmd
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .context("storm")?;
        if !out.status.success() {
            bail!("storm {args:?} failed with {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().unwrap_or_default())
            .with_context(|| format!("storm output {text:?}"))
    }
}

/// A storm shape: client threads and how each connection is closed.
struct Workload {
    name: &'static str,
    threads: u64,
    rst: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "1 thread, FIN close",
        threads: 1,
        rst: false,
    },
    Workload {
        name: "2 threads, FIN close",
        threads: 2,
        rst: false,
    },
    Workload {
        name: "1 thread, RST close",
        threads: 1,
        rst: true,
    },
    Workload {
        name: "2 threads, RST close",
        threads: 2,
        rst: true,
    },
];

/// What is attached during the measured half of a pair (and during the storm's profile).
pub enum Attached {
    Agent(Agent),
    /// The agent started with `--no-dns` ([`NO_DNS_CONFIG`]).
    AgentNoDns(Agent),
    /// A program that returns at once, on the agent's raw tracepoint: what the hook itself
    /// costs, the floor under any program there.
    Noop(NoopProbe),
    Peer(Peer),
}

/// The configuration name of [`Attached::Noop`] in the report.
pub const NOOP_CONFIG: &str = "no-op";

impl Attached {
    /// Starts configuration `config`: "agent", [`NO_DNS_CONFIG`], [`NOOP_CONFIG`] or a peer's
    /// name; `name` names the agent's log and flow log.
    pub fn start(ctx: &Ctx, config: &'static str, name: &str) -> Result<Attached> {
        Ok(match config {
            "agent" => Attached::Agent(Agent::start(&ctx.agent, name)?),
            NO_DNS_CONFIG => {
                Attached::AgentNoDns(Agent::start_with(&ctx.agent, name, &["--no-dns"])?)
            }
            NOOP_CONFIG => Attached::Noop(NoopProbe::attach("inet_sock_set_state")?),
            peer => Attached::Peer(Peer::start(peer, &ctx.agent.dir)?),
        })
    }

    /// The process of a tool (none for the no-op program, which the bench itself holds).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Attached::Agent(a) | Attached::AgentNoDns(a) => Some(a.pid),
            Attached::Noop(_) => None,
            Attached::Peer(p) => Some(p.pid()),
        }
    }

    /// Detaches: stops the tool, or drops the no-op program.
    pub fn stop(self) -> Result<()> {
        match self {
            Attached::Agent(a) | Attached::AgentNoDns(a) => a.stop()?,
            Attached::Noop(probe) => drop(probe),
            Attached::Peer(p) => p.stop(),
        }
        Ok(())
    }
}

/// The agent without its DNS programs: they run on every packet of every socket (cgroup
/// `skb` hooks at the hierarchy's root), where the flow program runs a few times per
/// connection, so their share of the agent's cost is measured apart.
pub const NO_DNS_CONFIG: &str = "agent --no-dns";

fn run_storms(ctx: &Ctx) -> Result<(Vec<f64>, u64)> {
    let targets = ctx.targets(4);
    let mut rates = Vec::new();
    let mut total = 0;
    for w in &WORKLOADS {
        let v = ctx.storm(&[
            "connect",
            &targets,
            &ctx.sizes.storm_count.to_string(),
            &ctx.sizes.storm_seconds.to_string(),
            &w.threads.to_string(),
            if w.rst { "rst" } else { "fin" },
        ])?;
        if v["failed"].as_u64() != Some(0) {
            eprintln!("[bench] storm {}: {} connects failed", w.name, v["failed"]);
        }
        rates.push(v["per_second"].as_f64().unwrap_or(f64::NAN));
        total += v["connections"].as_u64().unwrap_or(0);
    }
    Ok((rates, total))
}

/// Issue item 1, connection cost: for each configuration, `pairs` pairs of blocks, the attached half and
/// the baseline half alternating in order (A B, B A, ...), each block one storm per workload.
pub fn connection_cost(ctx: &Ctx, peers: &[&'static str]) -> Result<Value> {
    let mut configs: Vec<&str> = vec!["agent", NO_DNS_CONFIG, NOOP_CONFIG];
    configs.extend_from_slice(peers);
    // rates[config][workload] = [(baseline, attached)]
    let mut rates: BTreeMap<&str, Vec<Vec<(f64, f64)>>> = BTreeMap::new();
    let mut agent_cpu = Vec::new();
    let mut agent_wakeups = Vec::new();
    for pair in 0..ctx.sizes.pairs {
        for &config in &configs {
            let mut base = Vec::new();
            let mut with = Vec::new();
            let attached_first = pair % 2 == 0;
            for half in 0..2 {
                if (half == 0) != attached_first {
                    base = run_storms(ctx)?.0;
                    continue;
                }
                eprintln!("[bench] pair {}/{}: {config}", pair + 1, ctx.sizes.pairs);
                let attached = Attached::start(ctx, config, "cost")?;
                // The agent's own CPU and wake-ups, in full configuration only.
                let agent = match &attached {
                    Attached::Agent(a) => Some((a.pid, ProcSample::take(a.pid))),
                    _ => None,
                };
                let (r, total) = run_storms(ctx)?;
                with = r;
                if let Some((pid, before)) = agent {
                    let (cpu, wakeups) = before.until(&ProcSample::take(pid));
                    agent_cpu.push(cpu / total.max(1) as f64 * 1e6);
                    agent_wakeups.push(wakeups);
                }
                attached.stop()?;
            }
            let rows = rates
                .entry(config)
                .or_insert_with(|| vec![Vec::new(); WORKLOADS.len()]);
            for (i, row) in rows.iter_mut().enumerate() {
                row.push((base[i], with[i]));
            }
        }
    }
    let mut out = Vec::new();
    for (i, w) in WORKLOADS.iter().enumerate() {
        for &config in &configs {
            let pairs = &rates[config][i];
            let ratios: Vec<f64> = pairs.iter().map(|(b, a)| a / b).collect();
            let (lo, hi) = bootstrap_ci95_median(&ratios);
            let base: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let with: Vec<f64> = pairs.iter().map(|p| p.1).collect();
            out.push(json!({
                "workload": w.name,
                "config": config,
                "pairs": pairs.len(),
                "baseline_per_second": median(&base),
                "attached_per_second": median(&with),
                "ratio_median": median(&ratios),
                "ratio_ci95": [lo, hi],
            }));
        }
    }
    Ok(json!({
        "rows": out,
        "agent_cpu_us_per_connection": median(&agent_cpu),
        "agent_wakeups_per_second": median(&agent_wakeups),
        "agent_wakeups_per_second_max": agent_wakeups.iter().copied().fold(0.0, f64::max),
    }))
}

/// Per-run cost over a window: (nanoseconds per run, runs).
fn per_run(before: (u64, u64), after: (u64, u64)) -> (f64, u64) {
    let runs = after.1.saturating_sub(before.1);
    (
        after.0.saturating_sub(before.0) as f64 / runs.max(1) as f64,
        runs,
    )
}

/// The statistics of the agent's program and of the no-op program on the same hook, taken
/// together at the start and end of a window.
struct Window {
    agent: (u64, u64),
    noop: (u64, u64),
}

impl Window {
    fn start(pid: u32, noop: &NoopProbe) -> Result<Window> {
        Ok(Window {
            agent: program_stats(pid)?,
            noop: noop.stats()?,
        })
    }

    fn end(self, pid: u32, noop: &NoopProbe) -> Result<Measured> {
        let (agent_ns, runs) = per_run(self.agent, program_stats(pid)?);
        let (noop_ns, _) = per_run(self.noop, noop.stats()?);
        Ok(Measured {
            agent_ns,
            noop_ns,
            runs,
        })
    }
}

/// One window's per-run figures: the agent's program, the no-op on the same runs, and how many.
struct Measured {
    agent_ns: f64,
    noop_ns: f64,
    runs: u64,
}

/// Windows per kind of run. The statistics give a sum over a window, so one stall (an
/// interrupt, a preemption, a VM exit) inside one run moves that window's mean by tens of ns;
/// the median of several windows is not moved by one such window.
const KERNEL_WINDOWS: u64 = 5;

/// A kind of run's windows as report fields under `kind`: the medians of the statistics' and
/// the no-op's per-run times, the median of their per-window differences (the program's own
/// time), the runs in all, and every window.
fn kernel_fields(out: &mut serde_json::Map<String, Value>, kind: &str, windows: &[Measured]) {
    let of = |f: &dyn Fn(&Measured) -> f64| median(&windows.iter().map(f).collect::<Vec<_>>());
    out.insert(format!("{kind}_ns_per_run"), json!(of(&|w| w.agent_ns)));
    out.insert(format!("{kind}_noop_ns_per_run"), json!(of(&|w| w.noop_ns)));
    out.insert(
        format!("{kind}_own_ns_per_run"),
        json!(of(&|w| w.agent_ns - w.noop_ns)),
    );
    out.insert(
        format!("{kind}_runs"),
        json!(windows.iter().map(|w| w.runs).sum::<u64>()),
    );
    out.insert(
        format!("{kind}_windows"),
        windows
            .iter()
            .map(
                |w| json!({"ns_per_run": w.agent_ns, "noop_ns_per_run": w.noop_ns, "runs": w.runs}),
            )
            .collect(),
    );
}

/// The kernel program's run time (BPF statistics), per kind of run, beside that of a program
/// that does nothing on the same hook and runs (the hook's dispatch and the statistics' own
/// clock reads): the difference is the program's own. Each kind is measured in
/// [`KERNEL_WINDOWS`] windows. Also the agent's idle wake-ups.
pub fn kernel_program(ctx: &Ctx) -> Result<Value> {
    let _stats = RunTimeStats::enable()?;
    // Established before the agent starts, a holder per window: their close transitions are
    // all filtered runs.
    let per_hold = (ctx.sizes.held / KERNEL_WINDOWS).max(1);
    let mut holds = Vec::new();
    let mut holding = 0;
    for _ in 0..KERNEL_WINDOWS {
        let mut cmd = ctx
            .lab
            .cmd(&ctx.lab.client, &ctx.storm.display().to_string());
        cmd.args(["hold", &ctx.targets(1), &per_hold.to_string(), "300"])
            .stdout(Stdio::piped());
        cmd.stdin(Stdio::piped());
        let mut hold = Proc::spawn_piped(cmd)?;
        let mut out = BufReader::new(hold.0.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let v: Value = serde_json::from_str(line.trim()).context("hold output")?;
        holding += v["holding"].as_u64().unwrap_or(0);
        holds.push((hold, out));
    }

    let agent = Agent::start(&ctx.agent, "kernel")?;
    let pid = agent.pid;
    let idle0 = ProcSample::take(pid);
    std::thread::sleep(Duration::from_secs_f64(ctx.sizes.idle_seconds));
    let (_, idle_wakeups) = idle0.until(&ProcSample::take(pid));
    let noop = NoopProbe::attach("inet_sock_set_state")?;

    let per_window = (ctx.sizes.kernel_count / KERNEL_WINDOWS).max(1);
    let n = per_window.to_string();
    let (mut new, mut existing, mut filtered) = (Vec::new(), Vec::new(), Vec::new());
    let mut refused = 0;
    // Summed over the existing-flow windows: (ns, packets).
    let mut dns_filter = (0.0, 0);
    for i in 0..KERNEL_WINDOWS {
        // Distinct ports in every window: each connect is a flow's first.
        let from = (20_000 + i * per_window).to_string();
        let w = Window::start(pid, &noop)?;
        let v = ctx.storm(&["refuse", &format!("{}.10", ctx.lab.net), &from, &n, "30"])?;
        new.push(w.end(pid, &noop)?);
        refused += v["refused"].as_u64().unwrap_or(0);

        let (w, d0) = (Window::start(pid, &noop)?, dns_program_stats(pid)?);
        ctx.storm(&[
            "connect",
            &format!("{}.10:9", ctx.lab.net),
            &n,
            "30",
            "1",
            "rst",
        ])?;
        existing.push(w.end(pid, &noop)?);
        // Every packet of that storm (none of them DNS) ran one of the DNS programs' filters.
        let (ns, packets) = per_run(d0, dns_program_stats(pid)?);
        dns_filter = (dns_filter.0 + ns * packets as f64, dns_filter.1 + packets);
    }
    for (mut hold, mut out) in holds {
        let w = Window::start(pid, &noop)?;
        hold.0
            .stdin
            .take()
            .context("stdin")?
            .write_all(b"close\n")?;
        let mut line = String::new();
        out.read_line(&mut line)?;
        let _ = hold.0.wait();
        // The server's side closes when it reads the FIN.
        std::thread::sleep(Duration::from_millis(1000));
        filtered.push(w.end(pid, &noop)?);
    }
    drop(noop);
    agent.stop()?;
    let mut out = serde_json::Map::new();
    kernel_fields(&mut out, "recording_new_flow", &new);
    kernel_fields(&mut out, "recording_existing_flow", &existing);
    kernel_fields(&mut out, "filtered", &filtered);
    out.insert("windows_per_kind".into(), json!(KERNEL_WINDOWS));
    out.insert("recording_new_flow_connects".into(), json!(refused));
    out.insert("filtered_connections_closed".into(), json!(holding));
    out.insert(
        "dns_filter_ns_per_packet".into(),
        json!(dns_filter.0 / dns_filter.1.max(1) as f64),
    );
    out.insert("dns_filter_packets".into(), json!(dns_filter.1));
    out.insert("agent_idle_wakeups_per_second".into(), json!(idle_wakeups));
    Ok(Value::Object(out))
}

fn sample(metrics: &[(String, f64)], prefix: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Kernel and agent loss counters (start_not_seen is informational, not a loss).
fn losses(metrics: &[(String, f64)]) -> (f64, f64) {
    let sum = |keep: &dyn Fn(&str) -> bool| -> f64 {
        metrics
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, v)| v)
            .sum()
    };
    (
        sum(&|k| k.starts_with("observer_kernel_losses_total") && !k.contains("start_not_seen")),
        sum(&|k| k.starts_with("observer_agent_losses_total")),
    )
}

/// Issue item 3, memory: resident set and BPF map memory with the inventory, before and after `flows`
/// live flows (refused connects to distinct (address, port) pairs).
pub fn memory(ctx: &Ctx) -> Result<Value> {
    let agent = Agent::start(&ctx.agent, "memory")?;
    let rss_inventory = ProcSample::take(agent.pid).rss_kib;
    let maps_before: u64 = map_memory(agent.pid)?.iter().map(|m| m.1).sum();
    let addrs: Vec<String> = (10..14).map(|a| format!("{}.{a}", ctx.lab.net)).collect();
    let made = ctx.storm(&[
        "refuse",
        &addrs.join(","),
        "20000",
        &ctx.sizes.flows.to_string(),
        "120",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tracked = 0.0;
    while Instant::now() < deadline {
        tracked = sample(&agent.metrics(), "observer_tracked_flows");
        if tracked >= ctx.sizes.flows as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Steady state: the agent hands freed heap back after each full scan (every flush
    // interval, 5 s), so wait for one after the storm's last flows are in.
    std::thread::sleep(Duration::from_secs(6));
    let p = ProcSample::take(agent.pid);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let maps = map_memory(agent.pid)?;
    let metrics = agent.metrics();
    agent.stop()?;
    Ok(json!({
        "flows_made": made["refused"],
        "flows_tracked": tracked,
        "rss_mib_inventory_only": rss_inventory as f64 / 1024.0,
        "rss_mib": p.rss_kib as f64 / 1024.0,
        "rss_peak_mib": hwm as f64 / 1024.0,
        "bpf_maps_mib_before": maps_before as f64 / 1048576.0,
        "bpf_maps_mib": maps.iter().map(|m| m.1).sum::<u64>() as f64 / 1048576.0,
        "bpf_maps": maps.iter().map(|(n, b)| json!({"name": n, "bytes_memlock": b})).collect::<Vec<_>>(),
        "ring_full": sample(&metrics, "observer_kernel_losses_total{kind=\"ring_full\"}"),
    }))
}

/// Issue item 4, exactness: a storm across many flows; the flow log's counts against the connections made.
pub fn exactness(ctx: &Ctx) -> Result<Value> {
    // Bench agents log every accepted connection too (`--ingress all`; by default those from a
    // pod are left to the pod's node), so both ends of each connection are checked, per
    // namespace.
    let agent = Agent::start(&ctx.agent, "exact")?;
    let made = ctx.storm(&[
        "connect",
        &ctx.targets(SERVE_PORTS.count()),
        &ctx.sizes.exact_count.to_string(),
        "180",
        "2",
        "rst",
    ])?;
    // One flush interval for the last counts to reach the map scan, then the final flush.
    std::thread::sleep(Duration::from_secs(1));
    let metrics = agent.metrics();
    let flow_log = agent.flow_log.clone();
    agent.stop()?;
    let (client, server) = (
        ctx.lab.netns_inode(&ctx.lab.client)?,
        ctx.lab.netns_inode(&ctx.lab.server)?,
    );
    let (mut egress, mut ingress, mut flows) = (0u64, 0u64, std::collections::HashSet::new());
    for line in std::fs::read_to_string(&flow_log)?.lines() {
        let r: Value = serde_json::from_str(line)?;
        let netns = r["netns"].as_u64().unwrap_or(0) as u32;
        let count = r["count"].as_u64().unwrap_or(0);
        match (r["direction"].as_str(), netns) {
            (Some("egress"), n) if n == client => egress += count,
            (Some("ingress"), n) if n == server => ingress += count,
            _ => continue,
        }
        flows.insert((
            netns,
            r["dst"]["port"].as_u64(),
            r["direction"].clone().to_string(),
        ));
    }
    let connections = made["connections"].as_u64().unwrap_or(0);
    let (kernel_losses, agent_losses) = losses(&metrics);
    Ok(json!({
        "connections_made": connections,
        "connects_failed": made["failed"],
        "seconds": made["seconds"],
        "flows": flows.len(),
        "exported_egress": egress,
        "exported_ingress": ingress,
        "kernel_losses": kernel_losses,
        "agent_losses": agent_losses,
        "lost": kernel_losses + agent_losses,
        "recursion_misses": sample(&metrics, "observer_kernel_program_recursion_misses_total"),
        "exact": egress == connections && ingress == connections,
    }))
}

/// Parses the flow log's `2026-11-25T16:35:11.545Z` (UTC).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = (days * 86_400 + hh * 3600 + mm * 60) as f64 + secs;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(total))
}

/// Issue item 5, detection latency: from a connect (the kernel's first_seen of its flow) to its record in
/// the flow log and to its series on /metrics, for `latency_flows` new flows one after another.
pub fn latency(ctx: &Ctx) -> Result<Value> {
    let agent = Agent::start(&ctx.agent, "latency")?;
    let client = ctx.lab.netns_inode(&ctx.lab.client)?;
    let dst = format!("{}.11", ctx.lab.net);
    let (mut to_log, mut to_metric, mut missed) = (Vec::new(), Vec::new(), 0);
    for i in 0..ctx.sizes.latency_flows {
        let port = 40_000 + i as u16;
        ctx.storm(&["refuse", &dst, &port.to_string(), "1", "5"])?;
        let (mut first_seen, mut log_at, mut metric_at) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (log_at.is_none() || metric_at.is_none()) && Instant::now() < deadline {
            if log_at.is_none() {
                let text = std::fs::read_to_string(&agent.flow_log).unwrap_or_default();
                let now = SystemTime::now();
                for line in text.lines() {
                    let Ok(r) = serde_json::from_str::<Value>(line) else {
                        continue;
                    };
                    if r["netns"].as_u64() == Some(u64::from(client))
                        && r["dst"]["port"].as_u64() == Some(u64::from(port))
                    {
                        first_seen = r["first_seen"].as_str().and_then(parse_rfc3339);
                        log_at = Some(now);
                    }
                }
            }
            if metric_at.is_none() {
                let (_, body) = agent.get("/metrics");
                if body.contains(&format!("dst_port=\"{port}\"")) {
                    metric_at = Some(SystemTime::now());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let since = |at: Option<SystemTime>| -> Option<f64> {
            Some(at?.duration_since(first_seen?).ok()?.as_secs_f64() * 1000.0)
        };
        eprintln!(
            "[bench] flow {port}: flow log {:?} ms, /metrics {:?} ms after first_seen",
            since(log_at),
            since(metric_at)
        );
        match (since(log_at), since(metric_at)) {
            (Some(l), Some(m)) => {
                to_log.push(l);
                to_metric.push(m);
            }
            _ => missed += 1,
        }
    }
    agent.stop()?;
    Ok(json!({
        "flows": ctx.sizes.latency_flows,
        "missed": missed,
        "flow_log_ms_p50": median(&to_log),
        "flow_log_ms_p99": percentile(&to_log, 99.0),
        "metric_ms_p50": median(&to_metric),
        "metric_ms_p99": percentile(&to_metric, 99.0),
    }))
}

/// How to run the pipeline benchmark.
#[derive(Clone, Copy)]
pub enum PipelineBuild<'a> {
    /// `cargo bench` (release) or `cargo test` (debug) of the bench target.
    Cargo { cargo: &'a str, release: bool },
    /// The executable `cargo build --all-targets` left in `<dir>/deps/pipeline-<hash>`.
    Built(&'a std::path::Path),
}

/// [`pipeline`] `runs` times with each number of pods on the node in `node_pods`, the
/// variants alternating run by run (so that the machine's load drifts over all of them alike).
/// For each variant, the run with the median rate (events per second per core; the upper of the
/// two middle runs for an even number), with every run's rate added as
/// `runs_events_per_cpu_second` (in the order they ran).
pub fn pipeline_medians(
    how: PipelineBuild,
    setup: &AgentSetup,
    events: u64,
    runs: usize,
    node_pods: &[usize],
) -> Result<Vec<Value>> {
    let rate = |v: &Value| v["events_per_cpu_second"].as_f64().unwrap_or(f64::NAN);
    let mut results: Vec<Vec<Value>> = vec![Vec::with_capacity(runs); node_pods.len()];
    for _ in 0..runs.max(1) {
        for (variant, &pods) in results.iter_mut().zip(node_pods) {
            variant.push(pipeline(how, setup, events, pods)?);
        }
    }
    Ok(results
        .into_iter()
        .map(|mut variant| {
            let rates: Vec<f64> = variant.iter().map(rate).collect();
            variant.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
            let mut median = variant.swap_remove(variant.len() / 2);
            median["runs_events_per_cpu_second"] = serde_json::json!(rates);
            median
        })
        .collect())
}

/// Issue item 2, pipeline throughput: `observer/benches/pipeline.rs`, the flows' local ends on
/// `node_pods` pods of the inventory (all of them when 0).
pub fn pipeline(
    how: PipelineBuild,
    setup: &AgentSetup,
    events: u64,
    node_pods: usize,
) -> Result<Value> {
    let mut cmd = match how {
        PipelineBuild::Cargo { cargo, release } => {
            let mut c = Command::new(cargo);
            c.args([if release { "bench" } else { "test" }])
                .args(["-p", "observer", "--bench", "pipeline", "--"])
                .current_dir(super::super::root());
            c
        }
        PipelineBuild::Built(dir) => {
            let newest = std::fs::read_dir(dir.join("deps"))?
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("pipeline-") && !name.contains('.')
                })
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .with_context(|| {
                    format!(
                        "no pipeline benchmark in {}/deps: build it with `cargo build --all-targets`",
                        dir.display()
                    )
                })?;
            Command::new(newest.path())
        }
    };
    cmd.arg("--architecture")
        .arg(&setup.architecture)
        .arg("--inventory")
        .arg(&setup.inventory)
        .args(["--events", &events.to_string()])
        .args(["--node-pods", &node_pods.to_string()])
        .stderr(Stdio::inherit());
    eprintln!("[bench] {cmd:?}");
    let out = cmd.output().context("pipeline benchmark")?;
    if !out.status.success() {
        bail!("pipeline bench failed with {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("no result line in {text:?}"))?;
    Ok(serde_json::from_str(line)?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_flow_log_timestamps() {
        let t = super::parse_rfc3339("2026-11-25T16:35:11.545Z").unwrap();
        let secs = t
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((secs - 1_795_624_511.545).abs() < 1e-3, "{secs}");
    }
}
