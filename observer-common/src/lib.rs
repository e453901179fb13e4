//! Types shared by the observer kernel program and the agent.
//!
//! The kernel side sees only the `#[repr(C)]` map layouts below: integers and byte arrays with
//! explicit padding, so both sides agree on every byte. With the `user` feature the agent side
//! adds `aya::Pod` impls, conversions to std types and the JSON flow-record schema ([`record`]).
#![no_std]
#![deny(unsafe_code)]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
pub mod record;
#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
pub use user::*;

/// Address family of a flow key. v4-mapped IPv6 addresses are normalised to [`FAMILY_V4`] in the
/// kernel, so one IPv4 peer is one flow however the application spelled its address.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// The socket performed an active open (`connect()`): the local end is the client.
pub const DIRECTION_CONNECT: u8 = 1;
/// The socket is a passive open (an accepted connection): the local end is the server.
pub const DIRECTION_ACCEPT: u8 = 2;

/// How an active open ended. Passive opens only ever count [`Outcome::Established`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The handshake completed: nothing blocked the flow.
    Established = 0,
    /// The peer answered with a reset (`ECONNREFUSED`): usually nothing listened.
    Refused = 1,
    /// SYN retries were exhausted (`ETIMEDOUT`): the usual signature of a dropping filter.
    TimedOut = 2,
    /// An ICMP error ended the handshake (`EHOSTUNREACH`, `ENETUNREACH`, ...).
    Unreachable = 3,
    /// The application closed the socket before the handshake completed.
    Aborted = 4,
}

impl Outcome {
    pub const COUNT: usize = 5;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Established,
        Outcome::Refused,
        Outcome::TimedOut,
        Outcome::Unreachable,
        Outcome::Aborted,
    ];

    /// Classifies a failed active open (SYN_SENT -> CLOSE) by the socket's `sk_err`.
    /// Linux errno values; they are the same on every architecture the agent supports.
    #[inline(always)]
    pub const fn of_failed_connect(sk_err: i32) -> Outcome {
        match sk_err {
            0 => Outcome::Aborted,
            111 => Outcome::Refused,  // ECONNREFUSED
            110 => Outcome::TimedOut, // ETIMEDOUT
            // EHOSTUNREACH, ENETUNREACH, EHOSTDOWN and the other errors an ICMP message maps to.
            _ => Outcome::Unreachable,
        }
    }

    /// The name used in flow records, metrics and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed-out",
            Outcome::Unreachable => "unreachable",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Key of the kernel's flow map: what makes two connections "the same flow". Never the ephemeral
/// port or the pid, so a busy client is one entry, not thousands.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// cgroup2 id of the socket (active opens): the cgroup of the task that created it
    /// (`sk->sk_cgrp_data`, what `bpf_skb_cgroup_id` reports), which is the connecting task's in
    /// all but odd cases (a socket passed to another process, a task moved between `socket()`
    /// and `connect()`). 0 for passive opens.
    pub cgroup_id: u64,
    /// Inode number of the socket's network namespace (`net->ns.inum`).
    pub netns: u32,
    /// The server's port, host byte order: the remote port of a connect, the local port of an accept.
    pub server_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`DIRECTION_CONNECT`] or [`DIRECTION_ACCEPT`].
    pub direction: u8,
    /// Local address; an IPv4 address occupies the first 4 bytes, the rest is zero.
    pub local_addr: [u8; 16],
    /// Remote address, laid out like `local_addr`.
    pub remote_addr: [u8; 16],
}

/// Value of the kernel's flow map: cumulative counters, only ever increased by the kernel. The
/// agent computes deltas against what it last read, so it never writes here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCounters {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and the latest counted connection.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Connections per [`Outcome`], indexed by its discriminant; their sum is the connection count.
    pub outcomes: [u64; Outcome::COUNT],
    /// pid (low 32 bits: thread id, high: tgid) and command of the first connecting task (set once, so it is never torn by concurrent writers); zero
    /// for passive opens and for connects that started before the program was attached.
    pub pid_tgid: u64,
    pub comm: [u8; 16],
}

impl FlowCounters {
    pub fn connections(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}

/// Ring-buffer record of a flow the kernel's flow map does not hold (yet): the kernel program
/// never creates flow entries itself while the ring has room (an insert into the map costs
/// several times a ring record); the agent drains the ring and creates the entries.
/// - [`FlowEvent::START`]: a connect to such a flow started (CLOSE -> SYN_SENT, in the
///   connecting task): its task, which the handshake's end (in softirq) no longer knows;
/// - an [`Outcome`] as `u32`: one connection of the flow with that outcome, counted here and
///   nowhere else.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the event.
    pub time_ns: u64,
    /// The connecting task for a start; zero otherwise.
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    /// [`FlowEvent::START`] or an [`Outcome`].
    pub kind: u32,
    pub _pad: u32,
}

impl FlowEvent {
    pub const START: u32 = u32::MAX;
}

/// Indices of the kernel's per-CPU loss counters (`LOSSES` map). Every way a count or a detail
/// can be lost in the kernel has one.
pub mod loss {
    /// A ring-buffer reservation failed: the kernel program kept the event in the flow map
    /// itself instead (no count is lost; a start's task may be), and the agent rescans the map.
    pub const RING_FULL: u32 = 0;
    /// The ring was full and inserting the flow into the map failed too: the connection's count
    /// is lost and counted here instead.
    pub const FLOW_MAP_FULL: u32 = 1;
    /// Reading the socket failed (`bpf_probe_read_kernel`): the connection is not counted.
    pub const SOCKET_READ_FAILED: u32 = 2;
    /// A connect created a flow and its start was not seen (it began before the program was
    /// attached, or its start did not fit in the ring): counted without process;
    /// informational, not a lost count. Counted by the kernel when it creates the entry itself,
    /// and by the agent when it does.
    pub const START_NOT_SEEN: u32 = 3;
    /// A DNS response could not be handed to the agent (its ring was full): the names in it
    /// are lost, so flows to its addresses fall back to the agent's own resolution.
    pub const DNS_RING_FULL: u32 = 4;
    /// A DNS query could not be counted (its map was full).
    pub const DNS_QUERY_MAP_FULL: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "ring_full",
        "flow_map_full",
        "socket_read_failed",
        "start_not_seen",
        "dns_ring_full",
        "dns_query_map_full",
    ];
}

/// Names of the kernel object's maps and program, shared so the loader cannot drift from them.
pub mod names {
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const LOSSES: &str = "LOSSES";
    pub const PROGRAM: &str = "inet_sock_set_state";
    pub const TRACEPOINT: &str = "inet_sock_set_state";
    /// DNS: responses delivered to sockets, and queries sent over UDP.
    pub const DNS_RESPONSES: &str = "DNS_RESPONSES";
    pub const DNS_QUERIES: &str = "DNS_QUERIES";
    pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
    pub const DNS_INGRESS_PROGRAM: &str = "dns_responses";
    pub const DNS_EGRESS_PROGRAM: &str = "dns_queries";
}

/// DNS over UDP and TCP: the well-known server port.
pub const DNS_PORT: u16 = 53;
/// The most DNS payload bytes one captured response carries to the agent. Larger responses
/// (zone-sized TCP answers, EDNS answers past 4 KiB) arrive cut and are counted as truncated by
/// the agent; a power of two, so the kernel can bound a length with a mask.
pub const DNS_CAPTURE_MAX: usize = 4096;
/// IP protocol numbers of the transports DNS runs on.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Head of a captured DNS response in the `DNS_RESPONSES` ring; `captured_len` payload bytes
/// follow it (the transport's payload from its first byte: for TCP, the message's 2-byte length
/// prefix comes first).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsResponseHead {
    /// Cgroup of the receiving socket (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// Network namespace (inode number) of the receiving socket: the pod the answer is for.
    pub netns: u32,
    /// Payload bytes that follow this head.
    pub captured_len: u16,
    /// Payload bytes the packet carried (more than `captured_len` when it was cut).
    pub wire_len: u16,
    pub family: u8,
    /// [`IPPROTO_UDP`] or [`IPPROTO_TCP`].
    pub transport: u8,
    pub _pad: [u8; 6],
    /// The answering server (the packet's source) and the receiver, laid out as in [`FlowKey`].
    pub server_addr: [u8; 16],
    pub client_addr: [u8; 16],
}

/// Byte offsets of the kernel structure fields the program reads, found in the running kernel's
/// BTF by the agent and written into the program's `OFFSETS` global before load (never
/// hard-coded: they differ between kernel versions and configurations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockOffsets {
    /// Members of `struct sock` (its first member, `__sk_common`, included).
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_net: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    /// `sk_cgrp_data.cgroup` in `struct sock`, the socket's cgroup2 cgroup (Linux 5.15+); before
    /// 5.15, `sk_cgrp_data.val`, see `sk_cgroup_tagged`.
    pub sk_cgroup: u32,
    /// Offset of `ns.inum` in `struct net`.
    pub net_ns_inum: u32,
    /// Offset of `kn` in `struct cgroup`.
    pub cgroup_kn: u32,
    /// Offset of `id` in `struct kernfs_node`.
    pub kernfs_node_id: u32,
    /// BTF id of `struct sock` in the running kernel when it offers the `bpf_rdonly_cast` kfunc
    /// (Linux 6.2+): the program then reads kernel memory with plain loads, which the verifier
    /// turns into fault-handling loads, instead of `bpf_probe_read_kernel` helper calls. 0
    /// means helper calls.
    pub sock_btf_id: u32,
    /// 1 on kernels before 5.15, where `sk_cgrp_data.val` is the cgroup pointer only when its
    /// lowest bit is clear; when set (net_prio or net_cls v1 in use) the socket's cgroup2 cgroup
    /// is the root (`sock_cgroup_ptr()` in those kernels).
    pub sk_cgroup_tagged: u32,
}

/// Offsets the DNS programs read, found in BTF like [`SockOffsets`]: the socket's namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DnsOffsets {
    /// Offset of the `struct net *` in `struct sock` (`__sk_common.skc_net.net`).
    pub skc_net: u32,
    /// Offset of `ns.inum` in `struct net`.
    pub net_ns_inum: u32,
}

/// Name of the DNS programs' global holding [`DnsOffsets`].
pub const DNS_OFFSETS_GLOBAL: &str = "DNS_OFFSETS";

/// The helper number of the placeholder call that casts the socket pointer (see
/// [`SockOffsets::sock_btf_id`]). The agent rewrites each such call in the kernel object before
/// loading it: into a call of the `bpf_rdonly_cast` kfunc where the kernel has it, else into
/// `r0 = r1` (the pointer unchanged, for helper reads). No kernel helper has this number.
pub const SOCK_CAST_PLACEHOLDER: u32 = 0x0b5e_ca57;

/// Name of the program's global holding [`SockOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`), a stable ABI.
pub mod tcp_state {
    pub const ESTABLISHED: u64 = 1;
    pub const SYN_SENT: u64 = 2;
    pub const SYN_RECV: u64 = 3;
    pub const CLOSE: u64 = 7;
}
