//! The Markdown report, with the diagram as a Mermaid `flowchart LR`.

use std::fmt::Write;

use super::model::{DiagramNode, EdgeStyle, Report, outcome_evidence, outcomes_text};

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "—".to_owned(), cell)
}

/// A Mermaid label in double quotes.
fn mlabel(s: &str) -> String {
    s.replace('"', "#quot;")
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_report(r, &mut o);
    o
}

fn write_report(r: &Report, o: &mut String) -> std::fmt::Result {
    writeln!(o, "# Architecture conformance: {}\n", cell(&r.model.name))?;
    writeln!(o, "**{}**\n", r.verdict.summary)?;
    writeln!(o, "| | |\n|---|---|")?;
    writeln!(
        o,
        "| window | {} to {} |",
        opt(r.window.from.as_deref()),
        opt(r.window.to.as_deref())
    )?;
    match r.source.kind {
        "prometheus" => writeln!(
            o,
            "| source | Prometheus {} (cluster-wide, workload granularity) |",
            opt(r.source.url.as_deref())
        )?,
        _ => writeln!(
            o,
            "| source | flow logs: {} |",
            cell(&r.source.files.join(", "))
        )?,
    }
    if !r.nodes.is_empty() {
        writeln!(o, "| nodes | {} |", cell(&r.nodes.join(", ")))?;
    }
    writeln!(
        o,
        "| model | {} `{}` ({}) |",
        cell(&r.model.name),
        r.model.hash,
        cell(&r.model.file)
    )?;
    let mut hashes: Vec<String> = r
        .model
        .hashes_in_input
        .iter()
        .map(|h| {
            let same = if h.hash == r.model.hash {
                ", this model"
            } else {
                ""
            };
            format!("`{}` ({} records{same})", h.hash, h.records)
        })
        .collect();
    if r.model.records_without_model > 0 {
        hashes.push(format!(
            "not judged ({} records)",
            r.model.records_without_model
        ));
    }
    writeln!(o, "| recorded with | {} |", hashes.join(", "))?;
    let i = &r.input;
    writeln!(
        o,
        "| input | {} records in the window ({} outside it, {} ingress duplicates of counted egress, {} corrupt lines skipped); {} judged by this report, {} verdicts kept from this model |",
        i.records,
        i.records_outside_window,
        i.ingress_duplicates,
        i.corrupt_lines,
        i.rejudged,
        i.verdicts_kept
    )?;
    let t = &r.totals;
    writeln!(
        o,
        "| connections | {} ({} expected, of which {} inside one pod; {} unexpected); outcomes: {} |",
        t.connections,
        t.expected,
        t.local,
        t.unexpected,
        outcomes_text(t.outcomes.as_ref())
    )?;
    for n in &r.source.notes {
        writeln!(o, "\n> {n}")?;
    }

    writeln!(o, "\n## Diagram\n")?;
    writeln!(
        o,
        "Solid green: documented and seen. Dashed grey: documented, not seen. Thick red: seen, not documented.\n"
    )?;
    mermaid(r, o)?;

    let u = &r.unexpected;
    writeln!(
        o,
        "\n## Unexpected flows: {} from {} sources, {} connections\n",
        u.flows, u.sources, u.connections
    )?;
    if u.by_source.is_empty() {
        writeln!(o, "None.")?;
    }
    for g in &u.by_source {
        writeln!(
            o,
            "### {} — {} connections\n",
            cell(&g.source.display()),
            g.connections
        )?;
        if !g.source.addresses.is_empty() {
            writeln!(o, "Addresses: {}\n", g.source.addresses.join(", "))?;
        }
        writeln!(
            o,
            "| destination | port | scope | reason | connections | outcomes | first seen | last seen | processes | nodes |"
        )?;
        writeln!(o, "|---|---|---|---|---|---|---|---|---|---|")?;
        for f in &g.flows {
            let mut dest = f.destination.display();
            if !f.destination.addresses.is_empty()
                && !f.destination.addresses.contains(&f.destination.label)
            {
                dest.push_str(&format!(" [{}]", f.destination.addresses.join(", ")));
            }
            writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&dest),
                f.port,
                f.scope.unwrap_or("—"),
                f.reason,
                f.connections,
                outcomes_text(f.outcomes.as_ref()),
                opt(f.first_seen.as_deref()),
                opt(f.last_seen.as_deref()),
                cell(&f.processes.join(", ")),
                cell(&f.nodes.join(", "))
            )?;
        }
        let mut evidence: Vec<String> = vec![];
        for f in &g.flows {
            for e in outcome_evidence(f.outcomes.as_ref()) {
                evidence.push(format!("to {} :{} — {e}", f.destination.label, f.port));
            }
        }
        if !evidence.is_empty() {
            writeln!(o, "\nWhat the outcomes show:\n")?;
            for e in evidence {
                writeln!(o, "- {}", cell(&e))?;
            }
        }
        writeln!(o)?;
    }

    let c = &r.coverage;
    writeln!(
        o,
        "\n## Documented flows: {} of {} seen\n",
        c.seen, c.documented
    )?;
    writeln!(
        o,
        "| rule | from | to | ports | seen | connections | first seen | last seen | description |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|")?;
    for f in &c.flows {
        let ports: Vec<String> = f.ports.iter().map(u16::to_string).collect();
        let via = if f.via == "direct" {
            String::new()
        } else {
            format!(" ({})", f.via)
        };
        writeln!(
            o,
            "| {} | {} | {} | {}{via} | {} | {} | {} | {} | {} |",
            cell(&f.rule),
            cell(&f.from),
            cell(&f.to),
            ports.join(", "),
            if f.seen { "yes" } else { "**no**" },
            f.connections,
            opt(f.first_seen.as_deref()),
            opt(f.last_seen.as_deref()),
            opt(f.description.as_deref())
        )?;
    }
    writeln!(
        o,
        "\n## Stale documentation: {} documented flows not observed\n",
        c.unseen
    )?;
    if c.unseen == 0 {
        writeln!(o, "None: every documented flow was seen in the window.")?;
    } else {
        writeln!(
            o,
            "Documented but never seen in the window: stale documentation, or traffic this window did not contain.\n"
        )?;
        for f in c.flows.iter().filter(|f| !f.seen) {
            let ports: Vec<String> = f.ports.iter().map(u16::to_string).collect();
            writeln!(
                o,
                "- `{}`: {} → {} on {}{}",
                f.rule,
                f.from,
                f.to,
                ports.join(", "),
                f.description
                    .as_deref()
                    .map(|d| format!(" — {}", cell(d)))
                    .unwrap_or_default()
            )?;
        }
    }
    if !r.input.corrupt.is_empty() {
        writeln!(o, "\n## Corrupt lines: {} skipped\n", r.input.corrupt_lines)?;
        for c in &r.input.corrupt {
            writeln!(o, "- {}:{}: {}", cell(&c.file), c.line, cell(&c.error))?;
        }
    }
    writeln!(o, "\n## What outcomes mean\n")?;
    for m in &r.outcome_meanings {
        writeln!(o, "- `{}`: {}", m.outcome, m.meaning)?;
    }
    writeln!(
        o,
        "\nGenerated {} by observer report (report schema {}).",
        r.generated_at, r.schema_version
    )
}

fn shape(n: &DiagramNode, id: usize) -> String {
    let l = mlabel(if n.kind == "any" {
        "* (any component)"
    } else {
        &n.name
    });
    match n.kind {
        "external" => format!("n{id}([\"{l}\"])"),
        "reserved" => format!("n{id}[[\"{l}\"]]"),
        "any" => format!("n{id}{{{{\"{l}\"}}}}"),
        "unknown" => format!("n{id}>\"{l}\"]:::unknown"),
        _ => format!("n{id}[\"{l}\"]"),
    }
}

/// Mermaid colours, one `linkStyle` per edge in declaration order.
pub(super) fn link_style(s: EdgeStyle) -> &'static str {
    match s {
        EdgeStyle::Seen => "stroke:#2b8a3e,stroke-width:2px",
        EdgeStyle::Unseen => "stroke:#9aa0a6,stroke-width:1px,stroke-dasharray:5 5",
        EdgeStyle::Undocumented => "stroke:#d62728,stroke-width:3px",
    }
}

fn mermaid(r: &Report, o: &mut String) -> std::fmt::Result {
    let d = &r.diagram;
    writeln!(o, "```mermaid\nflowchart LR")?;
    for (i, n) in d.nodes.iter().enumerate() {
        writeln!(o, "    {}", shape(n, i))?;
    }
    let id = |name: &str| d.nodes.iter().position(|n| n.name == name);
    let mut styles = vec![];
    for e in &d.edges {
        let (Some(a), Some(b)) = (id(&e.from), id(&e.to)) else {
            continue;
        };
        let arrow = match e.style {
            EdgeStyle::Seen => "-->",
            EdgeStyle::Unseen => "-.->",
            EdgeStyle::Undocumented => "==>",
        };
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let label = if e.style == EdgeStyle::Unseen {
            ports.join(", ")
        } else {
            format!("{} ({})", ports.join(", "), e.connections)
        };
        writeln!(o, "    n{a} {arrow}|\"{}\"| n{b}", mlabel(&label))?;
        styles.push(e.style);
    }
    for (i, s) in styles.iter().enumerate() {
        writeln!(o, "    linkStyle {i} {}", link_style(*s))?;
    }
    writeln!(
        o,
        "    classDef unknown fill:#fdecea,stroke:#d62728,color:#8b1a1a"
    )?;
    writeln!(o, "```")
}
