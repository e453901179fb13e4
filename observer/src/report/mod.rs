//! Audit reports (`observer report`) and architecture drafts (`observer learn`).
//!
//! `report` reads observed traffic over a time window — from flow logs (one node or many) or
//! cluster-wide from Prometheus — judges it against the architecture under review, and writes a
//! report a reviewer can quote: a verdict line, which documented flows were seen (and which never
//! were: stale documentation), every unexpected flow grouped by source, and a diagram of the
//! architecture with the traffic laid over it. Markdown (Mermaid), self-contained HTML (inline
//! SVG) or JSON (`docs/report-schema.md`).
//!
//! `learn` writes a draft architecture YAML from flow logs: one component per workload, one
//! external per outside destination, one flow per observed edge and port, with `# REVIEW:`
//! comments on what a human must check.
//!
//! Exit codes of both commands: [`EXIT_CONFORMANT`] (0), [`EXIT_UNEXPECTED`] (1, report only),
//! [`EXIT_BAD_INPUT`] (2). Everything but [`report_command`], [`learn_command`], reading the
//! inputs and [`prometheus`] is pure.

#![forbid(unsafe_code)]

mod html;
mod json;
pub mod learn;
mod markdown;
pub mod model;
pub mod prometheus;
mod svg;

use std::{
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, SystemTime},
};

use observer_common::record::{FlowRecord, SCHEMA_VERSION, Timestamp};

use crate::architecture::Architecture;

pub use learn::{LearnOptions, learn_command, learn_to};
pub use model::{Report, SCHEMA_VERSION as REPORT_SCHEMA_VERSION};

/// The report found no unexpected flow (stale documentation does not change this).
pub const EXIT_CONFORMANT: i32 = 0;
/// The report found at least one unexpected flow.
pub const EXIT_UNEXPECTED: i32 = 1;
/// Bad input or an unusable source: an invalid architecture, an unreadable flow log, an
/// unreachable or erroring Prometheus, bad options, an empty window, an unwritable output.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Window used with `--prometheus` when `--since` is not given.
pub const DEFAULT_PROMETHEUS_WINDOW: Duration = Duration::from_secs(3600);

/// Output format of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Markdown with a Mermaid `flowchart LR` diagram.
    #[default]
    Markdown,
    /// One self-contained HTML page with an inline SVG diagram (no scripts, fonts or CDNs).
    Html,
    /// JSON, documented in docs/report-schema.md.
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            "json" => Ok(Format::Json),
            _ => Err(format!("unknown format {s:?}: use md, html or json")),
        }
    }
}

/// A bound of the report's window: an instant, or a duration before now (`1h` = an hour ago).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    At(SystemTime),
    Ago(Duration),
}

impl TimeSpec {
    /// The instant this bound names, relative durations counted back from `now`.
    pub fn resolve(self, now: SystemTime) -> SystemTime {
        match self {
            TimeSpec::At(t) => t,
            TimeSpec::Ago(d) => now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

impl FromStr for TimeSpec {
    type Err = String;
    /// RFC 3339 (`2026-11-25T10:00:00Z`) or a duration (`90m`, `1h`, `2days`) meaning that long
    /// before now.
    fn from_str(s: &str) -> Result<TimeSpec, String> {
        if let Ok(t) = humantime::parse_rfc3339_weak(s) {
            return Ok(TimeSpec::At(t));
        }
        humantime::parse_duration(s)
            .map(TimeSpec::Ago)
            .map_err(|_| {
                format!(
                    "bad time {s:?}: give an RFC 3339 time (2026-11-25T10:00:00Z) or a duration \
                 before now (30m, 1h, 2days)"
                )
            })
    }
}

/// Options of `observer report`. Exactly one source: `flow_logs` (one or more) or `prometheus`.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    /// `--architecture FILE`: the architecture under review; every flow is judged against it.
    pub architecture: PathBuf,
    /// `--flow-log FILE` (repeatable): flow logs of one node or many (JSON Lines, schema 1).
    pub flow_logs: Vec<PathBuf>,
    /// `--prometheus URL`: a Prometheus server scraping the agents' `/metrics`
    /// (`http://host:9090`; plain HTTP). Workload granularity: no addresses, processes or
    /// outcomes.
    pub prometheus: Option<String>,
    /// `--since`: start of the window. Flow logs: default unbounded. Prometheus: default
    /// [`DEFAULT_PROMETHEUS_WINDOW`] before `until`.
    pub since: Option<TimeSpec>,
    /// `--until`: end of the window; default now.
    pub until: Option<TimeSpec>,
    /// `--format md|html|json` (default md).
    pub format: Format,
    /// `--output FILE`; default stdout.
    pub output: Option<PathBuf>,
}

/// `observer report`: writes the report and returns [`EXIT_CONFORMANT`], [`EXIT_UNEXPECTED`]
/// or [`EXIT_BAD_INPUT`]. Problems go to stderr, one line each.
pub fn report_command(opts: &ReportOptions) -> i32 {
    report_to(
        opts,
        SystemTime::now(),
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// [`report_command`] with the clock and the standard streams given: `out` receives the report
/// unless `opts.output` names a file, `err` the diagnostics.
pub fn report_to(
    opts: &ReportOptions,
    now: SystemTime,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match build_report(opts, now, err) {
        Ok(report) => {
            let text = render(&report, opts.format);
            if let Err(e) = write_output(opts.output.as_deref(), &text, out) {
                let _ = writeln!(err, "error: {e}");
                return EXIT_BAD_INPUT;
            }
            let _ = writeln!(err, "{}", report.verdict.summary);
            report.verdict.exit_code
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_BAD_INPUT
        }
    }
}

/// Renders a report in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Markdown => markdown::render(report),
        Format::Html => html::render(report),
        Format::Json => json::render(report),
    }
}

/// Why a report or a draft could not be made: always [`EXIT_BAD_INPUT`].
#[derive(Debug, PartialEq, Eq)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

impl From<String> for InputError {
    fn from(s: String) -> InputError {
        InputError(s)
    }
}

/// Resolved window: `since`/`until` are `None` when unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Window {
    pub fn contains(&self, t: SystemTime) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }
}

/// Reads the inputs, judges them and aggregates the report; problems with single lines go to
/// `err` and are counted, unusable inputs are an [`InputError`].
pub fn build_report(
    opts: &ReportOptions,
    now: SystemTime,
    err: &mut dyn Write,
) -> Result<Report, InputError> {
    let arch = Architecture::load(&opts.architecture).map_err(|e| {
        InputError(format!(
            "the architecture was not accepted:\n{e}\n(check it with `observer validate {}`)",
            opts.architecture.display()
        ))
    })?;
    let until = opts.until.map(|u| u.resolve(now));
    match (&opts.prometheus, opts.flow_logs.is_empty()) {
        (Some(_), false) => Err(InputError(
            "give either --flow-log or --prometheus, not both".into(),
        )),
        (None, true) => Err(InputError(
            "no traffic to report on: give --flow-log FILE (repeatable) or --prometheus URL".into(),
        )),
        (Some(url), true) => {
            let until = until.unwrap_or(now);
            let since = match opts.since {
                Some(s) => s.resolve(now),
                None => until
                    .checked_sub(DEFAULT_PROMETHEUS_WINDOW)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            };
            if since >= until {
                return Err(InputError(format!(
                    "the window is empty: --since {} is not before --until {}",
                    fmt_time(since),
                    fmt_time(until)
                )));
            }
            let observations = prometheus::fetch(url, since, until)?;
            let source = model::SourceInfo::prometheus(url);
            let window = Window {
                since: Some(since),
                until: Some(until),
            };
            if observations.is_empty() {
                return Err(InputError(format!(
                    "no connections in the window: Prometheus at {url} counted none in \
                     observer_connections_total between {} and {}; is it scraping the agents' /metrics?",
                    fmt_time(since),
                    fmt_time(until)
                )));
            }
            Ok(model::build(
                &arch,
                &opts.architecture,
                window,
                source,
                observations,
                model::InputStats::default(),
                now,
            ))
        }
        (None, false) => {
            let window = Window {
                since: opts.since.map(|s| s.resolve(now)),
                until,
            };
            if let (Some(s), Some(u)) = (window.since, window.until)
                && s >= u
            {
                return Err(InputError(format!(
                    "the window is empty: --since {} is not before --until {}",
                    fmt_time(s),
                    fmt_time(u)
                )));
            }
            let read = read_flow_logs(&opts.flow_logs, err)?;
            let mut stats = read.stats;
            let mut observations = Vec::new();
            for r in &read.records {
                if window.contains(r.last_seen.0) {
                    observations.push(model::Observation::from_record(r));
                } else {
                    stats.records_outside_window += 1;
                }
            }
            if observations.is_empty() {
                return Err(InputError(format!(
                    "no flow records in the window{}: {} records read from {}, {} outside the window, \
                     {} corrupt lines skipped",
                    window_text(&window),
                    read.records.len(),
                    list_paths(&opts.flow_logs),
                    stats.records_outside_window,
                    stats.corrupt_lines
                )));
            }
            let source = model::SourceInfo::flow_logs(&opts.flow_logs);
            Ok(model::build(
                &arch,
                &opts.architecture,
                window,
                source,
                observations,
                stats,
                now,
            ))
        }
    }
}

fn window_text(w: &Window) -> String {
    match (w.since, w.until) {
        (None, None) => String::new(),
        (Some(s), None) => format!(" (since {})", fmt_time(s)),
        (None, Some(u)) => format!(" (until {})", fmt_time(u)),
        (Some(s), Some(u)) => format!(" ({} to {})", fmt_time(s), fmt_time(u)),
    }
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// RFC 3339, UTC, whole seconds.
pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339, UTC, milliseconds (as in flow records).
pub fn fmt_ts(t: Timestamp) -> String {
    t.to_string()
}

/// A corrupt flow-log line: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CorruptLine {
    pub file: String,
    /// 1-based.
    pub line: u64,
    pub error: String,
}

/// What reading the flow logs yielded.
#[derive(Debug, Default)]
pub struct FlowLogs {
    pub records: Vec<FlowRecord>,
    pub stats: model::InputStats,
}

/// Longest line read from a flow log; a record is a few hundred bytes, so anything longer is
/// not a record (and is not read whole into memory).
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Reads flow logs. A line that is not a schema-1 record is reported on `err` with its file and
/// line number, counted, and skipped; a file that cannot be read is an error. Blank lines are
/// ignored.
pub fn read_flow_logs(paths: &[PathBuf], err: &mut dyn Write) -> Result<FlowLogs, InputError> {
    let mut out = FlowLogs::default();
    for path in paths {
        let file = File::open(path)
            .map_err(|e| InputError(format!("cannot read the flow log {}: {e}", path.display())))?;
        read_one(path, &mut BufReader::new(file), &mut out, err)?;
    }
    Ok(out)
}

fn read_one(
    path: &Path,
    reader: &mut dyn BufRead,
    out: &mut FlowLogs,
    err: &mut dyn Write,
) -> Result<(), InputError> {
    let name = path.display().to_string();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = io::Read::take(&mut *reader, MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| InputError(format!("cannot read the flow log {name}: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        out.stats.lines += 1;
        let problem = if buf.len() as u64 > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = io::Read::take(&mut *reader, MAX_LINE_BYTES)
                    .read_until(b'\n', &mut rest)
                    .map_err(|e| InputError(format!("cannot read the flow log {name}: {e}")))?;
                if m == 0 || rest.ends_with(b"\n") {
                    break;
                }
            }
            Some(format!(
                "longer than {MAX_LINE_BYTES} bytes; not a flow record"
            ))
        } else {
            match parse_line(&buf) {
                Ok(None) => {
                    out.stats.lines -= 1;
                    None
                }
                Ok(Some(r)) => {
                    out.records.push(r);
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some(error) = problem {
            let _ = writeln!(
                err,
                "{name}:{line_no}: corrupt flow record skipped: {error}"
            );
            out.stats.corrupt_lines += 1;
            out.stats.corrupt.push(CorruptLine {
                file: name.clone(),
                line: line_no,
                error,
            });
        }
    }
}

/// `Ok(None)` for a blank line.
fn parse_line(buf: &[u8]) -> Result<Option<FlowRecord>, String> {
    let text = std::str::from_utf8(buf).map_err(|e| format!("not UTF-8 text: {e}"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("schema").and_then(serde_json::Value::as_u64) {
        Some(s) if s == u64::from(SCHEMA_VERSION) => {}
        Some(s) => {
            return Err(format!(
                "schema {s} is not supported (this release reads schema {SCHEMA_VERSION})"
            ));
        }
        None => return Err("no \"schema\" field: not a flow record".into()),
    }
    let r: FlowRecord = serde_json::from_value(v).map_err(|e| format!("not a flow record: {e}"))?;
    if r.dst.port.is_none() {
        return Err("dst.port is missing".into());
    }
    Ok(Some(r))
}

fn write_output(path: Option<&Path>, text: &str, out: &mut dyn Write) -> Result<(), String> {
    match path {
        None => out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write the report to stdout: {e}")),
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        }
    }
}

#[cfg(test)]
mod tests;
