//! The plan stage of sf-cluster's reconcilers, and of `sf plan` (dry run).
//!
//! Contract:
//! - Every plan function is pure: `(desired, observed, context) -> Vec<Action>`. No
//!   I/O, no clock (the caller passes `now` in [`PlanContext`]), no randomness; the
//!   same inputs always give the same plan, in apply order ([`action`]).
//! - Level-triggered and idempotent (DESIGN invariant 5): with nothing changed a plan
//!   is empty (or only a [`Action::Requeue`] hint for time-based waits); re-planning
//!   after a crash reproduces the same operation names ([`ops`]).
//! - The observe stage gathers the `*Observation` structs (documented field by
//!   field); the apply stage executes the actions in order; the status stage adds
//!   `observedGeneration`. Plans read `metadata.generation` against
//!   `status.observedGeneration` to tell a spec change (a reason to retry a failed
//!   operation) from a re-run.
//!
//! Modules: [`action`] (the actions), [`ops`] (operation names and intent sequences),
//! one per reconciler ([`instance`], [`network`], [`interface`], [`node`],
//! [`artifact`], [`blob`]) and the [`scheduler`].

pub mod action;
#[cfg(feature = "config")]
pub mod args;
pub mod artifact;
pub mod blob;
pub mod instance;
pub mod interface;
pub mod network;
pub mod node;
pub mod ops;
pub mod scheduler;

#[cfg(test)]
mod testutil;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use action::{Action, FINALIZER, StateValue};
pub use artifact::{ArtifactObservation, plan_artifact};
pub use blob::{BlobObservation, plan_blob};
pub use instance::{InstanceObservation, plan_instance};
pub use interface::{InterfaceObservation, plan_interface};
pub use network::{NetworkObservation, plan_network};
pub use node::{NodeConfig, plan_node};
pub use ops::ObservedOperation;
pub use scheduler::{SchedulerConfig, resource_summary, schedule};

/// What every plan may read besides desired and observed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanContext {
    /// The time of this reconcile.
    pub now: DateTime<Utc>,
    /// The scheduler's settings.
    pub scheduler: SchedulerConfig,
    /// How long after an instance power operation completes its observed power state
    /// may still be stale (the agent reports before completing, but the caches lag):
    /// within it a mismatch waits, after it the operation is re-issued (30 s).
    pub settle_secs: u64,
    /// How long after a failed network operation it is retried (60 s).
    pub retry_backoff_secs: u64,
    /// Requeue hint while waiting for something without a watch (30 s).
    pub wait_secs: u64,
    /// Requeue hint for an unschedulable instance (60 s); capacity changes also
    /// trigger a reconcile.
    pub unschedulable_retry_secs: u64,
    /// How long a Blob nothing uses is kept before its files are removed (3600 s).
    pub blob_grace_secs: u64,
    /// How long after a refused or failed `blob_delete` it is tried again (600 s).
    pub blob_retry_secs: u64,
    /// How long a collected Blob (`deleted`, its files gone) is kept as a record
    /// before it is deleted (86 400 s).
    pub blob_record_secs: u64,
    /// How long a Blob kept in MariaDB (no replica on any node: a screenshot) lives
    /// after its creation before it is deleted, bytes and all (86 400 s).
    pub screenshot_retention_secs: u64,
}

impl PlanContext {
    /// The defaults at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            scheduler: SchedulerConfig::default(),
            settle_secs: 30,
            retry_backoff_secs: 60,
            wait_secs: 30,
            unschedulable_retry_secs: 60,
            blob_grace_secs: 3600,
            blob_retry_secs: 600,
            blob_record_secs: 86_400,
            screenshot_retention_secs: 86_400,
        }
    }
}
