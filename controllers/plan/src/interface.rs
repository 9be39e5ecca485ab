//! The NetworkInterface reconciler's plan (hot plug): [`plan_interface`].
//!
//! Contract:
//! - Boot interfaces (those of `spec.networks`, named by
//!   [`boot_interface_name`](crate::instance::boot_interface_name)) are reserved and
//!   attached by the instance plan; here they only follow their instance to
//!   `created`.
//! - A hot-plugged interface waits for its instance to be `created` (never plugged
//!   into an instance being created, deleted or in error), then, in one plan: reserve
//!   the address; ensure the network on the instance's node (depend on the create
//!   under way there, or emit one); `interface_hot_plug` on that node depending on the
//!   network create and on the instance's last outstanding operation, so it runs
//!   after whatever the instance is doing. Completed → `created`; failed → `error`
//!   (not retried: delete and re-create the interface).
//! - Floating (any interface, boot or hot-plugged, once it holds its address and
//!   while it is `initial` or `created`): `spec.float` without
//!   `status.floatingAddress` → [`Action::ReserveFloating`] (an address on the
//!   floating network, owner = the interface); a `status.floatingAddress` without
//!   `spec.float` → [`Action::ReleaseFloating`] (into the halo). The network node's
//!   DNAT follows through the network plan: the floating addresses are part of its
//!   floating fingerprint, and a change re-plumbs the network node
//!   ([`crate::network`]).
//! - The first reconcile of a live interface pins `status.intentSeq` to its
//!   resourceVersion ([`pin_intent_seq`], alone with the finalizer), so an interface
//!   re-created under a deleted one's name never reuses that one's operation names
//!   (they linger until purged, and a repeated name is AlreadyExists, which apply
//!   takes as done). Names continue from the highest sequence among the pinned one
//!   and its observed operations, so a repeat after a crash reproduces the same
//!   names; no further `BumpIntentSeq` is emitted.
//! - Delete: a hot-plugged interface with any plug operation (even a failed one: it
//!   may have attached the NIC first) or that is `created` (its plug purged since), of
//!   an instance on a node that is `created` (or `created-error` / `error` since: its
//!   domain may still run) and not being deleted, is unplugged first (an instance
//!   being deleted removes its domain itself: the interface keeps its address until
//!   the instance is `deleted` or gone, condition `WaitingForInstanceDelete`):
//!   `interface_hot_unplug` on that node (payload: interface, instance, MAC),
//!   depending on an outstanding plug and on the instance's last outstanding
//!   operation; until it completes the interface keeps its address and finalizer.
//!   A failed unplug is emitted again, up to [`UNPLUG_ATTEMPTS`] in all; then
//!   condition `HotUnplugFailed`, re-checked every wait (deleting the instance ends
//!   it), so the address never goes back to the pool while a guest may hold it. The
//!   MAC is the one the agent plugged: status, spec, else the derived one. Then, and for every other interface at once: release the
//!   address (and the floating address) into the halo, `deleted`, remove the
//!   finalizer.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_schema::common::{ConditionStatus, ObjectRef, ResourceState};
use sf_schema::instance::InstanceState;
use sf_schema::interface::NetworkInterface;
use sf_schema::operation::{OperationState, OperationType, Priority};

use crate::PlanContext;
use crate::action::{Action, Plan, StateValue, condition, has_finalizer, pinned};
use crate::instance::ReservedAddress;
use crate::network::{NetworkView, OnNode, network_on_node};
use crate::ops::{Namer, ObservedOperation, latest, pin_intent_seq};

/// The kind name used in operation names and targets.
pub const INTERFACE_KIND: &str = "NetworkInterface";

/// Unplug operations a deleted interface gets before it settles on `HotUnplugFailed`.
pub const UNPLUG_ATTEMPTS: usize = 3;

/// What the interface plan needs to know about its instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The Instance's name.
    pub name: String,
    /// `status.state`.
    pub state: InstanceState,
    /// `status.node`.
    #[serde(default)]
    pub node: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    #[serde(default)]
    pub deleting: bool,
    /// The name of the instance's most recently created operation that is still
    /// queued or executing.
    #[serde(default)]
    pub last_outstanding_operation: Option<String>,
}

/// What observe() gathers for a NetworkInterface.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceObservation {
    /// Its instance; `None` when it does not exist.
    #[serde(default)]
    pub instance: Option<InstanceView>,
    /// It is one of the instance's `spec.networks`.
    #[serde(default)]
    pub boot_interface: bool,
    /// The address it holds.
    #[serde(default)]
    pub address: Option<String>,
    /// Its network; `None` when it does not exist.
    #[serde(default)]
    pub network: Option<NetworkView>,
    /// Operations created for it, oldest first ([`crate::ops`]).
    #[serde(default)]
    pub operations: Vec<ObservedOperation>,
}

fn transition_ok(from: &ResourceState, to: &ResourceState) -> bool {
    use ResourceState as S;
    matches!(
        (from, to),
        (S::Initial, S::Created | S::Deleted | S::Error)
            | (S::Created, S::Deleted | S::Error)
            | (S::Error, S::Deleted)
    )
}

struct Ctx<'a> {
    desired: &'a NetworkInterface,
    observed: &'a InterfaceObservation,
    ctx: &'a PlanContext,
    name: String,
    /// `status.intentSeq`.
    seq: u64,
    state: ResourceState,
    conditions: Vec<sf_schema::Condition>,
    plan: Plan,
    requeue: Option<u64>,
}

impl Ctx<'_> {
    fn set_state(&mut self, to: ResourceState, message: Option<String>) {
        if transition_ok(&self.state, &to) {
            self.plan.push(Action::SetState {
                state: StateValue::Resource(to),
                message,
            });
        }
    }

    fn condition(&mut self, status: ConditionStatus, reason: &str, message: String) {
        let action = condition(&self.conditions, "Ready", status, reason, message);
        self.plan.push_opt(action);
    }

    fn wait(&mut self, reason: &str, message: String) {
        self.condition(ConditionStatus::False, reason, message);
        self.requeue = Some(self.ctx.wait_secs);
    }

    fn plan_delete(&mut self) {
        if !has_finalizer(self.desired.metadata.finalizers.as_ref()) {
            return;
        }
        if self.unplug_first() {
            return;
        }
        if let Some(address) = &self.observed.address {
            self.plan.push(Action::ReleaseAddresses {
                addresses: vec![ReservedAddress {
                    interface: self.name.clone(),
                    network: self.desired.spec.network.clone(),
                    address: address.clone(),
                }],
            });
        }
        if let Some(address) = self.floating_address() {
            self.plan.push(Action::ReleaseFloating { address });
        }
        self.set_state(ResourceState::Deleted, None);
        self.plan.push(Action::RemoveFinalizer);
    }

    /// Whether the deleted interface must wait for its unplug (emitting it when none
    /// exists yet); see the module contract.
    fn unplug_first(&mut self) -> bool {
        if self.observed.boot_interface {
            return false;
        }
        let ops = &self.observed.operations;
        let of = |t: &OperationType| {
            latest(INTERFACE_KIND, &self.name, ops, |op| {
                &op.operation_type == t
            })
        };
        // Attached, or maybe: any plug (one that failed may have attached the NIC before
        // it failed, and an aborted one may have been running), or a `created`
        // hot-plugged interface whose plug was purged since. Unplugging a NIC that is
        // not there is a no-op.
        let plug = of(&OperationType::InterfaceHotPlug);
        let attached = plug.is_some() || self.state == ResourceState::Created;
        if !attached {
            return false;
        }
        let Some(instance) = self.observed.instance.clone() else {
            return false;
        };
        let Some(node) = instance.node.clone() else {
            // Never placed: no domain holds the NIC.
            return false;
        };
        if instance.state == InstanceState::Deleted {
            return false;
        }
        if instance.deleting
            || matches!(
                instance.state,
                InstanceState::DeleteWait | InstanceState::DeleteWaitError
            )
        {
            // The instance's own delete removes the domain, NIC and all: keep the
            // address until it has (the instance is then deleted, or gone).
            let message = format!(
                "instance {} is being deleted; the address is kept until its domain is gone",
                instance.name
            );
            self.wait("WaitingForInstanceDelete", message);
            return true;
        }
        // A domain that may still run it: created, or in error since (a node that went
        // missing may come back with it running).
        if !matches!(
            instance.state,
            InstanceState::Created | InstanceState::CreatedError | InstanceState::Error
        ) {
            return false;
        }
        let unplugs = ops
            .iter()
            .filter(|op| op.operation_type == OperationType::InterfaceHotUnplug)
            .count();
        match of(&OperationType::InterfaceHotUnplug) {
            Some(unplug) if unplug.state == OperationState::Complete => false,
            // A failed unplug is tried again (one aborted with a failed dependency of
            // the instance's, or a guest slow to let go), up to UNPLUG_ATTEMPTS.
            Some(unplug) if unplug.failed() && unplugs >= UNPLUG_ATTEMPTS => {
                let message = format!(
                    "{} {}: {}; the address is kept until the NIC is gone (delete the instance to end this)",
                    unplug.name,
                    unplug.state,
                    unplug.error.as_deref().unwrap_or("no error report")
                );
                self.wait("HotUnplugFailed", message);
                true
            }
            Some(unplug) if unplug.is_outstanding() => {
                self.condition(ConditionStatus::False, "HotUnplugging", String::new());
                true
            }
            _ => {
                let mut depends_on: Vec<String> = Vec::new();
                if let Some(plug) = plug.filter(|p| p.is_outstanding()) {
                    depends_on.push(plug.name.clone());
                }
                depends_on.extend(instance.last_outstanding_operation.clone());
                let namer = Namer::new(INTERFACE_KIND, &self.name, self.seq, ops);
                self.plan.push(Action::EnqueueOperation {
                    name: namer.next("unplug"),
                    operation_type: OperationType::InterfaceHotUnplug,
                    target: self.target(),
                    node: Some(node),
                    depends_on,
                    priority: Priority::Normal,
                    payload: json!({
                        "interface": self.name,
                        "instance": instance.name,
                        // As the agent plugged it.
                        "macaddr": self.desired.mac(),
                    }),
                });
                self.condition(ConditionStatus::False, "HotUnplugging", String::new());
                true
            }
        }
    }

    /// This interface as the target of its operations.
    fn target(&self) -> ObjectRef {
        ObjectRef {
            kind: INTERFACE_KIND.to_owned(),
            name: self.name.clone(),
            namespace: self.desired.metadata.namespace.clone(),
            uid: self.desired.metadata.uid.clone().unwrap_or_default(),
        }
    }

    fn floating_address(&self) -> Option<String> {
        self.desired
            .status
            .as_ref()
            .and_then(|s| s.floating_address.clone())
    }

    /// Reserve or release the floating address (see the module contract).
    fn plan_float(&mut self) {
        if !matches!(self.state, ResourceState::Initial | ResourceState::Created) {
            return;
        }
        let held = self.floating_address();
        let has_address = self.observed.address.is_some()
            || self
                .desired
                .status
                .as_ref()
                .is_some_and(|s| s.ipv4.is_some());
        match (self.desired.spec.float, held) {
            (true, None) if has_address => self.plan.push(Action::ReserveFloating),
            (false, Some(address)) => self.plan.push(Action::ReleaseFloating { address }),
            _ => {}
        }
    }

    fn plan_live(&mut self) {
        if !has_finalizer(self.desired.metadata.finalizers.as_ref()) {
            self.plan.push(Action::EnsureFinalizer);
        }
        self.plan_float();
        if self.state != ResourceState::Initial {
            return;
        }
        let Some(instance) = self.observed.instance.clone() else {
            let message = format!("instance {} not found", self.desired.spec.instance);
            self.wait("WaitingForInstance", message);
            return;
        };
        if self.observed.boot_interface {
            if instance.state == InstanceState::Created {
                self.set_state(ResourceState::Created, None);
                self.condition(ConditionStatus::True, "Attached", String::new());
            }
            return;
        }
        let failed_instance = matches!(
            instance.state,
            InstanceState::Error
                | InstanceState::PreflightError
                | InstanceState::CreatingError
                | InstanceState::CreatedError
                | InstanceState::DeleteWaitError
                | InstanceState::DeleteWait
                | InstanceState::Deleted
        );
        if instance.deleting || failed_instance {
            let message = format!("instance {} is {}", instance.name, instance.state);
            self.condition(ConditionStatus::False, "InstanceUnavailable", message);
            return;
        }
        let (InstanceState::Created, Some(node)) = (&instance.state, &instance.node) else {
            let message = format!("instance {} is {}", instance.name, instance.state);
            self.wait("WaitingForInstance", message);
            return;
        };
        let node = node.clone();

        let ops = &self.observed.operations;
        let plug = latest(INTERFACE_KIND, &self.name, ops, |op| {
            op.operation_type == OperationType::InterfaceHotPlug
        });
        if let Some(plug) = plug {
            if plug.state == OperationState::Complete {
                self.set_state(ResourceState::Created, None);
                self.condition(ConditionStatus::True, "HotPlugged", String::new());
            } else if plug.failed() {
                let message = format!(
                    "{} {}: {}",
                    plug.name,
                    plug.state,
                    plug.error.as_deref().unwrap_or("no error report")
                );
                self.set_state(ResourceState::Error, Some(message.clone()));
                self.condition(ConditionStatus::False, "HotPlugFailed", message);
            }
            return;
        }

        let Some(network) = self.observed.network.clone() else {
            let message = format!("network {} not found", self.desired.spec.network);
            self.wait("WaitingForNetwork", message);
            return;
        };
        let namer = Namer::new(INTERFACE_KIND, &self.name, self.seq, ops);
        let mut depends_on = Vec::new();
        match network_on_node(&network, &node, namer.next("netcreate")) {
            OnNode::NotPrepared => {
                let message = format!("network {} is not prepared yet", network.name);
                self.wait("WaitingForNetwork", message);
                return;
            }
            OnNode::Ready => {}
            OnNode::After(op) => depends_on.push(op),
            OnNode::Create(action) => {
                if let Some((name, _)) = action.operation() {
                    depends_on.push(name.to_owned());
                }
                self.plan.push(*action);
            }
        }
        if self.observed.address.is_none() {
            self.plan.push(Action::ReserveAddress {
                interface: self.name.clone(),
                network: self.desired.spec.network.clone(),
                address: self.desired.spec.address.clone(),
            });
        }
        depends_on.extend(instance.last_outstanding_operation.clone());
        let spec = &self.desired.spec;
        self.plan.push(Action::EnqueueOperation {
            name: namer.next("hotplug"),
            operation_type: OperationType::InterfaceHotPlug,
            target: self.target(),
            node: Some(node),
            depends_on,
            priority: Priority::Normal,
            payload: json!({
                "interface": self.name,
                "instance": instance.name,
                "network": spec.network,
                "model": spec.model.as_str(),
            }),
        });
        self.condition(ConditionStatus::False, "HotPlugging", String::new());
    }
}

/// Plans one reconcile of the NetworkInterface `desired` (see the module contract).
pub fn plan_interface(
    desired: &NetworkInterface,
    observed: &InterfaceObservation,
    ctx: &PlanContext,
) -> Vec<Action> {
    let status = desired.status.clone().unwrap_or_default();
    let name = desired.metadata.name.clone().unwrap_or_default();
    if desired.metadata.deletion_timestamp.is_none()
        && let Some(pin) = pin_intent_seq(
            INTERFACE_KIND,
            &name,
            status.intent_seq,
            desired.metadata.resource_version.as_deref(),
            &observed.operations,
        )
    {
        return pinned(desired.metadata.finalizers.as_ref(), pin);
    }
    let mut c = Ctx {
        desired,
        observed,
        ctx,
        name,
        seq: status.intent_seq,
        state: status.state,
        conditions: status.conditions,
        plan: Plan::default(),
        requeue: None,
    };
    if desired.metadata.deletion_timestamp.is_some() {
        c.plan_delete();
    } else {
        c.plan_live();
    }
    if let Some(after_secs) = c.requeue {
        c.plan.push(Action::Requeue { after_secs });
    }
    c.plan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::PendingCreate;
    use crate::testutil::{cond, ctx, op, with_deletion};
    use OperationType as T;
    use sf_schema::interface::{NetworkInterfaceSpec, NetworkInterfaceStatus, NicModel};
    use sf_schema::operation::OperationState as S;

    fn iface(state: ResourceState) -> NetworkInterface {
        let mut n = NetworkInterface::new(
            "web-1-nic2",
            NetworkInterfaceSpec {
                instance: "web-1".into(),
                network: "db".into(),
                address: None,
                macaddr: None,
                model: NicModel::Virtio,
                float: false,
                order: None,
            },
        );
        n.metadata.namespace = Some("demo".into());
        n.metadata.uid = Some("if-uid".into());
        n.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        n.status = Some(NetworkInterfaceStatus {
            state,
            ..NetworkInterfaceStatus::default()
        });
        n
    }

    fn running(last: Option<&str>) -> InstanceView {
        InstanceView {
            name: "web-1".into(),
            state: InstanceState::Created,
            node: Some("hv-1".into()),
            deleting: false,
            last_outstanding_operation: last.map(str::to_owned),
        }
    }

    fn db(nodes: &[&str], pending: &[(&str, &str)]) -> NetworkView {
        NetworkView {
            name: "db".into(),
            namespace: Some("demo".into()),
            uid: "db-uid".into(),
            netblock: "10.1.0.0/24".into(),
            vxid: Some(99),
            provide_dhcp: true,
            provide_nat: false,
            provide_dns: false,
            nodes: nodes.iter().map(|s| (*s).to_owned()).collect(),
            pending_creates: pending
                .iter()
                .map(|(n, o)| PendingCreate {
                    node: (*n).into(),
                    operation: (*o).into(),
                })
                .collect(),
        }
    }

    fn enqueued(plan: &[Action]) -> Vec<(String, Option<String>, Vec<String>)> {
        plan.iter()
            .filter_map(|a| match a {
                Action::EnqueueOperation {
                    name,
                    node,
                    depends_on,
                    ..
                } => Some((name.clone(), node.clone(), depends_on.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn hot_plug_reserves_plumbs_then_plugs_after_the_instance() {
        let obs = InterfaceObservation {
            instance: Some(running(Some("instance-web-1-4-snapshot"))),
            network: Some(db(&["net-1"], &[])),
            ..InterfaceObservation::default()
        };
        let plan = plan_interface(&iface(ResourceState::Initial), &obs, &ctx());
        assert_eq!(
            plan[0],
            Action::ReserveAddress {
                interface: "web-1-nic2".into(),
                network: "db".into(),
                address: None
            }
        );
        assert_eq!(
            enqueued(&plan),
            [
                (
                    "networkinterface-web-1-nic2-1-netcreate".to_owned(),
                    Some("hv-1".to_owned()),
                    vec![]
                ),
                (
                    "networkinterface-web-1-nic2-1-hotplug".to_owned(),
                    Some("hv-1".to_owned()),
                    vec![
                        "networkinterface-web-1-nic2-1-netcreate".to_owned(),
                        "instance-web-1-4-snapshot".to_owned()
                    ]
                ),
            ]
        );
        let Some(Action::EnqueueOperation { target, .. }) = plan.get(1) else {
            panic!("{plan:?}")
        };
        assert_eq!(
            (target.kind.as_str(), target.uid.as_str()),
            ("Network", "db-uid")
        );
        assert!(
            !plan
                .iter()
                .any(|a| matches!(a, Action::BumpIntentSeq { .. }))
        );
        assert_eq!(
            plan.clone(),
            plan_interface(&iface(ResourceState::Initial), &obs, &ctx())
        );
    }

    #[test]
    fn hot_plug_dependencies_table() {
        let table = [
            (
                "network already on the node, instance idle",
                db(&["hv-1"], &[]),
                None,
                vec![],
            ),
            (
                "network being plumbed by someone else",
                db(&[], &[("hv-1", "network-db-3-netcreate-hv-1")]),
                Some("instance-web-1-2-poweron"),
                vec!["network-db-3-netcreate-hv-1", "instance-web-1-2-poweron"],
            ),
        ];
        for (what, network, last, want) in table {
            let obs = InterfaceObservation {
                instance: Some(running(last)),
                network: Some(network),
                address: Some("10.1.0.9".into()),
                ..InterfaceObservation::default()
            };
            let plan = plan_interface(&iface(ResourceState::Initial), &obs, &ctx());
            let ops = enqueued(&plan);
            assert_eq!(ops.len(), 1, "{what}: {plan:?}");
            assert_eq!(ops[0].0, "networkinterface-web-1-nic2-1-hotplug", "{what}");
            assert_eq!(ops[0].2, want, "{what}");
            assert!(
                !plan
                    .iter()
                    .any(|a| matches!(a, Action::ReserveAddress { .. })),
                "{what}"
            );
        }
    }

    #[test]
    fn hot_plug_outcome_and_waits() {
        let base = InterfaceObservation {
            instance: Some(running(None)),
            network: Some(db(&["hv-1"], &[])),
            address: Some("10.1.0.9".into()),
            ..InterfaceObservation::default()
        };
        let with = |state| {
            let mut o = base.clone();
            o.operations = vec![op(
                "networkinterface-web-1-nic2-1-hotplug",
                T::InterfaceHotPlug,
                state,
            )];
            o
        };
        let mut creating = base.clone();
        creating.instance = Some(InstanceView {
            state: InstanceState::Creating,
            ..running(None)
        });
        let mut deleting = base.clone();
        deleting.instance = Some(InstanceView {
            deleting: true,
            ..running(None)
        });
        type Row<'a> = (
            &'a str,
            InterfaceObservation,
            Option<ResourceState>,
            usize,
            Option<&'a str>,
        );
        let table: Vec<Row> = vec![
            ("outstanding: nothing", with(S::Executing), None, 0, None),
            (
                "complete: created",
                with(S::Complete),
                Some(ResourceState::Created),
                0,
                Some("HotPlugged"),
            ),
            (
                "failed: error",
                with(S::Error),
                Some(ResourceState::Error),
                0,
                Some("HotPlugFailed"),
            ),
            (
                "instance creating: wait",
                creating,
                None,
                0,
                Some("WaitingForInstance"),
            ),
            (
                "instance deleting: never",
                deleting,
                None,
                0,
                Some("InstanceUnavailable"),
            ),
        ];
        for (what, obs, state, ops, reason) in table {
            let plan = plan_interface(&iface(ResourceState::Initial), &obs, &ctx());
            let got_state = plan.iter().find_map(|a| match a {
                Action::SetState {
                    state: StateValue::Resource(s),
                    ..
                } => Some(s.clone()),
                _ => None,
            });
            assert_eq!(got_state, state, "{what}");
            assert_eq!(enqueued(&plan).len(), ops, "{what}");
            let got_reason = plan.iter().find_map(|a| match a {
                Action::SetCondition { reason, .. } => Some(reason.as_str()),
                _ => None,
            });
            assert_eq!(got_reason, reason, "{what}: {plan:?}");
        }
    }

    #[test]
    fn boot_interfaces_follow_their_instance_and_settle() {
        let obs = InterfaceObservation {
            instance: Some(running(None)),
            boot_interface: true,
            ..InterfaceObservation::default()
        };
        let plan = plan_interface(&iface(ResourceState::Initial), &obs, &ctx());
        assert!(enqueued(&plan).is_empty());
        assert!(plan.contains(&Action::SetState {
            state: StateValue::Resource(ResourceState::Created),
            message: None
        }));
        let mut done = iface(ResourceState::Created);
        if let Some(s) = done.status.as_mut() {
            s.conditions = vec![cond("Ready", "True", "Attached", "")];
        }
        assert_eq!(plan_interface(&done, &obs, &ctx()), vec![]);
    }

    #[test]
    fn floating_follows_spec_float() {
        let obs = InterfaceObservation {
            instance: Some(running(None)),
            boot_interface: true,
            address: Some("10.1.0.9".into()),
            ..InterfaceObservation::default()
        };
        let settled = |float: bool, floating: Option<&str>, ipv4: bool| {
            let mut n = iface(ResourceState::Created);
            n.spec.float = float;
            if let Some(s) = n.status.as_mut() {
                s.conditions = vec![cond("Ready", "True", "Attached", "")];
                s.floating_address = floating.map(str::to_owned);
                s.ipv4 = ipv4.then(|| "10.1.0.9".to_owned());
            }
            n
        };
        let no_address = InterfaceObservation {
            address: None,
            ..obs.clone()
        };
        let table = [
            (
                "float requested: reserve",
                settled(true, None, true),
                &obs,
                vec![Action::ReserveFloating],
            ),
            (
                "already floated: nothing",
                settled(true, Some("192.168.20.7"), true),
                &obs,
                vec![],
            ),
            (
                "unfloat: release",
                settled(false, Some("192.168.20.7"), true),
                &obs,
                vec![Action::ReleaseFloating {
                    address: "192.168.20.7".into(),
                }],
            ),
            (
                "no inner address yet: wait",
                settled(true, None, false),
                &no_address,
                vec![],
            ),
            (
                "never floated: nothing",
                settled(false, None, true),
                &obs,
                vec![],
            ),
        ];
        for (what, desired, obs, want) in table {
            assert_eq!(plan_interface(&desired, obs, &ctx()), want, "{what}");
        }
    }

    #[test]
    fn delete_releases_the_floating_address_too() {
        let mut n = iface(ResourceState::Created);
        n.spec.float = true;
        if let Some(s) = n.status.as_mut() {
            s.floating_address = Some("192.168.20.7".into());
        }
        let plan = plan_interface(&with_deletion(n), &InterfaceObservation::default(), &ctx());
        assert_eq!(
            plan,
            vec![
                Action::ReleaseFloating {
                    address: "192.168.20.7".into()
                },
                Action::SetState {
                    state: StateValue::Resource(ResourceState::Deleted),
                    message: None
                },
                Action::RemoveFinalizer,
            ]
        );
    }

    #[test]
    fn delete_releases_the_address() {
        let obs = InterfaceObservation {
            address: Some("10.1.0.9".into()),
            ..InterfaceObservation::default()
        };
        let plan = plan_interface(&with_deletion(iface(ResourceState::Created)), &obs, &ctx());
        assert_eq!(
            plan,
            vec![
                Action::ReleaseAddresses {
                    addresses: vec![ReservedAddress {
                        interface: "web-1-nic2".into(),
                        network: "db".into(),
                        address: "10.1.0.9".into()
                    }]
                },
                Action::SetState {
                    state: StateValue::Resource(ResourceState::Deleted),
                    message: None
                },
                Action::RemoveFinalizer,
            ]
        );
    }

    /// A deleted hot-plugged interface of a created instance, its plug observed in
    /// `plug`, and one unplug operation per state of `unplugs`.
    fn deleting_plugged(
        plug: S,
        unplugs: &[S],
        instance: Option<InstanceView>,
    ) -> (NetworkInterface, InterfaceObservation) {
        let mut n = iface(ResourceState::Created);
        if let Some(s) = n.status.as_mut() {
            s.macaddr = Some("02:00:00:aa:bb:cc".into());
        }
        let mut operations = vec![op(
            "networkinterface-web-1-nic2-1-hotplug",
            T::InterfaceHotPlug,
            plug,
        )];
        for (i, state) in unplugs.iter().enumerate() {
            operations.push(op(
                &format!("networkinterface-web-1-nic2-{}-unplug", i + 2),
                T::InterfaceHotUnplug,
                state.clone(),
            ));
        }
        let obs = InterfaceObservation {
            instance,
            address: Some("10.1.0.9".into()),
            operations,
            ..InterfaceObservation::default()
        };
        (with_deletion(n), obs)
    }

    fn ops_in(plan: &[Action]) -> Vec<&Action> {
        plan.iter()
            .filter(|a| matches!(a, Action::EnqueueOperation { .. }))
            .collect()
    }

    fn unplug_in(plan: &[Action]) -> Option<(String, Vec<String>, serde_json::Value)> {
        plan.iter().find_map(|a| match a {
            Action::EnqueueOperation {
                name,
                operation_type: T::InterfaceHotUnplug,
                depends_on,
                payload,
                ..
            } => Some((name.clone(), depends_on.clone(), payload.clone())),
            _ => None,
        })
    }

    fn releases(plan: &[Action]) -> bool {
        plan.iter()
            .any(|a| matches!(a, Action::ReleaseAddresses { .. }))
            && plan.contains(&Action::RemoveFinalizer)
    }

    #[test]
    fn a_deleted_plugged_interface_is_unplugged_before_its_address_is_released() {
        let (n, obs) = deleting_plugged(
            S::Complete,
            &[],
            Some(running(Some("instance-web-1-4-reboot"))),
        );
        let plan = plan_interface(&n, &obs, &ctx());
        assert!(
            !releases(&plan),
            "nothing released before the unplug: {plan:?}"
        );
        assert_eq!(ops_in(&plan).len(), 1, "{plan:?}");
        let Some(Action::EnqueueOperation {
            operation_type,
            node,
            target,
            ..
        }) = ops_in(&plan).first().copied()
        else {
            unreachable!()
        };
        assert_eq!(*operation_type, T::InterfaceHotUnplug);
        assert_eq!(node.as_deref(), Some("hv-1"));
        assert_eq!(target.kind, "NetworkInterface");
        let (name, depends_on, payload) = unplug_in(&plan).expect("unplug");
        assert_eq!(name, "networkinterface-web-1-nic2-2-unplug");
        // After whatever the instance is doing; the plug itself is done.
        assert_eq!(depends_on, vec!["instance-web-1-4-reboot".to_string()]);
        assert_eq!(payload["macaddr"], "02:00:00:aa:bb:cc");
        assert_eq!(payload["instance"], "web-1");
        // The same plan again (the operation not observed yet) names the same operation.
        assert_eq!(plan, plan_interface(&n, &obs, &ctx()));

        // Plugged long ago (its operation purged): still unplugged first.
        let (n, mut obs) = deleting_plugged(S::Complete, &[], Some(running(None)));
        obs.operations.clear();
        let plan = plan_interface(&n, &obs, &ctx());
        assert!(!releases(&plan), "{plan:?}");
        assert!(unplug_in(&plan).is_some(), "{plan:?}");
        // …but an interface that never got a plug (still initial) is simply released.
        let mut initial = n.clone();
        if let Some(s) = initial.status.as_mut() {
            s.state = ResourceState::Initial;
        }
        assert!(releases(&plan_interface(&initial, &obs, &ctx())));

        // A plug still queued: the unplug waits for it too.
        let (n, obs) = deleting_plugged(S::Queued, &[], Some(running(None)));
        let (_, depends_on, _) = unplug_in(&plan_interface(&n, &obs, &ctx())).expect("unplug");
        assert_eq!(
            depends_on,
            vec!["networkinterface-web-1-nic2-1-hotplug".to_string()]
        );

        // A plug that failed may have attached the NIC first: unplugged too.
        let (n, obs) = deleting_plugged(S::Error, &[], Some(running(None)));
        assert!(unplug_in(&plan_interface(&n, &obs, &ctx())).is_some());

        // No MAC in status or spec: the derived one, as the agent plugged it.
        let (mut n, obs) = deleting_plugged(S::Complete, &[], Some(running(None)));
        if let Some(s) = n.status.as_mut() {
            s.macaddr = None;
        }
        let (_, _, payload) = unplug_in(&plan_interface(&n, &obs, &ctx())).expect("unplug");
        assert_eq!(
            payload["macaddr"],
            sf_schema::interface::derived_mac("if-uid")
        );
    }

    #[test]
    fn the_address_is_released_once_the_unplug_completes_and_kept_while_it_fails() {
        let (n, obs) = deleting_plugged(S::Complete, &[S::Executing], Some(running(None)));
        let plan = plan_interface(&n, &obs, &ctx());
        assert!(!releases(&plan) && ops_in(&plan).is_empty(), "{plan:?}");

        let (n, obs) = deleting_plugged(S::Complete, &[S::Complete], Some(running(None)));
        assert!(releases(&plan_interface(&n, &obs, &ctx())));

        // A failed unplug is tried again, under the next name…
        let (n, obs) = deleting_plugged(S::Complete, &[S::Abort], Some(running(None)));
        let plan = plan_interface(&n, &obs, &ctx());
        assert!(!releases(&plan), "{plan:?}");
        let (name, _, _) = unplug_in(&plan).expect("a second unplug");
        assert_eq!(name, "networkinterface-web-1-nic2-3-unplug");

        // …up to UNPLUG_ATTEMPTS; then the address stays, with the reason, re-checked.
        let failed = vec![S::Error; UNPLUG_ATTEMPTS];
        let (n, obs) = deleting_plugged(S::Complete, &failed, Some(running(None)));
        let plan = plan_interface(&n, &obs, &ctx());
        assert!(!releases(&plan) && ops_in(&plan).is_empty(), "{plan:?}");
        assert!(
            plan.iter().any(|a| matches!(a, Action::Requeue { .. })),
            "a failed unplug is looked at again: {plan:?}"
        );
        assert!(format!("{plan:?}").contains("HotUnplugFailed"), "{plan:?}");
    }

    #[test]
    fn interfaces_whose_instance_cannot_hold_them_are_released_at_once() {
        let gone = |state: InstanceState, deleting: bool| InstanceView {
            state,
            deleting,
            ..running(None)
        };
        let table = [
            (
                "the instance is gone",
                deleting_plugged(S::Complete, &[], None),
            ),
            (
                "the instance is deleted",
                deleting_plugged(S::Complete, &[], Some(gone(InstanceState::Deleted, true))),
            ),
            (
                "the instance was never placed",
                deleting_plugged(
                    S::Complete,
                    &[],
                    Some(InstanceView {
                        node: None,
                        ..gone(InstanceState::Error, false)
                    }),
                ),
            ),
        ];
        for (what, (n, obs)) in table {
            let plan = plan_interface(&n, &obs, &ctx());
            assert!(
                releases(&plan) && ops_in(&plan).is_empty(),
                "{what}: {plan:?}"
            );
        }
        // An instance being deleted removes the NIC with its domain: no unplug, but the
        // address waits for that (a delete that fails leaves the domain running).
        for (state, deleting) in [
            (InstanceState::Created, true),
            (InstanceState::DeleteWait, true),
            (InstanceState::DeleteWaitError, true),
        ] {
            let (n, obs) = deleting_plugged(S::Complete, &[], Some(gone(state.clone(), deleting)));
            let plan = plan_interface(&n, &obs, &ctx());
            assert!(
                !releases(&plan) && ops_in(&plan).is_empty(),
                "{state}: {plan:?}"
            );
            assert!(
                format!("{plan:?}").contains("WaitingForInstanceDelete"),
                "{plan:?}"
            );
            assert!(
                plan.iter().any(|a| matches!(a, Action::Requeue { .. })),
                "{plan:?}"
            );
        }
        // An instance in error since may still run the domain: unplugged first.
        for state in [InstanceState::Error, InstanceState::CreatedError] {
            let (n, obs) = deleting_plugged(S::Complete, &[], Some(gone(state.clone(), false)));
            let plan = plan_interface(&n, &obs, &ctx());
            assert!(
                !releases(&plan) && unplug_in(&plan).is_some(),
                "{state}: {plan:?}"
            );
        }
        // A boot interface goes with its instance: no unplug.
        let (n, mut obs) = deleting_plugged(S::Complete, &[], Some(running(None)));
        obs.boot_interface = true;
        assert!(releases(&plan_interface(&n, &obs, &ctx())));
    }

    #[test]
    fn a_re_created_interface_pins_its_sequence_and_never_reuses_old_names() {
        // First reconcile of a new incarnation: only the finalizer and the pin.
        let mut n = iface(ResourceState::Initial);
        n.metadata.finalizers = None;
        n.metadata.resource_version = Some("900".into());
        let obs = InterfaceObservation {
            instance: Some(running(None)),
            network: Some(db(&["hv-1"], &[])),
            address: Some("10.1.0.9".into()),
            ..InterfaceObservation::default()
        };
        assert_eq!(
            plan_interface(&n, &obs, &ctx()),
            vec![Action::EnsureFinalizer, Action::BumpIntentSeq { to: 900 }]
        );
        // Pinned: its hot plug is named past every name the deleted one could have used.
        n.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        if let Some(s) = n.status.as_mut() {
            s.intent_seq = 900;
        }
        let plan = plan_interface(&n, &obs, &ctx());
        let names: Vec<String> = enqueued(&plan)
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(
            names,
            vec!["networkinterface-web-1-nic2-901-hotplug".to_string()]
        );
        // A deleted interface is never pinned (no finalizer may be added then).
        let mut gone = with_deletion(iface(ResourceState::Initial));
        gone.metadata.resource_version = Some("950".into());
        assert!(
            !plan_interface(&gone, &InterfaceObservation::default(), &ctx())
                .iter()
                .any(|a| matches!(a, Action::BumpIntentSeq { .. }))
        );
    }
}
