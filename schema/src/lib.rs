//! The Shaken Fist data contract: resource types, validation and CRD generation.
//!
//! Contract: this crate does no I/O. Every resource kind of DESIGN.md is defined here
//! with its spec (desired state, written by users) and status (observed state, written
//! by controllers and agents); everything that reads or writes a resource uses these
//! types. Rust fields keep Shaken Fist's snake_case names; JSON and YAML use
//! camelCase. Specs reject unknown fields; string enums accept any string so that
//! [`validation`] can report every bad value with its field path.
//!
//! Modules: [`addresses`] (internal addresses, CIDR blocks), [`common`] (conditions, references, string enums), one module per kind
//! ([`namespace`], [`instance`], [`network`], [`interface`], [`ipam`], [`artifact`]
//! with Artifact and Blob, [`node`], [`operation`]), [`validation`] and [`crd`].

pub mod addresses;
pub mod artifact;
pub mod common;
pub mod crd;
pub mod devices;
pub mod instance;
pub mod interface;
pub mod ipam;
pub mod namespace;
pub mod network;
pub mod node;
pub mod operation;
pub mod selector;
pub mod snapshot;
pub mod validation;

pub use artifact::{Artifact, ArtifactSpec, ArtifactStatus, Blob, BlobSpec, BlobStatus};
pub use common::{Condition, ConditionStatus, ObjectRef, ResourceState, StringEnum, set_condition};
pub use crd::{all_crds, crd_yaml};
pub use instance::{Instance, InstanceSpec, InstanceStatus};
pub use interface::{NetworkInterface, NetworkInterfaceSpec, NetworkInterfaceStatus};
pub use ipam::{IPAMLease, IPAMLeaseSpec, IPAMLeaseStatus};
pub use namespace::{Namespace, NamespaceSpec, NamespaceStatus};
pub use network::{Network, NetworkSpec, NetworkStatus};
pub use node::{Node, NodeSpec, NodeStatus};
pub use operation::{ClusterOperation, ClusterOperationSpec, ClusterOperationStatus};
pub use validation::{FieldError, FieldErrorReason};

/// The API group of every kind.
pub const GROUP: &str = "shakenfist.io";
/// The API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in objects.
pub const API_VERSION: &str = "shakenfist.io/v1alpha1";
