//! Names both ends of a flow: pod, workload and Service from the Kubernetes index; then the
//! architecture's component, external or reserved party for each end.

use std::collections::{BTreeMap, HashMap};

use observer_common::record::{Direction, Endpoint, FlowRecord, Scope};

use crate::{
    architecture::{Architecture, NODE},
    cgroups::{CgroupOwner, CgroupResolver},
    inventory::{Attribution, Index, TargetPort},
    judge::Context,
    names::HostNames,
};

/// A pod as far as attribution needs it.
#[derive(Clone, Debug)]
struct PodEnd {
    namespace: String,
    pod: String,
    workload: observer_common::record::Workload,
    labels: BTreeMap<String, String>,
}

/// The result of attributing one record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attributed {
    pub ctx: Context,
    /// An address inside the cluster's ranges that the index does not know yet (a pod that
    /// started a moment ago): worth holding the record and trying again.
    pub incomplete: bool,
}

pub struct Attributor {
    cgroups: CgroupResolver,
    /// Network namespace inode -> the pod living in it, learned from the pod addresses seen on
    /// sockets of that namespace; names the pod behind loopback connections.
    netns_pods: HashMap<u32, PodEnd>,
    pub host_netns: Option<u32>,
    /// Whether processes' cgroups on this machine can be consulted (not when re-judging a log
    /// recorded elsewhere).
    live: bool,
}

impl Attributor {
    pub fn new(host_netns: Option<u32>) -> Attributor {
        Attributor {
            cgroups: CgroupResolver::new(),
            netns_pods: HashMap::new(),
            host_netns,
            live: true,
        }
    }

    /// For records read back from a flow log: the cgroups and namespaces they name belong to
    /// the node that recorded them, so no port-forward is inferred from this machine's.
    pub fn offline() -> Attributor {
        Attributor {
            cgroups: CgroupResolver::at(None),
            netns_pods: HashMap::new(),
            host_netns: None,
            live: false,
        }
    }

    /// Fills namespace, pod, workload, service, host and component of both ends, and says
    /// whether the flow is a port-forward and what the Service's target port is.
    pub fn attribute(
        &mut self,
        record: &mut FlowRecord,
        index: Option<&Index>,
        model: Option<&Architecture>,
        names: &HostNames,
    ) -> Attributed {
        let mut out = Attributed::default();
        let mut labels = [BTreeMap::new(), BTreeMap::new()];
        if let Some(index) = index {
            for (i, ep) in [&mut record.src, &mut record.dst].into_iter().enumerate() {
                let Some(ip) = ep.ip else { continue };
                let a: Attribution = index.attribute(ip, if i == 0 { None } else { ep.port });
                a.fill(ep);
                labels[i] = a.labels;
                if i == 1
                    && let Some(sp) = a.service_port
                {
                    out.ctx.target_port = match sp.target_port {
                        Some(TargetPort::Number(n)) => Some(n),
                        _ => None,
                    };
                }
            }
        }
        // The end on this node: learn or recall which pod owns its network namespace.
        let local_is_src = record.direction == Direction::Egress;
        let local = if local_is_src {
            &record.src
        } else {
            &record.dst
        };
        if let (Some(ns), Some(pod), Some(w)) = (&local.namespace, &local.pod, &local.workload) {
            let li = if local_is_src { 0 } else { 1 };
            self.netns_pods.insert(
                record.netns,
                PodEnd {
                    namespace: ns.clone(),
                    pod: pod.clone(),
                    workload: w.clone(),
                    labels: labels[li].clone(),
                },
            );
        }
        if record.dst.scope == Some(Scope::Local)
            && let Some(pod) = self.netns_pods.get(&record.netns).cloned()
        {
            // Loopback: both ends are inside that pod.
            for (i, ep) in [&mut record.src, &mut record.dst].into_iter().enumerate() {
                set_pod(ep, &pod);
                labels[i] = pod.labels.clone();
            }
        }
        // A loopback connection into a pod by a task outside every pod: the container runtime
        // serving a port-forward (its initiator is not visible on the node).
        if self.live
            && record.dst.scope == Some(Scope::Local)
            && Some(record.netns) != self.host_netns
            && let Some(p) = &record.process
            && self.cgroups.owner(p.cgroup_id) == CgroupOwner::Host
        {
            out.ctx.port_forward = true;
            record.src = Endpoint {
                ip: record.src.ip,
                scope: record.src.scope,
                ..Default::default()
            };
            labels[0].clear();
        }
        if record.dst.scope == Some(Scope::External)
            && record.dst.host.is_none()
            && let Some(ip) = record.dst.ip
        {
            record.dst.host = names.name(ip).map(str::to_owned);
        }
        if let Some(model) = model {
            for (i, ep) in [&mut record.src, &mut record.dst].into_iter().enumerate() {
                if ep.component.is_none() {
                    ep.component = component(model, ep, &labels[i], i == 0);
                }
            }
        }
        out.incomplete = [&record.src, &record.dst].iter().any(|ep| {
            ep.scope == Some(Scope::Cluster) && ep.namespace.is_none() && ep.component.is_none()
        });
        out
    }
}

fn set_pod(ep: &mut Endpoint, pod: &PodEnd) {
    ep.namespace = Some(pod.namespace.clone());
    ep.pod = Some(pod.pod.clone());
    ep.workload = Some(pod.workload.clone());
}

/// The architecture party of one end.
fn component(
    model: &Architecture,
    ep: &Endpoint,
    labels: &BTreeMap<String, String>,
    as_source: bool,
) -> Option<String> {
    if let Some(ns) = &ep.namespace {
        return model.component_for(ns, labels).map(str::to_owned);
    }
    match ep.scope? {
        Scope::Node => Some(NODE.to_owned()),
        Scope::External => {
            let by_host = ep.host.as_deref().and_then(|h| model.external_for_host(h));
            let by_ip = ep.ip.and_then(|ip| {
                if as_source {
                    model.external_for_ip(ip)
                } else {
                    model.external_for_destination_ip(ip)
                }
            });
            by_host.or(by_ip).map(str::to_owned)
        }
        Scope::Cluster | Scope::Local => None,
    }
}
