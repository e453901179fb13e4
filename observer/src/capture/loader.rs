//! Pre-flight checks, loading and attaching the kernel program.

use std::{fs, path::Path};

use aya::{Ebpf, EbpfLoader, programs::RawTracePoint};
use observer_common::{
    DNS_OFFSETS_GLOBAL, DnsOffsets, OFFSETS_GLOBAL, SOCK_CAST_PLACEHOLDER, SockOffsets, names,
};

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
    #[error("loading the kernel program's maps failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// The verifier refused one of observer's programs: never the user's doing.
    #[error(
        "the kernel ({kernel}) refused observer's {program} program: {verifier}; this is a bug in observer, please report it"
    )]
    Refused {
        kernel: String,
        program: &'static str,
        /// The verifier's last lines, on one line.
        verifier: String,
    },
    /// A kernel feature the agent needs, detected as missing before loading.
    #[error("the kernel ({kernel}) has no {feature}; observer needs it ({since})")]
    MissingFeature {
        kernel: String,
        feature: &'static str,
        since: &'static str,
    },
    /// Before Linux 5.11, maps count against RLIMIT_MEMLOCK.
    #[error(
        "the kernel ({kernel}) charges BPF maps to the locked-memory limit (before Linux 5.11), which is {limit} bytes here and could not be raised: grant CAP_SYS_RESOURCE or run with an unlimited memlock limit (ulimit -l unlimited)"
    )]
    MemlockLimit { kernel: String, limit: u64 },
    /// Loading or attaching failed without a verifier verdict.
    #[error("attaching observer's {program} program failed: {reason}")]
    Attach {
        program: &'static str,
        /// The error and its causes on one line.
        reason: String,
    },
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
    #[error("the kernel object is not a readable ELF file ({0}); rebuild the agent")]
    Object(&'static str),
}

/// The running kernel's release (`uname -r`), for messages.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown release".into(), |r| r.trim().to_owned())
}

/// How many of the verifier's last lines a refusal quotes: the verdict and the statistics
/// after it (e.g. "combined stack size of 2 calls is 672. Too large", "stack depth 312+344").
const VERIFIER_LINES: usize = 4;

/// The last [`VERIFIER_LINES`] non-empty lines of a verifier log, joined by " | ".
pub fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(VERIFIER_LINES);
    lines[from..].join(" | ")
}

/// What a failed `load()` or `attach()` of `program` means: a refusal when the verifier said
/// why, else the error and its causes. Never a guess at a missing feature: those are detected
/// before loading ([`check_kernel_features`]).
pub fn program_error(program: &'static str, error: &aya::programs::ProgramError) -> CaptureError {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = error {
        let verifier = verifier_tail(&verifier_log.to_string());
        if !verifier.is_empty() {
            return CaptureError::Refused {
                kernel: kernel_release(),
                program,
                verifier,
            };
        }
    }
    CaptureError::Attach {
        program,
        reason: with_causes(error),
    }
}

/// An error and its causes on one line (aya's message alone omits the errno).
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// Detects the kernel features the flow program needs, so that a missing one is named as
/// such: the raw tracepoint (its BTF typedef) and ring buffer maps (a probe).
pub fn check_kernel_features(btf: &Btf) -> Result<(), CaptureError> {
    let missing = |feature, since| CaptureError::MissingFeature {
        kernel: kernel_release(),
        feature,
        since,
    };
    if !btf.has_raw_tracepoint(names::TRACEPOINT) {
        return Err(missing(
            "raw tracepoint sock/inet_sock_set_state",
            "Linux 4.16+",
        ));
    }
    if !aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(true) {
        return Err(missing("BPF ring buffer maps", "Linux 5.8+"));
    }
    Ok(())
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

/// The kfunc that types a bare pointer for plain loads (Linux 6.2+).
const RDONLY_CAST: &str = "bpf_rdonly_cast";

/// Finds the offsets of every field the kernel program reads in the running kernel's BTF, and
/// whether the program can read them with plain loads (`sock_btf_id`, see [`SockOffsets`]).
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
        // A plain pointer since Linux 5.15, a tagged word before.
        sk_cgroup: sk(&["sk_cgrp_data", "cgroup"]).or_else(|_| sk(&["sk_cgrp_data", "val"]))?,
        net_ns_inum: btf.offset_of("net", &["ns", "inum"])?,
        cgroup_kn: btf.offset_of("cgroup", &["kn"])?,
        kernfs_node_id: btf.offset_of("kernfs_node", &["id"])?,
        sock_btf_id: match btf.func_id(RDONLY_CAST) {
            Some(_) => btf.struct_id("sock").unwrap_or(0),
            None => 0,
        },
        sk_cgroup_tagged: u32::from(sk(&["sk_cgrp_data", "cgroup"]).is_err()),
    })
}

/// The offsets the DNS programs read.
pub fn dns_offsets(btf: &Btf) -> Result<DnsOffsets, BtfError> {
    Ok(DnsOffsets {
        skc_net: btf.offset_of("sock", &["__sk_common", "skc_net", "net"])?,
        net_ns_inum: btf.offset_of("net", &["ns", "inum"])?,
    })
}

/// Rewrites every placeholder call (`SOCK_CAST_PLACEHOLDER`) in the executable sections of the
/// ELF object `obj`: into a call of the kfunc with BTF id `kfunc` (`BPF_PSEUDO_KFUNC_CALL`), or
/// with `None` into `r0 = r1`. Returns how many it rewrote. Instructions are 8 bytes, 8-aligned
/// within their section, little-endian (every architecture the agent is built for).
pub fn patch_sock_cast(obj: &mut [u8], kfunc: Option<u32>) -> Result<usize, CaptureError> {
    const SHT_PROGBITS: u32 = 1;
    const SHF_EXECINSTR: u64 = 4;
    let bad = || CaptureError::Object("truncated or not ELF64 little-endian");
    let u16_at = |b: &[u8], at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    if obj.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return Err(bad());
    }
    let shoff = u64_at(obj, 0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(obj, 0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(obj, 0x3c).ok_or_else(bad)? as usize;
    let mut placeholder = [0x85, 0, 0, 0, 0, 0, 0, 0]; // BPF_JMP | BPF_CALL, helper call
    placeholder[4..].copy_from_slice(&SOCK_CAST_PLACEHOLDER.to_le_bytes());
    let replacement: [u8; 8] = match kfunc {
        Some(id) => {
            let mut insn = [0x85, 0x20, 0, 0, 0, 0, 0, 0]; // src_reg = BPF_PSEUDO_KFUNC_CALL
            insn[4..].copy_from_slice(&id.to_le_bytes());
            insn
        }
        None => [0xbf, 0x10, 0, 0, 0, 0, 0, 0], // BPF_ALU64 | BPF_MOV | BPF_X: r0 = r1
    };
    let mut patched = 0;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let kind = u32_at(obj, sh + 4).ok_or_else(bad)?;
        let flags = u64_at(obj, sh + 8).ok_or_else(bad)?;
        let start = u64_at(obj, sh + 0x18).ok_or_else(bad)? as usize;
        let size = u64_at(obj, sh + 0x20).ok_or_else(bad)? as usize;
        if kind != SHT_PROGBITS || flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let end = start.checked_add(size).ok_or_else(bad)?;
        let code = obj.get_mut(start..end).ok_or_else(bad)?;
        for insn in code.chunks_exact_mut(8) {
            if insn == placeholder {
                insn.copy_from_slice(&replacement);
                patched += 1;
            }
        }
    }
    Ok(patched)
}

/// The BPF memory allocator's struct (Linux 6.1+), with which tracing programs may create map
/// elements at run time.
const BPF_MEM_ALLOC: &str = "bpf_mem_alloc";

/// `BPF_F_NO_PREALLOC` (uapi `linux/bpf.h`).
const NO_PREALLOC: u32 = 1;

/// Clears `BPF_F_NO_PREALLOC` in the definition of map `name` (aya's `bpf_map_def` in the
/// object's `maps` section: type, key size, value size, max entries, flags, ...).
pub fn preallocate(obj: &mut [u8], name: &'static str) -> Result<(), CaptureError> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    const FLAGS_AT: u64 = 16;
    let bad = || CaptureError::Object("its maps section does not hold the map definitions");
    let at = {
        let file = object::File::parse(&*obj).map_err(|_| bad())?;
        let sym = file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .ok_or(CaptureError::Missing(name))?;
        let section = file
            .section_by_index(sym.section_index().ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let (start, size) = section.file_range().ok_or_else(bad)?;
        let within = sym.address() - section.address() + FLAGS_AT;
        if within + 4 > size {
            return Err(bad());
        }
        (start + within) as usize
    };
    let field = obj.get_mut(at..at + 4).ok_or_else(bad)?;
    let flags = u32::from_le_bytes(field.try_into().map_err(|_| bad())?);
    field.copy_from_slice(&(flags & !NO_PREALLOC).to_le_bytes());
    Ok(())
}

/// Before Linux 5.11 the kernel charges BPF maps to the RLIMIT_MEMLOCK of the user creating
/// them (from 5.11, to the memory cgroup, and the limit no longer matters): there the agent
/// lifts the limit, which needs CAP_SYS_RESOURCE unless the runtime already raised it.
fn raise_memlock_limit(btf: &Btf) -> Result<(), CaptureError> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given and changes only this process's limit.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } == 0;
    // The function that charged a map to the limit, gone since 5.11 (a kernel's BTF lists its
    // functions, so its absence is detected, not guessed from a version number).
    let charged_to_memlock = btf.func_id("bpf_map_charge_init").is_some();
    if raised || !charged_to_memlock {
        return Ok(());
    }
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut current) };
    if current.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    Err(CaptureError::MemlockLimit {
        kernel: kernel_release(),
        limit: current.rlim_cur,
    })
}

/// Map sizes; the defaults suit a busy node, tests shrink them to provoke overflows.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub flows: u32,
    /// The ring of flow events ([`observer_common::FlowEvent`]), in bytes (a power of two, at
    /// least a page).
    pub ring_bytes: u32,
    /// The ring of captured DNS responses, in bytes (a power of two, at least a page).
    pub dns_ring_bytes: u32,
    /// UDP DNS query flows.
    pub dns_queries: u32,
}

/// The kernel object patched for this kernel, and the globals and map sizes to load it with:
/// everything a load needs, whether it attaches ([`load_and_attach`]) or only asks the
/// verifier ([`super::verify`]).
pub struct Prepared {
    /// The patched object at offset `at` of `buffer`, which keeps it 8-byte aligned (the ELF
    /// parser wants that, as include_bytes_aligned! keeps the original).
    buffer: Vec<u8>,
    at: usize,
    offsets: SockOffsets,
    dns: DnsOffsets,
    sizes: MapSizes,
}

impl Prepared {
    pub fn object(&self) -> &[u8] {
        &self.buffer[self.at..self.at + KERNEL_OBJECT.len()]
    }

    /// A loader that writes this kernel's offsets into the object's globals (frozen, so the
    /// verifier sees them as constants) and sizes its maps.
    pub fn loader(&self) -> EbpfLoader<'_> {
        let mut loader = EbpfLoader::new();
        loader
            .override_global(OFFSETS_GLOBAL, &self.offsets, true)
            .override_global(DNS_OFFSETS_GLOBAL, &self.dns, true)
            .map_max_entries(names::DNS_RESPONSES, self.sizes.dns_ring_bytes)
            .map_max_entries(names::DNS_QUERIES, self.sizes.dns_queries)
            .map_max_entries(names::FLOWS, self.sizes.flows)
            .map_max_entries(names::FLOW_EVENTS, self.sizes.ring_bytes);
        loader
    }
}

/// Checks what the kernel program needs (capabilities, BTF, kernel features), finds this
/// kernel's offsets and patches the object for it.
pub fn prepare(sizes: MapSizes) -> Result<Prepared, CaptureError> {
    if KERNEL_OBJECT.is_empty() {
        return Err(CaptureError::NoKernelObject);
    }
    check_capabilities()?;
    let btf_data = fs::read(Path::new(KERNEL_BTF)).map_err(CaptureError::NoBtf)?;
    let btf = Btf::parse(&btf_data)?;
    check_kernel_features(&btf)?;
    let offsets = sock_offsets(&btf)?;
    let dns = dns_offsets(&btf)?;
    tracing::debug!(?offsets, ?dns, "socket field offsets from kernel BTF");
    let kfunc = btf
        .func_id(RDONLY_CAST)
        .filter(|_| offsets.sock_btf_id != 0);
    if kfunc.is_none() {
        tracing::info!(
            "the kernel has no {RDONLY_CAST} (Linux 6.2+): reading sockets through bpf_probe_read_kernel, which costs more per connection"
        );
    }
    let mut buffer = vec![0u8; KERNEL_OBJECT.len() + 8];
    let at = buffer.as_ptr().align_offset(8);
    let object = &mut buffer[at..at + KERNEL_OBJECT.len()];
    object.copy_from_slice(KERNEL_OBJECT);
    if patch_sock_cast(object, kfunc)? == 0 {
        return Err(CaptureError::Missing("socket cast placeholder"));
    }
    if btf.struct_id(BPF_MEM_ALLOC).is_none() {
        // Before Linux 6.1 a map element allocated at run time from a tracing program is
        // unsafe (the kernel says so with a WARNING, which panics a panic_on_warn node): the
        // flow map is preallocated there, its whole capacity held from the start.
        preallocate(object, names::FLOWS)?;
        tracing::info!(
            entries = sizes.flows,
            "the kernel has no BPF memory allocator (Linux 6.1+): the flow map is preallocated"
        );
    }
    raise_memlock_limit(&btf)?;
    Ok(Prepared {
        buffer,
        at,
        offsets,
        dns,
        sizes,
    })
}

/// Loads the kernel program with this kernel's offsets and attaches it to
/// `sock/inet_sock_set_state` (a raw tracepoint: no tracefs needed).
pub fn load_and_attach(sizes: MapSizes) -> Result<Ebpf, CaptureError> {
    let prepared = prepare(sizes)?;
    let mut ebpf = prepared
        .loader()
        .load(prepared.object())
        .map_err(CaptureError::Load)?;
    let program: &mut RawTracePoint = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(CaptureError::Missing("program inet_sock_set_state"))?
        .try_into()
        .map_err(|e| program_error(names::PROGRAM, &e))?;
    program
        .load()
        .map_err(|e| program_error(names::PROGRAM, &e))?;
    program
        .attach(names::TRACEPOINT)
        .map_err(|e| program_error(names::PROGRAM, &e))?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header and two sections: code (executable) and data, each holding one
    /// placeholder call; plus a placeholder that straddles two instructions.
    fn object() -> Vec<u8> {
        let mut call = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
        call[4..].copy_from_slice(&SOCK_CAST_PLACEHOLDER.to_le_bytes());
        let mut o = vec![0u8; 64];
        o[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let code_at = o.len();
        o.extend_from_slice(&[0xb7, 0x01, 0, 0, 1, 0, 0, 0]); // r1 = 1
        o.extend_from_slice(&call);
        o.extend_from_slice(&[0; 4]);
        o.extend_from_slice(&call); // misaligned: not an instruction
        o.extend_from_slice(&[0; 4]);
        let data_at = o.len();
        o.extend_from_slice(&call);
        let shoff = o.len();
        o[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        o[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        o[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        o.extend_from_slice(&[0; 64]); // the null section
        for (flags, at, size) in [(6u64, code_at, 32u64), (3, data_at, 8)] {
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&1u32.to_le_bytes()); // SHT_PROGBITS
            sh[8..16].copy_from_slice(&flags.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            o.extend_from_slice(&sh);
        }
        o
    }

    #[test]
    fn rewrites_only_placeholder_instructions_in_code() {
        let original = object();
        let mut o = original.clone();
        assert_eq!(patch_sock_cast(&mut o, Some(65504)).unwrap(), 1);
        assert_eq!(&o[72..80], &[0x85, 0x20, 0, 0, 0xe0, 0xff, 0, 0]);
        let changed = o.iter().zip(&original).filter(|(a, b)| a != b).count();
        assert_eq!(
            changed, 5,
            "only the one call's register and immediate bytes"
        );
        let mut o = original.clone();
        assert_eq!(patch_sock_cast(&mut o, None).unwrap(), 1);
        assert_eq!(&o[72..80], &[0xbf, 0x10, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_what_is_not_an_elf_object() {
        assert!(patch_sock_cast(&mut [0; 10], None).is_err());
        let mut o = object();
        o.truncate(o.len() - 40);
        assert!(patch_sock_cast(&mut o, None).is_err());
    }

    /// The refusal main's program met on kernels without a private stack, as aya reports it.
    const REFUSAL: &str = "func#0 @0\nfunc#1 @1137\n...\ncombined stack size of 2 calls is 672. Too large\nverification time 1481 usec\nstack depth 312+344+0+24\nprocessed 1054 insns (limit 1000000) max_states_per_insn 1 total_states 79 peak_states 79 mark_read 17\n\n";

    #[test]
    fn a_refusal_quotes_the_verifiers_last_lines_and_says_it_is_observers_bug() {
        assert_eq!(
            verifier_tail(REFUSAL),
            "combined stack size of 2 calls is 672. Too large | verification time 1481 usec | stack depth 312+344+0+24 | processed 1054 insns (limit 1000000) max_states_per_insn 1 total_states 79 peak_states 79 mark_read 17"
        );
        let e = CaptureError::Refused {
            kernel: "6.1.0-57-amd64".into(),
            program: "inet_sock_set_state",
            verifier: verifier_tail(REFUSAL),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("the kernel (6.1.0-57-amd64) refused observer's inet_sock_set_state program: combined stack size of 2 calls is 672. Too large | "),
            "{msg}"
        );
        assert!(
            msg.ends_with("; this is a bug in observer, please report it"),
            "{msg}"
        );
        assert!(!msg.contains("needs"), "no guessed feature: {msg}");
        assert_eq!(verifier_tail("\n\n"), "");
    }

    /// The object's call chains, as build.rs measured and held them to the budget.
    #[test]
    fn the_kernel_objects_call_chains_fit_the_budget() {
        if KERNEL_OBJECT.is_empty() {
            eprintln!("!!! SKIPPED: built without the kernel program (no bpf-linker) !!!");
            return;
        }
        let chains = bpf_stack::Object::parse(KERNEL_OBJECT)
            .unwrap()
            .chains()
            .unwrap();
        let names: Vec<&str> = chains.iter().map(|c| c.program.as_str()).collect();
        assert_eq!(
            names,
            [
                names::DNS_EGRESS_PROGRAM,
                names::DNS_INGRESS_PROGRAM,
                names::PROGRAM
            ]
        );
        for c in &chains {
            assert!(c.total() <= 384, "{c}");
        }
    }

    /// The flags word of each map definition in the object's `maps` section, by name.
    fn map_flags(obj: &[u8]) -> std::collections::BTreeMap<String, u32> {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
        let file = object::File::parse(obj).unwrap();
        let maps = file.section_by_name("maps").unwrap();
        let data = maps.data().unwrap();
        file.symbols()
            .filter(|s| s.section_index() == Some(maps.index()))
            .map(|s| {
                let at = (s.address() - maps.address()) as usize + 16;
                let flags = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                (s.name().unwrap().to_owned(), flags)
            })
            .collect()
    }

    #[test]
    fn preallocating_clears_no_prealloc_of_that_map_only() {
        if KERNEL_OBJECT.is_empty() {
            eprintln!("!!! SKIPPED: built without the kernel program (no bpf-linker) !!!");
            return;
        }
        let before = map_flags(KERNEL_OBJECT);
        assert_eq!(before[names::FLOWS], NO_PREALLOC, "{before:?}");
        assert_eq!(before[names::DNS_QUERIES], NO_PREALLOC, "{before:?}");
        let mut o = KERNEL_OBJECT.to_vec();
        preallocate(&mut o, names::FLOWS).unwrap();
        let mut after = map_flags(&o);
        assert_eq!(after.remove(names::FLOWS), Some(0));
        let mut expected = before.clone();
        expected.remove(names::FLOWS);
        assert_eq!(after, expected, "every other map as it was");
        assert!(matches!(
            preallocate(&mut o, "NO_SUCH_MAP"),
            Err(CaptureError::Missing("NO_SUCH_MAP"))
        ));
    }

    #[test]
    fn the_kernel_object_has_placeholders() {
        if KERNEL_OBJECT.is_empty() {
            eprintln!("!!! SKIPPED: built without the kernel program (no bpf-linker) !!!");
            return;
        }
        let mut o = KERNEL_OBJECT.to_vec();
        assert!(patch_sock_cast(&mut o, Some(1)).unwrap() > 0);
    }
}
