//! The nftables rulesets of a network namespace (pure rendering).
//!
//! Contract: one nftables table `ip sf_nat` per network namespace. With provide_nat it
//! masquerades the netblock out of the inner egress veth; each floating address is
//! DNATed to its guest on the way in and SNATed on the way out. The rendered text is a
//! full `nft -f` script that first creates-then-deletes the table, so applying it is
//! idempotent and atomic; with nothing to translate there is no table at all.
//!
//! And one table `inet sf_filter` ([`render_filter_ruleset`]) for what guests may do
//! through the namespace: to the namespace itself only DHCP, DNS and ICMP (nothing
//! else listens there); forwarded only with a source of the netblock or a routed
//! address (no spoofed source leaves un-NATed), never to the addresses the node keeps
//! for itself (the floating network's router address, the mesh address: a guest
//! reaching them would reach the node's own services and its VXLAN port), and no
//! IPv6 (guest networks here are IPv4).

use std::net::Ipv4Addr;

use crate::FloatingIp;
use crate::names::{egress_inner_name, router_inner_name};

/// The nft table holding the guest filter rules.
pub const FILTER_TABLE: &str = "sf_filter";

/// The `nft -f -` script of the guest filter of network `vxid` (see the module
/// contract): `routed` are the addresses routed to the network's guests, `refused`
/// the node's own addresses no guest may reach.
pub fn render_filter_ruleset(
    vxid: u32,
    netblock: &str,
    routed: &[Ipv4Addr],
    refused: &[Ipv4Addr],
) -> String {
    let guests = router_inner_name(vxid);
    let mut lines = vec![
        format!("table inet {FILTER_TABLE} {{}}"),
        format!("delete table inet {FILTER_TABLE}"),
        format!("table inet {FILTER_TABLE} {{"),
        "  chain input {".to_owned(),
        "    type filter hook input priority filter; policy accept;".to_owned(),
        format!("    iifname \"{guests}\" ct state established,related accept"),
        format!("    iifname \"{guests}\" udp dport {{ 53, 67 }} accept"),
        format!("    iifname \"{guests}\" tcp dport 53 accept"),
        format!("    iifname \"{guests}\" meta l4proto {{ icmp, ipv6-icmp }} accept"),
        format!("    iifname \"{guests}\" drop"),
        "  }".to_owned(),
        "  chain forward {".to_owned(),
        "    type filter hook forward priority filter; policy accept;".to_owned(),
        format!("    iifname \"{guests}\" meta nfproto ipv6 drop"),
    ];
    let mut sources = vec![netblock.to_owned()];
    sources.extend(routed.iter().map(ToString::to_string));
    lines.push(format!(
        "    iifname \"{guests}\" ip saddr != {{ {} }} drop",
        sources.join(", ")
    ));
    if !refused.is_empty() {
        let refused: Vec<String> = refused.iter().map(ToString::to_string).collect();
        lines.push(format!(
            "    iifname \"{guests}\" ip daddr {{ {} }} drop",
            refused.join(", ")
        ));
    }
    lines.push("  }".to_owned());
    lines.push("}".to_owned());
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// The nft table holding the NAT rules.
pub const NAT_TABLE: &str = "sf_nat";

/// The `nft -f -` script for the namespace of network `vxid`.
pub fn render_nat_ruleset(
    vxid: u32,
    netblock: &str,
    provide_nat: bool,
    floating: &[FloatingIp],
) -> String {
    let mut s = format!("table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\n");
    if !provide_nat && floating.is_empty() {
        return s;
    }
    let egr = egress_inner_name(vxid);
    s.push_str(&format!("table ip {NAT_TABLE} {{\n"));
    s.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n",
    );
    for f in floating {
        s.push_str(&format!(
            "    ip daddr {} dnat to {}\n",
            f.floating, f.inner
        ));
    }
    s.push_str("  }\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for f in floating {
        s.push_str(&format!(
            "    ip saddr {} oifname \"{egr}\" snat to {}\n",
            f.inner, f.floating
        ));
    }
    if provide_nat {
        s.push_str(&format!(
            "    ip saddr {netblock} oifname \"{egr}\" masquerade\n"
        ));
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_filter_renders() {
        let s = render_filter_ruleset(
            0x2a,
            "10.0.0.0/24",
            &[Ipv4Addr::new(192, 168, 20, 9)],
            &[Ipv4Addr::new(192, 168, 20, 1), Ipv4Addr::new(192, 0, 2, 1)],
        );
        assert!(s.starts_with("table inet sf_filter {}\ndelete table inet sf_filter\n"));
        assert!(
            s.contains("iifname \"veth-00002a-i\" udp dport { 53, 67 } accept"),
            "{s}"
        );
        assert!(s.contains("iifname \"veth-00002a-i\" drop\n"), "{s}");
        assert!(
            s.contains("ip saddr != { 10.0.0.0/24, 192.168.20.9 } drop"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr { 192.168.20.1, 192.0.2.1 } drop"),
            "{s}"
        );
        let bare = render_filter_ruleset(0x2a, "10.0.0.0/24", &[], &[]);
        assert!(!bare.contains("ip daddr"), "{bare}");
    }

    #[test]
    fn nat_rule_renders() {
        let s = render_nat_ruleset(0x2a, "10.0.0.0/24", true, &[]);
        assert!(s.starts_with("table ip sf_nat {}\ndelete table ip sf_nat\n"));
        assert!(s.contains("ip saddr 10.0.0.0/24 oifname \"egr-00002a-i\" masquerade"));
        let off = render_nat_ruleset(0x2a, "10.0.0.0/24", false, &[]);
        assert!(!off.contains("masquerade"));
        assert!(!off.contains("chain"));
    }

    #[test]
    fn floating_ips_render_dnat_and_snat() {
        let f = FloatingIp {
            floating: Ipv4Addr::new(192, 168, 20, 7),
            inner: Ipv4Addr::new(10, 0, 0, 9),
        };
        let s = render_nat_ruleset(0x2a, "10.0.0.0/24", false, &[f]);
        assert!(s.contains("ip daddr 192.168.20.7 dnat to 10.0.0.9"));
        assert!(s.contains("ip saddr 10.0.0.9 oifname \"egr-00002a-i\" snat to 192.168.20.7"));
        assert!(!s.contains("masquerade"));
    }
}
