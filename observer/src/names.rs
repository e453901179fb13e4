//! Host names for external addresses, from the agent's own resolution of the exact names the
//! architecture lists, and from a hosts file (`--hosts-file`, `/etc/hosts` format), which also
//! names addresses for wildcard externals (`*.ts.net`) where the file lists a matching name.
//! The DNS answers pods receive are the better source; they arrive with the DNS-aware issue.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

#[derive(Clone, Debug, Default)]
pub struct HostNames {
    by_ip: HashMap<IpAddr, String>,
    /// 0 while empty and never changed; otherwise unique to this content in the process (a
    /// clone shares it), so caches of names can be keyed by it.
    generation: u64,
}

/// The source of [`HostNames::generation`]s.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

impl HostNames {
    /// Equal generations mean equal names (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn changed(&mut self) {
        self.generation = GENERATIONS.fetch_add(1, Ordering::Relaxed);
    }

    pub fn name(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip.to_canonical()).map(String::as_str)
    }

    pub fn insert(&mut self, ip: IpAddr, name: &str) {
        self.changed();
        self.by_ip
            .entry(ip.to_canonical())
            .or_insert_with(|| name.trim_end_matches('.').to_ascii_lowercase());
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Parses `/etc/hosts` format: the first name of each line names its address.
    pub fn parse_hosts(text: &str) -> HostNames {
        let mut names = HostNames::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut f = line.split_whitespace();
            if let (Some(ip), Some(name)) = (f.next(), f.next())
                && let Ok(ip) = ip.parse::<IpAddr>()
            {
                names.insert(ip, name);
            }
        }
        names
    }

    pub fn load_hosts_file(path: &Path) -> std::io::Result<HostNames> {
        Ok(HostNames::parse_hosts(&std::fs::read_to_string(path)?))
    }

    /// Resolves each exact name with the system resolver (blocking; run off the async threads).
    pub fn resolve<'a>(hosts: impl IntoIterator<Item = &'a str>) -> HostNames {
        let mut names = HostNames::default();
        for host in hosts {
            if let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host, 443)) {
                for a in addrs {
                    names.insert(a.ip(), host);
                }
            }
        }
        names
    }

    /// Adds `other`'s names for addresses this one does not name yet.
    pub fn merge(&mut self, other: &HostNames) {
        self.changed();
        for (ip, name) in &other.by_ip {
            self.by_ip.entry(*ip).or_insert_with(|| name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_name_addresses() {
        let n = HostNames::parse_hosts(
            "# demo\n203.0.113.20 login.microsoftonline.com login\n203.0.113.30\tTU-Ingestion.tail1234.ts.net. # funnel\n::1 localhost\nnot-an-ip name\n",
        );
        assert_eq!(
            n.name("203.0.113.20".parse().unwrap()),
            Some("login.microsoftonline.com")
        );
        assert_eq!(
            n.name("::ffff:203.0.113.30".parse().unwrap()),
            Some("tu-ingestion.tail1234.ts.net")
        );
        assert_eq!(n.len(), 3);
    }
}
