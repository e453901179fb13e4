//! Live inventory: kube-rs watchers on Pods, Services and EndpointSlices in all namespaces,
//! feeding the [`IndexHandle`], with per-watcher sync state for metrics and `/readyz`.
//!
//! Recovery: on any watch error (API server gone, connection reset, `410 Gone`) the watcher is
//! dropped and, after a short backoff, started afresh, which lists again. That is what client-go's
//! reflector does too (`ListAndWatch` returns and is called again), and it makes "in sync" an
//! observable fact: every recovery ends with an `InitDone` whose list is the truth, so an object
//! deleted during the outage cannot linger. Resuming the old watch instead would leave nothing to
//! see when the server comes back with no changes. A watch that the server simply closes
//! (`timeoutSeconds`) is no error: kube resumes it from the last resourceVersion, no relist.
//!
//! The backoff is capped at 3 s rather than kube's default 30 s so that the index is back in sync
//! within seconds of the API server's return; it starts at 200 ms with jitter, so a fleet of
//! agents does not reconnect in lockstep, and grows only while attempts keep failing.

use std::{
    collections::hash_map::RandomState,
    fmt::Debug,
    hash::{BuildHasher, Hasher},
    path::Path,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{Container, ObjectReference, Pod, PodSpec, PodStatus, Service, ServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, watcher, watcher::Event},
};
use serde::de::DeserializeOwned;

use super::{Error, IndexHandle, Result};

/// Most events applied (and snapshots rebuilt) once; more wait for the next batch.
const MAX_BATCH: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// One watcher's sync state, readable without locks (metrics, `/readyz`).
#[derive(Debug)]
pub struct WatcherStatus {
    kind: &'static str,
    synced: AtomicBool,
    last_sync_unix_seconds: AtomicU64,
    stale: AtomicBool,
    errors: AtomicU64,
    syncs: AtomicU64,
}

impl WatcherStatus {
    pub fn new(kind: &'static str) -> Self {
        WatcherStatus {
            kind,
            synced: AtomicBool::new(false),
            last_sync_unix_seconds: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    /// `Pod`, `Service` or `EndpointSlice`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A complete list has been loaded at least once (stays true through later outages).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// When the latest complete list was loaded; 0 before the first.
    pub fn last_sync_unix_seconds(&self) -> u64 {
        self.last_sync_unix_seconds.load(Ordering::Acquire)
    }

    /// A watch error happened after the first sync and neither a new list nor an event has
    /// arrived since: the index may miss recent changes.
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Watch and list errors since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Acquire)
    }

    /// Complete lists loaded since start (the first sync and every relist).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// Updates the state for a batch of events; true when the watch made progress (a list
    /// completed or an event arrived), which resets the backoff.
    pub(crate) fn observe<K>(&self, events: &[Event<K>]) -> bool {
        let mut progress = false;
        for ev in events {
            match ev {
                Event::InitDone => {
                    self.last_sync_unix_seconds
                        .store(unix_now(), Ordering::Release);
                    self.syncs.fetch_add(1, Ordering::AcqRel);
                    self.stale.store(false, Ordering::Release);
                    self.synced.store(true, Ordering::Release);
                    progress = true;
                }
                Event::Apply(_) | Event::Delete(_) => {
                    self.stale.store(false, Ordering::Release);
                    progress = true;
                }
                Event::Init | Event::InitApply(_) => {}
            }
        }
        progress
    }

    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::AcqRel);
        if self.synced() {
            self.stale.store(true, Ordering::Release);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The state of all watchers.
#[derive(Debug)]
pub struct InventoryStatus {
    pub pods: WatcherStatus,
    pub services: WatcherStatus,
    pub endpoint_slices: WatcherStatus,
}

impl Default for InventoryStatus {
    fn default() -> Self {
        InventoryStatus {
            pods: WatcherStatus::new("Pod"),
            services: WatcherStatus::new("Service"),
            endpoint_slices: WatcherStatus::new("EndpointSlice"),
        }
    }
}

impl InventoryStatus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn watchers(&self) -> [&WatcherStatus; 3] {
        [&self.pods, &self.services, &self.endpoint_slices]
    }

    /// Every watcher has completed its first list. An outage after that leaves the agent ready
    /// (it still knows the cluster as it was), only [`stale`](Self::stale).
    pub fn ready(&self) -> bool {
        self.watchers().iter().all(|w| w.synced())
    }

    pub fn stale(&self) -> bool {
        self.watchers().iter().any(|w| w.stale())
    }
}

/// Exponential backoff with jitter: each delay is drawn from the upper half of a window that
/// doubles from `min` up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    window: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            window: min,
            random: RandomState::new(),
            draws: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.window = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let window = self.window;
        self.window = (self.window * 2).min(self.max);
        // A keyed hash of a counter is random enough to spread reconnects.
        self.draws += 1;
        let mut h = self.random.build_hasher();
        h.write_u64(self.draws);
        let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
        window / 2 + window.mul_f64(fraction / 2.0)
    }
}

/// A client from `kubeconfig` when given, else inferred the way kubectl does (`$KUBECONFIG`,
/// `~/.kube/config`), else the in-cluster service account.
pub async fn client_from_kubeconfig_or_incluster(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
        }
        None => Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// Watches Pods, Services and EndpointSlices in all namespaces into `index` until the future is
/// dropped. Never fails: errors are retried (see the module documentation) and show in `status`.
pub async fn run_watchers(client: Client, index: IndexHandle, status: Arc<InventoryStatus>) {
    let pods = watch_kind(
        Api::<Pod>::all(client.clone()),
        &status.pods,
        strip_pod,
        |evs| index.apply_pods(evs),
    );
    let services = watch_kind(
        Api::<Service>::all(client.clone()),
        &status.services,
        strip_service,
        |evs| index.apply_services(evs),
    );
    let slices = watch_kind(
        Api::<EndpointSlice>::all(client),
        &status.endpoint_slices,
        strip_endpoint_slice,
        |evs| index.apply_endpoint_slices(evs),
    );
    tokio::join!(pods, services, slices);
}

async fn watch_kind<K>(
    api: Api<K>,
    status: &WatcherStatus,
    strip: fn(&mut K),
    apply: impl Fn(Vec<Event<K>>),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut failing = false;
    loop {
        let stream = watcher(api.clone(), watcher::Config::default())
            .modify(strip)
            .ready_chunks(MAX_BATCH);
        let mut stream = pin!(stream);
        while let Some(batch) = stream.next().await {
            let mut events = Vec::with_capacity(batch.len());
            let mut failure = None;
            for r in batch {
                match r {
                    Ok(ev) => events.push(ev),
                    // Whatever followed the error belongs to a watch that is about to be dropped.
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if status.observe(&events) {
                backoff.reset();
                if failing {
                    tracing::info!(kind = status.kind(), "watch recovered");
                }
                failing = false;
            }
            let listed = events.iter().any(|e| matches!(e, Event::InitDone));
            apply(events);
            if listed {
                // A list parses every object in full; the index keeps a small part.
                crate::memory::release_free_heap();
            }
            if let Some(e) = failure {
                status.record_error();
                if failing {
                    tracing::debug!(kind = status.kind(), error = %e, "watch still failing");
                } else {
                    tracing::warn!(kind = status.kind(), error = %e, "watch failed; will list again");
                }
                failing = true;
                break;
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn strip_meta(meta: &mut ObjectMeta, keep_owners: bool) {
    let m = std::mem::take(meta);
    *meta = ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        labels: m.labels,
        deletion_timestamp: m.deletion_timestamp,
        owner_references: if keep_owners {
            m.owner_references.map(|refs| {
                let controller: Vec<_> = refs
                    .iter()
                    .filter(|o| o.controller == Some(true))
                    .cloned()
                    .collect();
                if controller.is_empty() {
                    refs
                } else {
                    controller
                }
            })
        } else {
            None
        },
        ..ObjectMeta::default()
    };
}

/// Keeps what the index reads: identity, labels, owner, node, host networking, container ports,
/// phase and addresses. Everything else (managedFields, annotations, images, env, volumes,
/// conditions, container statuses) is dropped before it is stored.
pub fn strip_pod(pod: &mut Pod) {
    strip_meta(&mut pod.metadata, true);
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        host_ip: s.host_ip,
        host_ips: s.host_ips,
        ..PodStatus::default()
    });
}

pub fn strip_service(svc: &mut Service) {
    strip_meta(&mut svc.metadata, false);
    svc.spec = svc.spec.take().map(|s| ServiceSpec {
        cluster_ip: s.cluster_ip,
        cluster_ips: s.cluster_ips,
        ports: s.ports,
        selector: s.selector,
        type_: s.type_,
        ..ServiceSpec::default()
    });
    svc.status = None;
}

pub fn strip_endpoint_slice(slice: &mut EndpointSlice) {
    strip_meta(&mut slice.metadata, false);
    for e in &mut slice.endpoints {
        let old = std::mem::take(e);
        *e = Endpoint {
            addresses: old.addresses,
            conditions: old.conditions,
            node_name: old.node_name,
            target_ref: old.target_ref.map(|r| ObjectReference {
                kind: r.kind,
                name: r.name,
                namespace: r.namespace,
                uid: r.uid,
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::NodeAddresses;
    use serde_json::json;

    /// rustls needs exactly one crypto provider compiled in (kube is built with `ring`); with none
    /// or two, building an HTTPS client would fail or panic at start.
    #[tokio::test]
    async fn an_https_client_builds() {
        let config = Config::new("https://127.0.0.1:6443".parse().expect("url"));
        assert!(Client::try_from(config).is_ok());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let windows = [200u64, 400, 800, 1600, 3000, 3000, 3000];
        for w in windows {
            let d = b.next_delay();
            let w = Duration::from_millis(w);
            assert!(
                d >= w / 2 && d <= w,
                "{d:?} not within the upper half of {w:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }

    #[test]
    fn status_is_ready_after_every_first_sync_and_stale_only_after_an_error_past_it() {
        let s = InventoryStatus::new();
        s.pods.record_error();
        assert!(
            !s.pods.stale(),
            "an error before the first sync is not staleness"
        );
        assert!(!s.ready());
        assert!(s.pods.observe::<()>(&[Event::Init, Event::InitDone]));
        assert!(s.services.observe::<()>(&[Event::Init, Event::InitDone]));
        assert!(!s.ready());
        assert!(
            !s.endpoint_slices
                .observe::<()>(&[Event::Init, Event::InitApply(())])
        );
        assert!(!s.ready(), "half a list is no sync");
        s.endpoint_slices.observe::<()>(&[Event::InitDone]);
        assert!(s.ready());
        assert!(s.pods.last_sync_unix_seconds() > 1_700_000_000);
        s.pods.record_error();
        assert!(s.ready() && s.stale() && s.pods.stale());
        assert_eq!(s.pods.errors(), 2);
        s.pods.observe::<()>(&[Event::Init]);
        assert!(
            s.pods.stale(),
            "a relist that has not finished does not clear it"
        );
        s.pods.observe::<()>(&[Event::Apply(())]);
        assert!(!s.stale());
        assert_eq!(s.pods.syncs(), 1);
    }

    #[test]
    fn stripping_keeps_everything_the_index_reads() {
        let full: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "shop", "name": "web-1", "uid": "u1", "resourceVersion": "9",
                "labels": {"app": "web"}, "annotations": {"big": "x".repeat(1000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "o"},
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "s", "controller": true}]},
            "spec": {"nodeName": "node-a", "hostNetwork": false, "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "c", "image": "web:1", "env": [{"name": "A", "value": "B"}],
                    "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                "hostIP": "192.168.1.10", "conditions": [{"type": "Ready", "status": "True"}]}}))
        .expect("test pod");
        let mut stripped = full.clone();
        strip_pod(&mut stripped);
        assert_eq!(stripped.metadata.annotations, None);
        assert_eq!(stripped.metadata.managed_fields, None);
        assert_eq!(stripped.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(
            stripped.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        let spec = stripped.spec.as_ref().expect("spec");
        assert_eq!(
            (spec.volumes.as_ref(), spec.containers[0].image.as_ref()),
            (None, None)
        );
        assert_eq!(
            stripped.status.as_ref().and_then(|s| s.conditions.as_ref()),
            None
        );

        let a = IndexHandle::new(NodeAddresses::default());
        let b = IndexHandle::new(NodeAddresses::default());
        a.apply_pods([Event::Init, Event::InitApply(full), Event::InitDone]);
        b.apply_pods([Event::Init, Event::InitApply(stripped), Event::InitDone]);
        let ip = "10.244.1.5".parse().expect("ip");
        assert_eq!(a.snapshot().pod_by_ip(ip), b.snapshot().pod_by_ip(ip));
        assert!(b.snapshot().pod_by_ip(ip).is_some());
    }
}
