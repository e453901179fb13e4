//! Each verdict and reason, and the precedence between reasons.

use observer_common::record::{Reason, Scope};

use super::{super::Architecture, FlowFacts, Judgement, Party, is_unexpected_egress};

const MODEL: &str = r#"apiVersion: observer/v1alpha1
kind: Architecture
metadata:
  name: v
components:
  - {name: web, namespace: shop}
  - {name: db, namespace: data}
  - {name: mq, namespace: mq}
  - {name: dns, namespace: kube-system}
externals:
  - {name: payments, hosts: [api.payments.example]}
flows:
  - {id: web-db, from: web, to: db, ports: [5432]}
  - {id: web-pays, from: web, to: payments, ports: [443]}
  - {id: any-dns, from: "*", to: dns, ports: [53]}
  - {id: web-any, from: web, to: "*", ports: [9000]}
  - {id: web-mq-specific, from: web, to: mq, ports: [9000]}
  - {id: probes, from: node, to: web, ports: [8080]}
  - {id: api, from: web, to: kube-apiserver, ports: [443]}
  - {id: mq-forward, from: web, to: mq, ports: [5672], via: port-forward}
"#;

fn model() -> Architecture {
    Architecture::from_yaml(MODEL, "v.yaml").expect("valid")
}

fn c(name: &str) -> Party {
    Party::Component(name.to_owned())
}

/// A direct connection between pods to `port`.
fn flow(src: Party, dst: Party, port: u16) -> FlowFacts {
    FlowFacts {
        src,
        dst,
        dst_scope: Scope::Cluster,
        port,
        target_port: None,
        port_forward: false,
    }
}

fn expected(rule: &str) -> Judgement {
    Judgement::Expected {
        rule: rule.to_owned(),
    }
}

fn unexpected(reason: Reason) -> Judgement {
    Judgement::Unexpected { reason }
}

#[test]
fn a_documented_flow_is_expected_with_its_rule() {
    let m = model();
    assert_eq!(m.judge(&flow(c("web"), c("db"), 5432)), expected("web-db"));
    assert_eq!(
        m.judge(&FlowFacts {
            dst_scope: Scope::External,
            ..flow(c("web"), Party::External("payments".into()), 443)
        }),
        expected("web-pays")
    );
}

#[test]
fn rules_have_a_direction() {
    assert_eq!(
        model().judge(&flow(c("db"), c("web"), 5432)),
        unexpected(Reason::UndocumentedFlow)
    );
}

#[test]
fn each_reason() {
    let m = model();
    assert_eq!(
        m.judge(&flow(Party::Unknown, c("db"), 5432)),
        unexpected(Reason::UnknownSource)
    );
    assert_eq!(
        m.judge(&flow(c("web"), Party::Unknown, 5432)),
        unexpected(Reason::UnknownDestination)
    );
    assert_eq!(
        m.judge(&flow(c("web"), c("db"), 5433)),
        unexpected(Reason::WrongPort)
    );
    assert_eq!(
        m.judge(&flow(c("mq"), c("db"), 5432)),
        unexpected(Reason::UndocumentedFlow)
    );
}

#[test]
fn reasons_take_precedence_in_order() {
    let m = model();
    // Both ends unknown (and no rule, no port): the source is reported.
    assert_eq!(
        m.judge(&flow(Party::Unknown, Party::Unknown, 1)),
        unexpected(Reason::UnknownSource)
    );
    // An unknown destination outranks a port no rule lists.
    assert_eq!(
        m.judge(&flow(c("web"), Party::Unknown, 1)),
        unexpected(Reason::UnknownDestination)
    );
    // A rule joining the ends on another port makes it wrong-port, not undocumented.
    assert_eq!(
        m.judge(&flow(c("web"), Party::External("payments".into()), 80)),
        unexpected(Reason::WrongPort)
    );
}

#[test]
fn star_means_any_component_on_either_side() {
    let m = model();
    assert_eq!(m.judge(&flow(c("db"), c("dns"), 53)), expected("any-dns"));
    assert_eq!(m.judge(&flow(c("dns"), c("dns"), 53)), expected("any-dns"));
    assert_eq!(m.judge(&flow(c("web"), c("db"), 9000)), expected("web-any"));
    // Not externals or reserved parties.
    assert_eq!(
        m.judge(&flow(Party::Node, c("dns"), 53)),
        unexpected(Reason::UndocumentedFlow)
    );
    assert_eq!(
        m.judge(&flow(Party::External("payments".into()), c("dns"), 53)),
        unexpected(Reason::UndocumentedFlow)
    );
    assert_eq!(
        m.judge(&flow(c("web"), Party::KubeApiserver, 9000)),
        unexpected(Reason::WrongPort)
    );
    // A rule naming both ends is reported over one with "*", whatever the file order.
    assert_eq!(
        m.judge(&flow(c("web"), c("mq"), 9000)),
        expected("web-mq-specific")
    );
}

#[test]
fn reserved_parties() {
    let m = model();
    assert_eq!(
        m.judge(&flow(Party::Node, c("web"), 8080)),
        expected("probes")
    );
    assert_eq!(
        m.judge(&flow(Party::Node, c("db"), 8080)),
        unexpected(Reason::UndocumentedFlow)
    );
    assert_eq!(
        m.judge(&flow(c("web"), Party::KubeApiserver, 443)),
        expected("api")
    );
    assert_eq!(
        m.judge(&flow(Party::KubeApiserver, c("web"), 443)),
        unexpected(Reason::UndocumentedFlow)
    );
}

#[test]
fn a_service_port_or_its_target_port_matches() {
    let m = model();
    // Service port 80 → target port 5432: the target port is documented.
    assert_eq!(
        m.judge(&FlowFacts {
            target_port: Some(5432),
            ..flow(c("web"), c("db"), 80)
        }),
        expected("web-db")
    );
    // Service port 5432 → target port 15432: the Service port is documented.
    assert_eq!(
        m.judge(&FlowFacts {
            target_port: Some(15432),
            ..flow(c("web"), c("db"), 5432)
        }),
        expected("web-db")
    );
    assert_eq!(
        m.judge(&FlowFacts {
            target_port: Some(81),
            ..flow(c("web"), c("db"), 80)
        }),
        unexpected(Reason::WrongPort)
    );
}

#[test]
fn connections_inside_one_pod_are_never_unexpected() {
    let m = model();
    let local = FlowFacts {
        dst_scope: Scope::Local,
        ..flow(Party::Unknown, Party::Unknown, 12345)
    };
    assert_eq!(m.judge(&local), expected("local"));
}

/// What the node sees of `kubectl port-forward` into `dst`: the runtime's loopback connection.
fn port_forward(src: Party, dst: Party, port: u16) -> FlowFacts {
    FlowFacts {
        dst_scope: Scope::Local,
        port_forward: true,
        ..flow(src, dst, port)
    }
}

#[test]
fn a_port_forward_rule_matches_whoever_started_it() {
    let m = model();
    for src in [c("web"), c("db"), Party::Node, Party::Unknown] {
        assert_eq!(
            m.judge(&port_forward(src, c("mq"), 5672)),
            expected("mq-forward")
        );
    }
}

#[test]
fn a_port_forward_without_a_rule_is_unexpected() {
    let m = model();
    assert_eq!(
        m.judge(&port_forward(Party::Node, c("mq"), 15672)),
        unexpected(Reason::WrongPort)
    );
    // web-db is a direct rule: it does not cover a port-forward to db.
    assert_eq!(
        m.judge(&port_forward(c("web"), c("db"), 5432)),
        unexpected(Reason::UndocumentedFlow)
    );
    assert_eq!(
        m.judge(&port_forward(Party::Node, Party::Unknown, 5432)),
        unexpected(Reason::UnknownDestination)
    );
}

#[test]
fn port_forward_rules_do_not_match_direct_connections() {
    assert_eq!(
        model().judge(&flow(c("web"), c("mq"), 5672)),
        unexpected(Reason::WrongPort),
        "web→mq is documented on 9000 (direct) only"
    );
}

#[test]
fn unexpected_egress_is_an_unexpected_flow_leaving_the_cluster() {
    let m = model();
    let out = FlowFacts {
        dst_scope: Scope::External,
        ..flow(c("db"), Party::External("payments".into()), 443)
    };
    let j = m.judge(&out);
    assert_eq!(j, unexpected(Reason::UndocumentedFlow));
    assert!(is_unexpected_egress(&j, Scope::External));
    assert!(!is_unexpected_egress(&j, Scope::Cluster));
    assert!(!is_unexpected_egress(
        &expected("web-pays"),
        Scope::External
    ));
    let unknown_out = FlowFacts {
        dst_scope: Scope::External,
        ..flow(c("web"), Party::Unknown, 443)
    };
    assert!(is_unexpected_egress(
        &m.judge(&unknown_out),
        Scope::External
    ));
}

#[test]
fn the_trackunit_model_accepts_its_own_healthy_traffic() {
    let m = Architecture::from_yaml(
        include_str!("../../../../deploy/architecture/trackunit.yaml"),
        "trackunit.yaml",
    )
    .expect("valid");
    let ext = |n: &str| Party::External(n.to_owned());
    let healthy = [
        (
            ext("trackunit-client"),
            c("kong-kong-proxy"),
            8443,
            "client-to-kong",
        ),
        (
            c("graph-gateway"),
            c("rabbitmq"),
            5672,
            "graph-gateway-to-rabbitmq",
        ),
        (
            c("graph-gateway"),
            ext("microsoft-entra-id"),
            443,
            "graph-gateway-to-entra-id",
        ),
        (c("redpanda"), c("kube-dns"), 53, "cluster-dns"),
        (Party::Node, c("kube-dns"), 8181, "probe-kube-dns"),
        (
            c("kube-dns"),
            Party::KubeApiserver,
            6443,
            "kube-dns-watches-api",
        ),
    ];
    for (src, dst, port, rule) in healthy {
        assert_eq!(m.judge(&flow(src, dst, port)), expected(rule));
    }
    assert_eq!(
        m.judge(&port_forward(Party::Node, c("rabbitmq"), 5672)),
        expected("bridge-to-rabbitmq-port-forward")
    );
    assert_eq!(
        m.judge(&flow(c("svc-messaging-bridge"), c("rabbitmq"), 5672)),
        unexpected(Reason::UndocumentedFlow),
        "the document has the bridge reach rabbitmq only through port-forwarding"
    );
}
