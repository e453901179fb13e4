//! The HTML report: one self-contained page (inline CSS and SVG; no scripts, fonts or links to
//! fetch), readable offline and safe to attach to a ticket.

use std::fmt::Write;

use super::{
    model::{Report, outcome_evidence, outcomes_text},
    svg::{self, esc},
};

const CSS: &str = "body{font-family:sans-serif;margin:24px;color:#1a1a1a;max-width:1500px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}\
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0;font-size:13px}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.verdict{padding:10px 14px;font-weight:bold;border-radius:4px}\
.verdict.conformant{background:#e6f4ea;border:1px solid #2b8a3e}\
.verdict.not-conformant{background:#fdecea;border:1px solid #d62728}\
.unseen td{color:#777}.no{color:#d62728;font-weight:bold}.figure{overflow-x:auto}\
code{font-size:12px}";

fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "—".to_owned(), esc)
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = write_page(r, &mut o);
    o
}

fn write_page(r: &Report, o: &mut String) -> std::fmt::Result {
    writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Architecture conformance: {}</title><style>{CSS}</style></head><body>",
        esc(&r.model.name)
    )?;
    writeln!(
        o,
        "<h1>Architecture conformance: {}</h1>",
        esc(&r.model.name)
    )?;
    let class = if r.verdict.conformant {
        "conformant"
    } else {
        "not-conformant"
    };
    writeln!(
        o,
        "<p class=\"verdict {class}\" id=\"verdict\">{}</p>",
        esc(&r.verdict.summary)
    )?;
    writeln!(o, "<table class=\"facts\">")?;
    writeln!(
        o,
        "<tr><th>window</th><td>{} to {}</td></tr>",
        opt(r.window.from.as_deref()),
        opt(r.window.to.as_deref())
    )?;
    match r.source.kind {
        "prometheus" => writeln!(
            o,
            "<tr><th>source</th><td>Prometheus {} (cluster-wide, workload granularity)</td></tr>",
            opt(r.source.url.as_deref())
        )?,
        _ => writeln!(
            o,
            "<tr><th>source</th><td>flow logs: {}</td></tr>",
            esc(&r.source.files.join(", "))
        )?,
    }
    if !r.nodes.is_empty() {
        writeln!(
            o,
            "<tr><th>nodes</th><td>{}</td></tr>",
            esc(&r.nodes.join(", "))
        )?;
    }
    writeln!(
        o,
        "<tr><th>model</th><td>{} <code>{}</code> ({})</td></tr>",
        esc(&r.model.name),
        esc(&r.model.hash),
        esc(&r.model.file)
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
            format!(
                "<code>{}</code> ({} records{same})",
                esc(&h.hash),
                h.records
            )
        })
        .collect();
    if r.model.records_without_model > 0 {
        hashes.push(format!(
            "not judged ({} records)",
            r.model.records_without_model
        ));
    }
    writeln!(
        o,
        "<tr><th>recorded with</th><td>{}</td></tr>",
        hashes.join(", ")
    )?;
    let i = &r.input;
    writeln!(
        o,
        "<tr><th>input</th><td>{} records in the window ({} outside it, {} ingress duplicates of counted egress, {} corrupt lines skipped); {} judged by this report, {} verdicts kept from this model</td></tr>",
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
        "<tr><th>connections</th><td>{} ({} expected, of which {} inside one pod; {} unexpected); outcomes: {}</td></tr>",
        t.connections,
        t.expected,
        t.local,
        t.unexpected,
        esc(&outcomes_text(t.outcomes.as_ref()))
    )?;
    writeln!(o, "</table>")?;
    for n in &r.source.notes {
        writeln!(o, "<p class=\"note\">{}</p>", esc(n))?;
    }

    writeln!(o, "<h2>Diagram</h2>\n<div class=\"figure\">")?;
    o.push_str(&svg::render(&r.diagram));
    writeln!(o, "</div>")?;

    let u = &r.unexpected;
    writeln!(
        o,
        "<h2 id=\"unexpected\">Unexpected flows: {} from {} sources, {} connections</h2>",
        u.flows, u.sources, u.connections
    )?;
    if u.by_source.is_empty() {
        writeln!(o, "<p>None.</p>")?;
    }
    for g in &u.by_source {
        writeln!(
            o,
            "<h3>{} — {} connections</h3>",
            esc(&g.source.display()),
            g.connections
        )?;
        if !g.source.addresses.is_empty() {
            writeln!(
                o,
                "<p>Addresses: {}</p>",
                esc(&g.source.addresses.join(", "))
            )?;
        }
        writeln!(
            o,
            "<table class=\"unexpected\"><tr><th>destination</th><th>port</th><th>scope</th><th>reason</th><th>connections</th><th>outcomes</th><th>first seen</th><th>last seen</th><th>processes</th><th>nodes</th></tr>"
        )?;
        for f in &g.flows {
            let mut dest = f.destination.display();
            if !f.destination.addresses.is_empty()
                && !f.destination.addresses.contains(&f.destination.label)
            {
                dest.push_str(&format!(" [{}]", f.destination.addresses.join(", ")));
            }
            writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&dest),
                f.port,
                f.scope.unwrap_or("—"),
                f.reason,
                f.connections,
                esc(&outcomes_text(f.outcomes.as_ref())),
                opt(f.first_seen.as_deref()),
                opt(f.last_seen.as_deref()),
                esc(&f.processes.join(", ")),
                esc(&f.nodes.join(", "))
            )?;
        }
        writeln!(o, "</table>")?;
        let mut evidence = vec![];
        for f in &g.flows {
            for e in outcome_evidence(f.outcomes.as_ref()) {
                evidence.push(format!("to {} :{} — {e}", f.destination.label, f.port));
            }
        }
        if !evidence.is_empty() {
            writeln!(o, "<p>What the outcomes show:</p><ul>")?;
            for e in evidence {
                writeln!(o, "<li>{}</li>", esc(&e))?;
            }
            writeln!(o, "</ul>")?;
        }
    }

    let c = &r.coverage;
    writeln!(
        o,
        "<h2 id=\"coverage\">Documented flows: {} of {} seen</h2>",
        c.seen, c.documented
    )?;
    writeln!(
        o,
        "<table class=\"coverage\"><tr><th>rule</th><th>from</th><th>to</th><th>ports</th><th>seen</th><th>connections</th><th>first seen</th><th>last seen</th><th>description</th></tr>"
    )?;
    for f in &c.flows {
        let ports: Vec<String> = f.ports.iter().map(u16::to_string).collect();
        let via = if f.via == "direct" {
            String::new()
        } else {
            format!(" ({})", f.via)
        };
        writeln!(
            o,
            "<tr class=\"{}\" data-rule=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}{via}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if f.seen { "seen" } else { "unseen" },
            esc(&f.rule),
            esc(&f.rule),
            esc(&f.from),
            esc(&f.to),
            ports.join(", "),
            if f.seen {
                "yes".to_owned()
            } else {
                "<span class=\"no\">no</span>".to_owned()
            },
            f.connections,
            opt(f.first_seen.as_deref()),
            opt(f.last_seen.as_deref()),
            opt(f.description.as_deref())
        )?;
    }
    writeln!(o, "</table>")?;
    writeln!(
        o,
        "<h2 id=\"stale\">Stale documentation: {} documented flows not observed</h2>",
        c.unseen
    )?;
    if c.unseen == 0 {
        writeln!(
            o,
            "<p>None: every documented flow was seen in the window.</p>"
        )?;
    } else {
        writeln!(
            o,
            "<p>Documented but never seen in the window: stale documentation, or traffic this window did not contain.</p><ul>"
        )?;
        for f in c.flows.iter().filter(|f| !f.seen) {
            let ports: Vec<String> = f.ports.iter().map(u16::to_string).collect();
            writeln!(
                o,
                "<li><code>{}</code>: {} → {} on {}{}</li>",
                esc(&f.rule),
                esc(&f.from),
                esc(&f.to),
                ports.join(", "),
                f.description
                    .as_deref()
                    .map(|d| format!(" — {}", esc(d)))
                    .unwrap_or_default()
            )?;
        }
        writeln!(o, "</ul>")?;
    }
    if !r.input.corrupt.is_empty() {
        writeln!(
            o,
            "<h2>Corrupt lines: {} skipped</h2><ul>",
            r.input.corrupt_lines
        )?;
        for c in &r.input.corrupt {
            writeln!(o, "<li>{}:{}: {}</li>", esc(&c.file), c.line, esc(&c.error))?;
        }
        writeln!(o, "</ul>")?;
    }
    writeln!(o, "<h2>What outcomes mean</h2><ul>")?;
    for m in &r.outcome_meanings {
        writeln!(o, "<li><code>{}</code>: {}</li>", m.outcome, esc(m.meaning))?;
    }
    writeln!(o, "</ul>")?;
    writeln!(
        o,
        "<p><small>Generated {} by observer report (report schema {}).</small></p></body></html>",
        esc(&r.generated_at),
        r.schema_version
    )
}
