use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    ConnectStart, DIRECTION_ACCEPT, DIRECTION_CONNECT, FAMILY_V4, FAMILY_V6, FlowCounters, FlowKey,
    NewFlow, Outcome, SOCK_CAST_PLACEHOLDER, SockOffsets, loss, tcp_state,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const EEXIST: i32 = -17;
/// `bpf_ringbuf_submit` flag (uapi `linux/bpf.h`).
const BPF_RB_NO_WAKEUP: u64 = 1;

#[unsafe(no_mangle)]
static OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
    skc_family: 0,
    skc_num: 0,
    skc_dport: 0,
    skc_rcv_saddr: 0,
    skc_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_v6_daddr: 0,
    skc_net: 0,
    sk_protocol: 0,
    sk_err: 0,
    sk_cgroup: 0,
    net_ns_inum: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    sock_btf_id: 0,
    sk_cgroup_tagged: 0,
});

/// Cumulative counters per flow. A plain hash map, not an LRU one: an LRU evicts silently, while
/// a failed insert here is counted. Not preallocated, so memory follows the number of live flows;
/// the agent deletes idle entries. Its size is set by the agent at load time.
#[map]
static FLOWS: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

/// The connecting task, per socket (keyed by its address), from CLOSE -> SYN_SENT until the
/// handshake ends; only for connects whose flow did not exist at their start (the task is
/// recorded once per flow). Preallocated: it is written and deleted once per such connect.
#[map]
static SOCKETS: HashMap<u64, ConnectStart> = HashMap::with_max_entries(16_384, 0);

/// New-flow announcements for the agent (hints; the flow map is the truth).
#[map]
static NEW_FLOWS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU loss counters, indexed by `observer_common::loss`.
#[map]
pub(crate) static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::COUNT, 0);

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    // The filter for the 7 transitions in 10 that matter to nobody: two integer comparisons,
    // no helper call, no memory read.
    let sk: u64 = match (old as u32 as u64, new as u32 as u64) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT)
        | (tcp_state::SYN_SENT, tcp_state::ESTABLISHED)
        | (tcp_state::SYN_SENT, tcp_state::CLOSE)
        | (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => ctx.arg(0),
        _ => return 0,
    };
    let sk = cast_sock(sk, OFFSETS.load().sock_btf_id);
    let result = match (old as u32 as u64, new as u32 as u64) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT) => on_connect_start(&ctx, sk),
        (tcp_state::SYN_SENT, tcp_state::ESTABLISHED) => {
            on_connect_end(&ctx, sk, Some(Outcome::Established))
        }
        (tcp_state::SYN_SENT, _) => on_connect_end(&ctx, sk, None),
        _ => on_accept(&ctx, sk),
    };
    if result.is_err() {
        count_loss(&ctx, loss::SOCKET_READ_FAILED);
    }
    0
}

/// The socket pointer as the verifier should see it. The call is a placeholder the agent
/// rewrites before loading (`SOCK_CAST_PLACEHOLDER`): into `bpf_rdonly_cast(sk, sock_btf_id)`,
/// a kfunc the verifier inlines to nothing, which types the pointer as an untrusted
/// `struct sock *` (Linux 6.2+); or, on older kernels, into `r0 = r1`.
#[inline(always)]
fn cast_sock(sk: u64, sock_btf_id: u32) -> u64 {
    // SAFETY: calls the instruction the agent substitutes: either way it returns `sk`, typed.
    unsafe {
        let cast: unsafe extern "C" fn(u64, u32) -> u64 =
            core::mem::transmute(SOCK_CAST_PLACEHOLDER as usize);
        cast(sk, sock_btf_id)
    }
}

/// Reads a `T` at `offset` bytes into the kernel object at `base`: a plain load from a pointer
/// typed by `cast_sock` (or loaded through one) when the kernel has `bpf_rdonly_cast`, else
/// `bpf_probe_read_kernel`. `sock_btf_id` is a constant to the verifier (a frozen read-only
/// global), so it keeps only one of the two paths.
#[inline(always)]
fn read<T>(base: u64, offset: u32, off: &SockOffsets) -> Result<T, i32> {
    let at = (base + offset as u64) as *const T;
    if off.sock_btf_id != 0 {
        // SAFETY: the verifier turns a load through an untrusted BTF pointer into a
        // fault-handling load (BPF_PROBE_MEM): a bad address reads as zero, never faults.
        Ok(unsafe { core::ptr::read_volatile(at) })
    } else {
        // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path; a bad
        // address yields an error, never a fault.
        unsafe { bpf_probe_read_kernel(at) }
    }
}

#[inline(always)]
fn is_tcp(sk: u64, off: &SockOffsets) -> Result<bool, i32> {
    // inet_sock_set_state also fires for other protocols built on inet sockets (SCTP, ...).
    Ok(read::<u16>(sk, off.sk_protocol, off)? == IPPROTO_TCP)
}

/// The flow key of an active open. Complete at CLOSE -> SYN_SENT already: the source address
/// is chosen before that change, and the source port, the only part not yet set, is not in it.
#[inline(always)]
fn connect_key(sk: u64, off: &SockOffsets) -> Result<FlowKey, i32> {
    let mut key = flow_key(sk, off)?;
    key.direction = DIRECTION_CONNECT;
    key.server_port = u16::from_be(read::<u16>(sk, off.skc_dport, off)?);
    key.cgroup_id = socket_cgroup_id(sk, off)?;
    Ok(key)
}

/// The socket's cgroup2 id, `sk->sk_cgrp_data.cgroup->kn->id` (what `bpf_skb_cgroup_id` and
/// `bpf_get_current_cgroup_id` report): set when the socket is created, from the creating task.
#[inline(always)]
fn socket_cgroup_id(sk: u64, off: &SockOffsets) -> Result<u64, i32> {
    /// The cgroup2 root's id (kernfs numbers its root node 1).
    const ROOT_CGROUP_ID: u64 = 1;
    let cgroup: u64 = read(sk, off.sk_cgroup, off)?;
    if off.sk_cgroup_tagged != 0 && cgroup & 1 != 0 {
        return Ok(ROOT_CGROUP_ID);
    }
    if cgroup == 0 {
        return Ok(0);
    }
    let kn: u64 = read(cgroup, off.cgroup_kn, off)?;
    read(kn, off.kernfs_node_id, off)
}

fn on_connect_start(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    let off = OFFSETS.load();
    if !is_tcp(sk, &off)? {
        return Ok(());
    }
    // Most connects add to a flow that exists: nothing to carry to the handshake's end then.
    if FLOWS.get_ptr(&connect_key(sk, &off)?).is_some() {
        return Ok(());
    }
    let start = ConnectStart {
        pid_tgid: bpf_get_current_pid_tgid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if SOCKETS.insert(sk, start, 0).is_err() {
        // The connection will still be counted when its handshake ends, without its process.
        count_loss(ctx, loss::SOCKET_MAP_FULL);
    }
    Ok(())
}

fn on_connect_end(
    ctx: &RawTracePointContext,
    sk: u64,
    outcome: Option<Outcome>,
) -> Result<(), i32> {
    let off = OFFSETS.load();
    if !is_tcp(sk, &off)? {
        return Ok(());
    }
    // Always looked up (a miss is cheap), and before any read that may fail, so that an entry
    // is never left behind, even when another connect created the flow during this handshake.
    let start = match SOCKETS.get_ptr(sk) {
        // SAFETY: the pointer comes from a successful lookup and is read before the delete.
        Some(p) => Some(unsafe { *p }),
        None => None,
    };
    if start.is_some() {
        let _removed = SOCKETS.remove(sk); // only fails if another CPU removed it first
    }
    let outcome = match outcome {
        Some(o) => o,
        // SYN_SENT -> CLOSE: the kernel has already set sk_err (tcp_reset, tcp_write_err,
        // tcp_v4_err) when it closes a failed handshake; 0 means the application closed it.
        None => Outcome::of_failed_connect(read::<i32>(sk, off.sk_err, &off)?),
    };
    let key = connect_key(sk, &off)?;
    count(ctx, &key, outcome, Started::Connect(start));
    Ok(())
}

fn on_accept(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    let off = OFFSETS.load();
    if !is_tcp(sk, &off)? {
        return Ok(());
    }
    let mut key = flow_key(sk, &off)?;
    key.direction = DIRECTION_ACCEPT;
    key.server_port = read::<u16>(sk, off.skc_num, &off)?; // host byte order
    count(ctx, &key, Outcome::Established, Started::Accept);
    Ok(())
}

/// What is known of the task behind a connection, for a flow's first connection.
enum Started {
    /// An active open: its start if it was kept (only when its flow did not exist then).
    Connect(Option<ConnectStart>),
    /// A passive open: no task (softirq).
    Accept,
}

/// The socket's network namespace and addresses; v4-mapped IPv6 addresses become IPv4.
#[inline(always)]
fn flow_key(sk: u64, off: &SockOffsets) -> Result<FlowKey, i32> {
    let net: u64 = read(sk, off.skc_net, off)?;
    let mut key = FlowKey {
        cgroup_id: 0,
        netns: read::<u32>(net, off.net_ns_inum, off)?,
        server_port: 0,
        family: FAMILY_V4,
        direction: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    let family: u16 = read(sk, off.skc_family, off)?;
    if family == AF_INET {
        // Whole words: the verifier checks a load's size against the field it reads.
        let local: u32 = read(sk, off.skc_rcv_saddr, off)?;
        let remote: u32 = read(sk, off.skc_daddr, off)?;
        key.local_addr[..4].copy_from_slice(&local.to_ne_bytes());
        key.remote_addr[..4].copy_from_slice(&remote.to_ne_bytes());
    } else if family == AF_INET6 {
        let local = read_in6(sk, off.skc_v6_rcv_saddr, off)?;
        let remote = read_in6(sk, off.skc_v6_daddr, off)?;
        if is_v4_mapped(&local) && is_v4_mapped(&remote) {
            key.local_addr[..4].copy_from_slice(&local[12..]);
            key.remote_addr[..4].copy_from_slice(&remote[12..]);
        } else {
            key.family = FAMILY_V6;
            key.local_addr = local;
            key.remote_addr = remote;
        }
    } else {
        return Err(-1);
    }
    Ok(key)
}

/// A `struct in6_addr` as two 8-byte loads.
#[inline(always)]
fn read_in6(sk: u64, offset: u32, off: &SockOffsets) -> Result<[u8; 16], i32> {
    let high: u64 = read(sk, offset, off)?;
    let low: u64 = read(sk, offset + 8, off)?;
    let mut a = [0; 16];
    a[..8].copy_from_slice(&high.to_ne_bytes());
    a[8..].copy_from_slice(&low.to_ne_bytes());
    Ok(a)
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Adds one connection with `outcome` to the flow `key`, creating the flow if needed.
#[inline(always)]
fn count(ctx: &RawTracePointContext, key: &FlowKey, outcome: Outcome, started: Started) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if add_to_existing(key, outcome, now) {
        return;
    }
    let (pid_tgid, comm) = match started {
        Started::Connect(Some(s)) => (s.pid_tgid, s.comm),
        Started::Connect(None) => {
            count_loss(ctx, loss::START_NOT_SEEN);
            (0, [0; 16])
        }
        Started::Accept => (0, [0; 16]),
    };
    let mut value = FlowCounters {
        first_seen_ns: now,
        last_seen_ns: now,
        outcomes: [0; Outcome::COUNT],
        pid_tgid,
        comm,
    };
    value.outcomes[outcome as usize] = 1;
    match FLOWS.insert(key, &value, BPF_NOEXIST as u64) {
        Ok(()) => announce(ctx, key),
        // Another CPU created the flow between our lookup and insert.
        Err(EEXIST) => {
            if !add_to_existing(key, outcome, now) {
                count_loss(ctx, loss::FLOW_MAP_FULL);
            }
        }
        Err(_) => count_loss(ctx, loss::FLOW_MAP_FULL),
    }
}

#[inline(always)]
fn add_to_existing(key: &FlowKey, outcome: Outcome, now: u64) -> bool {
    let Some(value) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: `value` points into a live map element (the program runs under RCU, and the map is
    // not preallocated, so a concurrent delete cannot hand the memory to another flow while we
    // hold it). Counters are only ever changed with atomic adds, here and on other CPUs.
    unsafe {
        let counter = core::ptr::addr_of_mut!((*value).outcomes[outcome as usize]);
        // The BPF target offers no `AtomicU64::fetch_add`; the intrinsic lowers to BPF_ATOMIC_ADD.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1);
        // A plain store: the latest of concurrent writers wins, which is all "last seen" means.
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).last_seen_ns), now);
    }
    true
}

/// Tells the agent about a new flow without waking it: the agent drains the ring on its own
/// timer, so its wake-ups never follow the event rate. A full ring loses only the hint (counted);
/// the agent then rescans the map, which still holds the count.
#[inline(always)]
fn announce(ctx: &RawTracePointContext, key: &FlowKey) {
    match NEW_FLOWS.reserve::<NewFlow>(0) {
        Some(mut entry) => {
            entry.write(NewFlow { key: *key });
            entry.submit(BPF_RB_NO_WAKEUP);
        }
        None => count_loss(ctx, loss::RING_FULL),
    }
}

/// Counts a loss. The first loss of each kind on a CPU, and every power of two after it, is
/// also logged through aya-log: a handful of lines however long an overflow lasts.
#[inline(always)]
fn count_loss(ctx: &RawTracePointContext, index: u32) {
    let Some(counter) = LOSSES.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a per-CPU slot: only this CPU writes it, and the program is not re-entered on it.
    let n = unsafe {
        *counter += 1;
        *counter
    };
    if n & (n - 1) == 0 && index != loss::START_NOT_SEEN {
        warn!(
            ctx,
            "observer: loss counter {} reached {} on this CPU", index, n
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects a program that can reach this loop, so no panic survives loading.
    loop {}
}
