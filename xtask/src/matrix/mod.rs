//! `cargo xtask matrix`: the privileged capture tests in qemu guests on Debian's own kernels
//! (5.10, 6.1, 6.12, 6.18, 7.3), one guest after another. Each guest boots Debian's kernel with
//! an initramfs of busybox and the modules the tests need, mounts this machine's root read-only
//! over 9p, and runs the already built test executables in a chroot of it; it has no network
//! device, so nothing it does leaves the machine.
//!
//! - [`fetch`]: the newest package of each series, downloaded and unpacked once under
//!   target/kernel-matrix/SERIES/RELEASE/;
//! - [`initramfs`]: modules in dependency order, busybox, /init;
//! - [`guest`]: qemu, its timeout and console log, and what the guest left;
//! - [`suite`]: the tests that run and libtest's output.

mod fetch;
mod guest;
mod initramfs;
mod suite;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use self::fetch::{Apt, SERIES, Series};

/// How long one guest may run, boot to power-off, by default.
const GUEST_TIMEOUT_SECONDS: u64 = 240;

#[derive(clap::Args, Clone, Debug)]
pub struct MatrixArgs {
    /// A kernel series to run (repeatable): 5.10, 6.1, 6.12, 6.18 or 7.3. Default: all five.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Seconds one guest may take, boot to power-off, before qemu is killed.
    /// (A guest takes 75-130 s here; five must fit in the 10 minutes CI gives the matrix.)
    #[arg(long, default_value_t = GUEST_TIMEOUT_SECONDS)]
    pub timeout_seconds: u64,
    /// Run only this test of the matrix's selection (repeatable; by name, e.g.
    /// deleting_idle_flows_during_a_storm_loses_no_count): to look into one failure.
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Instead of the tests, run this shell command in each guest (in the chroot of the host's
    /// root, as the tests run): to look into a kernel. Its output is in the console log.
    #[arg(long)]
    pub command: Option<String>,
}

impl MatrixArgs {
    /// Every kernel, the tests, the default timeout.
    pub fn all() -> MatrixArgs {
        MatrixArgs {
            kernels: Vec::new(),
            tests: Vec::new(),
            timeout_seconds: GUEST_TIMEOUT_SECONDS,
            command: None,
        }
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || root.join("target"),
        |p| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { root.join(p) }
        },
    )
}

/// Runs a command that must succeed, keeping its output unless it fails.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How one kernel did.
struct Outcome {
    series: &'static str,
    release: String,
    passed: usize,
    /// Empty when the kernel passed.
    failures: Vec<String>,
    wall: Duration,
}

/// The selected series, in the matrix's order.
fn selected(names: &[String]) -> Result<Vec<Series>> {
    if names.is_empty() {
        return Ok(SERIES.to_vec());
    }
    for n in names {
        if !SERIES.iter().any(|s| s.name == n) {
            let known: Vec<_> = SERIES.iter().map(|s| s.name).collect();
            bail!("unknown kernel {n}: the matrix has {}", known.join(", "));
        }
    }
    Ok(SERIES
        .iter()
        .filter(|s| names.iter().any(|n| n == s.name))
        .copied()
        .collect())
}

/// Runs the matrix on the selected kernels, one guest after another; fails naming each kernel
/// that failed and its failed tests. The test executables and the agent must be built.
pub fn run(root: &Path, args: &MatrixArgs) -> Result<()> {
    let series = selected(&args.kernels)?;
    let target = target_dir(root);
    let base = target.join("kernel-matrix");
    let observer_bin = target.join("debug/observer");
    if !observer_bin.exists() {
        bail!("no agent at {}: build it first", observer_bin.display());
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("no busybox: install busybox-static (scripts/bootstrap.sh does)")?;
    let exes = match args.command {
        Some(_) => Default::default(),
        None => {
            let exes = suite::executables(root)?;
            suite::check_selection(&exes)?;
            exes
        }
    };
    // `ip netns exec` bind-mounts /etc/netns/NS/* over /etc; the guest can mount a tmpfs on
    // /etc/netns (the host's root is read-only there) only if the directory exists.
    std::fs::create_dir_all("/etc/netns").context("creating /etc/netns")?;

    let apt = Apt::new(&base.join("apt"))?;
    apt.update(Duration::from_secs(6 * 3600))?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let ctx = Ctx {
        apt: &apt,
        base: &base,
        busybox: &busybox,
        root,
        observer_bin: &observer_bin,
        exes: &exes,
        tests: suite::selected(&args.tests)?,
        args,
    };
    for s in &series {
        let t = Instant::now();
        let outcome = match one(&ctx, s) {
            Ok(o) => o,
            Err(e) => Outcome {
                series: s.name,
                release: "?".into(),
                passed: 0,
                failures: vec![format!("{e:#}")],
                wall: t.elapsed(),
            },
        };
        let verdict = if outcome.failures.is_empty() {
            "pass"
        } else {
            "FAIL"
        };
        eprintln!(
            "[matrix] {:<5} {:<22} {verdict}  {} passed  {:.0} s",
            outcome.series,
            outcome.release,
            outcome.passed,
            outcome.wall.as_secs_f64()
        );
        outcomes.push(outcome);
    }

    println!(
        "\nkernel matrix ({:.0} s):",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  {:<6} {:<24} {:<6} {:>7} {:>7}",
        "series", "release", "result", "passed", "wall"
    );
    for o in &outcomes {
        println!(
            "  {:<6} {:<24} {:<6} {:>7} {:>6.0}s",
            o.series,
            o.release,
            if o.failures.is_empty() {
                "pass"
            } else {
                "FAIL"
            },
            o.passed,
            o.wall.as_secs_f64()
        );
    }
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.failures.is_empty()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::from("the kernel matrix failed on");
    for o in failed {
        msg += &format!(
            "\n  {} ({}): {}",
            o.series,
            o.release,
            o.failures.join("; ")
        );
    }
    bail!(msg)
}

/// What every guest of a run shares.
struct Ctx<'a> {
    apt: &'a Apt,
    /// target/kernel-matrix
    base: &'a Path,
    busybox: &'a Path,
    root: &'a Path,
    observer_bin: &'a Path,
    exes: &'a std::collections::BTreeMap<String, PathBuf>,
    /// (executable, test) to run in each guest.
    tests: Vec<(&'static str, &'static str)>,
    args: &'a MatrixArgs,
}

/// One kernel: fetch, initramfs, boot, results.
fn one(ctx: &Ctx, series: &Series) -> Result<Outcome> {
    let Ctx {
        apt,
        base,
        busybox,
        root,
        observer_bin,
        exes,
        args,
        ..
    } = *ctx;
    let start = Instant::now();
    let dir = base.join(series.name);
    std::fs::create_dir_all(&dir)?;
    let release = apt.newest(series)?;
    let kernel = fetch::prepare(apt, series, &release, &dir)?;
    let initramfs = dir.join("initramfs.cpio");
    let (modules, built_in) = initramfs::build(&kernel.modules, busybox, &initramfs)?;
    let results = dir.join("results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results)?;
    let payload = match &args.command {
        Some(cmd) => guest::Payload::Command(cmd),
        None => guest::Payload::Tests(
            ctx.tests
                .iter()
                .map(|(exe, test)| (*exe, exes[*exe].clone(), *test))
                .collect(),
        ),
    };
    std::fs::write(
        results.join("run.sh"),
        guest::script(root, &results, observer_bin, &payload),
    )?;
    let console = dir.join("console.log");
    eprintln!(
        "[matrix] booting {release} ({} modules: {}; built in: {}); console in {}",
        modules.len(),
        modules.join(" "),
        built_in.join(" "),
        console.display()
    );
    let timeout = Duration::from_secs(args.timeout_seconds);
    let (timed_out, _) = guest::boot(
        &kernel.vmlinuz,
        &initramfs,
        &results,
        &console,
        timeout,
        &[ctx.root, &target_dir(ctx.root)],
    )?;
    let guest_release = guest::release(&results);
    let mut failures = Vec::new();
    let mut passed = 0;
    if timed_out {
        failures.push(format!(
            "timed out after {} s, qemu killed",
            timeout.as_secs()
        ));
    }
    match guest_release.as_deref() {
        None => failures.push("the guest never ran its script".into()),
        Some(r) if r != kernel.release => {
            failures.push(format!("the guest ran {r}, not {}", kernel.release));
        }
        Some(_) => {}
    }
    let mut times = Vec::new();
    match &args.command {
        Some(_) => match guest::collect(&results, "command").rc {
            Some(0) => {}
            Some(c) => failures.push(format!("the command exited with {c}")),
            None => failures.push("the command did not finish".into()),
        },
        None => {
            for (exe, test) in &ctx.tests {
                let run = guest::collect(&results, &guest::stem(exe, test));
                let ok = run.report.passed.iter().any(|t| t == test) && run.rc == Some(0);
                if ok {
                    passed += 1;
                } else if run.report.failed.iter().any(|t| t == test) {
                    failures.push(format!("{exe}::{test} failed"));
                } else {
                    failures.push(format!("{exe}::{test} did not finish"));
                }
                if let Some(w) = run.wall {
                    times.push(format!("{test} {:.0} s", w.as_secs_f64()));
                }
            }
        }
    }
    if !times.is_empty() {
        eprintln!("[matrix] {release}: {}", times.join(", "));
    }
    if !failures.is_empty() {
        eprintln!(
            "[matrix] {release} failed; last lines of {}:\n{}",
            console.display(),
            guest::tail(&console, 60)
        );
    }
    Ok(Outcome {
        series: series.name,
        release: guest_release.unwrap_or(kernel.release),
        passed,
        failures,
        wall: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_selected_by_name_in_matrix_order() {
        let names = |v: &[&str]| {
            selected(&v.iter().map(ToString::to_string).collect::<Vec<_>>())
                .map(|s| s.iter().map(|s| s.name).collect::<Vec<_>>())
        };
        assert_eq!(names(&[]).unwrap(), ["5.10", "6.1", "6.12", "6.18", "7.3"]);
        assert_eq!(names(&["7.3", "5.10"]).unwrap(), ["5.10", "7.3"]);
        assert!(names(&["6.2"]).is_err());
    }
}
