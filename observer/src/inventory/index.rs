//! The address index: which pod, Service, workload, node or API server an IP address (and port)
//! belongs to at this moment.
//!
//! Pure data, no I/O: it is fed `watcher::Event`s (from the live watchers or from an inventory
//! file) and publishes immutable [`Index`] snapshots. Per resource kind it follows watch
//! semantics exactly: events between `Init` and `InitDone` go to a buffer that replaces the kind's
//! objects atomically at `InitDone`, so an object deleted while the watch was down (whose DELETED
//! event was never seen) is gone after the relist, and a half-finished relist never shows.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::runtime::watcher::Event;
use observer_common::record::{Endpoint, Scope, Workload};
use tokio::sync::watch;

/// The reserved party for the Kubernetes API server (`default/kubernetes` and its endpoints).
pub const KUBE_APISERVER: &str = "kube-apiserver";
/// The reserved party for a node's own addresses (kubelet, host processes, host-network pods).
pub const NODE: &str = "node";

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label the Deployment controller puts on pods and in its ReplicaSets' names.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A label set. Every pod of a ReplicaSet has the same one, so the index keeps one copy per
/// distinct set, and attributions and records clone a pointer.
pub type Labels = Arc<BTreeMap<String, String>>;

/// A pod that owns (or, for host-network pods, shares) IP addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    pub workload: Workload,
    pub node: Option<String>,
    pub host_network: bool,
    /// Every address of `status.podIPs` (v4 and v6), in the API's order.
    pub ips: Vec<IpAddr>,
    /// Declared container ports, to resolve a Service's named `targetPort`.
    pub ports: Vec<NamedPort>,
}

/// A container port as declared in the pod spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
}

/// Namespace and name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.clusterIPs` (v4 and v6); empty for headless and ExternalName Services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// `None` for Services without a selector (endpoints managed by hand or by a controller).
    pub selector: Option<BTreeMap<String, String>>,
    pub labels: BTreeMap<String, String>,
}

impl ServiceInfo {
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }

    /// The Service port with this number (the port a client connects to on the ClusterIP).
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The Service port an EndpointSlice port of this name belongs to (unnamed matches unnamed).
    fn port_named(&self, name: Option<&str>) -> Option<&ServicePort> {
        let name = name.filter(|n| !n.is_empty());
        self.ports
            .iter()
            .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
    pub target_port: Option<TargetPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod ([`PodInfo::ports`]).
    Name(String),
}

/// Who an address (and port) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpOwner<'a> {
    Pod(&'a PodInfo),
    /// A Service ClusterIP; `port` is the Service port matching the connection's port, if any.
    Service {
        service: &'a ServiceInfo,
        port: Option<&'a ServicePort>,
    },
    KubeApiserver,
    /// One of a node's own addresses; the node's name when known.
    Node {
        name: Option<&'a str>,
    },
    Unknown,
}

/// The workload behind a Service, the same whether a flow named the ClusterIP (kube-proxy) or
/// the backend pod (socket-level load balancing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceWorkload {
    pub namespace: String,
    pub workload: Workload,
    /// The labels every backend pod has in common (the pod template's labels, without the
    /// per-pod ones such as `statefulset.kubernetes.io/pod-name`).
    pub labels: Labels,
}

/// The addresses this agent's own node is known by (`--node-ip`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub name: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// Counts for logs, metrics and `check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub pods: usize,
    pub pod_ips: usize,
    pub host_network_pods: usize,
    pub services: usize,
    pub service_ips: usize,
    pub endpoint_slices: usize,
    pub node_ips: usize,
    /// Objects without a name and addresses that did not parse, skipped since start.
    pub skipped: u64,
}

/// What the index knows about one end of a flow, ready to copy into a flow record's endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub workload: Option<Workload>,
    /// The Service's name (its namespace is `namespace`).
    pub service: Option<String>,
    pub service_port: Option<ServicePort>,
    pub labels: Labels,
    /// [`KUBE_APISERVER`] or [`NODE`].
    pub reserved: Option<&'static str>,
    /// `None` when the index does not know the address: the caller tells external from local.
    pub scope: Option<Scope>,
}

impl Attribution {
    /// Moves what is known into a flow-record endpoint, leaving the rest as it was; returns the
    /// rest of the attribution.
    pub fn fill(mut self, ep: &mut Endpoint) -> Attribution {
        if self.namespace.is_some() {
            ep.namespace = self.namespace.take();
        }
        if self.pod.is_some() {
            ep.pod = self.pod.take();
        }
        if self.workload.is_some() {
            ep.workload = self.workload.take();
        }
        if self.service.is_some() {
            ep.service = self.service.take();
        }
        if let Some(r) = self.reserved {
            ep.component = Some(r.to_owned());
        }
        if self.scope.is_some() {
            ep.scope = self.scope;
        }
        self
    }
}

/// An immutable snapshot of the index. Cloning is cheap (a few `Arc`s); readers hold a snapshot
/// for as long as they like without blocking the writers.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pods: Arc<PodTables>,
    services: Arc<ServiceTables>,
    node: Arc<NodeAddresses>,
    skipped: u64,
    /// Counts the snapshots a handle published: equal generations of one handle are the same
    /// index, so results derived from it can be cached under the generation.
    generation: u64,
    /// [`Index::workload_for_service`] per Service of this snapshot (by the address of its
    /// `ServiceInfo`, which the snapshot keeps alive), computed when first asked: attribution
    /// asks for every flow to a ClusterIP, and each answer walks the Service's pods.
    service_workloads: Arc<Mutex<HashMap<usize, Option<ServiceWorkload>>>>,
}

#[derive(Debug, Default)]
struct PodTables {
    count: usize,
    by_ip: HashMap<IpAddr, Arc<PodInfo>>,
    by_namespace: HashMap<String, Vec<Arc<PodInfo>>>,
    /// Host-network pods share their node's addresses, so they are never in `by_ip`.
    host_network: BTreeMap<String, Vec<Arc<PodInfo>>>,
    /// Node addresses learned from pods' `status.hostIPs`.
    node_ips: HashMap<IpAddr, String>,
}

#[derive(Debug, Default)]
struct ServiceTables {
    by_key: BTreeMap<ServiceKey, Arc<ServiceInfo>>,
    by_cluster_ip: HashMap<IpAddr, Arc<ServiceInfo>>,
    /// Endpoint address and port to the Services (sorted by key) and their EndpointSlice port
    /// names.
    by_endpoint: HashMap<(IpAddr, u16), Vec<EndpointOf>>,
    /// Every endpoint address per Service.
    endpoint_ips: HashMap<ServiceKey, BTreeSet<IpAddr>>,
    slices: usize,
    apiserver_ips: HashSet<IpAddr>,
    /// API server endpoint addresses with their ports (`None`: the slice listed no ports).
    apiserver_endpoints: HashSet<(IpAddr, Option<u16>)>,
}

/// A Service an endpoint belongs to, and the name of the EndpointSlice port it was listed under.
type EndpointOf = (Arc<ServiceInfo>, Option<String>);

fn kube_apiserver_key() -> ServiceKey {
    ServiceKey::new("default", "kubernetes")
}

impl Index {
    /// An index that knows only this node's addresses.
    pub fn new(node: NodeAddresses) -> Self {
        Index {
            node: Arc::new(node),
            ..Default::default()
        }
    }

    /// The owner of `ip` for a connection to `port`. Precedence: the API server (its ClusterIPs
    /// on any port, its endpoint addresses on their ports, which are often a control-plane
    /// node's), Service ClusterIPs, pod IPs, node addresses.
    pub fn lookup(&self, ip: IpAddr, port: u16) -> IpOwner<'_> {
        let s = &self.services;
        // Port 0 is a connection's source: the API server connects out from its endpoint
        // address (to kubelets, webhooks) on ports of its own choosing.
        if s.apiserver_ips.contains(&ip)
            || s.apiserver_endpoints.contains(&(ip, Some(port)))
            || s.apiserver_endpoints.contains(&(ip, None))
            || (port == 0 && s.apiserver_endpoints.iter().any(|(a, _)| *a == ip))
        {
            return IpOwner::KubeApiserver;
        }
        if let Some(service) = s.by_cluster_ip.get(&ip) {
            return IpOwner::Service {
                service,
                port: service.port(port),
            };
        }
        if let Some(pod) = self.pods.by_ip.get(&ip) {
            return IpOwner::Pod(pod);
        }
        if self.node.ips.contains(&ip) {
            return IpOwner::Node {
                name: self.node.name.as_deref(),
            };
        }
        if let Some(name) = self.pods.node_ips.get(&ip) {
            return IpOwner::Node { name: Some(name) };
        }
        IpOwner::Unknown
    }

    /// The pod that owns `ip` now (never a host-network pod, never a finished one).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.pods.by_ip.get(&ip).map(|p| &**p)
    }

    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.services.by_cluster_ip.get(&ip).map(|s| &**s)
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceInfo> {
        self.services.by_key.get(key).map(|s| &**s)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.by_key.values().map(|s| &**s)
    }

    /// The Service whose EndpointSlices list this pod address and port, with the Service port
    /// it backs, so a flow that reached the pod directly still names the Service. When several
    /// Services list the same address and port, the first by namespace/name wins.
    pub fn service_for_pod_ip_port(
        &self,
        ip: IpAddr,
        port: u16,
    ) -> Option<(&ServiceInfo, Option<&ServicePort>)> {
        let (svc, port_name) = self.services.by_endpoint.get(&(ip, port))?.first()?;
        Some((svc, svc.port_named(port_name.as_deref())))
    }

    /// The pods behind a Service: those its EndpointSlices list and those its selector matches
    /// (which includes pods not ready yet), each once.
    pub fn pods_for_service<'a>(
        &'a self,
        svc: &'a ServiceInfo,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        let mut seen = HashSet::new();
        let from_slices = self
            .services
            .endpoint_ips
            .get(&svc.key())
            .into_iter()
            .flatten()
            .filter_map(|ip| self.pod_by_ip(*ip));
        let from_selector = svc
            .selector
            .as_ref()
            .filter(|sel| !sel.is_empty())
            .and_then(|sel| {
                self.pods
                    .by_namespace
                    .get(&svc.namespace)
                    .map(move |pods| (sel, pods))
            })
            .into_iter()
            .flat_map(|(sel, pods)| {
                pods.iter()
                    .filter(move |p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                    .map(|p| &**p)
            });
        from_slices
            .chain(from_selector)
            .filter(move |p| seen.insert(p.uid.as_str()))
    }

    /// The one workload behind a Service; `None` when no pod is behind it or pods of several
    /// workloads are (the Service then does not name one workload).
    pub fn workload_for_service(&self, svc: &ServiceInfo) -> Option<ServiceWorkload> {
        let mut pods = self.pods_for_service(svc);
        let first = pods.next()?;
        let mut labels = first.labels.clone();
        for p in pods {
            if p.workload != first.workload || p.namespace != first.namespace {
                return None;
            }
            if !Arc::ptr_eq(&labels, &p.labels) {
                Arc::make_mut(&mut labels).retain(|k, v| p.labels.get(k) == Some(v));
            }
        }
        Some(ServiceWorkload {
            namespace: first.namespace.clone(),
            workload: first.workload.clone(),
            labels,
        })
    }

    /// [`workload_for_service`](Self::workload_for_service), computed once per snapshot.
    fn workload_for_service_memo(&self, svc: &ServiceInfo) -> Option<ServiceWorkload> {
        let id = std::ptr::from_ref::<ServiceInfo>(svc) as usize;
        let mut memo = self
            .service_workloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        memo.entry(id)
            .or_insert_with(|| self.workload_for_service(svc))
            .clone()
    }

    /// Host-network pods on `node`: they share the node's addresses, so a flow from a node
    /// address can only be tied to one of them by other means (cgroup, process).
    pub fn host_network_pods(&self, node: &str) -> &[Arc<PodInfo>] {
        self.pods.host_network.get(node).map_or(&[], Vec::as_slice)
    }

    /// Everything known about one end of a flow. `port` is the server port for the destination
    /// and `None` for the source (the client's port says nothing about who it is).
    pub fn attribute(&self, ip: IpAddr, port: Option<u16>) -> Attribution {
        // Port 0 never matches a Service or API server port: a source is only ever a pod, a
        // node or unknown.
        match self.lookup(ip, port.unwrap_or(0)) {
            IpOwner::Pod(pod) => {
                let via = port.and_then(|p| self.service_for_pod_ip_port(ip, p));
                Attribution {
                    namespace: Some(pod.namespace.clone()),
                    pod: Some(pod.name.clone()),
                    workload: Some(pod.workload.clone()),
                    service: via.map(|(s, _)| s.name.clone()),
                    service_port: via.and_then(|(_, p)| p.cloned()),
                    labels: pod.labels.clone(),
                    reserved: None,
                    scope: Some(Scope::Cluster),
                }
            }
            IpOwner::Service { service, port } => {
                let backend = self.workload_for_service_memo(service);
                Attribution {
                    namespace: Some(service.namespace.clone()),
                    pod: None,
                    workload: backend.as_ref().map(|b| b.workload.clone()),
                    service: Some(service.name.clone()),
                    service_port: port.cloned(),
                    labels: backend.map(|b| b.labels).unwrap_or_default(),
                    reserved: None,
                    scope: Some(Scope::Cluster),
                }
            }
            IpOwner::KubeApiserver => {
                let key = kube_apiserver_key();
                let svc = self.service(&key);
                Attribution {
                    namespace: Some(key.namespace),
                    service: Some(key.name),
                    service_port: svc.and_then(|s| port.and_then(|p| s.port(p))).cloned(),
                    reserved: Some(KUBE_APISERVER),
                    scope: Some(Scope::Cluster),
                    ..Default::default()
                }
            }
            IpOwner::Node { .. } => Attribution {
                reserved: Some(NODE),
                scope: Some(Scope::Node),
                ..Default::default()
            },
            IpOwner::Unknown => Attribution::default(),
        }
    }

    /// This snapshot's place in its handle's sequence (see [`IndexHandle::generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            pods: self.pods.count,
            pod_ips: self.pods.by_ip.len(),
            host_network_pods: self.pods.host_network.values().map(Vec::len).sum(),
            services: self.services.by_key.len(),
            service_ips: self.services.by_cluster_ip.len(),
            endpoint_slices: self.services.slices,
            node_ips: self.pods.node_ips.len()
                + self
                    .node
                    .ips
                    .iter()
                    .filter(|ip| !self.pods.node_ips.contains_key(ip))
                    .count(),
            skipped: self.skipped,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workload resolution

/// The workload that owns a pod, from its controller owner reference.
///
/// A Deployment's pods are owned by a ReplicaSet named `<deployment>-<pod-template-hash>`, and
/// carry that hash as a label: the Deployment's name is the ReplicaSet's name without the
/// suffix. Resolving it this way, rather than watching ReplicaSets, saves the RBAC grant and the
/// memory of every ReplicaSet (old ones are kept for rollbacks). A Job's pods are owned by the
/// Job; a CronJob is only named when the Job object itself is known (see [`cronjob_of`]).
/// Static (mirror) pods are "owned" by their Node, which is no workload: they count as bare pods.
pub fn resolve_workload(
    pod_name: &str,
    labels: &BTreeMap<String, String>,
    owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
) -> Workload {
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    let Some(owner) = owner.filter(|o| !o.name.is_empty() && o.kind != "Node") else {
        return Workload {
            kind: "Pod".into(),
            name: pod_name.into(),
        };
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = labels.get(POD_TEMPLATE_HASH_LABEL)
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
    {
        return Workload {
            kind: "Deployment".into(),
            name: deployment.into(),
        };
    }
    Workload {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    }
}

/// The CronJob that made a Job: only when the Job's own controller reference names a CronJob
/// and the Job's name is that CronJob's name plus `-<digits>` (the scheduled time), the way the
/// CronJob controller names them.
pub fn cronjob_of(job: &Job) -> Option<String> {
    let name = job.metadata.name.as_deref()?;
    let owner = job
        .metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "CronJob")?;
    let digits = name.strip_prefix(owner.name.as_str())?.strip_prefix('-')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| owner.name.clone())
}

// ---------------------------------------------------------------------------------------------
// The writer side

/// Where an object lives; names are unique per kind and namespace at any moment.
type ObjKey = (String, String);

/// One resource kind's objects, and the relist in progress.
#[derive(Debug)]
struct KindState<R> {
    live: HashMap<ObjKey, R>,
    /// `Some` between `Init` and `InitDone`.
    relist: Option<HashMap<ObjKey, R>>,
}

impl<R> Default for KindState<R> {
    fn default() -> Self {
        KindState {
            live: HashMap::new(),
            relist: None,
        }
    }
}

trait Uid {
    fn uid(&self) -> &str;
}

impl<R: Uid> KindState<R> {
    /// Applies one event; true when the live objects changed.
    fn handle(&mut self, ev: Event<(ObjKey, R)>) -> bool {
        match ev {
            Event::Init => {
                // A relist that failed half-way is simply started over: its partial buffer never
                // became visible.
                self.relist = Some(HashMap::new());
                false
            }
            Event::InitApply((k, r)) => match &mut self.relist {
                Some(buf) => {
                    buf.insert(k, r);
                    false
                }
                // kube's watcher always sends Init first; without one there is no buffer to
                // fill, and the object is current, so it is applied as it stands.
                None => {
                    self.live.insert(k, r);
                    true
                }
            },
            Event::InitDone => match self.relist.take() {
                Some(buf) => {
                    self.live = buf;
                    true
                }
                None => false,
            },
            // A new object with the same name replaces the old one: names are unique, so the old
            // one is gone even if its DELETED event comes later.
            Event::Apply((k, r)) => {
                self.live.insert(k, r);
                true
            }
            // Only the object with this uid is removed: a DELETED event for an object whose
            // name was already reused must not remove its successor.
            Event::Delete((k, r)) => {
                let matches = |old: &R| r.uid().is_empty() || old.uid() == r.uid();
                if self.live.get(&k).is_some_and(matches) {
                    self.live.remove(&k);
                    true
                } else {
                    false
                }
            }
        }
    }
}

#[derive(Debug)]
struct PodRecord {
    info: Arc<PodInfo>,
    /// Phase Succeeded or Failed: the pod's sandbox is gone and its address may be reused.
    finished: bool,
    /// Being deleted: loses its addresses to any other pod claiming them.
    terminating: bool,
    host_ips: Vec<IpAddr>,
    /// When this pod (uid) was first seen with its current addresses: among pods claiming the
    /// same address, the latest claim wins, so a reused address belongs to the new pod from
    /// the moment the API reports it, even before the old pod's DELETED event.
    claim: u64,
}

impl Uid for PodRecord {
    fn uid(&self) -> &str {
        &self.info.uid
    }
}

#[derive(Debug)]
struct ServiceRecord(Arc<ServiceInfo>);

impl Uid for ServiceRecord {
    fn uid(&self) -> &str {
        &self.0.uid
    }
}

#[derive(Debug)]
struct SliceRecord {
    uid: String,
    service: Option<ServiceKey>,
    addresses: Vec<IpAddr>,
    ports: Vec<(Option<String>, Option<u16>)>,
}

impl Uid for SliceRecord {
    fn uid(&self) -> &str {
        &self.uid
    }
}

#[derive(Debug)]
struct JobRecord {
    uid: String,
    cronjob: Option<String>,
}

impl Uid for JobRecord {
    fn uid(&self) -> &str {
        &self.uid
    }
}

/// The mutable state behind an [`IndexHandle`].
#[derive(Debug, Default)]
struct Builder {
    pods: KindState<PodRecord>,
    services: KindState<ServiceRecord>,
    slices: KindState<SliceRecord>,
    jobs: KindState<JobRecord>,
    next_claim: u64,
    skipped: u64,
    /// One copy of each distinct label set in use; sets no record holds any more are dropped
    /// after each batch.
    labels: HashSet<Labels>,
}

impl Builder {
    fn labels(&mut self, labels: Option<&BTreeMap<String, String>>) -> Labels {
        static EMPTY: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::default);
        let Some(labels) = labels.filter(|l| !l.is_empty()) else {
            return EMPTY.clone();
        };
        if let Some(shared) = self.labels.get(labels) {
            return shared.clone();
        }
        let shared = Labels::new(labels.clone());
        self.labels.insert(shared.clone());
        shared
    }
}

fn meta_key(meta: &ObjectMeta) -> Option<ObjKey> {
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    // Objects from the API always have a namespace; hand-written inventory files may leave it
    // out, which kubectl reads as `default`.
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    Some((ns, name))
}

fn parse_ips<'a>(raw: impl IntoIterator<Item = &'a str>, skipped: &mut u64) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in raw {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => *skipped += 1,
        }
    }
    out
}

fn port_u16(p: i32, skipped: &mut u64) -> Option<u16> {
    let r = u16::try_from(p).ok().filter(|p| *p != 0);
    if r.is_none() {
        *skipped += 1;
    }
    r
}

impl Builder {
    fn pod_record(&mut self, pod: &Pod) -> Option<(ObjKey, PodRecord)> {
        let Some(key) = meta_key(&pod.metadata) else {
            self.skipped += 1;
            return None;
        };
        let meta = &pod.metadata;
        let labels = self.labels(meta.labels.as_ref());
        let owners = meta.owner_references.as_deref().unwrap_or(&[]);
        let workload = resolve_workload(&key.1, &labels, owners);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ips = match status {
            Some(st) => match st.pod_ips.as_deref() {
                Some(list) if !list.is_empty() => {
                    parse_ips(list.iter().map(|p| p.ip.as_str()), &mut self.skipped)
                }
                _ => parse_ips(st.pod_ip.as_deref(), &mut self.skipped),
            },
            None => Vec::new(),
        };
        let host_ips = match status {
            Some(st) => match st.host_ips.as_deref() {
                Some(list) if !list.is_empty() => {
                    parse_ips(list.iter().map(|p| p.ip.as_str()), &mut self.skipped)
                }
                _ => parse_ips(st.host_ip.as_deref(), &mut self.skipped),
            },
            None => Vec::new(),
        };
        let mut ports = Vec::new();
        for c in spec.map_or(&[][..], |s| s.containers.as_slice()) {
            for p in c.ports.as_deref().unwrap_or(&[]) {
                if let Some(port) = port_u16(p.container_port, &mut self.skipped) {
                    ports.push(NamedPort {
                        name: p.name.clone(),
                        port,
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    });
                }
            }
        }
        let phase = status.and_then(|s| s.phase.as_deref());
        let info = PodInfo {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: meta.uid.clone().unwrap_or_default(),
            labels,
            workload,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            ips,
            ports,
        };
        // Keep the claim of an unchanged pod so that a relist does not reorder old claims.
        let claim = match self.pods.live.get(&key) {
            Some(old) if old.info.uid == info.uid && old.info.ips == info.ips => old.claim,
            _ => {
                self.next_claim += 1;
                self.next_claim
            }
        };
        Some((
            key,
            PodRecord {
                info: Arc::new(info),
                finished: matches!(phase, Some("Succeeded" | "Failed")),
                terminating: meta.deletion_timestamp.is_some(),
                host_ips,
                claim,
            },
        ))
    }

    fn service_record(&mut self, svc: &Service) -> Option<(ObjKey, ServiceRecord)> {
        let Some(key) = meta_key(&svc.metadata) else {
            self.skipped += 1;
            return None;
        };
        let spec = svc.spec.as_ref();
        let raw_ips: Vec<&str> = match spec {
            Some(s) => match s.cluster_ips.as_deref() {
                Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
                _ => s.cluster_ip.as_deref().into_iter().collect(),
            },
            None => Vec::new(),
        };
        // "None" marks a headless Service: no virtual address, clients reach pods directly.
        let raw_ips = raw_ips
            .into_iter()
            .filter(|s| !s.is_empty() && *s != "None");
        let cluster_ips = parse_ips(raw_ips, &mut self.skipped);
        let mut ports = Vec::new();
        for p in spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]) {
            let Some(port) = port_u16(p.port, &mut self.skipped) else {
                continue;
            };
            let target_port = match &p.target_port {
                Some(IntOrString::Int(n)) => {
                    port_u16(*n, &mut self.skipped).map(TargetPort::Number)
                }
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => Some(TargetPort::Number(n)),
                    Err(_) => Some(TargetPort::Name(s.clone())),
                },
                None => None,
            };
            ports.push(ServicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                target_port,
            });
        }
        let info = ServiceInfo {
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: svc.metadata.uid.clone().unwrap_or_default(),
            cluster_ips,
            ports,
            selector: spec.and_then(|s| s.selector.clone()),
            labels: svc.metadata.labels.clone().unwrap_or_default(),
        };
        Some((key, ServiceRecord(Arc::new(info))))
    }

    fn slice_record(&mut self, slice: &EndpointSlice) -> Option<(ObjKey, SliceRecord)> {
        let Some(key) = meta_key(&slice.metadata) else {
            self.skipped += 1;
            return None;
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|name| ServiceKey::new(&key.0, name));
        // FQDN slices name hosts, not addresses.
        let addresses = if slice.address_type == "FQDN" {
            Vec::new()
        } else {
            parse_ips(
                slice
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.iter().map(String::as_str)),
                &mut self.skipped,
            )
        };
        let mut ports = Vec::new();
        for p in slice.ports.as_deref().unwrap_or(&[]) {
            let port = match p.port {
                Some(n) => match port_u16(n, &mut self.skipped) {
                    Some(n) => Some(n),
                    None => continue,
                },
                None => None,
            };
            ports.push((p.name.clone().filter(|n| !n.is_empty()), port));
        }
        Some((
            key,
            SliceRecord {
                uid: slice.metadata.uid.clone().unwrap_or_default(),
                service,
                addresses,
                ports,
            },
        ))
    }

    fn job_record(&mut self, job: &Job) -> Option<(ObjKey, JobRecord)> {
        let Some(key) = meta_key(&job.metadata) else {
            self.skipped += 1;
            return None;
        };
        Some((
            key,
            JobRecord {
                uid: job.metadata.uid.clone().unwrap_or_default(),
                cronjob: cronjob_of(job),
            },
        ))
    }

    fn build_pods(&self) -> PodTables {
        let mut t = PodTables {
            count: self.pods.live.len(),
            ..Default::default()
        };
        let mut ranked: HashMap<IpAddr, ((bool, u64), Arc<PodInfo>)> = HashMap::new();
        let mut live: Vec<&PodRecord> = self.pods.live.values().collect();
        // Deterministic output whatever the hash order.
        live.sort_by(|a, b| {
            (&a.info.namespace, &a.info.name).cmp(&(&b.info.namespace, &b.info.name))
        });
        for rec in live {
            let info = self.with_cronjob(&rec.info);
            if let Some(node) = &info.node {
                for ip in &rec.host_ips {
                    t.node_ips.insert(*ip, node.clone());
                }
            }
            if rec.finished {
                continue;
            }
            t.by_namespace
                .entry(info.namespace.clone())
                .or_default()
                .push(info.clone());
            if info.host_network {
                let node = info.node.clone().unwrap_or_default();
                t.host_network.entry(node).or_default().push(info);
                continue;
            }
            let rank = (!rec.terminating, rec.claim);
            for ip in &info.ips {
                match ranked.get(ip) {
                    Some((r, _)) if *r >= rank => {}
                    _ => {
                        ranked.insert(*ip, (rank, info.clone()));
                    }
                }
            }
        }
        t.by_ip = ranked.into_iter().map(|(ip, (_, p))| (ip, p)).collect();
        t
    }

    /// A Job's pod names its CronJob when the Job is known to belong to one.
    fn with_cronjob(&self, info: &Arc<PodInfo>) -> Arc<PodInfo> {
        if info.workload.kind == "Job"
            && let Some(job) = self
                .jobs
                .live
                .get(&(info.namespace.clone(), info.workload.name.clone()))
            && let Some(cronjob) = &job.cronjob
        {
            let mut p = (**info).clone();
            p.workload = Workload {
                kind: "CronJob".into(),
                name: cronjob.clone(),
            };
            return Arc::new(p);
        }
        info.clone()
    }

    fn build_services(&self) -> ServiceTables {
        let mut t = ServiceTables {
            slices: self.slices.live.len(),
            ..Default::default()
        };
        for ServiceRecord(svc) in self.services.live.values() {
            t.by_key.insert(svc.key(), svc.clone());
        }
        let apiserver = kube_apiserver_key();
        for svc in t.by_key.values() {
            for ip in &svc.cluster_ips {
                t.by_cluster_ip.insert(*ip, svc.clone());
                if svc.key() == apiserver {
                    t.apiserver_ips.insert(*ip);
                }
            }
        }
        for slice in self.slices.live.values() {
            let Some(key) = &slice.service else { continue };
            t.endpoint_ips
                .entry(key.clone())
                .or_default()
                .extend(slice.addresses.iter().copied());
            if *key == apiserver {
                for ip in &slice.addresses {
                    if slice.ports.is_empty() {
                        t.apiserver_endpoints.insert((*ip, None));
                    }
                    for (_, port) in &slice.ports {
                        t.apiserver_endpoints.insert((*ip, *port));
                    }
                }
            }
            let Some(svc) = t.by_key.get(key) else {
                continue;
            };
            for ip in &slice.addresses {
                for (name, port) in &slice.ports {
                    let Some(port) = port else { continue };
                    let entry = t.by_endpoint.entry((*ip, *port)).or_default();
                    if !entry.iter().any(|(s, _)| Arc::ptr_eq(s, svc)) {
                        entry.push((svc.clone(), name.clone()));
                    }
                }
            }
        }
        for v in t.by_endpoint.values_mut() {
            v.sort_by(|a, b| (&a.0.namespace, &a.0.name).cmp(&(&b.0.namespace, &b.0.name)));
        }
        t
    }
}

// ---------------------------------------------------------------------------------------------
// The handle

/// Writers feed events through the handle; readers take [`snapshot`](IndexHandle::snapshot)s or
/// [`subscribe`](IndexHandle::subscribe) to changes. Cloning shares the same index.
///
/// Each batch of events rebuilds the tables of the kinds it changed (O(objects of that part))
/// and publishes one new snapshot; the watchers hand over everything that is ready at once, so
/// a burst of events costs one rebuild.
#[derive(Clone, Debug)]
pub struct IndexHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    builder: Mutex<Builder>,
    tx: watch::Sender<Arc<Index>>,
}

/// Which tables a batch changed.
#[derive(Clone, Copy, Default)]
struct Dirty {
    pods: bool,
    services: bool,
}

impl IndexHandle {
    pub fn new(node: NodeAddresses) -> Self {
        let (tx, _) = watch::channel(Arc::new(Index::new(node)));
        IndexHandle {
            shared: Arc::new(Shared {
                builder: Mutex::new(Builder::default()),
                tx,
            }),
        }
    }

    /// The current snapshot; hold it as long as needed, it never changes.
    pub fn snapshot(&self) -> Arc<Index> {
        self.shared.tx.borrow().clone()
    }

    /// The generation of the current snapshot: it changes whenever a new snapshot is
    /// published, so a cache keyed by it never serves what an older index said.
    pub fn generation(&self) -> u64 {
        self.shared.tx.borrow().generation
    }

    /// A receiver that is told of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Index>> {
        self.shared.tx.subscribe()
    }

    pub fn apply_pods<O: Borrow<Pod>>(&self, events: impl IntoIterator<Item = Event<O>>) {
        self.update(|b| {
            let mut changed = false;
            for ev in events {
                if let Some(ev) = convert(ev, |p| b.pod_record(p.borrow())) {
                    changed |= b.pods.handle(ev);
                }
            }
            Dirty {
                pods: changed,
                services: false,
            }
        });
    }

    pub fn apply_services<O: Borrow<Service>>(&self, events: impl IntoIterator<Item = Event<O>>) {
        self.update(|b| {
            let mut changed = false;
            for ev in events {
                if let Some(ev) = convert(ev, |s| b.service_record(s.borrow())) {
                    changed |= b.services.handle(ev);
                }
            }
            Dirty {
                pods: false,
                services: changed,
            }
        });
    }

    pub fn apply_endpoint_slices<O: Borrow<EndpointSlice>>(
        &self,
        events: impl IntoIterator<Item = Event<O>>,
    ) {
        self.update(|b| {
            let mut changed = false;
            for ev in events {
                if let Some(ev) = convert(ev, |s| b.slice_record(s.borrow())) {
                    changed |= b.slices.handle(ev);
                }
            }
            Dirty {
                pods: false,
                services: changed,
            }
        });
    }

    /// Jobs are not watched (they only turn a Job's pods into their CronJob's), but an
    /// inventory file may list them.
    pub fn apply_jobs<O: Borrow<Job>>(&self, events: impl IntoIterator<Item = Event<O>>) {
        self.update(|b| {
            let mut changed = false;
            for ev in events {
                if let Some(ev) = convert(ev, |j| b.job_record(j.borrow())) {
                    changed |= b.jobs.handle(ev);
                }
            }
            Dirty {
                pods: changed,
                services: false,
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut Builder) -> Dirty) {
        // A panic elsewhere while holding the lock leaves consistent data (every change is
        // a whole-map swap or insert), so a poisoned lock is still usable.
        let mut b = self
            .shared
            .builder
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let skipped_before = b.skipped;
        let dirty = f(&mut b);
        if !dirty.pods && !dirty.services && b.skipped == skipped_before {
            return;
        }
        // Publishing under the lock keeps snapshots in the order of their changes.
        let current = self.snapshot();
        let next = Index {
            pods: if dirty.pods {
                Arc::new(b.build_pods())
            } else {
                current.pods.clone()
            },
            services: if dirty.services {
                Arc::new(b.build_services())
            } else {
                current.services.clone()
            },
            node: current.node.clone(),
            skipped: b.skipped,
            generation: current.generation + 1,
            service_workloads: Default::default(),
        };
        self.shared.tx.send_replace(Arc::new(next));
        drop(current);
        // Label sets that neither a record nor the new snapshot holds any more.
        b.labels.retain(|set| Arc::strong_count(set) > 1);
    }
}

/// Converts an event's object into its record; an object that cannot be keyed (no name) is
/// dropped, and so is its event.
fn convert<K, R>(ev: Event<K>, mut f: impl FnMut(&K) -> Option<R>) -> Option<Event<R>> {
    Some(match ev {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(f(&o)?),
        Event::Apply(o) => Event::Apply(f(&o)?),
        Event::Delete(o) => Event::Delete(f(&o)?),
    })
}

#[cfg(test)]
mod tests;
