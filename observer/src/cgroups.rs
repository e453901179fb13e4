//! Which pod a process belongs to, from its cgroup2 id.
//!
//! `bpf_get_current_cgroup_id()` gives the connecting task's cgroup2 id, which is the inode
//! number of its directory in the cgroup2 hierarchy. Kubelet names a pod's cgroup after the
//! pod's UID (`kubepods/burstable/pod<uid>/<container>` with the cgroupfs driver,
//! `kubepods-burstable-pod<uid_with_underscores>.slice/...` with the systemd driver), so the
//! directory path tells whether a task runs in a pod and in which.
//!
//! On cgroup v2 hosts the hierarchy is at /sys/fs/cgroup; on v1/hybrid hosts (like these test
//! machines) the cgroup2 part is mounted at /sys/fs/cgroup/unified, and kubelet's v1 layout
//! only appears there if it uses the systemd driver (systemd mirrors its slices into the unified
//! hierarchy). The mount is found in /proc/self/mounts, never assumed.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// What a cgroup id says about the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOwner {
    /// The id is not in the hierarchy (yet, or any more).
    Unknown,
    /// A cgroup outside every pod: a host service, or the container runtime itself.
    Host,
    /// A pod's cgroup, with the pod's UID.
    Pod(String),
}

pub struct CgroupResolver {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

const MAX_DEPTH: usize = 10;
const MAX_ENTRIES: usize = 200_000;

/// The cgroup2 mount point, from a mounts table (`/proc/self/mounts` format).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The pod UID named in a cgroup path, if any.
pub fn pod_uid(path: &str) -> Option<String> {
    // Every "pod" of a segment is tried: in the systemd driver's
    // `kubepods-besteffort-pod<uid>.slice` the first one is inside "kubepods".
    path.split('/').find_map(|segment| {
        segment.match_indices("pod").find_map(|(at, _)| {
            let uid: String = segment[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-' || *c == '_')
                .collect();
            // A UID is 32 hex digits with 4 separators.
            (uid.len() == 36).then(|| uid.replace('_', "-"))
        })
    })
}

impl CgroupResolver {
    pub fn new() -> CgroupResolver {
        let root = fs::read_to_string("/proc/self/mounts")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        CgroupResolver::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> CgroupResolver {
        CgroupResolver {
            root,
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    fn scan(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        self.paths.clear();
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if let Ok(meta) = fs::metadata(&dir) {
                let rel = dir
                    .strip_prefix(&root)
                    .unwrap_or(Path::new(""))
                    .display()
                    .to_string();
                self.paths.insert(meta.ino(), format!("/{rel}"));
            }
            if depth >= MAX_DEPTH || self.paths.len() >= MAX_ENTRIES {
                continue;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
        self.last_scan = Some(Instant::now());
    }

    /// The cgroup path of `id`, rescanning the hierarchy on a miss at most once a second.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.paths.contains_key(&id)
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.scan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    pub fn owner(&mut self, id: u64) -> CgroupOwner {
        if id == 0 {
            return CgroupOwner::Unknown;
        }
        match self.path(id) {
            None => CgroupOwner::Unknown,
            Some(p) => pod_uid(p).map_or(CgroupOwner::Host, CgroupOwner::Pod),
        }
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn reads_pod_uids_of_both_kubelet_cgroup_drivers() {
        assert_eq!(
            pod_uid("/kubepods/burstable/pod6f1c3a2e-1b2c-4d5e-8f90-0123456789ab/0123abcd"),
            Some("6f1c3a2e-1b2c-4d5e-8f90-0123456789ab".into())
        );
        assert_eq!(
            pod_uid(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c3a2e_1b2c_4d5e_8f90_0123456789ab.slice/cri-containerd-01.scope"
            ),
            Some("6f1c3a2e-1b2c-4d5e-8f90-0123456789ab".into())
        );
        assert_eq!(pod_uid("/system.slice/containerd.service"), None);
        assert_eq!(pod_uid("/user.slice/podman.scope"), None);
    }

    #[test]
    fn resolves_ids_to_paths_in_a_real_directory_tree() {
        let dir = std::env::temp_dir().join(format!("observer-cgroups-{}", std::process::id()));
        let pod = dir.join("kubepods/pod6f1c3a2e-1b2c-4d5e-8f90-0123456789ab/c1");
        fs::create_dir_all(&pod).unwrap();
        fs::create_dir_all(dir.join("system.slice/containerd.service")).unwrap();
        let mut r = CgroupResolver::at(Some(dir.clone()));
        let pod_id = fs::metadata(&pod).unwrap().ino();
        let runtime_id = fs::metadata(dir.join("system.slice/containerd.service"))
            .unwrap()
            .ino();
        assert_eq!(
            r.owner(pod_id),
            CgroupOwner::Pod("6f1c3a2e-1b2c-4d5e-8f90-0123456789ab".into())
        );
        assert_eq!(r.owner(runtime_id), CgroupOwner::Host);
        assert_eq!(r.owner(0), CgroupOwner::Unknown);
        fs::remove_dir_all(&dir).unwrap();
    }
}
