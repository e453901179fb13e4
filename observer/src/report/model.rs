//! The report's data: observations from either source, judged against the architecture under
//! review and aggregated into coverage, unexpected flows and a diagram. Pure; serialized as the
//! JSON report (docs/report-schema.md) and rendered by the Markdown and HTML writers.
//!
//! Decisions, documented in docs/report.md:
//! - **Re-judging.** Every observation is judged again with the architecture under review, so
//!   the report reflects that model, whatever model (if any) judged the records. The parties are
//!   those the agent attributed (`src.component`, `dst.component`), checked against the model;
//!   outside ends are re-attributed by `dst.host` and address (the model's `hosts`/`cidrs`). A
//!   record the agent judged with *this very model* (same hash) keeps the agent's verdict: the
//!   agent knew facts the record does not carry (a Service's target port, a port-forward).
//! - **Counting once.** A connection between two observed ends is recorded twice: `egress` on the
//!   client's node, `ingress` on the server's. It is counted at the client; an `ingress`
//!   observation counts only when no `egress` observation of the window has the same client and
//!   server (the client is outside the cluster, or its node's log was not given).
//! - **Window.** A record belongs to the window when its `last_seen` falls inside it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

use observer_common::record::{Direction, FlowRecord, Outcomes, Reason, Scope, Timestamp, Verdict};
use serde::Serialize;

use super::{CorruptLine, EXIT_CONFORMANT, EXIT_UNEXPECTED, Window, fmt_time};
use crate::architecture::{
    Architecture, DEFAULT_SELECTOR_LABEL, FlowFacts, Judgement, KUBE_APISERVER, LOCAL_RULE_ID,
    NODE, Party, RuleEnd,
};

/// `schema_version` of the JSON report.
pub const SCHEMA_VERSION: u32 = 1;

/// One end of an observed flow, as far as the source knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub ip: Option<IpAddr>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Workload name (its kind is not needed here).
    pub workload: Option<String>,
    pub service: Option<String>,
    /// The party the agent attributed: a component, external, `node` or `kube-apiserver`.
    pub component: Option<String>,
    pub host: Option<String>,
    pub scope: Option<Scope>,
}

/// What the recording agent concluded, if it judged the flow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    pub verdict: Option<Verdict>,
    pub reason: Option<Reason>,
    pub rule: Option<String>,
    pub model: Option<String>,
}

/// One flow-log record or one Prometheus series in the window: `count` connections from `src`
/// to `dst` on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub node: Option<String>,
    pub direction: Direction,
    pub count: u64,
    /// `None` when the source does not break counts down by outcome (Prometheus).
    pub outcomes: Option<Outcomes>,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub process: Option<String>,
    pub src: End,
    pub dst: End,
    pub port: u16,
    pub recorded: Recorded,
}

impl Observation {
    pub fn from_record(r: &FlowRecord) -> Observation {
        let end = |e: &observer_common::record::Endpoint| End {
            ip: e.ip,
            namespace: e.namespace.clone(),
            pod: e.pod.clone(),
            workload: e.workload.as_ref().map(|w| w.name.clone()),
            service: e.service.clone(),
            component: e.component.clone(),
            host: e.host.clone(),
            scope: e.scope,
        };
        Observation {
            node: Some(r.node.clone()),
            direction: r.direction,
            count: r.count,
            outcomes: Some(r.outcomes),
            first_seen: Some(r.first_seen),
            last_seen: Some(r.last_seen),
            process: r.process.as_ref().map(|p| p.comm.clone()),
            src: end(&r.src),
            dst: end(&r.dst),
            port: r.dst.port.unwrap_or(0),
            recorded: Recorded {
                verdict: r.verdict,
                reason: r.reason,
                rule: r.rule.clone(),
                model: r.model.clone(),
            },
        }
    }
}

/// The party an end belongs to under `arch`; see the module comment for the order.
pub fn party(arch: &Architecture, end: &End) -> Party {
    if end.scope == Some(Scope::External) {
        if let Some(name) = end.host.as_deref().and_then(|h| arch.external_for_host(h)) {
            return Party::External(name.to_owned());
        }
        if let Some(name) = end.ip.and_then(|ip| arch.external_for_ip(ip)) {
            return Party::External(name.to_owned());
        }
    }
    if let Some(c) = end.component.as_deref() {
        match c {
            NODE => return Party::Node,
            KUBE_APISERVER => return Party::KubeApiserver,
            _ if arch.components().iter().any(|x| x.name == c) => {
                return Party::Component(c.to_owned());
            }
            _ if arch.externals().iter().any(|x| x.name == c) => {
                return Party::External(c.to_owned());
            }
            _ => {}
        }
    }
    if end.scope == Some(Scope::Node) {
        return Party::Node;
    }
    // The record names no component of this model: match the pod's workload to a component of
    // its namespace named after it or selecting `app.kubernetes.io/name: <workload>` (records
    // carry no pod labels, so this is the only selector that can be checked).
    if let (Some(ns), Some(wl)) = (end.namespace.as_deref(), end.workload.as_deref()) {
        let hit = arch.components().iter().find(|c| {
            c.namespace == ns
                && (c.name == wl
                    || (c.selector.len() == 1
                        && c.selector.get(DEFAULT_SELECTOR_LABEL).map(String::as_str) == Some(wl)))
        });
        if let Some(c) = hit {
            return Party::Component(c.name.clone());
        }
    }
    Party::Unknown
}

/// The name of a known party; `None` for [`Party::Unknown`].
pub fn party_name(p: &Party) -> Option<&str> {
    match p {
        Party::Component(n) | Party::External(n) => Some(n),
        Party::Node => Some(NODE),
        Party::KubeApiserver => Some(KUBE_APISERVER),
        Party::Unknown => None,
    }
}

/// Judges one observation; the flag says the recorded verdict was kept (same model hash).
pub fn judge(arch: &Architecture, o: &Observation) -> (Judgement, bool) {
    if o.recorded.model.as_deref() == Some(arch.hash()) {
        match (o.recorded.verdict, &o.recorded.rule, o.recorded.reason) {
            (Some(Verdict::Expected), Some(rule), _) => {
                return (Judgement::Expected { rule: rule.clone() }, true);
            }
            (Some(Verdict::Unexpected), _, Some(reason)) => {
                return (Judgement::Unexpected { reason }, true);
            }
            _ => {}
        }
    }
    let facts = FlowFacts {
        src: party(arch, &o.src),
        dst: party(arch, &o.dst),
        // A record without a scope is taken as crossing the network (never "local").
        dst_scope: o.dst.scope.unwrap_or(Scope::Cluster),
        port: o.port,
        target_port: None,
        port_forward: false,
    };
    (arch.judge(&facts), false)
}

/// Counts of what the source yielded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InputStats {
    /// Flow-log lines read (blank lines not counted); 0 for Prometheus.
    pub lines: u64,
    /// Observations in the window: records, or Prometheus series with connections.
    pub records: u64,
    pub records_outside_window: u64,
    pub corrupt_lines: u64,
    /// Each corrupt line: file, 1-based line number, what is wrong.
    pub corrupt: Vec<CorruptLine>,
    /// `ingress` observations not counted because the client's `egress` ones were.
    pub ingress_duplicates: u64,
    /// Observations judged by this report / whose recorded verdict (same model) was kept.
    pub rejudged: u64,
    pub verdicts_kept: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceInfo {
    /// `flow-logs` or `prometheus`.
    pub kind: &'static str,
    pub files: Vec<String>,
    pub url: Option<String>,
    /// `connection` (flow logs: addresses, processes, outcomes) or `workload` (Prometheus).
    pub granularity: &'static str,
    pub notes: Vec<String>,
}

impl SourceInfo {
    pub fn flow_logs(files: &[PathBuf]) -> SourceInfo {
        SourceInfo {
            kind: "flow-logs",
            files: files.iter().map(|p| p.display().to_string()).collect(),
            url: None,
            granularity: "connection",
            notes: vec![],
        }
    }

    pub fn prometheus(url: &str) -> SourceInfo {
        SourceInfo {
            kind: "prometheus",
            files: vec![],
            url: Some(url.to_owned()),
            granularity: "workload",
            notes: vec![
                "Cluster-wide from Prometheus (observer_connections_total): workload granularity, \
                 without addresses, processes, outcomes or nodes."
                    .into(),
                "First/last seen are the Prometheus scrapes at which a count rose (scrape-interval \
                 resolution)."
                    .into(),
            ],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HashSeen {
    pub hash: String,
    pub records: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub file: String,
    pub hash: String,
    /// Model hashes the observations were judged with by the agents, with their record counts.
    pub hashes_in_input: Vec<HashSeen>,
    /// Observations no agent judged (`model` null).
    pub records_without_model: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WindowInfo {
    /// The bounds asked for (`null`: unbounded).
    pub since: Option<String>,
    pub until: Option<String>,
    /// The window the report speaks for: the bounds, or where unbounded the earliest
    /// `first_seen` / latest `last_seen` observed.
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerdictInfo {
    pub conformant: bool,
    /// 0 conformant, 1 unexpected flows.
    pub exit_code: i32,
    /// The line a reviewer quotes.
    pub summary: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Connections counted (each once, see `input.ingress_duplicates`).
    pub connections: u64,
    pub expected: u64,
    pub unexpected: u64,
    /// Expected connections inside one pod (rule `local`).
    pub local: u64,
    pub outcomes: Option<Outcomes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CoveredFlow {
    pub rule: String,
    pub from: String,
    pub to: String,
    pub ports: Vec<u16>,
    pub via: &'static str,
    pub description: Option<String>,
    pub seen: bool,
    pub connections: u64,
    pub records: u64,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub outcomes: Option<Outcomes>,
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub documented: usize,
    pub seen: usize,
    pub unseen: usize,
    /// Ids of the documented flows never seen in the window: stale documentation, or traffic
    /// the window missed.
    pub unseen_rules: Vec<String>,
    pub flows: Vec<CoveredFlow>,
}

/// One end of an unexpected flow as shown to a reviewer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PartyInfo {
    /// What to call it: host name, `namespace/workload`, `namespace/service`, party, or address.
    pub label: String,
    /// The model's party (component, external, `node`, `kube-apiserver`); `null` when unknown.
    pub party: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub service: Option<String>,
    pub host: Option<String>,
    pub addresses: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnexpectedFlow {
    pub destination: PartyInfo,
    pub port: u16,
    pub scope: Option<&'static str>,
    pub reason: &'static str,
    pub connections: u64,
    pub records: u64,
    pub outcomes: Option<Outcomes>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub processes: Vec<String>,
    pub nodes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceGroup {
    pub source: PartyInfo,
    pub connections: u64,
    pub flows: Vec<UnexpectedFlow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unexpected {
    pub flows: usize,
    pub sources: usize,
    pub connections: u64,
    pub by_source: Vec<SourceGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiagramNode {
    /// Unique; the `data-from`/`data-to` of edges.
    pub name: String,
    /// `component`, `external`, `reserved` (node, kube-apiserver), `any` (`*`), `unknown`.
    pub kind: &'static str,
}

/// Style of a diagram edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeStyle {
    /// Documented and seen.
    Seen,
    /// Documented, never seen in the window.
    Unseen,
    /// Seen, not documented (unexpected).
    Undocumented,
}

impl EdgeStyle {
    pub const fn name(self) -> &'static str {
        match self {
            EdgeStyle::Seen => "seen",
            EdgeStyle::Unseen => "unseen",
            EdgeStyle::Undocumented => "undocumented",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiagramEdge {
    pub from: String,
    pub to: String,
    pub style: EdgeStyle,
    pub ports: Vec<u16>,
    /// Documented edges: the rules joining the two ends (several rules, one edge).
    pub rules: Vec<String>,
    pub connections: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagram {
    pub nodes: Vec<DiagramNode>,
    pub edges: Vec<DiagramEdge>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutcomeMeaning {
    pub outcome: &'static str,
    pub meaning: &'static str,
}

/// What each connection outcome is evidence of.
pub const OUTCOME_MEANINGS: [OutcomeMeaning; 5] = [
    OutcomeMeaning {
        outcome: "established",
        meaning: "the connection was made: nothing blocked the flow",
    },
    OutcomeMeaning {
        outcome: "timed-out",
        meaning: "no answer to the SYN: the usual signature of a network policy or firewall that drops",
    },
    OutcomeMeaning {
        outcome: "refused",
        meaning: "a reset answered the SYN: usually nothing listened on the port",
    },
    OutcomeMeaning {
        outcome: "unreachable",
        meaning: "an ICMP error answered: a REJECT rule, or no route to the destination",
    },
    OutcomeMeaning {
        outcome: "aborted",
        meaning: "the client gave up before the handshake ended",
    },
];

/// The whole report. Its JSON form is documented in docs/report-schema.md.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub generated_at: String,
    pub verdict: VerdictInfo,
    pub window: WindowInfo,
    pub source: SourceInfo,
    pub model: ModelInfo,
    /// Nodes whose agents recorded the observations (empty for Prometheus).
    pub nodes: Vec<String>,
    pub input: InputStats,
    pub totals: Totals,
    pub coverage: Coverage,
    pub unexpected: Unexpected,
    pub outcome_meanings: Vec<OutcomeMeaning>,
    pub diagram: Diagram,
}

/// Sums outcomes; `None` as soon as one observation has none.
fn add_outcomes(acc: &mut Option<Outcomes>, o: Option<Outcomes>, first: bool) {
    *acc = match (first, *acc, o) {
        (true, _, o) => o,
        (false, Some(a), Some(b)) => Some(Outcomes {
            established: a.established + b.established,
            refused: a.refused + b.refused,
            timed_out: a.timed_out + b.timed_out,
            unreachable: a.unreachable + b.unreachable,
            aborted: a.aborted + b.aborted,
        }),
        _ => None,
    };
}

/// Running totals of a set of observations.
#[derive(Clone, Debug, Default)]
struct Acc {
    connections: u64,
    records: u64,
    outcomes: Option<Outcomes>,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    nodes: BTreeSet<String>,
    processes: BTreeSet<String>,
    addresses_src: BTreeSet<IpAddr>,
    addresses_dst: BTreeSet<IpAddr>,
}

impl Acc {
    fn add(&mut self, o: &Observation) {
        add_outcomes(&mut self.outcomes, o.outcomes, self.records == 0);
        self.connections += o.count;
        self.records += 1;
        if let Some(f) = o.first_seen {
            self.first = Some(self.first.map_or(f, |x| x.min(f)));
        }
        if let Some(l) = o.last_seen {
            self.last = Some(self.last.map_or(l, |x| x.max(l)));
        }
        self.nodes.extend(o.node.clone());
        self.processes.extend(o.process.clone());
        self.addresses_src.extend(o.src.ip);
        self.addresses_dst.extend(o.dst.ip);
    }
}

fn ts(t: Option<Timestamp>) -> Option<String> {
    t.map(|t| t.to_string())
}

/// Keys under which an `ingress` observation is the same connection as an `egress` one: the
/// client (address, else workload, else party) with any name of the server.
pub(super) fn pair_keys(o: &Observation) -> Vec<(String, String)> {
    let client = if let Some(ip) = o.src.ip {
        format!("ip:{ip}")
    } else if let (Some(ns), Some(w)) = (&o.src.namespace, &o.src.workload) {
        format!("w:{ns}/{w}")
    } else if let Some(c) = &o.src.component {
        format!("c:{c}")
    } else {
        return vec![];
    };
    let d = &o.dst;
    let mut servers = vec![];
    if let (Some(ns), Some(w)) = (&d.namespace, &d.workload) {
        servers.push(format!("w:{ns}/{w}"));
    }
    if let (Some(ns), Some(s)) = (&d.namespace, &d.service) {
        servers.push(format!("s:{ns}/{s}"));
    }
    if let Some(c) = &d.component {
        servers.push(format!("c:{c}"));
    }
    if let Some(ip) = d.ip {
        servers.push(format!("ip:{ip}"));
    }
    servers.into_iter().map(|s| (client.clone(), s)).collect()
}

/// Drops `ingress` observations whose connections the client's `egress` ones already count.
fn count_once(observations: Vec<Observation>) -> (Vec<Observation>, u64) {
    let egress: HashSet<(String, String)> = observations
        .iter()
        .filter(|o| o.direction == Direction::Egress)
        .flat_map(pair_keys)
        .collect();
    let before = observations.len();
    let kept: Vec<Observation> = observations
        .into_iter()
        .filter(|o| {
            o.direction == Direction::Egress || !pair_keys(o).iter().any(|k| egress.contains(k))
        })
        .collect();
    let dropped = (before - kept.len()) as u64;
    (kept, dropped)
}

fn src_info(o: &Observation, p: &Party) -> PartyInfo {
    let e = &o.src;
    let label = match (&e.namespace, &e.workload, party_name(p), e.ip) {
        (Some(ns), Some(w), _, _) => format!("{ns}/{w}"),
        (_, _, Some(n), _) => n.to_owned(),
        (_, _, _, Some(ip)) => ip.to_string(),
        _ => "unknown".to_owned(),
    };
    PartyInfo {
        label,
        party: party_name(p).map(str::to_owned),
        namespace: e.namespace.clone(),
        workload: e.workload.clone(),
        service: None,
        host: None,
        addresses: vec![],
    }
}

fn dst_info(o: &Observation, p: &Party) -> PartyInfo {
    let e = &o.dst;
    let label = if let Some(h) = &e.host {
        h.clone()
    } else if let (Some(ns), Some(w)) = (&e.namespace, &e.workload) {
        format!("{ns}/{w}")
    } else if let (Some(ns), Some(s)) = (&e.namespace, &e.service) {
        format!("{ns}/{s}")
    } else if let Some(n) = party_name(p) {
        n.to_owned()
    } else if let Some(ip) = e.ip {
        ip.to_string()
    } else {
        "unknown".to_owned()
    };
    PartyInfo {
        label,
        party: party_name(p).map(str::to_owned),
        namespace: e.namespace.clone(),
        workload: e.workload.clone(),
        service: e.service.clone(),
        host: e.host.clone(),
        addresses: vec![],
    }
}

/// Aggregates judged observations into the report.
pub fn build(
    arch: &Architecture,
    arch_path: &Path,
    window: Window,
    source: SourceInfo,
    observations: Vec<Observation>,
    mut input: InputStats,
    now: SystemTime,
) -> Report {
    let (observations, duplicates) = count_once(observations);
    input.ingress_duplicates = duplicates;
    input.records = observations.len() as u64 + duplicates;

    let mut hashes: BTreeMap<String, u64> = BTreeMap::new();
    let mut without_model = 0;
    let mut nodes = BTreeSet::new();
    let mut all = Acc::default();
    let mut expected = 0;
    let mut local = 0;
    let mut per_rule: BTreeMap<String, Acc> = BTreeMap::new();
    // (source label, destination label, port, scope, reason) → (source, destination, acc)
    type Key = (String, String, u16, Option<Scope>, Reason);
    let mut groups: BTreeMap<Key, (PartyInfo, PartyInfo, Acc)> = BTreeMap::new();
    // Unexpected diagram edges: (from node, to node) → (ports, connections)
    let mut red: BTreeMap<(String, String), (BTreeSet<u16>, u64)> = BTreeMap::new();
    let mut unknown_nodes: Vec<String> = vec![];

    for o in &observations {
        match &o.recorded.model {
            Some(h) => *hashes.entry(h.clone()).or_insert(0) += 1,
            None => without_model += 1,
        }
        nodes.extend(o.node.clone());
        all.add(o);
        let (j, kept) = judge(arch, o);
        if kept {
            input.verdicts_kept += 1;
        } else {
            input.rejudged += 1;
        }
        match j {
            Judgement::Expected { rule } => {
                expected += o.count;
                if rule == LOCAL_RULE_ID {
                    local += o.count;
                }
                per_rule.entry(rule).or_default().add(o);
            }
            Judgement::Unexpected { reason } => {
                let (sp, dp) = (party(arch, &o.src), party(arch, &o.dst));
                let (si, di) = (src_info(o, &sp), dst_info(o, &dp));
                let key = (
                    si.label.clone(),
                    di.label.clone(),
                    o.port,
                    o.dst.scope,
                    reason,
                );
                let from = si.party.clone().unwrap_or_else(|| si.label.clone());
                let to = di.party.clone().unwrap_or_else(|| di.label.clone());
                for (n, known) in [(&from, si.party.is_some()), (&to, di.party.is_some())] {
                    if !known && !unknown_nodes.contains(n) {
                        unknown_nodes.push(n.clone());
                    }
                }
                let e = red.entry((from, to)).or_default();
                e.0.insert(o.port);
                e.1 += o.count;
                groups
                    .entry(key)
                    .or_insert_with(|| (si, di, Acc::default()))
                    .2
                    .add(o);
            }
        }
    }

    // Coverage of the documented flows, in the file's order.
    let flows: Vec<CoveredFlow> = arch
        .rules()
        .iter()
        .map(|r| {
            let acc = per_rule.get(&r.id).cloned().unwrap_or_default();
            CoveredFlow {
                rule: r.id.clone(),
                from: r.from.name().to_owned(),
                to: r.to.name().to_owned(),
                ports: r.ports.clone(),
                via: r.via.name(),
                description: r.description.clone(),
                seen: acc.records > 0,
                connections: acc.connections,
                records: acc.records,
                first_seen: ts(acc.first),
                last_seen: ts(acc.last),
                outcomes: acc.outcomes,
                nodes: acc.nodes.into_iter().collect(),
            }
        })
        .collect();
    let unseen_rules: Vec<String> = flows
        .iter()
        .filter(|f| !f.seen)
        .map(|f| f.rule.clone())
        .collect();
    let coverage = Coverage {
        documented: flows.len(),
        seen: flows.len() - unseen_rules.len(),
        unseen: unseen_rules.len(),
        unseen_rules,
        flows,
    };

    // Unexpected flows by source: most connections first, then by name.
    let mut by_source: BTreeMap<String, SourceGroup> = BTreeMap::new();
    for ((slabel, _, port, scope, reason), (mut si, mut di, acc)) in groups {
        si.addresses = acc.addresses_src.iter().map(ToString::to_string).collect();
        di.addresses = acc.addresses_dst.iter().map(ToString::to_string).collect();
        let g = by_source.entry(slabel).or_insert_with(|| SourceGroup {
            source: si.clone(),
            connections: 0,
            flows: vec![],
        });
        let mut addrs: BTreeSet<String> = g.source.addresses.iter().cloned().collect();
        addrs.extend(si.addresses);
        g.source.addresses = addrs.into_iter().collect();
        g.connections += acc.connections;
        g.flows.push(UnexpectedFlow {
            destination: di,
            port,
            scope: scope.map(Scope::name),
            reason: reason.name(),
            connections: acc.connections,
            records: acc.records,
            outcomes: acc.outcomes,
            first_seen: ts(acc.first),
            last_seen: ts(acc.last),
            processes: acc.processes.into_iter().collect(),
            nodes: acc.nodes.into_iter().collect(),
        });
    }
    let mut by_source: Vec<SourceGroup> = by_source.into_values().collect();
    for g in &mut by_source {
        g.flows.sort_by(|a, b| {
            b.connections
                .cmp(&a.connections)
                .then_with(|| a.destination.label.cmp(&b.destination.label))
                .then(a.port.cmp(&b.port))
        });
    }
    by_source.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then_with(|| a.source.label.cmp(&b.source.label))
    });
    let unexpected = Unexpected {
        flows: by_source.iter().map(|g| g.flows.len()).sum(),
        sources: by_source.len(),
        connections: by_source.iter().map(|g| g.connections).sum(),
        by_source,
    };

    let diagram = diagram(arch, &per_rule, red, unknown_nodes);

    let from = window
        .since
        .map(fmt_time)
        .or_else(|| all.first.map(|t| fmt_time(t.0)));
    let to = window
        .until
        .map(fmt_time)
        .or_else(|| all.last.map(|t| fmt_time(t.0)));
    let window_info = WindowInfo {
        since: window.since.map(fmt_time),
        until: window.until.map(fmt_time),
        from,
        to,
    };
    let verdict = verdict(
        &window_info,
        &unexpected,
        &coverage,
        all.connections,
        &input,
    );

    Report {
        schema_version: SCHEMA_VERSION,
        generated_at: fmt_time(now),
        verdict,
        window: window_info,
        source,
        model: ModelInfo {
            name: arch.name().to_owned(),
            file: arch_path.display().to_string(),
            hash: arch.hash().to_owned(),
            hashes_in_input: hashes
                .into_iter()
                .map(|(hash, records)| HashSeen { hash, records })
                .collect(),
            records_without_model: without_model,
        },
        nodes: nodes.into_iter().collect(),
        input,
        totals: Totals {
            connections: all.connections,
            expected,
            unexpected: unexpected.connections,
            local,
            outcomes: all.outcomes,
        },
        coverage,
        unexpected,
        outcome_meanings: OUTCOME_MEANINGS.to_vec(),
        diagram,
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn verdict(
    w: &WindowInfo,
    u: &Unexpected,
    c: &Coverage,
    connections: u64,
    input: &InputStats,
) -> VerdictInfo {
    let span = match (&w.from, &w.to) {
        (Some(f), Some(t)) => format!(" between {f} and {t}"),
        _ => String::new(),
    };
    let stale = format!(
        "{} of {} documented flows not observed",
        c.unseen, c.documented
    );
    let corrupt = if input.corrupt_lines > 0 {
        format!(
            "; {} skipped",
            plural(input.corrupt_lines, "corrupt line", "corrupt lines")
        )
    } else {
        String::new()
    };
    let conformant = u.flows == 0;
    let summary = if conformant {
        format!(
            "CONFORMANT: no unexpected flows; all {} documented{span}; {stale}{corrupt}",
            plural(connections, "connection was", "connections were"),
        )
    } else {
        format!(
            "NOT CONFORMANT: {} from {} ({}){span}; {stale}{corrupt}",
            plural(u.flows as u64, "unexpected flow", "unexpected flows"),
            plural(u.sources as u64, "source", "sources"),
            plural(u.connections, "connection", "connections"),
        )
    };
    VerdictInfo {
        conformant,
        exit_code: if conformant {
            EXIT_CONFORMANT
        } else {
            EXIT_UNEXPECTED
        },
        summary,
    }
}

/// The architecture's parties as nodes, documented edges (one per pair of ends, seen when any of
/// its rules was) and undocumented ones (one per pair of observed ends).
fn diagram(
    arch: &Architecture,
    per_rule: &BTreeMap<String, Acc>,
    red: BTreeMap<(String, String), (BTreeSet<u16>, u64)>,
    unknown_nodes: Vec<String>,
) -> Diagram {
    let mut nodes: Vec<DiagramNode> = vec![];
    let push = |nodes: &mut Vec<DiagramNode>, name: &str, kind: &'static str| {
        if !nodes.iter().any(|n| n.name == name) {
            nodes.push(DiagramNode {
                name: name.to_owned(),
                kind,
            });
        }
    };
    for c in arch.components() {
        push(&mut nodes, &c.name, "component");
    }
    for e in arch.externals() {
        push(&mut nodes, &e.name, "external");
    }
    let mut edges: Vec<DiagramEdge> = vec![];
    for r in arch.rules() {
        for end in [&r.from, &r.to] {
            match end {
                RuleEnd::AnyComponent => push(&mut nodes, end.name(), "any"),
                RuleEnd::Node | RuleEnd::KubeApiserver => push(&mut nodes, end.name(), "reserved"),
                _ => {}
            }
        }
        let acc = per_rule.get(&r.id);
        let seen = acc.is_some_and(|a| a.records > 0);
        let conns = acc.map_or(0, |a| a.connections);
        match edges.iter_mut().find(|e| {
            e.from == r.from.name() && e.to == r.to.name() && e.style != EdgeStyle::Undocumented
        }) {
            Some(e) => {
                let mut ports: BTreeSet<u16> = e.ports.iter().copied().collect();
                ports.extend(r.ports.iter().copied());
                e.ports = ports.into_iter().collect();
                e.rules.push(r.id.clone());
                e.connections += conns;
                if seen {
                    e.style = EdgeStyle::Seen;
                }
            }
            None => edges.push(DiagramEdge {
                from: r.from.name().to_owned(),
                to: r.to.name().to_owned(),
                style: if seen {
                    EdgeStyle::Seen
                } else {
                    EdgeStyle::Unseen
                },
                ports: r.ports.clone(),
                rules: vec![r.id.clone()],
                connections: conns,
            }),
        }
    }
    for ((from, to), (ports, connections)) in red {
        for n in [&from, &to] {
            if n == NODE || n == KUBE_APISERVER {
                push(&mut nodes, n, "reserved");
            }
        }
        edges.push(DiagramEdge {
            from,
            to,
            style: EdgeStyle::Undocumented,
            ports: ports.into_iter().collect(),
            rules: vec![],
            connections,
        });
    }
    for n in unknown_nodes {
        push(&mut nodes, &n, "unknown");
    }
    Diagram { nodes, edges }
}

/// `2 established, 1 refused` (outcomes with a count only); `n/a` when unknown.
pub fn outcomes_text(o: Option<&Outcomes>) -> String {
    let Some(o) = o else {
        return "n/a".to_owned();
    };
    let parts: Vec<String> = outcome_counts(o)
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Outcome names with their counts, in [`OUTCOME_MEANINGS`] order.
pub fn outcome_counts(o: &Outcomes) -> [(&'static str, u64); 5] {
    [
        ("established", o.established),
        ("timed-out", o.timed_out),
        ("refused", o.refused),
        ("unreachable", o.unreachable),
        ("aborted", o.aborted),
    ]
}

/// What the outcomes present in `o` are evidence of, one sentence each.
pub fn outcome_evidence(o: Option<&Outcomes>) -> Vec<String> {
    let Some(o) = o else { return vec![] };
    outcome_counts(o)
        .iter()
        .zip(OUTCOME_MEANINGS.iter())
        .filter(|((_, n), _)| *n > 0)
        .map(|((name, n), m)| format!("{n} {name}: {}", m.meaning))
        .collect()
}

impl PartyInfo {
    /// The label, with the model's party when it differs (`ns/wl (component x)`).
    pub fn display(&self) -> String {
        match &self.party {
            Some(p) if *p != self.label => format!("{} ({p})", self.label),
            Some(_) => self.label.clone(),
            None => format!("{} (unknown to the model)", self.label),
        }
    }
}
