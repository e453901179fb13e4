//! The benchmark's test hosts and their namespaces' settings, all removed on drop.
//!
//! Two network namespaces, `client` and `server`, on a bridge of their own that has no address
//! and no route off the machine (PLATFORM.md's network rules): traffic can only go between them.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs a command that must succeed.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Lab {
    tag: String,
    pub client: String,
    pub server: String,
    /// The /24 of the lab, e.g. `10.217.250`.
    pub net: String,
}

/// The second octet of a lab's /24 (`10.X.250.0/24`), by the bench's process id.
pub const LAB_SECOND_OCTETS: std::ops::Range<u32> = 200..240;

impl Lab {
    /// Client at `.2`, server at `.3` (listeners) and `.10`-`.13` (nothing listens: refused
    /// connects, one flow per address and port).
    pub fn new() -> Result<Lab> {
        let pid = std::process::id();
        let tag = format!("obb{:x}", pid % 0xfffff);
        // 10.200-239.250.0/24: apart from the end-to-end tests' 10.100-199.x.0/24, and below
        // 10.244.0.0/16, the pod range the bench's agents are given (`agent::POD_CIDR`): an address
        // in it is a pod the inventory does not know, whose records the agent holds for
        // `--hold` and then counts as unattributed (it once made detection latency 5.4 s).
        let octets = LAB_SECOND_OCTETS;
        let net = format!("10.{}.250", octets.start + pid % octets.len() as u32);
        let lab = Lab {
            client: format!("{tag}c"),
            server: format!("{tag}s"),
            tag: tag.clone(),
            net: net.clone(),
        };
        let bridge = format!("{tag}br");
        sh("ip", &["link", "add", &bridge, "type", "bridge"])?;
        sh("ip", &["link", "set", &bridge, "up"])?;
        for (ns, addrs) in [
            (&lab.client, vec![2]),
            (&lab.server, vec![3, 10, 11, 12, 13]),
        ] {
            let veth = format!("{ns}v");
            sh("ip", &["netns", "add", ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            sh("ip", &["link", "set", &veth, "master", &bridge, "up"])?;
            lab.exec(ns, &["ip", "link", "set", "lo", "up"])?;
            lab.exec(ns, &["ip", "link", "set", "eth0", "up"])?;
            for a in addrs {
                lab.exec(
                    ns,
                    &["ip", "addr", "add", &format!("{net}.{a}/24"), "dev", "eth0"],
                )?;
            }
        }
        // Per-namespace settings: a wide ephemeral range and TIME_WAIT reuse for FIN storms on
        // the client; deep accept queues on the server.
        for (ns, key, value) in [
            (&lab.client, "net.ipv4.ip_local_port_range", "1024 65000"),
            (&lab.client, "net.ipv4.tcp_tw_reuse", "1"),
            (&lab.server, "net.core.somaxconn", "4096"),
            (&lab.server, "net.ipv4.tcp_max_syn_backlog", "4096"),
        ] {
            lab.exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        }
        Ok(lab)
    }

    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        sh("ip", &args)
    }

    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    pub fn netns_inode(&self, ns: &str) -> Result<u32> {
        let meta =
            std::fs::metadata(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
        Ok(std::os::unix::fs::MetadataExt::ino(&meta) as u32)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}br", self.tag)])
            .status();
    }
}

/// A child process killed (by its own pid) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        Ok(Proc(
            cmd.spawn()
                .with_context(|| format!("cannot spawn {cmd:?}"))?,
        ))
    }
}

impl Proc {
    /// Spawns with the stdin the command was given (a pipe, say).
    pub fn spawn_piped(mut cmd: Command) -> Result<Proc> {
        Ok(Proc(
            cmd.spawn()
                .with_context(|| format!("cannot spawn {cmd:?}"))?,
        ))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::bench::agent::{POD_CIDR, SERVICE_CIDR};

    fn contains(cidr: &str, addr: Ipv4Addr) -> bool {
        let (net, len) = cidr.split_once('/').unwrap();
        let (net, len): (Ipv4Addr, u32) = (net.parse().unwrap(), len.parse().unwrap());
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        u32::from(addr) & mask == u32::from(net) & mask
    }

    #[test]
    fn no_lab_network_lies_in_the_agents_cluster_ranges() {
        assert!(contains(POD_CIDR, Ipv4Addr::new(10, 244, 250, 3)));
        for x in LAB_SECOND_OCTETS {
            for host in [0, 2, 3, 10, 13, 255] {
                let addr = Ipv4Addr::new(10, x as u8, 250, host);
                for cidr in [POD_CIDR, SERVICE_CIDR] {
                    assert!(!contains(cidr, addr), "{addr} in {cidr}");
                }
            }
        }
    }
}
