//! The verdict engine: judges one observed flow against the architecture's rules. Pure: the
//! caller attributes both ends to parties first (pod → component, address or host → external).

use observer_common::record::{Reason, Scope};

use super::{Architecture, Rule, RuleEnd, Via, schema::LOCAL_RULE_ID};

/// Who one end of a flow is, as attribution found it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// A pod that a component's namespace and selector match.
    Component(String),
    /// An outside address or host that an external lists.
    External(String),
    /// A process in a node's own network namespace (kubelet, host-network pods).
    Node,
    KubeApiserver,
    /// Nothing in the model claims this end.
    Unknown,
}

/// What the verdict depends on; everything else about a flow is irrelevant to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowFacts {
    /// The end that opened the connection.
    pub src: Party,
    pub dst: Party,
    pub dst_scope: Scope,
    /// The destination port as connected: the Service port for a ClusterIP, the container port
    /// for a pod address.
    pub port: u16,
    /// For a connection to a Service, the port of the pod behind it.
    pub target_port: Option<u16>,
    /// A loopback connection inside the destination pod made by the container runtime on behalf
    /// of `kubectl port-forward`.
    pub port_forward: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Judgement {
    /// The rule (its id) that allows the flow.
    Expected {
        rule: String,
    },
    Unexpected {
        reason: Reason,
    },
}

impl Judgement {
    pub fn is_expected(&self) -> bool {
        matches!(self, Judgement::Expected { .. })
    }
}

/// An unexpected flow that leaves the cluster: the alert that matters most (exfiltration,
/// a dependency nobody documented).
pub fn is_unexpected_egress(j: &Judgement, scope: Scope) -> bool {
    matches!(j, Judgement::Unexpected { .. }) && scope == Scope::External
}

impl Architecture {
    /// Judges one flow. Unexpected reasons take this precedence: `unknown-source` >
    /// `unknown-destination` > `wrong-port` > `undocumented-flow`.
    pub fn judge(&self, flow: &FlowFacts) -> Judgement {
        if flow.dst_scope == Scope::Local && !flow.port_forward {
            // Loopback inside one pod never crosses a network boundary the model describes.
            return Judgement::Expected {
                rule: LOCAL_RULE_ID.to_owned(),
            };
        }
        if flow.port_forward {
            // The initiator of a port-forward is invisible on the node (the container runtime
            // opens the connection), so only the destination and port can be judged.
            if flow.dst == Party::Unknown {
                return unexpected(Reason::UnknownDestination);
            }
            return self.match_rules(flow, Via::PortForward, |_| true);
        }
        if flow.src == Party::Unknown {
            return unexpected(Reason::UnknownSource);
        }
        if flow.dst == Party::Unknown {
            return unexpected(Reason::UnknownDestination);
        }
        self.match_rules(flow, Via::Direct, |r| end_matches(&r.from, &flow.src))
    }

    /// Among the rules of kind `via` that join the flow's ends, the best one whose ports
    /// include the flow's port or target port; `wrong-port` when rules join the ends but none
    /// on this port, `undocumented-flow` when none joins them.
    fn match_rules(
        &self,
        flow: &FlowFacts,
        via: Via,
        src_matches: impl Fn(&Rule) -> bool,
    ) -> Judgement {
        let mut joined = false;
        let mut best: Option<&Rule> = None;
        for rule in self.rules() {
            if rule.via != via || !end_matches(&rule.to, &flow.dst) || !src_matches(rule) {
                continue;
            }
            joined = true;
            let port_matches = rule.ports.binary_search(&flow.port).is_ok()
                || flow
                    .target_port
                    .is_some_and(|t| rule.ports.binary_search(&t).is_ok());
            // A rule naming both ends says more than one with "*": report it.
            if port_matches && best.is_none_or(|b| wildcards(rule) < wildcards(b)) {
                best = Some(rule);
            }
        }
        match (best, joined) {
            (Some(rule), _) => Judgement::Expected {
                rule: rule.id.clone(),
            },
            (None, true) => unexpected(Reason::WrongPort),
            (None, false) => unexpected(Reason::UndocumentedFlow),
        }
    }
}

fn unexpected(reason: Reason) -> Judgement {
    Judgement::Unexpected { reason }
}

fn wildcards(rule: &Rule) -> usize {
    usize::from(rule.from == RuleEnd::AnyComponent) + usize::from(rule.to == RuleEnd::AnyComponent)
}

fn end_matches(end: &RuleEnd, party: &Party) -> bool {
    match (end, party) {
        (RuleEnd::Component(a), Party::Component(b))
        | (RuleEnd::External(a), Party::External(b)) => a == b,
        (RuleEnd::AnyComponent, Party::Component(_))
        | (RuleEnd::Node, Party::Node)
        | (RuleEnd::KubeApiserver, Party::KubeApiserver) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
