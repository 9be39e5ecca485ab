//! The `Network` kind (namespaced, short name `net`): a VXLAN virtual network.
//!
//! Contract: users write `spec` (the netblock, which is immutable, and the
//! dhcp/nat/dns switches); the network controller writes `status` (the VXLAN id, the
//! floating gateway address, the nodes the network is plumbed on, the state).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceState};

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
    /// The Nodes the network is plumbed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// The per-target intent sequence used to name operations.
    #[serde(default)]
    pub intent_seq: u64,
}
