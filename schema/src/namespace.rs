//! The `Namespace` kind (cluster scoped, short name `sfns`): a Shaken Fist tenancy.
//!
//! Contract: `spec.trust` lists the namespaces whose callers may read this one (the
//! only cross-namespace access there is); `system` is the admin namespace. Only the
//! system namespace creates namespaces; the controller writes `status.state`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceState};

/// The name of the admin namespace.
pub const SYSTEM_NAMESPACE: &str = "system";

/// The desired state of a namespace.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Namespace",
    status = "NamespaceStatus",
    shortname = "sfns",
    derive = "PartialEq",
    doc = "A Shaken Fist namespace (tenancy).",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSpec {
    /// Namespaces whose callers may read this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust: Vec<String>,
}

/// The observed state of a namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state (created → deleted).
    #[serde(default)]
    pub state: ResourceState,
}
