//! Booting one guest and collecting what it ran: qemu under software emulation (this machine's
//! KVM refuses Debian's kernels), no network device at all (`-nodefaults`), the host's root shared
//! read-only and a results directory shared writable over 9p, a timeout after which qemu is
//! killed, and the console kept in console.log.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::suite::{self, Libtest};

/// What the guest runs in the chroot of the host's root.
pub enum Payload<'a> {
    /// The selected tests: (executable name, its path, test name), each run on its own so that
    /// its time is known.
    Tests(Vec<(&'a str, PathBuf, &'a str)>),
    /// A shell command (`--command`), its output in the console log and in command.out.
    Command(&'a str),
}

/// The name of a test's files in the results directory: `EXE.TEST`.
pub fn stem(exe: &str, test: &str) -> String {
    format!("{exe}.{test}")
}

/// The script the guest runs in the chroot: results go to `results` (shared writable), and
/// everything is echoed to the console too. Each test leaves STEM.out (libtest's output),
/// STEM.rc (its exit code) and STEM.ms (its wall time); a failed test's agent logs and flow logs,
/// which the tests keep in /tmp after a failure, are copied to kept/STEM/ (the guest's /tmp is
/// gone once it powers off).
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
            for (exe_name, exe, test) in runs {
                let stem = stem(exe_name, test);
                s += &format!(
                    "echo \"matrix: {stem}\"\n\
                     start=$(date +%s%N)\n\
                     {{ {} --test-threads=1 --exact {test}; echo $? > {r}/{stem}.rc; }} 2>&1 | tee {r}/{stem}.out\n\
                     echo $(( ($(date +%s%N) - start) / 1000000 )) > {r}/{stem}.ms\n\
                     [ \"$(cat {r}/{stem}.rc 2>/dev/null)\" = 0 ] || {{ mkdir -p {r}/kept/{stem}; \
                     cp -a /tmp/observer-* {r}/kept/{stem}/ 2>/dev/null; }}\n\
                     rm -rf /tmp/observer-*\n",
                    exe.display(),
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

/// What one test (or the command) left: libtest's report, the exit code and the wall time
/// (None when it never finished).
#[derive(Debug)]
pub struct TestRun {
    pub report: Libtest,
    pub rc: Option<i32>,
    pub wall: Option<Duration>,
}

/// Boots `vmlinuz` with `initramfs`, runs `results/run.sh` in the guest, and waits at most
/// `timeout` for it to power off. `keep`: directories the guest must see as the host has them
/// even where it mounts a tmpfs of its own (the repository and its target directory).
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    results: &Path,
    console: &Path,
    timeout: Duration,
    keep: &[&Path],
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
        "console=ttyS0 panic=-1 loglevel=5 matrix_results={} matrix_script={} matrix_keep={}",
        results.display(),
        results.join("run.sh").display(),
        keep.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
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
    let mut qemu = Qemu(qemu.spawn().context("starting qemu-system-x86_64")?);
    loop {
        if qemu.0.try_wait()?.is_some() {
            return Ok((false, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return Ok((true, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running qemu, killed when dropped: at the timeout, and on any error or panic of the
/// harness, so that no guest outlives the command.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Reads what the guest left in `results` for `stem`.
pub fn collect(results: &Path, stem: &str) -> TestRun {
    let read = |ext: &str| std::fs::read_to_string(results.join(format!("{stem}.{ext}")));
    TestRun {
        report: suite::parse_libtest(&read("out").unwrap_or_default()),
        rc: read("rc").ok().and_then(|s| s.trim().parse().ok()),
        wall: read("ms")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Duration::from_millis),
    }
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
    fn the_script_runs_each_test_on_its_own_and_times_it() {
        let s = script(
            Path::new("/repo"),
            Path::new("/r"),
            Path::new("/repo/target/debug/observer"),
            &Payload::Tests(vec![
                (
                    "capture",
                    PathBuf::from("/repo/target/debug/deps/capture-1"),
                    "a_b",
                ),
                ("dns", PathBuf::from("/repo/target/debug/deps/dns-2"), "c"),
            ]),
        );
        assert!(s.contains("export OBSERVER_BIN=/repo/target/debug/observer"));
        assert!(s.contains(
            "{ /repo/target/debug/deps/capture-1 --test-threads=1 --exact a_b; echo $? > /r/capture.a_b.rc; } 2>&1 | tee /r/capture.a_b.out"
        ));
        assert!(s.contains("> /r/dns.c.ms"));
        assert!(s.contains("uname -r > /r/release"));
    }

    #[test]
    fn a_test_that_never_finished_has_no_exit_code_nor_time() {
        let dir = std::env::temp_dir().join(format!("matrix-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("capture.a.out"),
            "test a ... ok\ntest result: ok. 1 passed\n",
        )
        .unwrap();
        std::fs::write(dir.join("capture.a.rc"), "0\n").unwrap();
        std::fs::write(dir.join("capture.a.ms"), "1500\n").unwrap();
        std::fs::write(dir.join("capture.b.out"), "test b ... ").unwrap();
        let a = collect(&dir, "capture.a");
        let b = collect(&dir, "capture.b");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (a.report.passed.len(), a.rc, a.wall),
            (1, Some(0), Some(Duration::from_millis(1500)))
        );
        assert_eq!((b.report.finished, b.rc, b.wall), (false, None, None));
    }
}
