//! `observer check`: re-judges a recorded flow log offline, against an architecture and an
//! inventory of Kubernetes objects, through the same attribution and verdicts as the agent.

use std::{collections::BTreeMap, path::Path};

use observer_common::record::{Endpoint, FlowRecord, Scope, Verdict};

use crate::{
    architecture::Architecture,
    attribution::Attributor,
    cli::CheckArgs,
    inventory::{self, IndexHandle, NodeAddresses},
    judge::{self, Context},
    names::HostNames,
};

/// Reads JSON Lines flow records; a line that is not a record is an error naming file and line.
pub fn read_flow_log(path: &Path) -> Result<Vec<FlowRecord>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read flow log {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not a flow record: {e}", path.display(), i + 1))?;
        out.push(r);
    }
    Ok(out)
}

/// A flow as the summary table shows it.
fn party(ep: &Endpoint) -> String {
    ep.component
        .clone()
        .or_else(|| {
            ep.workload
                .as_ref()
                .map(|w| format!("{}/{}", ep.namespace.as_deref().unwrap_or("?"), w.name))
        })
        .or_else(|| ep.host.clone())
        .or_else(|| ep.ip.map(|ip| ip.to_string()))
        .unwrap_or_else(|| "?".into())
}

pub fn check_command(args: &CheckArgs) -> i32 {
    match check(args) {
        Ok(any_unexpected) => i32::from(any_unexpected),
        Err(e) => {
            eprintln!("observer check: {e}");
            2
        }
    }
}

fn check(args: &CheckArgs) -> Result<bool, String> {
    let model = Architecture::load(&args.architecture)
        .map_err(|e| format!("{e}\nthe architecture was not accepted"))?;
    let index = IndexHandle::new(NodeAddresses::default());
    if let Some(path) = &args.inventory {
        inventory::offline::load_file(path, &index).map_err(|e| e.to_string())?;
    }
    let names = match &args.hosts_file {
        Some(p) => HostNames::load_hosts_file(p)
            .map_err(|e| format!("cannot read hosts file {}: {e}", p.display()))?,
        None => HostNames::default(),
    };
    let mut records = Vec::new();
    for path in &args.flow_logs {
        records.extend(read_flow_log(path)?);
    }
    let snapshot = index.snapshot();
    let mut attributor = Attributor::offline();
    // (verdict, reason or rule, src, dst, port) -> connections
    let mut table: BTreeMap<(String, String, String, String, u16), u64> = BTreeMap::new();
    let mut unexpected = false;
    for mut r in records {
        // The agent clears the source of a port-forward (its initiator is not visible).
        let port_forward = r.dst.scope == Some(Scope::Local)
            && r.src.component.is_none()
            && r.dst.component.is_some();
        let keep_local = r.dst.scope == Some(Scope::Local);
        if !keep_local {
            let raw = |ep: &Endpoint| Endpoint {
                ip: ep.ip,
                port: ep.port,
                scope: ep.scope,
                host: ep.host.clone(),
                ..Default::default()
            };
            r.src = raw(&r.src);
            r.dst = raw(&r.dst);
        }
        let a = attributor.attribute(&mut r, Some(&snapshot), Some(&model), &names);
        let ctx = Context {
            port_forward: port_forward || a.ctx.port_forward,
            ..a.ctx
        };
        judge::judge(&model, &mut r, ctx);
        let (verdict, why) = match r.verdict {
            Some(Verdict::Expected) => ("expected".to_owned(), r.rule.clone().unwrap_or_default()),
            _ => {
                unexpected = true;
                (
                    "UNEXPECTED".to_owned(),
                    r.reason.map(|x| x.name().to_owned()).unwrap_or_default(),
                )
            }
        };
        *table
            .entry((
                verdict,
                why,
                party(&r.src),
                party(&r.dst),
                r.dst.port.unwrap_or(0),
            ))
            .or_default() += r.count;
    }
    println!(
        "{:<11} {:<26} {:<36} {:<36} {:>6} {:>8}",
        "VERDICT", "RULE/REASON", "SOURCE", "DESTINATION", "PORT", "CONNS"
    );
    for ((verdict, why, src, dst, port), n) in &table {
        println!("{verdict:<11} {why:<26} {src:<36} {dst:<36} {port:>6} {n:>8}");
    }
    let bad: u64 = table
        .iter()
        .filter(|(k, _)| k.0 != "expected")
        .map(|(_, n)| n)
        .sum();
    let total: u64 = table.values().sum();
    println!(
        "{} connections judged against {} ({}): {} unexpected",
        total,
        model.name(),
        model.hash(),
        bad
    );
    Ok(unexpected)
}
