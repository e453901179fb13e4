//! What `observer run` is given ([`RunOptions`]) and how it fails ([`RunError`]): the agent's
//! interface to its command line, apart from the loop so that the command line and tests can
//! build options without reading how the agent runs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    architecture::ModelHandle,
    capture::{CaptureError, DnsCaptureOptions, MapSizes},
    inventory,
    metrics::SeriesLimits,
    scope::Scoper,
    traces::TraceOptions,
};

/// Where the agent learns who is who.
#[derive(Clone, Debug)]
pub enum InventorySource {
    /// No Kubernetes: addresses are classified by scope only.
    None,
    /// Objects from a file (`kubectl get pods,services,endpointslices -A -o yaml`).
    File(PathBuf),
    /// The Kubernetes API (in-cluster configuration, or this kubeconfig).
    Api { kubeconfig: Option<PathBuf> },
}

/// Which accepted connections this agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressMode {
    /// Only those from outside the cluster: a connection from a pod or node is reported once,
    /// as egress, by the agent on the source's node.
    External,
    /// Every accepted connection (one host, or debugging).
    All,
}

/// DNS capture and what the agent keeps of the answers.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub capture: DnsCaptureOptions,
    /// Most (pod, address, name) entries kept.
    pub max_names: usize,
    /// How long past its TTL an answer still names its address.
    pub grace: Duration,
}

pub struct RunOptions {
    /// DNS capture; `None` with `--no-dns`.
    pub dns: Option<DnsOptions>,
    /// The architecture file and the model in force; `None` leaves verdicts empty.
    pub model: Option<(PathBuf, ModelHandle)>,
    pub inventory: InventorySource,
    pub hosts_file: Option<PathBuf>,
    pub hold: Duration,
    pub ingress: IngressMode,
    pub flow_log: PathBuf,
    pub flow_log_max_bytes: u64,
    pub flush_interval: Duration,
    pub poll_interval: Duration,
    pub idle_timeout: Duration,
    pub duration: Option<Duration>,
    pub metrics_addr: SocketAddr,
    pub node: String,
    pub scoper: Scoper,
    pub host_proc: PathBuf,
    pub map_sizes: MapSizes,
    pub series_limits: SeriesLimits,
    pub traces: TraceOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot open the flow log {path}: {source}")]
    FlowLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Inventory(#[from] inventory::Error),
    #[error("cannot read the hosts file {path}: {source}")]
    HostsFile {
        path: PathBuf,
        source: std::io::Error,
    },
}
