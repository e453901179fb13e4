//! The report's targets (from the benchmark issue) and its Markdown form (BENCHMARKS.md).

use std::fmt::Write;

use serde_json::{Value, json};

/// The kernel program's own time per run of one kind: the median over its windows of its
/// statistics less those of the no-op program on the same runs (reports from before windows:
/// the one window's difference).
fn own_ns(kernel: &Value, kind: &str) -> f64 {
    kernel[format!("{kind}_own_ns_per_run")]
        .as_f64()
        .unwrap_or_else(|| {
            f(&kernel[format!("{kind}_ns_per_run")]) - f(&kernel[format!("{kind}_noop_ns_per_run")])
        })
}

/// An own time as the targets' table gives it: below zero, the program and the no-op were not
/// told apart (the runs' jitter is larger than what the program adds).
fn own_text(ns: f64) -> String {
    if ns < 0.0 {
        format!("≤ 0 ns ({ns:.0}: not told apart from the no-op)")
    } else {
        format!("{ns:.0} ns")
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn row(target: &str, value: String, met: Option<bool>) -> Value {
    let value = Value::String(value);
    json!({"target": target, "value": value, "met": met})
}

/// One row per target of the issue: what was measured and whether it met the target (null when
/// it could not be measured in this run).
pub fn targets(r: &Value) -> Value {
    let rows = r["connection_cost"]["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ratios = |config: &str| -> Vec<(String, f64)> {
        rows.iter()
            .filter(|x| x["config"] == config)
            .map(|x| {
                (
                    x["workload"].as_str().unwrap_or("").to_owned(),
                    f(&x["ratio_median"]),
                )
            })
            .collect()
    };
    let agent = ratios("agent");
    let worst = agent.iter().map(|a| a.1).fold(f64::INFINITY, f64::min);
    let mut out = vec![row(
        "agent within 3 % of the no-tracer baseline on the storm",
        format!(
            "worst workload: {:.1} % slower{}",
            (1.0 - worst) * 100.0,
            profiled_share(r)
        ),
        Some(worst >= 0.97),
    )];
    let peers: Vec<&str> = ["bpftrace", "tcplife"]
        .into_iter()
        .filter(|p| rows.iter().any(|x| x["config"] == *p))
        .collect();
    let cheaper = peers
        .iter()
        .all(|p| ratios(p).iter().zip(&agent).all(|(peer, a)| a.1 > peer.1));
    out.push(row(
        "agent cheaper than both peers (bpftrace, tcplife)",
        if peers.len() == 2 {
            format!(
                "{} in every workload{}",
                if cheaper { "cheaper" } else { "not cheaper" },
                profiled_costs(r)
            )
        } else {
            format!("peers measured: {peers:?}")
        },
        (peers.len() == 2).then_some(cheaper),
    ));
    let k = &r["kernel_program"];
    let own = |kind| own_ns(k, kind);
    let (new, existing) = (own("recording_new_flow"), own("recording_existing_flow"));
    out.push(row(
        "kernel program ≤ 250 ns per recording run",
        format!(
            "own {} (new flow), {} (existing flow); statistics {:.0} and {:.0}, less a no-op program's {:.0} and {:.0} on the same runs",
            own_text(new),
            own_text(existing),
            f(&k["recording_new_flow_ns_per_run"]),
            f(&k["recording_existing_flow_ns_per_run"]),
            f(&k["recording_new_flow_noop_ns_per_run"]),
            f(&k["recording_existing_flow_noop_ns_per_run"]),
        ),
        Some(new.max(existing) <= 250.0),
    ));
    let filtered = own("filtered");
    out.push(row(
        "kernel program ≤ 60 ns per filtered run",
        format!(
            "own {}; statistics {:.0}, less a no-op program's {:.0} on the same runs",
            own_text(filtered),
            f(&k["filtered_ns_per_run"]),
            f(&k["filtered_noop_ns_per_run"]),
        ),
        Some(filtered <= 60.0),
    ));
    let c = &r["connection_cost"];
    let wake = f(&c["agent_wakeups_per_second_max"]).max(f(&k["agent_idle_wakeups_per_second"]));
    out.push(row(
        "≤ 100 agent wake-ups per second at any event rate",
        format!(
            "{:.0}/s idle, {:.0}/s during storms (max)",
            f(&k["agent_idle_wakeups_per_second"]),
            f(&c["agent_wakeups_per_second_max"])
        ),
        Some(wake <= 100.0),
    ));
    let p = f(&r["pipeline"]["events_per_cpu_second"]);
    out.push(row(
        "pipeline ≥ 1,000,000 events/s per core",
        format!(
            "{p:.0} events/s per core ({} pods on the node; {:.0} with every pod local)",
            r["pipeline"]["node_pods"],
            f(&r["pipeline"]["all_pods_local"]["events_per_cpu_second"])
        ),
        Some(p >= 1e6),
    ));
    let m = &r["memory"];
    out.push(row(
        "agent ≤ 64 MiB resident with the inventory (10,000 pods, 2,000 services) and 50,000 flows",
        format!(
            "{:.1} MiB ({} flows tracked; {:.1} MiB with the inventory alone)",
            f(&m["rss_mib"]),
            m["flows_tracked"],
            f(&m["rss_mib_inventory_only"])
        ),
        Some(f(&m["rss_mib"]) <= 64.0),
    ));
    let e = &r["exactness"];
    out.push(row(
        "zero lost counts",
        format!(
            "{} connections made, {} exported (egress), {} (ingress), loss counters {}, recursion misses {}",
            e["connections_made"],
            e["exported_egress"],
            e["exported_ingress"],
            e["lost"],
            e["recursion_misses"]
        ),
        Some(e["exact"] == true && f(&e["lost"]) == 0.0),
    ));
    let l = &r["latency"];
    let p99 = f(&l["flow_log_ms_p99"]).max(f(&l["metric_ms_p99"]));
    out.push(row(
        "detection p99 ≤ 1 s",
        format!(
            "flow log p99 {:.0} ms, /metrics p99 {:.0} ms ({} missed)",
            f(&l["flow_log_ms_p99"]),
            f(&l["metric_ms_p99"]),
            l["missed"]
        ),
        Some(p99 <= 1000.0 && l["missed"] == 0),
    ));
    Value::Array(out)
}

fn met(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Latest `{}` run ({} mode). Regenerate with `cargo xtask bench` (as root; about 15 minutes); it rewrites this file.\n",
        r["command"].as_str().unwrap_or(""),
        r["mode"].as_str().unwrap_or(""),
    );
    let _ = writeln!(
        s,
        "Machine: Linux {}, {} CPUs ({}), load average {} at start and {} at end; kernel.bpf_stats_enabled={} at start.\n",
        m["kernel"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpu"].as_str().unwrap_or(""),
        m["loadavg_start"].as_str().unwrap_or(""),
        m["loadavg_end"].as_str().unwrap_or(""),
        m["bpf_stats_enabled"].as_str().unwrap_or("")
    );
    let _ = writeln!(s, "## Targets\n\n| target | measured | |\n|---|---|---|");
    for t in r["targets"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t["target"].as_str().unwrap_or(""),
            t["value"].as_str().unwrap_or(""),
            met(&t["met"])
        );
    }
    let _ = writeln!(
        s,
        "\n## Connection cost\n\nConnections per second of a connect/accept/close storm between two network namespaces on an isolated bridge (medians over {} pairs; ratio = with / without, per pair; 95 % bootstrap interval of the median ratio). `no-op` is a program that returns at once, attached to the agent's raw tracepoint: what the hook itself costs, the floor under any program on it. `agent --no-dns` is the agent without its two DNS programs, which run on every packet of every socket, once as it leaves and once as it arrives (about 14 runs for a FIN-closed connection of this storm, 8 for an RST-closed one, against 10 runs of the raw tracepoint): the difference to `agent` is their share.\n",
        r["connection_cost"]["rows"][0]["pairs"]
    );
    let _ = writeln!(
        s,
        "| workload | attached | baseline conn/s | attached conn/s | ratio | 95 % CI |\n|---|---|---:|---:|---:|---|"
    );
    for x in r["connection_cost"]["rows"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3}–{:.3} |",
            x["workload"].as_str().unwrap_or(""),
            x["config"].as_str().unwrap_or(""),
            f(&x["baseline_per_second"]),
            f(&x["attached_per_second"]),
            f(&x["ratio_median"]),
            f(&x["ratio_ci95"][0]),
            f(&x["ratio_ci95"][1])
        );
    }
    let c = &r["connection_cost"];
    let k = &r["kernel_program"];
    let _ = writeln!(
        s,
        "\nAgent during the storms: {:.2} µs of CPU per connection, {:.0} wake-ups/s (median; max {:.0}); idle: {:.0} wake-ups/s. Traces: {}.\n",
        f(&c["agent_cpu_us_per_connection"]),
        f(&c["agent_wakeups_per_second"]),
        f(&c["agent_wakeups_per_second_max"]),
        f(&k["agent_idle_wakeups_per_second"]),
        traces(&r["traces"])
    );
    storm_profile(&mut s, r);
    let _ = writeln!(
        s,
        "## Kernel program\n\nEach run's time from the kernel's BPF statistics, beside that of a program that does nothing (`r0 = 0; exit`) attached to the same hook for the same runs: the hook's dispatch and the statistics' own clock reads. The difference is the program's own time, what it costs with the statistics off (their default).\n\n| runs | ns per run (statistics) | no-op program, same runs | program's own | runs measured |\n|---|---:|---:|---:|---:|\n| recording, new flow (refused connects to distinct ports) | {:.0} | {:.0} | {:.0} | {} |\n| recording, existing flow (refused connects to one port) | {:.0} | {:.0} | {:.0} | {} |\n| filtered (closing {} connections opened before the agent) | {:.0} | {:.0} | {:.0} | {} |\n| DNS programs' filter (every packet of the existing-flow storm; none is DNS) | {:.0} | | | {} |\n",
        f(&k["recording_new_flow_ns_per_run"]),
        f(&k["recording_new_flow_noop_ns_per_run"]),
        own_ns(k, "recording_new_flow"),
        k["recording_new_flow_runs"],
        f(&k["recording_existing_flow_ns_per_run"]),
        f(&k["recording_existing_flow_noop_ns_per_run"]),
        own_ns(k, "recording_existing_flow"),
        k["recording_existing_flow_runs"],
        k["filtered_connections_closed"],
        f(&k["filtered_ns_per_run"]),
        f(&k["filtered_noop_ns_per_run"]),
        own_ns(k, "filtered"),
        k["filtered_runs"],
        f(&k["dns_filter_ns_per_packet"]),
        k["dns_filter_packets"]
    );
    if let Some(n) = k["windows_per_kind"].as_u64() {
        let own_per_window = |kind: &str| {
            k[format!("{kind}_windows")]
                .as_array()
                .map(|ws| {
                    ws.iter()
                        .map(|w| format!("{:.0}", f(&w["ns_per_run"]) - f(&w["noop_ns_per_run"])))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "Each kind of run is measured in {n} windows, one after the other; the columns are medians over them, and the program's own time is the median of the windows' differences. The statistics give one sum per window, so a single stall inside one run (an interrupt, a preemption) moves that window's mean, not the median. Own time per window, in order: new flow {}; existing flow {}; filtered {} ns.\n",
            own_per_window("recording_new_flow"),
            own_per_window("recording_existing_flow"),
            own_per_window("filtered"),
        );
    }
    let p = &r["pipeline"];
    let all = &p["all_pods_local"];
    let runs = |v: &Value| {
        v["runs_events_per_cpu_second"]
            .as_array()
            .map(|runs| {
                runs.iter()
                    .map(|r| format!("{:.0}", f(r)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let _ = writeln!(
        s,
        "## Pipeline\n\n{} events over {} flows whose local ends are the node's {} pods (inventory: {} pods, {} services), {} of them on the full path (attribution, verdict, new series, serialisation): {:.0} events/s per core (thread CPU time), {:.0} events/s wall, in the median run; all runs, in order: {}.\n\nThe same with every pod of the inventory local (a worst case no node reaches), alternating run by run with the above: {:.0} events/s per core in the median run; all runs: {}.\n",
        p["events"],
        p["flows"],
        p["node_pods"],
        p["pods"],
        p["services"],
        p["full_path_records"],
        f(&p["events_per_cpu_second"]),
        f(&p["events_per_second"]),
        runs(p),
        f(&all["events_per_cpu_second"]),
        runs(all),
    );
    let mem = &r["memory"];
    let _ = writeln!(
        s,
        "## Memory\n\n| | MiB |\n|---|---:|\n| agent resident, inventory loaded | {:.1} |\n| agent resident, {} flows tracked | {:.1} |\n| agent peak resident | {:.1} |\n| BPF maps before / after | {:.1} / {:.1} |\n",
        f(&mem["rss_mib_inventory_only"]),
        mem["flows_tracked"],
        f(&mem["rss_mib"]),
        f(&mem["rss_peak_mib"]),
        f(&mem["bpf_maps_mib_before"]),
        f(&mem["bpf_maps_mib"])
    );
    let e = &r["exactness"];
    let _ = writeln!(
        s,
        "## Exactness\n\n{} connections (RST close, 2 threads, {} flows) in {:.1} s: flow log counts {} egress, {} ingress (agent with `--ingress all`); kernel loss counters {}, agent loss counters {}; runs the kernel skipped as recursion (`observer_kernel_program_recursion_misses_total`) {}.\n",
        e["connections_made"],
        e["flows"],
        f(&e["seconds"]),
        e["exported_egress"],
        e["exported_ingress"],
        e["kernel_losses"],
        e["agent_losses"],
        e["recursion_misses"]
    );
    let l = &r["latency"];
    let _ = writeln!(
        s,
        "## Detection latency\n\nFrom the kernel's first_seen of {} new flows: flow log p50 {:.0} ms, p99 {:.0} ms; /metrics p50 {:.0} ms, p99 {:.0} ms.\n",
        l["flows"],
        f(&l["flow_log_ms_p50"]),
        f(&l["flow_log_ms_p99"]),
        f(&l["metric_ms_p50"]),
        f(&l["metric_ms_p99"])
    );
    s.push_str(include_str!("notes.md"));
    s
}

/// The profile's CPU time per one-thread connection of each tool, as a clause for the targets
/// table ("" without a profile): less noisy than the throughput ratios the target is judged on.
fn profiled_costs(r: &Value) -> String {
    let rows: &[Value] = r["storm_profile"]["rows"]
        .as_array()
        .map_or(&[], Vec::as_slice);
    let costs: Vec<String> = ["1 thread, FIN close", "1 thread, RST close"]
        .iter()
        .map(|w| {
            let tools: Vec<String> = rows
                .iter()
                .filter(|x| x["workload"] == *w)
                .map(|x| {
                    format!(
                        "{} {:.1}",
                        x["config"].as_str().unwrap_or(""),
                        f(&x["ns_per_connection"]) / 1000.0
                    )
                })
                .collect();
            format!(
                "{}: {}",
                w.trim_start_matches("1 thread, "),
                tools.join(", ")
            )
        })
        .filter(|c| !c.ends_with(": "))
        .collect();
    clause(
        "; CPU µs per one-thread connection in the profile, ",
        &costs,
        "; ",
    )
}

/// `items` joined by `sep` after `lead`: a clause for the targets table, "" without items.
fn clause(lead: &str, items: &[String], sep: &str) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("{lead}{}", items.join(sep))
    }
}

/// The agent's profiled CPU time as a share of a one-thread connection's time at baseline, as a
/// clause for the targets table ("" without a profile).
fn profiled_share(r: &Value) -> String {
    let shares: Vec<String> = r["storm_profile"]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["config"] == "agent")
        .filter_map(|x| {
            let workload = x["workload"].as_str()?;
            let rate = baseline_per_second(r, workload)?;
            Some(format!(
                "{:.1} % ({})",
                f(&x["ns_per_connection"]) * rate / 1e9 * 100.0,
                workload.trim_start_matches("1 thread, ")
            ))
        })
        .collect();
    let share = clause(
        "; in the profile, the agent's CPU time is ",
        &shares,
        " and ",
    );
    if share.is_empty() {
        share
    } else {
        share + " of a one-thread connection"
    }
}

/// The baseline rate of `workload` in the cost table (measured in the agent's pairs).
fn baseline_per_second(r: &Value, workload: &str) -> Option<f64> {
    r["connection_cost"]["rows"]
        .as_array()?
        .iter()
        .find(|x| x["workload"] == workload && x["config"] == "agent")
        .map(|x| f(&x["baseline_per_second"]))
        .filter(|rate| *rate > 0.0)
}

/// The storm's CPU profile: CPU time per connection of each part of each tool, and the whole
/// as a share of a connection's time with nothing attached (same workload, same run).
fn storm_profile(s: &mut String, r: &Value) {
    let p = &r["storm_profile"];
    let Some(rows) = p["rows"].as_array() else {
        return;
    };
    let _ = writeln!(
        s,
        "## Where the storm's cost goes\n\nA CPU profile of the whole machine (`perf record -a`, {} samples per second per CPU) during one-thread storms with each tool attached: each sample is 1/{} s of one CPU, so a part's samples over the connections are its CPU time per connection, in ns. A one-thread storm runs one connection at a time, and these parts run on its path, so their sum over a connection's time with nothing attached (the baseline of the cost table) is about what they take off its rate. With nothing attached, none of these symbols is sampled. The tool's own threads: everything they ran, in user space and in the kernel (not what it costs the kernel to wake them: a lower bound for a tool that prints every event).\n",
        p["frequency"], p["frequency"]
    );
    let parts: Vec<&str> = rows
        .first()
        .and_then(|w| w["parts"].as_array())
        .into_iter()
        .flatten()
        .map(|x| x["part"].as_str().unwrap_or(""))
        .collect();
    let _ = writeln!(
        s,
        "| attached | workload | {} | in all | share of a connection at baseline |\n|---|---|{}---:|---:|",
        parts.join(" | "),
        "---:|".repeat(parts.len())
    );
    for row in rows {
        let ns = f(&row["ns_per_connection"]);
        let share = match baseline_per_second(r, row["workload"].as_str().unwrap_or("")) {
            Some(rate) => {
                format!("{:.1} % of {:.1} µs", ns * rate / 1e9 * 100.0, 1e6 / rate)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | **{ns:.0}** | {share} |",
            row["config"].as_str().unwrap_or(""),
            row["workload"].as_str().unwrap_or(""),
            row["parts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| format!("{:.0}", f(&x["ns_per_connection"])))
                .collect::<Vec<_>>()
                .join(" | "),
        );
    }
    let _ = writeln!(s);
}

/// Where the agent's traces went over the run, in words.
fn traces(t: &Value) -> String {
    format!(
        "exported to {}, which received {} spans in {} requests over the run",
        t["exported_to"].as_str().unwrap_or("?"),
        t["spans"],
        t["requests"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_targets_quote_the_profile_against_the_same_runs_baseline() {
        let r = json!({
            "connection_cost": {"rows": [
                {"workload": "1 thread, FIN close", "config": "agent", "baseline_per_second": 20000.0},
                {"workload": "1 thread, FIN close", "config": "bpftrace", "baseline_per_second": 10000.0},
            ]},
            "storm_profile": {"rows": [
                {"workload": "1 thread, FIN close", "config": "agent", "ns_per_connection": 2500.0},
                {"workload": "1 thread, FIN close", "config": "bpftrace", "ns_per_connection": 2000.0},
            ]},
        });
        // 2.5 µs of a connection's 50 µs (20,000 a second): 5 %.
        assert_eq!(
            profiled_share(&r),
            "; in the profile, the agent's CPU time is 5.0 % (FIN close) of a one-thread connection"
        );
        assert_eq!(
            profiled_costs(&r),
            "; CPU µs per one-thread connection in the profile, FIN close: agent 2.5, bpftrace 2.0"
        );
        assert_eq!(profiled_share(&json!({})), "");
        assert_eq!(profiled_costs(&json!({})), "");
    }

    #[test]
    fn the_traces_sentence_says_what_the_receiver_got() {
        assert_eq!(
            traces(&json!({"exported_to": "a sink", "requests": 3, "spans": 40})),
            "exported to a sink, which received 40 spans in 3 requests over the run"
        );
    }
}
