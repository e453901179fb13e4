//! Project tasks. `cargo xtask test` is the test command CI runs (`cargo xtask lint` its first
//! step); `cargo xtask demo` the demo; `cargo xtask bench` the benchmarks (BENCHMARKS.md);
//! `cargo xtask matrix` the capture tests on Debian's kernels in qemu guests (also the last step
//! of `cargo xtask test`).
//! Each task first runs `scripts/bootstrap.sh`, which installs what a fresh machine lacks and
//! says what it installs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

mod bench;
mod demo;
mod matrix;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "observer project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (Debian packages, the nightly with rust-src and clippy,
    /// bpf-linker).
    Bootstrap,
    /// Check formatting and clippy, for the host and for the kernel crate's BPF target (the
    /// first step of `test`).
    Lint,
    /// Build everything and run every test: unit tests, the privileged end-to-end tests, then
    /// the capture tests on Debian's kernels in qemu guests (the kernel matrix).
    Test {
        /// Extra arguments for the end-to-end test binary (e.g. a test name filter).
        filter: Vec<String>,
    },
    /// The demo: the Trackunit system as a cluster in a box, watched by the agent (as root).
    Demo {
        /// How long to keep watching after the scripted flows (0 for none).
        #[arg(long, default_value_t = 20)]
        linger_seconds: u64,
        /// Where the flow log, inventory, summary and audit report go.
        #[arg(long, default_value = "target/demo")]
        out: PathBuf,
        /// Where the agent serves /metrics during the demo.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_addr: String,
        /// Use the binaries already in target/debug (the test suite builds them first).
        #[arg(long)]
        no_build: bool,
    },
    /// Benchmarks: cost per connection against a baseline and the tools users would pick
    /// instead, kernel program run time, pipeline throughput, memory, exactness, latency.
    Bench(bench::BenchArgs),
    /// The privileged capture tests in qemu guests on Debian's own kernels (5.10, 6.1, 6.12,
    /// 6.18, 7.3), one after another; the kernels are downloaded once into target/kernel-matrix.
    Matrix(matrix::MatrixArgs),
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("[xtask] {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// A pin from `toolchain.env` (the kernel program's nightly and bpf-linker).
fn pinned(key: &str) -> Result<String> {
    let path = root().join("toolchain.env");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path:?}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{path:?} has no {key}="))
}

fn bootstrap() -> Result<()> {
    run(&mut Command::new(root().join("scripts/bootstrap.sh")))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// The lint gate, before anything is built or run: formatting, clippy for the host, and clippy
/// for the kernel crate on its own target (its code is behind `cfg(target_arch = "bpf")`, so the
/// host's clippy never sees it). `-D warnings` makes the workspace lints of Cargo.toml binding.
fn lint() -> Result<()> {
    // The kernel crate's lint needs the pinned nightly and its clippy.
    bootstrap()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).args(["fmt", "--all", "--", "--check"]))
        .context("lint: the code is not formatted as rustfmt formats it; run `cargo fmt --all`")?;
    run(Command::new(&cargo).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context(
        "lint: clippy reported the warnings above; fix them (or #[expect] one with a reason)",
    )?;
    // As observer/build.rs builds it (aya-build): the pinned nightly, core built from source,
    // and the cfg aya-ebpf reads the host's architecture from (for the tracepoint arguments).
    let nightly = pinned("EBPF_NIGHTLY")?;
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let mut bpf = Command::new("rustup");
    bpf.args([
        "run",
        &nightly,
        "cargo",
        "clippy",
        "--package",
        "observer-ebpf",
        "--release",
    ])
    .args([
        "--target",
        target,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ])
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
    )
    // The workspace's cargo sets these for its own toolchain (aya-build removes them too).
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(&mut bpf).with_context(|| {
        format!("lint: clippy reported the warnings above in the kernel crate, built for {target}")
    })
}

fn test(filter: &[String]) -> Result<()> {
    lint()?;
    if !is_root() {
        bail!(
            "the end-to-end tests load BPF programs and create network namespaces: run `cargo xtask test` as root"
        );
    }
    bootstrap()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Builds the kernel object from source (observer/build.rs) and the test peers.
    run(Command::new(&cargo).args(["build", "--workspace", "--all-targets"]))?;
    run(Command::new(&cargo).args(["test", "--workspace", "--exclude", "observer-tests"]))?;
    // The DNS answer path (parse, record, look up) under libFuzzer for 30 s from the seeds;
    // the unit tests' property tests cover it too, without a sanitizer.
    if filter.is_empty() {
        std::fs::create_dir_all(root().join("fuzz/corpus/dns"))?;
        let nightly = format!("+{}", pinned("EBPF_NIGHTLY")?);
        run(Command::new("cargo").current_dir(root()).args([
            &nightly,
            "fuzz",
            "run",
            "dns",
            // New inputs go to the first directory (ignored by git); the seeds stay as committed.
            "fuzz/corpus/dns",
            "fuzz/seeds/dns",
            "--",
            "-max_total_time=30",
        ]))?;
    }
    let bin = root().join("target/debug/observer");
    // The end-to-end tests share the kernel (they count connections machine-wide per namespace
    // and fill maps on purpose), so they run one at a time.
    let mut e2e = Command::new(&cargo);
    e2e.args(["test", "-p", "observer-tests", "--", "--test-threads=1"])
        .args(filter)
        .env("OBSERVER_BIN", bin);
    let host = run(&mut e2e);
    if !filter.is_empty() {
        return host;
    }
    // The capture tests again, on Debian's kernels (the host's kernel is one custom build);
    // also after a failure on the host, which they may tell apart from a kernel's.
    match (host, matrix::run(&root(), &matrix::MatrixArgs::all())) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(host), Err(kernels)) => bail!("{host:#}\n{kernels:#}"),
    }
}

fn matrix(args: &matrix::MatrixArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "the kernel matrix shares this machine's root with its guests: run `cargo xtask matrix` as root"
        );
    }
    bootstrap()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The agent with its kernel program and the tests' peer; the test executables are built by
    // the matrix's own `cargo test --no-run`.
    run(Command::new(&cargo).args(["build", "-p", "observer", "-p", "observer-tests", "--bins"]))?;
    matrix::run(&root(), args)
}

fn demo(linger_seconds: u64, out: PathBuf, metrics_addr: String, no_build: bool) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo creates network namespaces and loads a BPF program: run `cargo xtask demo` as root"
        );
    }
    if !no_build {
        bootstrap()?;
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(&cargo).args([
            "build",
            "-p",
            "observer",
            "-p",
            "observer-tests",
            "--bins",
        ]))?;
    }
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let out = if out.is_absolute() {
        out
    } else {
        root().join(out)
    };
    let opts = demo::DemoOptions {
        linger: std::time::Duration::from_secs(linger_seconds),
        out_dir: out,
        metrics_addr,
    };
    if demo::run(&root(), &opts, &interrupted)? {
        Ok(())
    } else {
        bail!("the demo's verdicts did not match what it drove (see the summary above)")
    }
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bootstrap => bootstrap(),
        Task::Lint => lint(),
        Task::Test { filter } => test(&filter),
        Task::Demo {
            linger_seconds,
            out,
            metrics_addr,
            no_build,
        } => demo(linger_seconds, out, metrics_addr, no_build),
        Task::Bench(args) => bench::bench(&args),
        Task::Matrix(args) => matrix(&args),
    }
}
