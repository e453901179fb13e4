//! A BPF program that does nothing, attached to the agent's hook: what the hook's dispatch and
//! the BPF statistics' own clock reads add to every run. Measured on the same runs as the
//! agent's program (both are attached to `inet_sock_set_state` at once), so the agent
//! program's own run time is its statistics' figure less this one's. Loaded straight through
//! the `bpf()` system call: two instructions need no object file, loader or build step.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};

/// `enum bpf_cmd` and `enum bpf_prog_type` (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `enum bpf_stats_type`.
const BPF_STATS_RUN_TIME: u32 = 0;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `r0 = 0; exit`: `BPF_ALU64 | BPF_MOV | BPF_K` with immediate 0, then `BPF_JMP | BPF_EXIT`
/// (registers, offset and immediate all zero in both).
const RETURN_ZERO: [u64; 2] = [0xb7, 0x95];

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel takes the rest as zero.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN`.
#[repr(C)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_ENABLE_STATS`.
#[repr(C)]
struct EnableStats {
    stats_type: u32,
}

/// The kernel's BPF run-time statistics, on while this lives. Through `BPF_ENABLE_STATS`, not
/// the `kernel.bpf_stats_enabled` sysctl: the kernel counts the holders of such fds, so another
/// run on the same machine (the sysctl is machine-wide) can neither turn the statistics off
/// under this one nor be left with them on by it.
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<RunTimeStats> {
        let attr = EnableStats {
            stats_type: BPF_STATS_RUN_TIME,
        };
        Ok(RunTimeStats {
            _fd: bpf(BPF_ENABLE_STATS, &attr).context("enabling BPF run-time statistics")?,
        })
    }
}

/// The no-op program, attached while this lives (closing both fds detaches and unloads it).
pub struct NoopProbe {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl NoopProbe {
    /// Loads the no-op program and attaches it to the raw tracepoint `tracepoint`.
    pub fn attach(tracepoint: &str) -> Result<NoopProbe> {
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..10].copy_from_slice(b"bench_noop");
        let load = ProgLoad {
            prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
            insn_cnt: RETURN_ZERO.len() as u32,
            insns: RETURN_ZERO.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
        };
        let prog = bpf(BPF_PROG_LOAD, &load).context("loading the no-op BPF program")?;
        let tracepoint = std::ffi::CString::new(tracepoint)?;
        let open = RawTracepointOpen {
            name: tracepoint.as_ptr() as u64,
            prog_fd: prog.as_raw_fd() as u32,
            _pad: 0,
        };
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &open)
            .with_context(|| format!("attaching the no-op BPF program to {tracepoint:?}"))?;
        Ok(NoopProbe { prog, _link: link })
    }

    /// The program's statistics so far: (run time in ns, runs), from its fd's fdinfo.
    pub fn stats(&self) -> Result<(u64, u64)> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd()))
            .context("the no-op program's fdinfo")?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .with_context(|| format!("no {name} in the no-op program's fdinfo"))
        };
        Ok((field("run_time_ns:")?, field("run_cnt:")?))
    }
}

/// The `bpf()` system call with `attr`, returning the new fd.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, valid for its
    // size; every pointer in it refers to memory alive until the call returns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loading BPF needs root (`cargo xtask test` runs as root): fails loudly otherwise, as the
    /// end-to-end tests do.
    #[test]
    fn the_noop_program_counts_runs_on_its_hook() {
        assert!(
            crate::is_root(),
            "loading BPF needs root: run the tests as root (cargo xtask test does)"
        );
        let _stats = RunTimeStats::enable().unwrap();
        let probe = NoopProbe::attach("inet_sock_set_state").unwrap();
        let before = probe.stats().unwrap();
        // A refused loopback connect: CLOSE -> SYN_SENT, SYN_SENT -> CLOSE, at least.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let _ = std::net::TcpStream::connect(addr);
        let after = probe.stats().unwrap();
        assert!(after.1 >= before.1 + 2, "{before:?} -> {after:?}");
    }
}
