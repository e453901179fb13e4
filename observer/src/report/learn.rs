//! `observer learn`: a draft architecture from observed traffic.
//!
//! - **Components** from workloads: the party the agent attributed (`component`) when the record
//!   names one, else one per namespace + workload, named after the workload, with the selector
//!   `app.kubernetes.io/name: <workload>`: records carry no pod labels, so that is a guess the
//!   draft marks `# REVIEW`.
//! - **Externals** from destinations (and ingress clients) outside the cluster: by `host` when
//!   the record names one, else by the address as a /32 or /128 range.
//! - **Flows**: one per observed pair of parties and port, with its counts in a comment.
//! - `node` and `kube-apiserver` as the agent attributed them; loopback flows (`local`) are
//!   expected without a flow and left out; ends the draft cannot name (a cluster address without
//!   a pod) are listed in `# REVIEW` comments and left out.
//!
//! `--inventory` is accepted but not read yet: deriving selectors from pod labels needs the
//! Kubernetes index (another branch). The draft says so.
//!
//! The draft is validated before it is written, and every record it learned from is judged
//! expected by it (tested).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
};

use observer_common::record::{Direction, Endpoint, FlowRecord, Outcomes, Scope, Timestamp};

use super::{
    EXIT_BAD_INPUT, EXIT_CONFORMANT, InputError,
    model::{Observation, outcomes_text, pair_keys},
    read_flow_logs,
};
use crate::architecture::{
    API_VERSION, Architecture, DEFAULT_SELECTOR_LABEL, KIND, KUBE_APISERVER, NODE,
};

/// Options of `observer learn`.
#[derive(Clone, Debug, Default)]
pub struct LearnOptions {
    /// `--flow-log FILE` (repeatable): the observed traffic.
    pub flow_logs: Vec<PathBuf>,
    /// `--inventory FILE`: components take the labels their pods carry there as selectors;
    /// without it, selectors are guessed from workload names and marked for review.
    pub inventory: Option<PathBuf>,
    /// `--output FILE`; default stdout.
    pub output: Option<PathBuf>,
    /// `--name`: the draft's `metadata.name` (default `learned`).
    pub name: Option<String>,
}

/// `observer learn`: writes the draft and returns 0, or 2 for unusable input (no readable
/// record, an unreadable file, an unwritable output).
pub fn learn_command(opts: &LearnOptions) -> i32 {
    learn_to(opts, &mut io::stdout().lock(), &mut io::stderr().lock())
}

/// [`learn_command`] with the standard streams given.
pub fn learn_to(opts: &LearnOptions, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match learn(opts, err) {
        Ok(draft) => {
            let written = match &opts.output {
                None => out
                    .write_all(draft.yaml.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write the draft to stdout: {e}")),
                Some(p) => std::fs::write(p, &draft.yaml)
                    .map_err(|e| format!("cannot write {}: {e}", p.display())),
            };
            if let Err(e) = written {
                let _ = writeln!(err, "error: {e}");
                return EXIT_BAD_INPUT;
            }
            let _ = writeln!(
                err,
                "draft: {} components, {} externals, {} flows from {} records; {} left out; review every \"# REVIEW:\" line, then `observer validate`",
                draft.components, draft.externals, draft.flows, draft.records, draft.left_out
            );
            EXIT_CONFORMANT
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_BAD_INPUT
        }
    }
}

fn learn(opts: &LearnOptions, err: &mut dyn Write) -> Result<Draft, InputError> {
    if opts.flow_logs.is_empty() {
        return Err(InputError(
            "nothing to learn from: give --flow-log FILE (repeatable)".into(),
        ));
    }
    let selectors = match &opts.inventory {
        Some(inv) => selectors_from_inventory(inv).map_err(InputError)?,
        None => Selectors::new(),
    };
    let logs = read_flow_logs(&opts.flow_logs, err)?;
    if logs.records.is_empty() {
        return Err(InputError(format!(
            "no flow records to learn from ({} corrupt lines skipped)",
            logs.stats.corrupt_lines
        )));
    }
    let mut header = vec![format!(
        "from {} flow records in: {}",
        logs.records.len(),
        opts.flow_logs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )];
    if logs.stats.corrupt_lines > 0 {
        header.push(format!(
            "{} corrupt lines were skipped",
            logs.stats.corrupt_lines
        ));
    }
    if let Some(inv) = &opts.inventory {
        header.push(format!(
            "selectors from the pods' labels in {}",
            inv.display()
        ));
    }
    let name = opts.name.clone().unwrap_or_else(|| "learned".to_owned());
    let draft = draft_with(&logs.records, &name, &header, &selectors);
    // The draft must be a model the agent accepts; anything else is a bug here, reported as such.
    Architecture::from_yaml(&draft.yaml, "the learned draft").map_err(|e| {
        InputError(format!(
            "the learned draft does not validate (a bug in observer learn):\n{e}"
        ))
    })?;
    Ok(draft)
}

/// A draft architecture and what went into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub yaml: String,
    pub components: usize,
    pub externals: usize,
    pub flows: usize,
    pub records: usize,
    /// Records left out: loopback ones (expected anyway) and those with an end the draft cannot
    /// name.
    pub left_out: usize,
}

#[derive(Clone, Debug, Default)]
struct LComponent {
    namespace: String,
    /// Workloads seen behind it (kind name).
    workloads: BTreeSet<String>,
    /// The record named it (the agent's attribution) rather than the draft deriving it.
    from_agent: bool,
    /// Workload name for the guessed selector.
    selector_name: String,
}

#[derive(Clone, Debug, Default)]
struct LExternal {
    host: Option<String>,
    cidr: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct LFlow {
    /// Counted once: an `ingress` record whose client's `egress` record is in the input adds
    /// to `accepted` only.
    connections: u64,
    accepted: u64,
    records: u64,
    outcomes: Outcomes,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    processes: BTreeSet<String>,
}

/// A name the architecture accepts: lowercase letters, digits, '-' and '.', alphanumeric ends.
fn sanitize(s: &str) -> String {
    let mapped: String = s
        .trim_end_matches('.')
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut out: String = trimmed.chars().take(240).collect();
    out = out
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if out.is_empty() {
        out = "unnamed".into();
    }
    if out == NODE || out == KUBE_APISERVER {
        out.push_str("-workload");
    }
    out
}

fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_host(s: &str) -> bool {
    let h = s.trim_end_matches('.');
    !h.is_empty()
        && h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

struct Learner {
    components: BTreeMap<String, LComponent>,
    /// (namespace, workload) → component name, for records without a component.
    by_workload: BTreeMap<(String, String), String>,
    externals: BTreeMap<String, LExternal>,
    flows: BTreeMap<(String, String, u16), LFlow>,
    /// Port-forwards into a component, by port: the agent records them as loopback connections
    /// inside the destination pod whose source (the container runtime) it leaves unnamed.
    port_forwards: BTreeMap<(String, u16), u64>,
    left_out: Vec<String>,
    local: u64,
}

enum End {
    Party(String),
    LeftOut(String),
}

impl Learner {
    fn end(&mut self, e: &Endpoint, is_src: bool) -> End {
        match e.component.as_deref() {
            Some(NODE) => return End::Party(NODE.into()),
            Some(KUBE_APISERVER) => return End::Party(KUBE_APISERVER.into()),
            _ => {}
        }
        match e.scope {
            Some(Scope::Node) => return End::Party(NODE.into()),
            Some(Scope::External) => return self.external(e, is_src),
            _ => {}
        }
        let Some(ns) = e.namespace.as_deref().filter(|n| is_namespace(n)) else {
            return End::LeftOut(match e.ip {
                Some(ip) => format!("{ip} (a cluster address without a known pod)"),
                None => "an end without address or pod".into(),
            });
        };
        let wl = e
            .workload
            .as_ref()
            .map(|w| (w.kind.clone(), w.name.clone()));
        if let Some(c) = e.component.as_deref()
            && sanitize(c) == c
        {
            let entry = self
                .components
                .entry(c.to_owned())
                .or_insert_with(|| LComponent {
                    namespace: ns.to_owned(),
                    from_agent: true,
                    selector_name: c.to_owned(),
                    ..Default::default()
                });
            if entry.namespace == ns {
                entry.from_agent = true;
                if let Some((k, n)) = &wl {
                    entry.workloads.insert(format!("{k} {n}"));
                }
                return End::Party(c.to_owned());
            }
            // Same name in another namespace: fall through to a workload-derived component.
        }
        let Some((kind, wname)) = wl else {
            return End::LeftOut(format!(
                "{ns}/{} (a pod without a known workload)",
                e.pod.as_deref().unwrap_or("?")
            ));
        };
        let key = (ns.to_owned(), wname.clone());
        if let Some(n) = self.by_workload.get(&key) {
            return End::Party(n.clone());
        }
        let base = sanitize(&wname);
        let mut name = base.clone();
        let mut i = 1;
        loop {
            match self.components.get(&name) {
                Some(c) if c.namespace == ns && c.selector_name == wname => break,
                None if !self.externals.contains_key(&name) => break,
                _ => {
                    i += 1;
                    name = if i == 2 {
                        format!("{base}-{}", sanitize(ns))
                    } else {
                        format!("{base}-{}-{i}", sanitize(ns))
                    };
                }
            }
        }
        let c = self
            .components
            .entry(name.clone())
            .or_insert_with(|| LComponent {
                namespace: ns.to_owned(),
                selector_name: wname.clone(),
                ..Default::default()
            });
        c.workloads.insert(format!("{kind} {wname}"));
        self.by_workload.insert(key, name.clone());
        End::Party(name)
    }

    fn external(&mut self, e: &Endpoint, is_src: bool) -> End {
        let (base, ext) = if let Some(h) = e.host.as_deref().filter(|h| is_host(h)) {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            (
                sanitize(&h),
                LExternal {
                    host: Some(h),
                    cidr: None,
                },
            )
        } else if let Some(ip) = e.ip {
            let cidr = match ip {
                IpAddr::V4(_) => format!("{ip}/32"),
                IpAddr::V6(_) => format!("{ip}/128"),
            };
            (
                sanitize(&format!("ip-{}", ip.to_string().replace([':', '.'], "-"))),
                LExternal {
                    host: None,
                    cidr: Some(cidr),
                },
            )
        } else {
            return End::LeftOut(format!(
                "an outside {} without address or host name",
                if is_src { "client" } else { "destination" }
            ));
        };
        let mut name = base.clone();
        let mut i = 1;
        loop {
            match self.externals.get(&name) {
                Some(x) if x.host == ext.host && x.cidr == ext.cidr => return End::Party(name),
                None if !self.components.contains_key(&name) => break,
                _ => {
                    i += 1;
                    name = format!(
                        "{base}-external{}",
                        if i == 2 { String::new() } else { i.to_string() }
                    );
                }
            }
        }
        self.externals.insert(name.clone(), ext);
        End::Party(name)
    }
}

/// The draft for `records`; `header` lines open the file as comments.
/// Pod labels by (namespace, workload name), from an inventory: the labels every pod of the
/// workload carries, without the per-pod and per-revision ones.
pub type Selectors = BTreeMap<(String, String), BTreeMap<String, String>>;

/// Labels Kubernetes sets per revision or per pod: never part of a component's selector.
const VOLATILE_LABELS: [&str; 6] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
];

/// The common, stable labels of each workload's pods in an inventory file.
pub fn selectors_from_inventory(path: &std::path::Path) -> Result<Selectors, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read inventory {}: {e}", path.display()))?;
    let objects = crate::inventory::offline::parse(path, &text).map_err(|e| e.to_string())?;
    let mut out: Selectors = BTreeMap::new();
    for pod in &objects.pods {
        let meta = &pod.metadata;
        let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
            continue;
        };
        let labels: BTreeMap<String, String> = meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                !VOLATILE_LABELS.contains(&k.as_str()) && !k.starts_with("batch.kubernetes.io/")
            })
            .collect();
        let workload = crate::inventory::index::resolve_workload(
            name,
            &meta.labels.clone().unwrap_or_default(),
            meta.owner_references.as_deref().unwrap_or_default(),
        );
        out.entry((ns.clone(), workload.name))
            .and_modify(|common| common.retain(|k, v| labels.get(k) == Some(v)))
            .or_insert(labels);
    }
    out.retain(|_, labels| !labels.is_empty());
    Ok(out)
}

pub fn draft(records: &[FlowRecord], name: &str, header: &[String]) -> Draft {
    draft_with(records, name, header, &Selectors::new())
}

/// A draft whose components take their selectors from `selectors` where it knows the workload.
pub fn draft_with(
    records: &[FlowRecord],
    name: &str,
    header: &[String],
    selectors: &Selectors,
) -> Draft {
    let mut l = Learner {
        components: BTreeMap::new(),
        by_workload: BTreeMap::new(),
        externals: BTreeMap::new(),
        flows: BTreeMap::new(),
        left_out: vec![],
        local: 0,
        port_forwards: BTreeMap::new(),
    };
    let mut left_out = 0;
    // Components the agent named first, so derived names steer clear of them.
    let mut ordered: Vec<&FlowRecord> = records.iter().collect();
    ordered.sort_by_key(|r| {
        (
            r.src.component.is_none() && r.dst.component.is_none(),
            r.direction == Direction::Ingress,
        )
    });
    let egress: BTreeSet<(String, String)> = records
        .iter()
        .filter(|r| r.direction == Direction::Egress)
        .flat_map(|r| pair_keys(&Observation::from_record(r)))
        .collect();
    let mut first: Option<Timestamp> = None;
    let mut last: Option<Timestamp> = None;
    for r in ordered {
        let duplicate = r.direction == Direction::Ingress
            && pair_keys(&Observation::from_record(r))
                .iter()
                .any(|k| egress.contains(k));
        first = Some(first.map_or(r.first_seen, |f| f.min(r.first_seen)));
        last = Some(last.map_or(r.last_seen, |x| x.max(r.last_seen)));
        if r.dst.scope == Some(Scope::Local)
            && r.src.component.is_none()
            && let (Some(to), Some(port)) = (&r.dst.component, r.dst.port)
        {
            *l.port_forwards.entry((to.clone(), port)).or_default() += r.count;
            continue;
        }
        if r.dst.scope == Some(Scope::Local) {
            l.local += r.count;
            left_out += 1;
            continue;
        }
        let Some(port) = r.dst.port else {
            left_out += 1;
            continue;
        };
        let (src, dst) = (l.end(&r.src, true), l.end(&r.dst, false));
        match (src, dst) {
            (End::Party(a), End::Party(b)) => {
                if l.externals.contains_key(&a) && l.externals.contains_key(&b) {
                    l.left_out
                        .push(format!("{a} -> {b}:{port}: between two outside ends"));
                    left_out += 1;
                    continue;
                }
                let f = l.flows.entry((a, b, port)).or_default();
                if duplicate {
                    f.accepted += r.count;
                    continue;
                }
                f.connections += r.count;
                f.records += 1;
                let o = &mut f.outcomes;
                o.established += r.outcomes.established;
                o.refused += r.outcomes.refused;
                o.timed_out += r.outcomes.timed_out;
                o.unreachable += r.outcomes.unreachable;
                o.aborted += r.outcomes.aborted;
                f.first = Some(f.first.map_or(r.first_seen, |x| x.min(r.first_seen)));
                f.last = Some(f.last.map_or(r.last_seen, |x| x.max(r.last_seen)));
                f.processes
                    .extend(r.process.as_ref().map(|p| p.comm.clone()));
            }
            (a, b) => {
                let what = |e: &End| match e {
                    End::Party(p) => p.clone(),
                    End::LeftOut(w) => w.clone(),
                };
                l.left_out.push(format!(
                    "{} -> {}:{port} ({} connections)",
                    what(&a),
                    what(&b),
                    r.count
                ));
                left_out += 1;
            }
        }
    }

    let mut y = String::new();
    y.push_str("# Draft architecture learned by `observer learn`");
    for h in header {
        y.push_str(&format!("\n# {h}"));
    }
    if let (Some(f), Some(t)) = (first, last) {
        y.push_str(&format!("\n# Traffic observed between {f} and {t}."));
    }
    y.push_str(
        "\n# It documents what was observed, not what should happen: remove every flow that must not\n\
         # happen, give each component its real selector, and decide each \"# REVIEW:\" line.\n\
         # Then check it: observer validate FILE\n",
    );
    y.push_str(&format!(
        "apiVersion: {API_VERSION}\nkind: {KIND}\nmetadata:\n  name: {}\n",
        q(&sanitize(name))
    ));
    y.push_str("  description: \"Draft learned from observed traffic; review before use\"\n");

    if l.components.is_empty() {
        y.push_str("components: []\n");
    } else {
        y.push_str("components:\n");
    }
    for (name, c) in &l.components {
        y.push_str(&format!(
            "  - name: {}\n    namespace: {}\n",
            q(name),
            q(&c.namespace)
        ));
        let wls: Vec<&str> = c.workloads.iter().map(String::as_str).collect();
        if let Some(labels) = selectors.get(&(c.namespace.clone(), c.selector_name.clone())) {
            y.push_str("    # REVIEW: selector: the labels every pod of the workload carries in the inventory.\n    selector:\n");
            for (k, v) in labels {
                y.push_str(&format!("      {}: {}\n", q(k), q(v)));
            }
            continue;
        }
        if c.from_agent {
            y.push_str(&format!(
                "    # REVIEW: named by the agent's attribution{}; records carry no pod labels, so the\n    # selector below is the default guess: write the labels its pods really carry.\n",
                if wls.is_empty() { String::new() } else { format!(" (workloads: {})", wls.join(", ")) }
            ));
        } else {
            y.push_str(&format!(
                "    # REVIEW: selector guessed from the workload name ({}); records carry no pod labels.\n",
                wls.join(", ")
            ));
        }
        y.push_str(&format!(
            "    selector:\n      {}: {}\n",
            q(DEFAULT_SELECTOR_LABEL),
            q(&c.selector_name)
        ));
    }

    if l.externals.is_empty() {
        y.push_str("externals: []\n");
    } else {
        y.push_str("externals:\n");
    }
    for (name, e) in &l.externals {
        y.push_str(&format!("  - name: {}\n", q(name)));
        if let Some(h) = &e.host {
            y.push_str(&format!("    hosts: [{}]\n", q(h)));
        }
        if let Some(c) = &e.cidr {
            y.push_str(
                "    # REVIEW: one address, without a host name: name the service it belongs to, and widen the\n    # range (or give its host name) if the service has several addresses.\n",
            );
            y.push_str(&format!("    cidrs: [{}]\n", q(c)));
        }
    }

    if l.flows.is_empty() {
        y.push_str("flows: []\n");
    } else {
        y.push_str("flows:\n");
    }
    for ((from, to, port), f) in &l.flows {
        let span = match (f.first, f.last) {
            (Some(a), Some(b)) => format!(", first seen {a}, last seen {b}"),
            _ => String::new(),
        };
        let procs = if f.processes.is_empty() {
            String::new()
        } else {
            format!(
                ", by {}",
                f.processes.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        if f.records == 0 {
            y.push_str(&format!(
                "  # {} accepted by the server only (their clients were counted under another address or port)\n",
                plural(f.accepted, "connection", "connections")
            ));
        } else {
            y.push_str(&format!(
                "  # {} ({}){span}{procs}\n",
                plural(f.connections, "connection", "connections"),
                outcomes_text(Some(&f.outcomes))
            ));
        }
        if f.outcomes.established == 0 && f.connections > 0 {
            y.push_str(
                "  # REVIEW: no connection was established: something blocks or refuses this flow; keep it\n  # only if it is meant to work.\n",
            );
        }
        if l.externals.get(from).is_some_and(|e| e.cidr.is_some()) {
            y.push_str(
                "  # REVIEW: clients from one outside address; if any client may connect, use one external\n  # with cidrs [0.0.0.0/0, \"::/0\"] instead.\n",
            );
        }
        if l.externals.contains_key(to) {
            y.push_str(
                "  # REVIEW: traffic leaving the cluster: confirm this dependency is intended.\n",
            );
        }
        y.push_str(&format!(
            "  - from: {}\n    to: {}\n    ports: [{port}]\n",
            q(from),
            q(to)
        ));
    }
    for ((to, port), n) in &l.port_forwards {
        if !l.components.contains_key(to) {
            continue;
        }
        y.push_str(&format!(
            "  # {} port-forwarded into {to} (the initiator is not visible on the node)\n  # REVIEW: port-forwarding bypasses network policy: keep it only if it is meant to happen.\n",
            plural(*n, "connection", "connections")
        ));
        y.push_str(&format!(
            "  - from: \"*\"\n    to: {}\n    ports: [{port}]\n    via: port-forward\n",
            q(to)
        ));
    }
    if l.local > 0 {
        y.push_str(&format!(
            "# {} connections stayed inside one pod (loopback): expected without a flow (rule local).\n",
            l.local
        ));
    }
    if !l.left_out.is_empty() {
        y.push_str("# REVIEW: left out, the draft cannot name one of their ends:\n");
        let mut seen = BTreeSet::new();
        for w in &l.left_out {
            if seen.insert(w) {
                y.push_str(&format!("#   {}\n", w.replace('\n', " ")));
            }
        }
    }
    Draft {
        yaml: y,
        components: l.components.len(),
        externals: l.externals.len(),
        flows: l.flows.len(),
        records: records.len(),
        left_out,
    }
}
