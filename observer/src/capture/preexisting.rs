//! Connections already established when the agent starts (long-lived AMQP or Kafka sessions),
//! found once by reading `/proc/<pid>/net/tcp{,6}` in every network namespace on the node.
//!
//! Needs: a view of the node's processes (run in the host pid namespace, or mount the host's
//! /proc and pass `--host-proc`). The process behind each socket is found through
//! `/proc/<pid>/fd`, which needs CAP_SYS_PTRACE for other users' processes; without it the
//! connections are still recorded, without their process.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use observer_common::{DIRECTION_ACCEPT, DIRECTION_CONNECT, FlowKey, addr_bytes};

/// One socket line of `/proc/net/tcp` or `tcp6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLine {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// `include/net/tcp_states.h`: 1 ESTABLISHED, 10 LISTEN.
    pub state: u8,
    pub inode: u64,
}

/// Parses the kernel's `/proc/net/tcp` format. Addresses are printed as the in-memory words
/// in host byte order, which is why each 32-bit group is byte-swapped on little-endian hosts.
pub fn parse_proc_net_tcp(text: &str) -> Vec<SocketLine> {
    text.lines().skip(1).filter_map(parse_line).collect()
}

fn parse_addr(hex: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| {
            addr.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [w] => IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip.to_canonical(), port))
}

fn parse_line(line: &str) -> Option<SocketLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, local_port) = parse_addr(f.get(1)?)?;
    let (remote, remote_port) = parse_addr(f.get(2)?)?;
    Some(SocketLine {
        local,
        local_port,
        remote,
        remote_port,
        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
        inode: f.get(9)?.parse().ok()?,
    })
}

/// A pre-existing connection, as a flow key (cgroup 0: the connecting task is unknown) with the
/// process found holding the socket, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub key: FlowKey,
    pub process: Option<(u32, String)>,
}

/// Classifies the established sockets of one network namespace: a socket whose local port is a
/// listening port of the namespace was accepted, any other was connected.
pub fn classify(netns: u32, lines: &[SocketLine]) -> Vec<(FlowKey, u64)> {
    let listening: HashSet<u16> = lines
        .iter()
        .filter(|l| l.state == 10)
        .map(|l| l.local_port)
        .collect();
    lines
        .iter()
        .filter(|l| l.state == 1)
        .map(|l| {
            let accepted = listening.contains(&l.local_port);
            let (family, local_addr) = addr_bytes(l.local);
            let (_, remote_addr) = addr_bytes(l.remote);
            let key = FlowKey {
                cgroup_id: 0,
                netns,
                server_port: if accepted {
                    l.local_port
                } else {
                    l.remote_port
                },
                family,
                direction: if accepted {
                    DIRECTION_ACCEPT
                } else {
                    DIRECTION_CONNECT
                },
                local_addr,
                remote_addr,
            };
            (key, l.inode)
        })
        .collect()
}

fn netns_of(proc_root: &Path, pid: &str) -> Option<u32> {
    let link = fs::read_link(proc_root.join(pid).join("ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Socket inode -> (tgid, comm), from every process's fd table (best effort).
fn socket_owners(proc_root: &Path, pids: &[String]) -> HashMap<u64, (u32, String)> {
    let mut owners = HashMap::new();
    for pid in pids {
        let Ok(fds) = fs::read_dir(proc_root.join(pid).join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(proc_root.join(pid).join("comm")).unwrap_or_default();
        let Ok(tgid) = pid.parse::<u32>() else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            {
                owners
                    .entry(inode)
                    .or_insert((tgid, comm.trim().to_owned()));
            }
        }
    }
    owners
}

/// Every established TCP connection on the node, grouped into flows with their counts.
pub fn scan(proc_root: &Path) -> BTreeMap<Vec<u8>, (Existing, u64)> {
    let pids: Vec<String> = fs::read_dir(proc_root)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .collect()
        })
        .unwrap_or_default();
    let owners = socket_owners(proc_root, &pids);
    let mut seen_netns = HashSet::new();
    let mut flows: BTreeMap<Vec<u8>, (Existing, u64)> = BTreeMap::new();
    for pid in &pids {
        let Some(netns) = netns_of(proc_root, pid) else {
            continue;
        };
        if !seen_netns.insert(netns) {
            continue;
        }
        let mut lines = Vec::new();
        for file in ["net/tcp", "net/tcp6"] {
            if let Ok(text) = fs::read_to_string(proc_root.join(pid).join(file)) {
                lines.extend(parse_proc_net_tcp(&text));
            }
        }
        for (key, inode) in classify(netns, &lines) {
            let id = key_bytes(&key);
            let entry = flows.entry(id).or_insert_with(|| {
                (
                    Existing {
                        key,
                        process: owners.get(&inode).cloned(),
                    },
                    0,
                )
            });
            entry.1 += 1;
        }
    }
    flows
}

fn key_bytes(k: &FlowKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    v.extend_from_slice(&k.netns.to_be_bytes());
    v.push(k.direction);
    v.extend_from_slice(&k.server_port.to_be_bytes());
    v.extend_from_slice(&k.local_addr);
    v.extend_from_slice(&k.remote_addr);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from this kernel: a listener on 0.0.0.0:5672, one accepted and one outgoing
    // connection, and an IPv6 v4-mapped established socket.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1628 00000000:0000 0A 00000000:0000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100000A:1628 0200000A:C350 01 00000000:0000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100000A:D431 0300000A:2384 01 00000000:0000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100000A:D432 0000000000000000FFFF00000400000A:1F90 01 00000000:0000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_kernel_format_including_v4_mapped_ipv6() {
        let lines = parse_proc_net_tcp(TCP);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].local, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(lines[1].remote, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(
            (lines[1].local_port, lines[1].remote_port, lines[1].state),
            (5672, 50000, 1)
        );
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(v6[0].remote, "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(v6[0].remote_port, 8080);
    }

    #[test]
    fn accepted_sockets_are_those_on_a_listening_port() {
        let mut lines = parse_proc_net_tcp(TCP);
        lines.extend(parse_proc_net_tcp(TCP6));
        let flows = classify(7, &lines);
        assert_eq!(flows.len(), 3);
        assert_eq!(
            (flows[0].0.direction, flows[0].0.server_port, flows[0].1),
            (DIRECTION_ACCEPT, 5672, 1002)
        );
        assert_eq!(
            (flows[1].0.direction, flows[1].0.server_port),
            (DIRECTION_CONNECT, 9092)
        );
        assert_eq!(
            (
                flows[2].0.direction,
                flows[2].0.server_port,
                flows[2].0.family
            ),
            (DIRECTION_CONNECT, 8080, 4)
        );
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_proc_net_tcp("header\nnot a socket line\n0: zz:zz").is_empty());
    }
}
