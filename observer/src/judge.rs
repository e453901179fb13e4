//! Fills a flow record's verdict from the architecture in force, once both ends are attributed
//! (their `component` names a component, an external, `node` or `kube-apiserver`, or is null).

use observer_common::record::{FlowRecord, Scope, Verdict};

use crate::architecture::{Architecture, FlowFacts, Judgement, KUBE_APISERVER, NODE, Party};

/// The party a record's `component` field names in `model`.
pub fn party(model: &Architecture, component: Option<&str>) -> Party {
    match component {
        Some(NODE) => Party::Node,
        Some(KUBE_APISERVER) => Party::KubeApiserver,
        Some(name) if model.components().iter().any(|c| c.name == name) => {
            Party::Component(name.to_owned())
        }
        Some(name) if model.externals().iter().any(|e| e.name == name) => {
            Party::External(name.to_owned())
        }
        None | Some(_) => Party::Unknown,
    }
}

/// What attribution knows beyond the record itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The Service's target port, when the connection named a Service port.
    pub target_port: Option<u16>,
    /// A loopback connection into a pod's network namespace by a process outside the pod.
    pub port_forward: bool,
}

/// Judges `record` and writes `verdict`, `reason`, `rule` and `model`.
pub fn judge(model: &Architecture, record: &mut FlowRecord, ctx: Context) {
    let facts = FlowFacts {
        src: party(model, record.src.component.as_deref()),
        dst: party(model, record.dst.component.as_deref()),
        dst_scope: record.dst.scope.unwrap_or(Scope::External),
        port: record.dst.port.unwrap_or(0),
        target_port: ctx.target_port,
        port_forward: ctx.port_forward,
    };
    match model.judge(&facts) {
        Judgement::Expected { rule } => {
            record.verdict = Some(Verdict::Expected);
            record.reason = None;
            record.rule = Some(rule);
        }
        Judgement::Unexpected { reason } => {
            record.verdict = Some(Verdict::Unexpected);
            record.reason = Some(reason);
            record.rule = None;
        }
    }
    record.model = Some(model.hash().to_owned());
}

#[cfg(test)]
mod tests {
    use observer_common::record::{Direction, Endpoint, Outcomes, Protocol, Reason, Timestamp};

    use super::*;

    const MODEL: &str = r#"
apiVersion: observer/v1alpha1
kind: Architecture
metadata: {name: t}
components:
  - {name: api, namespace: shop}
  - {name: db, namespace: data}
externals:
  - {name: payments, hosts: [pay.example.com], cidrs: [192.0.2.0/24]}
flows:
  - {from: api, to: db, ports: [5432], id: api-db}
  - {from: api, to: payments, ports: [443], id: api-pay}
  - {from: node, to: api, ports: [8080], id: probes}
"#;

    fn record(src: Option<&str>, dst: Option<&str>, scope: Scope, port: u16) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: "n".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count: 1,
            outcomes: Outcomes {
                established: 1,
                ..Default::default()
            },
            pre_existing: false,
            first_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            netns: 1,
            process: None,
            src: Endpoint {
                component: src.map(Into::into),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                component: dst.map(Into::into),
                port: Some(port),
                scope: Some(scope),
                ..Default::default()
            },
            verdict: None,
            reason: None,
            rule: None,
            model: None,
        }
    }

    #[test]
    fn records_get_verdict_rule_reason_and_model() {
        let m = Architecture::from_yaml(MODEL, "t.yaml").unwrap();
        let mut r = record(Some("api"), Some("db"), Scope::Cluster, 5432);
        judge(&m, &mut r, Context::default());
        assert_eq!(
            (r.verdict, r.reason, r.rule.as_deref()),
            (Some(Verdict::Expected), None, Some("api-db"))
        );
        assert_eq!(r.model.as_deref(), Some(m.hash()));

        let mut r = record(Some("api"), Some("db"), Scope::Cluster, 22);
        judge(&m, &mut r, Context::default());
        assert_eq!(
            (r.verdict, r.reason, r.rule),
            (Some(Verdict::Unexpected), Some(Reason::WrongPort), None)
        );

        let mut r = record(Some("api"), None, Scope::External, 443);
        judge(&m, &mut r, Context::default());
        assert_eq!(r.reason, Some(Reason::UnknownDestination));

        let mut r = record(Some("node"), Some("api"), Scope::Cluster, 8080);
        judge(&m, &mut r, Context::default());
        assert_eq!(r.rule.as_deref(), Some("probes"));

        let mut r = record(Some("not-in-model"), Some("db"), Scope::Cluster, 5432);
        judge(&m, &mut r, Context::default());
        assert_eq!(r.reason, Some(Reason::UnknownSource));
    }
}
