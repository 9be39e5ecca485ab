//! The `Artifact` kind (namespaced, short name `art`) and the `Blob` kind (cluster
//! scoped, short name `blob`).
//!
//! Contract: an Artifact is a named, versioned image (or snapshot, label, other)
//! whose versions point at Blobs; users write the Artifact's `spec`, the artifact
//! controller fetches and writes `status.versions`. A Blob is the stored bytes: it
//! has no namespace of its own but records `ownerNamespace`, and tenants never list
//! another namespace's Blobs. Blobs are written by controllers and agents only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ResourceState, string_enum};

string_enum! {
    /// What an artifact holds.
    pub enum ArtifactType: "artifact type", default = Image {
        /// A disk image fetched from `sourceUrl`.
        Image => "image",
        /// A snapshot of an instance disk.
        Snapshot => "snapshot",
        /// A label: a name pointing at a blob chosen by the user.
        Label => "label",
        /// `other`: anything else (named `Misc` because `Other(String)` holds
        /// unknown values).
        Misc => "other",
    }
}

/// Shaken Fist's default number of versions kept.
pub const DEFAULT_MAX_VERSIONS: u32 = 3;

fn default_max_versions() -> u32 {
    DEFAULT_MAX_VERSIONS
}

/// The desired state of an artifact.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Artifact",
    namespaced,
    status = "ArtifactStatus",
    shortname = "art",
    derive = "PartialEq",
    doc = "A Shaken Fist artifact: a named, versioned image, snapshot or label.",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.artifactType"}"#,
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.sourceUrl"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactSpec {
    /// Where the bytes come from: `http(s)://` or `file://`; snapshots and labels
    /// use Shaken Fist's internal `sf://` form.
    pub source_url: String,
    /// What the artifact holds.
    #[serde(default)]
    pub artifact_type: ArtifactType,
    /// Visible to every namespace (set by the system namespace only).
    #[serde(default)]
    pub shared: bool,
    /// How many versions to keep, at least 1.
    #[serde(default = "default_max_versions")]
    pub max_versions: u32,
}

/// The observed state of an artifact.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: ResourceState,
    /// The versions kept, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<ArtifactVersion>,
    /// The per-target intent sequence used to name operations.
    #[serde(default)]
    pub intent_seq: u64,
}

/// One version of an artifact.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactVersion {
    /// The version index, from 1, never reused.
    pub index: u32,
    /// The Blob's name (its UUID).
    pub blob: String,
    /// Size in bytes.
    pub size: u64,
    /// When the version was recorded.
    pub created: DateTime<Utc>,
}

/// The description of a blob.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Blob",
    status = "BlobStatus",
    shortname = "blob",
    derive = "PartialEq",
    doc = "Stored bytes behind artifact versions (cluster scoped).",
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.ownerNamespace"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Refs","type":"integer","jsonPath":".status.referenceCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobSpec {
    /// The namespace whose artifact created the blob.
    pub owner_namespace: String,
    /// The expected size in bytes, when known up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The MIME type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// Where the bytes came from (a URL, or the snapshot or screenshot source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The observed state of a blob.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BlobStatus {
    /// The `metadata.generation` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: ResourceState,
    /// The size in bytes as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Checksums by algorithm (`sha256`, ...), lowercase hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// The Nodes holding a replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// How many artifact versions use the blob (instance disks backed by it are
    /// protected by the agent, which refuses to remove a file in use).
    #[serde(default)]
    pub reference_count: u64,
}
