//! [`Action`]: what a plan asks the apply stage to do.
//!
//! Contract:
//! - A plan is a `Vec<Action>` already in apply order (see [`Action::phase`]): the
//!   finalizer first, then placement, addresses (floating ones too), aborts, new operations, releases
//!   and writes of other objects (Blobs), status writes, finalizer removal (or the
//!   object's own deletion) and finally a requeue hint. Apply executes the
//!   actions in order and stops at the first failure; the next reconcile re-plans from
//!   what was really written. Consecutive status actions ([`Action::is_status`]) may be
//!   merged into one status patch.
//! - Every action is idempotent when applied again: `EnqueueOperation` names are
//!   deterministic (a repeat is AlreadyExists, which apply treats as success),
//!   `BumpIntentSeq` sets an absolute value, reserves and releases are idempotent per
//!   owner at sf-database.
//! - At most one `SetState` per plan, always a legal transition from the observed state.
//! - [`Action::Requeue`] is a hint, not a write: a plan whose only action is a requeue
//!   changes nothing ([`Action::is_write`]).
//! - Actions serialize (camelCase, tagged by `action`) for `sf plan` output.

use serde::Serialize;
use sf_schema::ResourceState;
use sf_schema::artifact::ArtifactVersion;
use sf_schema::common::ConditionStatus;
use sf_schema::common::ObjectRef;
use sf_schema::instance::InstanceState;
use sf_schema::node::NodeState;
use sf_schema::operation::{OperationType, Priority};

use crate::instance::ReservedAddress;

/// The finalizer every reconciled kind carries until its cleanup is done.
pub const FINALIZER: &str = "shakenfist.io/cleanup";

/// A state to write to `status.state`: the kind decides which enum.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StateValue {
    /// An Instance state.
    Instance(InstanceState),
    /// A Network, NetworkInterface (or other [`ResourceState`] kind) state.
    Resource(ResourceState),
    /// A Node state.
    Node(NodeState),
}

impl StateValue {
    /// The wire form, e.g. `created`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Instance(s) => s.as_str(),
            Self::Resource(s) => s.as_str(),
            Self::Node(s) => s.as_str(),
        }
    }
}

/// One step for the apply stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    /// Add [`FINALIZER`] to `metadata.finalizers`.
    EnsureFinalizer,
    /// Reserve the network's network/broadcast/gateway addresses and allocate its
    /// VXLAN id (sf-database `PrepareNetwork`, idempotent); write `status.vxid`.
    PrepareNetwork,
    /// Write the placement to `status.node`. Emitted once; never changed afterwards.
    Schedule {
        /// The chosen Node.
        node: String,
    },
    /// No node fits: record an event and the scheduler metric. The `Scheduled`
    /// condition travels in a separate [`Action::SetCondition`].
    Unschedulable {
        /// Why, per node (see [`crate::scheduler::Unschedulable`]).
        reason: String,
    },
    /// Reserve an address for a NetworkInterface (sf-database `ReserveAddress`, type
    /// `instance`, owner = the interface). Apply creates the NetworkInterface object
    /// named `interface` (owned by its instance) first when it does not exist yet, and
    /// writes the address to its `status.ipv4`.
    ReserveAddress {
        /// The NetworkInterface name (boot interfaces: [`crate::instance::boot_interface_name`]).
        interface: String,
        /// The Network's name.
        network: String,
        /// A fixed address; `None` for the next free one.
        address: Option<String>,
    },
    /// Reserve an address on the floating network (sf-database `ReserveAddress`, type
    /// `floating`, owner = the reconciled object, so a repeat returns the same
    /// address) and write it at once, before any operation of the plan is created:
    /// a Network's `status.floatingGateway` (its NAT gateway), a NetworkInterface's
    /// `status.floatingAddress`.
    ReserveFloating,
    /// Release the reconciled object's floating address into the deletion halo and
    /// clear the status field [`Action::ReserveFloating`] wrote.
    ReleaseFloating {
        /// The floating address held.
        address: String,
    },
    /// Reserve the Network's `index`th routed address on the floating network (type
    /// `routed`, owner [`sf_schema::network::routed_owner_uid`], so a repeat returns
    /// the same address) and append it to `status.routedAddresses` at once.
    ReserveRouted {
        /// Its position in `status.routedAddresses` (= the entries already held).
        index: u32,
    },
    /// Release the Network's `index`th routed address into the deletion halo and drop
    /// it (the last entry) from `status.routedAddresses`.
    ReleaseRouted {
        /// Its position in `status.routedAddresses`.
        index: u32,
        /// The address held.
        address: String,
    },
    /// Release addresses into the deletion halo (sf-database `ReleaseAddress`).
    ReleaseAddresses {
        /// What to release.
        addresses: Vec<ReservedAddress>,
    },
    /// Create a ClusterOperation (sf-database `CreateOperations`, all of a plan's
    /// operations in one call). AlreadyExists is success: it is the same intent.
    EnqueueOperation {
        /// `<kind-lower>-<target name>-<intent seq>-<op short>` ([`crate::ops::operation_name`]).
        name: String,
        /// What to do.
        operation_type: OperationType,
        /// The object acted on (`uid` may be empty in a dry run of a new object).
        target: ObjectRef,
        /// The Node whose agent runs it; `None` for the cluster queue.
        node: Option<String>,
        /// Operations (by name) that must complete first.
        depends_on: Vec<String>,
        /// Queue priority.
        priority: Priority,
        /// Type-specific arguments.
        payload: serde_json::Value,
    },
    /// Abort the target's queued and executing operations (sf-database `Abort`), which
    /// always keeps `instance_snapshot` operations so they complete first.
    AbortOperations {
        /// Always `true`: snapshots are never aborted (DESIGN invariant 6).
        except_snapshots: bool,
        /// Recorded on the aborted operations.
        reason: String,
    },
    /// Move every Instance placed on `node` that is not yet in error, deleted or being
    /// deleted to `<state>-error` with `reason` as its error message (their own plans
    /// then move them to `error`).
    MarkInstancesError {
        /// The Node.
        node: String,
        /// The error message.
        reason: String,
    },
    /// Write `status.state` (and `status.errorMessage` when `message` is set).
    SetState {
        /// The new state.
        state: StateValue,
        /// For error states: why.
        message: Option<String>,
    },
    /// Write `status.nodes` of a Network (the nodes it is plumbed on), sorted.
    SetNodes {
        /// The full list.
        nodes: Vec<String>,
    },
    /// Write `status.versions` of an Artifact (the full list, oldest first).
    SetVersions {
        /// The versions kept.
        versions: Vec<ArtifactVersion>,
    },
    /// Create or update the cluster-scoped Blob `name` (an artifact controller write):
    /// apply creates it when missing (spec: owner namespace, size, MIME type, source)
    /// and merges its status: `state: created`, `size`, `checksums.sha512`, `nodes`
    /// (a union with what is stored: replicas are only ever added here) and
    /// `referenceCount`. A write that changes nothing is skipped.
    WriteBlob {
        /// The Blob's name (a UUID).
        name: String,
        /// The namespace of the artifact it belongs to.
        owner_namespace: String,
        /// Where the bytes came from (the fetch's source URL).
        source: Option<String>,
        /// The MIME type the fetch reported.
        mime_type: Option<String>,
        /// Size in bytes, when known.
        size: Option<u64>,
        /// Lower-case hex SHA-512, when known.
        sha512: Option<String>,
        /// The nodes holding a replica, sorted.
        nodes: Vec<String>,
        /// How many artifact versions use it.
        reference_count: u64,
    },
    /// Insert or replace a condition (sf-schema `set_condition`; apply adds
    /// `observedGeneration` and the transition time).
    SetCondition {
        /// The condition type.
        #[serde(rename = "type")]
        type_: String,
        /// True, False or Unknown.
        status: ConditionStatus,
        /// CamelCase reason.
        reason: String,
        /// Detail.
        message: String,
    },
    /// Write `status.intentSeq = to` (an absolute value, so applying it twice is
    /// harmless). Emitted with the operations named at `to`, and alone to catch up
    /// when an operation at a higher sequence exists (a crash between creating it
    /// and writing status).
    BumpIntentSeq {
        /// The new sequence.
        to: u64,
    },
    /// Remove [`FINALIZER`]; the object disappears once no finalizer remains.
    RemoveFinalizer,
    /// Delete the reconciled object itself (a collected Blob's record, once it has
    /// been kept long enough); an object already gone is success.
    DeleteObject,
    /// Reconcile again after this long even without a change (time-based waits).
    Requeue {
        /// Seconds.
        after_secs: u64,
    },
}

impl Action {
    /// The apply phase; plans are sorted by it (stable, so order within a phase is
    /// the planner's).
    pub fn phase(&self) -> u8 {
        match self {
            Self::EnsureFinalizer => 0,
            Self::PrepareNetwork => 1,
            Self::Schedule { .. } | Self::Unschedulable { .. } => 2,
            Self::ReserveAddress { .. } | Self::ReserveFloating | Self::ReserveRouted { .. } => 3,
            Self::AbortOperations { .. } => 4,
            Self::EnqueueOperation { .. } => 5,
            Self::MarkInstancesError { .. } => 6,
            Self::ReleaseAddresses { .. }
            | Self::ReleaseFloating { .. }
            | Self::ReleaseRouted { .. }
            | Self::WriteBlob { .. } => 7,
            Self::BumpIntentSeq { .. } => 8,
            Self::SetState { .. } => 9,
            Self::SetNodes { .. } | Self::SetVersions { .. } => 10,
            Self::SetCondition { .. } => 11,
            Self::RemoveFinalizer | Self::DeleteObject => 12,
            Self::Requeue { .. } => 13,
        }
    }

    /// False only for [`Action::Requeue`], which changes nothing.
    pub fn is_write(&self) -> bool {
        !matches!(self, Self::Requeue { .. })
    }

    /// Whether the action only writes the reconciled object's status.
    pub fn is_status(&self) -> bool {
        (8..=11).contains(&self.phase()) || matches!(self, Self::Schedule { .. })
    }

    /// The operation's name and type for [`Action::EnqueueOperation`].
    pub fn operation(&self) -> Option<(&str, &OperationType)> {
        match self {
            Self::EnqueueOperation {
                name,
                operation_type,
                ..
            } => Some((name, operation_type)),
            _ => None,
        }
    }
}

/// Collects actions; [`Plan::finish`] sorts them into apply order, with one
/// [`Action::Requeue`] at the soonest time asked for by [`Plan::requeue_in`].
#[derive(Debug, Default)]
pub(crate) struct Plan {
    actions: Vec<Action>,
    requeue: Option<u64>,
}

impl Plan {
    pub(crate) fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    pub(crate) fn extend(&mut self, actions: impl IntoIterator<Item = Action>) {
        self.actions.extend(actions);
    }

    pub(crate) fn push_opt(&mut self, action: Option<Action>) {
        if let Some(action) = action {
            self.actions.push(action);
        }
    }

    /// Whether an operation is already planned.
    pub(crate) fn enqueues(&self) -> bool {
        self.actions.iter().any(|a| a.operation().is_some())
    }

    /// Asks for a reconcile again in `secs` (the soonest of all asks wins).
    pub(crate) fn requeue_in(&mut self, secs: u64) {
        self.requeue = Some(self.requeue.map_or(secs, |r| r.min(secs)));
    }

    pub(crate) fn finish(mut self) -> Vec<Action> {
        if let Some(after_secs) = self.requeue {
            self.actions.push(Action::Requeue { after_secs });
        }
        self.actions.sort_by_key(Action::phase);
        self.actions
    }
}

/// The whole plan of an object's first reconcile: the finalizer (when missing) and the
/// intent-sequence pin of [`crate::ops::pin_intent_seq`]; operations are named from
/// the next reconcile on.
pub(crate) fn pinned(finalizers: Option<&Vec<String>>, pin: Action) -> Vec<Action> {
    let mut plan = Plan::default();
    if !has_finalizer(finalizers) {
        plan.push(Action::EnsureFinalizer);
    }
    plan.push(pin);
    plan.finish()
}

/// Whether `finalizers` holds [`FINALIZER`].
pub(crate) fn has_finalizer(finalizers: Option<&Vec<String>>) -> bool {
    finalizers.is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// A `SetCondition` unless `conditions` already holds exactly this (type, status,
/// reason, message): re-planning with nothing changed emits nothing.
pub(crate) fn condition(
    conditions: &[sf_schema::Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
) -> Option<Action> {
    let message = message.into();
    let same = sf_schema::common::find_condition(conditions, type_)
        .is_some_and(|c| c.status == status && c.reason == reason && c.message == message);
    (!same).then(|| Action::SetCondition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
    })
}
