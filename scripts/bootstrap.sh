#!/usr/bin/env bash
# Installs what a fresh machine lacks to build and test observer, and says what it does.
# Idempotent: each step checks first and is skipped when already satisfied.
#   - Debian packages: llvm-22-dev (bpf-linker links against LLVM 22, the nightly's LLVM),
#     bpftool, iptables (tests drop SYNs / emulate kube-proxy DNAT), prometheus (promtool, alert tests,
#     the report's Prometheus source), chromium (headless: the HTML report test reads its DOM),
#     dnsmasq-base (the DNS tests' name server, run in a test namespace; no service is installed),
#     linux-perf (`perf record -a`: the bench's CPU profile of the storm, which the smoke test runs),
#     bpftrace and libbpf-tools (the peers the bench measures against, in the smoke test too:
#     a bpftrace script and libbpf-tools' CO-RE `tcplife`).
#   - the kernel matrix (`cargo xtask matrix`, the last step of `cargo xtask test`):
#     qemu-system-x86 (guests on Debian's kernels), busybox-static (their initramfs), kmod
#     (depmod: the kernel packages ship no modules.dep), xz-utils and zstd (modules are
#     decompressed for busybox's insmod). The kernels themselves are downloaded by the matrix
#     through an apt state of its own (target/kernel-matrix/apt), not installed.
#   - rust-src for the nightly toolchain (the kernel crate is built with -Z build-std=core).
#   - bpf-linker 0.13 from crates.io, built against Debian's LLVM 22.
#   - cargo-fuzz 0.13 from crates.io (the test command fuzzes the DNS answer path for 30 s).
set -euo pipefail
log() { echo "[bootstrap] $*" >&2; }

PKGS=(llvm-22-dev libpolly-22-dev bpftool iptables prometheus chromium dnsmasq-base linux-perf
      bpftrace libbpf-tools qemu-system-x86 busybox-static kmod xz-utils zstd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    log "missing Debian packages: ${missing[*]}; run as root (or install them) and retry"; exit 2
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # The prometheus package starts a server on :9090 through systemd when systemd runs; tests start their own.
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain (kernel crate: -Z build-std=core)"
  rustup component add rust-src --toolchain nightly >&2
fi

if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  log "building bpf-linker 0.13 against /usr/lib/llvm-22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version '^0.13' --locked \
    --no-default-features --features llvm-22 >&2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  log "building cargo-fuzz 0.13 (the DNS parser's fuzz target; a few minutes)"
  cargo install cargo-fuzz --version '^0.13' --locked >&2
fi
log "ready"
