use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    ConnectStart, DIRECTION_ACCEPT, DIRECTION_CONNECT, FAMILY_V4, FAMILY_V6, FlowCounters, FlowKey,
    NewFlow, Outcome, SockOffsets, loss, tcp_state,
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
    net_ns_inum: 0,
    _pad: 0,
});

/// Cumulative counters per flow. A plain hash map, not an LRU one: an LRU evicts silently, while
/// a failed insert here is counted. Not preallocated, so memory follows the number of live flows;
/// the agent deletes idle entries. Its size is set by the agent at load time.
#[map]
static FLOWS: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

/// What the connecting task looked like, per socket (keyed by its address), from CLOSE ->
/// SYN_SENT until the handshake ends. Preallocated: it is written and deleted once per connect.
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

/// Reads a `T` at `offset` bytes into the kernel object at `base`.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling path; a bad
    // address yields an error, never a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

#[inline(always)]
fn is_tcp(sk: u64, off: &SockOffsets) -> Result<bool, i32> {
    // inet_sock_set_state also fires for other protocols built on inet sockets (SCTP, ...).
    Ok(read::<u16>(sk, off.sk_protocol)? == IPPROTO_TCP)
}

fn on_connect_start(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    let off = OFFSETS.load();
    if !is_tcp(sk, &off)? {
        return Ok(());
    }
    let start = ConnectStart {
        // SAFETY: a helper without preconditions, valid in this task context.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
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
    let start = match SOCKETS.get_ptr(sk) {
        // SAFETY: the pointer comes from a successful lookup and is read before the delete.
        Some(p) => Some(unsafe { *p }),
        None => None,
    };
    if start.is_some() {
        let _removed = SOCKETS.remove(sk); // only fails if another CPU removed it first
    } else {
        count_loss(ctx, loss::START_NOT_SEEN);
    }
    let outcome = match outcome {
        Some(o) => o,
        // SYN_SENT -> CLOSE: the kernel has already set sk_err (tcp_reset, tcp_write_err,
        // tcp_v4_err) when it closes a failed handshake; 0 means the application closed it.
        None => Outcome::of_failed_connect(read::<i32>(sk, off.sk_err)?),
    };
    let mut key = flow_key(sk, &off)?;
    key.direction = DIRECTION_CONNECT;
    key.server_port = u16::from_be(read::<u16>(sk, off.skc_dport)?);
    let (cgroup_id, pid_tgid, comm) = match start {
        Some(s) => (s.cgroup_id, s.pid_tgid, s.comm),
        None => (0, 0, [0; 16]),
    };
    key.cgroup_id = cgroup_id;
    count(ctx, &key, outcome, pid_tgid, comm);
    Ok(())
}

fn on_accept(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    let off = OFFSETS.load();
    if !is_tcp(sk, &off)? {
        return Ok(());
    }
    let mut key = flow_key(sk, &off)?;
    key.direction = DIRECTION_ACCEPT;
    key.server_port = read::<u16>(sk, off.skc_num)?; // host byte order
    count(ctx, &key, Outcome::Established, 0, [0; 16]);
    Ok(())
}

/// The socket's network namespace and addresses; v4-mapped IPv6 addresses become IPv4.
#[inline(always)]
fn flow_key(sk: u64, off: &SockOffsets) -> Result<FlowKey, i32> {
    let net: u64 = read(sk, off.skc_net)?;
    let mut key = FlowKey {
        cgroup_id: 0,
        netns: read::<u32>(net, off.net_ns_inum)?,
        server_port: 0,
        family: FAMILY_V4,
        direction: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    let family: u16 = read(sk, off.skc_family)?;
    if family == AF_INET {
        key.local_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.skc_rcv_saddr)?);
        key.remote_addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, off.skc_daddr)?);
    } else if family == AF_INET6 {
        let local: [u8; 16] = read(sk, off.skc_v6_rcv_saddr)?;
        let remote: [u8; 16] = read(sk, off.skc_v6_daddr)?;
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

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Adds one connection with `outcome` to the flow `key`, creating the flow if needed.
#[inline(always)]
fn count(
    ctx: &RawTracePointContext,
    key: &FlowKey,
    outcome: Outcome,
    pid_tgid: u64,
    comm: [u8; 16],
) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if add_to_existing(key, outcome, now) {
        return;
    }
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
