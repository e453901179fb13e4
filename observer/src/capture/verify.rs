//! `observer kernel-check`: loads each of observer's programs on this kernel as the agent would
//! and reports what the verifier said of it (its stack depth per function, the instructions it
//! processed), without attaching anything. A node's kernel can be checked before a rollout, and
//! the tests compare the verifier's stack depths with what the build measured (`bpf-stack`).
//!
//! aya keeps the verifier's log only when a load fails, so the programs are loaded here through
//! `BPF_PROG_LOAD` directly: aya creates the maps (globals written and frozen, as the agent's
//! load does), aya-obj links the instructions against them, and each program is loaded with the
//! verifier's statistics requested, then closed.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::Map;
use aya_obj::{
    ProgramSection,
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type},
    programs::CgroupSkbAttachType,
};

use super::loader::{self, CaptureError, MapSizes};

/// What the verifier said of one program.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub program: String,
    /// Whether the kernel accepted it.
    pub loaded: bool,
    /// The verifier's "stack depth" line: each function's frame in bytes, the entry first.
    pub stack_depth: Vec<u32>,
    /// Instructions the verifier processed (its "processed N insns").
    pub insns_processed: Option<u64>,
    /// The same frames as the build measured them from the object (`bpf-stack`): the entry's,
    /// then each function it reaches, in the object's order. The verifier counts only the
    /// paths this kernel's constants leave, so each of its frames is at most the measured one.
    pub measured_depth: Vec<u32>,
    /// The program's deepest call chain as the build measured it, in bytes, and its budget.
    pub measured_chain: u32,
    /// The verifier's last lines (its error, when refused).
    pub verifier: String,
}

/// Loads every program of the kernel object with this kernel's offsets, and returns the
/// verifier's verdict on each, in the object's order.
pub fn verify(sizes: MapSizes) -> Result<Vec<Verdict>, CaptureError> {
    let prepared = loader::prepare(sizes)?;
    let ebpf = prepared
        .loader()
        .load(prepared.object())
        .map_err(CaptureError::Load)?;
    let mut obj = aya_obj::Object::parse(prepared.object())
        .map_err(|_| CaptureError::Object("aya-obj cannot parse it"))?;
    let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut fds = Vec::with_capacity(maps.len());
    for (name, _) in &maps {
        let map = ebpf
            .maps()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .ok_or(CaptureError::Object("a map aya did not create"))?;
        fds.push(map_fd(map).ok_or(CaptureError::Object("a map of an unexpected type"))?);
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        maps.iter()
            .zip(&fds)
            .map(|((name, map), fd)| (name.as_str(), *fd, map)),
        &text_sections,
    )
    .map_err(|_| CaptureError::Object("its map relocations do not resolve"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|_| CaptureError::Object("its calls do not resolve"))?;
    let measured = bpf_stack::Object::parse(prepared.object())
        .map_err(|_| CaptureError::Object("bpf-stack cannot measure it"))?;
    let chains = measured
        .chains()
        .map_err(|_| CaptureError::Object("it has a recursive call"))?;
    let mut programs: Vec<(&String, &aya_obj::Program)> = obj.programs.iter().collect();
    programs.sort_by_key(|(name, _)| name.as_str());
    let mut out = Vec::new();
    for (name, program) in programs {
        let function = &obj.functions[&program.function_key()];
        let (kind, attach) = match &program.section {
            ProgramSection::RawTracePoint => (bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT, None),
            ProgramSection::CgroupSkb { attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_CGROUP_SKB,
                Some(match attach_type {
                    Some(CgroupSkbAttachType::Egress) => bpf_attach_type::BPF_CGROUP_INET_EGRESS,
                    _ => bpf_attach_type::BPF_CGROUP_INET_INGRESS,
                }),
            ),
            _ => return Err(CaptureError::Object("a program of an unexpected type")),
        };
        let mut verdict =
            load_with_stats(name, kind, attach, &function.instructions, &program.license);
        verdict.measured_depth = measured_depths(&measured, name);
        verdict.measured_chain = chains
            .iter()
            .find(|c| c.program == *name)
            .map_or(0, bpf_stack::Chain::total);
        out.push(verdict);
    }
    Ok(out)
}

/// The measured frame of program `name`'s entry, then of each function it reaches, those
/// sorted by depth.
fn measured_depths(object: &bpf_stack::Object, name: &str) -> Vec<u32> {
    let Some(entry) = object.functions.iter().find(|f| f.entry && f.name == name) else {
        return Vec::new();
    };
    let mut depths: Vec<u32> = object
        .reachable(name)
        .iter()
        .map(|&i| object.functions[i].depth)
        .collect();
    depths.sort_unstable();
    std::iter::once(entry.depth).chain(depths).collect()
}

/// The fd of a map aya created, for the map types observer's object has.
fn map_fd(map: &Map) -> Option<RawFd> {
    let (Map::Array(data)
    | Map::HashMap(data)
    | Map::LruHashMap(data)
    | Map::PerCpuArray(data)
    | Map::PerCpuHashMap(data)
    | Map::PerfEventArray(data)
    | Map::RingBuf(data)) = map
    else {
        return None;
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `BPF_LOG_STATS`: the verifier's statistics (and its error, if any), not its trace.
const LOG_STATS: u32 = 4;
/// Room for the statistics and an error's last lines.
const LOG_BYTES: usize = 1 << 20;

fn load_with_stats(
    name: &str,
    kind: bpf_prog_type,
    attach: Option<bpf_attach_type>,
    insns: &[aya_obj::generated::bpf_insn],
    license: &std::ffi::CStr,
) -> Verdict {
    let mut log = vec![0u8; LOG_BYTES];
    // SAFETY: bpf_attr is a plain C union of integers, for which all zeros is valid (and what
    // the kernel expects of every field not set).
    let mut attr = unsafe { std::mem::zeroed::<bpf_attr>() };
    // SAFETY: the BPF_PROG_LOAD member of the union, the one this command reads.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = kind as u32;
    if let Some(a) = attach {
        u.expected_attach_type = a as u32;
    }
    u.insns = insns.as_ptr() as u64;
    u.insn_cnt = insns.len() as u32;
    u.license = license.as_ptr() as u64;
    u.log_level = LOG_STATS;
    u.log_buf = log.as_mut_ptr() as u64;
    u.log_size = log.len() as u32;
    // SAFETY: every pointer in `attr` (instructions, license, log buffer) is valid for the
    // length given and outlives the call; the kernel writes only into the log buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_LOAD as libc::c_long,
            &raw const attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel returned a new fd that nothing else owns; dropping closes it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    Verdict {
        program: name.to_owned(),
        loaded: fd >= 0,
        stack_depth: stack_depth(&text),
        insns_processed: insns_processed(&text),
        verifier: loader::verifier_tail(&text),
        measured_depth: Vec::new(),
        measured_chain: 0,
    }
}

/// Each function's stack depth from the verifier's statistics, the entry first: one line
/// "stack depth 224+24" up to Linux 7.x, where it became "stack depth max 224" and a line per
/// function ("subprog 1 (log_loss) static insns_self ... stack 24").
fn stack_depth(log: &str) -> Vec<u32> {
    let mut per_subprog: Vec<(u32, u32)> = Vec::new();
    for line in log.lines().map(str::trim) {
        if let Some(d) = line.strip_prefix("stack depth ")
            && !d.starts_with("max")
        {
            return d.split('+').filter_map(|n| n.trim().parse().ok()).collect();
        }
        if let Some(rest) = line.strip_prefix("subprog ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let index = words.first().and_then(|n| n.parse().ok());
            let depth = words
                .windows(2)
                .find(|w| w[0] == "stack")
                .and_then(|w| w[1].parse().ok());
            if let (Some(i), Some(d)) = (index, depth) {
                per_subprog.push((i, d));
            }
        }
    }
    per_subprog.sort_unstable();
    per_subprog.into_iter().map(|(_, d)| d).collect()
}

/// The verifier's "processed 1054 insns (limit ...)".
fn insns_processed(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("processed "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verifiers_statistics() {
        let log = "verification time 1481 usec\nstack depth 312+344+0+24\nprocessed 1054 insns (limit 1000000) max_states_per_insn 1 total_states 79 peak_states 79 mark_read 17\n";
        assert_eq!(stack_depth(log), vec![312, 344, 0, 24]);
        assert_eq!(insns_processed(log), Some(1054));
        assert_eq!(stack_depth("stack depth 8\n"), vec![8]);
        // Linux 7.3's form, as it printed it for the DNS query program
        let log = "stack depth max 160\nsubprog 0 (<unknown>) main insns_self 433 insns_total 1333 stack 160\nsubprog 1 (<unknown>) static insns_self 900 insns_total 900 stack 0\nprocessed 1333 insns (limit 1000000) max_states_per_insn 4 total_states 52 peak_states 50 mark_read 0\n";
        assert_eq!(stack_depth(log), vec![160, 0]);
        assert_eq!(insns_processed(log), Some(1333));
        assert_eq!(stack_depth("no statistics"), Vec::<u32>::new());
        assert_eq!(insns_processed(""), None);
    }
}
