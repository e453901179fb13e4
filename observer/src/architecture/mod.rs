//! The documented architecture: which workloads (components) and outside endpoints (externals)
//! exist and which flows between them are expected. Loaded from a YAML file (the product's main
//! interface, documented in docs/architecture.md), validated with every problem reported at its
//! line and column, and used to judge each observed flow ([`verdict`]). [`reload`] keeps the
//! model in force current while the file changes under a running agent.
//!
//! Everything here is pure except [`Architecture::load`], [`validate_command`] and [`reload`].

#![forbid(unsafe_code)]

mod addresses;
mod errors;
pub mod reload;
mod schema;
pub mod verdict;
mod yaml;

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Read, Write},
    net::IpAddr,
    path::Path,
};

use sha2::{Digest, Sha256};

pub use addresses::{Cidr, HostPattern};
pub use errors::{ModelError, ModelErrors};
pub use reload::{ModelHandle, ReloadStats, watch};
pub use schema::LOCAL_RULE_ID;
pub use verdict::{FlowFacts, Judgement, Party, is_unexpected_egress};

/// The `apiVersion` this release reads.
pub const API_VERSION: &str = "observer/v1alpha1";
/// The `kind` of an architecture document.
pub const KIND: &str = "Architecture";
/// Party name for processes in a node's own network namespace (kubelet probes, host-network pods).
pub const NODE: &str = "node";
/// Party name for the Kubernetes API server.
pub const KUBE_APISERVER: &str = "kube-apiserver";
/// Party name in a flow for "any component".
pub const ANY_COMPONENT: &str = "*";
/// Label a component's pods carry unless the component gives its own `selector`.
pub const DEFAULT_SELECTOR_LABEL: &str = "app.kubernetes.io/name";
/// Larger than any architecture file needs; keeps a mistaken path (a log, a binary) from being
/// read whole into memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A workload inside the cluster: the pods in `namespace` whose labels include all of `selector`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub namespace: String,
    /// Never empty: `app.kubernetes.io/name: <name>` when the file gives none.
    pub selector: BTreeMap<String, String>,
    pub description: Option<String>,
}

/// An endpoint outside the cluster, recognized by host name or by address range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub cidrs: Vec<Cidr>,
    pub description: Option<String>,
}

/// One end of a rule, resolved against the declared names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuleEnd {
    /// `*`: any component (never an external or a reserved party).
    AnyComponent,
    Component(String),
    External(String),
    Node,
    KubeApiserver,
}

impl RuleEnd {
    /// The name as written in the file.
    pub fn name(&self) -> &str {
        match self {
            RuleEnd::AnyComponent => ANY_COMPONENT,
            RuleEnd::Component(n) | RuleEnd::External(n) => n,
            RuleEnd::Node => NODE,
            RuleEnd::KubeApiserver => KUBE_APISERVER,
        }
    }
}

impl fmt::Display for RuleEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the connections of a rule reach their destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Via {
    /// An ordinary connection from the source to the destination.
    #[default]
    Direct,
    /// `kubectl port-forward`: seen on the node as a loopback connection inside the destination
    /// pod, opened by the container runtime; the real initiator is invisible there.
    PortForward,
}

impl Via {
    pub const fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::PortForward => "port-forward",
        }
    }
}

/// One expected flow (an entry of `flows`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// As written, or derived from from/to/ports/via when the file gives none.
    pub id: String,
    pub from: RuleEnd,
    pub to: RuleEnd,
    /// Destination ports, ascending, without repeats; never empty.
    pub ports: Vec<u16>,
    pub via: Via,
    pub description: Option<String>,
}

/// A validated architecture model. Cheap to share behind an `Arc`; immutable once built.
#[derive(Clone, Debug)]
pub struct Architecture {
    name: String,
    description: Option<String>,
    hash: String,
    components: Vec<Component>,
    externals: Vec<External>,
    rules: Vec<Rule>,
    /// Exact host → index into `externals`.
    exact_hosts: BTreeMap<String, usize>,
    /// Wildcard suffix (the part after `*.`) → index into `externals`.
    wildcard_hosts: BTreeMap<String, usize>,
}

impl Architecture {
    /// Parses and validates `text`; `source` names the file in error messages.
    pub fn from_yaml(text: &str, source: &str) -> Result<Architecture, ModelErrors> {
        let mut collector = errors::Collector::new(source);
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(e) => {
                collector.at(e.pos, e.message);
                return Err(collector.into_errors());
            }
        };
        let model = schema::build(root.as_ref(), &mut collector);
        match model {
            Some(parts) if collector.is_clean() => Ok(Architecture::assemble(parts, text)),
            _ => Err(collector.into_errors()),
        }
    }

    /// Reads and validates the file at `path`; a file that cannot be read is reported the same
    /// way as an invalid one, naming the path.
    pub fn load(path: &Path) -> Result<Architecture, ModelErrors> {
        let source = path.display().to_string();
        let text = read_model_file(path).map_err(|m| ModelErrors::whole_file(&source, m))?;
        Architecture::from_yaml(&text, &source)
    }

    fn assemble(parts: schema::Parts, text: &str) -> Architecture {
        let mut exact_hosts = BTreeMap::new();
        let mut wildcard_hosts = BTreeMap::new();
        for (i, e) in parts.externals.iter().enumerate() {
            for h in &e.hosts {
                match h {
                    HostPattern::Exact(n) => exact_hosts.insert(n.clone(), i),
                    HostPattern::Wildcard { suffix } => wildcard_hosts.insert(suffix.clone(), i),
                };
            }
        }
        Architecture {
            name: parts.name,
            description: parts.description,
            hash: content_hash(text.as_bytes()),
            components: parts.components,
            externals: parts.externals,
            rules: parts.rules,
            exact_hosts,
            wildcard_hosts,
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// `sha256:<hex>` of the file's bytes: names the model in force in every judged record.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The component whose namespace is `namespace` and whose selector labels all appear in
    /// `labels`. When several match (one selector a subset of another), the one with the most
    /// selector labels wins, then the one written first.
    pub fn component_for(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&str> {
        let mut best: Option<&Component> = None;
        for c in &self.components {
            if c.namespace != namespace || !c.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            {
                continue;
            }
            if best.is_none_or(|b| c.selector.len() > b.selector.len()) {
                best = Some(c);
            }
        }
        best.map(|c| c.name.as_str())
    }

    /// The external whose `cidrs` contain `ip` (an IPv4-mapped IPv6 address counts as IPv4);
    /// the longest prefix wins, so a catch-all such as `0.0.0.0/0` yields to narrower ranges.
    pub fn external_for_ip(&self, ip: IpAddr) -> Option<&str> {
        let mut best: Option<(u8, &str)> = None;
        for e in &self.externals {
            for c in &e.cidrs {
                if c.contains(ip) && best.is_none_or(|(p, _)| c.prefix() > p) {
                    best = Some((c.prefix(), &e.name));
                }
            }
        }
        best.map(|(_, n)| n)
    }

    /// The external a connection's destination address belongs to. A catch-all range
    /// (`0.0.0.0/0`, `::/0`) stands for "any address", as documented clients on the internet
    /// are; it names a flow's source, never its destination, or every undocumented address
    /// would be reported under that client's name instead of as an unknown destination.
    pub fn external_for_destination_ip(&self, ip: IpAddr) -> Option<&str> {
        let mut best: Option<(u8, &str)> = None;
        for e in &self.externals {
            for c in e.cidrs.iter().filter(|c| c.prefix() > 0) {
                if c.contains(ip) && best.is_none_or(|(p, _)| c.prefix() > p) {
                    best = Some((c.prefix(), &e.name));
                }
            }
        }
        best.map(|(_, n)| n)
    }

    /// The external that lists `host`: exactly (case-insensitive, a trailing dot ignored), or
    /// through the most specific `*.suffix` wildcard, which matches names below `suffix` at any
    /// depth but not `suffix` itself.
    pub fn external_for_host(&self, host: &str) -> Option<&str> {
        let host = addresses::normalize_host(host);
        if let Some(&i) = self.exact_hosts.get(&host) {
            return self.externals.get(i).map(|e| e.name.as_str());
        }
        // Try the suffixes after each dot, longest first: the most specific wildcard wins.
        let mut rest = host.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(&i) = self.wildcard_hosts.get(suffix) {
                return self.externals.get(i).map(|e| e.name.as_str());
            }
            rest = suffix;
        }
        None
    }

    /// The exact host names of all externals: the names the agent resolves itself to learn
    /// their addresses (wildcards cannot be resolved; they need the DNS answers pods receive).
    pub fn exact_hosts(&self) -> impl Iterator<Item = &str> {
        self.exact_hosts.keys().map(String::as_str)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn components(&self) -> &[Component] {
        &self.components
    }

    pub fn externals(&self) -> &[External] {
        &self.externals
    }
}

/// `sha256:<lowercase hex>`.
fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in &digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads the file as UTF-8 text, refusing files over [`MAX_FILE_BYTES`].
fn read_model_file(path: &Path) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read the architecture file: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the architecture file: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {MAX_FILE_BYTES} bytes; is this the architecture file?"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}); save the file as UTF-8",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `observer validate FILE`: prints `ok: …` and returns 0 for a valid file, or prints every
/// problem to stderr and returns 2.
pub fn validate_command(path: &Path) -> i32 {
    validate_to(path, &mut io::stdout().lock(), &mut io::stderr().lock())
}

fn validate_to(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    // A closed stdout/stderr cannot be reported anywhere; the exit code still tells the result.
    match Architecture::load(path) {
        Ok(a) => {
            let _ = writeln!(
                out,
                "ok: {} ({}, {} components, {} externals, {} flows, {})",
                path.display(),
                a.name(),
                a.components().len(),
                a.externals().len(),
                a.rules().len(),
                a.hash()
            );
            0
        }
        Err(errors) => {
            let _ = writeln!(err, "{errors}");
            let n = errors.len();
            let _ = writeln!(
                err,
                "{}: {n} {}; the file was not accepted",
                path.display(),
                if n == 1 { "error" } else { "errors" }
            );
            2
        }
    }
}

#[cfg(test)]
mod tests;
