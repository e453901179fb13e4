//! Builds the kernel program (`observer-ebpf`) from source for bpfel-unknown-none and leaves it in
//! OUT_DIR, where `src/capture/loader.rs` embeds it.
//!
//! Without bpf-linker (a plain `cargo check`/`clippy` on a machine that was never bootstrapped)
//! it writes an empty object instead and says so; the agent then refuses to start with a message
//! naming the fix. `OBSERVER_SKIP_EBPF=1` forces the empty object.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=OBSERVER_SKIP_EBPF");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("observer-ebpf");
    let skip = env::var_os("OBSERVER_SKIP_EBPF").is_some_and(|v| v == "1");
    let linker = which::which("bpf-linker").ok();
    if skip || linker.is_none() {
        println!(
            "cargo:warning=building observer WITHOUT its kernel program ({}); run scripts/bootstrap.sh to install bpf-linker",
            if skip {
                "OBSERVER_SKIP_EBPF=1"
            } else {
                "bpf-linker not found"
            }
        );
        fs::write(&out, [])?;
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
    }
    let manifest = env::var("CARGO_MANIFEST_DIR")?;
    let root = PathBuf::from(manifest).join("../observer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
