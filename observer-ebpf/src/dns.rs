//! DNS as pods see it: two `cgroup_skb` programs attached at the cgroup2 root, so they run for
//! every socket of the machine (every pod's included).
//!
//! - `dns_responses` (ingress) hands each UDP or TCP packet *from* port 53 to the agent through
//!   the `DNS_RESPONSES` ring, with the receiving socket's network namespace: the agent learns
//!   which names each pod resolved to which addresses.
//! - `dns_queries` (egress) counts each UDP packet *to* port 53 in `DNS_QUERIES`, keyed like a
//!   TCP flow, so a pod's resolver traffic is a flow the model judges (DNS over TCP is already
//!   a TCP connection).
//!
//! Every other packet leaves after a few direct loads of its headers and no helper call. Both
//! programs always return 1: they observe, they never drop.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a key or value passed by value, not \
              by reference, is copied to the 512-byte BPF stack the build holds to a budget"
)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::{__sk_buff, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_skb_cgroup_id, generated},
    macros::{cgroup_skb, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use observer_common::{
    DIRECTION_CONNECT, DNS_CAPTURE_MAX, DNS_PORT, DnsOffsets, DnsResponseHead, FAMILY_V4,
    FAMILY_V6, FlowCounters, FlowKey, IPPROTO_TCP, IPPROTO_UDP, Outcome, loss,
};

use crate::program::LOSSES;

/// `bpf_ringbuf_output` flag (uapi `linux/bpf.h`): the agent drains on its own timer.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// The verdict of a `cgroup_skb` program that lets the packet through.
const PASS: i32 = 1;

#[unsafe(no_mangle)]
static DNS_OFFSETS: Global<DnsOffsets> = Global::new(DnsOffsets {
    skc_net: 0,
    net_ns_inum: 0,
});

/// Captured responses: a [`DnsResponseHead`] and its payload, variable length.
#[map]
static DNS_RESPONSES: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// UDP queries per flow, counted like TCP connections (outcome "established").
#[map]
static DNS_QUERIES: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// Per-CPU room to assemble a response (the stack has 512 bytes) and to copy the head of the
/// receiving socket into, where a field at a load-time offset can be read with bounds checks.
#[repr(C)]
pub struct Scratch {
    head: DnsResponseHead,
    payload: [u8; DNS_CAPTURE_MAX],
    sock: [u8; SOCK_HEAD],
}

/// Bytes of `struct sock` copied to find its network namespace pointer (`skc_net` lies in the
/// first 64 bytes of `sock_common` on every kernel since 4.x; the agent checks it).
const SOCK_HEAD: usize = 128;

/// Slot 0 for responses (softirq), 1 for queries (the sending task, which a softirq can
/// interrupt on the same CPU): each run owns its slot.
#[map]
static DNS_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);
const RESPONSE_SLOT: u32 = 0;
const QUERY_SLOT: u32 = 1;

/// Where the transport header and payload lie, from the IP header at the packet's start.
struct Packet {
    family: u8,
    transport: u8,
    /// Offset of the payload, and its length on the wire.
    payload: usize,
    payload_len: usize,
}

#[cgroup_skb(ingress)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya-ebpf's program macros call this with the context by value"
)]
pub fn dns_responses(ctx: SkBuffContext) -> i32 {
    if let Some(p) = parse(&ctx, true) {
        capture_response(&ctx, &p);
    }
    PASS
}

#[cgroup_skb(egress)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya-ebpf's program macros call this with the context by value"
)]
pub fn dns_queries(ctx: SkBuffContext) -> i32 {
    if let Some(p) = parse(&ctx, false)
        && p.transport == IPPROTO_UDP
    {
        count_query(&ctx, &p);
    }
    PASS
}

/// The packet's layout if it is DNS in the direction asked: from port 53 for responses, to
/// port 53 for queries. Reads the headers in place (`cgroup_skb` sees the packet from its IP
/// header); a header outside the linear part is not DNS worth the helper call.
#[inline(always)]
fn parse(ctx: &SkBuffContext, response: bool) -> Option<Packet> {
    let skb = ctx.skb.skb;
    // SAFETY: the verifier rewrites these context loads; data and data_end bound every packet
    // access below, which the verifier checks again.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // The smallest DNS packet: an IPv4 header, a UDP header and a 12-byte DNS header. One
    // check of a constant length (the verifier learns nothing from `data >= end`, the form the
    // compiler gives a one-byte check).
    if data + 40 > end {
        return None;
    }
    // SAFETY: 40 bytes inside [data, end).
    let version = unsafe { *(data as *const u8) } >> 4;
    let (family, transport, l4, ip_total) = if version == 4 {
        // SAFETY: the 20-byte IPv4 header is inside [data, end).
        let (ihl, proto, total) = unsafe {
            (
                (*(data as *const u8) & 0x0f) as usize * 4,
                *((data + 9) as *const u8),
                u16::from_be(*((data + 2) as *const u16)) as usize,
            )
        };
        (FAMILY_V4, proto, ihl, total)
    } else if version == 6 {
        // SAFETY: the 40-byte IPv6 header is inside [data, end). Extension headers are not
        // followed: DNS packets do not carry them.
        let (next, payload_len) = unsafe {
            (
                *((data + 6) as *const u8),
                u16::from_be(*((data + 4) as *const u16)) as usize,
            )
        };
        (FAMILY_V6, next, 40, 40 + payload_len)
    } else {
        return None;
    };
    if transport != IPPROTO_UDP && transport != IPPROTO_TCP {
        return None;
    }
    // Two comparisons, as the verifier follows them: `contains` compiles to other branches.
    #[expect(
        clippy::manual_range_contains,
        reason = "`!(20..=60).contains(&l4)` changes the object's code"
    )]
    let bad_l4 = l4 < 20 || l4 > 60;
    if bad_l4 || data + l4 + 4 > end {
        return None;
    }
    // SAFETY: both ports (4 bytes from l4) are inside [data, end).
    let (sport, dport) = unsafe {
        (
            u16::from_be(*((data + l4) as *const u16)),
            u16::from_be(*((data + l4 + 2) as *const u16)),
        )
    };
    if (response && sport != DNS_PORT) || (!response && dport != DNS_PORT) {
        return None;
    }
    let l4_len = if transport == IPPROTO_UDP {
        8
    } else {
        if data + l4 + 13 > end {
            return None;
        }
        // SAFETY: the TCP data offset byte (l4 + 12) is inside [data, end).
        (unsafe { *((data + l4 + 12) as *const u8) } >> 4) as usize * 4
    };
    let payload = l4 + l4_len;
    Some(Packet {
        family,
        transport,
        payload,
        payload_len: ip_total.saturating_sub(payload),
    })
}

/// Copies the response's addresses and payload (up to [`DNS_CAPTURE_MAX`] bytes) into the ring.
#[inline(always)]
fn capture_response(ctx: &SkBuffContext, p: &Packet) {
    if p.payload_len == 0 {
        return; // a bare TCP ACK or FIN from the server
    }
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(RESPONSE_SLOT) else {
        return;
    };
    // SAFETY: a per-CPU slot of responses' own; softirqs do not nest on a CPU.
    let s = unsafe { &mut *scratch };
    let n = p.payload_len.min(DNS_CAPTURE_MAX);
    // The verifier must see 1 <= n <= DNS_CAPTURE_MAX in the register itself. The compiler
    // knows it already and would drop any check, so n is laundered through a volatile read and
    // bounded by arithmetic the verifier follows (a no-op for 1..=DNS_CAPTURE_MAX).
    // SAFETY: a read of a local.
    let n = unsafe { core::ptr::read_volatile(&raw const n) };
    let n = (n.wrapping_sub(1) & (DNS_CAPTURE_MAX - 1)) + 1;
    // SAFETY: n is in 1..=DNS_CAPTURE_MAX, the size of the destination.
    let ret = unsafe {
        generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            p.payload as u32,
            s.payload.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if ret != 0 {
        return;
    }
    s.head = DnsResponseHead {
        // SAFETY: valid for cgroup_skb programs (the socket's cgroup).
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        netns: netns(ctx.skb.skb, &mut s.sock).unwrap_or(0),
        captured_len: n as u16,
        wire_len: p.payload_len.min(u16::MAX as usize) as u16,
        family: p.family,
        transport: p.transport,
        _pad: [0; 6],
        server_addr: [0; 16],
        client_addr: [0; 16],
    };
    if load_addrs(ctx, p, &mut s.head.server_addr, &mut s.head.client_addr).is_err() {
        return;
    }
    let len = size_of::<DnsResponseHead>() + n;
    // SAFETY: `len` bytes from the head lie inside the scratch value: head and payload are
    // contiguous in a #[repr(C)] struct (the head's size is a multiple of 8), n <= its payload.
    let bytes = unsafe { core::slice::from_raw_parts(scratch.cast::<u8>(), len) };
    if DNS_RESPONSES
        .output::<[u8]>(bytes, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        count_loss(loss::DNS_RING_FULL);
    }
}

/// Counts one UDP query in `DNS_QUERIES`.
#[inline(always)]
fn count_query(ctx: &SkBuffContext, p: &Packet) {
    let Some(scratch) = DNS_SCRATCH.get_ptr_mut(QUERY_SLOT) else {
        return;
    };
    // SAFETY: a per-CPU slot of queries' own: a UDP send runs in its task, and a softirq that
    // interrupts it uses the other slot.
    let s = unsafe { &mut *scratch };
    let mut key = FlowKey {
        // SAFETY: valid for cgroup_skb programs (the socket's cgroup).
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        netns: netns(ctx.skb.skb, &mut s.sock).unwrap_or(0),
        server_port: DNS_PORT,
        family: p.family,
        direction: DIRECTION_CONNECT,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    // A query leaves this host: its source is the local end, its destination the server.
    if load_addrs(ctx, p, &mut key.local_addr, &mut key.remote_addr).is_err() {
        return;
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if add_query(&key, now) {
        return;
    }
    let mut value = FlowCounters {
        first_seen_ns: now,
        last_seen_ns: now,
        ..FlowCounters::default()
    };
    value.outcomes[Outcome::Established as usize] = 1;
    // EEXIST (another CPU created it meanwhile) adds to that entry; only a full map loses it.
    if DNS_QUERIES
        .insert(&key, &value, u64::from(BPF_NOEXIST))
        .is_err()
        && !add_query(&key, now)
    {
        count_loss(loss::DNS_QUERY_MAP_FULL);
    }
}

/// Adds one query to the flow `key` if it exists.
#[inline(always)]
fn add_query(key: &FlowKey, now: u64) -> bool {
    let Some(v) = DNS_QUERIES.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a live element of a non-preallocated map; counters change only atomically, and
    // "last seen" is a plain store where the latest writer wins.
    unsafe {
        let c = core::ptr::addr_of_mut!((*v).outcomes[Outcome::Established as usize]);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(c, 1);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*v).last_seen_ns), now);
    }
    true
}

/// The packet's source and destination addresses, laid out as in a [`FlowKey`] (the program
/// sees IPv4 packets to IPv6 sockets as IPv4: no mapping is needed).
#[inline(always)]
fn load_addrs(
    ctx: &SkBuffContext,
    p: &Packet,
    src: &mut [u8; 16],
    dst: &mut [u8; 16],
) -> Result<(), i64> {
    if p.family == FAMILY_V4 {
        let a: [u8; 8] = ctx.skb.load(12)?;
        src[..4].copy_from_slice(&a[..4]);
        dst[..4].copy_from_slice(&a[4..]);
    } else {
        *src = ctx.skb.load(8)?;
        *dst = ctx.skb.load(24)?;
    }
    Ok(())
}

/// The network namespace (inode number) of the packet's socket: its `skc_net` pointer, read
/// from a copy of the socket's head, then that namespace's `ns.inum`.
#[inline(always)]
fn netns(skb: *mut __sk_buff, copy: &mut [u8; SOCK_HEAD]) -> Option<u32> {
    // SAFETY: the verifier rewrites this context load (the receiving or sending socket).
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let off = DNS_OFFSETS.load();
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path; the
    // destination is a map value of exactly SOCK_HEAD bytes.
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            copy.as_mut_ptr().cast(),
            SOCK_HEAD as u32,
            sk as *const core::ffi::c_void,
        )
    };
    if ret != 0 {
        return None;
    }
    let at = (off.skc_net as usize) & (SOCK_HEAD - 1);
    if at + 8 > SOCK_HEAD {
        return None;
    }
    let mut net = [0u8; 8];
    net.copy_from_slice(&copy[at..at + 8]);
    let net = u64::from_ne_bytes(net);
    // SAFETY: as above; a bad address yields an error.
    unsafe { bpf_probe_read_kernel((net + u64::from(off.net_ns_inum)) as *const u32) }.ok()
}

#[inline(always)]
fn count_loss(index: u32) {
    if let Some(counter) = LOSSES.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; cgroup_skb runs do not nest on a CPU, but the raw tracepoint
        // program can interrupt this one on the same CPU, so the add is atomic.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    }
}
