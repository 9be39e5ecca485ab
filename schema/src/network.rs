//! The `Network` kind (namespaced, short name `net`): a VXLAN virtual network.
//!
//! Contract: users write `spec` (the netblock, which is immutable, the
//! dhcp/nat/dns switches and how many routed addresses, at most
//! [`MAX_ROUTED_ADDRESSES`]); the network controller writes `status` (the VXLAN id,
//! the floating gateway address, the routed addresses, the nodes the network is
//! plumbed on, the state).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceState};

/// The most routed addresses a network may ask for (`spec.routedAddressCount`).
pub const MAX_ROUTED_ADDRESSES: u32 = 64;

/// The floating network's well-known uid (DESIGN: Resources): the cluster-scoped
/// Network whose netblock holds floating addresses and the network node's egress.
pub const FLOATING_NETWORK_UID: &str = "f10a7f10-a7f1-4a7f-a10a-7f10a7f10a7f";

/// The desired state of a network.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Network",
    namespaced,
    status = "NetworkStatus",
    shortname = "net",
    derive = "PartialEq",
    doc = "A Shaken Fist virtual network.",
    printcolumn = r#"{"name":"Netblock","type":"string","jsonPath":".spec.netblock"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"VXID","type":"integer","jsonPath":".status.vxid"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// The IPv4 CIDR, prefix 8..=30, host bits zero. Immutable.
    pub netblock: String,
    /// Run DHCP (dnsmasq) on the network.
    #[serde(default)]
    pub provide_dhcp: bool,
    /// NAT egress through the network node.
    #[serde(default)]
    pub provide_nat: bool,
    /// Serve DNS (dnsmasq) for the network's instances.
    #[serde(default)]
    pub provide_dns: bool,
    /// How many addresses of the floating network to route to this network
    /// (Shaken Fist's `POST /networks/<ref>/route`); at most 64.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub routed_address_count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The observed state of a network.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: ResourceState,
    /// The VXLAN id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxid: Option<u32>,
    /// The network's address on the floating network (its NAT gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_gateway: Option<String>,
    /// The addresses of the floating network routed to this network, in reservation
    /// order (entry i is held by the IPAM owner `routed_owner_uid(uid, i)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed_addresses: Vec<String>,
    /// The Nodes the network is plumbed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The per-target intent sequence used to name operations.
    #[serde(default)]
    pub intent_seq: u64,
}

/// The IPAM owner uid of a network's `index`th routed address: the floating network's
/// reserve is idempotent per (owner, type), so each routed address has its own owner.
/// A UUID (version 8, from two FNV-1a hashes of the network uid and the index), as
/// sf-database takes owner uids of at most 36 characters; the same inputs always
/// give the same uid.
pub fn routed_owner_uid(network_uid: &str, index: usize) -> String {
    use crate::common::fnv1a;
    let input = format!("{network_uid}/routed/{index}");
    let hi = fnv1a(input.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let lo = fnv1a(input.as_bytes(), 0x8422_2325_cbf2_9ce4 ^ hi);
    format!(
        "{:08x}-{:04x}-8{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0x0fff,
        0x8000 | ((lo >> 48) & 0x3fff),
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::routed_owner_uid;

    #[test]
    fn routed_owner_uids_are_stable_distinct_uuids() {
        let uid = "0cc135c1-db1d-4e3b-b393-5d29b65f3324";
        let a = routed_owner_uid(uid, 0);
        assert_eq!(a, routed_owner_uid(uid, 0));
        assert_ne!(a, routed_owner_uid(uid, 1));
        assert_ne!(a, routed_owner_uid("another", 0));
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(a.matches('-').count(), 4, "{a}");
    }
}
