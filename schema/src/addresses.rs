//! Which IP addresses are internal to the cloud, and CIDR blocks that name exceptions.
//!
//! Contract (no I/O):
//! - [`is_internal`] is true for every address a tenant-supplied URL must not reach:
//!   loopback, unspecified, RFC 1918 private, link-local (cloud metadata services live
//!   at 169.254.169.254), carrier-grade NAT (100.64.0.0/10), `0.0.0.0/8`, IETF
//!   protocol assignments (192.0.0.0/24), benchmarking (198.18.0.0/15), reserved
//!   (240.0.0.0/4, which some clouds use inside), broadcast, multicast, and on IPv6
//!   also unique-local (`fc00::/7`), site-local (`fec0::/10`), and every IPv6 form
//!   that carries an internal IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//!   IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and the local-use
//!   `64:ff9b:1::/48`, 6to4 `2002::/16`). It knows nothing of a site's own public
//!   addresses: callers add those (the agent refuses its host's addresses and an
//!   operator's list).
//! - [`inet_aton`] reads an IPv4 address the way glibc's resolver does (`127.1`,
//!   `0x7f.1`, `2130706433`), so a check on a URL's host sees the address the
//!   resolver would connect to.
//! - [`Cidr`] parses `address/prefix` (IPv4 or IPv6; host bits must be zero) and tells
//!   whether it contains an address; operators use it to allow internal mirrors.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is internal (see the module contract).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [h1, h2] = hi.to_be_bytes();
        let [l1, l2] = lo.to_be_bytes();
        internal_v4(Ipv4Addr::new(h1, h2, l1, l2))
    };
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // Site-local (deprecated, still routed by some stacks).
        || (segments[0] & 0xffc0) == 0xfec0
        || ip.to_ipv4_mapped().is_some_and(internal_v4)
        // IPv4-compatible `::a.b.c.d` (deprecated).
        || (segments[..6] == [0; 6] && embedded(segments[6], segments[7]))
        // NAT64 well-known prefix 64:ff9b::/96.
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(segments[6], segments[7]))
        // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): the IPv4 address is the last 32
        // bits under the common /96 layout.
        || (segments[..3] == [0x64, 0xff9b, 1] && embedded(segments[6], segments[7]))
        // 6to4 2002:aabb:ccdd::/48 carries aa.bb.cc.dd.
        || (segments[0] == 0x2002 && embedded(segments[1], segments[2]))
}

/// An IPv4 address as C's `inet_aton` (glibc's resolver) reads it: one to four parts,
/// each decimal, octal (a leading `0`) or hex (`0x`), the last filling the rest.
pub fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = text
        .split('.')
        .map(|p| {
            let lower = p.to_ascii_lowercase();
            if let Some(hex) = lower.strip_prefix("0x") {
                if hex.is_empty() {
                    Some(0)
                } else {
                    u32::from_str_radix(hex, 16).ok()
                }
            } else if lower.len() > 1 && lower.starts_with('0') {
                u32::from_str_radix(&lower[1..], 8).ok()
            } else {
                lower.parse::<u32>().ok()
            }
        })
        .collect::<Option<_>>()?;
    let value = match parts.as_slice() {
        [a] => *a,
        [a, b] if *a < 256 && *b < 1 << 24 => a << 24 | b,
        [a, b, c] if *a < 256 && *b < 256 && *c < 1 << 16 => a << 24 | b << 16 | c,
        [a, b, c, d] if [a, b, c, d].iter().all(|p| **p < 256) => a << 24 | b << 16 | c << 8 | d,
        _ => return None,
    };
    Some(Ipv4Addr::from(value))
}

/// An address block, `address/prefix` (IPv4 or IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.1.0.0/16` or `fd00::/8`; a bare address is a single-address block.
    /// Host bits must be zero.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("'{address}' is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{p}' is not a prefix length (0 to {max})"))?,
        };
        let cidr = Self { network, prefix };
        if cidr.masked(network) != network {
            return Err(format!(
                "'{text}' has host bits set; the block is {}/{prefix}",
                cidr.masked(network)
            ));
        }
        Ok(cidr)
    }

    /// Whether the block contains `ip` (an IPv4-mapped IPv6 address counts as its IPv4
    /// address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }

    /// Whether the two blocks share an address (one holds the other's network).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn internal_addresses_of_both_families() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "64:ff9b:1::a00:1",
            "192.0.0.170",
            "198.18.0.1",
            "198.19.255.1",
            "240.0.0.1",
        ] {
            assert!(is_internal(ip(internal)), "{internal} is internal");
        }
        for external in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:0101:0101::1",
            "192.0.2.1",
            "198.20.0.1",
            "223.255.255.1",
        ] {
            assert!(!is_internal(ip(external)), "{external} is external");
        }
    }

    #[test]
    fn inet_aton_reads_what_the_resolver_reads() {
        assert_eq!(inet_aton("127.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("0x7f.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("2130706433"), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(inet_aton("012.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(inet_aton("mirror.example.com"), None);
        assert_eq!(inet_aton("1.2.3.4.5"), None);
    }

    #[test]
    fn cidr_blocks_parse_and_contain() {
        let block = Cidr::parse("10.20.0.0/16").expect("a block");
        assert!(block.contains(ip("10.20.255.1")));
        assert!(block.contains(ip("::ffff:10.20.0.9")));
        assert!(!block.contains(ip("10.21.0.1")));
        assert!(!block.contains(ip("fd00::1")));
        let single = Cidr::parse("192.168.7.7").expect("one address");
        assert!(single.contains(ip("192.168.7.7")));
        assert!(!single.contains(ip("192.168.7.8")));
        let v6 = Cidr::parse("fd00:1::/32").expect("a v6 block");
        assert!(v6.contains(ip("fd00:1::5")));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("1.2.3.4"))
        );
        assert_eq!(block.to_string(), "10.20.0.0/16");
        assert!(block.overlaps(&Cidr::parse("10.20.8.0/24").expect("inside")));
        assert!(Cidr::parse("10.0.0.0/8").expect("around").overlaps(&block));
        assert!(!block.overlaps(&Cidr::parse("10.21.0.0/16").expect("beside")));
        assert!(Cidr::parse("10.20.0.1/16").is_err_and(|e| e.contains("host bits")));
        assert!(Cidr::parse("10.0.0.0/33").is_err_and(|e| e.contains("prefix length")));
        assert!(Cidr::parse("mirror/8").is_err_and(|e| e.contains("not an IP address")));
    }
}
