//! The instance reconciler's plan: [`plan_instance`].
//!
//! Contract:
//! - Finalizer first. State machine (shakenfist.md §2), one transition per plan:
//!   initial → preflight → creating → created; `<state>-error` → error; an instance in
//!   error stays there (never deleted automatically); delete_wait → deleted.
//! - Preflight: placement by the [`scheduler`](crate::scheduler) written once to
//!   `status.node` and never changed (an unusable node makes the instance wait with a
//!   condition, it is not moved); no fit → `Unschedulable` and condition `Scheduled`
//!   False with the per-node reasons, retried on a requeue; an address per boot
//!   interface ([`boot_interface_name`]); artifacts ready; each network prepared and
//!   on the node (a `network_create_on_node` is emitted here when none is under way,
//!   and `instance_create` depends on it); the latest blob of each artifact a disk
//!   uses on the node (an `artifact_fetch` of that blob, with its sha512, named
//!   `instance-<name>-<seq>-fetch-<artifact>` and targeting the Artifact, is emitted
//!   when the blob is neither there nor being fetched there, and `instance_create`
//!   depends on it or on the fetch under way). `instance_create`'s payload pins those
//!   blobs (`blobs: {<image reference>: <blob>}`), so a version that lands between
//!   the replication and the create does not send the agent looking for a blob this
//!   node does not hold.
//! - Created: power operations only when desired (`spec.powerState`) and observed
//!   (`status.powerState`) differ, one at a time (none while any power operation is
//!   outstanding): paused/running → `instance_pause`, off/running|paused|crashed →
//!   `instance_power_off`, on/off → `instance_power_on` (payload
//!   `recreateConfigDrive: true`), on/paused → `instance_unpause`, on/crashed → a
//!   re-issued `instance_power_on` with a new intent sequence, paused/off → power on
//!   first. A completed operation whose effect is not yet observed waits
//!   `settle_secs` before it is re-issued; a failed one is re-issued only after a spec
//!   change (`metadata.generation > status.observedGeneration`). New operations
//!   depend on the instance's other outstanding operations (snapshots, screenshots).
//! - Delete (deletionTimestamp): abort the outstanding operations except snapshots,
//!   wait for the snapshots, enqueue `instance_delete` (skipped when the instance was
//!   never placed or its node is gone), and once it completed release the addresses
//!   into the halo, `deleted`, remove the finalizer. A failed delete goes to
//!   `delete_wait-error` → error and waits for an operator.
//! - Nothing changed → empty plan.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sf_schema::common::{ConditionStatus, ObjectRef};
use sf_schema::instance::{DesiredPowerState, Instance, InstanceState, ObservedPowerState};
use sf_schema::node::NodeState;
use sf_schema::operation::{OperationState, OperationType, Priority};

use crate::PlanContext;
use crate::action::{Action, Plan, StateValue, condition, has_finalizer, pinned};
use crate::artifact::{BlobReplica, ReplicaOnNode, replica_on_node};
use crate::network::{NetworkView, OnNode, network_on_node};
use crate::ops::{Namer, ObservedOperation, latest, pin_intent_seq, short_name};
use crate::scheduler::{InstanceRequest, NodeView, schedule};

/// The kind name used in operation names and targets.
pub const INSTANCE_KIND: &str = "Instance";

/// The name of the NetworkInterface for `spec.networks[index]` of `instance`.
pub fn boot_interface_name(instance: &str, index: usize) -> String {
    format!("{instance}-{index}")
}

/// An address held by one of the instance's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservedAddress {
    /// The NetworkInterface (the lease owner).
    pub interface: String,
    /// The Network's name.
    pub network: String,
    /// The IPv4 address.
    pub address: String,
}

/// Whether an artifact a disk uses is ready on the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactReadiness {
    /// The Artifact's name (as in `spec.disks[].base`).
    pub name: String,
    /// It has a usable version.
    pub ready: bool,
    /// Its latest version's blob, to replicate to the instance's node when missing
    /// there; `None` when not known (nothing is replicated).
    #[serde(default)]
    pub replica: Option<BlobReplica>,
    /// Its blobs can be copied to other nodes ([`crate::artifact::copyable`]); false
    /// for a snapshot's, which stay where they were taken.
    #[serde(default = "yes")]
    pub copyable: bool,
}

/// Where an instance must go when a disk base's blob is never copied between nodes
/// (a snapshot's, [`crate::artifact::copyable`]): the nodes holding every such blob,
/// and why the others are refused. `None`: anywhere.
fn holding_nodes(artifacts: &[ArtifactReadiness]) -> Option<(Vec<String>, String)> {
    let mut nodes: Option<BTreeSet<String>> = None;
    let mut names = Vec::new();
    for artifact in artifacts.iter().filter(|a| !a.copyable) {
        let Some(replica) = &artifact.replica else {
            continue;
        };
        names.push(artifact.name.clone());
        let here: BTreeSet<String> = replica.nodes.iter().cloned().collect();
        nodes = Some(match nodes {
            None => here,
            Some(n) => n.intersection(&here).cloned().collect(),
        });
    }
    nodes.map(|n| {
        let why = format!(
            "does not hold the blob of {} (snapshots stay on the node that took them)",
            names.join(", ")
        );
        (n.into_iter().collect(), why)
    })
}

fn yes() -> bool {
    true
}

/// What observe() gathers for an instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceObservation {
    /// The operations the instance controller created for it, any state, oldest
    /// first ([`crate::ops`]).
    pub operations: Vec<ObservedOperation>,
    /// The addresses held by its interfaces (boot and hot-plugged).
    pub addresses: Vec<ReservedAddress>,
    /// The state of the Node in `status.node`; `None` when unplaced or the Node
    /// object does not exist.
    #[serde(default)]
    pub node_state: Option<NodeState>,
    /// Scheduling candidates (every Node, with committed resources); only read while
    /// the instance is unplaced.
    #[serde(default)]
    pub nodes: Vec<NodeView>,
    /// The artifacts its disks use.
    #[serde(default)]
    pub artifacts: Vec<ArtifactReadiness>,
    /// The networks of `spec.networks`.
    #[serde(default)]
    pub networks: Vec<NetworkView>,
}

const POWER_FAMILY: [OperationType; 6] = [
    OperationType::InstanceCreate,
    OperationType::InstancePowerOn,
    OperationType::InstancePowerOff,
    OperationType::InstancePause,
    OperationType::InstanceUnpause,
    OperationType::InstanceReboot,
];

fn is_power(op: &ObservedOperation) -> bool {
    POWER_FAMILY.contains(&op.operation_type)
}

/// Operations whose target is the instance itself (sf-database `Abort` covers them).
fn targets_instance(op: &ObservedOperation) -> bool {
    !matches!(
        op.operation_type,
        OperationType::NetworkCreateOnNode
            | OperationType::NetworkUpdateDhcp
            | OperationType::NetworkDelete
            | OperationType::ArtifactFetch
            | OperationType::BlobDelete
    )
}

/// The operation that moves `observed` towards `desired`, if any.
pub fn power_operation(
    desired: &DesiredPowerState,
    observed: Option<&ObservedPowerState>,
) -> Option<OperationType> {
    use DesiredPowerState as D;
    use ObservedPowerState as O;
    match (desired, observed?) {
        (D::On, O::Off | O::Crashed) | (D::Paused, O::Off | O::Crashed) => {
            Some(OperationType::InstancePowerOn)
        }
        (D::On, O::Paused) => Some(OperationType::InstanceUnpause),
        (D::Off, O::Running | O::Paused | O::Crashed) => Some(OperationType::InstancePowerOff),
        (D::Paused, O::Running) => Some(OperationType::InstancePause),
        _ => None,
    }
}

/// A node that can take new work for an instance placed there.
fn usable(state: Option<&NodeState>) -> bool {
    matches!(state, Some(NodeState::Created | NodeState::Degraded))
}

/// A node whose instances are gone with it: no delete operation will ever run there.
fn lost(state: Option<&NodeState>) -> bool {
    matches!(state, None | Some(NodeState::Error | NodeState::Deleted))
}

struct Ctx<'a> {
    desired: &'a Instance,
    observed: &'a InstanceObservation,
    ctx: &'a PlanContext,
    status: sf_schema::InstanceStatus,
    name: String,
    namer: Namer,
    plan: Plan,
    state_set: bool,
}

impl<'a> Ctx<'a> {
    fn set_state(&mut self, to: InstanceState, message: Option<String>) {
        let from = &self.status.state;
        if !self.state_set && *from != to && from.can_transition_to(&to) {
            self.state_set = true;
            self.plan.push(Action::SetState {
                state: StateValue::Instance(to),
                message,
            });
        }
    }

    fn condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: String) {
        let action = condition(&self.status.conditions, type_, status, reason, message);
        self.plan.push_opt(action);
    }

    fn target(&self) -> ObjectRef {
        ObjectRef {
            kind: INSTANCE_KIND.to_owned(),
            name: self.name.clone(),
            namespace: self.desired.metadata.namespace.clone(),
            uid: self.desired.metadata.uid.clone().unwrap_or_default(),
        }
    }

    fn spec_changed(&self) -> bool {
        self.desired.metadata.generation > self.status.observed_generation
    }

    fn latest_of(&self, kind: OperationType) -> Option<&'a ObservedOperation> {
        latest(INSTANCE_KIND, &self.name, &self.observed.operations, |op| {
            op.operation_type == kind
        })
    }

    fn enqueue(
        &mut self,
        kind: OperationType,
        node: &str,
        depends_on: Vec<String>,
        payload: serde_json::Value,
    ) -> String {
        let name = self.namer.next(short_name(&kind));
        let priority = if kind == OperationType::InstanceDelete {
            Priority::High
        } else {
            Priority::Normal
        };
        self.plan.push(Action::EnqueueOperation {
            name: name.clone(),
            operation_type: kind,
            target: self.target(),
            node: Some(node.to_owned()),
            depends_on,
            priority,
            payload,
        });
        name
    }

    fn plan_live(&mut self) {
        if !has_finalizer(self.desired.metadata.finalizers.as_ref()) {
            self.plan.push(Action::EnsureFinalizer);
        }
        match self.status.state.clone() {
            InstanceState::Initial => {
                self.set_state(InstanceState::Preflight, None);
                self.condition("Ready", ConditionStatus::False, "Preflight", String::new());
            }
            InstanceState::Preflight => self.preflight(),
            InstanceState::Creating => self.creating(),
            InstanceState::Created => self.created(),
            InstanceState::PreflightError
            | InstanceState::CreatingError
            | InstanceState::CreatedError
            | InstanceState::DeleteWaitError => self.enter_error(),
            InstanceState::Error => {
                let message = self.status.error_message.clone().unwrap_or_default();
                self.condition("Ready", ConditionStatus::False, "Failed", message);
            }
            InstanceState::DeleteWait | InstanceState::Deleted | InstanceState::Other(_) => {}
        }
    }

    fn enter_error(&mut self) {
        let message = self.status.error_message.clone();
        self.set_state(InstanceState::Error, message.clone());
        self.condition(
            "Ready",
            ConditionStatus::False,
            "Failed",
            message.unwrap_or_default(),
        );
    }

    fn preflight(&mut self) {
        let spec = &self.desired.spec;
        let node = match self.status.node.clone() {
            Some(node) => {
                if !usable(self.observed.node_state.as_ref()) {
                    let state = self
                        .observed
                        .node_state
                        .as_ref()
                        .map_or("gone", |s| s.as_str());
                    self.condition(
                        "Ready",
                        ConditionStatus::False,
                        "NodeUnavailable",
                        format!("placed on {node}, which is {state}; waiting (instances are never moved)"),
                    );
                    self.plan.requeue_in(self.ctx.wait_secs);
                    return;
                }
                node
            }
            None => {
                // Where a snapshot's blob is decides the node: wait until it is known.
                let unknown: Vec<&str> = self
                    .observed
                    .artifacts
                    .iter()
                    .filter(|a| !a.copyable && a.replica.is_none())
                    .map(|a| a.name.as_str())
                    .collect();
                if !unknown.is_empty() {
                    let message = format!(
                        "waiting for artifacts: {} (a snapshot's node decides the placement)",
                        unknown.join(", ")
                    );
                    self.condition(
                        "Ready",
                        ConditionStatus::False,
                        "WaitingForArtifacts",
                        message,
                    );
                    self.plan.requeue_in(self.ctx.wait_secs);
                    return;
                }
                let mut request = InstanceRequest::for_instance(spec);
                request.holding = holding_nodes(&self.observed.artifacts);
                match schedule(&request, &self.observed.nodes, &self.ctx.scheduler) {
                    Ok(placement) => {
                        self.plan.push(Action::Schedule {
                            node: placement.node.clone(),
                        });
                        let message = format!("placed on {}", placement.node);
                        self.condition("Scheduled", ConditionStatus::True, "Placed", message);
                        placement.node
                    }
                    Err(refused) => {
                        let changed = condition(
                            &self.status.conditions,
                            "Scheduled",
                            ConditionStatus::False,
                            "Unschedulable",
                            refused.reason.clone(),
                        );
                        if let Some(changed) = changed {
                            self.plan.push(Action::Unschedulable {
                                reason: refused.reason,
                            });
                            self.plan.push(changed);
                        }
                        self.plan.requeue_in(self.ctx.unschedulable_retry_secs);
                        return;
                    }
                }
            }
        };

        for (index, net) in spec.networks.iter().enumerate() {
            let interface = boot_interface_name(&self.name, index);
            if !self
                .observed
                .addresses
                .iter()
                .any(|a| a.interface == interface)
            {
                self.plan.push(Action::ReserveAddress {
                    interface,
                    network: net.network.clone(),
                    address: net.address.clone(),
                });
            }
        }

        // Created already (a crash between enqueue and the state write): move on.
        if self.latest_of(OperationType::InstanceCreate).is_some() {
            self.set_state(InstanceState::Creating, None);
            self.condition("Ready", ConditionStatus::False, "Creating", String::new());
            return;
        }

        let pending: Vec<&str> = self
            .observed
            .artifacts
            .iter()
            .filter(|a| !a.ready)
            .map(|a| a.name.as_str())
            .collect();
        if !pending.is_empty() {
            let message = format!("waiting for artifacts: {}", pending.join(", "));
            self.condition(
                "Ready",
                ConditionStatus::False,
                "WaitingForArtifacts",
                message,
            );
            self.plan.requeue_in(self.ctx.wait_secs);
            return;
        }

        let mut depends_on = Vec::new();
        let mut network_ops = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for net in &spec.networks {
            if seen.contains(&net.network.as_str()) {
                continue;
            }
            seen.push(&net.network);
            let Some(view) = self
                .observed
                .networks
                .iter()
                .find(|v| v.name == net.network)
            else {
                let message = format!("network {} not found", net.network);
                self.condition(
                    "Ready",
                    ConditionStatus::False,
                    "WaitingForNetwork",
                    message,
                );
                self.plan.requeue_in(self.ctx.wait_secs);
                return;
            };
            let name_if_new = self.namer.next(&format!("netcreate-{}", view.name));
            match network_on_node(view, &node, name_if_new) {
                OnNode::NotPrepared => {
                    let message = format!("network {} is not prepared yet", net.network);
                    self.condition(
                        "Ready",
                        ConditionStatus::False,
                        "WaitingForNetwork",
                        message,
                    );
                    self.plan.requeue_in(self.ctx.wait_secs);
                    return;
                }
                OnNode::Ready => {}
                OnNode::After(op) => depends_on.push(op),
                OnNode::Create(action) => {
                    if let Some((name, _)) = action.operation() {
                        depends_on.push(name.to_owned());
                    }
                    network_ops.push(*action);
                }
            }
        }
        self.plan.extend(network_ops);
        let mut fetch_ops = Vec::new();
        let mut blobs: Vec<&str> = Vec::new();
        // The blob each image reference resolves to, as replicated here: the agent
        // makes the disks from these, not from a version that lands meanwhile.
        let mut pins = serde_json::Map::new();
        for artifact in &self.observed.artifacts {
            let Some(replica) = artifact.replica.as_ref() else {
                continue;
            };
            pins.insert(artifact.name.clone(), json!(replica.blob));
            if blobs.contains(&replica.blob.as_str()) {
                continue;
            }
            blobs.push(&replica.blob);
            let name_if_new = self.namer.next(&format!("fetch-{}", replica.artifact.name));
            match replica_on_node(replica, &node, name_if_new) {
                ReplicaOnNode::Present => {}
                ReplicaOnNode::After(op) => depends_on.push(op),
                ReplicaOnNode::Fetch(action) => {
                    if let Some((name, _)) = action.operation() {
                        depends_on.push(name.to_owned());
                    }
                    fetch_ops.push(*action);
                }
            }
        }
        self.plan.extend(fetch_ops);
        let interfaces: Vec<String> = (0..spec.networks.len())
            .map(|i| boot_interface_name(&self.name, i))
            .collect();
        let mut payload = json!({
            "interfaces": interfaces,
            "powerState": spec.power_state.as_str(),
        });
        if !pins.is_empty() {
            payload["blobs"] = Value::Object(pins);
        }
        self.enqueue(OperationType::InstanceCreate, &node, depends_on, payload);
        self.set_state(InstanceState::Creating, None);
        self.condition("Ready", ConditionStatus::False, "Creating", String::new());
    }

    fn creating(&mut self) {
        let Some(create) = self.latest_of(OperationType::InstanceCreate) else {
            // Never re-emitted from here: the state is written after the operation, so
            // it exists and the observation lags.
            self.condition(
                "Ready",
                ConditionStatus::False,
                "Creating",
                "waiting for the instance_create operation to be observed".into(),
            );
            self.plan.requeue_in(self.ctx.wait_secs);
            return;
        };
        if create.state == OperationState::Complete {
            self.set_state(InstanceState::Created, None);
            self.condition("Ready", ConditionStatus::True, "Created", String::new());
        } else if create.failed() {
            let message = format!(
                "{} {}: {}",
                create.name,
                create.state,
                create.error.as_deref().unwrap_or("no error report")
            );
            self.set_state(InstanceState::CreatingError, Some(message));
        }
    }

    fn created(&mut self) {
        self.condition("Ready", ConditionStatus::True, "Created", String::new());
        let ops = &self.observed.operations;
        if ops.iter().any(|op| op.is_outstanding() && is_power(op)) {
            return; // One at a time: its completion triggers the next reconcile.
        }
        let observed = self.status.power_state.clone();
        let Some(observed) = observed else {
            return; // The agent has not reported yet.
        };
        let desired = self.desired.spec.power_state.clone();
        let Some(kind) = power_operation(&desired, Some(&observed)) else {
            self.condition(
                "PowerSynced",
                ConditionStatus::True,
                "InSync",
                String::new(),
            );
            return;
        };
        let Some(node) = self.status.node.clone() else {
            return;
        };
        let last = latest(INSTANCE_KIND, &self.name, ops, is_power);
        if let Some(last) = last.filter(|op| op.operation_type == kind) {
            if last.state == OperationState::Complete && observed != ObservedPowerState::Crashed {
                let settle = i64::try_from(self.ctx.settle_secs).unwrap_or(i64::MAX);
                let elapsed = last
                    .completed_at
                    .map_or(settle, |t| (self.ctx.now - t).num_seconds());
                if elapsed < settle {
                    self.plan
                        .requeue_in(u64::try_from(settle - elapsed).unwrap_or(1));
                    return;
                }
            }
            if last.failed() && !self.spec_changed() {
                let message = format!(
                    "{} {}: {}",
                    last.name,
                    last.state,
                    last.error.as_deref().unwrap_or("no error report")
                );
                self.condition(
                    "PowerSynced",
                    ConditionStatus::False,
                    "OperationFailed",
                    message,
                );
                return;
            }
        }
        let depends_on = ops
            .iter()
            .filter(|op| op.is_outstanding() && targets_instance(op))
            .map(|op| op.name.clone())
            .collect();
        let payload = if kind == OperationType::InstancePowerOn {
            json!({"recreateConfigDrive": true})
        } else {
            json!({})
        };
        let name = self.enqueue(kind, &node, depends_on, payload);
        let message = format!("{name}: {observed} → {desired}");
        self.condition("PowerSynced", ConditionStatus::False, "Pending", message);
    }

    fn finish_delete(&mut self) {
        if !self.observed.addresses.is_empty() {
            let mut addresses = self.observed.addresses.clone();
            addresses.sort();
            self.plan.push(Action::ReleaseAddresses { addresses });
        }
        self.set_state(InstanceState::Deleted, None);
        self.plan.push(Action::RemoveFinalizer);
    }

    fn plan_delete(&mut self) {
        if !has_finalizer(self.desired.metadata.finalizers.as_ref()) {
            return;
        }
        let state = self.status.state.clone();
        if matches!(
            state,
            InstanceState::PreflightError
                | InstanceState::CreatingError
                | InstanceState::CreatedError
                | InstanceState::DeleteWaitError
        ) {
            self.enter_error();
            return;
        }
        if state == InstanceState::Deleted {
            self.finish_delete();
            return;
        }
        if let Some(delete) = self.latest_of(OperationType::InstanceDelete) {
            if delete.is_outstanding() {
                self.set_state(InstanceState::DeleteWait, None);
                self.condition("Ready", ConditionStatus::False, "Deleting", String::new());
            } else if delete.state == OperationState::Complete {
                self.finish_delete();
            } else {
                let message = format!(
                    "{} {}: {}",
                    delete.name,
                    delete.state,
                    delete.error.as_deref().unwrap_or("no error report")
                );
                if state == InstanceState::DeleteWait {
                    self.set_state(InstanceState::DeleteWaitError, Some(message));
                } else {
                    self.condition("Ready", ConditionStatus::False, "DeleteFailed", message);
                }
            }
            return;
        }
        let ops = &self.observed.operations;
        let snapshot =
            |op: &ObservedOperation| op.operation_type == OperationType::InstanceSnapshot;
        if ops
            .iter()
            .any(|op| op.is_outstanding() && targets_instance(op) && !snapshot(op))
        {
            self.plan.push(Action::AbortOperations {
                except_snapshots: true,
                reason: "task aborted due to enqueued delete request".into(),
            });
        }
        let snapshots: Vec<&str> = ops
            .iter()
            .filter(|op| op.is_outstanding() && snapshot(op))
            .map(|op| op.name.as_str())
            .collect();
        if !snapshots.is_empty() {
            self.set_state(InstanceState::DeleteWait, None);
            let message = format!("waiting for snapshots to finish: {}", snapshots.join(", "));
            self.condition(
                "Ready",
                ConditionStatus::False,
                "WaitingForSnapshots",
                message,
            );
            return;
        }
        match self.status.node.clone() {
            Some(node) if !lost(self.observed.node_state.as_ref()) => {
                self.enqueue(OperationType::InstanceDelete, &node, Vec::new(), json!({}));
                self.set_state(InstanceState::DeleteWait, None);
                self.condition("Ready", ConditionStatus::False, "Deleting", String::new());
            }
            _ => self.finish_delete(),
        }
    }
}

/// Plans one reconcile of `desired` (see the module contract).
pub fn plan_instance(
    desired: &Instance,
    observed: &InstanceObservation,
    ctx: &PlanContext,
) -> Vec<Action> {
    let status = desired.status.clone().unwrap_or_default();
    let name = desired.metadata.name.clone().unwrap_or_default();
    if let Some(pin) = pin_intent_seq(
        INSTANCE_KIND,
        &name,
        status.intent_seq,
        desired.metadata.resource_version.as_deref(),
        &observed.operations,
    ) {
        return pinned(desired.metadata.finalizers.as_ref(), pin);
    }
    let namer = Namer::new(
        INSTANCE_KIND,
        &name,
        status.intent_seq,
        &observed.operations,
    );
    let mut c = Ctx {
        desired,
        observed,
        ctx,
        status,
        name,
        namer,
        plan: Plan::default(),
        state_set: false,
    };
    if desired.metadata.deletion_timestamp.is_some() {
        c.plan_delete();
    } else {
        c.plan_live();
    }
    let bump = c.namer.bump(c.plan.enqueues());
    c.plan.push_opt(bump);
    c.plan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Resources;
    use crate::testutil::{cond, ctx, now, op, with_deletion};
    use DesiredPowerState as D;
    use ObservedPowerState as O;
    use OperationType as T;
    use sf_schema::instance::{DiskSpec, InstanceNetworkSpec, InstanceSpec, InstanceStatus};
    use sf_schema::node::NodeCapacity;
    use sf_schema::operation::OperationState as S;

    fn spec(power: D) -> InstanceSpec {
        InstanceSpec {
            cpus: 2,
            memory: 2048,
            disks: vec![DiskSpec {
                size: Some(20),
                base: Some("debian-12".into()),
                ..DiskSpec::default()
            }],
            networks: vec![InstanceNetworkSpec {
                network: "web".into(),
                ..InstanceNetworkSpec::default()
            }],
            ssh_key: None,
            user_data: None,
            video: None,
            uefi: false,
            secure_boot: false,
            nvram_template: None,
            config_drive: Default::default(),
            power_state: power,
            placed_on: None,
            side_channels: Vec::new(),
        }
    }

    fn instance(state: InstanceState, power: D, observed: Option<O>, seq: u64) -> Instance {
        let mut i = Instance::new("web-1", spec(power));
        i.metadata.namespace = Some("demo".into());
        i.metadata.uid = Some("inst-uid".into());
        i.metadata.generation = Some(1);
        i.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        let placed = !matches!(state, InstanceState::Initial | InstanceState::Preflight);
        i.status = Some(InstanceStatus {
            observed_generation: Some(1),
            state,
            power_state: observed,
            node: placed.then(|| "hv-1".into()),
            intent_seq: seq,
            ..InstanceStatus::default()
        });
        i
    }

    /// created, running as desired, everything recorded.
    fn steady(power: D, observed: O) -> (Instance, InstanceObservation) {
        let mut i = instance(InstanceState::Created, power, Some(observed), 1);
        if let Some(s) = i.status.as_mut() {
            s.conditions = vec![
                cond("Ready", "True", "Created", ""),
                cond("PowerSynced", "True", "InSync", ""),
            ];
        }
        let obs = InstanceObservation {
            operations: vec![op(
                "instance-web-1-1-create",
                T::InstanceCreate,
                S::Complete,
            )],
            addresses: vec![ReservedAddress {
                interface: "web-1-0".into(),
                network: "web".into(),
                address: "10.0.0.5".into(),
            }],
            node_state: Some(NodeState::Created),
            ..InstanceObservation::default()
        };
        (i, obs)
    }

    fn ops_of(plan: &[Action]) -> Vec<(String, OperationType)> {
        plan.iter()
            .filter_map(|a| a.operation().map(|(n, t)| (n.to_owned(), t.clone())))
            .collect()
    }

    fn set_state(plan: &[Action]) -> Option<InstanceState> {
        plan.iter().find_map(|a| match a {
            Action::SetState {
                state: StateValue::Instance(s),
                ..
            } => Some(s.clone()),
            _ => None,
        })
    }

    fn hv(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            state: NodeState::Created,
            schedulable: true,
            capacity: Some(NodeCapacity {
                cpu_threads: 8,
                memory_mib: 16384,
                disk_gib: 200,
            }),
            usage: None,
            committed: Resources::default(),
            instances: 0,
        }
    }

    fn web(nodes: &[&str]) -> NetworkView {
        NetworkView {
            name: "web".into(),
            namespace: Some("demo".into()),
            uid: "net-uid".into(),
            netblock: "10.0.0.0/24".into(),
            vxid: Some(77),
            provide_dhcp: true,
            provide_nat: true,
            provide_dns: false,
            nodes: nodes.iter().map(|s| (*s).to_owned()).collect(),
            pending_creates: Vec::new(),
        }
    }

    #[test]
    fn nothing_changed_plans_nothing() {
        for (power, observed) in [
            (D::On, O::Running),
            (D::Off, O::Off),
            (D::Paused, O::Paused),
        ] {
            let (i, obs) = steady(power.clone(), observed.clone());
            assert_eq!(
                plan_instance(&i, &obs, &ctx()),
                vec![],
                "{power}/{observed}"
            );
        }
    }

    #[test]
    fn each_power_transition_emits_exactly_one_operation() {
        let table = [
            (D::Paused, O::Running, Some(T::InstancePause)),
            (D::Off, O::Running, Some(T::InstancePowerOff)),
            (D::Off, O::Paused, Some(T::InstancePowerOff)),
            (D::On, O::Off, Some(T::InstancePowerOn)),
            (D::On, O::Paused, Some(T::InstanceUnpause)),
            (D::On, O::Crashed, Some(T::InstancePowerOn)),
            (D::Paused, O::Off, Some(T::InstancePowerOn)),
            (D::Off, O::Off, None),
        ];
        for (desired, observed, want) in table {
            let (i, obs) = steady(desired.clone(), observed.clone());
            let plan = plan_instance(&i, &obs, &ctx());
            let ops = ops_of(&plan);
            match &want {
                Some(kind) => {
                    let name = format!("instance-web-1-2-{}", short_name(kind));
                    assert_eq!(ops, vec![(name, kind.clone())], "{desired}/{observed}");
                    assert!(plan.contains(&Action::BumpIntentSeq { to: 2 }));
                    let Some(Action::EnqueueOperation {
                        node,
                        payload,
                        target,
                        ..
                    }) = plan.iter().find(|a| a.operation().is_some())
                    else {
                        panic!("{plan:?}")
                    };
                    assert_eq!(node.as_deref(), Some("hv-1"));
                    assert_eq!(target.uid, "inst-uid");
                    let recreate = *kind == T::InstancePowerOn;
                    assert_eq!(
                        payload.get("recreateConfigDrive").is_some(),
                        recreate,
                        "{desired}/{observed}"
                    );
                }
                None => assert!(ops.is_empty(), "{desired}/{observed}: {plan:?}"),
            }
        }
    }

    #[test]
    fn never_a_second_operation_while_one_is_outstanding() {
        let (i, mut obs) = steady(D::Paused, O::Running);
        for state in [S::Queued, S::Executing] {
            obs.operations.push(op(
                "instance-web-1-2-pause",
                T::InstancePause,
                state.clone(),
            ));
            let mut i = i.clone();
            if let Some(s) = i.status.as_mut() {
                s.intent_seq = 2;
                s.conditions[1] = cond(
                    "PowerSynced",
                    "False",
                    "Pending",
                    "instance-web-1-2-pause: running → paused",
                );
            }
            assert_eq!(plan_instance(&i, &obs, &ctx()), vec![], "{state}");
            obs.operations.pop();
        }
    }

    #[test]
    fn crashed_guest_gets_a_reissued_power_on_with_a_new_name() {
        let (mut i, mut obs) = steady(D::On, O::Crashed);
        obs.operations.push(op(
            "instance-web-1-2-poweron",
            T::InstancePowerOn,
            S::Complete,
        ));
        if let Some(s) = i.status.as_mut() {
            s.intent_seq = 2;
        }
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            ops_of(&plan),
            [("instance-web-1-3-poweron".to_owned(), T::InstancePowerOn)]
        );
        assert!(plan.contains(&Action::BumpIntentSeq { to: 3 }));
    }

    #[test]
    fn repeated_plan_after_a_crash_emits_the_same_name() {
        let (i, obs) = steady(D::On, O::Crashed);
        let first = plan_instance(&i, &obs, &ctx());
        // The controller died before (or after) applying: same inputs, same plan.
        assert_eq!(plan_instance(&i, &obs, &ctx()), first);
        assert_eq!(ops_of(&first)[0].0, "instance-web-1-2-poweron");
        // Created, but status.intentSeq not yet written: no second operation, only the
        // catch-up of the sequence.
        let mut seen = obs.clone();
        seen.operations.push(op(
            "instance-web-1-2-poweron",
            T::InstancePowerOn,
            S::Queued,
        ));
        let plan = plan_instance(&i, &seen, &ctx());
        assert!(ops_of(&plan).is_empty(), "{plan:?}");
        assert!(plan.contains(&Action::BumpIntentSeq { to: 2 }));
    }

    #[test]
    fn completed_power_op_waits_for_the_observation_to_settle() {
        let (mut i, mut obs) = steady(D::On, O::Off);
        let mut done = op("instance-web-1-2-poweron", T::InstancePowerOn, S::Complete);
        done.completed_at = Some(now() - chrono::Duration::seconds(5));
        obs.operations.push(done);
        if let Some(s) = i.status.as_mut() {
            s.intent_seq = 2;
        }
        assert_eq!(
            plan_instance(&i, &obs, &ctx()),
            vec![Action::Requeue { after_secs: 25 }]
        );
        // Still off long after: the guest shut itself down; desired is on.
        obs.operations[1].completed_at = Some(now() - chrono::Duration::seconds(31));
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(ops_of(&plan)[0].0, "instance-web-1-3-poweron");
    }

    #[test]
    fn failed_power_op_is_retried_only_after_a_spec_change() {
        let (mut i, mut obs) = steady(D::Paused, O::Running);
        let mut failed = op("instance-web-1-2-pause", T::InstancePause, S::Error);
        failed.error = Some("suspend failed 3 times".into());
        obs.operations.push(failed);
        if let Some(s) = i.status.as_mut() {
            s.intent_seq = 2;
        }
        let plan = plan_instance(&i, &obs, &ctx());
        assert!(ops_of(&plan).is_empty());
        assert!(plan.contains(&Action::SetCondition {
            type_: "PowerSynced".into(),
            status: ConditionStatus::False,
            reason: "OperationFailed".into(),
            message: "instance-web-1-2-pause error: suspend failed 3 times".into(),
        }));
        i.metadata.generation = Some(3);
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            ops_of(&plan),
            [("instance-web-1-3-pause".to_owned(), T::InstancePause)]
        );
    }

    #[test]
    fn new_ops_depend_on_outstanding_snapshots() {
        let (i, mut obs) = steady(D::Off, O::Running);
        obs.operations.push(op(
            "instance-web-1-1-snapshot",
            T::InstanceSnapshot,
            S::Executing,
        ));
        let plan = plan_instance(&i, &obs, &ctx());
        let Some(Action::EnqueueOperation { depends_on, .. }) =
            plan.iter().find(|a| a.operation().is_some())
        else {
            panic!("{plan:?}")
        };
        assert_eq!(depends_on, &["instance-web-1-1-snapshot"]);
    }

    #[test]
    fn lifecycle_table() {
        use InstanceState as St;
        let created_op = |state| op("instance-web-1-1-create", T::InstanceCreate, state);
        let table: Vec<(&str, St, Vec<ObservedOperation>, Option<St>)> = vec![
            (
                "initial → preflight",
                St::Initial,
                vec![],
                Some(St::Preflight),
            ),
            (
                "creating, op queued: wait",
                St::Creating,
                vec![created_op(S::Queued)],
                None,
            ),
            (
                "creating, op complete → created",
                St::Creating,
                vec![created_op(S::Complete)],
                Some(St::Created),
            ),
            (
                "creating, op failed → creating-error",
                St::Creating,
                vec![created_op(S::Error)],
                Some(St::CreatingError),
            ),
            (
                "creating-error → error",
                St::CreatingError,
                vec![created_op(S::Error)],
                Some(St::Error),
            ),
            (
                "preflight-error → error",
                St::PreflightError,
                vec![],
                Some(St::Error),
            ),
            ("error stays", St::Error, vec![], None),
        ];
        for (what, state, ops, want) in table {
            let i = instance(state, D::On, None, 1);
            let obs = InstanceObservation {
                operations: ops,
                node_state: Some(NodeState::Created),
                ..InstanceObservation::default()
            };
            let plan = plan_instance(&i, &obs, &ctx());
            assert_eq!(set_state(&plan), want, "{what}: {plan:?}");
            assert!(ops_of(&plan).is_empty(), "{what}: {plan:?}");
            assert!(!plan.contains(&Action::RemoveFinalizer), "{what}");
        }
    }

    #[test]
    fn new_instance_gets_its_finalizer_first() {
        let mut i = instance(InstanceState::Initial, D::On, None, 0);
        i.metadata.finalizers = None;
        i.status = None;
        let plan = plan_instance(&i, &InstanceObservation::default(), &ctx());
        assert_eq!(plan[0], Action::EnsureFinalizer);
        assert_eq!(set_state(&plan), Some(InstanceState::Preflight));
    }

    #[test]
    fn a_disk_based_on_a_snapshot_goes_only_where_its_blob_is() {
        let i = instance(InstanceState::Preflight, D::On, None, 0);
        let replica = |source: &str, nodes: &[&str]| BlobReplica {
            artifact: ObjectRef::default(),
            source_url: source.into(),
            blob: "b-1".into(),
            sha512: "0".repeat(128),
            size: 1,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            pending: Vec::new(),
        };
        let mut obs = InstanceObservation {
            nodes: vec![hv("hv-1"), hv("hv-2")],
            artifacts: vec![ArtifactReadiness {
                name: "u-1-vda".into(),
                ready: true,
                replica: Some(replica("sf://instance/u-1/vda", &["hv-2"])),
                copyable: false,
            }],
            networks: vec![web(&["net-1"])],
            ..InstanceObservation::default()
        };
        // hv-1 would win on a tie; only hv-2 holds the snapshot.
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan[0],
            Action::Schedule {
                node: "hv-2".into()
            }
        );
        // An image is copied where needed: no restriction.
        obs.artifacts[0].replica = Some(replica("https://x/y.qcow2", &["hv-2"]));
        obs.artifacts[0].copyable = true;
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan[0],
            Action::Schedule {
                node: "hv-1".into()
            }
        );
        obs.artifacts[0].copyable = false;
        // A snapshot artifact whose blob is not known yet: no placement until it is.
        obs.artifacts[0].replica = None;
        let plan = plan_instance(&i, &obs, &ctx());
        assert!(
            !plan.iter().any(|a| matches!(a, Action::Schedule { .. })),
            "{plan:?}"
        );
        assert_eq!(
            plan.iter().find_map(|a| match a {
                Action::SetCondition { reason, .. } => Some(reason.as_str()),
                _ => None,
            }),
            Some("WaitingForArtifacts")
        );
        // The snapshot on no node that can take it: unschedulable, saying why.
        obs.artifacts[0].replica = Some(replica("sf://instance/u-1/vda", &["hv-9"]));
        let plan = plan_instance(&i, &obs, &ctx());
        let reason = plan.iter().find_map(|a| match a {
            Action::Unschedulable { reason } => Some(reason.clone()),
            _ => None,
        });
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("hv-1: does not hold the blob of u-1-vda")),
            "{reason:?}"
        );
    }

    #[test]
    fn preflight_places_reserves_plumbs_and_creates_in_order() {
        let i = instance(InstanceState::Preflight, D::On, None, 0);
        let obs = InstanceObservation {
            nodes: vec![hv("hv-2"), hv("hv-1")],
            artifacts: vec![ArtifactReadiness {
                name: "debian-12".into(),
                ready: true,
                replica: None,
                copyable: true,
            }],
            networks: vec![web(&["net-1"])],
            ..InstanceObservation::default()
        };
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan[0],
            Action::Schedule {
                node: "hv-1".into()
            }
        );
        assert_eq!(
            plan[1],
            Action::ReserveAddress {
                interface: "web-1-0".into(),
                network: "web".into(),
                address: None
            }
        );
        assert_eq!(
            ops_of(&plan),
            [
                (
                    "instance-web-1-1-netcreate-web".to_owned(),
                    T::NetworkCreateOnNode
                ),
                ("instance-web-1-1-create".to_owned(), T::InstanceCreate),
            ]
        );
        let Some(Action::EnqueueOperation {
            depends_on,
            payload,
            ..
        }) = plan
            .iter()
            .find(|a| a.operation().is_some_and(|(_, t)| *t == T::InstanceCreate))
        else {
            panic!("{plan:?}")
        };
        assert_eq!(depends_on, &["instance-web-1-1-netcreate-web"]);
        assert_eq!(payload["interfaces"], json!(["web-1-0"]));
        assert_eq!(set_state(&plan), Some(InstanceState::Creating));
        assert!(plan.contains(&Action::BumpIntentSeq { to: 1 }));
        // Phases are in apply order.
        let phases: Vec<u8> = plan.iter().map(Action::phase).collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");

        // The network is already on the node (or being plumbed by someone else).
        let mut obs2 = obs.clone();
        obs2.networks = vec![web(&["hv-1"])];
        assert_eq!(ops_of(&plan_instance(&i, &obs2, &ctx())).len(), 1);
        obs2.networks[0].nodes.clear();
        obs2.networks[0].pending_creates = vec![crate::network::PendingCreate {
            node: "hv-1".into(),
            operation: "network-web-4-netcreate-hv-1".into(),
        }];
        let plan = plan_instance(&i, &obs2, &ctx());
        let Some(Action::EnqueueOperation { depends_on, .. }) =
            plan.iter().find(|a| a.operation().is_some())
        else {
            panic!("{plan:?}")
        };
        assert_eq!(depends_on, &["network-web-4-netcreate-hv-1"]);
    }

    #[test]
    fn preflight_waits_for_artifacts_and_networks() {
        let mut i = instance(InstanceState::Preflight, D::On, None, 0);
        if let Some(s) = i.status.as_mut() {
            s.node = Some("hv-1".into());
        }
        let base = InstanceObservation {
            node_state: Some(NodeState::Created),
            addresses: vec![ReservedAddress {
                interface: "web-1-0".into(),
                network: "web".into(),
                address: "10.0.0.5".into(),
            }],
            networks: vec![web(&["hv-1"])],
            ..InstanceObservation::default()
        };
        let mut unready = base.clone();
        unready.artifacts = vec![ArtifactReadiness {
            name: "debian-12".into(),
            ready: false,
            replica: None,
            copyable: true,
        }];
        let mut unprepared = base.clone();
        unprepared.networks[0].vxid = None;
        let mut node_gone = base.clone();
        node_gone.node_state = Some(NodeState::Missing);
        let table = [
            (
                unready,
                "WaitingForArtifacts",
                "waiting for artifacts: debian-12",
            ),
            (
                unprepared,
                "WaitingForNetwork",
                "network web is not prepared yet",
            ),
            (
                node_gone,
                "NodeUnavailable",
                "placed on hv-1, which is missing; waiting (instances are never moved)",
            ),
        ];
        for (obs, reason, message) in table {
            let plan = plan_instance(&i, &obs, &ctx());
            assert_eq!(
                plan,
                vec![
                    Action::SetCondition {
                        type_: "Ready".into(),
                        status: ConditionStatus::False,
                        reason: reason.into(),
                        message: message.into(),
                    },
                    Action::Requeue { after_secs: 30 },
                ],
                "{reason}"
            );
        }
    }

    #[test]
    fn a_placed_instance_replicates_its_base_blob_to_its_node_first() {
        use crate::artifact::{BlobReplica, PendingFetch};
        let mut i = instance(InstanceState::Preflight, D::On, None, 4);
        if let Some(s) = i.status.as_mut() {
            s.node = Some("hv-1".into());
        }
        let sha512: String = std::iter::repeat_n('a', 128).collect();
        let replica = |nodes: &[&str], pending: Vec<PendingFetch>| BlobReplica {
            artifact: sf_schema::common::ObjectRef {
                kind: "Artifact".into(),
                name: "debian-12".into(),
                namespace: Some("system".into()),
                uid: "art-uid".into(),
            },
            source_url: "http://images.example/debian-12.qcow2".into(),
            blob: "blob-1".into(),
            sha512: sha512.clone(),
            size: 1024,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            pending,
        };
        let observe = |replica: BlobReplica| InstanceObservation {
            node_state: Some(NodeState::Created),
            addresses: vec![ReservedAddress {
                interface: "web-1-0".into(),
                network: "web".into(),
                address: "10.0.0.5".into(),
            }],
            networks: vec![web(&["hv-1"])],
            artifacts: vec![ArtifactReadiness {
                name: "debian-12".into(),
                ready: true,
                replica: Some(replica),
                copyable: true,
            }],
            ..InstanceObservation::default()
        };
        let create_deps = |plan: &[Action]| -> Vec<String> {
            plan.iter()
                .find_map(|a| match a {
                    Action::EnqueueOperation {
                        operation_type: T::InstanceCreate,
                        depends_on,
                        ..
                    } => Some(depends_on.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no instance_create: {plan:?}"))
        };
        // (what, replica, operations emitted, instance_create depends on)
        let table = [
            (
                "the blob is only on hv-2: fetch it on hv-1 first",
                replica(&["hv-2"], vec![]),
                vec![
                    ("instance-web-1-5-fetch-debian-12", T::ArtifactFetch),
                    ("instance-web-1-5-create", T::InstanceCreate),
                ],
                vec!["instance-web-1-5-fetch-debian-12"],
            ),
            (
                "the blob is on hv-1: just create",
                replica(&["hv-1", "hv-2"], vec![]),
                vec![("instance-web-1-5-create", T::InstanceCreate)],
                vec![],
            ),
            (
                "another instance is fetching it on hv-1: depend on that fetch",
                replica(
                    &["hv-2"],
                    vec![PendingFetch {
                        node: "hv-1".into(),
                        operation: "instance-web-2-9-fetch-debian-12".into(),
                    }],
                ),
                vec![("instance-web-1-5-create", T::InstanceCreate)],
                vec!["instance-web-2-9-fetch-debian-12"],
            ),
        ];
        for (what, replica, want_ops, want_deps) in table {
            let plan = plan_instance(&i, &observe(replica), &ctx());
            let ops: Vec<(String, OperationType)> = want_ops
                .iter()
                .map(|(n, t)| ((*n).to_owned(), t.clone()))
                .collect();
            assert_eq!(ops_of(&plan), ops, "{what}: {plan:?}");
            assert_eq!(create_deps(&plan), want_deps, "{what}");
            assert_eq!(set_state(&plan), Some(InstanceState::Creating), "{what}");
            // Whether fetched now, present or fetched by another: the create is pinned
            // to the blob replicated, not to whatever version is latest when it runs.
            let pinned = plan.iter().find_map(|a| match a {
                Action::EnqueueOperation {
                    operation_type: T::InstanceCreate,
                    payload,
                    ..
                } => Some(payload["blobs"].clone()),
                _ => None,
            });
            assert_eq!(pinned, Some(json!({"debian-12": "blob-1"})), "{what}");
        }
        let plan = plan_instance(&i, &observe(replica(&["hv-2"], vec![])), &ctx());
        let Some(Action::EnqueueOperation {
            target,
            node,
            payload,
            ..
        }) = plan
            .iter()
            .find(|a| a.operation().is_some_and(|(_, t)| *t == T::ArtifactFetch))
        else {
            panic!("{plan:?}")
        };
        assert_eq!(
            (target.kind.as_str(), target.uid.as_str()),
            ("Artifact", "art-uid")
        );
        assert_eq!(node.as_deref(), Some("hv-1"));
        assert_eq!(payload["blob"], "blob-1");
        assert_eq!(payload["sha512"], json!(sha512));
        // Re-planned in creating with the fetch and create observed: nothing new.
        let mut creating = i.clone();
        if let Some(s) = creating.status.as_mut() {
            s.state = InstanceState::Creating;
            s.intent_seq = 5;
            s.conditions = vec![cond("Ready", "False", "Creating", "")];
        }
        let mut obs = observe(replica(&["hv-2"], vec![]));
        obs.operations = vec![
            op(
                "instance-web-1-5-fetch-debian-12",
                T::ArtifactFetch,
                S::Queued,
            ),
            op("instance-web-1-5-create", T::InstanceCreate, S::Queued),
        ];
        assert_eq!(plan_instance(&creating, &obs, &ctx()), vec![]);
    }

    #[test]
    fn unschedulable_instance_stays_pending_with_the_reason() {
        let mut i = instance(InstanceState::Preflight, D::On, None, 0);
        let mut full = hv("hv-1");
        full.committed.memory_mib = (16384 - 2048) * 3 - 1024;
        let mut drained = hv("hv-2");
        drained.schedulable = false;
        let obs = InstanceObservation {
            nodes: vec![full, drained],
            ..InstanceObservation::default()
        };
        let reason = "cluster full: hv-1: not enough RAM (needs 2048 MiB, 1024 free after \
                      reservations and overcommit); hv-2: not schedulable";
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan,
            vec![
                Action::Unschedulable {
                    reason: reason.into()
                },
                Action::SetCondition {
                    type_: "Scheduled".into(),
                    status: ConditionStatus::False,
                    reason: "Unschedulable".into(),
                    message: reason.into(),
                },
                Action::Requeue { after_secs: 60 },
            ]
        );
        // Re-planned with the condition recorded: no writes, just the retry hint.
        if let Some(s) = i.status.as_mut() {
            s.conditions = vec![cond("Scheduled", "False", "Unschedulable", reason)];
        }
        assert_eq!(
            plan_instance(&i, &obs, &ctx()),
            vec![Action::Requeue { after_secs: 60 }]
        );
        // A requested node is honoured or refused.
        i.spec.placed_on = Some("hv-2".into());
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan[0],
            Action::Unschedulable {
                reason: "requested node refused: hv-2: not schedulable".into()
            }
        );
    }

    #[test]
    fn delete_with_a_pending_snapshot_aborts_the_rest_waits_then_deletes() {
        let (i, mut obs) = steady(D::Paused, O::Running);
        let i = with_deletion(i);
        obs.operations.push(op(
            "instance-web-1-2-snapshot",
            T::InstanceSnapshot,
            S::Executing,
        ));
        obs.operations
            .push(op("instance-web-1-2-pause", T::InstancePause, S::Queued));

        // 1. Abort everything but the snapshot, wait for it.
        let plan = plan_instance(&i, &obs, &ctx());
        assert!(plan.contains(&Action::AbortOperations {
            except_snapshots: true,
            reason: "task aborted due to enqueued delete request".into(),
        }));
        assert!(ops_of(&plan).is_empty(), "{plan:?}");
        assert_eq!(set_state(&plan), Some(InstanceState::DeleteWait));

        // 2. Pause aborted, snapshot still running: just wait (no second abort).
        let mut i = i;
        if let Some(s) = i.status.as_mut() {
            s.state = InstanceState::DeleteWait;
            s.intent_seq = 2;
            s.conditions = vec![cond(
                "Ready",
                "False",
                "WaitingForSnapshots",
                "waiting for snapshots to finish: instance-web-1-2-snapshot",
            )];
        }
        obs.operations[2].state = S::Abort;
        assert_eq!(plan_instance(&i, &obs, &ctx()), vec![]);

        // 3. Snapshot done: delete on the node.
        obs.operations[1].state = S::Complete;
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            ops_of(&plan),
            [("instance-web-1-3-delete".to_owned(), T::InstanceDelete)]
        );
        assert!(
            !plan
                .iter()
                .any(|a| matches!(a, Action::AbortOperations { .. }))
        );

        // 4. Delete done: release into the halo, deleted, finalizer off — in that order.
        obs.operations.push(op(
            "instance-web-1-3-delete",
            T::InstanceDelete,
            S::Complete,
        ));
        if let Some(s) = i.status.as_mut() {
            s.intent_seq = 3;
        }
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(
            plan,
            vec![
                Action::ReleaseAddresses {
                    addresses: obs.addresses.clone()
                },
                Action::SetState {
                    state: StateValue::Instance(InstanceState::Deleted),
                    message: None
                },
                Action::RemoveFinalizer,
            ]
        );
    }

    #[test]
    fn delete_of_an_unplaced_instance_or_on_a_lost_node_needs_no_operation() {
        for (state, node_state) in [
            (InstanceState::Preflight, None),
            (InstanceState::Created, Some(NodeState::Error)),
        ] {
            let mut i = with_deletion(instance(state.clone(), D::On, None, 1));
            if let Some(s) = i
                .status
                .as_mut()
                .filter(|_| state == InstanceState::Preflight)
            {
                s.node = None;
            }
            let obs = InstanceObservation {
                node_state,
                ..InstanceObservation::default()
            };
            let plan = plan_instance(&i, &obs, &ctx());
            assert_eq!(
                plan,
                vec![
                    Action::SetState {
                        state: StateValue::Instance(InstanceState::Deleted),
                        message: None
                    },
                    Action::RemoveFinalizer
                ],
                "{state}"
            );
        }
    }

    #[test]
    fn failed_delete_goes_to_error_and_is_not_retried() {
        let mut i = with_deletion(instance(InstanceState::DeleteWait, D::On, None, 2));
        let mut failed = op("instance-web-1-2-delete", T::InstanceDelete, S::Error);
        failed.error = Some("undefine failed".into());
        let obs = InstanceObservation {
            operations: vec![failed],
            node_state: Some(NodeState::Created),
            ..InstanceObservation::default()
        };
        let plan = plan_instance(&i, &obs, &ctx());
        assert_eq!(set_state(&plan), Some(InstanceState::DeleteWaitError));
        if let Some(s) = i.status.as_mut() {
            s.state = InstanceState::Error;
        }
        let plan = plan_instance(&i, &obs, &ctx());
        assert!(
            ops_of(&plan).is_empty() && set_state(&plan).is_none(),
            "{plan:?}"
        );
        assert!(!plan.contains(&Action::RemoveFinalizer));
    }

    #[test]
    fn plan_serialises_for_sf_plan() {
        let (i, obs) = steady(D::Paused, O::Running);
        let plan = plan_instance(&i, &obs, &ctx());
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json[0]["action"], "enqueueOperation");
        assert_eq!(json[0]["operationType"], "instance_pause");
        assert_eq!(json[0]["dependsOn"], json!([]));
        assert_eq!(json[1], json!({"action": "bumpIntentSeq", "to": 2}));
        assert_eq!(json[2]["type"], "PowerSynced");
    }
}
