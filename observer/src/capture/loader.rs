//! Pre-flight checks, loading and attaching the kernel program.

use std::{fs, path::Path};

use aya::{Ebpf, EbpfLoader, programs::RawTracePoint};
use observer_common::{DNS_OFFSETS_GLOBAL, DnsOffsets, OFFSETS_GLOBAL, SockOffsets, names};

use super::btf::{Btf, BtfError};

/// The kernel object, built from `observer-ebpf` by build.rs. Empty when the agent was built
/// without bpf-linker.
static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer-ebpf"));

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the agent cannot capture on this machine. Each message names what is missing and how
/// to fix it; `main` prints it on one line and exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this observer binary was built without its kernel program (bpf-linker was missing at build time); run scripts/bootstrap.sh, then rebuild"
    )]
    NoKernelObject,
    #[error("missing capability {0}: run as root or grant CAP_BPF and CAP_PERFMON")]
    MissingCapability(&'static str),
    #[error(
        "kernel BTF is missing at {KERNEL_BTF} ({0}); observer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.8 or later)"
    )]
    NoBtf(std::io::Error),
    #[error("{0}; observer needs Linux 5.8 or later")]
    Btf(#[from] BtfError),
    #[error("loading the kernel program failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error(
        "attaching to raw tracepoint sock/inet_sock_set_state failed: {0}; observer needs raw tracepoints (Linux 4.17+) and that tracepoint (Linux 4.16+)"
    )]
    Attach(#[source] aya::programs::ProgramError),
    #[error("the kernel object has no {0}; it does not match this agent (rebuild both)")]
    Missing(&'static str),
    #[error(
        "cannot open the cgroup2 root {path} to capture DNS: {source}; mount the host's cgroup2 hierarchy and pass it with --dns-cgroup, or run with --no-dns"
    )]
    DnsCgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "attaching the DNS programs (cgroup_skb) to {path} failed: {reason}; they need CAP_NET_ADMIN and a cgroup2 directory (Linux 4.10+), or run with --no-dns"
    )]
    DnsAttach {
        path: std::path::PathBuf,
        /// The error and its causes on one line (aya's message alone omits the errno).
        reason: String,
    },
    #[error(
        "missing capability CAP_NET_ADMIN: the DNS programs (cgroup_skb) need it; grant it, or run with --no-dns"
    )]
    DnsCapability,
}

/// Capabilities the agent needs, from `capabilities(7)`: the bit number in `CapEff` and why.
pub const REQUIRED_CAPABILITIES: [(&str, u32, &str); 2] = [
    ("CAP_BPF", 39, "load the kernel program and create its maps"),
    (
        "CAP_PERFMON",
        38,
        "attach to a raw tracepoint and read kernel memory with bpf_probe_read_kernel",
    ),
];

/// The capability the DNS programs add: loading a `cgroup_skb` program is a network
/// administrator's operation.
pub const DNS_CAPABILITY: (&str, u32, &str) = (
    "CAP_NET_ADMIN",
    12,
    "load the DNS programs (cgroup_skb) and attach them to the cgroup2 root",
);

/// The effective capability set of this process, from `/proc/self/status`.
fn effective_capabilities() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether capability `bit` is effective; CAP_SYS_ADMIN covers CAP_BPF, CAP_PERFMON and
/// CAP_NET_ADMIN's BPF uses on every kernel, and is all older ones know.
fn has_capability(eff: u64, bit: u32) -> bool {
    eff & (1 << bit) != 0 || eff & (1 << 21) != 0
}

/// Checks the effective capabilities of this process, so a missing one is named instead of
/// surfacing as an opaque EPERM from `bpf()`.
pub fn check_capabilities() -> Result<(), CaptureError> {
    let eff = effective_capabilities();
    for (name, bit, _why) in REQUIRED_CAPABILITIES {
        if !has_capability(eff, bit) {
            return Err(CaptureError::MissingCapability(name));
        }
    }
    Ok(())
}

/// Checks the capability the DNS programs need.
pub fn check_dns_capability() -> Result<(), CaptureError> {
    if has_capability(effective_capabilities(), DNS_CAPABILITY.1) {
        Ok(())
    } else {
        Err(CaptureError::DnsCapability)
    }
}

/// Finds the offsets of every field the kernel program reads in the running kernel's BTF.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let sk = |path: &[&str]| btf.offset_of("sock", path);
    let skc = |field: &str| sk(&["__sk_common", field]);
    Ok(SockOffsets {
        skc_family: skc("skc_family")?,
        skc_num: skc("skc_num")?,
        skc_dport: skc("skc_dport")?,
        skc_rcv_saddr: skc("skc_rcv_saddr")?,
        skc_daddr: skc("skc_daddr")?,
        skc_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
        skc_v6_daddr: skc("skc_v6_daddr")?,
        // possible_net_t wraps the `struct net *` (when CONFIG_NET_NS=y).
        skc_net: sk(&["__sk_common", "skc_net", "net"])?,
        sk_protocol: sk(&["sk_protocol"])?,
        sk_err: sk(&["sk_err"])?,
        net_ns_inum: btf.offset_of("net", &["ns", "inum"])?,
        _pad: 0,
    })
}

/// The offsets the DNS programs read.
pub fn dns_offsets(btf: &Btf) -> Result<DnsOffsets, BtfError> {
    Ok(DnsOffsets {
        skc_net: btf.offset_of("sock", &["__sk_common", "skc_net", "net"])?,
        net_ns_inum: btf.offset_of("net", &["ns", "inum"])?,
    })
}

/// Map sizes; the defaults suit a busy node, tests shrink them to provoke overflows.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub flows: u32,
    pub sockets: u32,
    pub ring_bytes: u32,
    /// The ring of captured DNS responses, in bytes (a power of two, at least a page).
    pub dns_ring_bytes: u32,
    /// UDP DNS query flows.
    pub dns_queries: u32,
}

/// Loads the kernel program with this kernel's offsets and attaches it to
/// `sock/inet_sock_set_state` (a raw tracepoint: no tracefs needed).
pub fn load_and_attach(sizes: MapSizes) -> Result<Ebpf, CaptureError> {
    if KERNEL_OBJECT.is_empty() {
        return Err(CaptureError::NoKernelObject);
    }
    check_capabilities()?;
    let btf_data = fs::read(Path::new(KERNEL_BTF)).map_err(CaptureError::NoBtf)?;
    let btf = Btf::parse(&btf_data)?;
    let offsets = sock_offsets(&btf)?;
    let dns = dns_offsets(&btf)?;
    tracing::debug!(?offsets, ?dns, "socket field offsets from kernel BTF");
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &offsets, true)
        .override_global(DNS_OFFSETS_GLOBAL, &dns, true)
        .map_max_entries(names::DNS_RESPONSES, sizes.dns_ring_bytes)
        .map_max_entries(names::DNS_QUERIES, sizes.dns_queries)
        .map_max_entries(names::FLOWS, sizes.flows)
        .map_max_entries(names::SOCKETS, sizes.sockets)
        .map_max_entries(names::NEW_FLOWS, sizes.ring_bytes)
        .load(KERNEL_OBJECT)
        .map_err(CaptureError::Load)?;
    let program: &mut RawTracePoint = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(CaptureError::Missing("program inet_sock_set_state"))?
        .try_into()
        .map_err(CaptureError::Attach)?;
    program.load().map_err(CaptureError::Attach)?;
    program
        .attach(names::TRACEPOINT)
        .map_err(CaptureError::Attach)?;
    Ok(ebpf)
}
