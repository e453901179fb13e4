//! Address ranges and host names of externals: parsing as written in the file, and matching.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// An IPv4 or IPv6 address range. IPv4-mapped IPv6 ranges (`::ffff:a.b.c.d/n`, n ≥ 96) are
/// stored as IPv4, because the kernel reports a dual-stack socket's IPv4 peer in that form and
/// both spellings must match the same range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x:y::z/n`, or a bare address (a range of one). Refuses ranges with
    /// bits set after the prefix: `10.0.0.1/8` is most likely a typo for `10.0.0.0/8` or for
    /// `10.0.0.1/32`, and guessing either would silently change what the model allows.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{addr}\" is not an IPv4 or IPv6 address"))?;
        let max: u8 = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "prefix length \"/{p}\" must be a number from 0 to {max}"
                    ));
                }
            },
        };
        let cidr = Cidr { network, prefix }.canonical();
        let masked = cidr.masked();
        if masked != cidr {
            return Err(format!(
                "\"{text}\" has address bits set after the prefix; write the network address \
                 ({masked}) or a longer prefix"
            ));
        }
        Ok(cidr)
    }

    fn canonical(self) -> Cidr {
        match self.network {
            IpAddr::V6(v6) if self.prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    network: IpAddr::V4(v4),
                    prefix: self.prefix - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    fn masked(self) -> Cidr {
        let network = match self.network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask_u32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask_u128(self.prefix))),
        };
        Cidr { network, ..self }
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the range; an IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => a.to_bits() & mask_u32(self.prefix) == n.to_bits(),
            (IpAddr::V6(n), IpAddr::V6(a)) => a.to_bits() & mask_u128(self.prefix) == n.to_bits(),
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A host pattern of an external, normalized: lowercase, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(String),
    /// `*.suffix`: any name with at least one more label in front of `suffix`, not `suffix`
    /// itself (the usual certificate-wildcard reading, extended to any depth).
    Wildcard { suffix: String },
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let name = normalize_host(text);
        if name.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "\"{text}\" is an address, not a host name; list it under cidrs instead"
            ));
        }
        let (wildcard, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        if let Err(why) = check_dns_name(rest) {
            let example = if wildcard {
                ""
            } else {
                " or \"*.example.com\""
            };
            return Err(format!(
                "\"{text}\" is not a valid host name ({why}); write a name like \"api.example.com\"{example}"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard {
                suffix: rest.to_owned(),
            }
        } else {
            HostPattern::Exact(rest.to_owned())
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard { suffix } => write!(f, "*.{suffix}"),
        }
    }
}

/// DNS names compare case-insensitively, and `name.` is the same name as `name`.
pub fn normalize_host(host: &str) -> String {
    host.trim()
        .strip_suffix('.')
        .unwrap_or(host.trim())
        .to_ascii_lowercase()
}

/// RFC 1123 host name rules: labels of 1–63 letters, digits and hyphens, not starting or ending
/// with a hyphen, 253 characters in all. Underscores are accepted because real service names
/// (`_sip._tcp...`) use them.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_ranges() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.255.7")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(
            c.contains(ip("::ffff:10.1.2.3")),
            "v4-mapped v6 counts as v4"
        );
        assert!(!c.contains(ip("2001:db8::1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
    }

    #[test]
    fn ipv6_ranges() {
        let c = Cidr::parse("2603:1000::/25").unwrap();
        assert!(c.contains(ip("2603:1006:2000::1")));
        assert!(!c.contains(ip("2603:1100::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let all = Cidr::parse("::/0").unwrap();
        assert!(all.contains(ip("2001:db8::1")));
        assert!(
            !all.contains(ip("::ffff:10.0.0.1")),
            "a v4-mapped address is IPv4, outside ::/0"
        );
    }

    #[test]
    fn v4_mapped_ranges_are_stored_as_v4() {
        let c = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.9.9.9")));
    }

    #[test]
    fn bad_ranges_say_what_to_write() {
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "\"10.0.0.1/8\" has address bits set after the prefix; write the network address (10.0.0.0/8) or a longer prefix"
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/33").unwrap_err(),
            "prefix length \"/33\" must be a number from 0 to 32"
        );
        assert_eq!(
            Cidr::parse("2001:db8::/129").unwrap_err(),
            "prefix length \"/129\" must be a number from 0 to 128"
        );
        assert_eq!(
            Cidr::parse("10.0.0/8").unwrap_err(),
            "\"10.0.0\" is not an IPv4 or IPv6 address"
        );
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            HostPattern::parse("Login.MicrosoftOnline.com.").unwrap(),
            HostPattern::Exact("login.microsoftonline.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.ts.net").unwrap(),
            HostPattern::Wildcard {
                suffix: "ts.net".into()
            }
        );
        assert_eq!(
            HostPattern::parse("10.0.0.1").unwrap_err(),
            "\"10.0.0.1\" is an address, not a host name; list it under cidrs instead"
        );
        assert_eq!(
            HostPattern::parse("a.*.com").unwrap_err(),
            "\"a.*.com\" is not a valid host name (only letters, digits, '-' and '.' are allowed); write a name like \"api.example.com\" or \"*.example.com\""
        );
        assert_eq!(
            HostPattern::parse("*").unwrap_err(),
            "\"*\" is not a valid host name (only letters, digits, '-' and '.' are allowed); write a name like \"api.example.com\" or \"*.example.com\""
        );
        assert_eq!(
            HostPattern::parse("*.").unwrap_err(),
            "\"*.\" is not a valid host name (only letters, digits, '-' and '.' are allowed); write a name like \"api.example.com\" or \"*.example.com\""
        );
    }
}
