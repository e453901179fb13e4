//! Command-line interface (clap derive; the `///` comments are the help text).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

#[derive(Debug, Parser)]
#[command(
    name = "observer",
    version,
    about = "eBPF flow observer: judges every TCP connection against the documented architecture"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture TCP connections on this node and write the flow log.
    Run(Box<RunArgs>),
    /// Re-judge a recorded flow log offline against an architecture and an inventory; exit
    /// code 0 when every flow is expected, 1 when any is unexpected, 2 on bad input.
    Check(CheckArgs),
    /// An audit report: does observed traffic match the architecture? Exit code 0 when it
    /// does, 1 when any flow is unexpected, 2 on bad input.
    Report(ReportArgs),
    /// Write a draft architecture from observed traffic, for a human to review.
    Learn(LearnArgs),
    /// Load every kernel program on this node and report what the kernel's verifier said of
    /// each (stack depth per function, instructions processed), attaching nothing: whether the
    /// agent will run on this kernel. Exit code 0 when all load, 2 otherwise. Needs CAP_BPF and
    /// CAP_PERFMON (or root).
    KernelCheck {
        /// `text` (a line per program) or `json` (a JSON array).
        #[arg(long, value_enum, default_value = "text")]
        format: KernelCheckFormat,
    },
    /// Check an architecture file; exit code 0 when valid, 2 with every problem otherwise.
    Validate {
        /// The architecture file (YAML, `kind: Architecture`).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KernelCheckFormat {
    Text,
    Json,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s, 2m)"))
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The documented architecture to judge every flow against (YAML); reloaded on SIGHUP
    /// and whenever the file changes.
    #[arg(long)]
    pub architecture: Option<PathBuf>,
    /// Kubernetes objects from a file instead of the API server: a `kind: List` as
    /// `kubectl get pods,services,endpointslices -A -o yaml` (or `-o json`) prints it, or
    /// multi-document YAML.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub inventory: Option<PathBuf>,
    /// Watch the Kubernetes API with this kubeconfig (in a pod, the in-cluster configuration is
    /// used without it).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Do not use the Kubernetes API even when running in a cluster.
    #[arg(long, conflicts_with_all = ["inventory", "kubeconfig"])]
    pub no_kubernetes: bool,
    /// Names for external addresses in /etc/hosts format, instead of resolving the
    /// architecture's host names with the system resolver (also names wildcard hosts).
    #[arg(long)]
    pub hosts_file: Option<PathBuf>,
    /// How long a flow waits for the Kubernetes index to learn a new pod's address before it is
    /// written as unknown (and counted in observer_agent_losses_total{kind="unattributed"}).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub hold: Duration,
    /// Which accepted connections to report: `external` (from outside the cluster; sources in
    /// the cluster are reported by their own node as egress) or `all`.
    #[arg(long, value_enum, default_value = "external")]
    pub ingress: crate::agent::options::IngressMode,
    /// Where to write the flow log (JSON Lines, appended); `-` for stdout.
    #[arg(long, default_value = "-")]
    pub flow_log: PathBuf,
    /// Rotate the flow log file past this size: it becomes PATH.1 (replacing the previous one)
    /// and a new file starts; 0 never rotates.
    #[arg(long, default_value_t = 0)]
    pub flow_log_max_bytes: u64,
    /// How often every changed flow gets a record (new flows are logged sooner, within --poll-interval).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub flush_interval: Duration,
    /// How often the agent wakes to drain new-flow announcements from the kernel.
    #[arg(long, default_value = "200ms", value_parser = duration)]
    pub poll_interval: Duration,
    /// Flows without a new connection for this long leave the kernel map (they return if seen again).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Address of the /metrics, /healthz and /readyz endpoints (port 0: any free port, logged).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// This node's name, written in every record.
    #[arg(long, env = "NODE_NAME", default_value = "localhost")]
    pub node: String,
    /// Pod address range of the cluster (repeatable, IPv4 or IPv6): addresses in it are `cluster`.
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// Service (ClusterIP) address range (repeatable).
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// An address of this node (repeatable): connections to it are `node`.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<std::net::IpAddr>,
    /// The node's /proc (mount the host's /proc here when the agent runs in a pod), used to find
    /// the host network namespace and connections open before start.
    #[arg(long, default_value = "/proc")]
    pub host_proc: PathBuf,
    /// Capacity of the kernel flow map (distinct flows held between flushes).
    #[arg(long, default_value_t = 131_072)]
    pub flow_map_size: u32,
    /// Most series of observer_connections_total and observer_unexpected_connections_total
    /// together; past it, new label sets are counted in `_overflow` series and in
    /// observer_agent_losses_total{kind="series_overflow"}.
    #[arg(long, default_value_t = 5000)]
    pub max_series: usize,
    /// A flow series without a new connection for this long is removed (so are the series of
    /// deleted workloads).
    #[arg(long, default_value = "1h", value_parser = duration)]
    pub series_ttl: Duration,
    /// Export unexpected flows as OTLP traces to this collector (HTTP/protobuf base URL, e.g.
    /// http://otel-collector:4318; /v1/traces is appended). Without it the standard
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT are used; with neither,
    /// tracing is off. OTEL_TRACES_EXPORTER=none turns it off.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// An unexpected flow makes a span when first seen, then at most once per this interval.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub trace_resighting_interval: Duration,
    /// Spans waiting for export, at most; past it spans are dropped and their connections
    /// counted in observer_agent_losses_total{kind="export_queue_full"}.
    #[arg(long, default_value_t = 4096)]
    pub trace_queue_size: usize,
    /// Size of the ring of flow events in bytes (a power of two, a multiple of the page size):
    /// connections of flows the kernel map does not hold yet, until the agent drains them
    /// (every --poll-interval) and creates the flows' entries. When it is full the kernel
    /// program creates entries itself, at a higher cost per connection (counted in
    /// observer_kernel_losses_total{kind="ring_full"}; no connection is lost). The default holds
    /// about 21,800 events: between two drains 200 ms apart, a burst of some 36,000
    /// connections a second to new flows (a connect's start, its end and its accept are an
    /// event each). The agent maps the whole ring, so it counts in its resident memory.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub ring_bytes: u32,
    /// Do not capture DNS (the agent then names external addresses only through --hosts-file
    /// or its own resolution of the architecture's exact host names, and needs no
    /// CAP_NET_ADMIN).
    #[arg(long)]
    pub no_dns: bool,
    /// The cgroup2 hierarchy's root, where the DNS programs attach (in a pod: the host's
    /// /sys/fs/cgroup mounted read-only). Default: the cgroup2 mount in /proc/self/mounts.
    #[arg(long, conflicts_with = "no_dns")]
    pub dns_cgroup: Option<PathBuf>,
    /// Size of the ring of captured DNS responses in bytes (a power of two, a multiple of the
    /// page size); a full ring loses answers, counted in
    /// observer_kernel_losses_total{kind="dns_ring_full"}.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub dns_ring_bytes: u32,
    /// Capacity of the kernel map of UDP DNS query flows.
    #[arg(long, default_value_t = 16_384)]
    pub dns_query_map_size: u32,
    /// Most (pod, address, name) entries learned from DNS answers; past it the entry nearest
    /// to expiry is evicted and counted in observer_dns_names_evicted_total.
    #[arg(long, default_value_t = 65_536)]
    pub dns_max_names: usize,
    /// How long past its TTL an answer still names its address: clients keep using an address
    /// after the TTL (libcurl caches answers 60 s and the JVM 30 s whatever the TTL, while
    /// CoreDNS's `cache 30` hands pods TTLs of 30 s or less); twice libcurl's cache.
    #[arg(long, default_value = "2m", value_parser = duration)]
    pub dns_grace: Duration,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The architecture file.
    #[arg(long)]
    pub architecture: PathBuf,
    /// Kubernetes objects (kubectl List YAML/JSON or multi-document YAML).
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// The flow log to judge (JSON Lines, `observer run --flow-log`); repeatable.
    #[arg(long = "flow-log", required = true)]
    pub flow_logs: Vec<PathBuf>,
    /// Pod address ranges (as for `observer run`).
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// Service address ranges.
    #[arg(long = "service-cidr")]
    pub service_cidrs: Vec<IpNet>,
    /// Names for external addresses (/etc/hosts format).
    #[arg(long)]
    pub hosts_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The architecture under review.
    #[arg(long)]
    pub architecture: PathBuf,
    /// Flow logs to report on (repeatable: one node or many).
    #[arg(long = "flow-log", conflicts_with = "prometheus")]
    pub flow_logs: Vec<PathBuf>,
    /// Report cluster-wide from Prometheus's HTTP API instead (workload granularity).
    #[arg(long)]
    pub prometheus: Option<String>,
    /// Start of the window: RFC 3339 or a duration ago (`1h`).
    #[arg(long)]
    pub since: Option<crate::report::TimeSpec>,
    /// End of the window (default now).
    #[arg(long)]
    pub until: Option<crate::report::TimeSpec>,
    /// md, html or json.
    #[arg(long, default_value = "md")]
    pub format: crate::report::Format,
    /// Where to write the report (default stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    /// Flow logs to learn from (repeatable).
    #[arg(long = "flow-log", required = true)]
    pub flow_logs: Vec<PathBuf>,
    /// Kubernetes objects, to take components' selectors from their pods' labels.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// metadata.name of the draft.
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the draft (default stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
}
