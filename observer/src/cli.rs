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
    /// Check an architecture file; exit code 0 when valid, 2 with every problem otherwise.
    Validate {
        /// The architecture file (YAML, `kind: Architecture`).
        file: PathBuf,
    },
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
    /// Where to write the flow log (JSON Lines, appended); `-` for stdout.
    #[arg(long, default_value = "-")]
    pub flow_log: PathBuf,
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
    /// Capacity of the kernel's per-socket map (handshakes in progress at once).
    #[arg(long, default_value_t = 16_384)]
    pub socket_map_size: u32,
    /// Size of the new-flow ring buffer in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = 256 * 1024)]
    pub ring_bytes: u32,
}
