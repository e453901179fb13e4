//! Where an address lies: `cluster`, `node`, `external` or `local`, decided from configuration
//! alone (pod and service ranges, node addresses), so it never waits for the Kubernetes index.

use std::{collections::HashSet, net::IpAddr, path::Path};

use ipnet::IpNet;
use observer_common::record::Scope;

#[derive(Clone, Debug, Default)]
pub struct Scoper {
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub node_ips: HashSet<IpAddr>,
    /// Inode of the node's own network namespace: sockets there belong to host processes.
    pub host_netns: Option<u32>,
}

impl Scoper {
    /// Scope of an address as seen from a socket in `netns`.
    pub fn of_addr(&self, ip: IpAddr) -> Scope {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            Scope::Local
        } else if self.node_ips.contains(&ip) {
            Scope::Node
        } else if self
            .pod_cidrs
            .iter()
            .chain(&self.service_cidrs)
            .any(|n| n.contains(&ip))
        {
            Scope::Cluster
        } else {
            Scope::External
        }
    }

    /// Scope of the end that lives on this node, in network namespace `netns` at address `ip`.
    /// A socket outside the node's namespace is a pod's, unless the pod ranges are known and
    /// its address is outside them (a namespace that is not a pod, such as a test host).
    pub fn of_local_end(&self, netns: u32, ip: IpAddr) -> Scope {
        if ip.to_canonical().is_loopback() {
            Scope::Local
        } else if Some(netns) == self.host_netns {
            Scope::Node
        } else if self.pod_cidrs.is_empty() {
            Scope::Cluster
        } else {
            self.of_addr(ip)
        }
    }
}

/// Inode of the node's own network namespace, from the node's /proc (`proc`): that of pid 1, or,
/// when its `ns/net` link cannot be read, that of pid 2. Both live in the initial namespace on a
/// node (pid 2 is kthreadd, a kernel thread, which never leaves it); reading pid 1's link needs
/// ptrace access to it, which some hosts refuse even to root, while kernel threads are readable.
pub fn host_netns(proc: &Path) -> Option<u32> {
    let mut failures = Vec::new();
    for pid in ["1", "2"] {
        let link = proc.join(pid).join("ns/net");
        match std::fs::read_link(&link) {
            Ok(target) => match netns_inode(&target.to_string_lossy()) {
                Some(ino) => return Some(ino),
                None => failures.push(format!("{}: unexpected target {target:?}", link.display())),
            },
            Err(e) => failures.push(format!("{}: {e}", link.display())),
        }
    }
    tracing::warn!(
        "cannot tell the node's network namespace ({}); connections of host processes will not be classified node by their namespace",
        failures.join("; ")
    );
    None
}

/// `net:[4026531840]` -> 4026531840.
fn netns_inode(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoper() -> Scoper {
        Scoper {
            pod_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            node_ips: ["192.168.1.10".parse().unwrap()].into(),
            host_netns: Some(4026531840),
        }
    }

    #[test]
    fn classifies_by_configuration_alone() {
        let s = scoper();
        let scope = |a: &str| s.of_addr(a.parse().unwrap());
        assert_eq!(scope("10.244.3.7"), Scope::Cluster);
        assert_eq!(scope("fd00:10:244::5"), Scope::Cluster);
        assert_eq!(scope("10.96.0.10"), Scope::Cluster);
        assert_eq!(scope("192.168.1.10"), Scope::Node);
        assert_eq!(scope("127.0.0.1"), Scope::Local);
        assert_eq!(scope("::ffff:127.0.0.1"), Scope::Local);
        assert_eq!(scope("20.190.160.1"), Scope::External);
        assert_eq!(scope("::ffff:10.244.0.1"), Scope::Cluster);
    }

    #[test]
    fn the_host_namespace_is_the_node() {
        let s = scoper();
        assert_eq!(
            s.of_local_end(4026531840, "192.168.1.10".parse().unwrap()),
            Scope::Node
        );
        assert_eq!(
            s.of_local_end(4026532000, "10.244.3.7".parse().unwrap()),
            Scope::Cluster
        );
        assert_eq!(
            s.of_local_end(4026532000, "127.0.0.1".parse().unwrap()),
            Scope::Local
        );
    }

    #[test]
    fn the_host_namespace_comes_from_pid_1_or_else_from_kthreadd() {
        let dir = std::env::temp_dir().join(format!("observer-scope-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for pid in ["1", "2"] {
            std::fs::create_dir_all(dir.join(pid).join("ns")).unwrap();
        }
        std::os::unix::fs::symlink("net:[4026531999]", dir.join("2/ns/net")).unwrap();
        assert_eq!(host_netns(&dir), Some(4026531999), "pid 1 unreadable");
        std::os::unix::fs::symlink("net:[4026531840]", dir.join("1/ns/net")).unwrap();
        assert_eq!(host_netns(&dir), Some(4026531840));
        assert_eq!(host_netns(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
