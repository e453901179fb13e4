#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: a key or value passed by value, not \
              by reference, is copied to the 512-byte BPF stack the build holds to a budget"
)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use observer_common::{
    DIRECTION_ACCEPT, DIRECTION_CONNECT, FAMILY_V4, FAMILY_V6, FlowCounters, FlowEvent, FlowKey,
    Outcome, SOCK_CAST_PLACEHOLDER, SockOffsets, loss, tcp_state,
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
/// the agent deletes idle entries. Its size is set by the agent at load time. The agent creates
/// the entries (from [`FLOW_EVENTS`]); this program only adds to them, and creates one itself
/// only when the ring is full.
#[map]
static FLOWS: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

/// What happens to flows [`FLOWS`] does not hold: connect starts (with their task) and
/// connections ([`FlowEvent`]). A ring record costs a fraction of a map insert (which allocates
/// under a bucket lock); the agent drains the ring on its own timer, without being woken.
#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Per-CPU loss counters, indexed by `observer_common::loss`.
#[map]
pub(crate) static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::COUNT, 0);

/// Zeroed counters: the value the program inserts when it must create a flow itself (the
/// ring is full), from read-only data rather than an 80-byte value built on the stack; the
/// counts are then added in place like any other.
static NEW_FLOW: FlowCounters = FlowCounters {
    first_seen_ns: 0,
    last_seen_ns: 0,
    outcomes: [0; Outcome::COUNT],
    pid_tgid: 0,
    comm: [0; 16],
};

/// One field of [`OFFSETS`], read where it lies (a frozen read-only map value the verifier
/// sees as constant) instead of copying the whole struct to the stack first.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: `Global` is `#[repr(transparent)]` over an initialised `SockOffsets` (the
        // loader writes it before loading); the read stays inside it.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!(
                (*(core::ptr::addr_of!(OFFSETS).cast::<SockOffsets>())).$field
            ))
        }
    };
}

// Which functions are BPF subprograms is decided here, on purpose: every function is
// `#[inline(always)]` except `log_loss`, the rare diagnostic kept out of line so that its code
// stays off the hot path. Its frame stacks on the entry's, and `observer/build.rs` holds the
// sum to the budget (`bpf-stack`).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya-ebpf's program macros call this with the context by value"
)]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    // The filter for the 7 transitions in 10 that matter to nobody: two integer comparisons,
    // no helper call, no memory read.
    let sk: u64 = match (u64::from(old as u32), u64::from(new as u32)) {
        (tcp_state::CLOSE, tcp_state::SYN_SENT)
        | (tcp_state::SYN_SENT, tcp_state::ESTABLISHED | tcp_state::CLOSE)
        | (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => ctx.arg(0),
        _ => return 0,
    };
    let sk = cast_sock(sk, offset!(sock_btf_id));
    // One call site per handler, so that each is inlined whole.
    let result = match u64::from(old as u32) {
        tcp_state::CLOSE => on_connect_start(&ctx, sk),
        tcp_state::SYN_SENT => {
            on_connect_end(&ctx, sk, u64::from(new as u32) == tcp_state::ESTABLISHED)
        }
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
fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    let at = (base + u64::from(offset)) as *const T;
    if offset!(sock_btf_id) != 0 {
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
fn is_tcp(sk: u64) -> Result<bool, i32> {
    // inet_sock_set_state also fires for other protocols built on inet sockets (SCTP, ...).
    Ok(read::<u16>(sk, offset!(sk_protocol))? == IPPROTO_TCP)
}

/// The flow key of an active open. Complete at CLOSE -> SYN_SENT already: the source address
/// is chosen before that change, and the source port, the only part not yet set, is not in it.
#[inline(always)]
fn connect_key(sk: u64) -> Result<FlowKey, i32> {
    let mut key = flow_key(sk)?;
    key.direction = DIRECTION_CONNECT;
    key.server_port = u16::from_be(read::<u16>(sk, offset!(skc_dport))?);
    key.cgroup_id = socket_cgroup_id(sk)?;
    Ok(key)
}

/// The socket's cgroup2 id, `sk->sk_cgrp_data.cgroup->kn->id` (what `bpf_skb_cgroup_id` and
/// `bpf_get_current_cgroup_id` report): set when the socket is created, from the creating task.
#[inline(always)]
fn socket_cgroup_id(sk: u64) -> Result<u64, i32> {
    /// The cgroup2 root's id (kernfs numbers its root node 1).
    const ROOT_CGROUP_ID: u64 = 1;
    let cgroup: u64 = read(sk, offset!(sk_cgroup))?;
    if offset!(sk_cgroup_tagged) != 0 && cgroup & 1 != 0 {
        return Ok(ROOT_CGROUP_ID);
    }
    if cgroup == 0 {
        return Ok(0);
    }
    let kn: u64 = read(cgroup, offset!(cgroup_kn))?;
    read(kn, offset!(kernfs_node_id))
}

#[inline(always)]
fn on_connect_start(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    if !is_tcp(sk)? {
        return Ok(());
    }
    // Most connects add to a flow that exists: nothing to carry to the handshake's end then.
    let key = connect_key(sk)?;
    if FLOWS.get_ptr(&key).is_some() {
        return Ok(());
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = current_comm();
    if emit(&key, now, FlowEvent::START, pid_tgid, comm) {
        return Ok(());
    }
    // The ring is full: keep the task in the flow's entry instead, with no connection yet
    // (the handshake's end adds it). Should that fail too, the end counts the connection
    // without its task.
    count_loss(ctx, loss::RING_FULL);
    if FLOWS
        .insert(&key, &NEW_FLOW, u64::from(BPF_NOEXIST))
        .is_ok()
        && let Some(value) = FLOWS.get_ptr_mut(&key)
    {
        // SAFETY: a live element (the program runs under RCU) that this run created; the
        // fields are whole words at 8-byte offsets.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).first_seen_ns), now);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).last_seen_ns), now);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).pid_tgid), pid_tgid);
            copy_words(
                core::ptr::addr_of_mut!((*value).comm).cast(),
                comm.as_ptr(),
                2,
            );
        }
    }
    Ok(())
}

#[inline(always)]
fn on_connect_end(ctx: &RawTracePointContext, sk: u64, established: bool) -> Result<(), i32> {
    if !is_tcp(sk)? {
        return Ok(());
    }
    let outcome = if established {
        Outcome::Established
    } else {
        // SYN_SENT -> CLOSE: the kernel has already set sk_err (tcp_reset, tcp_write_err,
        // tcp_v4_err) when it closes a failed handshake; 0 means the application closed it.
        Outcome::of_failed_connect(read::<i32>(sk, offset!(sk_err))?)
    };
    let key = connect_key(sk)?;
    count(ctx, &key, outcome);
    Ok(())
}

#[inline(always)]
fn on_accept(ctx: &RawTracePointContext, sk: u64) -> Result<(), i32> {
    if !is_tcp(sk)? {
        return Ok(());
    }
    let mut key = flow_key(sk)?;
    key.direction = DIRECTION_ACCEPT;
    key.server_port = read::<u16>(sk, offset!(skc_num))?; // host byte order
    count(ctx, &key, Outcome::Established);
    Ok(())
}

/// The socket's network namespace and addresses; v4-mapped IPv6 addresses become IPv4.
#[inline(always)]
fn flow_key(sk: u64) -> Result<FlowKey, i32> {
    let net: u64 = read(sk, offset!(skc_net))?;
    let mut key = FlowKey {
        cgroup_id: 0,
        netns: read::<u32>(net, offset!(net_ns_inum))?,
        server_port: 0,
        family: FAMILY_V4,
        direction: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    let family: u16 = read(sk, offset!(skc_family))?;
    if family == AF_INET {
        // Whole words: the verifier checks a load's size against the field it reads.
        let local: u32 = read(sk, offset!(skc_rcv_saddr))?;
        let remote: u32 = read(sk, offset!(skc_daddr))?;
        key.local_addr[..4].copy_from_slice(&local.to_ne_bytes());
        key.remote_addr[..4].copy_from_slice(&remote.to_ne_bytes());
    } else if family == AF_INET6 {
        let local = read_in6(sk, offset!(skc_v6_rcv_saddr))?;
        let remote = read_in6(sk, offset!(skc_v6_daddr))?;
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
fn read_in6(sk: u64, offset: u32) -> Result<[u8; 16], i32> {
    let high: u64 = read(sk, offset)?;
    let low: u64 = read(sk, offset + 8)?;
    let mut a = [0; 16];
    a[..8].copy_from_slice(&high.to_ne_bytes());
    a[8..].copy_from_slice(&low.to_ne_bytes());
    Ok(a)
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// Adds one connection with `outcome` to the flow `key`: to its entry, or, when the map does not
/// hold it, as a ring record for the agent (which creates the entry); when the ring is full, the
/// program creates the entry itself.
#[inline(always)]
fn count(ctx: &RawTracePointContext, key: &FlowKey, outcome: Outcome) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if add_to_existing(key, outcome, now) || emit(key, now, outcome as u32, 0, [0; 2]) {
        return;
    }
    count_loss(ctx, loss::RING_FULL);
    if key.direction == DIRECTION_CONNECT {
        // The start, if it was seen, is in the ring: the agent no longer joins it to this flow.
        count_loss(ctx, loss::START_NOT_SEEN);
    }
    // EEXIST: another CPU (or the agent) created the flow between our lookup and insert; the
    // connection is then added to that entry.
    let created = match FLOWS.insert(key, &NEW_FLOW, u64::from(BPF_NOEXIST)) {
        Ok(()) => true,
        Err(EEXIST) => false,
        Err(_) => {
            count_loss(ctx, loss::FLOW_MAP_FULL);
            return;
        }
    };
    if !add_to_existing(key, outcome, now) {
        // Deleted again (idle deletion) between the insert and here.
        count_loss(ctx, loss::FLOW_MAP_FULL);
        return;
    }
    if created && let Some(value) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a live element this run created; a plain store of a whole word.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).first_seen_ns), now) };
    }
}

#[inline(always)]
fn add_to_existing(key: &FlowKey, outcome: Outcome, now: u64) -> bool {
    let Some(value) = FLOWS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: `value` points into a live map element (the program runs under RCU). Counters are
    // only ever changed with atomic adds, here and on other CPUs.
    unsafe {
        let counter = core::ptr::addr_of_mut!((*value).outcomes[outcome as usize]);
        // The BPF target offers no `AtomicU64::fetch_add`; the intrinsic lowers to BPF_ATOMIC_ADD.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1);
        // A plain store: the latest of concurrent writers wins, which is all "last seen" means.
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*value).last_seen_ns), now);
    }
    true
}

/// Writes a [`FlowEvent`] to the ring without waking the agent: the agent drains the ring on
/// its own timer, so its wake-ups never follow the event rate. False when the ring is full.
///
/// Field by field, in whole words: a struct write compiles to calls of the BPF target's
/// `memmove` and `memset`, which move one byte per loop turn (some 600 instructions for an
/// event, most of a new flow's cost).
#[inline(always)]
fn emit(key: &FlowKey, now: u64, kind: u32, pid_tgid: u64, comm: [u64; 2]) -> bool {
    const _: () = assert!(size_of::<FlowKey>().is_multiple_of(8) && align_of::<FlowKey>() == 8);
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        return false;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved record of a FlowEvent's size, 8-byte aligned (the ring
    // aligns every record to 8), and every field is written before it is submitted.
    unsafe {
        copy_words(
            core::ptr::addr_of_mut!((*e).key).cast(),
            core::ptr::from_ref(key).cast(),
            size_of::<FlowKey>() / 8,
        );
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).time_ns), now);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).pid_tgid), pid_tgid);
        copy_words(core::ptr::addr_of_mut!((*e).comm).cast(), comm.as_ptr(), 2);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).kind), kind);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*e)._pad), 0);
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    true
}

/// Copies `words` 8-byte words from `src` to `dst`. Volatile, so that the compiler does not
/// turn the loop back into a byte-wise `memmove` call.
///
/// # Safety
/// `src` and `dst` are valid and 8-byte aligned for `words` words.
#[inline(always)]
unsafe fn copy_words(dst: *mut u64, src: *const u64, words: usize) {
    for i in 0..words {
        // SAFETY: in bounds and aligned, by the caller's promise.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
}

/// The current task's name, in words (see [`emit`]); zeros when there is no task to name.
/// The buffer is not cleared first (that too would be a byte-wise `memset`): the helper fills
/// all 16 bytes either way, the name padded with zeros, or zeros when it fails.
#[inline(always)]
fn current_comm() -> [u64; 2] {
    let mut comm = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper writes exactly the 16 bytes it is given (its argument may be
    // uninitialised memory, which the verifier allows), so they are initialised after it.
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), 16);
        comm.assume_init()
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
        log_loss(ctx, index, n);
    }
}

/// The one subprogram of the flow program, on purpose: aya-log's record building is some 500
/// instructions that the hot path never runs, and its frame (24 bytes) stacks on the entry's.
#[inline(never)]
fn log_loss(ctx: &RawTracePointContext, index: u32, n: u64) {
    warn!(
        ctx,
        "observer: loss counter {} reached {} on this CPU", index, n
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects a program that can reach this loop, so no panic survives loading.
    loop {}
}
