//! `cargo xtask bench`: what the agent costs per connection, against a baseline with nothing
//! attached and against the tools users would pick instead, measured in one run on one machine.
//! See BENCHMARKS.md for the latest table and how to read it.

mod agent;
mod inventory;
mod lab;
mod noop;
mod profile;
mod report;
mod scenarios;
mod stats;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use self::{
    agent::AgentSetup,
    lab::{Lab, sh},
    scenarios::{Ctx, Sizes},
};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A seconds-long run of every scenario at tiny sizes (debug builds, one pair); checks the
    /// harness, not the numbers.
    #[arg(long)]
    smoke: bool,
    /// Pairs of alternating repetitions per configuration (default 10; 1 in smoke mode).
    #[arg(long)]
    pairs: Option<usize>,
    /// Directory for the report (report.json, report.md) and the agents' logs
    /// (default: <target>/bench or <target>/bench-smoke).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Do not write BENCHMARKS.md (a full run writes it by default).
    #[arg(long)]
    no_markdown: bool,
    /// Run only these scenarios (repeatable; for development: the report is then partial and
    /// BENCHMARKS.md is left alone): cost, profile, kernel, pipeline, memory, exactness, latency.
    #[arg(long)]
    only: Vec<String>,
    /// Use the binaries beside this xtask binary (target/<profile>/) instead of building: for
    /// the smoke test, which runs inside `cargo test` and so cannot call cargo (cargo holds the
    /// build directory's lock while tests run).
    #[arg(long)]
    no_build: bool,
    /// The agent binary to measure instead of the one this command builds (to compare builds).
    #[arg(long)]
    observer_bin: Option<PathBuf>,
    /// Measure nothing: write BENCHMARKS.md again from the report.json of a full run (after
    /// a change to the notes or to how the report reads).
    #[arg(long, value_name = "REPORT_JSON")]
    rewrite_from: Option<PathBuf>,
}

/// Pods on the node in the pipeline benchmark: Kubernetes' default `--max-pods`.
const NODE_PODS: usize = 110;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| super::root().join("target"), PathBuf::from)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "kernel": sh("uname", &["-r"]).unwrap_or_default().trim(),
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu": cpu,
        "loadavg_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "bpf_stats_enabled": sh("sysctl", &["-n", "kernel.bpf_stats_enabled"]).unwrap_or_default().trim(),
    })
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if let Some(path) = &args.rewrite_from {
        return rewrite_markdown(path);
    }
    if !super::is_root() {
        bail!("the benchmark loads BPF programs and creates network namespaces: run it as root");
    }
    let smoke = args.smoke;
    let sizes = if smoke {
        Sizes {
            pairs: args.pairs.unwrap_or(1),
            storm_count: 300,
            storm_seconds: 0.5,
            kernel_count: 300,
            held: 100,
            flows: 500,
            exact_count: 2_000,
            latency_flows: 5,
            idle_seconds: 1.0,
        }
    } else {
        Sizes {
            pairs: args.pairs.unwrap_or(10),
            storm_count: 20_000,
            storm_seconds: 2.0,
            kernel_count: 20_000,
            held: 5_000,
            flows: 50_000,
            exact_count: 200_000,
            latency_flows: 50,
            idle_seconds: 5.0,
        }
    };
    if !smoke && sizes.pairs < 10 {
        eprintln!(
            "[bench] WARNING: {} pairs; the full mode wants at least 10",
            sizes.pairs
        );
    }
    let out_dir = args
        .output
        .clone()
        .unwrap_or_else(|| target_dir().join(if smoke { "bench-smoke" } else { "bench" }));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("{}", out_dir.display()))?;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let bins = if args.no_build {
        std::env::current_exe()?
            .parent()
            .context("xtask binary directory")?
            .to_path_buf()
    } else {
        super::bootstrap()?;
        let mut build = Command::new(&cargo);
        build.args(["build", "-p", "observer", "-p", "observer-tests", "--bins"]);
        if !smoke {
            build.arg("--release");
        }
        super::run(&mut build)?;
        target_dir().join(if smoke { "debug" } else { "release" })
    };
    agent::require_tools()?;
    let peers = agent::PEERS;

    let lab = Lab::new()?;
    let inventory = out_dir.join("inventory.json");
    let (pods, services) = if smoke { (1_000, 200) } else { (10_000, 2_000) };
    let lab_pods = [
        ("graph-gateway", "graph-gateway", format!("{}.2", lab.net)),
        ("rabbitmq", "rabbitmq", format!("{}.3", lab.net)),
    ];
    std::fs::write(
        &inventory,
        inventory::generate(pods, services, &lab_pods).to_string(),
    )?;
    let agent_bin = args
        .observer_bin
        .clone()
        .unwrap_or_else(|| bins.join("observer"));
    let traces = agent::TraceSink::start(&bins.join("otlp-sink"))?;
    let setup = AgentSetup {
        bin: agent_bin,
        architecture: super::root().join("deploy/architecture/trackunit.yaml"),
        inventory,
        dir: out_dir.clone(),
        otlp_endpoint: traces.endpoint.clone(),
    };

    let machine = machine();
    let command = if smoke {
        "cargo xtask bench --smoke"
    } else {
        "cargo xtask bench"
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let pipeline = if wanted("pipeline") {
        let events = if smoke { 20_000 } else { 2_000_000 };
        let how = if args.no_build {
            scenarios::PipelineBuild::Built(&bins)
        } else {
            scenarios::PipelineBuild::Cargo {
                cargo: &cargo,
                release: !smoke,
            }
        };
        // Run as many times as the other scenarios' pairs: on a shared machine one run's rate
        // swings by a fifth with its neighbours' use of the memory caches. The agent of a node
        // records its own pods' connections: 110 pods (Kubernetes' default --max-pods), then,
        // as a worst case no node reaches, every pod of the inventory.
        let mut medians =
            scenarios::pipeline_medians(how, &setup, events, sizes.pairs, &[NODE_PODS, 0])?;
        let all_pods_local = medians.pop().unwrap_or_default();
        let mut node = medians.pop().unwrap_or_default();
        node["node_pods"] = serde_json::json!(NODE_PODS);
        node["all_pods_local"] = all_pods_local;
        node
    } else {
        Value::Null
    };

    let mut ctx = Ctx {
        lab,
        storm: bins.join("storm"),
        agent: setup,
        sizes,
        server: None,
    };
    ctx.start_server()?;
    let section = |name: &str, f: &dyn Fn(&Ctx) -> Result<Value>| -> Result<Value> {
        if !wanted(name) {
            return Ok(Value::Null);
        }
        eprintln!("[bench] {name}");
        f(&ctx)
    };
    let cost = section("cost", &|c| scenarios::connection_cost(c, &peers))?;
    let profile = section("profile", &|c| profile::storm_profile(c, &peers))?;
    let kernel = section("kernel", &scenarios::kernel_program)?;
    let latency = section("latency", &scenarios::latency)?;
    let exact = section("exactness", &scenarios::exactness)?;
    let memory = section("memory", &scenarios::memory)?;
    drop(ctx);
    let received = traces.finish()?;
    let traces = json!({
        "exported_to": "a local OTLP receiver (tests/src/bin/otlp-sink.rs)",
        "requests": received["requests"],
        "spans": received["spans"],
    });

    let mut machine = machine;
    machine["loadavg_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut report = json!({
        "mode": if smoke { "smoke" } else { "full" },
        "command": command,
        "machine": machine,
        "sizes": format!("{sizes:?}"),
        "inventory": {"pods": pods, "services": services},
        "traces": traces,
        "connection_cost": cost,
        "storm_profile": profile,
        "kernel_program": kernel,
        "pipeline": pipeline,
        "memory": memory,
        "exactness": exact,
        "latency": latency,
    });
    report["targets"] = report::targets(&report);
    let md = report::markdown(&report);
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.md"), &md)?;
    if !smoke && !args.no_markdown && args.only.is_empty() {
        std::fs::write(super::root().join("BENCHMARKS.md"), &md)?;
    }
    println!("{md}");
    eprintln!("[bench] report: {}", out_dir.join("report.json").display());
    Ok(())
}

/// BENCHMARKS.md from the report of a full run, with the targets judged again.
fn rewrite_markdown(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the report {}", path.display()))?;
    let mut report: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a report.json of `cargo xtask bench`",
            path.display()
        )
    })?;
    if report["mode"] != "full" {
        bail!(
            "{} is the report of a {} run: only a full run's report makes BENCHMARKS.md",
            path.display(),
            report["mode"]
        );
    }
    let scenarios = [
        "connection_cost",
        "kernel_program",
        "pipeline",
        "memory",
        "exactness",
        "latency",
    ];
    if let Some(missing) = scenarios.iter().find(|s| report[**s].is_null()) {
        bail!(
            "{} has no {missing} scenario (a run with --only): BENCHMARKS.md needs every one",
            path.display()
        );
    }
    report["targets"] = report::targets(&report);
    std::fs::write(
        super::root().join("BENCHMARKS.md"),
        report::markdown(&report),
    )?;
    eprintln!("[bench] BENCHMARKS.md rewritten from {}", path.display());
    Ok(())
}
