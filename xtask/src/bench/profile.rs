//! Where the agent's cost on the storm goes: a CPU profile of the whole machine (`perf record
//! -a`, every CPU sampled at a fixed rate) while one-thread storms run with the agent attached.
//! Each sample stands for 1/[`FREQUENCY`] s of one CPU, so a part's samples over the storm's
//! connections are its CPU time per connection. Unlike the throughput ratios, this does not
//! move with what other tenants of the machine do to the storm's speed, and it says which
//! part of the agent costs what.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{agent::Agent, scenarios::Ctx};

/// Debian's `linux-perf`.
pub const PERF: &str = "/usr/bin/perf";

/// Samples per second per CPU: odd, so that sampling does not lock onto a periodic timer.
const FREQUENCY: u64 = 4999;

/// Each profiled storm is this many cost storms long (in count and in time bound): a part of a
/// few percent then gets hundreds of samples.
const STORM_LENGTHS: u64 = 5;

/// The parts of the agent's kernel-side cost, each a set of kernel symbols. Programs appear as
/// `bpf_prog_<tag>_<name>`; the others are the kernel's own code that runs only because a
/// program is attached (with nothing attached, none of them is sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Calling programs on the raw tracepoint (what the no-op program costs too).
    TracepointDispatch,
    /// The flow program, its subprograms and the helpers and map code it calls.
    FlowProgram,
    /// Calling programs on the cgroup `skb` hooks, on every packet.
    CgroupSkbDispatch,
    /// The two DNS programs.
    DnsPrograms,
}

impl Part {
    pub const ALL: [Part; 4] = [
        Part::TracepointDispatch,
        Part::FlowProgram,
        Part::CgroupSkbDispatch,
        Part::DnsPrograms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::TracepointDispatch => "raw tracepoint dispatch",
            Part::FlowProgram => "flow program (with its helpers and map code)",
            Part::CgroupSkbDispatch => "cgroup skb dispatch (every packet)",
            Part::DnsPrograms => "DNS programs (every packet)",
        }
    }

    /// The part a kernel symbol belongs to, if any.
    pub fn of(symbol: &str) -> Option<Part> {
        if let Some(prog) = symbol.strip_prefix("bpf_prog_") {
            return Some(if prog.contains("dns") {
                Part::DnsPrograms
            } else {
                Part::FlowProgram
            });
        }
        match symbol {
            "bpf_trace_run3" => Some(Part::TracepointDispatch),
            "__cgroup_bpf_run_filter_skb" | "__bpf_prog_run_save_cb" => {
                Some(Part::CgroupSkbDispatch)
            }
            "bpf_ktime_get_ns"
            | "ktime_get_mono_fast_ns"
            | "bpf_get_current_comm"
            | "bpf_get_current_pid_tgid"
            | "jhash" => Some(Part::FlowProgram),
            s if s.starts_with("htab_map_")
                || s.starts_with("__htab_map_")
                || s.contains("bpf_ringbuf_") =>
            {
                Some(Part::FlowProgram)
            }
            _ => None,
        }
    }
}

/// Samples per kernel symbol from `perf report --stdio -n` output: lines of
/// `overhead samples [k] symbol`.
pub fn samples_by_symbol(report: &str) -> Vec<(String, u64)> {
    report
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let overhead = words.next()?;
            let samples = words.next()?.parse::<u64>().ok()?;
            let space = words.next()?;
            if !overhead.ends_with('%') || space != "[k]" {
                return None;
            }
            Some((words.next()?.to_owned(), samples))
        })
        .collect()
}

/// The one-thread storms (FIN and RST close) under `perf record -a`, with the agent attached;
/// CPU time per connection of each [`Part`].
pub fn storm_profile(ctx: &Ctx) -> Result<Value> {
    if !Path::new(PERF).exists() {
        return Ok(json!({"skipped": format!("{PERF} is not installed (Debian linux-perf)")}));
    }
    let agent = Agent::start(&ctx.agent, "profile")?;
    let mut workloads = Vec::new();
    for (name, close) in [
        ("1 thread, FIN close", "fin"),
        ("1 thread, RST close", "rst"),
    ] {
        let data = ctx.agent.dir.join(format!("storm-{close}.perf.data"));
        let frequency = FREQUENCY.to_string();
        let perf = [
            PERF,
            "record",
            "-a",
            "-q",
            "-F",
            &frequency,
            "-o",
            &data.display().to_string(),
            "--",
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
                "sym",
                "-i",
            ])
            .arg(&data)
            .output()
            .context("perf report")?;
        if !out.status.success() {
            bail!(
                "perf report failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let symbols = samples_by_symbol(&String::from_utf8_lossy(&out.stdout));
        let total: u64 = symbols.iter().map(|(_, n)| n).sum();
        let ns_per_connection =
            |samples: u64| samples as f64 * 1e9 / FREQUENCY as f64 / connections.max(1) as f64;
        let parts: Vec<Value> = Part::ALL
            .iter()
            .map(|&part| {
                let samples: u64 = symbols
                    .iter()
                    .filter(|(s, _)| Part::of(s) == Some(part))
                    .map(|(_, n)| n)
                    .sum();
                json!({
                    "part": part.name(),
                    "samples": samples,
                    "ns_per_connection": ns_per_connection(samples),
                })
            })
            .collect();
        let agent_samples: u64 = parts.iter().filter_map(|p| p["samples"].as_u64()).sum();
        workloads.push(json!({
            "workload": name,
            "connections": connections,
            "seconds": v["seconds"],
            "kernel_samples": total,
            "parts": parts,
            "agent_ns_per_connection": ns_per_connection(agent_samples),
        }));
        let _ = std::fs::remove_file(&data);
    }
    agent.stop()?;
    Ok(json!({"frequency": FREQUENCY, "workloads": workloads}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_sorted_into_the_agents_parts() {
        let report = "\
# Samples: 31K of event 'cpu-clock:ppp'
#
# Overhead       Samples  Symbol
# ........  ............  ......
#
     3.99%          1530  [k] _raw_spin_unlock_irqrestore
     0.74%           284  [k] __cgroup_bpf_run_filter_skb
     0.51%           195  [k] bpf_trace_run3
     0.45%           172  [k] bpf_prog_cb6461858a1b760d_inet_sock_set_state
     0.31%           118  [k] __bpf_prog_run_save_cb
     0.13%            50  [k] bpf_prog_ccd213d65ce3f824_dns_queries
     0.08%            31  [k] __htab_map_lookup_elem
     0.05%            20  [.] memmove
";
        let symbols = samples_by_symbol(report);
        assert_eq!(symbols.len(), 7, "{symbols:?}");
        assert_eq!(symbols[0], ("_raw_spin_unlock_irqrestore".into(), 1530));
        let parts: Vec<Option<Part>> = symbols.iter().map(|(s, _)| Part::of(s)).collect();
        assert_eq!(
            parts,
            [
                None,
                Some(Part::CgroupSkbDispatch),
                Some(Part::TracepointDispatch),
                Some(Part::FlowProgram),
                Some(Part::CgroupSkbDispatch),
                Some(Part::DnsPrograms),
                Some(Part::FlowProgram),
            ]
        );
    }
}
