//! The JSON report: [`Report`] as documented in docs/report-schema.md.

use super::Report;

pub fn render(report: &Report) -> String {
    // Serializing plain data with string keys cannot fail; keep the fallback anyway rather
    // than panic.
    let mut s = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the report: {e}\"}}"));
    s.push('\n');
    s
}
