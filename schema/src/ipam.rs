//! The `IPAMLease` kind (namespaced, plural `ipamleases`, short name `lease`): one
//! address held in a network's IPAM.
//!
//! Contract: read-only to everyone but sf-database, which writes the lease in the
//! same transaction as the Reserve or Release that causes it. A released address
//! stays as a lease in phase `halo` until `status.haloUntil`, so it is not handed
//! out again too soon.

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, ObjectRef, string_enum};

string_enum! {
    /// Why an address is held (Shaken Fist's IPAM reservation types).
    pub enum ReservationType: "reservation type", default = Unknown {
        /// The network address itself.
        Network => "network",
        /// The broadcast address.
        Broadcast => "broadcast",
        /// The gateway (the network node's address on the network).
        Gateway => "gateway",
        /// A floating address.
        Floating => "floating",
        /// A routed address.
        Routed => "routed",
        /// An instance's interface.
        Instance => "instance",
        /// Released and resting in the deletion halo.
        DeletionHalo => "deletion-halo",
        /// Held for a reason not recorded.
        Unknown => "unknown",
    }
}

string_enum! {
    /// The phase of a lease.
    pub enum LeasePhase: "lease phase", default = Held {
        /// Held by its owner.
        Held => "held",
        /// Released; unavailable until `haloUntil`.
        Halo => "halo",
    }
}

/// The lease, as sf-database records it.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "IPAMLease",
    plural = "ipamleases",
    namespaced,
    status = "IPAMLeaseStatus",
    shortname = "lease",
    derive = "PartialEq",
    doc = "An address held in a Shaken Fist network's IPAM (written by sf-database only).",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.reservationType"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IPAMLeaseSpec {
    /// The Network's name.
    pub network: String,
    /// The Network's `metadata.uid` (the IPAM shares its network's UUID).
    pub network_uid: String,
    /// The IPv4 address held.
    pub address: String,
    /// Why it is held.
    #[serde(default)]
    pub reservation_type: ReservationType,
    /// The object holding it (an interface, a network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ObjectRef>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The lease's phase.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IPAMLeaseStatus {
    /// The `metadata.generation` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Held or in the halo (this kind's `state`).
    #[serde(default)]
    pub phase: LeasePhase,
    /// When a halo lease ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halo_until: Option<DateTime<Utc>>,
}
