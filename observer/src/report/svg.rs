//! The diagram as inline SVG: nodes laid out in columns by a topological rank (longest path
//! from the sources, cycles broken at the edges a depth-first search finds going back), in the
//! diagram's node order within a column. Deterministic: the same report draws the same picture.
//!
//! Every edge is a `<g class="edge seen|unseen|undocumented" data-from=… data-to=…>` and every
//! node a `<g class="node KIND" data-name=…>`, so tests and tools can read the picture's DOM.

use std::fmt::Write;

use super::model::{Diagram, EdgeStyle};

const COL: f64 = 290.0;
const ROW: f64 = 70.0;
const W: f64 = 180.0;
const H: f64 = 38.0;
const MARGIN: f64 = 30.0;
/// Room above the first row for edges that jump over a column.
const TOP: f64 = 90.0;

/// Escapes text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(ch),
        }
    }
    o
}

/// Column of every node: the longest path to it from a node without incoming edges.
pub fn ranks(d: &Diagram) -> Vec<usize> {
    let n = d.nodes.len();
    let idx = |name: &str| d.nodes.iter().position(|x| x.name == name);
    let mut adj: Vec<Vec<usize>> = vec![vec![]; n];
    for e in &d.edges {
        if let (Some(a), Some(b)) = (idx(&e.from), idx(&e.to))
            && a != b
            && !adj[a].contains(&b)
        {
            adj[a].push(b);
        }
    }
    // Depth-first search (iterative) marking back edges, which are left out of the ranking.
    let mut state = vec![0u8; n]; // 0 new, 1 on the stack, 2 done
    let mut dag: Vec<Vec<usize>> = vec![vec![]; n];
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (u, ref mut i)) = stack.last_mut() {
            if let Some(&v) = adj[u].get(*i) {
                *i += 1;
                match state[v] {
                    0 => {
                        dag[u].push(v);
                        state[v] = 1;
                        stack.push((v, 0));
                    }
                    2 => dag[u].push(v),
                    _ => {} // back edge: a cycle
                }
            } else {
                state[u] = 2;
                stack.pop();
            }
        }
    }
    // Longest path over the DAG in a topological order (Kahn, lowest index first).
    let mut indeg = vec![0usize; n];
    for vs in &dag {
        for &v in vs {
            indeg[v] += 1;
        }
    }
    let mut rank = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
    while let Some(pos) = ready
        .iter()
        .enumerate()
        .min_by_key(|&(_, &v)| v)
        .map(|(p, _)| p)
    {
        let u = ready.swap_remove(pos);
        for &v in &dag[u] {
            rank[v] = rank[v].max(rank[u] + 1);
            indeg[v] -= 1;
            if indeg[v] == 0 {
                ready.push(v);
            }
        }
    }
    rank
}

fn style_attrs(s: EdgeStyle) -> &'static str {
    match s {
        EdgeStyle::Seen => r##"stroke="#2b8a3e" stroke-width="2""##,
        EdgeStyle::Unseen => r##"stroke="#9aa0a6" stroke-width="1.5" stroke-dasharray="6 4""##,
        EdgeStyle::Undocumented => r##"stroke="#d62728" stroke-width="3""##,
    }
}

fn node_fill(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "external" => ("#fff7e6", "#d08700"),
        "reserved" => ("#eef2f7", "#5b6b7f"),
        "any" => ("#f3f0ff", "#6a4fc8"),
        "unknown" => ("#fdecea", "#d62728"),
        _ => ("#e8f1fb", "#2f6db5"),
    }
}

pub fn render(d: &Diagram) -> String {
    let rank = ranks(d);
    let mut row = vec![0usize; d.nodes.len()];
    let mut per_col: Vec<usize> = vec![];
    for (i, &r) in rank.iter().enumerate() {
        if per_col.len() <= r {
            per_col.resize(r + 1, 0);
        }
        row[i] = per_col[r];
        per_col[r] += 1;
    }
    let cols = per_col.len().max(1);
    let rows = per_col.iter().copied().max().unwrap_or(1).max(1);
    let width = MARGIN * 2.0 + (cols as f64 - 1.0) * COL + W + 60.0;
    let height = TOP + rows as f64 * ROW + 110.0;
    let pos = |i: usize| (MARGIN + rank[i] as f64 * COL, TOP + row[i] as f64 * ROW);
    let idx = |name: &str| d.nodes.iter().position(|x| x.name == name);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="diagram" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="13">"#
    );
    o.push_str("<defs>\n");
    for (name, color) in [
        ("seen", "#2b8a3e"),
        ("unseen", "#9aa0a6"),
        ("undocumented", "#d62728"),
    ] {
        let _ = writeln!(
            o,
            r#"<marker id="arrow-{name}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>"#
        );
    }
    o.push_str("</defs>\n");

    // Edges under the nodes. Edges joining the same two nodes are spread apart.
    let mut pairs: Vec<(usize, usize)> = vec![];
    for e in &d.edges {
        let (Some(a), Some(b)) = (idx(&e.from), idx(&e.to)) else {
            continue;
        };
        let k = pairs
            .iter()
            .filter(|&&p| p == (a, b) || p == (b, a))
            .count() as f64;
        pairs.push((a, b));
        let ((xa, ya), (xb, yb)) = (pos(a), pos(b));
        let off = k * 12.0;
        let (path, lx, ly) = if a == b {
            let (x, y) = (xa + W, ya);
            (
                format!(
                    "M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                    x,
                    y + 8.0,
                    x + 46.0 + off,
                    y - 14.0,
                    x + 46.0 + off,
                    y + H + 14.0,
                    x,
                    y + H - 8.0
                ),
                x + 40.0 + off,
                y + H / 2.0 + 4.0,
            )
        } else if rank[b] == rank[a] + 1 {
            // Next column: right side to left side.
            let (x1, y1, x2, y2) = (xa + W, ya + H / 2.0 + off, xb, yb + H / 2.0 + off);
            let dx = (x2 - x1) / 2.0;
            (
                format!(
                    "M{x1:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {x2:.1},{y2:.1}",
                    x1 + dx,
                    x2 - dx
                ),
                (x1 + x2) / 2.0 - 12.0,
                (y1 + y2) / 2.0 - 5.0,
            )
        } else if rank[b] > rank[a] {
            // Over one or more columns: an arc above the rows between, top to top.
            let (x1, y1, x2, y2) = (xa + W * 0.75, ya, xb + W * 0.25, yb);
            let lift = y1.min(y2) - 40.0 - 14.0 * ((rank[b] - rank[a]) as f64 - 2.0).min(3.0) - off;
            (
                format!("M{x1:.1},{y1:.1} C{x1:.1},{lift:.1} {x2:.1},{lift:.1} {x2:.1},{y2:.1}"),
                (x1 + x2) / 2.0 - 12.0,
                lift + 0.75 * (y1.min(y2) - lift) - 12.0,
            )
        } else {
            // Backwards or within a column: a loop below both nodes.
            let (x1, y1, x2, y2) = (xa + W / 2.0 + off, ya + H, xb + W / 2.0 - off, yb + H);
            let dip = y1.max(y2) + 30.0 + (x1 - x2).abs() / 6.0 + off;
            (
                format!("M{x1:.1},{y1:.1} C{x1:.1},{dip:.1} {x2:.1},{dip:.1} {x2:.1},{y2:.1}"),
                (x1 + x2) / 2.0,
                dip - 6.0,
            )
        };
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let ports = ports.join(",");
        let title = match e.style {
            EdgeStyle::Seen => format!(
                "{} → {} :{ports} documented ({}), seen: {} connections",
                e.from,
                e.to,
                e.rules.join(", "),
                e.connections
            ),
            EdgeStyle::Unseen => format!(
                "{} → {} :{ports} documented ({}), not seen",
                e.from,
                e.to,
                e.rules.join(", ")
            ),
            EdgeStyle::Undocumented => format!(
                "{} → {} :{ports} NOT documented: {} connections",
                e.from, e.to, e.connections
            ),
        };
        let s = e.style.name();
        let _ = writeln!(
            o,
            r#"<g class="edge {s}" data-from="{}" data-to="{}" data-ports="{}"><title>{}</title><path d="{path}" fill="none" {} marker-end="url(#arrow-{s})"/><text x="{lx:.1}" y="{ly:.1}" font-size="11" fill="{}">{}</text></g>"#,
            esc(&e.from),
            esc(&e.to),
            esc(&ports),
            esc(&title),
            style_attrs(e.style),
            if e.style == EdgeStyle::Undocumented {
                "#d62728"
            } else {
                "#555"
            },
            esc(&ports)
        );
    }
    for (i, n) in d.nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let (fill, stroke) = node_fill(n.kind);
        let label = if n.kind == "any" {
            "* (any component)"
        } else {
            &n.name
        };
        let rx = if n.kind == "external" { 18 } else { 4 };
        let _ = writeln!(
            o,
            r##"<g class="node {}" data-name="{}"><rect x="{x:.1}" y="{y:.1}" width="{W}" height="{H}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#1a1a1a">{}</text></g>"##,
            n.kind,
            esc(&n.name),
            x + W / 2.0,
            y + H / 2.0 + 4.5,
            esc(label)
        );
    }
    // Legend.
    let ly = height - 28.0;
    let mut lx = MARGIN;
    for (s, text) in [
        (EdgeStyle::Seen, "documented, seen"),
        (EdgeStyle::Unseen, "documented, not seen"),
        (EdgeStyle::Undocumented, "seen, NOT documented"),
    ] {
        let _ = writeln!(
            o,
            r#"<g class="legend {}"><line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" {}/><text x="{:.1}" y="{:.1}">{text}</text></g>"#,
            s.name(),
            lx + 40.0,
            style_attrs(s),
            lx + 48.0,
            ly + 4.5
        );
        lx += 230.0;
    }
    o.push_str("</svg>\n");
    o
}
