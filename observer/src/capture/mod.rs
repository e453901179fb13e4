//! The kernel side as the agent sees it: the loaded program, its maps, and exact deltas.

pub mod btf;
pub mod loader;
pub mod preexisting;
pub mod tracker;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
};
use observer_common::{FlowCounters, FlowKey, NewFlow, loss, names};

pub use loader::{CaptureError, MapSizes};

/// The attached kernel program and the agent's handles on its maps.
pub struct Capture {
    flows: BpfHashMap<MapData, FlowKey, FlowCounters>,
    ring: RingBuf<MapData>,
    losses: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
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
    pub fn start(sizes: MapSizes) -> Result<Capture, CaptureError> {
        let mut ebpf = loader::load_and_attach(sizes)?;
        // The kernel program's rare diagnostics (first overflow of a map, ...) go through
        // aya-log into `log`, which tracing-subscriber forwards into the agent's own output.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("kernel program diagnostics unavailable: {e}");
                None
            }
        };
        Ok(Capture {
            flows: take(&mut ebpf, names::FLOWS)?,
            ring: take(&mut ebpf, names::NEW_FLOWS)?,
            losses: take(&mut ebpf, names::LOSSES)?,
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

    pub fn delete(&mut self, key: &FlowKey) {
        let _ = self.flows.remove(key); // already gone is fine: nothing else deletes
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
