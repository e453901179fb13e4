# syntax=docker/dockerfile:1
# The observer agent image:  docker build -t REGISTRY/observer:TAG . && docker push REGISTRY/observer:TAG
# (docs/deploy.md). Not built in this project's CI: its machines have no container engine.
# The manifest tests in tests/ check deploy/ without the image.

# ---- builder: the agent, with its kernel program built from source and embedded -------------
FROM rust:1.95-bookworm AS builder

# LLVM 22 from bookworm-security (in the image's apt sources): bpf-linker links against the
# LLVM of the nightly toolchain that compiles the kernel crate, which is LLVM 22.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev \
 && rm -rf /var/lib/apt/lists/*

# The kernel crate is built with -Z build-std=core: nightly plus its rust-src. aya-build calls
# `cargo +nightly`, so the toolchain is the `nightly` channel. Its LLVM major must be the one
# bpf-linker is built for; fail here, by name, when nightly moves on (then build bpf-linker with
# the matching --features llvm-NN and llvm-NN-dev).
RUN set -eu; \
    rustup toolchain install nightly --profile minimal --component rust-src; \
    if ! rustc +nightly -vV | grep -q '^LLVM version: 22\.'; then \
      echo "nightly is not on LLVM 22: $(rustc +nightly -vV | grep LLVM)" >&2; exit 1; \
    fi

RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version '^0.13' --locked \
      --no-default-features --features llvm-22

WORKDIR /src
COPY . .
# observer/build.rs builds observer-ebpf for bpfel-unknown-none and embeds it. Without
# bpf-linker it would write an empty object and still succeed: the check after the build makes
# sure the image never ships an agent without its kernel program.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    if [ -n "${OBSERVER_SKIP_EBPF:-}" ]; then echo "OBSERVER_SKIP_EBPF is set" >&2; exit 1; fi; \
    cargo build --release --locked -p observer; \
    obj=$(ls -t target/release/build/observer-*/out/observer | head -n1); \
    if [ ! -s "$obj" ]; then echo "the kernel program was not built ($obj is empty)" >&2; exit 1; fi; \
    install -D -m 0755 target/release/observer /out/observer

# ---- runtime: the binary and glibc, nothing else (no shell, no package manager) --------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/observer /usr/local/bin/observer
# The image's user is nonroot (65532), so that running it by accident gets no privilege. The
# DaemonSet sets runAsUser: 0: Kubernetes grants added capabilities (BPF, PERFMON, SYS_PTRACE)
# through the bounding/permitted sets, which only uid 0 keeps effective across exec (there are
# no ambient capabilities in a pod spec and this binary carries no file capabilities).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/observer"]
CMD ["run", "--help"]
