//! The report's cluster-wide source: `observer_connections_total` in Prometheus.
//!
//! One instant query of the raw samples, `observer_connections_total[<window + 5m>]` at
//! `until`, through the HTTP API (`/api/v1/query`). Each series' connections in the window are
//! counted exactly from its samples: the rise from the last sample at or before `since` (0 when
//! the series had none: it was born in the window) to the last one, a drop counted as a counter
//! reset. `increase()` is not used: it extrapolates to the window's edges and ignores a series'
//! first value, so its counts are fractional and miss series born in the window, while a report
//! quotes numbers that must add up. Series are then summed over the labels below (dropping
//! `instance`, `job`, …: one series per agent).
//!
//! Labels read: `direction, src_namespace, src_workload, src_component, dst_namespace,
//! dst_workload, dst_component, dst_name, dst_scope, dst_port, verdict, reason`. `dst_name` is
//! the destination's host name when `dst_scope` is `external`, else its Service name. There are
//! no addresses, processes, outcomes or nodes at this granularity.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use observer_common::record::{Direction, Reason, Scope, Timestamp, Verdict};
use serde_json::Value;

use super::{
    InputError,
    model::{End, Observation, Recorded},
};

/// The counter the agents export.
pub const METRIC: &str = "observer_connections_total";
/// Labels that identify a flow; the others (instance, job, pod) are summed over.
pub const LABELS: [&str; 12] = [
    "direction",
    "src_namespace",
    "src_workload",
    "src_component",
    "dst_namespace",
    "dst_workload",
    "dst_component",
    "dst_name",
    "dst_scope",
    "dst_port",
    "verdict",
    "reason",
];
/// How far before the window samples are read to find each series' value at its start
/// (Prometheus's own lookback delta).
pub const LOOKBACK: Duration = Duration::from_secs(300);
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: u64 = 256 << 20;

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Sends one instant query; returns the `data` object of a successful answer.
pub fn query(base: &str, promql: &str, at: SystemTime) -> Result<Value, InputError> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .query("query", promql)
        .query("time", format!("{:.3}", secs(at)))
        .call()
        .map_err(|e| InputError(format!("cannot reach Prometheus at {base}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| InputError(format!("cannot read Prometheus's answer from {base}: {e}")))?;
    let v: Value = serde_json::from_str(&body).map_err(|_| {
        InputError(format!(
            "Prometheus at {base} answered HTTP {status} with something that is not its API's JSON; is {base} a Prometheus server?"
        ))
    })?;
    if v.get("status").and_then(Value::as_str) != Some("success") {
        return Err(InputError(format!(
            "Prometheus at {base} refused the query {promql:?} (HTTP {status}): {}: {}",
            v.get("errorType")
                .and_then(Value::as_str)
                .unwrap_or("error"),
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no message")
        )));
    }
    v.get("data")
        .cloned()
        .ok_or_else(|| InputError(format!("Prometheus at {base} answered without data")))
}

/// Connections of one series in the window and the scrapes at which its count first and last
/// rose, from `(unix seconds, value)` samples in time order.
pub fn count_series(
    samples: &[(f64, f64)],
    since: f64,
    until: f64,
) -> (u64, Option<f64>, Option<f64>) {
    let mut prev: Option<f64> = None;
    let mut total = 0.0;
    let (mut first, mut last) = (None, None);
    for &(t, v) in samples {
        if t > until || !v.is_finite() {
            continue;
        }
        if t <= since {
            prev = Some(v);
            continue;
        }
        let rise = match prev {
            Some(p) if v >= p => v - p,
            // A drop is a reset (the agent restarted): it counted `v` since.
            _ => v,
        };
        if rise > 0.0 {
            total += rise;
            first = first.or(Some(t));
            last = Some(t);
        }
        prev = Some(v);
    }
    (total.round() as u64, first, last)
}

fn label(m: &Value, k: &str) -> Option<String> {
    m.get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: Option<&str>) -> Option<T> {
    s.and_then(|s| serde_json::from_value(Value::String(s.to_owned())).ok())
}

/// Reads the window's connections from Prometheus at `base` (`http://host:9090`).
pub fn fetch(
    base: &str,
    since: SystemTime,
    until: SystemTime,
) -> Result<Vec<Observation>, InputError> {
    let window = until.duration_since(since).unwrap_or_default() + LOOKBACK;
    let promql = format!("{METRIC}[{}s]", window.as_secs().max(1));
    let data = query(base, &promql, until)?;
    let (Some("matrix"), Some(Value::Array(result))) = (
        data.get("resultType").and_then(Value::as_str),
        data.get("result"),
    ) else {
        return Err(InputError(format!(
            "Prometheus at {base} answered {promql:?} with an unexpected result (not a range vector)"
        )));
    };
    let (s, u) = (secs(since), secs(until));
    // Flow labels → (connections, first rise, last rise)
    type Acc = (u64, Option<f64>, Option<f64>);
    let mut flows: BTreeMap<Vec<Option<String>>, Acc> = BTreeMap::new();
    for series in result {
        let metric = series.get("metric").cloned().unwrap_or(Value::Null);
        let samples: Vec<(f64, f64)> = series
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(|p| {
                        let t = p.get(0)?.as_f64()?;
                        let v = p.get(1)?.as_str()?.parse::<f64>().ok()?;
                        Some((t, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (n, first, last) = count_series(&samples, s, u);
        if n == 0 {
            continue;
        }
        let key: Vec<Option<String>> = LABELS.iter().map(|k| label(&metric, k)).collect();
        let e = flows.entry(key).or_insert((0, None, None));
        e.0 += n;
        e.1 = match (e.1, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        e.2 = match (e.2, last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let at = |t: Option<f64>| {
        // A time Prometheus could not have written (negative, not finite, past year 2554) is
        // dropped rather than trusted.
        t.and_then(|t| Duration::try_from_secs_f64(t).ok())
            .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
            .map(Timestamp)
    };
    let mut out = vec![];
    for (k, (n, first, last)) in flows {
        let get = |i: usize| k.get(i).cloned().flatten();
        let scope: Option<Scope> = parse_enum(get(8).as_deref());
        let name = get(7);
        let (host, service) = if scope == Some(Scope::External) {
            (name, None)
        } else {
            (None, name)
        };
        let Some(port) = get(9).and_then(|p| p.parse::<u16>().ok()) else {
            // Without a port the flow cannot be judged; the agent always sets it.
            continue;
        };
        out.push(Observation {
            node: None,
            direction: match get(0).as_deref() {
                Some("ingress") => Direction::Ingress,
                _ => Direction::Egress,
            },
            count: n,
            outcomes: None,
            first_seen: at(first),
            last_seen: at(last),
            process: None,
            src: End {
                namespace: get(1),
                workload: get(2),
                component: get(3),
                ..Default::default()
            },
            dst: End {
                namespace: get(4),
                workload: get(5),
                component: get(6),
                host,
                service,
                scope,
                ..Default::default()
            },
            port,
            recorded: Recorded {
                verdict: parse_enum::<Verdict>(get(10).as_deref()),
                reason: parse_enum::<Reason>(get(11).as_deref()),
                rule: None,
                model: None,
            },
        });
    }
    Ok(out)
}
