//! Debian's kernels from Debian's packages: a private apt state (so the host's apt is left as
//! it is) that knows bullseye, bookworm and trixie-backports, the newest package of each series
//! picked from `apt-cache search`, downloaded once and unpacked under target/kernel-matrix/.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};

/// One kernel series of the matrix and how Debian names its packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// What `--kernel` takes: "6.1".
    pub name: &'static str,
    /// The package that holds the image: `linux-image-` (with the modules), or from 7.x
    /// `linux-binary-` (the image alone; the modules are in `linux-modules-RELEASE`).
    pub image_package: &'static str,
    /// The release is `release_prefix`, a number (the ABI or the patch level), `release_suffix`.
    pub release_prefix: &'static str,
    pub release_suffix: &'static str,
    /// Where Debian publishes it.
    pub suite: &'static str,
}

impl Series {
    /// The modules live in a package of their own (7.x).
    pub fn split_modules(&self) -> bool {
        self.image_package == "linux-binary-"
    }

    /// The `apt-cache search --names-only` pattern for this series' image packages.
    pub fn search_pattern(&self) -> String {
        let esc = |s: &str| {
            s.chars()
                .flat_map(|c| {
                    let special = ".+*?()[]{}|^$\\".contains(c);
                    special.then_some('\\').into_iter().chain(Some(c))
                })
                .collect::<String>()
        };
        format!(
            "^{}{}[0-9]+{}$",
            esc(self.image_package),
            esc(self.release_prefix),
            esc(self.release_suffix)
        )
    }

    /// The release a package name of this series stands for, with its number, or None when the
    /// name is not one of this series' generic images (a `-cloud` or `-rt` flavour, `-dbg`, …).
    pub fn release_of(&self, package: &str) -> Option<(u64, String)> {
        let release = package.strip_prefix(self.image_package)?;
        let number = release
            .strip_prefix(self.release_prefix)?
            .strip_suffix(self.release_suffix)?;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((number.parse().ok()?, release.to_owned()))
    }

    /// The newest release of this series in `apt-cache search` output (`NAME - description`
    /// lines), or None when it lists none.
    pub fn newest(&self, search_output: &str) -> Option<String> {
        search_output
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .filter_map(|name| self.release_of(name.trim()))
            .max()
            .map(|(_, release)| release)
    }

    /// The packages to download for `release`.
    pub fn packages(&self, release: &str) -> Vec<String> {
        let mut p = vec![format!("{}{release}", self.image_package)];
        if self.split_modules() {
            p.push(format!("linux-modules-{release}"));
        }
        p
    }
}

/// The matrix: Debian 11's kernel, Debian 12's two, and trixie-backports' two newest series.
pub const SERIES: [Series; 5] = [
    Series {
        name: "5.10",
        image_package: "linux-image-",
        release_prefix: "5.10.0-",
        release_suffix: "-amd64",
        suite: "bullseye, bullseye-security",
    },
    Series {
        name: "6.1",
        image_package: "linux-image-",
        release_prefix: "6.1.0-",
        release_suffix: "-amd64",
        suite: "bookworm, bookworm-security",
    },
    Series {
        name: "6.12",
        image_package: "linux-image-",
        release_prefix: "6.12.",
        release_suffix: "+deb12-amd64",
        suite: "bookworm, bookworm-security",
    },
    Series {
        name: "6.18",
        image_package: "linux-image-",
        release_prefix: "6.18.",
        release_suffix: "+deb13-amd64",
        suite: "trixie-backports",
    },
    Series {
        name: "7.3",
        image_package: "linux-binary-",
        release_prefix: "7.3.",
        release_suffix: "+deb13-amd64",
        suite: "trixie-backports",
    },
];

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The sources of the private apt state: the same archive the host's apt uses, other suites.
fn sources_list() -> String {
    let mut s = String::new();
    for (uri, suites) in [
        ("http://deb.debian.org/debian", "bullseye bookworm"),
        (
            "http://deb.debian.org/debian-security",
            "bullseye-security bookworm-security",
        ),
        ("http://deb.debian.org/debian", "trixie-backports"),
    ] {
        for suite in suites.split(' ') {
            s += &format!("deb [signed-by={KEYRING}] {uri} {suite} main\n");
        }
    }
    s
}

/// An apt state of the matrix's own under `dir`; the host's lists, cache and sources stay as
/// they are.
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub fn new(dir: &Path) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("sources.list"), sources_list())?;
        Ok(Apt {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for opt in [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            // No installed packages: nothing here is installed, only downloaded.
            "Dir::State::Status=/dev/null".to_owned(),
            // Downloads go to target/, which apt's sandbox user may not write.
            "APT::Sandbox::User=root".to_owned(),
        ] {
            c.args(["-o", &opt]);
        }
        c
    }

    /// `apt-get update` of the private lists, unless they are fresher than `max_age`. When the
    /// archive cannot be reached and lists exist, the matrix goes on with them.
    pub fn update(&self, max_age: Duration) -> Result<()> {
        let stamp = self.dir.join("updated");
        let age = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < max_age) {
            return Ok(());
        }
        eprintln!(
            "[matrix] apt-get update of the matrix's own lists (bullseye, bookworm, trixie-backports)"
        );
        let out = self
            .command("apt-get")
            .args(["-qq", "update"])
            .output()
            .context("running apt-get update")?;
        if out.status.success() {
            std::fs::write(&stamp, "")?;
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if age.is_some() {
            eprintln!(
                "[matrix] apt-get update failed, going on with the lists of the last run: {err}"
            );
            return Ok(());
        }
        bail!("apt-get update of the matrix's lists failed: {err}")
    }

    /// The newest release of `series` the lists know.
    pub fn newest(&self, series: &Series) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", &series.search_pattern()])
            .output()
            .context("running apt-cache search")?;
        if !out.status.success() {
            bail!(
                "apt-cache search failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        series
            .newest(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| {
                format!(
                    "no package matches {} in {}",
                    series.search_pattern(),
                    series.suite
                )
            })
    }

    /// Downloads `package` into `dir`; returns the .deb's path.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let out = self
            .command("apt-get")
            .args(["-qq", "download", package])
            .current_dir(dir)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {package} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let prefix = format!("{package}_");
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".deb") {
                return Ok(dir.join(name));
            }
        }
        bail!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    }
}

/// A kernel unpacked from its packages: its image and its modules directory (with modules.dep).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

/// The unpacked kernel of `release` under `dir` (target/kernel-matrix/SERIES/), downloaded and
/// unpacked unless an earlier run left it complete. Older releases of the series are removed.
pub fn prepare(apt: &Apt, series: &Series, release: &str, dir: &Path) -> Result<Kernel> {
    let base = dir.join(release);
    let root = base.join("root");
    let done = base.join("complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&root)?;
        for package in series.packages(release) {
            eprintln!("[matrix] downloading and unpacking {package}");
            let deb = apt.download(&package, &base)?;
            super::run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            std::fs::remove_file(&deb)?;
        }
        let usr = root.join("usr/lib/modules").join(release);
        let depmod_base = if usr.is_dir() {
            root.join("usr")
        } else {
            root.clone()
        };
        // The packages ship no modules.dep.
        super::run_quiet(
            Command::new("depmod")
                .arg("-b")
                .arg(&depmod_base)
                .arg(release),
        )?;
        std::fs::write(&done, "")?;
    }
    // Releases of this series that an earlier run unpacked and that are no longer the newest.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != release && entry.file_type()?.is_dir() {
            let path = entry.path();
            if path.join("complete").exists() || path.join("root").exists() {
                eprintln!("[matrix] removing {}, no longer the newest", path.display());
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
    let modules = [
        root.join("lib/modules").join(release),
        root.join("usr/lib/modules").join(release),
    ]
    .into_iter()
    .find(|p| p.join("modules.dep").is_file())
    .with_context(|| format!("no modules.dep for {release} under {}", root.display()))?;
    let vmlinuz = [
        root.join("boot").join(format!("vmlinuz-{release}")),
        modules.join("vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| format!("no kernel image for {release} under {}", root.display()))?;
    Ok(Kernel {
        release: release.to_owned(),
        vmlinuz,
        modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-57-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-58-rt-amd64 - Linux 6.1 for 64-bit PCs (signed), PREEMPT_RT
linux-image-6.1.0-60-amd64-dbg - Linux 6.1 for 64-bit PCs (debug symbols)
";

    fn series(name: &str) -> Series {
        *SERIES.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn the_newest_generic_image_wins_by_number_not_by_text() {
        // 57 > 9 as numbers (not as text); cloud, rt and dbg packages are not the generic image.
        assert_eq!(
            series("6.1").newest(SEARCH).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(series("5.10").newest(SEARCH), None);
    }

    #[test]
    fn patch_level_series_and_split_packages() {
        let out = "\
linux-image-6.12.118+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.99+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.120+deb13-amd64 - trixie's, not bookworm's
";
        assert_eq!(
            series("6.12").newest(out).as_deref(),
            Some("6.12.118+deb12-amd64")
        );
        let out = "\
linux-binary-7.3.4+deb13-amd64 - Linux 7.3.4 for 64-bit PCs (kernel image)
linux-binary-7.3.12+deb13-cloud-amd64 - Linux 7.3.12 for x86-64 cloud (kernel image)
linux-binary-7.30.1+deb13-amd64 - another series
linux-modules-7.3.9+deb13-amd64 - Linux 7.3.9 for 64-bit PCs (modules)
";
        let s = series("7.3");
        assert_eq!(s.newest(out).as_deref(), Some("7.3.4+deb13-amd64"));
        assert_eq!(
            s.packages("7.3.4+deb13-amd64"),
            [
                "linux-binary-7.3.4+deb13-amd64",
                "linux-modules-7.3.4+deb13-amd64"
            ]
        );
        assert_eq!(
            series("6.18").packages("6.18.15+deb13-amd64"),
            ["linux-image-6.18.15+deb13-amd64"]
        );
    }

    #[test]
    fn search_patterns_escape_the_release() {
        assert_eq!(
            series("6.12").search_pattern(),
            r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$"
        );
        assert_eq!(
            series("5.10").search_pattern(),
            r"^linux-image-5\.10\.0-[0-9]+-amd64$"
        );
    }
}
