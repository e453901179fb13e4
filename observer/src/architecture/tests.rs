//! Parsing, validation and lookups of the architecture model.

use std::{collections::BTreeMap, net::IpAddr};

use super::*;

const VALID: &str = r#"apiVersion: observer/v1alpha1
kind: Architecture
metadata:
  name: shop
components:
  - name: web
    namespace: shop
  - name: db
    namespace: data
    selector:
      app: postgres
      role: primary
  - name: db-replica
    namespace: data
    selector:
      app: postgres
externals:
  - name: payments
    hosts: [api.payments.example, "*.cdn.example"]
    cidrs: [192.0.2.0/24, "2001:db8:1::/48"]
  - name: internet
    cidrs: [0.0.0.0/0]
flows:
  - from: web
    to: db
    ports: [5432]
  - from: web
    to: payments
    ports: [443]
    id: web-pays
    description: card payments
"#;

fn model() -> Architecture {
    Architecture::from_yaml(VALID, "shop.yaml").expect("valid")
}

/// The errors for `text`, one per line.
fn errors(text: &str) -> String {
    Architecture::from_yaml(text, "f.yaml")
        .expect_err("should be rejected")
        .to_string()
}

/// A valid header followed by `rest`; lines of `rest` start at line 5.
fn doc(rest: &str) -> String {
    format!("apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: t\n{rest}")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_valid_file_becomes_a_model() {
    let m = model();
    assert_eq!(m.name(), "shop");
    assert_eq!(m.components().len(), 3);
    assert_eq!(m.externals().len(), 2);
    assert_eq!(
        m.components()[0].selector,
        labels(&[("app.kubernetes.io/name", "web")]),
        "the default selector"
    );
    let ids: Vec<&str> = m.rules().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["web-to-db-5432", "web-pays"]);
    let r = &m.rules()[1];
    assert_eq!(r.from, RuleEnd::Component("web".into()));
    assert_eq!(r.to, RuleEnd::External("payments".into()));
    assert_eq!(r.ports, [443]);
    assert_eq!(r.via, Via::Direct);
    assert_eq!(r.description.as_deref(), Some("card payments"));
}

#[test]
fn the_model_can_be_shared_across_threads_and_errors_are_std_errors() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Architecture>();
    let e: Box<dyn std::error::Error + Send + Sync> =
        Box::new(Architecture::from_yaml("", "e.yaml").unwrap_err());
    assert_eq!(
        e.to_string(),
        "e.yaml:1:1: the file holds no YAML document; an architecture file starts with \"apiVersion: observer/v1alpha1\" and \"kind: Architecture\""
    );
}

#[test]
fn the_hash_is_sha256_of_the_bytes() {
    assert_eq!(
        Architecture::from_yaml(&doc(""), "t").unwrap().hash(),
        // printf 'apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name: t\n' | sha256sum
        "sha256:dafc0d461d7f1bb028be451ccb2dc861d066f45c006b22dfa88a6da37ea97937"
    );
    assert_ne!(
        model().hash(),
        Architecture::from_yaml(&format!("{VALID}# c\n"), "s")
            .unwrap()
            .hash()
    );
}

#[test]
fn components_are_found_by_namespace_and_every_selector_label() {
    let m = model();
    assert_eq!(
        m.component_for(
            "shop",
            &labels(&[("app.kubernetes.io/name", "web"), ("x", "y")])
        ),
        Some("web")
    );
    assert_eq!(
        m.component_for("other", &labels(&[("app.kubernetes.io/name", "web")])),
        None
    );
    assert_eq!(
        m.component_for("shop", &labels(&[("app.kubernetes.io/name", "api")])),
        None
    );
    // db's selector is a superset of db-replica's: the more specific one wins.
    assert_eq!(
        m.component_for("data", &labels(&[("app", "postgres"), ("role", "primary")])),
        Some("db")
    );
    assert_eq!(
        m.component_for("data", &labels(&[("app", "postgres"), ("role", "replica")])),
        Some("db-replica")
    );
    assert_eq!(
        m.component_for("data", &labels(&[("role", "primary")])),
        None
    );
}

#[test]
fn externals_are_found_by_address_longest_prefix_first() {
    let m = model();
    assert_eq!(m.external_for_ip(ip("192.0.2.10")), Some("payments"));
    assert_eq!(m.external_for_ip(ip("::ffff:192.0.2.10")), Some("payments"));
    assert_eq!(m.external_for_ip(ip("198.51.100.1")), Some("internet"));
    assert_eq!(m.external_for_ip(ip("2001:db8:1:2::5")), Some("payments"));
    assert_eq!(
        m.external_for_ip(ip("2001:db8:2::5")),
        None,
        "no IPv6 catch-all"
    );
    // A catch-all range names sources only: as a destination, "internet" would name everything.
    assert_eq!(m.external_for_destination_ip(ip("198.51.100.1")), None);
    assert_eq!(
        m.external_for_destination_ip(ip("192.0.2.10")),
        Some("payments")
    );
}

#[test]
fn externals_are_found_by_host() {
    let m = model();
    assert_eq!(
        m.external_for_host("api.payments.example"),
        Some("payments")
    );
    assert_eq!(
        m.external_for_host("API.Payments.Example."),
        Some("payments")
    );
    assert_eq!(
        m.external_for_host("x.api.payments.example"),
        None,
        "exact names match only themselves"
    );
    assert_eq!(m.external_for_host("img.cdn.example"), Some("payments"));
    assert_eq!(
        m.external_for_host("a.b.cdn.example"),
        Some("payments"),
        "wildcards match at any depth"
    );
    assert_eq!(
        m.external_for_host("cdn.example"),
        None,
        "wildcards do not match the apex"
    );
    assert_eq!(m.external_for_host("xcdn.example"), None);
    assert_eq!(m.external_for_host(""), None);
    assert_eq!(
        m.exact_hosts().collect::<Vec<_>>(),
        ["api.payments.example"]
    );
}

#[test]
fn the_most_specific_wildcard_wins() {
    let m = Architecture::from_yaml(
        &doc("externals:\n  - name: a\n    hosts: [\"*.example.com\"]\n  - name: b\n    hosts: [\"*.eu.example.com\", exact.example.com]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(m.external_for_host("x.eu.example.com"), Some("b"));
    assert_eq!(m.external_for_host("x.us.example.com"), Some("a"));
    assert_eq!(m.external_for_host("eu.example.com"), Some("a"));
    assert_eq!(
        m.external_for_host("exact.example.com"),
        Some("b"),
        "exact beats wildcard"
    );
}

#[test]
fn rules_resolve_reserved_parties_and_star() {
    let m = Architecture::from_yaml(
        &doc("components:\n  - {name: a, namespace: a}\nflows:\n  - {from: node, to: a, ports: [80]}\n  - {from: \"*\", to: kube-apiserver, ports: [443], via: direct}\n  - {from: a, to: \"*\", ports: [1, 65535], via: port-forward}\n"),
        "t",
    )
    .unwrap();
    let r = m.rules();
    assert_eq!(
        (&r[0].from, &r[0].to),
        (&RuleEnd::Node, &RuleEnd::Component("a".into()))
    );
    assert_eq!(
        (&r[1].from, &r[1].to),
        (&RuleEnd::AnyComponent, &RuleEnd::KubeApiserver)
    );
    assert_eq!(r[2].via, Via::PortForward);
    assert_eq!(
        r.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [
            "node-to-a-80",
            "any-to-kube-apiserver-443",
            "a-to-any-1-65535-port-forward"
        ]
    );
}

// --- Validation errors: each kind, with its exact position. ------------------------------------

#[test]
fn yaml_syntax_errors_name_the_position() {
    assert_eq!(
        errors("apiVersion: observer/v1alpha1\nkind: [Architecture\n"),
        "f.yaml:3:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'; check the indentation and that each \"key: value\" has a space after the colon"
    );
    assert_eq!(
        errors(&doc("flows:\n  - from: *\n")),
        "f.yaml:6:11: YAML syntax error: while scanning an anchor or alias, did not find expected alphabetic or numeric character; a value starting with \"*\" must be quoted, e.g. \"*\" or \"*.example.com\""
    );
}

#[test]
fn an_empty_file_or_a_non_mapping_is_rejected() {
    assert_eq!(
        errors(""),
        "f.yaml:1:1: the file holds no YAML document; an architecture file starts with \"apiVersion: observer/v1alpha1\" and \"kind: Architecture\""
    );
    assert_eq!(
        errors("- a\n"),
        "f.yaml:1:1: the file must be a mapping of fields (apiVersion, kind, metadata, components, externals, flows), found a list"
    );
}

#[test]
fn wrong_api_version_and_kind() {
    assert_eq!(
        errors("apiVersion: observer/v1\nkind: Archtecture\nmetadata:\n  name: t\n"),
        "f.yaml:1:13: apiVersion \"observer/v1\" is not supported; use \"observer/v1alpha1\"\n\
         f.yaml:2:7: kind \"Archtecture\" is not supported; use \"Architecture\""
    );
}

#[test]
fn missing_required_fields() {
    assert_eq!(
        errors("kind: Architecture\n"),
        "f.yaml:1:1: missing required field \"apiVersion\"; add \"apiVersion: observer/v1alpha1\"\n\
         f.yaml:1:1: missing required field \"metadata\"; add \"metadata:\" with \"name: <name of the system>\""
    );
    assert_eq!(
        errors(&doc(
            "components:\n  - name: a\nexternals:\n  - hosts: [a.example]\nflows:\n  - from: a\n    via: direct\n"
        )),
        "f.yaml:6:5: component 1: missing required field \"namespace\"; add the namespace its pods run in, e.g. \"namespace: default\"\n\
         f.yaml:8:5: external 1: missing required field \"name\"; add \"name: <external name>\"\n\
         f.yaml:10:5: flow 1: missing required field \"to\"; add \"to:\" naming a component, an external, node, kube-apiserver or \"*\"\n\
         f.yaml:10:5: flow 1: missing required field \"ports\"; list the destination ports, e.g. \"ports: [443]\""
    );
    assert_eq!(
        errors("apiVersion: observer/v1alpha1\nkind: Architecture\nmetadata:\n  name:\n"),
        "f.yaml:4:7: metadata: \"name\" is empty; add \"name: <name of the system>\""
    );
}

#[test]
fn unknown_and_repeated_fields() {
    assert_eq!(
        errors(&doc(
            "component:\n  - name: a\nflows:\n  - from: node\n    to: kube-apiserver\n    port: [443]\n    ports: [443]\n    ports: [6443]\n"
        )),
        "f.yaml:5:1: unknown field \"component\"; expected one of: apiVersion, kind, metadata, components, externals, flows; did you mean \"components\"?\n\
         f.yaml:10:5: flow 1: unknown field \"port\"; expected one of: from, to, ports, via, id, description; did you mean \"ports\"?\n\
         f.yaml:12:5: flow 1: field \"ports\" is written twice; keep one"
    );
}

#[test]
fn unknown_parties_name_the_choices() {
    assert_eq!(
        errors(&doc(
            "components:\n  - {name: rabbitmq, namespace: mq}\n  - {name: gw, namespace: gw}\nflows:\n  - from: gw\n    to: rabbit-mq\n    ports: [5672]\n  - {from: nobody, to: gw, ports: [80]}\n"
        )),
        "f.yaml:10:9: flow 1: unknown party \"rabbit-mq\" in \"to\"; declare it under components or externals, or use one of: node, kube-apiserver, *; did you mean \"rabbitmq\"?\n\
         f.yaml:12:12: flow 2: unknown party \"nobody\" in \"from\"; declare it under components or externals, or use one of: node, kube-apiserver, *"
    );
}

#[test]
fn names_are_unique_across_components_externals_and_reserved_names() {
    assert_eq!(
        errors(&doc(
            "components:\n  - {name: a, namespace: a}\n  - {name: a, namespace: b}\n  - {name: node, namespace: b}\nexternals:\n  - {name: a, hosts: [a.example]}\n  - {name: kube-apiserver, hosts: [b.example]}\n  - {name: Bad_Name, hosts: [c.example]}\n"
        )),
        "f.yaml:7:12: component 2: name \"a\" is already used by component 1 (line 6); names must be unique across components and externals\n\
         f.yaml:8:12: component 3: name \"node\" is reserved for processes in a node's own network namespace; choose another name\n\
         f.yaml:10:12: external 1: name \"a\" is already used by component 1 (line 6); names must be unique across components and externals\n\
         f.yaml:11:12: external 2: name \"kube-apiserver\" is reserved for the Kubernetes API server; choose another name\n\
         f.yaml:12:12: external 3: invalid name \"Bad_Name\": use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
    );
}

#[test]
fn duplicate_ids_explicit_and_derived() {
    assert_eq!(
        errors(&doc(
            "components:\n  - {name: a, namespace: a}\nflows:\n  - {from: node, to: a, ports: [80], id: probe}\n  - {from: node, to: a, ports: [81], id: probe}\n  - {from: a, to: a, ports: [80, 81]}\n  - {from: a, to: a, ports: [81, 80, 80]}\n  - {from: a, to: a, ports: [1], id: local}\n"
        )),
        "f.yaml:9:42: flow 2: id \"probe\" is already used by flow 1 (line 8); give each flow its own id\n\
         f.yaml:11:5: flow 4: same from, to, ports and via as flow 3 (line 10), which gives both the id \"a-to-a-80-81\"; merge them or give each an \"id\"\n\
         f.yaml:12:38: flow 5: id \"local\" is reserved for connections that stay inside one pod; choose another id"
    );
}

#[test]
fn bad_ports() {
    assert_eq!(
        errors(&doc(
            "flows:\n  - from: node\n    to: kube-apiserver\n    ports: [0, 65536, -1, http, 443, 99999999999999999999, [1]]\n  - {from: node, to: kube-apiserver, ports: []}\n  - {from: node, to: kube-apiserver, ports: 443}\n"
        )),
        "f.yaml:8:13: flow 1: port 0 is out of range; ports are numbers from 1 to 65535\n\
         f.yaml:8:16: flow 1: port 65536 is out of range; ports are numbers from 1 to 65535\n\
         f.yaml:8:23: flow 1: port -1 is out of range; ports are numbers from 1 to 65535\n\
         f.yaml:8:27: flow 1: port \"http\" is not a number; ports are numbers from 1 to 65535\n\
         f.yaml:8:38: flow 1: port 99999999999999999999 is out of range; ports are numbers from 1 to 65535\n\
         f.yaml:8:60: flow 1: each port must be a number from 1 to 65535, found a list\n\
         f.yaml:9:45: flow 2: \"ports\" is empty; list the destination ports, e.g. \"ports: [443]\"\n\
         f.yaml:10:45: flow 3: \"ports\" must be a list, e.g. ports: [443]; found a single value"
    );
}

#[test]
fn bad_via_and_port_forward_targets() {
    assert_eq!(
        errors(&doc(
            "components:\n  - {name: a, namespace: a}\nflows:\n  - {from: a, to: a, ports: [80], via: portforward}\n  - {from: a, to: node, ports: [80], via: port-forward}\n"
        )),
        "f.yaml:8:40: flow 1: unknown via \"portforward\"; use \"direct\" (the default) or \"port-forward\"\n\
         f.yaml:9:5: flow 2: a port-forward ends inside a pod, so \"to\" must be a component or \"*\", not \"node\""
    );
}

#[test]
fn flows_between_two_externals_are_unobservable() {
    assert_eq!(
        errors(&doc(
            "externals:\n  - {name: x, hosts: [x.example]}\n  - {name: y, hosts: [y.example]}\nflows:\n  - {from: x, to: y, ports: [443]}\n"
        )),
        "f.yaml:9:5: flow 1: both ends are externals, so the flow never touches the cluster and can never be observed; one end must be a component or a reserved party"
    );
}

#[test]
fn bad_cidrs_and_hosts() {
    assert_eq!(
        errors(&doc(
            "externals:\n  - name: x\n    cidrs: [10.0.0.1/8, 10.0.0.0/33, \"2001:db8::/129\", banana, 10.0.0.0/8, 10.0.0.0/8]\n    hosts: [1.2.3.4, \"a..b\", ok.example, OK.example.]\n  - name: y\n    cidrs: [10.0.0.0/8]\n  - name: z\n"
        )),
        "f.yaml:7:13: external 1: bad CIDR: \"10.0.0.1/8\" has address bits set after the prefix; write the network address (10.0.0.0/8) or a longer prefix\n\
         f.yaml:7:25: external 1: bad CIDR: prefix length \"/33\" must be a number from 0 to 32\n\
         f.yaml:7:38: external 1: bad CIDR: prefix length \"/129\" must be a number from 0 to 128\n\
         f.yaml:7:56: external 1: bad CIDR: \"banana\" is not an IPv4 or IPv6 address\n\
         f.yaml:7:76: external 1: range 10.0.0.0/8 is listed twice; keep one\n\
         f.yaml:8:13: external 1: \"1.2.3.4\" is an address, not a host name; list it under cidrs instead\n\
         f.yaml:8:22: external 1: \"a..b\" is not a valid host name (empty label); write a name like \"api.example.com\" or \"*.example.com\"\n\
         f.yaml:8:42: external 1: host \"ok.example\" is listed twice; keep one\n\
         f.yaml:11:5: external 3: lists no hosts and no cidrs, so no address can ever match it; add \"hosts: [api.example.com]\" or \"cidrs: [192.0.2.0/24]\""
    );
}

#[test]
fn an_address_belongs_to_one_external() {
    assert_eq!(
        errors(&doc(
            "externals:\n  - {name: x, hosts: [a.example], cidrs: [10.0.0.0/8]}\n  - {name: y, hosts: [A.example.], cidrs: [\"::ffff:10.0.0.0/104\"]}\n"
        )),
        "f.yaml:7:5: external \"y\": host \"a.example\" is also listed by external \"x\"; an address can belong to only one external\n\
         f.yaml:7:5: external \"y\": range 10.0.0.0/8 is also listed by external \"x\"; an address can belong to only one external"
    );
}

#[test]
fn selectors_must_not_be_empty_or_shared() {
    assert_eq!(
        errors(&doc(
            "components:\n  - name: a\n    namespace: n\n    selector: {}\n  - name: b\n    namespace: n\n    selector:\n  - name: c\n    namespace: n\n    selector: {app: x, tier:}\n  - {name: d, namespace: n, selector: {app: x}}\n  - {name: e, namespace: n, selector: {app: x}}\n  - {name: f, namespace: Bad}\n"
        )),
        "f.yaml:8:15: component 1: selector is empty, so it would match every pod in namespace \"n\"; list the labels that identify this component's pods, or remove \"selector\" to use the default app.kubernetes.io/name: a\n\
         f.yaml:11:13: component 2: selector is empty, so it would match every pod in namespace \"n\"; list the labels that identify this component's pods, or remove \"selector\" to use the default app.kubernetes.io/name: b\n\
         f.yaml:14:28: component 3: selector label \"tier\" has no value; write the label's value (\"\" for an empty one)\n\
         f.yaml:16:5: component \"e\": same namespace and selector as component \"d\" (line 15), so both would claim the same pods; give one a selector that tells them apart\n\
         f.yaml:17:26: component 6: invalid namespace \"Bad\": a namespace has at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    );
}

#[test]
fn wrong_shapes_say_what_was_expected() {
    assert_eq!(
        errors(&doc(
            "components: web\nexternals:\n  - just-a-name\nflows:\n  - from: [a]\n    to: node\n    ports: [1]\n    description: {a: b}\n"
        )),
        "f.yaml:5:13: \"components\" must be a list with one entry per component (\"- name: ...\"), found a single value\n\
         f.yaml:7:5: external 1 must be a mapping of fields (name, hosts, cidrs, description), found a single value\n\
         f.yaml:9:11: flow 1: \"from\" must be a single value, found a list\n\
         f.yaml:12:18: flow 1: \"description\" must be text, found a mapping; quote it or use a block scalar (|)"
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let e = Architecture::from_yaml(
        "apiVersion: v2\nkind: Architecture\nmetadata: {name: t}\nflows:\n  - {from: a, to: b, ports: [0]}\n",
        "f.yaml",
    )
    .unwrap_err();
    assert_eq!(e.len(), 4, "{e}");
}

#[test]
fn load_reports_unreadable_files_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    assert_eq!(
        Architecture::load(&missing).unwrap_err().to_string(),
        format!(
            "{}: cannot read the architecture file: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"name: \xff\xfe").unwrap();
    assert_eq!(
        Architecture::load(&binary).unwrap_err().to_string(),
        format!(
            "{}: not UTF-8 text (invalid byte at offset 6); save the file as UTF-8",
            binary.display()
        )
    );
}

#[test]
fn validate_command_prints_ok_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, VALID).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(validate_to(&good, &mut out, &mut err), 0);
    let hash = Architecture::from_yaml(VALID, "x")
        .unwrap()
        .hash()
        .to_owned();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "ok: {} (shop, 3 components, 2 externals, 2 flows, {hash})\n",
            good.display()
        )
    );
    assert!(err.is_empty());

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        VALID.replace("to: db", "to: dbb").replace("[443]", "[0]"),
    )
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(validate_to(&bad, &mut out, &mut err), 2);
    assert!(out.is_empty());
    let b = bad.display();
    assert_eq!(
        String::from_utf8(err).unwrap(),
        format!(
            "{b}:25:9: flow 1: unknown party \"dbb\" in \"to\"; declare it under components or externals, or use one of: node, kube-apiserver, *; did you mean \"db\"?\n\
             {b}:29:13: flow 2: port 0 is out of range; ports are numbers from 1 to 65535\n\
             {b}: 2 errors; the file was not accepted\n"
        )
    );
}

// --- The shipped model of the Trackunit system. ------------------------------------------------

const TRACKUNIT: &str = include_str!("../../../deploy/architecture/trackunit.yaml");

#[test]
fn the_trackunit_model_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/architecture/trackunit.yaml");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        validate_to(&path, &mut out, &mut err),
        0,
        "{}",
        String::from_utf8_lossy(&err)
    );
}

#[test]
fn every_connection_of_the_trackunit_document_is_a_rule() {
    let m = Architecture::from_yaml(TRACKUNIT, "trackunit.yaml").unwrap();
    // The connections "System Network Communication Architecture" names, in its order.
    let documented = [
        ("trackunit-client", "kong-kong-proxy", Via::Direct),
        ("kong-kong-proxy", "oauth2-proxy", Via::Direct),
        ("oauth2-proxy", "graph-gateway", Via::Direct),
        ("graph-gateway", "rabbitmq", Via::Direct),
        ("graph-gateway", "microsoft-entra-id", Via::Direct),
        ("graph-gateway", "tu-ingestion-service", Via::Direct),
        ("svc-analysis-orchestrator", "rabbitmq", Via::Direct),
        ("svc-messaging-bridge", "redpanda", Via::Direct),
        ("svc-messaging-bridge", "rabbitmq", Via::PortForward),
    ];
    for (from, to, via) in documented {
        assert!(
            m.rules()
                .iter()
                .any(|r| r.from.name() == from && r.to.name() == to && r.via == via),
            "no rule {from} -> {to} ({})",
            via.name()
        );
    }
    let components: Vec<(&str, &str)> = m
        .components()
        .iter()
        .map(|c| (c.name.as_str(), c.namespace.as_str()))
        .collect();
    assert_eq!(
        components,
        [
            ("kong-kong-proxy", "kong"),
            ("oauth2-proxy", "oauth2-proxy"),
            ("graph-gateway", "graph-gateway"),
            ("rabbitmq", "rabbitmq"),
            ("svc-analysis-orchestrator", "svc-analysis-orchestrator"),
            ("svc-messaging-bridge", "svc-messaging-bridge"),
            ("redpanda", "redpanda"),
            ("kube-dns", "kube-system"),
        ]
    );
    assert_eq!(
        m.external_for_host("login.microsoftonline.com"),
        Some("microsoft-entra-id")
    );
    assert_eq!(
        m.external_for_host("tu-ingestion.tail1234.ts.net"),
        Some("tu-ingestion-service")
    );
    assert!(
        m.rules().iter().all(|r| r.description.is_some()),
        "every flow is described"
    );
}

mod properties;
