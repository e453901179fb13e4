//! Who is who in the cluster: pod, Service, workload, node and API-server addresses, learned
//! from the Kubernetes API ([`watch`]) or from a file of objects ([`offline`]), both feeding the
//! same [`index`].

pub mod index;
pub mod offline;
pub mod watch;

use std::path::PathBuf;

pub use index::{
    Attribution, Index, IndexHandle, IndexStats, IpOwner, Labels, NodeAddresses, PodInfo,
    ServiceInfo, ServiceKey, ServicePort, ServiceWorkload, TargetPort,
};
pub use watch::{
    InventoryStatus, WatcherStatus, client_from_kubeconfig_or_incluster, run_watchers,
};

/// Everything that can go wrong in the inventory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read inventory file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory file {path} is not valid {format}: {message}")]
    Syntax {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("inventory file {path}: {message}")]
    Shape { path: PathBuf, message: String },
    #[error("inventory file {path}: {location} ({kind} {name}): {message}")]
    Item {
        path: PathBuf,
        /// `item N` (0-based, as `kubectl get -o json | jq '.items[N]'`), prefixed with
        /// `document M` in multi-document YAML.
        location: String,
        kind: String,
        name: String,
        message: String,
    },
    #[error("no usable Kubernetes configuration (neither a kubeconfig nor in-cluster): {0}")]
    Config(String),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

impl Error {
    /// A stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Syntax { .. } => "syntax",
            Error::Shape { .. } => "shape",
            Error::Item { .. } => "item",
            Error::Config(_) => "config",
            Error::Client(_) => "client",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
