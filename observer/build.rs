//! Builds the kernel program (`observer-ebpf`) from source for bpfel-unknown-none with the
//! toolchain pinned in `toolchain.env`, holds its stack to the budget, and leaves it in
//! OUT_DIR, where `src/capture/loader.rs` embeds it.
//!
//! Without bpf-linker (a plain `cargo check`/`clippy` on a machine that was never bootstrapped)
//! it writes an empty object instead and says so; the agent then refuses to start with a message
//! naming the fix. `OBSERVER_SKIP_EBPF=1` forces the empty object.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The combined stack any call chain of the kernel program may use, in bytes: the verifier's
/// 512 less a margin for what a compiler update may add. Kernels 6.13+ may give a tracing
/// program a private stack that lifts the verifier's limit, but nothing guarantees it and older
/// kernels never do, so the budget holds whatever the kernel.
const STACK_BUDGET: u32 = 384;

/// The BPF subprograms each program may call: which functions are kept out of line is decided
/// here, not left to the inliner. A function that the compiler keeps out of line on its own
/// fails the build, so that its frame's place in the budget is a choice.
const SUBPROGRAMS: [(&str, &[&str]); 3] = [
    // The loss log: aya-log's record building, some 500 instructions the hot path never runs.
    ("inet_sock_set_state", &["observer_ebpf::program::log_loss"]),
    // The compiler's memset, zeroing the addresses of a key and of a response's head before
    // they are filled (32 bytes: the BPF target does not inline it); its frame is empty.
    ("dns_queries", &["memset"]),
    ("dns_responses", &["memset"]),
];

/// The pins of `toolchain.env`.
struct Pins {
    nightly: String,
    nightly_commit: String,
    llvm_major: String,
    bpf_linker: String,
}

fn pins(root: &Path) -> anyhow::Result<Pins> {
    let path = root.join("toolchain.env");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let get = |key: &str| -> anyhow::Result<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("{} has no {key}=", path.display()))
    };
    Ok(Pins {
        nightly: get("EBPF_NIGHTLY")?,
        nightly_commit: get("EBPF_NIGHTLY_COMMIT")?,
        llvm_major: get("EBPF_LLVM_MAJOR")?,
        bpf_linker: get("BPF_LINKER_VERSION")?,
    })
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails, saying how to fix it, unless the pinned nightly and bpf-linker are the ones here.
fn check_toolchain(pins: &Pins, linker: &Path) -> anyhow::Result<()> {
    let fix =
        "run scripts/bootstrap.sh (cargo xtask bootstrap), which installs the pinned toolchain";
    let meta = output(Command::new("rustup").args(["run", &pins.nightly, "rustc", "-vV"]))
        .with_context(|| format!("the kernel program is built with {}: {fix}", pins.nightly))?;
    let field = |name: &str| {
        meta.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("", str::trim)
            .to_owned()
    };
    if field("commit-hash:") != pins.nightly_commit {
        bail!(
            "{} is rustc commit {}, not the pinned {} (toolchain.env): {fix}",
            pins.nightly,
            field("commit-hash:"),
            pins.nightly_commit
        );
    }
    let llvm = field("LLVM version:");
    if llvm.split('.').next() != Some(pins.llvm_major.as_str()) {
        bail!(
            "{} uses LLVM {llvm}, not LLVM {} as toolchain.env says",
            pins.nightly,
            pins.llvm_major
        );
    }
    let version = output(Command::new(linker).arg("--version"))?;
    if version.split_whitespace().nth(1) != Some(pins.bpf_linker.as_str()) {
        bail!(
            "{} is {}, not bpf-linker {} (toolchain.env): {fix}",
            linker.display(),
            version.trim(),
            pins.bpf_linker
        );
    }
    // bpf-linker links LLVM dynamically (Debian's libLLVM.so.NN.M) or statically; when it is
    // dynamic, its major must be the nightly's.
    if let Ok(libs) = output(Command::new("ldd").arg(linker))
        && let Some(lib) = libs
            .split_whitespace()
            .find(|w| w.starts_with("libLLVM.so.") || w.starts_with("libLLVM-"))
    {
        let major = lib
            .trim_start_matches("libLLVM.so.")
            .trim_start_matches("libLLVM-")
            .split(['.', '-'])
            .next()
            .unwrap_or("");
        if major != pins.llvm_major {
            bail!(
                "{} links {lib}, not LLVM {}: {fix}",
                linker.display(),
                pins.llvm_major
            );
        }
    }
    Ok(())
}

/// Holds every call chain of the object to [`STACK_BUDGET`], and writes the chains to
/// `stack.txt` beside it (the agent's tests read it).
fn check_stack(object: &Path) -> anyhow::Result<()> {
    let data = fs::read(object)?;
    let parsed = bpf_stack::Object::parse(&data)
        .with_context(|| format!("measuring the stack of {}", object.display()))?;
    let chains = parsed.chains()?;
    let report: String = chains.iter().map(|c| format!("{c}\n")).collect();
    fs::write(object.with_file_name("stack.txt"), &report)?;
    bpf_stack::check(&chains, STACK_BUDGET)?;
    for entry in parsed.functions.iter().filter(|f| f.entry) {
        let allowed = SUBPROGRAMS
            .iter()
            .find(|(program, _)| *program == entry.name)
            .map(|(_, subprograms)| *subprograms)
            .with_context(|| {
                format!(
                    "the kernel program {} is not in SUBPROGRAMS (observer/build.rs): add it with the functions it may call",
                    entry.name
                )
            })?;
        let mut called: Vec<&str> = parsed
            .reachable(&entry.name)
            .iter()
            .map(|&i| parsed.functions[i].name.as_str())
            .collect();
        called.sort_unstable();
        let mut expected = allowed.to_vec();
        expected.sort_unstable();
        if called != expected {
            bail!(
                "the kernel program {} calls the subprograms {called:?}, but SUBPROGRAMS (observer/build.rs) says {expected:?}: mark a function #[inline(always)] or #[inline(never)] on purpose, and list the out-of-line ones",
                entry.name
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_SKIP_EBPF");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("observer-ebpf");
    let skip = env::var_os("OBSERVER_SKIP_EBPF").is_some_and(|v| v == "1");
    let linker = which::which("bpf-linker").ok();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let Some(linker) = linker.filter(|_| !skip) else {
        println!(
            "cargo:warning=building observer WITHOUT its kernel program ({}), so its stack is not checked either; run scripts/bootstrap.sh to install bpf-linker",
            if skip {
                "OBSERVER_SKIP_EBPF=1"
            } else {
                "bpf-linker not found"
            }
        );
        fs::write(&out, [])?;
        fs::write(out.with_file_name("stack.txt"), "")?;
        // Build again once bpf-linker appears (a missing path counts as changed), so a build
        // made before the bootstrap does not keep its empty kernel object.
        if let Some(home) = env::var_os("HOME") {
            println!(
                "cargo:rerun-if-changed={}/.cargo/bin/bpf-linker",
                PathBuf::from(home).display()
            );
        }
        println!("cargo:rerun-if-changed=/usr/local/bin/bpf-linker");
        return Ok(());
    };
    let pins = pins(&manifest.join(".."))?;
    check_toolchain(&pins, &linker)?;
    let root = manifest.join("../observer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&pins.nightly),
    )?;
    check_stack(&out)
}
