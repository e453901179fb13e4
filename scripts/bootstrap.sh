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
#   - the kernel crate's nightly as toolchain.env pins it, with rust-src (-Z build-std=core) and
#     clippy (`cargo xtask test` lints the kernel crate for its own target with that nightly).
#   - bpf-linker as toolchain.env pins it, from crates.io, built against Debian's LLVM 22.
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

# The toolchain pins (the kernel program's nightly, bpf-linker): one file for every machine.
# shellcheck source=../toolchain.env
. "$(dirname "$0")/../toolchain.env"

# The kernel crate's nightly, by its pinned name. A machine whose plain `nightly` is that very
# build (same commit) gets it under the pinned name through a link in rustup's toolchain
# directory, as rustup names an installed dated nightly; any other machine downloads it.
commit_of() { rustup run "$1" rustc -vV 2>/dev/null | sed -n 's/^commit-hash: //p'; }
if [ "$(commit_of "$EBPF_NIGHTLY")" != "$EBPF_NIGHTLY_COMMIT" ]; then
  toolchains="${RUSTUP_HOME:-$HOME/.rustup}/toolchains"
  host=$(rustc -vV | sed -n 's/^host: //p')
  if [ "$(commit_of nightly)" = "$EBPF_NIGHTLY_COMMIT" ] && [ ! -e "$toolchains/$EBPF_NIGHTLY-$host" ]; then
    log "linking the installed nightly (commit $EBPF_NIGHTLY_COMMIT) as $EBPF_NIGHTLY"
    ln -s "$toolchains/nightly-$host" "$toolchains/$EBPF_NIGHTLY-$host"
  else
    log "installing $EBPF_NIGHTLY with rust-src and clippy (the kernel crate: -Z build-std=core, its lint)"
    rustup toolchain install "$EBPF_NIGHTLY" --profile minimal --component rust-src --component clippy >&2
  fi
  if [ "$(commit_of "$EBPF_NIGHTLY")" != "$EBPF_NIGHTLY_COMMIT" ]; then
    log "$EBPF_NIGHTLY is commit $(commit_of "$EBPF_NIGHTLY"), not $EBPF_NIGHTLY_COMMIT (toolchain.env)"; exit 2
  fi
fi
if ! rustup component list --toolchain "$EBPF_NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to $EBPF_NIGHTLY (kernel crate: -Z build-std=core)"
  rustup component add rust-src --toolchain "$EBPF_NIGHTLY" >&2
fi
if ! rustup component list --toolchain "$EBPF_NIGHTLY" --installed 2>/dev/null | grep -q '^clippy'; then
  log "adding clippy to $EBPF_NIGHTLY (cargo xtask test lints the kernel crate for bpfel-unknown-none)"
  rustup component add clippy --toolchain "$EBPF_NIGHTLY" >&2
fi

linker_version() { bpf-linker --version 2>/dev/null | awk '{print $2}'; }
if [ "$(PATH="$HOME/.cargo/bin:$PATH" linker_version)" != "$BPF_LINKER_VERSION" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against /usr/lib/llvm-$EBPF_LLVM_MAJOR (about a minute)"
  LLVM_PREFIX="/usr/lib/llvm-$EBPF_LLVM_MAJOR" cargo install bpf-linker --version "=$BPF_LINKER_VERSION" \
    --locked --force --no-default-features --features "llvm-$EBPF_LLVM_MAJOR" >&2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  log "building cargo-fuzz 0.13 (the DNS parser's fuzz target; a few minutes)"
  cargo install cargo-fuzz --version '^0.13' --locked >&2
fi
log "ready"
