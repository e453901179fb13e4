//! Where the cost on the storm goes: a CPU profile of the whole machine (`perf record -a`,
//! every CPU sampled at a fixed rate) while one-thread storms run with the agent, the agent
//! without DNS capture, or a peer attached. Each sample stands for 1/[`FREQUENCY`] s of one
//! CPU, so a part's samples over the storm's connections are its CPU time per connection.
//! Unlike the throughput ratios, this does not move with what other tenants of the machine do
//! to the storm's speed, and it says which part costs what.

use std::{collections::HashSet, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::scenarios::{Attached, Ctx, NO_DNS_CONFIG};

/// Debian's `linux-perf`.
pub const PERF: &str = "/usr/bin/perf";

/// Samples per second per CPU: odd, so that sampling does not lock onto a periodic timer.
const FREQUENCY: u64 = 4999;

/// Each profiled storm is this many cost storms long (in count and in time bound): a part of a
/// few percent then gets hundreds of samples.
const STORM_LENGTHS: u64 = 5;

/// The parts of a tool's cost, each a set of kernel symbols, and the tool's own threads.
/// Programs appear as `bpf_prog_<tag>_<name>`; the other symbols are the kernel's own code that
/// runs only because a program is attached (with nothing attached, none of them is sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Calling programs on the tracepoint: the raw tracepoint's (the agent's; what the no-op
    /// program costs too) or the classic one's (the peers', which first build the event).
    TracepointDispatch,
    /// The tracing programs (not DNS), their subprograms and the helpers and map code they
    /// call.
    TracingPrograms,
    /// Calling programs on the cgroup `skb` hooks, on every packet.
    CgroupSkbDispatch,
    /// The agent's two DNS programs.
    DnsPrograms,
    /// Everything the tool's own threads ran, in user space and in the kernel (for a peer that
    /// prints every event, most of its cost; what it costs the kernel to wake them is not in
    /// it).
    OwnThreads,
}

impl Part {
    pub const ALL: [Part; 5] = [
        Part::TracepointDispatch,
        Part::TracingPrograms,
        Part::CgroupSkbDispatch,
        Part::DnsPrograms,
        Part::OwnThreads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::TracepointDispatch => "tracepoint dispatch",
            Part::TracingPrograms => "tracing programs (with their helpers and map code)",
            Part::CgroupSkbDispatch => "cgroup skb dispatch (every packet)",
            Part::DnsPrograms => "DNS programs (every packet)",
            Part::OwnThreads => "the tool's own threads",
        }
    }

    /// The part a kernel symbol sampled outside the tool's threads belongs to, if any.
    pub fn of(symbol: &str) -> Option<Part> {
        if let Some(prog) = symbol.strip_prefix("bpf_prog_") {
            return Some(if prog.contains("dns") {
                Part::DnsPrograms
            } else {
                Part::TracingPrograms
            });
        }
        match symbol {
            "bpf_trace_run3"
            | "trace_call_bpf"
            | "perf_trace_run_bpf_submit"
            | "perf_trace_inet_sock_set_state"
            | "perf_trace_buf_alloc" => Some(Part::TracepointDispatch),
            "__cgroup_bpf_run_filter_skb" | "__bpf_prog_run_save_cb" => {
                Some(Part::CgroupSkbDispatch)
            }
            "bpf_ktime_get_ns"
            | "ktime_get_mono_fast_ns"
            | "bpf_get_current_comm"
            | "bpf_get_current_pid_tgid"
            | "jhash" => Some(Part::TracingPrograms),
            s if s.starts_with("htab_map_")
                || s.starts_with("__htab_map_")
                || s.contains("bpf_ringbuf_") =>
            {
                Some(Part::TracingPrograms)
            }
            _ => None,
        }
    }
}

/// One line of `perf report --stdio -n --sort pid,sym`: the sampled thread, whether the
/// symbol is the kernel's, the symbol, and the samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    pub tid: u32,
    pub kernel: bool,
    pub symbol: String,
    pub samples: u64,
}

/// The lines of a `perf report --stdio -n --sort pid,sym` output: `overhead samples tid:comm
/// [k] symbol` (`[.]` for user space; a thread's name may hold spaces).
pub fn samples(report: &str) -> Vec<Sampled> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "[k]" || *w == "[.]")?;
            if at < 3 || !words[0].ends_with('%') {
                return None;
            }
            Some(Sampled {
                tid: words[2].split(':').next()?.parse().ok()?,
                kernel: words[at] == "[k]",
                symbol: words.get(at + 1)?.to_string(),
                samples: words[1].parse().ok()?,
            })
        })
        .collect()
}

/// The part a sample belongs to, given the tool's threads.
pub fn part_of(s: &Sampled, own: &HashSet<u32>) -> Option<Part> {
    if own.contains(&s.tid) {
        Some(Part::OwnThreads)
    } else if s.kernel {
        Part::of(&s.symbol)
    } else {
        None
    }
}

/// The threads of process `pid` now (the agent's and the peers' live as long as they do).
fn threads(pid: u32) -> HashSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The one-thread storms under `perf record -a` with each of the agent, the agent without DNS
/// capture and the installed `peers` attached; CPU time per connection of each [`Part`].
pub fn storm_profile(ctx: &Ctx, peers: &[&'static str]) -> Result<Value> {
    let mut configs = vec!["agent", NO_DNS_CONFIG];
    configs.extend_from_slice(peers);
    let mut rows = Vec::new();
    for config in configs {
        eprintln!("[bench] profile: {config}");
        let tool = Attached::start(ctx, config, "profile")?;
        for (workload, close) in [
            ("1 thread, FIN close", "fin"),
            ("1 thread, RST close", "rst"),
        ] {
            let own = tool.pid().map(threads).unwrap_or_default();
            let mut row = profile_storm(ctx, close, &own)?;
            row["config"] = json!(config);
            row["workload"] = json!(workload);
            rows.push(row);
        }
        tool.stop()?;
    }
    Ok(json!({"frequency": FREQUENCY, "rows": rows}))
}

/// One storm (`close`: fin or rst) under `perf record -a`; its parts' CPU per connection.
fn profile_storm(ctx: &Ctx, close: &str, own: &HashSet<u32>) -> Result<Value> {
    let data = ctx.agent.dir.join(format!("storm-{close}.perf.data"));
    let frequency = FREQUENCY.to_string();
    let data_arg = data.display().to_string();
    let perf = [
        PERF, "record", "-a", "-q", "-F", &frequency, "-o", &data_arg, "--",
    ];
    let v = ctx.storm_under(
        &perf,
        &[
            "connect",
            &ctx.targets(4),
            &(ctx.sizes.storm_count * STORM_LENGTHS).to_string(),
            &(ctx.sizes.storm_seconds * STORM_LENGTHS as f64).to_string(),
            "1",
            close,
        ],
    )?;
    let connections = v["connections"].as_u64().unwrap_or(0);
    let out = Command::new(PERF)
        .args([
            "report",
            "--stdio",
            "--no-children",
            "-n",
            "--sort",
            "pid,sym",
            "-i",
        ])
        .arg(&data)
        .output()
        .context("perf report")?;
    let _ = std::fs::remove_file(&data);
    if !out.status.success() {
        bail!(
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sampled = samples(&String::from_utf8_lossy(&out.stdout));
    let ns_per_connection =
        |samples: u64| samples as f64 * 1e9 / FREQUENCY as f64 / connections.max(1) as f64;
    let parts: Vec<Value> = Part::ALL
        .iter()
        .map(|&part| {
            let n: u64 = sampled
                .iter()
                .filter(|s| part_of(s, own) == Some(part))
                .map(|s| s.samples)
                .sum();
            json!({"part": part.name(), "samples": n, "ns_per_connection": ns_per_connection(n)})
        })
        .collect();
    let attributed: u64 = parts.iter().filter_map(|p| p["samples"].as_u64()).sum();
    Ok(json!({
        "connections": connections,
        "seconds": v["seconds"],
        "samples": sampled.iter().map(|s| s.samples).sum::<u64>(),
        "parts": parts,
        "ns_per_connection": ns_per_connection(attributed),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_sorted_into_parts() {
        let report = "\
# Samples: 31K of event 'cpu-clock:ppp'
#
# Overhead       Samples      Pid:Command      Symbol
# ........  ............  .................  ......
#
     3.99%          1530     8285:storm       [k] _raw_spin_unlock_irqrestore
     0.74%           284     8285:storm       [k] __cgroup_bpf_run_filter_skb
     0.51%           195    14:ksoftirqd/0    [k] bpf_trace_run3
     0.45%           172     8285:storm       [k] bpf_prog_cb6461858a1b760d_inet_sock_set_state
     0.31%           118  7927:kworker/u8:2-ev  [k] __bpf_prog_run_save_cb
     0.13%            50     8285:storm       [k] bpf_prog_ccd213d65ce3f824_dns_queries
     0.08%            31     8300:tokio rt    [k] __htab_map_lookup_elem
     0.05%            20     8300:tokio rt    [.] memmove
     0.04%            16     8285:storm       [k] trace_call_bpf
";
        let sampled = samples(report);
        assert_eq!(sampled.len(), 9, "{sampled:?}");
        assert_eq!(
            sampled[4],
            Sampled {
                tid: 7927,
                kernel: true,
                symbol: "__bpf_prog_run_save_cb".into(),
                samples: 118
            }
        );
        assert_eq!(
            (sampled[7].tid, sampled[7].kernel, sampled[7].samples),
            (8300, false, 20)
        );
        // Thread 8300 is the tool's: all of its samples are its own, whatever the symbol.
        let own = HashSet::from([8300]);
        let parts: Vec<Option<Part>> = sampled.iter().map(|s| part_of(s, &own)).collect();
        assert_eq!(
            parts,
            [
                None,
                Some(Part::CgroupSkbDispatch),
                Some(Part::TracepointDispatch),
                Some(Part::TracingPrograms),
                Some(Part::CgroupSkbDispatch),
                Some(Part::DnsPrograms),
                Some(Part::OwnThreads),
                Some(Part::OwnThreads),
                Some(Part::TracepointDispatch),
            ]
        );
        // Outside the tool's threads, user-space code is nobody's part.
        assert_eq!(part_of(&sampled[7], &HashSet::new()), None);
    }
}
