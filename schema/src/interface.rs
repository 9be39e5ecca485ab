//! The `NetworkInterface` kind (namespaced, short name `netif`): one NIC of an
//! instance on a network, created for each `spec.networks[]` entry of an Instance
//! and by hot-plug.
//!
//! Contract: `spec` names the instance and network and, optionally, a fixed address,
//! MAC and model; the IPAM controller allocates the address and writes it, with the
//! MAC and the floating address, to `status`; the agent writes `status.node`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceState, string_enum};

string_enum! {
    /// The emulated NIC model.
    pub enum NicModel: "nic model", default = Virtio {
        /// virtio-net.
        Virtio => "virtio",
        /// Intel e1000.
        E1000 => "e1000",
        /// NE2000 PCI.
        Ne2kPci => "ne2k_pci",
        /// AMD PCnet.
        Pcnet => "pcnet",
        /// Realtek RTL8139.
        Rtl8139 => "rtl8139",
    }
}

/// The desired state of a network interface.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "NetworkInterface",
    namespaced,
    status = "NetworkInterfaceStatus",
    shortname = "netif",
    derive = "PartialEq",
    doc = "A network interface of a Shaken Fist instance.",
    printcolumn = r#"{"name":"Instance","type":"string","jsonPath":".spec.instance"}"#,
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"IPv4","type":"string","jsonPath":".status.ipv4"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkInterfaceSpec {
    /// The Instance's name.
    pub instance: String,
    /// The Network, by name or UUID.
    pub network: String,
    /// A fixed IPv4 address; absent means allocate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A fixed MAC address; absent means generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddr: Option<String>,
    /// The NIC model.
    #[serde(default)]
    pub model: NicModel,
    /// Give the interface a floating address.
    #[serde(default)]
    pub float: bool,
    /// The position on the instance; absent means after the existing ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
}

/// The observed state of a network interface.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterfaceStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: ResourceState,
    /// The allocated IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// The floating address, when floated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_address: Option<String>,
    /// The MAC address in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddr: Option<String>,
    /// The Node the interface is plumbed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The per-target intent sequence its operations are named with, pinned at the
    /// first reconcile so that an interface re-created under a deleted one's name never
    /// reuses that one's operation names.
    #[serde(default)]
    pub intent_seq: u64,
}

impl NetworkInterface {
    /// The MAC its NIC carries: `status.macaddr`, else `spec.macaddr`, else
    /// [`derived_mac`] of its uid (its name without one). sf-agent plugs with it, and
    /// the DHCP host entry and an unplug name it, so they always agree.
    pub fn mac(&self) -> String {
        self.status
            .as_ref()
            .and_then(|s| s.macaddr.clone())
            .or_else(|| self.spec.macaddr.clone())
            .unwrap_or_else(|| {
                derived_mac(
                    self.metadata
                        .uid
                        .as_deref()
                        .or(self.metadata.name.as_deref())
                        .unwrap_or_default(),
                )
            })
    }
}

/// The MAC of an interface that names none: a locally administered unicast address
/// derived from `seed` (its uid), stable. sf-cluster writes it into `status.macaddr`
/// and sf-agent derives the same one when it runs before that write lands, so the
/// domain's NIC, the DHCP host entry and the status always agree.
pub fn derived_mac(seed: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod mac_tests {
    use super::derived_mac;

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        let a = derived_mac("uid-1");
        assert_eq!(a, derived_mac("uid-1"));
        assert_ne!(a, derived_mac("uid-2"));
        assert!(a.starts_with("02:00:"), "{a}");
        assert_eq!(a.len(), 17);
        // Pinned: both daemons, and every stored status, depend on this derivation.
        assert_eq!(derived_mac(""), "02:00:cb:f2:9c:e4");
        assert_eq!(derived_mac("uid-1"), "02:00:8a:6b:10:25");
    }

    #[test]
    fn an_interface_s_mac_is_status_then_spec_then_derived_from_its_uid() {
        let mut n: super::NetworkInterface = serde_json::from_value(serde_json::json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "NetworkInterface",
            "metadata": {"name": "web-1-0", "namespace": "demo", "uid": "uid-1"},
            "spec": {"instance": "web-1", "network": "lan"}
        }))
        .expect("interface");
        assert_eq!(n.mac(), derived_mac("uid-1"));
        n.metadata.uid = None;
        assert_eq!(n.mac(), derived_mac("web-1-0"));
        n.spec.macaddr = Some("02:00:00:00:00:0a".into());
        assert_eq!(n.mac(), "02:00:00:00:00:0a");
        n.status = Some(super::NetworkInterfaceStatus {
            macaddr: Some("02:00:00:00:00:0b".into()),
            ..Default::default()
        });
        assert_eq!(n.mac(), "02:00:00:00:00:0b");
    }
}
