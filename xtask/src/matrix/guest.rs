//! Booting one guest and collecting what it ran: qemu under software emulation (this machine's
//! KVM refuses Debian's kernels), no network device at all (`-nodefaults`), the host's root shared
//! read-only and a results directory shared writable over 9p, a timeout after which qemu is
//! killed, and the console kept in console.log.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::suite::{self, Libtest};

/// What the guest runs in the chroot of the host's root.
pub enum Payload<'a> {
    /// The selected tests: (executable name, path, test names).
    Tests(Vec<(&'a str, PathBuf, &'a [&'a str])>),
    /// A shell command (`--command`), its output in the console log and in command.out.
    Command(&'a str),
}

/// The script the guest runs in the chroot: results go to `results` (shared writable), and
/// everything is echoed to the console too.
pub fn script(root: &Path, results: &Path, observer_bin: &Path, payload: &Payload) -> String {
    let r = results.display();
    let mut s = format!(
        "#!/bin/sh\n# Written by cargo xtask matrix; run by the guest's /init in a chroot of the host's root.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         export OBSERVER_BIN={} RUST_BACKTRACE=1\n\
         uname -r > {r}/release\n\
         cd {}\n",
        observer_bin.display(),
        root.display()
    );
    match payload {
        Payload::Tests(runs) => {
            for (name, exe, tests) in runs {
                s += &format!(
                    "echo \"matrix: {name}: {n} tests\"\n\
                     {{ {} --test-threads=1 --exact {}; echo $? > {r}/{name}.rc; }} 2>&1 | tee {r}/{name}.out\n",
                    exe.display(),
                    tests.join(" "),
                    n = tests.len(),
                );
            }
        }
        Payload::Command(cmd) => {
            s += &format!("{{ {cmd}\necho $? > {r}/command.rc; }} 2>&1 | tee {r}/command.out\n");
        }
    }
    s += "sync\n";
    s
}

/// Boots `vmlinuz` with `initramfs`, runs `results/run.sh` in the guest, and waits at most
/// `timeout` for it to power off.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    results: &Path,
    console: &Path,
    timeout: Duration,
) -> Result<(bool, Duration)> {
    let log = File::create(console).with_context(|| format!("creating {}", console.display()))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2G",
    ])
    .args(["-device", "virtio-rng-pci"])
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 panic=-1 loglevel=4 matrix_results={} matrix_script={}",
        results.display(),
        results.join("run.sh").display()
    ))
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=results,security_model=none,multidevs=remap",
        results.display()
    ))
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log);
    let start = Instant::now();
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    loop {
        if child.try_wait()?.is_some() {
            return Ok((false, start.elapsed()));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok((true, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads what the guest left in `results`.
pub fn collect(results: &Path, names: &[&str]) -> BTreeMap<String, (Libtest, Option<i32>)> {
    names
        .iter()
        .map(|name| {
            let out =
                std::fs::read_to_string(results.join(format!("{name}.out"))).unwrap_or_default();
            let rc = std::fs::read_to_string(results.join(format!("{name}.rc")))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            (name.to_string(), (suite::parse_libtest(&out), rc))
        })
        .collect()
}

/// Reads the release the guest reported.
pub fn release(results: &Path) -> Option<String> {
    std::fs::read_to_string(results.join("release"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The last `n` lines of a file (for a failed guest's console).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_each_executable_on_its_exact_tests() {
        let s = script(
            Path::new("/repo"),
            Path::new("/repo/target/kernel-matrix/6.1/results"),
            Path::new("/repo/target/debug/observer"),
            &Payload::Tests(vec![(
                "capture",
                PathBuf::from("/repo/target/debug/deps/capture-1"),
                &["a_b", "c"],
            )]),
        );
        assert!(s.contains("export OBSERVER_BIN=/repo/target/debug/observer"));
        assert!(s.contains(
            "{ /repo/target/debug/deps/capture-1 --test-threads=1 --exact a_b c; echo $? > /repo/target/kernel-matrix/6.1/results/capture.rc; } 2>&1 | tee /repo/target/kernel-matrix/6.1/results/capture.out"
        ));
        assert!(s.contains("uname -r > /repo/target/kernel-matrix/6.1/results/release"));
    }
}
