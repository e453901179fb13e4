//! The guest's initramfs: busybox-static, the kernel modules the guest needs (in dependency order
//! from modules.dep, decompressed for busybox's insmod) and an /init that mounts the host's root
//! over 9p, read-only, and runs the test script in a chroot of it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Modules the guest loads before anything else, by name. Each comes with what modules.dep says
/// it depends on; a module built into the kernel (modules.builtin) needs no loading.
///
/// - virtio_pci, 9pnet_virtio, 9p: the host's root and the results share;
/// - virtio_rng: entropy from the host, so nothing waits for the pool;
/// - veth, bridge: the tests' hosts, on a bridge of their own;
/// - nf_tables, nft_compat and the REJECT targets: Debian's iptables is iptables-nft, and the
///   tests drop (`-j DROP`) and reject (`-j REJECT --reject-with icmp-host-unreachable`) SYNs;
///   iptables-nft hands `REJECT` to the kernel's xtables target through nft_compat, and counts
///   each rule (nft_counter: a module on 5.10, built into nf_tables later);
/// - ipv6: built in on Debian's kernels; listed in case a kernel has it as a module.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "ipv6",
    "veth",
    "bridge",
    "nf_tables",
    "nft_compat",
    "nft_counter",
    "x_tables",
    "xt_tcpudp",
    "ipt_REJECT",
    "ip6t_REJECT",
    "nft_reject_inet",
];

/// Modules missing from a kernel, neither a module nor built in, that the guest can do without.
const OPTIONAL: &[&str] = &[
    "virtio_rng",
    "ipv6",
    "nft_counter",
    "xt_tcpudp",
    "ip6t_REJECT",
];

/// A module's name as the kernel knows it: its file name without `.ko` and compression, with
/// `-` read as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// modules.dep: each module's path (relative to the modules directory) and its dependencies;
/// with modules.softdep and modules.alias, the modules to load before one that finds what it
/// needs at run time (libcrc32c asks the crypto API for "crc32c", which a module provides).
#[derive(Debug, Default)]
pub struct ModulesDep {
    deps: BTreeMap<String, Vec<String>>,
    by_name: BTreeMap<String, String>,
    /// Module name -> names (or aliases) to load before it.
    soft_pre: BTreeMap<String, Vec<String>>,
    /// Alias -> module names.
    aliases: BTreeMap<String, Vec<String>>,
}

impl ModulesDep {
    /// Adds modules.softdep (`softdep MOD pre: A B post: C`) and modules.alias
    /// (`alias ALIAS MOD`).
    pub fn with_soft(mut self, softdep: &str, alias: &str) -> ModulesDep {
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => self
                        .soft_pre
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(name.to_owned()),
                    _ => {}
                }
            }
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (words.next(), words.next(), words.next()) {
                self.aliases
                    .entry(a.to_owned())
                    .or_default()
                    .push(m.replace('-', "_"));
            }
        }
        self
    }

    /// Paths of the modules that provide `name`: the module of that name, else every module
    /// the alias names.
    fn provided(&self, name: &str) -> Vec<&str> {
        if let Some(p) = self.path_of(name) {
            return vec![p];
        }
        self.aliases
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|m| self.path_of(m))
            .collect()
    }

    pub fn parse(text: &str) -> ModulesDep {
        let mut m = ModulesDep::default();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim().to_owned();
            m.by_name.insert(module_name(&module), module.clone());
            m.deps
                .insert(module, deps.split_whitespace().map(str::to_owned).collect());
        }
        m
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name
            .get(&name.replace('-', "_"))
            .map(String::as_str)
    }

    /// The paths of `roots` and everything they depend on, each dependency before the modules
    /// that need it (the order insmod must load them in). Roots not in modules.dep are returned
    /// apart, for the caller to check against modules.builtin.
    pub fn load_order<'a>(&self, roots: &[&'a str]) -> (Vec<String>, Vec<&'a str>) {
        fn visit(m: &ModulesDep, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
            if !seen.insert(path.to_owned()) {
                return;
            }
            for soft in m.soft_pre.get(&module_name(path)).into_iter().flatten() {
                for provider in m.provided(soft) {
                    visit(m, provider, seen, order);
                }
            }
            for dep in m.deps.get(path).into_iter().flatten() {
                visit(m, dep, seen, order);
            }
            order.push(path.to_owned());
        }
        let (mut seen, mut order, mut missing) = (BTreeSet::new(), Vec::new(), Vec::new());
        for root in roots {
            match self.path_of(root) {
                Some(path) => visit(self, path, &mut seen, &mut order),
                None => missing.push(*root),
            }
        }
        (order, missing)
    }
}

/// Names of the modules built into the kernel, from modules.builtin.
pub fn builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(module_name)
        .collect()
}

/// Modules to load in order, (path in the modules directory, name), and the needed ones taken
/// as built in.
pub type Modules = (Vec<(String, String)>, Vec<String>);

/// The modules to load, in order: (path in modules dir, name), and the needed modules that
/// modules.dep does not know (built in). Fails naming a needed module that the kernel has
/// neither as a module nor built in, when the package ships modules.builtin to tell (7.x's
/// packages do not: there a module absent from modules.dep is taken as built in, and the guest
/// finds out).
pub fn modules_to_load(modules_dir: &Path) -> Result<Modules> {
    let dep = std::fs::read_to_string(modules_dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", modules_dir.display()))?;
    let built = std::fs::read_to_string(modules_dir.join("modules.builtin"))
        .ok()
        .map(|t| builtin(&t));
    let read = |f: &str| std::fs::read_to_string(modules_dir.join(f)).unwrap_or_default();
    let (order, missing) = ModulesDep::parse(&dep)
        .with_soft(&read("modules.softdep"), &read("modules.alias"))
        .load_order(MODULES);
    let absent: Vec<_> = missing
        .iter()
        .filter(|m| {
            built
                .as_ref()
                .is_some_and(|b| !b.contains(&m.replace('-', "_")))
                && !OPTIONAL.contains(m)
        })
        .collect();
    if !absent.is_empty() {
        bail!(
            "{} has neither as a module nor built in: {}",
            modules_dir.display(),
            absent.iter().map(|s| **s).collect::<Vec<_>>().join(", ")
        );
    }
    let order = order
        .into_iter()
        .map(|p| {
            let name = module_name(&p);
            (p, name)
        })
        .collect();
    Ok((order, missing.into_iter().map(str::to_owned).collect()))
}

/// A module file's bytes, decompressed (busybox's insmod takes plain .ko files only).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} -dc"))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(out.stdout)
        }
    }
}

/// The guest's /init (busybox sh). Kernel parameters the kernel does not know arrive in its
/// environment: `matrix_results` (the results directory, shared writable over 9p and mounted
/// over the same path in the host's tree), `matrix_script` (what to run in the chroot) and
/// `matrix_keep` (the repository and target directory, colon-separated, which must stay
/// visible even under the guest's own /tmp).
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /host
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
say() { echo "matrix-init: $*"; }
stop() { say "$*"; sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  insmod "/modules/$m.ko" || say "insmod $m failed"
done < /modules/order
say "modules loaded: $(wc -l < /modules/order)"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
  || stop "cannot mount the host's root"
# The host's root once more, without what is mounted over it below.
mkdir -p /hostro && mount --bind /host /hostro
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
for d in /run /tmp /var/tmp /etc/netns; do
  [ -d "/host$d" ] && mount -t tmpfs -o mode=1777 tmpfs "/host$d"
done
# A repository or target directory under one of those (a clone in /tmp) is hidden by its
# tmpfs: bind it back from the host's root.
for k in $(echo "$matrix_keep" | tr : ' '); do
  case "$k" in
    /run/*|/tmp/*|/var/tmp/*) mkdir -p "/host$k" && mount --bind "/hostro$k" "/host$k" \
      || stop "cannot bring back $k" ;;
  esac
done
R="$matrix_results"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "/host$R" \
  || stop "cannot mount the results share on $R"
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
mount -t bpf bpf /host/sys/fs/bpf
mount -t tracefs tracefs /host/sys/kernel/tracing
mount -t debugfs debugfs /host/sys/kernel/debug
ip link set lo up
say "running $matrix_script"
chroot /host /bin/sh "$matrix_script"
say "script exited with $?"
umount "/host$R"
stop "powering off"
"#;

/// Writes the initramfs for `modules_dir` to `out`: /init, busybox, /modules/NAME.ko and
/// /modules/order. Returns the names of the modules it loads, in order, and of those it takes
/// as built in.
pub fn build(modules_dir: &Path, busybox: &Path, out: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (modules, built_in) = modules_to_load(modules_dir)?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.char_device("dev/console", 5, 1);
    cpio.file("init", 0o755, INIT.as_bytes());
    let busybox_bytes =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    cpio.file("bin/busybox", 0o755, &busybox_bytes);
    let mut order = String::new();
    for (path, name) in &modules {
        let bytes = read_module(&modules_dir.join(path))?;
        cpio.file(&format!("modules/{name}.ko"), 0o644, &bytes);
        order += name;
        order.push('\n');
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    std::fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok((modules.into_iter().map(|(_, n)| n).collect(), built_in))
}

/// A cpio archive in the "newc" format, the one the kernel unpacks as an initramfs.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz
kernel/net/802/stp.ko.xz: kernel/net/llc/llc.ko.xz
kernel/net/llc/llc.ko.xz:
kernel/net/ipv4/netfilter/ipt_REJECT.ko: kernel/net/ipv4/netfilter/nf_reject_ipv4.ko kernel/net/netfilter/x_tables.ko
kernel/net/ipv4/netfilter/nf_reject_ipv4.ko:
kernel/net/netfilter/x_tables.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.zst:
";

    #[test]
    fn names_drop_the_suffix_and_read_dashes_as_underscores() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz"),
            "9pnet_virtio"
        );
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko.zst"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/net/ipv6/ipv6.ko"), "ipv6");
    }

    #[test]
    fn dependencies_come_before_the_modules_that_need_them_once_each() {
        let dep = ModulesDep::parse(DEP);
        let (order, missing) = dep.load_order(&[
            "9pnet_virtio",
            "9p",
            "bridge",
            "ipt_REJECT",
            "virtio-rng",
            "ipv6",
        ]);
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "9p",
                "llc",
                "stp",
                "bridge",
                "nf_reject_ipv4",
                "x_tables",
                "ipt_REJECT",
                "virtio_rng"
            ]
        );
        assert_eq!(missing, ["ipv6"]);
    }

    #[test]
    fn soft_dependencies_come_first_through_their_aliases() {
        let dep = ModulesDep::parse(
            "kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko kernel/net/netfilter/nfnetlink.ko
kernel/lib/libcrc32c.ko:
kernel/net/netfilter/nfnetlink.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
",
        )
        .with_soft(
            "# Soft dependencies extracted from modules themselves.
softdep libcrc32c pre: crc32c
softdep nfnetlink post: nothing_here
",
            "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias crypto-crc32c crc32c_intel\n",
        );
        let (order, missing) = dep.load_order(&["nf_tables"]);
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        // crc32c_generic is named by the alias but is no module here (built in, or absent).
        assert_eq!(
            names,
            ["crc32c_intel", "libcrc32c", "nfnetlink", "nf_tables"]
        );
        assert!(missing.is_empty());
    }

    #[test]
    fn builtin_modules_are_known_by_name() {
        let b = builtin("kernel/net/ipv6/ipv6.ko\nkernel/fs/9p/9p.ko\n\n");
        assert!(b.contains("ipv6") && b.contains("9p") && b.len() == 2);
    }

    #[test]
    fn cpio_newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // Second entry: header (110 bytes) after the directory's header, its name "bin\0" and
        // padding to 4 bytes (110 + 4 = 114 -> 116).
        assert_eq!(&out[116..122], b"070701");
        let header = std::str::from_utf8(&out[116..116 + 110]).unwrap();
        let field = |i: usize| u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).unwrap();
        assert_eq!(field(1), 0o100755, "mode");
        assert_eq!(field(6), 10, "file size");
        assert_eq!(field(11), 5, "name size with its NUL");
        assert_eq!(&out[116 + 110..116 + 115], b"init\0");
        let trailer = b"TRAILER!!!\0";
        assert!(out.windows(trailer.len()).any(|w| w == trailer));
    }
}
