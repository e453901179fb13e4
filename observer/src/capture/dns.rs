//! The DNS programs as the agent sees them: attached at the cgroup2 root (so every socket of the
//! machine, every pod's included, runs them), responses drained from their ring, UDP queries
//! read from their map like TCP flows.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use observer_common::{DnsResponseHead, FlowCounters, FlowKey, names};

use super::{CaptureError, loader, take};

/// Where and how to capture DNS.
#[derive(Clone, Debug)]
pub struct DnsCaptureOptions {
    /// The cgroup2 hierarchy's root directory (the host's, in a cluster).
    pub cgroup_root: PathBuf,
}

/// The attached DNS programs' maps.
pub struct DnsCapture {
    responses: RingBuf<MapData>,
    queries: BpfHashMap<MapData, FlowKey, FlowCounters>,
}

/// Loads both DNS programs and attaches them to `cgroup_root` as BPF links, which run beside any
/// program a CNI or the runtime attached there (and beside another observer's). The links live as long as
/// `ebpf`: dropping it detaches them.
pub fn attach(ebpf: &mut Ebpf, opts: &DnsCaptureOptions) -> Result<DnsCapture, CaptureError> {
    let cgroup = File::open(&opts.cgroup_root).map_err(|source| CaptureError::DnsCgroup {
        path: opts.cgroup_root.clone(),
        source,
    })?;
    for (name, kind) in [
        (names::DNS_INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
        (names::DNS_EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
    ] {
        let program: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(CaptureError::Missing(name))?
            .try_into()
            .map_err(|e| dns_attach_error(&opts.cgroup_root, &e))?;
        program
            .load()
            .map_err(|e| match loader::program_error(name, &e) {
                CaptureError::Attach { reason, .. } => CaptureError::DnsAttach {
                    path: opts.cgroup_root.clone(),
                    reason,
                },
                refused => refused,
            })?;
        program
            // aya attaches through a BPF link (Linux 5.7+), which the kernel always treats as
            // BPF_F_ALLOW_MULTI and which takes no flags: "Single" passes none.
            .attach(&cgroup, kind, CgroupAttachMode::Single)
            .map_err(|e| dns_attach_error(&opts.cgroup_root, &e))?;
    }
    Ok(DnsCapture {
        responses: take(ebpf, names::DNS_RESPONSES)?,
        queries: take(ebpf, names::DNS_QUERIES)?,
    })
}

fn dns_attach_error(root: &Path, error: &aya::programs::ProgramError) -> CaptureError {
    CaptureError::DnsAttach {
        path: root.to_path_buf(),
        reason: loader::with_causes(error),
    }
}

impl DnsCapture {
    /// Hands every captured response waiting in the ring to `visit` (head, payload), oldest
    /// first; returns how many. The kernel does not wake the agent per response.
    pub fn drain_responses(&mut self, mut visit: impl FnMut(&DnsResponseHead, &[u8])) -> usize {
        let mut n = 0;
        while let Some(item) = self.responses.next() {
            if let Some((head, payload)) = decode_response(&item) {
                visit(&head, payload);
                n += 1;
            }
        }
        n
    }

    /// Every UDP query flow in the kernel map.
    pub fn scan_queries(&self, mut visit: impl FnMut(FlowKey, FlowCounters)) -> usize {
        let mut n = 0;
        for (key, value) in self.queries.iter().flatten() {
            visit(key, value);
            n += 1;
        }
        n
    }

    /// Deletes a query flow's entry and returns its value as of the delete
    /// ([`super::take_entry`]).
    pub fn take_query(&mut self, key: &FlowKey) -> Option<FlowCounters> {
        super::take_entry(&mut self.queries, key)
    }
}

const HEAD_LEN: usize = std::mem::size_of::<DnsResponseHead>();

/// Splits a ring record into its head and the payload bytes it says follow; `None` for a record
/// shorter than its head says (the kernel never writes one).
pub fn decode_response(raw: &[u8]) -> Option<(DnsResponseHead, &[u8])> {
    let head = raw.get(..HEAD_LEN)?;
    let u64_at = |o: usize| u64::from_ne_bytes(head[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_ne_bytes(head[o..o + 4].try_into().unwrap_or_default());
    let u16_at = |o: usize| u16::from_ne_bytes(head[o..o + 2].try_into().unwrap_or_default());
    let addr = |o: usize| -> [u8; 16] { head[o..o + 16].try_into().unwrap_or_default() };
    let head = DnsResponseHead {
        cgroup_id: u64_at(0),
        netns: u32_at(8),
        captured_len: u16_at(12),
        wire_len: u16_at(14),
        family: head[16],
        transport: head[17],
        _pad: [0; 6],
        server_addr: addr(24),
        client_addr: addr(40),
    };
    let payload = raw.get(HEAD_LEN..HEAD_LEN + head.captured_len as usize)?;
    Some((head, payload))
}

#[cfg(test)]
mod tests {
    use observer_common::{FAMILY_V4, IPPROTO_UDP};

    use super::*;

    #[test]
    fn ring_records_decode_to_the_head_and_payload_the_kernel_wrote() {
        let mut raw = vec![0u8; HEAD_LEN];
        raw[0..8].copy_from_slice(&77u64.to_ne_bytes());
        raw[8..12].copy_from_slice(&4026532001u32.to_ne_bytes());
        raw[12..14].copy_from_slice(&3u16.to_ne_bytes());
        raw[14..16].copy_from_slice(&900u16.to_ne_bytes());
        raw[16] = FAMILY_V4;
        raw[17] = IPPROTO_UDP;
        raw[24..28].copy_from_slice(&[10, 0, 0, 53]);
        raw[40..44].copy_from_slice(&[10, 0, 0, 7]);
        raw.extend_from_slice(&[1, 2, 3, 4]); // one byte past captured_len: ring padding
        let (head, payload) = decode_response(&raw).expect("a whole record");
        assert_eq!(head.cgroup_id, 77);
        assert_eq!(head.netns, 4026532001);
        assert_eq!((head.captured_len, head.wire_len), (3, 900));
        assert_eq!((head.family, head.transport), (FAMILY_V4, IPPROTO_UDP));
        assert_eq!(head.server_addr[..4], [10, 0, 0, 53]);
        assert_eq!(head.client_addr[..4], [10, 0, 0, 7]);
        assert_eq!(payload, &[1, 2, 3]);
        // A record cut inside its head or its payload is refused, not read past.
        assert!(decode_response(&raw[..HEAD_LEN - 1]).is_none());
        assert!(decode_response(&raw[..HEAD_LEN + 2]).is_none());
    }
}
