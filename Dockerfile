# syntax=docker/dockerfile:1
# The observer agent image:  docker build -t REGISTRY/observer:TAG . && docker push REGISTRY/observer:TAG
# (docs/deploy.md). Not built in this project's CI: its machines have no container engine.
# The manifest tests in tests/ check deploy/ without the image.

# ---- builder: the agent, with its kernel program built from source and embedded -------------
# The stable toolchain is rust-toolchain.toml's (1.95.0); the kernel program's nightly and
# bpf-linker are toolchain.env's: the same pins as every developer's and CI's machine.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
FROM ${RUST_IMAGE} AS builder

# LLVM 22 from bookworm-security (in the image's apt sources): bpf-linker links against the
# LLVM of the nightly toolchain that compiles the kernel crate, which is LLVM 22.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev \
 && rm -rf /var/lib/apt/lists/*

# The kernel crate is built with -Z build-std=core: the pinned nightly plus its rust-src, whose
# commit and LLVM major are checked here (and again by observer/build.rs); then bpf-linker at
# its pinned version against that LLVM.
COPY toolchain.env rust-toolchain.toml /pins/
RUN set -eu; . /pins/toolchain.env; \
    rustup toolchain install "$EBPF_NIGHTLY" --profile minimal --component rust-src; \
    meta=$(rustup run "$EBPF_NIGHTLY" rustc -vV); \
    echo "$meta" | grep -qx "commit-hash: $EBPF_NIGHTLY_COMMIT" \
      || { echo "$EBPF_NIGHTLY is not commit $EBPF_NIGHTLY_COMMIT: $meta" >&2; exit 1; }; \
    echo "$meta" | grep -q "^LLVM version: $EBPF_LLVM_MAJOR\." \
      || { echo "$EBPF_NIGHTLY is not on LLVM $EBPF_LLVM_MAJOR: $meta" >&2; exit 1; }; \
    LLVM_PREFIX="/usr/lib/llvm-$EBPF_LLVM_MAJOR" cargo install bpf-linker --version "=$BPF_LINKER_VERSION" \
      --locked --no-default-features --features "llvm-$EBPF_LLVM_MAJOR"

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
    obj=$(ls -t target/release/build/observer-*/out/observer-ebpf | head -n1); \
    if [ ! -s "$obj" ]; then echo "the kernel program was not built ($obj is empty)" >&2; exit 1; fi; \
    install -D -m 0755 target/release/observer /out/observer

# ---- runtime: the binary and glibc, nothing else (no shell, no package manager) --------------
FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/observer /usr/local/bin/observer
# The image's user is nonroot (65532), so that running it by accident gets no privilege. The
# DaemonSet sets runAsUser: 0: Kubernetes grants added capabilities (BPF, PERFMON, SYS_PTRACE)
# through the bounding/permitted sets, which only uid 0 keeps effective across exec (there are
# no ambient capabilities in a pod spec and this binary carries no file capabilities).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/observer"]
CMD ["run", "--help"]
