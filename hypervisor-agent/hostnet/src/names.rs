//! Interface and namespace names, and the small IPv4 netblock type.
//!
//! Contract: every interface name returned here is at most 15 characters (IFNAMSIZ-1).
//! Per-network namespace names are `<node_tag>-<vxid:06x>` where [`node_tag`] is `sf`
//! followed by 6 hex digits of the FNV-1a hash of the node name: 15 characters, unique per
//! (node, network), so two nodes sharing one machine (tests, `make up`) never collide.

use std::net::Ipv4Addr;

/// The VXLAN interface of a network: `vxlan-<vxid:06x>`.
pub fn vxlan_name(vxid: u32) -> String {
    format!("vxlan-{vxid:06x}")
}

/// The bridge of a network: `br-vxlan-<vxid:06x>`.
pub fn bridge_name(vxid: u32) -> String {
    format!("br-vxlan-{vxid:06x}")
}

/// The bridge end of the router veth (network node): `veth-<vxid:06x>-o`.
pub fn router_outer_name(vxid: u32) -> String {
    format!("veth-{vxid:06x}-o")
}

/// The namespace end of the router veth, holding `.1` (network node): `veth-<vxid:06x>-i`.
pub fn router_inner_name(vxid: u32) -> String {
    format!("veth-{vxid:06x}-i")
}

/// The host end of the egress veth (network node): `egr-<vxid:06x>-o`.
pub fn egress_outer_name(vxid: u32) -> String {
    format!("egr-{vxid:06x}-o")
}

/// The namespace end of the egress veth (network node): `egr-<vxid:06x>-i`.
pub fn egress_inner_name(vxid: u32) -> String {
    format!("egr-{vxid:06x}-i")
}

/// The bridge joining the outer egress veths: `egr-br-<egress NIC>` truncated to 15
/// characters, or `egr-br` without an egress NIC.
pub fn egress_bridge_name(egress_interface: Option<&str>) -> String {
    match egress_interface {
        Some(nic) if !nic.is_empty() => {
            let mut n = format!("egr-br-{nic}");
            n.truncate(15);
            n
        }
        _ => "egr-br".to_string(),
    }
}

/// `sf` + 6 hex digits of the 32-bit FNV-1a hash of `node_name` (8 characters).
pub fn node_tag(node_name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in node_name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("sf{:06x}", h & 0x00ff_ffff)
}

/// The per-network namespace on the network node: `<node_tag>-<vxid:06x>` (15 characters).
pub fn network_namespace_name(node_name: &str, vxid: u32) -> String {
    format!("{}-{vxid:06x}", node_tag(node_name))
}

/// The vxid of a `br-vxlan-XXXXXX` bridge name, or `None` for any other name.
pub fn parse_vxid_from_bridge(name: &str) -> Option<u32> {
    parse_hex6(name.strip_prefix("br-vxlan-")?)
}

/// The vxid of a `vxlan-XXXXXX` interface name, or `None` for any other name.
pub fn parse_vxid_from_vxlan(name: &str) -> Option<u32> {
    parse_hex6(name.strip_prefix("vxlan-")?)
}

fn parse_hex6(s: &str) -> Option<u32> {
    if s.len() == 6 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// An IPv4 netblock, `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netblock {
    /// The network address (host bits cleared).
    pub network: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Netblock {
    /// Parses `a.b.c.d/len`; host bits are cleared. Prefixes longer than /30 are refused
    /// (no room for a router and a guest).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("netblock {s:?} has no /prefix"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("netblock {s:?}: bad address: {e}"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|e| format!("netblock {s:?}: bad prefix: {e}"))?;
        if prefix > 30 {
            return Err(format!("netblock {s:?}: prefix must be at most /30"));
        }
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask_bits(prefix));
        Ok(Self { network, prefix })
    }

    fn mask_bits(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// The netmask, `255.255.255.0`.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.prefix))
    }

    /// The first host address (`.1`): the router.
    pub fn router(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask_bits(self.prefix))
    }

    /// Whether `a` is inside the netblock.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether the two netblocks share an address (one holds the other's network).
    pub fn overlaps(&self, other: &Netblock) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl std::fmt::Display for Netblock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        for vxid in [0, 1, 0xabcdef, 0xffffff] {
            for n in [
                vxlan_name(vxid),
                bridge_name(vxid),
                router_outer_name(vxid),
                router_inner_name(vxid),
                egress_outer_name(vxid),
                egress_inner_name(vxid),
                network_namespace_name("a-very-long-hypervisor-name.example.com", vxid),
            ] {
                assert!(n.len() <= 15, "{n} is longer than 15");
            }
        }
        assert_eq!(vxlan_name(0x2a), "vxlan-00002a");
        assert_eq!(bridge_name(0x2a), "br-vxlan-00002a");
        assert_eq!(egress_bridge_name(Some("enp0s31f6long")), "egr-br-enp0s31f");
        assert_eq!(egress_bridge_name(None), "egr-br");
    }

    #[test]
    fn node_tags_differ_per_node() {
        assert_ne!(
            network_namespace_name("hv-1", 7),
            network_namespace_name("hv-2", 7)
        );
        assert_eq!(
            network_namespace_name("hv-1", 7),
            network_namespace_name("hv-1", 7)
        );
        assert!(network_namespace_name("hv-1", 7).ends_with("-000007"));
    }

    #[test]
    fn netblocks_overlap_when_one_holds_the_others_network() {
        let nb = |s: &str| Netblock::parse(s).expect("netblock");
        let floating = nb("192.168.20.0/24");
        assert!(floating.overlaps(&nb("192.168.20.0/30")));
        assert!(nb("192.168.0.0/16").overlaps(&floating));
        assert!(floating.overlaps(&floating));
        assert!(!floating.overlaps(&nb("192.168.21.0/24")));
        assert!(!floating.overlaps(&nb("10.0.0.0/8")));
    }

    #[test]
    fn vxid_round_trips() {
        assert_eq!(parse_vxid_from_bridge(&bridge_name(0x12ab)), Some(0x12ab));
        assert_eq!(parse_vxid_from_vxlan(&vxlan_name(0xffffff)), Some(0xffffff));
        assert_eq!(parse_vxid_from_bridge("br-vxlan-xyz"), None);
        assert_eq!(parse_vxid_from_bridge("docker0"), None);
    }

    #[test]
    fn netblock_parses() {
        let n = Netblock::parse("10.0.0.77/24").expect("valid");
        assert_eq!(n.network, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(n.router(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert!(n.contains(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(!n.contains(Ipv4Addr::new(10, 0, 1, 9)));
        assert_eq!(n.to_string(), "10.0.0.0/24");
        assert!(Netblock::parse("10.0.0.0").is_err());
        assert!(Netblock::parse("10.0.0.0/31").is_err());
        assert!(Netblock::parse("10.0.0.300/24").is_err());
    }
}
