//! Agent-side views of the kernel types: `aya::Pod` and conversions to std types.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    DnsOffsets, DnsResponseHead, FAMILY_V4, FlowCounters, FlowEvent, FlowKey, Outcome, SockOffsets,
};

macro_rules! pod {
    ($($t:ty),*) => {$(
        #[expect(unsafe_code, reason = "aya::Pod marks the map layouts as plain old data")]
        // SAFETY: each type is `#[repr(C)]`, made only of integers and byte arrays, laid out
        // without implicit padding (checked by `layouts_have_no_padding`), so every bit
        // pattern is a valid value.
        unsafe impl aya::Pod for $t {}
    )*};
}
pod!(
    FlowKey,
    FlowCounters,
    FlowEvent,
    SockOffsets,
    DnsResponseHead,
    DnsOffsets
);

fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Lays an address out the way the kernel program stores it in a [`FlowKey`].
pub fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let ip = ip.to_canonical();
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(v6) => (crate::FAMILY_V6, v6.octets()),
    }
}

impl FlowKey {
    pub fn local_ip(&self) -> IpAddr {
        addr(self.family, self.local_addr)
    }
    pub fn remote_ip(&self) -> IpAddr {
        addr(self.family, self.remote_addr)
    }
    pub fn is_connect(&self) -> bool {
        self.direction == crate::DIRECTION_CONNECT
    }
}

/// The printable part of a kernel `comm` (NUL-terminated, at most 16 bytes), borrowed from
/// `comm` when it is valid UTF-8 (without allocating).
pub fn comm_text(comm: &[u8; 16]) -> std::borrow::Cow<'_, str> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    std::string::String::from_utf8_lossy(&comm[..end])
}

impl FlowCounters {
    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<FlowKey>(), 8 + 4 + 2 + 1 + 1 + 16 + 16);
        assert_eq!(
            size_of::<FlowCounters>(),
            8 + 8 + 8 * Outcome::COUNT + 8 + 16
        );
        assert_eq!(
            size_of::<FlowEvent>(),
            size_of::<FlowKey>() + 8 + 8 + 16 + 4 + 4
        );
        assert_eq!(size_of::<SockOffsets>(), 4 * 16);
        assert_eq!(
            size_of::<DnsResponseHead>(),
            8 + 4 + 2 + 2 + 1 + 1 + 6 + 16 + 16
        );
    }

    #[test]
    fn v4_mapped_addresses_are_laid_out_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let (family, bytes) = addr_bytes(mapped);
        assert_eq!(family, FAMILY_V4);
        assert_eq!(addr(family, bytes), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            addr_bytes(v6),
            (
                crate::FAMILY_V6,
                "fd00::1".parse::<Ipv6Addr>().unwrap().octets()
            )
        );
    }

    #[test]
    fn failed_connects_are_classified_by_errno() {
        assert_eq!(Outcome::of_failed_connect(0), Outcome::Aborted);
        assert_eq!(Outcome::of_failed_connect(111), Outcome::Refused);
        assert_eq!(Outcome::of_failed_connect(110), Outcome::TimedOut);
        assert_eq!(Outcome::of_failed_connect(113), Outcome::Unreachable);
        assert_eq!(Outcome::of_failed_connect(101), Outcome::Unreachable);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(b"curl");
        assert_eq!(comm_text(&c), "curl");
        assert_eq!(comm_text(b"0123456789abcdef"), "0123456789abcdef");
    }
}
