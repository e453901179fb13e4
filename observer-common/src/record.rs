//! The flow record, schema version 1: one JSON object per line of the flow log.
//!
//! One record describes one flow (the kernel's flow key: network namespace, direction, client
//! cgroup, addresses, server port) over one flush interval; `count` is the number of connections
//! since the previous record of the same flow, so summing `count` over a log gives exact totals.
//! `src` is always the client (the end that opened the connection) and `dst` the server.
//! Fields that a later stage fills (attribution, verdicts) are always present, `null` until known,
//! so that every consumer can rely on the same shape. README.md documents every field.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    string::String,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Outcome;

/// The version written in every record's `schema` field.
pub const SCHEMA_VERSION: u32 = 1;

/// Readers ignore fields they do not know, so fields can be added within a schema version;
/// a change to an existing field's meaning increments [`SCHEMA_VERSION`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Always [`SCHEMA_VERSION`] for this layout.
    pub schema: u32,
    /// The node whose agent recorded the flow.
    pub node: String,
    /// Always `tcp` for now; DNS over UDP arrives with its own issue.
    pub protocol: Protocol,
    /// `egress`: a connection opened on this node (by a pod or a host process).
    /// `ingress`: a connection accepted on this node.
    pub direction: Direction,
    /// Connections since this flow's previous record.
    pub count: u64,
    /// `count` broken down by how each connection attempt ended; the values sum to `count`.
    pub outcomes: Outcomes,
    /// The connections were already open when the agent started (found by a socket scan, not
    /// seen being opened); `count` is how many were open.
    pub pre_existing: bool,
    /// First and latest connection of this flow counted in this record.
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// Inode number of the network namespace of the socket on this node (`ls -L -i /proc/PID/ns/net`).
    pub netns: u32,
    /// The connecting process (latest one seen for this flow); `null` for ingress records and for
    /// connections whose start was not seen.
    pub process: Option<Process>,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// `expected` or `unexpected` once judged against the architecture; `null` without a model.
    pub verdict: Option<Verdict>,
    /// Why an unexpected flow is unexpected; `null` when expected or not judged.
    pub reason: Option<Reason>,
    /// Id of the architecture rule that allowed the flow.
    pub rule: Option<String>,
    /// Hash of the architecture model in force when the flow was judged (`sha256:<hex>`).
    pub model: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

/// Where an address lies as seen from the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A pod or Service address inside the cluster's pod or service ranges.
    Cluster,
    /// A node's own address or network namespace (kubelet, host-network pods).
    Node,
    /// Anything outside the cluster.
    External,
    /// Loopback inside one network namespace: the connection never left the pod.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Expected,
    Unexpected,
}

/// The single reason an unexpected flow is unexpected, in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    UnknownSource,
    UnknownDestination,
    WrongPort,
    UndocumentedFlow,
}

impl Reason {
    pub const fn name(self) -> &'static str {
        match self {
            Reason::UnknownSource => "unknown-source",
            Reason::UnknownDestination => "unknown-destination",
            Reason::WrongPort => "wrong-port",
            Reason::UndocumentedFlow => "undocumented-flow",
        }
    }
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::Node => "node",
            Scope::External => "external",
            Scope::Local => "local",
        }
    }
}

/// Connection attempts by outcome (see [`Outcome`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcomes {
    pub established: u64,
    pub refused: u64,
    #[serde(rename = "timed-out")]
    pub timed_out: u64,
    pub unreachable: u64,
    pub aborted: u64,
}

impl Outcomes {
    pub fn from_counts(c: &[u64; Outcome::COUNT]) -> Self {
        Outcomes {
            established: c[Outcome::Established as usize],
            refused: c[Outcome::Refused as usize],
            timed_out: c[Outcome::TimedOut as usize],
            unreachable: c[Outcome::Unreachable as usize],
            aborted: c[Outcome::Aborted as usize],
        }
    }
    pub fn get(&self, o: Outcome) -> u64 {
        match o {
            Outcome::Established => self.established,
            Outcome::Refused => self.refused,
            Outcome::TimedOut => self.timed_out,
            Outcome::Unreachable => self.unreachable,
            Outcome::Aborted => self.aborted,
        }
    }
    pub fn total(&self) -> u64 {
        Outcome::ALL.iter().map(|&o| self.get(o)).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Thread id and process id (tgid) as seen from the node's pid namespace.
    pub pid: u32,
    pub tgid: u32,
    /// The task's command name (`comm`, at most 15 characters).
    pub comm: String,
    /// cgroup2 id of the task; identifies the pod (or host service) on the node.
    pub cgroup_id: u64,
}

/// The owning workload of a pod: Deployment (through its ReplicaSet), StatefulSet, DaemonSet,
/// Job, CronJob, or the bare Pod itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

/// One end of a flow. `src` never has `port` (the client's ephemeral port is not recorded) nor
/// `service`; `dst.service` is set when the connection named a Service address or reached a pod
/// behind one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<Workload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The architecture component, external or reserved party (`node`, `kube-apiserver`) this
    /// end belongs to.
    pub component: Option<String>,
    /// A host name for the address (from the pod's DNS answers or the agent's own resolution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub scope: Option<Scope>,
}

/// A wall-clock instant, written as RFC 3339 in UTC with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn unix_millis(&self) -> u64 {
        self.0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64
    }
}

impl Timestamp {
    /// The RFC 3339 text, `YYYY-MM-DDTHH:MM:SS.mmmZ`, as `humantime::format_rfc3339_millis`
    /// writes it; written straight into a buffer because the flow log writes two per record
    /// (through `fmt`, a record's two timestamps cost more than the rest of a cached line).
    pub fn rfc3339_millis(&self) -> [u8; 24] {
        // Clamped to 1970..=9999 (humantime panics before 1970 and fails after 9999); the
        // agent's times come from the boot clock and never get there.
        let since = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_millis(LAST_4_DIGIT_YEAR_SECS * 1000 - 1));
        let secs = since.as_secs();
        let (days, day_secs) = (secs / 86_400, secs % 86_400);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        out[..10].copy_from_slice(&date_text(days));
        let millis = since.subsec_millis() as usize;
        out[11..13].copy_from_slice(two_digits(day_secs as usize / 3600));
        out[14..16].copy_from_slice(two_digits(day_secs as usize / 60 % 60));
        out[17..19].copy_from_slice(two_digits(day_secs as usize % 60));
        out[20] = b'0' + (millis / 100) as u8;
        out[21..23].copy_from_slice(two_digits(millis % 100));
        out
    }
}

/// `YYYY-MM-DD` of the `days`th day after 1970-01-01. The flow log's timestamps fall on very few
/// days, so the text of the last one is kept per thread (the calendar arithmetic cost as much
/// as the rest of a timestamp).
fn date_text(days: u64) -> [u8; 10] {
    std::thread_local! {
        static LAST: core::cell::Cell<(u64, [u8; 10])> = const {
            core::cell::Cell::new((u64::MAX, [0; 10]))
        };
    }
    LAST.with(|last| {
        let (cached_days, text) = last.get();
        if cached_days == days {
            return text;
        }
        let (year, month, day) = civil_from_days(days);
        let mut text = *b"0000-00-00";
        let year = year as usize;
        text[..2].copy_from_slice(two_digits(year / 100));
        text[2..4].copy_from_slice(two_digits(year % 100));
        text[5..7].copy_from_slice(two_digits(month as usize));
        text[8..10].copy_from_slice(two_digits(day as usize));
        last.set((days, text));
        text
    })
}

/// The two decimal digits of `n` (below 100).
fn two_digits(n: usize) -> &'static [u8] {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    &PAIRS[2 * n..2 * n + 2]
}

/// 10000-01-01T00:00:00Z: from there on the year takes five digits.
const LAST_4_DIGIT_YEAR_SECS: u64 = 253_402_300_800;

/// Year, month and day of the `days`th day after 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras (400-year cycles) start on 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.rfc3339_millis();
        // ASCII digits and separators only.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s)
            .map(Timestamp)
            .map_err(|e| serde::de::Error::custom(std::format!("bad timestamp {s:?}: {e}")))
    }
}

/// Totals of a set of records per flow identity, used by tests and reports to check sums.
pub fn sum_counts<'a>(records: impl IntoIterator<Item = &'a FlowRecord>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in records {
        let k = std::format!(
            "{:?} {} {:?}->{:?}:{}",
            r.direction,
            r.netns,
            r.src.ip,
            r.dst.ip,
            r.dst.port.unwrap_or(0)
        );
        *m.entry(k).or_insert(0) += r.count;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn sample() -> FlowRecord {
        FlowRecord {
            schema: SCHEMA_VERSION,
            node: "node-a".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count: 3,
            outcomes: Outcomes {
                established: 2,
                refused: 1,
                ..Default::default()
            },
            pre_existing: false,
            first_seen: Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
            ),
            last_seen: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_001_456)),
            netns: 4026531840,
            process: Some(Process {
                pid: 7,
                tgid: 7,
                comm: "curl".into(),
                cgroup_id: 42,
            }),
            src: Endpoint {
                ip: Some("10.0.0.1".parse().unwrap()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                ip: Some("10.0.0.2".parse().unwrap()),
                port: Some(5672),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            verdict: None,
            reason: None,
            rule: None,
            model: None,
        }
    }

    #[test]
    fn record_round_trips_with_the_documented_shape() {
        let r = sample();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["first_seen"], "2025-11-24T16:00:00.123Z");
        assert_eq!(json["outcomes"]["timed-out"], 0);
        assert_eq!(json["dst"]["port"], 5672);
        assert!(
            json["src"].get("port").is_none(),
            "the client's port is never recorded"
        );
        assert_eq!(json["verdict"], serde_json::Value::Null);
        let back: FlowRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.outcomes.total(), r.count);
    }

    #[test]
    fn fields_added_later_are_ignored_but_missing_ones_are_not() {
        let mut json = serde_json::to_value(sample()).unwrap();
        json["added_in_a_later_release"] = 1.into();
        assert_eq!(
            serde_json::from_value::<FlowRecord>(json.clone()).unwrap(),
            sample()
        );
        json.as_object_mut().unwrap().remove("count");
        let err = serde_json::from_value::<FlowRecord>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("count"), "{err}");
    }

    #[test]
    fn timestamps_read_as_humantime_writes_them_and_clamp_outside_four_digit_years() {
        let at = |ms: u64| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let text = |t: Timestamp| std::string::String::from_utf8(t.rfc3339_millis().to_vec());
        // Every day from 1970 to 2500 (leap years, century rules, month ends), at a time of
        // day and millisecond that change from day to day; then the last millisecond.
        for day in 0..(530 * 366) {
            let ms = day * 86_400_000 + (day * 7_919_123) % 86_400_000;
            let t = at(ms);
            assert_eq!(
                text(t).unwrap(),
                humantime::format_rfc3339_millis(t.0).to_string(),
                "day {day}"
            );
        }
        let last = at(LAST_4_DIGIT_YEAR_SECS * 1000 - 1);
        assert_eq!(text(last).unwrap(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            last.to_string(),
            humantime::format_rfc3339_millis(last.0).to_string()
        );
        assert_eq!(
            text(at(LAST_4_DIGIT_YEAR_SECS * 1000 + 86_400_000)).unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        let before = Timestamp(SystemTime::UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(text(before).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_042).to_string(), "2000-02-29T00:00:00.042Z");
    }

    #[test]
    fn timestamps_alternating_between_days_keep_each_its_own_date() {
        // The date of the last day written is kept per thread: alternating days must not mix.
        let at = |ms: u64| Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let days = [20_418_u64, 20_419, 11_016];
        for round in 0..50_u64 {
            for (i, day) in days.iter().enumerate() {
                let ms = day * 86_400_000 + (round * 1_234_567 + i as u64 * 999) % 86_400_000;
                assert_eq!(
                    std::string::String::from_utf8(at(ms).rfc3339_millis().to_vec()).unwrap(),
                    humantime::format_rfc3339_millis(at(ms).0).to_string(),
                    "round {round}, day {day}"
                );
            }
        }
    }
}
