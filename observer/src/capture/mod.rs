//! The kernel side as the agent sees it: the loaded program, its maps, and exact deltas.

pub mod btf;
pub mod dns;
pub mod flow_table;
pub mod loader;
pub mod preexisting;
pub mod tracker;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, RingBuf},
};
use observer_common::{FlowCounters, FlowKey, NewFlow, loss, names};

pub use dns::{DnsCapture, DnsCaptureOptions};
pub use loader::{CaptureError, MapSizes};

/// The attached kernel program and the agent's handles on its maps.
pub struct Capture {
    flows: BpfHashMap<MapData, FlowKey, FlowCounters>,
    ring: RingBuf<MapData>,
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
            ring: take(&mut ebpf, names::NEW_FLOWS)?,
            losses: take(&mut ebpf, names::LOSSES)?,
            dns,
            logger,
            _ebpf: ebpf,
        })
    }

    /// Takes every new-flow hint waiting in the ring (the kernel does not wake us per record;
    /// the agent drains on its own timer).
    pub fn drain_hints(&mut self, into: &mut Vec<FlowKey>) -> usize {
        let before = into.len();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<NewFlow>() {
                const LEN: usize = std::mem::size_of::<NewFlow>();
                let mut raw = [0u8; LEN];
                raw.copy_from_slice(&item[..LEN]);
                into.push(decode_new_flow(&raw).key);
            }
        }
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        into.len() - before
    }

    pub fn read(&self, key: &FlowKey) -> Option<FlowCounters> {
        self.flows.get(key, 0).ok()
    }

    /// Every flow in the kernel map. Entries are never deleted by the kernel, and the agent
    /// deletes only after a scan, so the iteration sees each entry once.
    pub fn scan(&self, mut visit: impl FnMut(FlowKey, FlowCounters)) -> usize {
        let mut n = 0;
        for (key, value) in self.flows.iter().flatten() {
            visit(key, value);
            n += 1;
        }
        n
    }

    /// Deletes a flow's entry and returns its value as of the delete ([`take_entry`]).
    pub fn take(&mut self, key: &FlowKey) -> Option<FlowCounters> {
        take_entry(&mut self.flows, key)
    }

    /// The kernel's loss counters, summed over CPUs, indexed by `observer_common::loss`.
    pub fn losses(&self) -> [u64; loss::COUNT as usize] {
        let mut out = [0; loss::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.losses.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
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
        // then a delete, with the window between them open.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
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
        key: key as *const FlowKey as u64,
        value: &mut value as *mut FlowCounters as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a key and a value of the map's own key and value types (the
    // map was created with their sizes), both alive for the call; the kernel writes only
    // `value`, whose every bit pattern is valid (integers only).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
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

fn decode_new_flow(raw: &[u8; std::mem::size_of::<NewFlow>()]) -> NewFlow {
    let u64_at = |o: usize| u64::from_ne_bytes(raw[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_ne_bytes(raw[o..o + 4].try_into().unwrap_or_default());
    let u16_at = |o: usize| u16::from_ne_bytes(raw[o..o + 2].try_into().unwrap_or_default());
    let mut local_addr = [0; 16];
    let mut remote_addr = [0; 16];
    local_addr.copy_from_slice(&raw[16..32]);
    remote_addr.copy_from_slice(&raw[32..48]);
    NewFlow {
        key: FlowKey {
            cgroup_id: u64_at(0),
            netns: u32_at(8),
            server_port: u16_at(12),
            family: raw[14],
            direction: raw[15],
            local_addr,
            remote_addr,
        },
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

    #[test]
    fn new_flow_records_decode_to_the_key_the_kernel_wrote() {
        let key = FlowKey {
            cgroup_id: 0x0102_0304_0506_0708,
            netns: 4026531840,
            server_port: 5672,
            family: 4,
            direction: 2,
            local_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            remote_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        };
        let mut raw = [0u8; std::mem::size_of::<NewFlow>()];
        raw[0..8].copy_from_slice(&key.cgroup_id.to_ne_bytes());
        raw[8..12].copy_from_slice(&key.netns.to_ne_bytes());
        raw[12..14].copy_from_slice(&key.server_port.to_ne_bytes());
        raw[14] = key.family;
        raw[15] = key.direction;
        raw[16..32].copy_from_slice(&key.local_addr);
        raw[32..48].copy_from_slice(&key.remote_addr);
        assert_eq!(decode_new_flow(&raw).key, key);
    }
}
