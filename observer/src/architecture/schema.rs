//! The architecture file's schema: walks the YAML tree, checks every field, and reports each
//! problem at the position of the value to change, collecting all of them before giving up.

use std::collections::{BTreeMap, BTreeSet, btree_map::Entry};

use super::{
    ANY_COMPONENT, API_VERSION, Component, DEFAULT_SELECTOR_LABEL, External, KIND, KUBE_APISERVER,
    NODE, Rule, RuleEnd, Via,
    addresses::{Cidr, HostPattern},
    errors::Collector,
    yaml::{Node, Pos, Value},
};

/// A rule id the engine gives to connections that never leave one pod.
pub const LOCAL_RULE_ID: &str = "local";

/// What a valid file holds, before the lookup indexes are built.
pub struct Parts {
    pub name: String,
    pub description: Option<String>,
    pub components: Vec<Component>,
    pub externals: Vec<External>,
    pub rules: Vec<Rule>,
}

const TOP_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "components",
    "externals",
    "flows",
];
const METADATA_FIELDS: &[&str] = &["name", "description"];
const COMPONENT_FIELDS: &[&str] = &["name", "namespace", "selector", "description"];
const EXTERNAL_FIELDS: &[&str] = &["name", "hosts", "cidrs", "description"];
const FLOW_FIELDS: &[&str] = &["from", "to", "ports", "via", "id", "description"];

/// Validates the document; `None` (with the problems in `c`) when it cannot become a model.
/// May also return `Some` while `c` holds problems: the caller checks `c`.
pub fn build(root: Option<&Node>, c: &mut Collector) -> Option<Parts> {
    let Some(root) = root else {
        c.at(
            Pos::START,
            format!(
                "the file holds no YAML document; an architecture file starts with \
                 \"apiVersion: {API_VERSION}\" and \"kind: {KIND}\""
            ),
        );
        return None;
    };
    let top = Fields::read(c, root, "", "the file", TOP_FIELDS)?;

    if let Some((v, pos)) = top.required_str(
        c,
        "apiVersion",
        &format!("add \"apiVersion: {API_VERSION}\""),
    ) && v != API_VERSION
    {
        c.at(
            pos,
            format!("apiVersion \"{v}\" is not supported; use \"{API_VERSION}\""),
        );
    }
    if let Some((v, pos)) = top.required_str(c, "kind", &format!("add \"kind: {KIND}\""))
        && v != KIND
    {
        c.at(
            pos,
            format!("kind \"{v}\" is not supported; use \"{KIND}\""),
        );
    }
    let (name, description) = metadata(c, &top);

    let mut names = Names::default();
    let components = list(c, &top, "components", "component")
        .into_iter()
        .filter_map(|(n, node)| component(c, &mut names, n, node))
        .collect::<Vec<_>>();
    check_distinct_selectors(c, &components);
    let externals = list(c, &top, "externals", "external")
        .into_iter()
        .filter_map(|(n, node)| external(c, &mut names, n, node))
        .collect::<Vec<_>>();
    check_distinct_addresses(c, &externals);
    let mut ids = BTreeMap::new();
    let rules = list(c, &top, "flows", "flow")
        .into_iter()
        .filter_map(|(n, node)| flow(c, &names, &mut ids, n, node))
        .collect();

    Some(Parts {
        name: name?,
        description,
        components: components.into_iter().map(|(c, _)| c).collect(),
        externals: externals.into_iter().map(|(e, _)| e).collect(),
        rules,
    })
}

/// The fields of one mapping, checked against the allowed names.
struct Fields<'n> {
    /// Message prefix naming the mapping, e.g. `flow 3: `; empty at the top level.
    ctx: String,
    pos: Pos,
    map: BTreeMap<&'n str, &'n Node>,
}

impl<'n> Fields<'n> {
    /// Reports a node that is not a mapping, unknown fields and repeated fields.
    /// `what` names the mapping in "must be a mapping" messages.
    fn read(
        c: &mut Collector,
        node: &'n Node,
        ctx: &str,
        what: &str,
        allowed: &[&str],
    ) -> Option<Fields<'n>> {
        let Value::Mapping(entries) = &node.value else {
            c.at(
                node.pos,
                format!(
                    "{what} must be a mapping of fields ({}), found {}",
                    allowed.join(", "),
                    node.kind()
                ),
            );
            return None;
        };
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let Value::Scalar { text: key, .. } = &k.value else {
                continue; // the YAML loader only builds scalar keys
            };
            if !allowed.contains(&key.as_str()) {
                let hint = did_you_mean(key, allowed.iter().copied())
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
                c.at(
                    k.pos,
                    format!(
                        "{ctx}unknown field \"{key}\"; expected one of: {}{hint}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            match map.entry(key.as_str()) {
                Entry::Vacant(e) => {
                    e.insert(v);
                }
                Entry::Occupied(_) => c.at(
                    k.pos,
                    format!("{ctx}field \"{key}\" is written twice; keep one"),
                ),
            }
        }
        Some(Fields {
            ctx: ctx.to_owned(),
            pos: node.pos,
            map,
        })
    }

    /// The field's value, `None` when absent or null (an optional field left empty).
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.map.get(key).copied().filter(|n| !n.is_null())
    }

    /// A required single value; reports it missing (at the mapping), empty, or not a value.
    fn required_str(&self, c: &mut Collector, key: &str, fix: &str) -> Option<(&'n str, Pos)> {
        let ctx = &self.ctx;
        let Some(node) = self.map.get(key) else {
            c.at(
                self.pos,
                format!("{ctx}missing required field \"{key}\"; {fix}"),
            );
            return None;
        };
        match &node.value {
            _ if node.is_null() => {
                c.at(node.pos, format!("{ctx}\"{key}\" is empty; {fix}"));
                None
            }
            Value::Scalar { text, .. } if text.trim().is_empty() => {
                c.at(node.pos, format!("{ctx}\"{key}\" is empty; {fix}"));
                None
            }
            Value::Scalar { text, .. } => Some((text.as_str(), node.pos)),
            _ => {
                c.at(
                    node.pos,
                    format!(
                        "{ctx}\"{key}\" must be a single value, found {}",
                        node.kind()
                    ),
                );
                None
            }
        }
    }

    /// An optional free-text field.
    fn optional_text(&self, c: &mut Collector, key: &str) -> Option<String> {
        let node = self.get(key)?;
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                c.at(
                    node.pos,
                    format!(
                        "{}\"{key}\" must be text, found {}; quote it or use a block scalar (|)",
                        self.ctx,
                        node.kind()
                    ),
                );
                None
            }
        }
    }

    /// An optional list of single values; an absent or null field is an empty list.
    fn optional_list(&self, c: &mut Collector, key: &str, example: &str) -> Vec<&'n Node> {
        let Some(node) = self.get(key) else {
            return Vec::new();
        };
        match &node.value {
            Value::Sequence(items) => items
                .iter()
                .filter(|item| {
                    let scalar = matches!(item.value, Value::Scalar { .. }) && !item.is_null();
                    if !scalar {
                        c.at(
                            item.pos,
                            format!(
                                "{}each entry of \"{key}\" must be a single value, found {}",
                                self.ctx,
                                item.kind()
                            ),
                        );
                    }
                    scalar
                })
                .collect(),
            _ => {
                c.at(
                    node.pos,
                    format!(
                        "{}\"{key}\" must be a list, e.g. {key}: {example}; found {}",
                        self.ctx,
                        node.kind()
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn scalar_text(node: &Node) -> &str {
    match &node.value {
        Value::Scalar { text, .. } => text,
        _ => "",
    }
}

fn metadata(c: &mut Collector, top: &Fields) -> (Option<String>, Option<String>) {
    let fix = "add \"metadata:\" with \"name: <name of the system>\"";
    let Some(node) = top.map.get("metadata") else {
        c.at(
            top.pos,
            format!("missing required field \"metadata\"; {fix}"),
        );
        return (None, None);
    };
    let Some(meta) = Fields::read(c, node, "metadata: ", "metadata", METADATA_FIELDS) else {
        return (None, None);
    };
    let name = meta
        .required_str(c, "name", "add \"name: <name of the system>\"")
        .map(|(n, _)| n.to_owned());
    (name, meta.optional_text(c, "description"))
}

/// The entries of a top-level list, numbered from 1 as people count.
fn list<'n>(
    c: &mut Collector,
    top: &Fields<'n>,
    key: &str,
    singular: &str,
) -> Vec<(usize, &'n Node)> {
    let Some(node) = top.get(key) else {
        return Vec::new();
    };
    match &node.value {
        Value::Sequence(items) => items.iter().enumerate().map(|(i, n)| (i + 1, n)).collect(),
        _ => {
            c.at(
                node.pos,
                format!(
                    "\"{key}\" must be a list with one entry per {singular} (\"- name: ...\"), found {}",
                    node.kind()
                ),
            );
            Vec::new()
        }
    }
}

/// Names declared so far: they must be unique across components and externals.
#[derive(Default)]
struct Names {
    /// Name → (description such as `component 2`, line, is a component).
    declared: BTreeMap<String, (String, usize, bool)>,
}

impl Names {
    /// Checks a component's or external's name: syntax, reserved names and uniqueness.
    fn declare(
        &mut self,
        c: &mut Collector,
        ctx: &str,
        who: String,
        name: &str,
        pos: Pos,
        is_component: bool,
    ) -> bool {
        if let Some(role) = reserved_role(name) {
            c.at(
                pos,
                format!("{ctx}name \"{name}\" is reserved for {role}; choose another name"),
            );
            return false;
        }
        if let Err(why) = check_object_name(name) {
            c.at(pos, format!("{ctx}invalid name \"{name}\": {why}"));
            return false;
        }
        match self.declared.entry(name.to_owned()) {
            Entry::Occupied(e) => {
                let (other, line, _) = e.get();
                c.at(
                    pos,
                    format!(
                        "{ctx}name \"{name}\" is already used by {other} (line {line}); names must \
                         be unique across components and externals"
                    ),
                );
                false
            }
            Entry::Vacant(e) => {
                e.insert((who, pos.line, is_component));
                true
            }
        }
    }

    fn resolve(&self, name: &str) -> Option<RuleEnd> {
        match name {
            ANY_COMPONENT => Some(RuleEnd::AnyComponent),
            NODE => Some(RuleEnd::Node),
            KUBE_APISERVER => Some(RuleEnd::KubeApiserver),
            _ => self.declared.get(name).map(|(_, _, is_component)| {
                if *is_component {
                    RuleEnd::Component(name.to_owned())
                } else {
                    RuleEnd::External(name.to_owned())
                }
            }),
        }
    }
}

fn reserved_role(name: &str) -> Option<&'static str> {
    match name {
        NODE => Some("processes in a node's own network namespace"),
        KUBE_APISERVER => Some("the Kubernetes API server"),
        ANY_COMPONENT => Some("\"any component\" in flows"),
        _ => None,
    }
}

/// Kubernetes object-name rules (RFC 1123 subdomain), so names read the same in flow records,
/// metrics labels and diagrams.
fn check_object_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.');
    let ends_ok = name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && name.ends_with(|ch: char| ch.is_ascii_alphanumeric());
    if name.len() > 253 || !ok_chars || !ends_ok {
        return Err(
            "use at most 253 lowercase letters, digits, '-' and '.', starting and \
                    ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Kubernetes namespace rules (RFC 1123 label).
fn check_namespace(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    let ends_ok = name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && name.ends_with(|ch: char| ch.is_ascii_alphanumeric());
    if name.len() > 63 || !ok_chars || !ends_ok {
        return Err(
            "a namespace has at most 63 lowercase letters, digits and '-', starting \
                    and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

fn component(
    c: &mut Collector,
    names: &mut Names,
    n: usize,
    node: &Node,
) -> Option<(Component, Pos)> {
    let ctx = format!("component {n}: ");
    let f = Fields::read(c, node, &ctx, &format!("component {n}"), COMPONENT_FIELDS)?;
    let name = f.required_str(c, "name", "add \"name: <component name>\"");
    let namespace = f.required_str(
        c,
        "namespace",
        "add the namespace its pods run in, e.g. \"namespace: default\"",
    );
    if let Some((ns, pos)) = namespace
        && let Err(why) = check_namespace(ns)
    {
        c.at(pos, format!("{ctx}invalid namespace \"{ns}\": {why}"));
    }
    let declared = name.is_some_and(|(name, pos)| {
        names.declare(c, &ctx, format!("component {n}"), name, pos, true)
    });
    let selector = selector(c, &f, name.map(|(n, _)| n), namespace.map(|(ns, _)| ns));
    let description = f.optional_text(c, "description");
    if !declared {
        return None;
    }
    Some((
        Component {
            name: name?.0.to_owned(),
            namespace: namespace?.0.to_owned(),
            selector: selector?,
            description,
        },
        f.pos,
    ))
}

fn selector(
    c: &mut Collector,
    f: &Fields,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Option<BTreeMap<String, String>> {
    let ctx = &f.ctx;
    let Some(node) = f.map.get("selector") else {
        return name.map(|n| BTreeMap::from([(DEFAULT_SELECTOR_LABEL.to_owned(), n.to_owned())]));
    };
    let empty = match &node.value {
        Value::Mapping(entries) => entries.is_empty(),
        _ => node.is_null(),
    };
    if empty {
        c.at(
            node.pos,
            format!(
                "{ctx}selector is empty, so it would match every pod in namespace \"{}\"; list \
                 the labels that identify this component's pods, or remove \"selector\" to use \
                 the default {DEFAULT_SELECTOR_LABEL}: {}",
                namespace.unwrap_or("?"),
                name.unwrap_or("<name>")
            ),
        );
        return None;
    }
    let Value::Mapping(entries) = &node.value else {
        c.at(
            node.pos,
            format!(
                "{ctx}selector must be a mapping of pod labels, e.g. \"{DEFAULT_SELECTOR_LABEL}: {}\"; found {}",
                name.unwrap_or("<name>"),
                node.kind()
            ),
        );
        return None;
    };
    let mut labels = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries {
        let key = scalar_text(k);
        if key.trim().is_empty() {
            c.at(k.pos, format!("{ctx}a selector label has an empty key"));
            ok = false;
            continue;
        }
        let value = match &v.value {
            _ if v.is_null() => {
                c.at(
                    v.pos,
                    format!(
                        "{ctx}selector label \"{key}\" has no value; write the label's value \
                         (\"\" for an empty one)"
                    ),
                );
                ok = false;
                continue;
            }
            Value::Scalar { text, .. } => text.clone(),
            _ => {
                c.at(
                    v.pos,
                    format!(
                        "{ctx}selector label \"{key}\" must have a single value, found {}",
                        v.kind()
                    ),
                );
                ok = false;
                continue;
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            c.at(
                k.pos,
                format!("{ctx}selector label \"{key}\" is written twice; keep one"),
            );
            ok = false;
        }
    }
    ok.then_some(labels)
}

/// Two components with the same namespace and selector would claim the same pods.
fn check_distinct_selectors(c: &mut Collector, components: &[(Component, Pos)]) {
    /// The pods a component claims: its namespace and selector.
    type Claim<'a> = (&'a str, &'a BTreeMap<String, String>);
    let mut seen: BTreeMap<Claim, (&str, usize)> = BTreeMap::new();
    for (comp, pos) in components {
        match seen.entry((&comp.namespace, &comp.selector)) {
            Entry::Occupied(e) => {
                let (other, line) = e.get();
                c.at(
                    *pos,
                    format!(
                        "component \"{}\": same namespace and selector as component \"{other}\" \
                         (line {line}), so both would claim the same pods; give one a selector \
                         that tells them apart",
                        comp.name
                    ),
                );
            }
            Entry::Vacant(e) => {
                e.insert((&comp.name, pos.line));
            }
        }
    }
}

fn external(
    c: &mut Collector,
    names: &mut Names,
    n: usize,
    node: &Node,
) -> Option<(External, Pos)> {
    let ctx = format!("external {n}: ");
    let f = Fields::read(c, node, &ctx, &format!("external {n}"), EXTERNAL_FIELDS)?;
    let name = f.required_str(c, "name", "add \"name: <external name>\"");
    let declared = name.is_some_and(|(name, pos)| {
        names.declare(c, &ctx, format!("external {n}"), name, pos, false)
    });
    let host_nodes = f.optional_list(c, "hosts", "[api.example.com, \"*.example.com\"]");
    let cidr_nodes = f.optional_list(c, "cidrs", "[192.0.2.0/24, \"2001:db8::/32\"]");
    let written = !host_nodes.is_empty() || !cidr_nodes.is_empty();
    let mut ok = true;
    let mut hosts = Vec::new();
    for h in host_nodes {
        match HostPattern::parse(scalar_text(h)) {
            Ok(p) if hosts.contains(&p) => {
                c.at(
                    h.pos,
                    format!("{ctx}host \"{p}\" is listed twice; keep one"),
                );
                ok = false;
            }
            Ok(p) => hosts.push(p),
            Err(why) => {
                c.at(h.pos, format!("{ctx}{why}"));
                ok = false;
            }
        }
    }
    let mut cidrs = Vec::new();
    for r in cidr_nodes {
        match Cidr::parse(scalar_text(r)) {
            Ok(p) if cidrs.contains(&p) => {
                c.at(r.pos, format!("{ctx}range {p} is listed twice; keep one"));
                ok = false;
            }
            Ok(p) => cidrs.push(p),
            Err(why) => {
                c.at(r.pos, format!("{ctx}bad CIDR: {why}"));
                ok = false;
            }
        }
    }
    if !written {
        c.at(
            f.pos,
            format!(
                "{ctx}lists no hosts and no cidrs, so no address can ever match it; add \
                 \"hosts: [api.example.com]\" or \"cidrs: [192.0.2.0/24]\""
            ),
        );
    }
    let description = f.optional_text(c, "description");
    if !(declared && ok && written) {
        return None;
    }
    Some((
        External {
            name: name?.0.to_owned(),
            hosts,
            cidrs,
            description,
        },
        f.pos,
    ))
}

/// A host or an identical range claimed by two externals would make the match arbitrary.
/// (Overlapping ranges of different lengths are fine: the longest prefix wins.)
fn check_distinct_addresses(c: &mut Collector, externals: &[(External, Pos)]) {
    let mut hosts: BTreeMap<String, &str> = BTreeMap::new();
    let mut ranges: Vec<(Cidr, &str)> = Vec::new();
    for (e, pos) in externals {
        for h in &e.hosts {
            match hosts.entry(h.to_string()) {
                Entry::Occupied(o) => c.at(
                    *pos,
                    format!(
                        "external \"{}\": host \"{h}\" is also listed by external \"{}\"; an \
                         address can belong to only one external",
                        e.name,
                        o.get()
                    ),
                ),
                Entry::Vacant(v) => {
                    v.insert(&e.name);
                }
            }
        }
        for r in &e.cidrs {
            match ranges.iter().find(|(q, _)| q == r) {
                Some((_, other)) => c.at(
                    *pos,
                    format!(
                        "external \"{}\": range {r} is also listed by external \"{other}\"; an \
                         address can belong to only one external",
                        e.name
                    ),
                ),
                None => ranges.push((*r, &e.name)),
            }
        }
    }
}

fn flow(
    c: &mut Collector,
    names: &Names,
    ids: &mut BTreeMap<String, (usize, usize)>,
    n: usize,
    node: &Node,
) -> Option<Rule> {
    let ctx = format!("flow {n}: ");
    let f = Fields::read(c, node, &ctx, &format!("flow {n}"), FLOW_FIELDS)?;
    let party_fix = |key: &str| {
        format!(
            "add \"{key}:\" naming a component, an external, {NODE}, {KUBE_APISERVER} or \"{ANY_COMPONENT}\""
        )
    };
    let from = f
        .required_str(c, "from", &party_fix("from"))
        .and_then(|(name, pos)| party(c, names, &ctx, "from", name, pos));
    let to = f
        .required_str(c, "to", &party_fix("to"))
        .and_then(|(name, pos)| party(c, names, &ctx, "to", name, pos));
    let ports = ports(c, &f);
    let via = match f.get("via") {
        None => Some(Via::Direct),
        Some(v) => match scalar_text(v) {
            "direct" => Some(Via::Direct),
            "port-forward" => Some(Via::PortForward),
            other => {
                let shown = if matches!(v.value, Value::Scalar { .. }) {
                    format!("\"{other}\"")
                } else {
                    v.kind().to_owned()
                };
                c.at(
                    v.pos,
                    format!(
                        "{ctx}unknown via {shown}; use \"direct\" (the default) or \"port-forward\""
                    ),
                );
                None
            }
        },
    };
    let written_id = f.get("id").and_then(|node| {
        let id = scalar_text(node);
        match check_rule_id(id, node) {
            Ok(()) => Some((id.to_owned(), node.pos)),
            Err(why) => {
                c.at(node.pos, format!("{ctx}{why}"));
                None
            }
        }
    });
    let description = f.optional_text(c, "description");

    let (from, to, ports, via) = (from?, to?, ports?, via?);
    if !matches!(to, RuleEnd::Component(_) | RuleEnd::AnyComponent) && via == Via::PortForward {
        c.at(
            f.pos,
            format!(
                "{ctx}a port-forward ends inside a pod, so \"to\" must be a component or \
                 \"{ANY_COMPONENT}\", not \"{to}\""
            ),
        );
        return None;
    }
    if matches!(from, RuleEnd::External(_)) && matches!(to, RuleEnd::External(_)) {
        c.at(
            f.pos,
            format!(
                "{ctx}both ends are externals, so the flow never touches the cluster and can \
                 never be observed; one end must be a component or a reserved party"
            ),
        );
        return None;
    }
    let derived = written_id.is_none();
    let (id, id_pos) = written_id.unwrap_or_else(|| (derived_id(&from, &to, &ports, via), f.pos));
    match ids.entry(id.clone()) {
        Entry::Occupied(e) => {
            let (other, line) = e.get();
            let message = if derived {
                format!(
                    "{ctx}same from, to, ports and via as flow {other} (line {line}), which \
                     gives both the id \"{id}\"; merge them or give each an \"id\""
                )
            } else {
                format!(
                    "{ctx}id \"{id}\" is already used by flow {other} (line {line}); give each \
                     flow its own id"
                )
            };
            c.at(id_pos, message);
            None
        }
        Entry::Vacant(e) => {
            e.insert((n, f.pos.line));
            Some(Rule {
                id,
                from,
                to,
                ports,
                via,
                description,
            })
        }
    }
}

fn party(
    c: &mut Collector,
    names: &Names,
    ctx: &str,
    key: &str,
    name: &str,
    pos: Pos,
) -> Option<RuleEnd> {
    if let Some(end) = names.resolve(name) {
        return Some(end);
    }
    let hint = did_you_mean(
        name,
        names
            .declared
            .keys()
            .map(String::as_str)
            .chain([NODE, KUBE_APISERVER]),
    )
    .map(|s| format!("; did you mean \"{s}\"?"))
    .unwrap_or_default();
    c.at(
        pos,
        format!(
            "{ctx}unknown party \"{name}\" in \"{key}\"; declare it under components or \
             externals, or use one of: {NODE}, {KUBE_APISERVER}, {ANY_COMPONENT}{hint}"
        ),
    );
    None
}

fn ports(c: &mut Collector, f: &Fields) -> Option<Vec<u16>> {
    let ctx = &f.ctx;
    let fix = "list the destination ports, e.g. \"ports: [443]\"";
    let Some(node) = f.map.get("ports") else {
        c.at(
            f.pos,
            format!("{ctx}missing required field \"ports\"; {fix}"),
        );
        return None;
    };
    let items = match &node.value {
        Value::Sequence(items) if !items.is_empty() => items,
        Value::Sequence(_) => {
            c.at(node.pos, format!("{ctx}\"ports\" is empty; {fix}"));
            return None;
        }
        _ => {
            c.at(
                node.pos,
                format!(
                    "{ctx}\"ports\" must be a list, e.g. ports: [443]; found {}",
                    node.kind()
                ),
            );
            return None;
        }
    };
    let mut ports = BTreeSet::new();
    let mut ok = true;
    for item in items {
        let text = match &item.value {
            Value::Scalar { text, .. } if !item.is_null() => text.trim(),
            _ => {
                c.at(
                    item.pos,
                    format!(
                        "{ctx}each port must be a number from 1 to 65535, found {}",
                        item.kind()
                    ),
                );
                ok = false;
                continue;
            }
        };
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        let is_number = !digits.is_empty() && digits.chars().all(|ch| ch.is_ascii_digit());
        match text.parse::<u16>() {
            Ok(p) if p != 0 => {
                ports.insert(p);
            }
            _ if is_number => {
                c.at(
                    item.pos,
                    format!("{ctx}port {text} is out of range; ports are numbers from 1 to 65535"),
                );
                ok = false;
            }
            _ => {
                c.at(
                    item.pos,
                    format!(
                        "{ctx}port \"{text}\" is not a number; ports are numbers from 1 to 65535"
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then(|| ports.into_iter().collect())
}

fn check_rule_id(id: &str, node: &Node) -> Result<(), String> {
    if !matches!(node.value, Value::Scalar { .. }) {
        return Err(format!(
            "\"id\" must be a single value, found {}",
            node.kind()
        ));
    }
    if id == LOCAL_RULE_ID {
        return Err(format!(
            "id \"{LOCAL_RULE_ID}\" is reserved for connections that stay inside one pod; choose another id"
        ));
    }
    let ok = id.len() <= 128
        && id.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "invalid id \"{id}\"; use at most 128 letters, digits, '-', '_' and '.', starting \
             with a letter or digit"
        ));
    }
    Ok(())
}

/// `from-to-to-port-port[-port-forward]`, with `*` spelled `any`: stable as long as the flow's
/// ends, ports and kind stay the same, and readable in flow records.
fn derived_id(from: &RuleEnd, to: &RuleEnd, ports: &[u16], via: Via) -> String {
    let end = |e: &RuleEnd| match e {
        RuleEnd::AnyComponent => "any".to_owned(),
        other => other.name().to_owned(),
    };
    let mut id = format!("{}-to-{}", end(from), end(to));
    for p in ports {
        id.push('-');
        id.push_str(&p.to_string());
    }
    if via == Via::PortForward {
        id.push_str("-port-forward");
    }
    id
}

/// The closest candidate within a small edit distance, for "did you mean" hints.
fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    if word.len() > 64 {
        return None;
    }
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|cand| (edit_distance(word, cand), cand))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, cand)| cand)
}

/// Levenshtein distance over characters, ignoring ASCII case.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|ch| ch.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|ch| ch.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
