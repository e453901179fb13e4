//! The kernel side as the agent sees it: the loaded program, its maps, and exact deltas.

pub mod btf;
pub mod dns;
pub mod events;
pub mod flow_table;
pub mod loader;
pub mod preexisting;
pub mod tracker;
pub mod verify;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, RingBuf},
};
use observer_common::{FlowCounters, FlowKey, loss, names};

use crate::fasthash::FastHash;

pub use dns::{DnsCapture, DnsCaptureOptions};
pub use loader::{CaptureError, MapSizes};

/// The attached kernel program and the agent's handles on its maps.
pub struct Capture {
    flows: BpfHashMap<MapData, FlowKey, FlowCounters>,
    ring: RingBuf<MapData>,
    events: events::Events,
    /// Connections the agent holds for flows whose kernel entry did not take them: drained
    /// after the entry was created (by the kernel, its ring full, or by an earlier drain that
    /// the event missed), or while the map was full. A flow's counters are its entry's plus
    /// these, until the flow is deleted.
    held: std::collections::HashMap<FlowKey, FlowCounters, FastHash>,
    /// Flows created by the agent without their connect's task ([`loss::START_NOT_SEEN`]).
    starts_not_seen: u64,
    /// Set once the map refused an entry for being full (logged once).
    map_was_full: bool,
    /// The flows counted in one drain, reused between drains.
    counted: Vec<(FlowKey, FlowCounters)>,
    losses: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The DNS programs' maps, when DNS capture is on.
    pub dns: Option<DnsCapture>,
    /// `/proc/self/fdinfo/<fd>` of the program: the kernel's own statistics for it.
    fdinfo: std::path::PathBuf,
    /// Keeps the program and its link alive; dropping it detaches.
    _ebpf: Ebpf,
}

fn take<T: TryFrom<aya::maps::Map>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, CaptureError> {
    ebpf.take_map(name)
        .and_then(|m| T::try_from(m).ok())
        .ok_or(CaptureError::Missing(name))
}

impl Capture {
    pub fn start(
        sizes: MapSizes,
        dns: Option<&DnsCaptureOptions>,
    ) -> Result<Capture, CaptureError> {
        loader::check_capabilities()?;
        if dns.is_some() {
            loader::check_dns_capability()?;
        }
        let mut ebpf = loader::load_and_attach(sizes)?;
        let dns = match dns {
            Some(opts) => Some(dns::attach(&mut ebpf, opts)?),
            None => None,
        };
        // The kernel program's rare diagnostics (first overflow of a map, ...) go through
        // aya-log into `log`, which tracing-subscriber forwards into the agent's own output.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("kernel program diagnostics unavailable: {e}");
                None
            }
        };
        let fd = ebpf
            .program(names::PROGRAM)
            .and_then(|p| p.fd().ok())
            .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(fd)))
            .ok_or(CaptureError::Missing("program inet_sock_set_state"))?;
        Ok(Capture {
            fdinfo: format!("/proc/self/fdinfo/{fd}").into(),
            flows: take(&mut ebpf, names::FLOWS)?,
            ring: take(&mut ebpf, names::FLOW_EVENTS)?,
            events: events::Events::default(),
            held: Default::default(),
            starts_not_seen: 0,
            map_was_full: false,
            counted: Vec::new(),
            losses: take(&mut ebpf, names::LOSSES)?,
            dns,
            logger,
            _ebpf: ebpf,
        })
    }

    /// Drains the ring of flow events (the kernel does not wake us per record; the agent
    /// drains on its own timer), creates the entries of the flows they counted, so that the
    /// kernel adds their next connections itself, and pushes each such flow's reading to
    /// `into`. `now_ns` (CLOCK_MONOTONIC) ages the starts still waiting for a count. Returns
    /// the number of entries created.
    pub fn drain(&mut self, now_ns: u64, into: &mut Vec<(FlowKey, FlowCounters)>) -> usize {
        while let Some(item) = self.ring.next() {
            if let Some(e) = events::decode(&item) {
                self.events.add(&e);
            }
        }
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        let mut counted = std::mem::take(&mut self.counted);
        self.events.take_counted(now_ns, &mut counted);
        let mut created = 0;
        for (key, value) in counted.drain(..) {
            if key.is_connect() && value.pid_tgid == 0 {
                self.starts_not_seen += 1;
            }
            if let Some(held) = self.held.get_mut(&key) {
                *held = events::combine(Some(*held), Some(&value)).unwrap_or(value);
            } else {
                match self.flows.insert(key, value, BPF_NOEXIST) {
                    Ok(()) => {
                        created += 1;
                        into.push((key, value));
                        continue;
                    }
                    Err(e) => {
                        // EEXIST: created meanwhile (by the kernel, its ring full); the count
                        // is held here beside the entry. A full map: the flow lives here.
                        if !is_exists(&e) && !self.map_was_full {
                            self.map_was_full = true;
                            tracing::warn!(
                                "the kernel flow map refused a new flow ({e}); flows it cannot hold are counted by the agent (raise --flow-map-size)"
                            );
                        }
                        self.held.insert(key, value);
                    }
                }
            }
            if let Some(reading) = self.read(&key) {
                into.push((key, reading));
            }
        }
        self.counted = counted;
        created
    }

    /// A flow's counters: its kernel entry's and what the agent holds for it.
    pub fn read(&self, key: &FlowKey) -> Option<FlowCounters> {
        events::combine(self.flows.get(key, 0).ok(), self.held.get(key))
    }

    /// Every flow in the kernel map. Entries are never deleted by the kernel, and the agent
    /// deletes only after a scan, so the iteration sees each entry once.
    /// Flows only the agent holds (the map was full) are not visited: every change to them
    /// comes through [`Capture::drain`].
    pub fn scan(&self, mut visit: impl FnMut(FlowKey, FlowCounters)) -> usize {
        let mut n = 0;
        for (key, value) in self.flows.iter().flatten() {
            let value = match self.held.is_empty() {
                true => value,
                false => events::combine(Some(value), self.held.get(&key)).unwrap_or(value),
            };
            visit(key, value);
            n += 1;
        }
        n
    }

    /// Deletes a flow's entry and returns its value as of the delete ([`take_entry`]).
    pub fn take(&mut self, key: &FlowKey) -> Option<FlowCounters> {
        let held = self.held.remove(key);
        events::combine(take_entry(&mut self.flows, key), held.as_ref())
    }

    /// The kernel's loss counters, summed over CPUs, indexed by `observer_common::loss`.
    pub fn losses(&self) -> [u64; loss::COUNT as usize] {
        let mut out = [0; loss::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.losses.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        out[loss::START_NOT_SEEN as usize] += self.starts_not_seen;
        out
    }
}

/// The kernel's statistics of the program, from its fd's `fdinfo` (Linux 5.12+ for
/// `recursion_misses`; run time and count only while `kernel.bpf_stats_enabled=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Runs the kernel skipped because the program was already running on that CPU (the
    /// tracepoint fired again from an interrupt). A skipped run that was one of the three
    /// counted transitions loses a count; no other mechanism can see it, so it is exported.
    pub recursion_misses: u64,
}

impl ProgramStats {
    pub fn parse(fdinfo: &str) -> ProgramStats {
        let field = |name: &str| {
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        ProgramStats {
            run_time_ns: field("run_time_ns"),
            run_count: field("run_cnt"),
            recursion_misses: field("recursion_misses"),
        }
    }
}

impl Capture {
    pub fn program_stats(&self) -> ProgramStats {
        ProgramStats::parse(&std::fs::read_to_string(&self.fdinfo).unwrap_or_default())
    }
}

/// `BPF_MAP_UPDATE_ELEM`'s flag: create only (uapi `linux/bpf.h`).
const BPF_NOEXIST: u64 = 1;

fn is_exists(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Deletes a flow's entry from a flow map and returns its value as of the delete. The kernel
/// may count a connection after the scan that found the flow idle; read and delete as one
/// step, that count is in the value returned instead of lost with the entry. `None`: already
/// gone. What stays open is the kernel program's own step from its lookup to its add, a few
/// instructions: an add landing there, while this runs on another CPU, goes to the deleted
/// entry.
fn take_entry(
    map: &mut BpfHashMap<MapData, FlowKey, FlowCounters>,
    key: &FlowKey,
) -> Option<FlowCounters> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = map.map().fd().as_fd().as_raw_fd();
    match lookup_and_delete(fd, key) {
        Ok(value) => value,
        // Hash maps take BPF_MAP_LOOKUP_AND_DELETE_ELEM since Linux 5.14; before that, a read
        // then a delete, with the window between them open. Older kernels refuse the command
        // for hash maps with the kernel-internal ENOTSUPP (5.10 does), or EINVAL.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
            ) =>
        {
            let value = map.get(key, 0).ok();
            let _ = map.remove(key);
            value
        }
        Err(e) => {
            tracing::warn!("deleting an idle flow failed: {e}");
            None
        }
    }
}

/// The kernel's own "operation not supported" (`include/linux/errno.h`), which bpf(2) passes to
/// user space as is: no libc names it.
const ENOTSUPP: i32 = 524;

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a flow map, which aya offers only for queues and stacks.
/// `Ok(None)`: no such entry.
fn lookup_and_delete(map_fd: i32, key: &FlowKey) -> std::io::Result<Option<FlowCounters>> {
    /// The `union bpf_attr` member of the map element commands (uapi `linux/bpf.h`).
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = FlowCounters::default();
    let attr = ElemAttr {
        map_fd: map_fd as u32,
        _pad: 0,
        key: std::ptr::from_ref::<FlowKey>(key) as u64,
        value: &raw mut value as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a key and a value of the map's own key and value types (the
    // map was created with their sizes), both alive for the call; the kernel writes only
    // `value`, whose every bit pattern is valid (integers only).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(value));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_stats_come_from_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nrun_time_ns:\t106563829\nrun_cnt:\t299984\nrecursion_misses:\t16\nverified_insns:\t1200\n";
        assert_eq!(
            ProgramStats::parse(text),
            ProgramStats {
                run_time_ns: 106_563_829,
                run_count: 299_984,
                recursion_misses: 16
            }
        );
        assert_eq!(ProgramStats::parse(""), ProgramStats::default());
    }
}
