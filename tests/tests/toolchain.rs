//! The toolchain pins hold everywhere they are used: rust-toolchain.toml (stable), toolchain.env
//! (the kernel program's nightly and bpf-linker), the Dockerfile's builder and the bootstrap.
//! Checked as text, since the image is built elsewhere; the build itself checks the pins on
//! this machine (observer/build.rs).

use std::path::Path;

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pin(key: &str) -> String {
    read("toolchain.env")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .unwrap_or_else(|| panic!("toolchain.env has no {key}="))
}

#[test]
fn the_pins_are_exact() {
    assert!(
        pin("EBPF_NIGHTLY").starts_with("nightly-20"),
        "a dated nightly, never a moving channel"
    );
    assert_eq!(pin("EBPF_NIGHTLY_COMMIT").len(), 40, "a full commit hash");
    assert_eq!(
        pin("BPF_LINKER_VERSION").split('.').count(),
        3,
        "an exact version"
    );
    let stable = read("rust-toolchain.toml");
    assert!(stable.contains("channel = \"1.95.0\""), "{stable}");
}

#[test]
fn the_dockerfile_builds_with_the_same_pins() {
    let docker = read("Dockerfile");
    assert!(
        docker.contains("ARG RUST_IMAGE=rust:1.95.0-bookworm"),
        "the stable pin"
    );
    assert!(docker.contains("COPY toolchain.env rust-toolchain.toml /pins/"));
    for used in [
        "rustup toolchain install \"$EBPF_NIGHTLY\"",
        "commit-hash: $EBPF_NIGHTLY_COMMIT",
        "--version \"=$BPF_LINKER_VERSION\"",
        "--features \"llvm-$EBPF_LLVM_MAJOR\"",
        "out/observer-ebpf",
    ] {
        assert!(docker.contains(used), "the Dockerfile lacks {used}");
    }
    let bootstrap = read("scripts/bootstrap.sh");
    for used in [
        "toolchain.env",
        "$EBPF_NIGHTLY_COMMIT",
        "=$BPF_LINKER_VERSION",
    ] {
        assert!(bootstrap.contains(used), "bootstrap.sh lacks {used}");
    }
}
