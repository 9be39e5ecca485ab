//! The NAT ruleset of a network namespace (pure rendering).
//!
//! Contract: one nftables table `ip sf_nat` per network namespace. With provide_nat it
//! masquerades the netblock out of the inner egress veth; each floating address is
//! DNATed to its guest on the way in and SNATed on the way out. The rendered text is a
//! full `nft -f` script that first creates-then-deletes the table, so applying it is
//! idempotent and atomic; with nothing to translate there is no table at all.

use crate::FloatingIp;
use crate::names::egress_inner_name;

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
    use std::net::Ipv4Addr;

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
