//! The `Node` kind (cluster scoped, short name `sfnode`): a machine of the cloud.
//!
//! Contract: operators write `spec` (schedulable, roles); the agent on the node
//! writes its observed facts to `status` (fqdn, mesh address, capacity, usage,
//! versions, last seen) and the node controller owns `status.state`, whose allowed
//! moves are [`NodeState::can_transition_to`] (shakenfist.md §2, plus the deliberate
//! `missing → stopping`). Nodes are never hard-deleted.

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, default_true, string_enum};

string_enum! {
    /// What a node does.
    pub enum NodeRole: "node role" {
        /// Runs instances.
        Hypervisor => "hypervisor",
        /// The network node: NAT, floating addresses, dnsmasq.
        Network => "network",
        /// Stores blobs.
        Storage => "storage",
        /// Serves the API.
        Api => "api",
    }
}

string_enum! {
    /// The node lifecycle state.
    pub enum NodeState: "node state", default = Initial {
        /// Registered, not yet checked in.
        Initial => "initial",
        /// Checking in and healthy.
        Created => "created",
        /// No check-in for 120 s.
        Missing => "missing",
        /// Draining for shutdown.
        Stopping => "stopping",
        /// Stopped cleanly.
        Stopped => "stopped",
        /// Missing for ten times that, or broken; its instances go to error.
        Error => "error",
        /// Up but impaired.
        Degraded => "degraded",
        /// Removed from service (may come back as created).
        Deleted => "deleted",
    }
}

impl NodeState {
    /// Whether `self → next` is allowed: the table of shakenfist.md §2 (newest
    /// `node.py`) plus `missing → stopping`, a deliberate divergence so a node that
    /// went missing can still be drained. Staying in the same known state is
    /// allowed; `Other` values never transition.
    pub fn can_transition_to(&self, next: &NodeState) -> bool {
        use NodeState as S;
        if !self.is_known() || !next.is_known() {
            return false;
        }
        if self == next {
            return true;
        }
        let allowed: &[NodeState] = match self {
            S::Initial => &[S::Created, S::Error, S::Missing, S::Degraded],
            S::Created => &[S::Deleted, S::Error, S::Missing, S::Stopping, S::Degraded],
            S::Stopping => &[S::Stopped, S::Deleted, S::Error, S::Degraded, S::Created],
            S::Stopped => &[S::Created, S::Deleted, S::Error, S::Degraded],
            S::Degraded => &[S::Created, S::Deleted, S::Error, S::Missing, S::Stopping],
            S::Error => &[S::Created, S::Deleted, S::Degraded],
            S::Missing => &[S::Created, S::Deleted, S::Error, S::Degraded, S::Stopping],
            S::Deleted => &[S::Created],
            S::Other(_) => &[],
        };
        allowed.contains(next)
    }
}

/// The desired state of a node.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Node",
    status = "NodeStatus",
    shortname = "sfnode",
    derive = "PartialEq",
    doc = "A machine of the Shaken Fist cloud (cluster scoped).",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Schedulable","type":"boolean","jsonPath":".spec.schedulable"}"#,
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".status.usage.instances"}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.lastSeen"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// Whether the scheduler may place new instances here.
    #[serde(default = "default_true")]
    pub schedulable: bool,
    /// What the node does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<NodeRole>,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            schedulable: true,
            roles: Vec::new(),
        }
    }
}

/// The observed state of a node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: NodeState,
    /// The node's fully qualified domain name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// The node's address on the VXLAN mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// What the node has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeCapacity>,
    /// What is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<NodeUsage>,
    /// Software versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<NodeVersions>,
    /// The agent's last check-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
}

/// A node's resources.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCapacity {
    /// CPU threads.
    pub cpu_threads: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Instance storage in GiB.
    pub disk_gib: u64,
}

/// A node's resource usage, as last reported.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    /// One-minute load average.
    pub load_1m: f64,
    /// Memory in use, MiB.
    pub memory_used_mib: u64,
    /// Instance storage in use, GiB.
    pub disk_used_gib: u64,
    /// Disk busy time, percent.
    pub disk_busy_percent: f64,
    /// Instances running.
    pub instances: u32,
}

/// Software versions on a node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeVersions {
    /// QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
    /// libvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<String>,
    /// sf-agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_from(from: &str) -> Vec<&'static str> {
        let from = NodeState::parse(from);
        NodeState::known()
            .iter()
            .copied()
            .filter(|to| from.as_str() != *to && from.can_transition_to(&NodeState::parse(to)))
            .collect()
    }

    #[test]
    fn node_state_machine_matches_shaken_fist_plus_missing_to_stopping() {
        assert_eq!(
            allowed_from("initial"),
            ["created", "missing", "error", "degraded"]
        );
        assert_eq!(
            allowed_from("created"),
            ["missing", "stopping", "error", "degraded", "deleted"]
        );
        assert_eq!(
            allowed_from("stopping"),
            ["created", "stopped", "error", "degraded", "deleted"]
        );
        assert_eq!(
            allowed_from("stopped"),
            ["created", "error", "degraded", "deleted"]
        );
        assert_eq!(
            allowed_from("degraded"),
            ["created", "missing", "stopping", "error", "deleted"]
        );
        assert_eq!(allowed_from("error"), ["created", "degraded", "deleted"]);
        assert_eq!(
            allowed_from("missing"),
            ["created", "stopping", "error", "degraded", "deleted"]
        );
        assert_eq!(allowed_from("deleted"), ["created"]);
    }

    #[test]
    fn missing_to_stopping_is_the_deliberate_divergence() {
        assert!(NodeState::Missing.can_transition_to(&NodeState::Stopping));
        assert!(!NodeState::Missing.can_transition_to(&NodeState::Stopped));
        assert!(!NodeState::Deleted.can_transition_to(&NodeState::Missing));
    }

    #[test]
    fn node_state_self_and_unknown() {
        assert!(NodeState::Created.can_transition_to(&NodeState::Created));
        let odd = NodeState::parse("rebooting");
        assert!(!odd.can_transition_to(&NodeState::Created));
        assert!(!NodeState::Created.can_transition_to(&odd));
    }

    #[test]
    fn node_spec_is_schedulable_by_default() {
        let spec: NodeSpec = serde_json::from_str("{}").unwrap();
        assert!(spec.schedulable);
        assert_eq!(spec, NodeSpec::default());
    }
}
