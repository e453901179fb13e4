//! Names both ends of a flow: pod, workload and Service from the Kubernetes index; then the
//! architecture's component, external or reserved party for each end.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use observer_common::record::{Direction, Endpoint, FlowRecord, Scope};

use crate::{
    architecture::{Architecture, NODE},
    cgroups::{CgroupOwner, CgroupResolver},
    fasthash::FastHash,
    inventory::{Index, Labels, ServiceKey, TargetPort},
    judge::Context,
    names::HostNames,
};

/// A pod as far as attribution needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEnd {
    namespace: String,
    pod: String,
    workload: observer_common::record::Workload,
    labels: Labels,
}

/// The pod an attributor learned for a network namespace from one record (see
/// [`Attributor::learned`]).
#[derive(Clone, Debug)]
pub struct NetnsPod {
    netns: u32,
    pod: Arc<PodEnd>,
    /// [`Attributor::netns_changes`] when this was last learned: while that has not moved, the
    /// attributor still holds exactly this entry and learning it again changes nothing.
    learned_at: u64,
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
    netns_pods: HashMap<u32, Arc<PodEnd>, FastHash>,
    /// How many times an entry of `netns_pods` was set (entries are never removed).
    netns_changes: u64,
    pub host_netns: Option<u32>,
    /// Whether processes' cgroups on this machine can be consulted (not when re-judging a log
    /// recorded elsewhere).
    live: bool,
}

impl Attributor {
    pub fn new(host_netns: Option<u32>) -> Attributor {
        Attributor {
            cgroups: CgroupResolver::new(),
            netns_pods: HashMap::default(),
            netns_changes: 0,
            host_netns,
            live: true,
        }
    }

    /// For records read back from a flow log: the cgroups and namespaces they name belong to
    /// the node that recorded them, so no port-forward is inferred from this machine's.
    pub fn offline() -> Attributor {
        Attributor {
            cgroups: CgroupResolver::at(None),
            netns_pods: HashMap::default(),
            netns_changes: 0,
            host_netns: None,
            live: false,
        }
    }

    /// What [`attribute`](Self::attribute) learned from `record` about its network namespace:
    /// to be learned again ([`relearn`](Self::relearn)) with each later record of the flow that
    /// skips attribution, as attributing it would.
    pub fn learned(&self, record: &FlowRecord) -> Option<NetnsPod> {
        let local = match record.direction {
            Direction::Egress => &record.src,
            Direction::Ingress => &record.dst,
        };
        let (Some(ns), Some(pod), Some(_)) = (&local.namespace, &local.pod, &local.workload) else {
            return None;
        };
        let learned = self.netns_pods.get(&record.netns)?;
        (learned.namespace == *ns && learned.pod == *pod).then(|| NetnsPod {
            netns: record.netns,
            pod: learned.clone(),
            learned_at: self.netns_changes,
        })
    }

    /// Learns again what a record of a flow taught (see [`learned`](Self::learned)).
    pub fn relearn(&mut self, learned: &mut NetnsPod) {
        // With many flows the map lookup is a cache miss per record; mostly nothing changed.
        if learned.learned_at == self.netns_changes {
            return;
        }
        learned.learned_at = self.netns_changes;
        let same = self
            .netns_pods
            .get(&learned.netns)
            .is_some_and(|p| Arc::ptr_eq(p, &learned.pod) || **p == *learned.pod);
        if !same {
            self.netns_pods.insert(learned.netns, learned.pod.clone());
            self.netns_changes += 1;
            learned.learned_at = self.netns_changes;
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
        let mut labels = [Labels::default(), Labels::default()];
        if let Some(index) = index {
            for (i, ep) in [&mut record.src, &mut record.dst].into_iter().enumerate() {
                let Some(ip) = ep.ip else { continue };
                let a = index
                    .attribute(ip, if i == 0 { None } else { ep.port })
                    .fill(ep);
                labels[i] = a.labels;
                if i == 1
                    && let Some(sp) = a.service_port
                {
                    out.ctx.target_port = match &sp.target_port {
                        Some(TargetPort::Number(n)) => Some(*n),
                        // Moved into the endpoint by `fill`.
                        Some(TargetPort::Name(name)) => ep
                            .namespace
                            .as_deref()
                            .zip(ep.service.as_deref())
                            .and_then(|(ns, svc)| named_target_port(index, ns, svc, name)),
                        None => None,
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
            let end = PodEnd {
                namespace: ns.clone(),
                pod: pod.clone(),
                workload: w.clone(),
                labels: labels[li].clone(),
            };
            // The same pod again keeps its entry, so that flows caching it share one.
            if self
                .netns_pods
                .get(&record.netns)
                .is_none_or(|p| **p != end)
            {
                self.netns_pods.insert(record.netns, Arc::new(end));
                self.netns_changes += 1;
            }
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
            labels[0] = Labels::default();
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

/// A Service's named `targetPort` as a number: the container port of that name (TCP) on the
/// pods behind the Service (one pod template, so the first that declares it).
fn named_target_port(index: &Index, namespace: &str, service: &str, name: &str) -> Option<u16> {
    let svc = index.service(&ServiceKey::new(namespace, service))?;
    index.pods_for_service(svc).find_map(|pod| {
        pod.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == "TCP")
            .map(|p| p.port)
    })
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use observer_common::record::{Outcomes, Protocol, Timestamp};

    use super::*;
    use crate::inventory::{IndexHandle, NodeAddresses, offline};

    const OBJECTS: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: web-1, uid: u1, labels: {app.kubernetes.io/name: web}}
  spec:
    containers:
    - {name: app, ports: [{containerPort: 8080, name: http, protocol: TCP}]}
  status: {phase: Running, podIP: 10.244.1.5, podIPs: [{ip: 10.244.1.5}]}
- apiVersion: v1
  kind: Service
  metadata: {namespace: shop, name: web}
  spec:
    clusterIP: 10.96.0.20
    selector: {app.kubernetes.io/name: web}
    ports:
    - {name: named, port: 80, protocol: TCP, targetPort: http}
    - {name: numbered, port: 81, protocol: TCP, targetPort: 8080}
    - {name: dangling, port: 82, protocol: TCP, targetPort: nope}
"#;

    fn to(ip: &str, port: u16) -> FlowRecord {
        FlowRecord {
            schema: 1,
            node: "n".into(),
            protocol: Protocol::Tcp,
            direction: Direction::Egress,
            count: 1,
            outcomes: Outcomes::default(),
            pre_existing: false,
            first_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            last_seen: Timestamp(std::time::SystemTime::UNIX_EPOCH),
            netns: 1,
            process: None,
            src: Endpoint {
                ip: Some("10.244.2.9".parse().unwrap()),
                scope: Some(Scope::Cluster),
                ..Default::default()
            },
            dst: Endpoint {
                ip: Some(ip.parse().unwrap()),
                port: Some(port),
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
    fn a_named_target_port_is_resolved_through_the_backend_pods() {
        let handle = IndexHandle::new(NodeAddresses::default());
        offline::parse(Path::new("t.yaml"), OBJECTS)
            .unwrap()
            .feed(&handle);
        let index = handle.snapshot();
        let mut a = Attributor::new(None);
        let mut target = |port| {
            let mut r = to("10.96.0.20", port);
            a.attribute(&mut r, Some(&index), None, &HostNames::default())
                .ctx
                .target_port
        };
        assert_eq!(target(80), Some(8080), "named");
        assert_eq!(target(81), Some(8080), "numbered");
        assert_eq!(target(82), None, "no pod declares it");
    }

    #[test]
    fn relearning_a_flow_restores_its_pod_after_another_flow_changed_it() {
        let two_pods = format!(
            "{OBJECTS}{}",
            r#"- apiVersion: v1
  kind: Pod
  metadata: {namespace: shop, name: web-2, uid: u2, labels: {app.kubernetes.io/name: web}}
  spec: {containers: [{name: app}]}
  status: {phase: Running, podIP: 10.244.1.6, podIPs: [{ip: 10.244.1.6}]}
"#
        );
        let handle = IndexHandle::new(NodeAddresses::default());
        offline::parse(Path::new("t.yaml"), &two_pods)
            .unwrap()
            .feed(&handle);
        let index = handle.snapshot();
        let names = HostNames::default();
        let mut a = Attributor::offline();
        let from = |a: &mut Attributor, ip: &str| {
            let mut r = to("10.96.0.20", 80);
            r.netns = 7;
            r.src.ip = Some(ip.parse().unwrap());
            a.attribute(&mut r, Some(&index), None, &names);
            r
        };
        // Which pod a loopback connection in network namespace 7 is attributed to.
        let loopback = |a: &mut Attributor| {
            let mut r = to("127.0.0.1", 9000);
            r.netns = 7;
            r.src.ip = Some("127.0.0.1".parse().unwrap());
            r.src.scope = Some(Scope::Local);
            r.dst.scope = Some(Scope::Local);
            a.attribute(&mut r, Some(&index), None, &names);
            r.src.pod
        };
        let first = from(&mut a, "10.244.1.5");
        let mut web1 = a.learned(&first).expect("web-1 learned");
        from(&mut a, "10.244.1.6");
        assert_eq!(loopback(&mut a).as_deref(), Some("web-2"));
        a.relearn(&mut web1);
        assert_eq!(loopback(&mut a).as_deref(), Some("web-1"));
        // Nothing changed since: relearning is skipped and the entry stays.
        a.relearn(&mut web1);
        assert_eq!(loopback(&mut a).as_deref(), Some("web-1"));
        // Changed again after the skip: relearning must not be skipped this time.
        from(&mut a, "10.244.1.6");
        a.relearn(&mut web1);
        assert_eq!(loopback(&mut a).as_deref(), Some("web-1"));
    }
}
