//! The `ClusterOperation` kind (namespaced, short name `op`): one unit of work for
//! the cluster queue or a node's agent.
//!
//! Contract: controllers create operations (tenants never write them); the name
//! derives from the target and its `status.intentSeq`, so a repeated emit after a
//! crash is AlreadyExists. `spec.node` absent means the cluster queue. Agents and
//! the reaper own `status` (state, attempts, claim, error report, result). `payload`
//! and `result` are free-form JSON objects (`x-kubernetes-preserve-unknown-fields`).

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Condition, ObjectRef, empty_object, optional_preserve_unknown_object, preserve_unknown_object,
    string_enum,
};

string_enum! {
    /// What an operation does.
    pub enum OperationType: "operation type" {
        /// Create an instance on its node.
        InstanceCreate => "instance_create",
        /// Power an instance on (recreates the config drive).
        InstancePowerOn => "instance_power_on",
        /// Power an instance off.
        InstancePowerOff => "instance_power_off",
        /// Pause an instance.
        InstancePause => "instance_pause",
        /// Unpause an instance.
        InstanceUnpause => "instance_unpause",
        /// Reboot an instance (payload `{"hard": bool}`).
        InstanceReboot => "instance_reboot",
        /// Take a screenshot into a new blob.
        InstanceScreenshot => "instance_screenshot",
        /// Snapshot disks into artifacts; completes even when the instance is deleted.
        InstanceSnapshot => "instance_snapshot",
        /// Hot-plug a NetworkInterface.
        InterfaceHotPlug => "interface_hot_plug",
        /// Unplug a deleted hot-plugged NetworkInterface from its instance (payload
        /// `{"interface", "instance", "macaddr"}`).
        InterfaceHotUnplug => "interface_hot_unplug",
        /// Delete an instance from its node.
        InstanceDelete => "instance_delete",
        /// Plumb a network on a node.
        NetworkCreateOnNode => "network_create_on_node",
        /// Rewrite a network's dnsmasq configuration.
        NetworkUpdateDhcp => "network_update_dhcp",
        /// Remove a network.
        NetworkDelete => "network_delete",
        /// Fetch an artifact's source into a blob.
        ArtifactFetch => "artifact_fetch",
        /// Remove an unreferenced Blob's file from one node (payload `{"blob"}`); the
        /// agent keeps a file an instance still uses and says so in the result.
        BlobDelete => "blob_delete",
    }
}

string_enum! {
    /// Queue priority.
    pub enum Priority: "priority", default = Normal {
        /// Ahead of normal work.
        High => "high",
        /// The default.
        Normal => "normal",
        /// Behind normal work.
        Low => "low",
    }
}

string_enum! {
    /// The operation lifecycle state.
    pub enum OperationState: "operation state", default = Queued {
        /// Waiting to be claimed.
        Queued => "queued",
        /// Claimed and running.
        Executing => "executing",
        /// Done.
        Complete => "complete",
        /// Failed; see `errorReport`.
        Error => "error",
        /// Cancelled (for example by a delete).
        Abort => "abort",
    }
}

/// The desired operation.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "ClusterOperation",
    namespaced,
    status = "ClusterOperationStatus",
    shortname = "op",
    derive = "PartialEq",
    doc = "A unit of work for the cluster queue or a node's agent.",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.operationType"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.name"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","jsonPath":".status.attempts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterOperationSpec {
    /// What to do.
    pub operation_type: OperationType,
    /// The object acted on.
    pub target: ObjectRef,
    /// The Node whose agent runs it; absent means the cluster queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Queue priority.
    #[serde(default)]
    pub priority: Priority,
    /// Operations (by name, same namespace) that must complete first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Type-specific arguments, a JSON object.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub payload: serde_json::Value,
}

/// The observed state of an operation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterOperationStatus {
    /// The `metadata.generation` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: OperationState,
    /// Claims so far; after `CLUSTER_OP_MAX_ATTEMPTS` the operation goes to error.
    #[serde(default)]
    pub attempts: u32,
    /// The claimer (node name) holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_report: Option<ErrorReport>,
    /// Type-specific output, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_preserve_unknown_object")]
    pub result: Option<serde_json::Value>,
    /// When execution started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// Why an operation failed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReport {
    /// A stable CamelCase code, e.g. `DomainStartFailed`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether trying again may succeed.
    #[serde(default)]
    pub retryable: bool,
}
