//! The network reconciler's plan: [`plan_network`].
//!
//! Contract:
//! - A network is prepared first ([`Action::PrepareNetwork`]: VXLAN id and the
//!   network/broadcast/gateway reservations); nothing is plumbed before it has a vxid.
//! - `network_create_on_node` runs on every node hosting an interface on the network
//!   and on the network node, once per node: not while one for that node is
//!   outstanding (whoever emitted it: the instance and interface plans emit their own
//!   through `network_on_node`), not once the node is in `status.nodes`. A completed
//!   create adds its node to `status.nodes` ([`Action::SetNodes`]). The payload carries
//!   the vxid, the netblock and the DHCP/NAT/DNS switches; when the switches change,
//!   the network node is re-plumbed (the agent's create is an idempotent ensure).
//! - A network providing NAT holds an address on the floating network, its NAT
//!   gateway: once prepared, `status.floatingGateway` is reserved when missing
//!   ([`Action::ReserveFloating`], owner = the network, written at once) and nothing
//!   is plumbed in that plan, so every create on the network node sees it; released
//!   into the halo ([`Action::ReleaseFloating`]) when NAT is turned off and when the
//!   network goes.
//! - Routed addresses (Shaken Fist's `POST /networks/<ref>/route`): while
//!   `status.routedAddresses` holds fewer than `spec.routedAddressCount` (capped at
//!   64), each missing one is reserved ([`Action::ReserveRouted`], type `routed`,
//!   owner [`sf_schema::network::routed_owner_uid`] of the network uid and the index,
//!   appended at once) and nothing is plumbed in that plan; extra ones are released
//!   into the halo, last first ([`Action::ReleaseRouted`]), and all of them when the
//!   network goes. The agent routes each (`/32` to the network) in the network node's
//!   namespace; they are part of the `floating` fingerprint
//!   ([`routed_fingerprint`]), so a change re-plumbs the network node once.
//! - Floating addresses are applied by the network node's create (the agent's
//!   `ensure_network` sets the egress addresses and the DNAT/SNAT ruleset from the
//!   interfaces' `status.floatingAddress` and the gateway; its `network_update_dhcp`
//!   only rewrites dnsmasq). The network node's create payload carries `floating`,
//!   the [`floating_fingerprint`] (absent when nothing floats and there is no
//!   gateway). The fingerprint applied is recorded in the condition `Floating`
//!   (reason `Applied`, the fingerprint as message; no condition = nothing floats),
//!   which outlives purged operations. When the current fingerprint differs from the
//!   recorded one and no network-node create is outstanding or new in the plan: a
//!   completed network-node create carrying it → record it; a failed one → retry
//!   after `retry_backoff_secs`; else re-plumb the network node (a
//!   `network_create_on_node` with `networkNode: true`). A float, an unfloat or a
//!   floated interface going costs one create; a repeat with nothing changed none.
//! - `network_update_dhcp` is coalescible: at most one queued per network. It runs on
//!   the network node when DHCP or DNS is provided, whenever the fingerprint of the
//!   interfaces (name, MAC, address) and switches differs from the last one issued; the
//!   agent reads the current interfaces when it runs, so a queued update covers every
//!   later change. A new update depends on the executing one, if any.
//! - A failed network operation is retried with a new name once `retry_backoff_secs`
//!   have passed since it failed.
//! - Delete: wait until no interface uses the network (condition `InUse`), abort
//!   outstanding creates and updates, then `network_delete` on every node it is
//!   plumbed on; when all completed: the floating gateway and the routed addresses
//!   are released, `deleted` and
//!   the finalizer goes (sf-database drops its IPAM with the object).
//! - States (shakenfist.md §2): initial → created (prepared and on the network node);
//!   created → delete_wait → deleted; initial → deleted.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_schema::common::{ConditionStatus, ObjectRef, ResourceState};
use sf_schema::network::Network;
use sf_schema::operation::{OperationType, Priority};

use crate::PlanContext;
use crate::action::{Action, Plan, StateValue, condition, has_finalizer, pinned};
use crate::ops::{Namer, ObservedOperation, latest, pin_intent_seq};

/// The kind name used in operation names and targets.
pub const NETWORK_KIND: &str = "Network";

/// The condition recording the floating fingerprint applied on the network node.
pub const FLOATING_CONDITION: &str = "Floating";

/// A network's create operation that is queued or executing on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingCreate {
    /// The node.
    pub node: String,
    /// The operation's name.
    pub operation: String,
}

/// What the instance and interface plans need to know about a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkView {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `metadata.uid`.
    #[serde(default)]
    pub uid: String,
    /// `spec.netblock`.
    pub netblock: String,
    /// `status.vxid`; `None` until prepared.
    #[serde(default)]
    pub vxid: Option<u32>,
    /// `spec.provideDhcp`.
    #[serde(default)]
    pub provide_dhcp: bool,
    /// `spec.provideNat`.
    #[serde(default)]
    pub provide_nat: bool,
    /// `spec.provideDns`.
    #[serde(default)]
    pub provide_dns: bool,
    /// `status.nodes`: where it is plumbed.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Its outstanding `network_create_on_node` operations (any emitter).
    #[serde(default)]
    pub pending_creates: Vec<PendingCreate>,
}

impl NetworkView {
    /// The view of `network` with its outstanding create operations.
    pub fn from_network(network: &Network, pending_creates: Vec<PendingCreate>) -> Self {
        let status = network.status.clone().unwrap_or_default();
        Self {
            name: network.metadata.name.clone().unwrap_or_default(),
            namespace: network.metadata.namespace.clone(),
            uid: network.metadata.uid.clone().unwrap_or_default(),
            netblock: network.spec.netblock.clone(),
            vxid: status.vxid,
            provide_dhcp: network.spec.provide_dhcp,
            provide_nat: network.spec.provide_nat,
            provide_dns: network.spec.provide_dns,
            nodes: status.nodes,
            pending_creates,
        }
    }

    /// The network as an operation target.
    pub fn target(&self) -> ObjectRef {
        ObjectRef {
            kind: NETWORK_KIND.to_owned(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
        }
    }

    /// The payload of `network_create_on_node`.
    pub fn create_payload(&self, network_node: bool) -> serde_json::Value {
        json!({
            "network": self.name,
            "vxid": self.vxid,
            "netblock": self.netblock,
            "networkNode": network_node,
            "provideDhcp": self.provide_dhcp,
            "provideNat": self.provide_nat,
            "provideDns": self.provide_dns,
        })
    }
}

/// Whether a network is usable on a node, for a plan that needs it there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OnNode {
    /// No vxid yet: wait.
    NotPrepared,
    /// Plumbed.
    Ready,
    /// Being plumbed by this operation: depend on it.
    After(String),
    /// Not plumbed: enqueue this operation (named by the caller) and depend on it.
    Create(Box<Action>),
}

/// What `view` needs before an operation on `node` can use it; a new create is
/// named `name_if_new`.
pub(crate) fn network_on_node(view: &NetworkView, node: &str, name_if_new: String) -> OnNode {
    if view.vxid.is_none() {
        return OnNode::NotPrepared;
    }
    if view.nodes.iter().any(|n| n == node) {
        return OnNode::Ready;
    }
    if let Some(p) = view.pending_creates.iter().find(|p| p.node == node) {
        return OnNode::After(p.operation.clone());
    }
    OnNode::Create(Box::new(Action::EnqueueOperation {
        name: name_if_new,
        operation_type: OperationType::NetworkCreateOnNode,
        target: view.target(),
        node: Some(node.to_owned()),
        depends_on: Vec::new(),
        priority: Priority::Normal,
        payload: view.create_payload(false),
    }))
}

/// One interface on the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkMember {
    /// The NetworkInterface's name.
    pub interface: String,
    /// Its instance.
    pub instance: String,
    /// The instance's node, once placed.
    #[serde(default)]
    pub node: Option<String>,
    /// The MAC address, once known.
    #[serde(default)]
    pub macaddr: Option<String>,
    /// The reserved address, once known.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// `status.floatingAddress`, when floated.
    #[serde(default)]
    pub floating_address: Option<String>,
}

/// What observe() gathers for a network.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkObservation {
    /// Operations the network controller created for it, oldest first
    /// ([`crate::ops`]), plus every `network_create_on_node` targeting it.
    pub operations: Vec<ObservedOperation>,
    /// Every NetworkInterface on the network (of instances not yet deleted).
    pub members: Vec<NetworkMember>,
    /// The network node (role `network`), if one exists.
    #[serde(default)]
    pub network_node: Option<String>,
}

/// A stable 64-bit FNV-1a hash, hex (std's hasher is not stable across releases).
fn fnv1a(text: &str) -> String {
    let hash = sf_schema::common::fnv1a(text.as_bytes(), 0xcbf2_9ce4_8422_2325);
    format!("{hash:016x}")
}

/// The fingerprint of what dnsmasq serves: the members with an address and the
/// DHCP/DNS switches.
pub fn dhcp_fingerprint(network: &Network, members: &[NetworkMember]) -> String {
    let mut lines: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let ip = m.ipv4.as_deref()?;
            Some(format!(
                "{} {} {ip}",
                m.interface,
                m.macaddr.as_deref().unwrap_or("-")
            ))
        })
        .collect();
    lines.sort();
    lines.push(format!(
        "dhcp={} dns={}",
        network.spec.provide_dhcp, network.spec.provide_dns
    ));
    fnv1a(&lines.join("\n"))
}

/// The fingerprint of the network node's floating plumbing: the NAT gateway and each
/// member's floating address with its inner address; `None` when there is neither.
pub fn floating_fingerprint(gateway: Option<&str>, members: &[NetworkMember]) -> Option<String> {
    let mut lines: Vec<String> = members
        .iter()
        .filter_map(|m| {
            Some(format!(
                "{} {}",
                m.floating_address.as_deref()?,
                m.ipv4.as_deref()?
            ))
        })
        .collect();
    if lines.is_empty() && gateway.is_none() {
        return None;
    }
    lines.sort();
    lines.push(format!("gateway={}", gateway.unwrap_or("-")));
    Some(fnv1a(&lines.join("\n")))
}

/// The floating fingerprint extended by the routed addresses the network node routes
/// (`status.routedAddresses` up to `spec.routedAddressCount`); without any it is
/// `floating` unchanged, so networks without routes keep their recorded fingerprint.
pub fn routed_fingerprint(floating: Option<String>, routed: &[String]) -> Option<String> {
    if routed.is_empty() {
        return floating;
    }
    let floating = floating.unwrap_or_else(|| "-".into());
    Some(fnv1a(&format!("{floating}\nrouted={}", routed.join(","))))
}

/// A failed operation may be retried once the backoff has passed; otherwise how many
/// seconds remain.
fn backoff_remaining(op: &ObservedOperation, ctx: &PlanContext) -> Option<u64> {
    let done = op.completed_at?;
    let elapsed = (ctx.now - done).num_seconds();
    let backoff = i64::try_from(ctx.retry_backoff_secs).unwrap_or(i64::MAX);
    (elapsed < backoff).then(|| u64::try_from(backoff - elapsed).unwrap_or(1))
}

fn flags_differ(network: &Network, payload: &serde_json::Value) -> bool {
    payload["provideDhcp"] != json!(network.spec.provide_dhcp)
        || payload["provideNat"] != json!(network.spec.provide_nat)
        || payload["provideDns"] != json!(network.spec.provide_dns)
}

/// Whether `from → to` is a legal network state move (shakenfist.md §2).
pub fn network_transition_ok(from: &ResourceState, to: &ResourceState) -> bool {
    use ResourceState as S;
    if from == to {
        return from.is_known();
    }
    matches!(
        (from, to),
        (S::Initial, S::Created | S::Deleted | S::Error)
            | (S::Created, S::Deleted | S::DeleteWait | S::Error)
            | (S::DeleteWait, S::Deleted | S::Error)
            | (S::Error, S::Deleted)
    )
}

struct Ctx<'a> {
    network: &'a Network,
    observed: &'a NetworkObservation,
    ctx: &'a PlanContext,
    view: NetworkView,
    namer: Namer,
    state: ResourceState,
    conditions: Vec<sf_schema::Condition>,
    plan: Plan,
}

impl Ctx<'_> {
    fn set_state(&mut self, to: ResourceState) {
        if self.state != to && network_transition_ok(&self.state, &to) {
            self.plan.push(Action::SetState {
                state: StateValue::Resource(to),
                message: None,
            });
        }
    }

    fn condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: String) {
        let action = condition(&self.conditions, type_, status, reason, message);
        self.plan.push_opt(action);
    }

    fn ops_on<'o>(
        &'o self,
        kind: OperationType,
        node: &'o str,
    ) -> impl Iterator<Item = &'o ObservedOperation> + 'o {
        self.observed
            .operations
            .iter()
            .filter(move |op| op.operation_type == kind && op.node.as_deref() == Some(node))
    }

    fn latest_on(&self, kind: OperationType, node: &str) -> Option<&ObservedOperation> {
        latest(
            NETWORK_KIND,
            &self.view.name,
            &self.observed.operations,
            |op| op.operation_type == kind && op.node.as_deref() == Some(node),
        )
    }

    fn enqueue(
        &mut self,
        kind: OperationType,
        short: String,
        node: &str,
        depends_on: Vec<String>,
        payload: serde_json::Value,
    ) -> String {
        let name = self.namer.next(&short);
        let priority = if kind == OperationType::NetworkDelete {
            Priority::High
        } else {
            Priority::Normal
        };
        self.plan.push(Action::EnqueueOperation {
            name: name.clone(),
            operation_type: kind,
            target: self.view.target(),
            node: Some(node.to_owned()),
            depends_on,
            priority,
            payload,
        });
        name
    }

    /// Create on `node` unless done or under way; returns the outstanding (or new)
    /// create's name, if any.
    fn ensure_on_node(&mut self, node: &str, recorded: &mut BTreeSet<String>) -> Option<String> {
        let is_network_node = self.observed.network_node.as_deref() == Some(node);
        if let Some(op) = self
            .ops_on(OperationType::NetworkCreateOnNode, node)
            .find(|op| op.is_outstanding())
        {
            return Some(op.name.clone());
        }
        let latest = self
            .latest_on(OperationType::NetworkCreateOnNode, node)
            .cloned();
        if recorded.contains(node) {
            // Plumbed; re-plumb the network node when the switches changed.
            if !is_network_node {
                return None;
            }
            let drifted = match latest
                .as_ref()
                .filter(|op| op.payload["networkNode"] == json!(true))
            {
                Some(op) => flags_differ(self.network, &op.payload),
                None => {
                    self.network.metadata.generation
                        > self
                            .network
                            .status
                            .as_ref()
                            .and_then(|s| s.observed_generation)
                }
            };
            if !drifted {
                return None;
            }
        } else {
            match &latest {
                Some(op) if op.state == sf_schema::operation::OperationState::Complete => {
                    recorded.insert(node.to_owned());
                    return None;
                }
                Some(op) if op.failed() => {
                    if let Some(wait) = backoff_remaining(op, self.ctx) {
                        self.condition(
                            "Ready",
                            ConditionStatus::False,
                            "CreateOnNodeFailed",
                            format!(
                                "{} failed: {}",
                                op.name,
                                op.error.as_deref().unwrap_or("no error report")
                            ),
                        );
                        self.plan.requeue_in(wait);
                        return None;
                    }
                }
                _ => {}
            }
        }
        let payload = if is_network_node {
            self.network_node_payload()
        } else {
            self.view.create_payload(false)
        };
        Some(self.enqueue(
            OperationType::NetworkCreateOnNode,
            format!("netcreate-{node}"),
            node,
            Vec::new(),
            payload,
        ))
    }

    fn plan_dhcp(
        &mut self,
        network_node: &str,
        recorded: &BTreeSet<String>,
        nn_create: Option<String>,
    ) {
        let spec = &self.network.spec;
        if !(spec.provide_dhcp || spec.provide_dns) {
            return;
        }
        if !recorded.contains(network_node) && nn_create.is_none() {
            return;
        }
        let dhcp: Vec<&ObservedOperation> = self
            .observed
            .operations
            .iter()
            .filter(|op| op.operation_type == OperationType::NetworkUpdateDhcp)
            .collect();
        if dhcp
            .iter()
            .any(|op| op.state == sf_schema::operation::OperationState::Queued)
        {
            return; // Coalesced: the queued update reads the interfaces when it runs.
        }
        let fingerprint = dhcp_fingerprint(self.network, &self.observed.members);
        let newest_failed = latest(
            NETWORK_KIND,
            &self.view.name,
            &self.observed.operations,
            |op| op.operation_type == OperationType::NetworkUpdateDhcp,
        )
        .filter(|op| op.failed())
        .and_then(|op| backoff_remaining(op, self.ctx));
        if let Some(wait) = newest_failed {
            self.plan.requeue_in(wait);
            return;
        }
        let issued = latest(
            NETWORK_KIND,
            &self.view.name,
            &self.observed.operations,
            |op| op.operation_type == OperationType::NetworkUpdateDhcp && !op.failed(),
        );
        if issued.is_some_and(|op| op.payload["fingerprint"] == json!(fingerprint)) {
            return;
        }
        let mut depends_on: Vec<String> = nn_create.into_iter().collect();
        depends_on.extend(
            dhcp.iter()
                .filter(|op| op.state == sf_schema::operation::OperationState::Executing)
                .map(|op| op.name.clone()),
        );
        let payload = json!({
            "network": self.view.name,
            "fingerprint": fingerprint,
            "provideDhcp": spec.provide_dhcp,
            "provideDns": spec.provide_dns,
        });
        self.enqueue(
            OperationType::NetworkUpdateDhcp,
            "dhcp".to_owned(),
            network_node,
            depends_on,
            payload,
        );
    }

    fn floating_gateway(&self) -> Option<String> {
        self.network
            .status
            .as_ref()
            .and_then(|s| s.floating_gateway.clone())
    }

    /// Reserve the NAT gateway on the floating network (then plumb nothing: true),
    /// or release it once NAT is off.
    fn plan_gateway(&mut self) -> bool {
        match (self.network.spec.provide_nat, self.floating_gateway()) {
            (true, None) => {
                self.plan.push(Action::ReserveFloating);
                true
            }
            (false, Some(address)) => {
                self.plan.push(Action::ReleaseFloating { address });
                false
            }
            _ => false,
        }
    }

    /// The routed addresses held (`status.routedAddresses`, in reservation order).
    fn routed_held(&self) -> Vec<String> {
        self.network
            .status
            .as_ref()
            .map(|s| s.routed_addresses.clone())
            .unwrap_or_default()
    }

    /// How many routed addresses are wanted (`spec.routedAddressCount`, capped).
    fn routed_wanted(&self) -> usize {
        let count = self
            .network
            .spec
            .routed_address_count
            .min(sf_schema::network::MAX_ROUTED_ADDRESSES);
        usize::try_from(count).unwrap_or(0)
    }

    /// Reserve the missing routed addresses (then plumb nothing: true), or release
    /// the extra ones, highest index first.
    fn plan_routed(&mut self) -> bool {
        let held = self.routed_held();
        let wanted = self.routed_wanted();
        if wanted > held.len() {
            for index in held.len()..wanted {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                self.plan.push(Action::ReserveRouted { index });
            }
            return true;
        }
        self.release_routed(wanted);
        false
    }

    /// [`Action::ReleaseRouted`] for every held entry from `keep` on, last first.
    fn release_routed(&mut self, keep: usize) {
        let held = self.routed_held();
        for (index, address) in held.into_iter().enumerate().skip(keep).rev() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            self.plan.push(Action::ReleaseRouted { index, address });
        }
    }

    /// Re-plumb the network node until the floating fingerprint is applied (see the
    /// module contract).
    fn plan_floating(&mut self, nn: &str, nn_create: Option<&str>) {
        let current = self
            .floating_payload()
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let recorded = sf_schema::common::find_condition(&self.conditions, FLOATING_CONDITION)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        // Only once the network node's plumbing is recorded (`status.nodes`).
        let plumbed = self.view.nodes.iter().any(|n| n == nn);
        if nn_create.is_some() || !plumbed {
            return;
        }
        let last = latest(
            NETWORK_KIND,
            &self.view.name,
            &self.observed.operations,
            |op| {
                op.operation_type == OperationType::NetworkCreateOnNode
                    && op.node.as_deref() == Some(nn)
                    && op.payload["networkNode"] == json!(true)
            },
        )
        .cloned();
        // What the network node has: what its latest completed create carried, else
        // (those operations purged) what the condition recorded. The condition can
        // lag behind a completed create (the spec may change again before it is
        // written), so the operation wins.
        let by_operation = last
            .as_ref()
            .filter(|op| op.state == sf_schema::operation::OperationState::Complete)
            .map(|op| {
                op.payload["floating"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            });
        let applied = by_operation.clone().unwrap_or_else(|| recorded.clone());
        if current == applied {
            if by_operation.is_some() && recorded != current {
                self.condition(
                    FLOATING_CONDITION,
                    ConditionStatus::True,
                    "Applied",
                    current,
                );
            }
            return;
        }
        if let Some(op) = &last
            && op.failed()
            && let Some(wait) = backoff_remaining(op, self.ctx)
        {
            self.plan.requeue_in(wait);
            return;
        }
        let payload = self.network_node_payload();
        self.enqueue(
            OperationType::NetworkCreateOnNode,
            format!("netcreate-{nn}"),
            nn,
            Vec::new(),
            payload,
        );
    }

    /// The payload of a network-node create, with the floating fingerprint.
    fn network_node_payload(&self) -> serde_json::Value {
        let mut payload = self.view.create_payload(true);
        let floating = self.floating_payload();
        if !floating.is_null() {
            payload["floating"] = floating;
        }
        payload
    }

    /// The `floating` of a network-node create: the fingerprint of what the agent's
    /// NAT and routes apply, or null.
    fn floating_payload(&self) -> serde_json::Value {
        let gateway = self
            .floating_gateway()
            .filter(|_| self.network.spec.provide_nat);
        let mut routed = self.routed_held();
        routed.truncate(self.routed_wanted());
        routed_fingerprint(
            floating_fingerprint(gateway.as_deref(), &self.observed.members),
            &routed,
        )
        .map_or(serde_json::Value::Null, serde_json::Value::String)
    }

    fn plan_live(&mut self) {
        if !has_finalizer(self.network.metadata.finalizers.as_ref()) {
            self.plan.push(Action::EnsureFinalizer);
        }
        if self.view.vxid.is_none() {
            self.plan.push(Action::PrepareNetwork);
            self.condition(
                "Ready",
                ConditionStatus::False,
                "Preparing",
                "allocating the VXLAN id and reserved addresses".into(),
            );
            return;
        }
        // Both run: `|`, not `||`.
        if self.plan_gateway() | self.plan_routed() {
            return;
        }
        let network_node = self.observed.network_node.clone();
        let mut targets: BTreeSet<String> = self
            .observed
            .members
            .iter()
            .filter_map(|m| m.node.clone())
            .collect();
        targets.extend(network_node.iter().cloned());
        let before: BTreeSet<String> = self.view.nodes.iter().cloned().collect();
        let mut recorded = before.clone();
        let mut nn_create = None;
        for node in &targets {
            let create = self.ensure_on_node(node, &mut recorded);
            if network_node.as_deref() == Some(node.as_str()) {
                nn_create = create;
            }
        }
        if recorded != before {
            self.plan.push(Action::SetNodes {
                nodes: recorded.iter().cloned().collect(),
            });
        }
        if let Some(nn) = &network_node {
            self.plan_floating(nn, nn_create.as_deref());
            self.plan_dhcp(nn, &recorded, nn_create);
        }
        let on_network_node = network_node.as_ref().is_none_or(|nn| recorded.contains(nn));
        if on_network_node {
            self.set_state(ResourceState::Created);
            if self.state == ResourceState::Created || self.state == ResourceState::Initial {
                self.condition("Ready", ConditionStatus::True, "Created", String::new());
            }
        }
    }

    fn plan_delete(&mut self) {
        if !has_finalizer(self.network.metadata.finalizers.as_ref()) {
            return;
        }
        if !self.observed.members.is_empty() {
            let mut names: Vec<&str> = self
                .observed
                .members
                .iter()
                .map(|m| m.interface.as_str())
                .collect();
            names.sort_unstable();
            self.condition(
                "Ready",
                ConditionStatus::False,
                "InUse",
                format!("waiting for its interfaces to go: {}", names.join(", ")),
            );
            return;
        }
        let mut plumbed: BTreeSet<String> = self.view.nodes.iter().cloned().collect();
        for op in &self.observed.operations {
            if op.operation_type == OperationType::NetworkCreateOnNode
                && op.state == sf_schema::operation::OperationState::Complete
            {
                plumbed.extend(op.node.clone());
            }
        }
        let deleting = |op: &ObservedOperation| op.operation_type == OperationType::NetworkDelete;
        let others_outstanding = self
            .observed
            .operations
            .iter()
            .any(|op| op.is_outstanding() && !deleting(op));
        let deletes_outstanding = self
            .observed
            .operations
            .iter()
            .any(|op| op.is_outstanding() && deleting(op));
        if others_outstanding && !deletes_outstanding {
            self.plan.push(Action::AbortOperations {
                except_snapshots: true,
                reason: "network deleted".into(),
            });
        }
        let mut all_done = true;
        for node in &plumbed {
            let latest = self.latest_on(OperationType::NetworkDelete, node).cloned();
            match latest {
                Some(op) if op.is_outstanding() => all_done = false,
                Some(op) if op.state == sf_schema::operation::OperationState::Complete => {}
                Some(op) if op.failed() && backoff_remaining(&op, self.ctx).is_some() => {
                    all_done = false;
                    if let Some(wait) = backoff_remaining(&op, self.ctx) {
                        self.plan.requeue_in(wait);
                    }
                }
                _ => {
                    all_done = false;
                    let payload = json!({
                        "network": self.view.name,
                        "vxid": self.view.vxid,
                        "networkNode": self.observed.network_node.as_deref() == Some(node.as_str()),
                    });
                    self.enqueue(
                        OperationType::NetworkDelete,
                        format!("netdelete-{node}"),
                        node,
                        Vec::new(),
                        payload,
                    );
                }
            }
        }
        if all_done {
            if let Some(address) = self.floating_gateway() {
                self.plan.push(Action::ReleaseFloating { address });
            }
            self.release_routed(0);
            self.set_state(ResourceState::Deleted);
            self.plan.push(Action::RemoveFinalizer);
        } else {
            self.set_state(ResourceState::DeleteWait);
            self.condition("Ready", ConditionStatus::False, "Deleting", String::new());
        }
    }
}

/// Plans one reconcile of `network` (see the module contract).
pub fn plan_network(
    network: &Network,
    observed: &NetworkObservation,
    ctx: &PlanContext,
) -> Vec<Action> {
    let status = network.status.clone().unwrap_or_default();
    let view = NetworkView::from_network(network, Vec::new());
    if let Some(pin) = pin_intent_seq(
        NETWORK_KIND,
        &view.name,
        status.intent_seq,
        network.metadata.resource_version.as_deref(),
        &observed.operations,
    ) {
        return pinned(network.metadata.finalizers.as_ref(), pin);
    }
    let namer = Namer::new(
        NETWORK_KIND,
        &view.name,
        status.intent_seq,
        &observed.operations,
    );
    let mut c = Ctx {
        network,
        observed,
        ctx,
        view,
        namer,
        state: status.state.clone(),
        conditions: status.conditions.clone(),
        plan: Plan::default(),
    };
    if matches!(c.state, ResourceState::Deleted | ResourceState::Other(_)) {
        return Vec::new();
    }
    if network.metadata.deletion_timestamp.is_some() {
        c.plan_delete();
    } else if c.state != ResourceState::Error {
        c.plan_live();
    }
    let enqueues = c.plan.enqueues();
    let bump = c.namer.bump(enqueues);
    c.plan.push_opt(bump);
    c.plan.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ctx, op, with_deletion};
    use OperationType as T;
    use sf_schema::network::{NetworkSpec, NetworkStatus};
    use sf_schema::operation::OperationState as S;

    fn network(vxid: Option<u32>, nodes: &[&str], state: ResourceState, seq: u64) -> Network {
        let mut n = Network::new(
            "web",
            NetworkSpec {
                netblock: "10.0.0.0/24".into(),
                provide_dhcp: true,
                provide_nat: true,
                provide_dns: false,
                routed_address_count: 0,
            },
        );
        n.metadata.namespace = Some("demo".into());
        n.metadata.uid = Some("net-uid".into());
        n.metadata.generation = Some(1);
        n.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        n.status = Some(NetworkStatus {
            observed_generation: Some(1),
            state,
            vxid,
            floating_gateway: vxid.map(|_| "192.168.20.2".into()),
            nodes: nodes.iter().map(|s| (*s).to_owned()).collect(),
            intent_seq: seq,
            ..NetworkStatus::default()
        });
        n
    }

    fn member(iface: &str, node: &str, ip: &str) -> NetworkMember {
        NetworkMember {
            interface: iface.into(),
            instance: iface.trim_end_matches("-0").into(),
            node: Some(node.into()),
            macaddr: Some("02:00:00:00:00:01".into()),
            ipv4: Some(ip.into()),
            floating_address: None,
        }
    }

    fn dhcp_done(net: &Network, members: &[NetworkMember], name: &str) -> ObservedOperation {
        let mut o = op(name, T::NetworkUpdateDhcp, S::Complete);
        o.node = Some("net-1".into());
        o.payload = json!({"fingerprint": dhcp_fingerprint(net, members)});
        o
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| a.operation().map(|(n, _)| n.to_owned()))
            .collect()
    }

    /// A created network plumbed on net-1 and hv-1 with a current DHCP config.
    fn steady() -> (Network, NetworkObservation) {
        let net = network(Some(77), &["hv-1", "net-1"], ResourceState::Created, 3);
        let members = vec![member("a-0", "hv-1", "10.0.0.5")];
        let mut nn_create = op(
            "network-web-2-netcreate-net-1",
            T::NetworkCreateOnNode,
            S::Complete,
        );
        nn_create.node = Some("net-1".into());
        nn_create.payload = NetworkView::from_network(&net, vec![]).create_payload(true);
        let applied = floating_fingerprint(Some("192.168.20.2"), &members).unwrap_or_default();
        nn_create.payload["floating"] = json!(applied);
        let obs = NetworkObservation {
            operations: vec![nn_create, dhcp_done(&net, &members, "network-web-3-dhcp")],
            members,
            network_node: Some("net-1".into()),
        };
        let mut net = net;
        if let Some(s) = net.status.as_mut() {
            s.conditions = vec![
                crate::testutil::cond("Ready", "True", "Created", ""),
                crate::testutil::cond(FLOATING_CONDITION, "True", "Applied", &applied),
            ];
        }
        (net, obs)
    }

    #[test]
    fn nothing_changed_plans_nothing() {
        let (net, obs) = steady();
        assert_eq!(plan_network(&net, &obs, &ctx()), vec![]);
    }

    #[test]
    fn a_new_network_is_prepared_first() {
        let mut net = network(None, &[], ResourceState::Initial, 0);
        net.metadata.finalizers = None;
        let plan = plan_network(&net, &NetworkObservation::default(), &ctx());
        assert_eq!(plan[0], Action::EnsureFinalizer);
        assert_eq!(plan[1], Action::PrepareNetwork);
        assert!(names(&plan).is_empty());
    }

    #[test]
    fn prepared_network_goes_to_the_network_node_then_created() {
        let net = network(Some(77), &[], ResourceState::Initial, 0);
        let obs = NetworkObservation {
            network_node: Some("net-1".into()),
            ..NetworkObservation::default()
        };
        let plan = plan_network(&net, &obs, &ctx());
        assert_eq!(
            names(&plan),
            ["network-web-1-netcreate-net-1", "network-web-1-dhcp"]
        );
        let Some(Action::EnqueueOperation {
            payload,
            depends_on,
            ..
        }) = plan.iter().find(|a| {
            a.operation()
                .is_some_and(|(_, t)| *t == T::NetworkUpdateDhcp)
        })
        else {
            panic!("no dhcp op: {plan:?}");
        };
        assert_eq!(depends_on, &["network-web-1-netcreate-net-1"]);
        assert_eq!(payload["provideDhcp"], true);
        let Some(Action::EnqueueOperation { payload, .. }) = plan.first() else {
            panic!("{plan:?}")
        };
        assert_eq!(payload["provideNat"], true);
        assert_eq!(payload["networkNode"], true);
        assert_eq!(payload["vxid"], 77);
        assert!(plan.contains(&Action::BumpIntentSeq { to: 1 }));
        assert!(!plan.iter().any(|a| matches!(a, Action::SetState { .. })));

        // The create completed: record the node and move to created.
        let mut done = op(
            "network-web-1-netcreate-net-1",
            T::NetworkCreateOnNode,
            S::Complete,
        );
        done.node = Some("net-1".into());
        let mut net = net;
        if let Some(s) = net.status.as_mut() {
            s.intent_seq = 1;
        }
        let obs = NetworkObservation {
            operations: vec![done, dhcp_done(&net, &[], "network-web-1-dhcp")],
            ..obs
        };
        let plan = plan_network(&net, &obs, &ctx());
        assert!(names(&plan).is_empty(), "{plan:?}");
        assert!(plan.contains(&Action::SetNodes {
            nodes: vec!["net-1".into()]
        }));
        assert!(plan.contains(&Action::SetState {
            state: StateValue::Resource(ResourceState::Created),
            message: None
        }));
    }

    #[test]
    fn network_needed_on_a_new_node() {
        let (net, mut obs) = steady();
        obs.members.push(member("b-0", "hv-2", "10.0.0.6"));
        let plan = plan_network(&net, &obs, &ctx());
        // A create for hv-2 and a DHCP update for the new member, at seq 4.
        assert_eq!(
            names(&plan),
            ["network-web-4-netcreate-hv-2", "network-web-4-dhcp"]
        );
        let Some(Action::EnqueueOperation { node, payload, .. }) = plan.first() else {
            panic!("{plan:?}")
        };
        assert_eq!(node.as_deref(), Some("hv-2"));
        assert_eq!(payload["networkNode"], false);
        assert!(plan.contains(&Action::BumpIntentSeq { to: 4 }));

        // An instance plan already emitted the create for hv-2: nothing twice.
        let mut theirs = op(
            "instance-b-1-netcreate-web",
            T::NetworkCreateOnNode,
            S::Executing,
        );
        theirs.node = Some("hv-2".into());
        obs.operations.push(theirs);
        assert_eq!(
            names(&plan_network(&net, &obs, &ctx())),
            ["network-web-4-dhcp"]
        );
    }

    #[test]
    fn dhcp_updates_coalesce() {
        let (net, mut obs) = steady();
        obs.members.push(member("b-0", "hv-1", "10.0.0.6"));
        type Row<'a> = (&'a str, Option<S>, Vec<&'a str>, Vec<&'a str>);
        let table: Vec<Row> = vec![
            (
                "none pending: one update",
                None,
                vec!["network-web-4-dhcp"],
                vec![],
            ),
            ("one queued: nothing more", Some(S::Queued), vec![], vec![]),
            (
                "one executing: one more after it",
                Some(S::Executing),
                vec!["network-web-5-dhcp"],
                vec!["network-web-4-dhcp"],
            ),
        ];
        for (what, pending, want, deps) in table {
            let mut o = obs.clone();
            if let Some(state) = pending {
                let mut p = op("network-web-4-dhcp", T::NetworkUpdateDhcp, state);
                p.payload = json!({"fingerprint": "old"});
                o.operations.push(p);
            }
            let plan = plan_network(&net, &o, &ctx());
            assert_eq!(names(&plan), want, "{what}");
            if let Some(Action::EnqueueOperation { depends_on, .. }) =
                plan.iter().find(|a| a.operation().is_some())
            {
                assert_eq!(depends_on, &deps, "{what}");
            }
        }
    }

    #[test]
    fn switch_change_replumbs_the_network_node() {
        let (mut net, obs) = steady();
        net.spec.provide_nat = false;
        net.metadata.generation = Some(2);
        let plan = plan_network(&net, &obs, &ctx());
        assert_eq!(names(&plan), ["network-web-4-netcreate-net-1"]);
        let Some(Action::EnqueueOperation { payload, .. }) = plan.first() else {
            panic!("{plan:?}")
        };
        assert_eq!(payload["provideNat"], false);
    }

    #[test]
    fn failed_create_is_retried_after_the_backoff() {
        let (net, mut obs) = steady();
        obs.members.push(member("b-0", "hv-2", "10.0.0.6"));
        let mut failed = op(
            "network-web-4-netcreate-hv-2",
            T::NetworkCreateOnNode,
            S::Error,
        );
        failed.node = Some("hv-2".into());
        failed.completed_at = Some(ctx().now - chrono::Duration::seconds(10));
        obs.operations.push(failed.clone());
        let plan = plan_network(&net, &obs, &ctx());
        assert!(
            !names(&plan).iter().any(|n| n.contains("netcreate")),
            "{plan:?}"
        );
        assert!(plan.contains(&Action::Requeue { after_secs: 50 }));
        let last = obs.operations.len() - 1;
        obs.operations[last].completed_at = Some(ctx().now - chrono::Duration::seconds(61));
        let plan = plan_network(&net, &obs, &ctx());
        assert!(
            names(&plan).contains(&"network-web-5-netcreate-hv-2".to_owned()),
            "{plan:?}"
        );
    }

    #[test]
    fn delete_waits_for_members_then_deletes_everywhere() {
        let (net, obs) = steady();
        let net = with_deletion(net);
        let plan = plan_network(&net, &obs, &ctx());
        assert_eq!(
            plan,
            vec![Action::SetCondition {
                type_: "Ready".into(),
                status: ConditionStatus::False,
                reason: "InUse".into(),
                message: "waiting for its interfaces to go: a-0".into(),
            }]
        );
        let mut gone = obs.clone();
        gone.members.clear();
        let plan = plan_network(&net, &gone, &ctx());
        assert_eq!(
            names(&plan),
            [
                "network-web-4-netdelete-hv-1",
                "network-web-4-netdelete-net-1"
            ]
        );
        assert!(plan.contains(&Action::SetState {
            state: StateValue::Resource(ResourceState::DeleteWait),
            message: None
        }));
        for node in ["hv-1", "net-1"] {
            let mut d = op(
                &format!("network-web-4-netdelete-{node}"),
                T::NetworkDelete,
                S::Complete,
            );
            d.node = Some(node.into());
            gone.operations.push(d);
        }
        let plan = plan_network(&net, &gone, &ctx());
        assert_eq!(
            plan,
            vec![
                Action::ReleaseFloating {
                    address: "192.168.20.2".into()
                },
                Action::BumpIntentSeq { to: 4 },
                Action::SetState {
                    state: StateValue::Resource(ResourceState::Deleted),
                    message: None
                },
                Action::RemoveFinalizer,
            ]
        );
    }

    #[test]
    fn floating_addresses_replumb_the_network_node() {
        let (net, obs) = steady();
        let gw = Some("192.168.20.2");
        let members = |float: bool| {
            let mut members = obs.members.clone();
            if float {
                members[0].floating_address = Some("192.168.20.9".into());
            }
            members
        };
        let fp = |float: bool| floating_fingerprint(gw, &members(float)).unwrap_or_default();
        // The network with `applied` recorded; `obs` with the members and the network
        // node's last create (carrying `carried`) in `state`.
        let case = |float: bool, applied: bool, carried: bool, state: S| {
            let mut n = net.clone();
            if let Some(s) = n.status.as_mut() {
                s.conditions[1].message = fp(applied);
            }
            let mut o = obs.clone();
            o.members = members(float);
            o.operations[0].state = state;
            o.operations[0].payload["floating"] = json!(fp(carried));
            (n, o)
        };
        let replumb = |float: bool| {
            vec![Action::EnqueueOperation {
                name: "network-web-4-netcreate-net-1".into(),
                operation_type: T::NetworkCreateOnNode,
                target: NetworkView::from_network(&net, vec![]).target(),
                node: Some("net-1".into()),
                depends_on: vec![],
                priority: Priority::Normal,
                payload: {
                    let mut p = NetworkView::from_network(&net, vec![]).create_payload(true);
                    p["floating"] = json!(fp(float));
                    p
                },
            }]
        };
        let record = |float: bool| {
            vec![Action::SetCondition {
                type_: FLOATING_CONDITION.into(),
                status: ConditionStatus::True,
                reason: "Applied".into(),
                message: fp(float),
            }]
        };
        let table = [
            (
                "float requested: one re-plumb of the network node",
                case(true, false, false, S::Complete),
                replumb(true),
            ),
            (
                "the re-plumb outstanding: nothing new",
                case(true, false, true, S::Executing),
                vec![],
            ),
            (
                "the re-plumb completed: recorded",
                case(true, false, true, S::Complete),
                record(true),
            ),
            (
                "already floated: nothing",
                case(true, true, true, S::Complete),
                vec![],
            ),
            (
                "unfloat: one re-plumb",
                case(false, true, true, S::Complete),
                replumb(false),
            ),
            (
                "creates purged, floats recorded: nothing",
                {
                    let (n, mut o) = case(true, true, true, S::Complete);
                    o.operations.remove(0);
                    (n, o)
                },
                vec![],
            ),
        ];
        for (what, (n, o), want) in table {
            let mut plan = plan_network(&n, &o, &ctx());
            plan.retain(|a| !matches!(a, Action::BumpIntentSeq { .. }));
            assert_eq!(plan, want, "{what}");
        }
        // A network without NAT nor floats, plumbed before floats existed: nothing.
        let mut plain = net.clone();
        plain.spec.provide_nat = false;
        if let Some(s) = plain.status.as_mut() {
            s.floating_gateway = None;
            s.conditions.truncate(1);
        }
        let mut old = obs.clone();
        old.operations[0].payload = NetworkView::from_network(&plain, vec![]).create_payload(true);
        assert_eq!(plan_network(&plain, &old, &ctx()), vec![]);
    }

    #[test]
    fn routed_addresses_are_reserved_released_and_replumbed() {
        let (net, obs) = steady();
        let with = |count: u32, held: &[&str]| {
            let mut n = net.clone();
            n.spec.routed_address_count = count;
            if let Some(s) = n.status.as_mut() {
                s.routed_addresses = held.iter().map(|a| (*a).to_owned()).collect();
            }
            n
        };
        let plan_of = |n: &Network, o: &NetworkObservation| {
            let mut plan = plan_network(n, o, &ctx());
            plan.retain(|a| !matches!(a, Action::BumpIntentSeq { .. }));
            plan
        };
        // Count 1, none held: reserved alone (nothing plumbed in that plan).
        assert_eq!(
            plan_of(&with(1, &[]), &obs),
            vec![Action::ReserveRouted { index: 0 }]
        );
        // Count 2, one held: the second.
        assert_eq!(
            plan_of(&with(2, &["192.168.20.7"]), &obs),
            vec![Action::ReserveRouted { index: 1 }]
        );
        // Held but not yet routed: one re-plumb of the network node carrying it.
        let floating = floating_fingerprint(Some("192.168.20.2"), &obs.members);
        let routed_fp =
            routed_fingerprint(floating.clone(), &["192.168.20.7".into()]).unwrap_or_default();
        assert_ne!(Some(routed_fp.clone()), floating);
        let held = with(1, &["192.168.20.7"]);
        let plan = plan_of(&held, &obs);
        let creates: Vec<_> = plan
            .iter()
            .filter_map(|a| match a {
                Action::EnqueueOperation {
                    name,
                    node,
                    payload,
                    ..
                } => Some((name.clone(), node.clone(), payload["floating"].clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            creates,
            vec![(
                "network-web-4-netcreate-net-1".to_owned(),
                Some("net-1".to_owned()),
                json!(routed_fp)
            )],
            "{plan:?}"
        );
        assert_eq!(plan.len(), 1, "{plan:?}");
        // The re-plumb completed: recorded; once recorded: nothing.
        let mut done = obs.clone();
        done.operations[0].payload["floating"] = json!(routed_fp);
        assert_eq!(
            plan_of(&held, &done),
            vec![Action::SetCondition {
                type_: FLOATING_CONDITION.into(),
                status: ConditionStatus::True,
                reason: "Applied".into(),
                message: routed_fp.clone(),
            }]
        );
        let mut recorded = held.clone();
        if let Some(s) = recorded.status.as_mut() {
            s.conditions[1].message = routed_fp.clone();
        }
        assert_eq!(plan_of(&recorded, &done), vec![]);
        // Count down to 0: released last first, and the network node re-plumbed
        // without them.
        let mut down = with(0, &["192.168.20.7", "192.168.20.8"]);
        if let Some(s) = down.status.as_mut() {
            s.conditions[1].message = routed_fp.clone();
        }
        let plan = plan_of(&down, &done);
        let releases: Vec<_> = plan
            .iter()
            .filter(|a| matches!(a, Action::ReleaseRouted { .. }))
            .cloned()
            .collect();
        assert_eq!(
            releases,
            vec![
                Action::ReleaseRouted {
                    index: 1,
                    address: "192.168.20.8".into()
                },
                Action::ReleaseRouted {
                    index: 0,
                    address: "192.168.20.7".into()
                },
            ]
        );
        assert!(
            plan.iter().any(|a| matches!(
                a,
                Action::EnqueueOperation { payload, .. }
                    if payload["floating"] == json!(floating.clone().unwrap_or_default())
            )),
            "{plan:?}"
        );
        // The same, when the count dropped before the condition was recorded (the
        // completed create is what the node has): still re-plumbed.
        let mut raced = with(0, &["192.168.20.7"]);
        if let Some(s) = raced.status.as_mut() {
            s.conditions[1].message = floating.clone().unwrap_or_default();
        }
        let plan = plan_of(&raced, &done);
        assert!(
            plan.iter().any(|a| matches!(
                a,
                Action::EnqueueOperation { payload, .. }
                    if payload["floating"] == json!(floating.clone().unwrap_or_default())
            )),
            "a removal racing the condition still re-plumbs: {plan:?}"
        );
        // Delete: every routed address goes with the gateway.
        let mut gone = obs.clone();
        gone.members.clear();
        for node in ["hv-1", "net-1"] {
            let mut d = op(
                &format!("network-web-4-netdelete-{node}"),
                T::NetworkDelete,
                S::Complete,
            );
            d.node = Some(node.into());
            gone.operations.push(d);
        }
        let plan = plan_of(&with_deletion(with(1, &["192.168.20.7"])), &gone);
        assert!(
            plan.contains(&Action::ReleaseRouted {
                index: 0,
                address: "192.168.20.7".into()
            }),
            "{plan:?}"
        );
        assert!(plan.contains(&Action::RemoveFinalizer), "{plan:?}");
    }

    #[test]
    fn a_nat_network_holds_a_floating_gateway() {
        let (net, obs) = steady();
        let mut bare = net.clone();
        if let Some(s) = bare.status.as_mut() {
            s.floating_gateway = None;
        }
        // Reserved alone: nothing is plumbed before the gateway is written.
        assert_eq!(
            plan_network(&bare, &obs, &ctx()),
            vec![Action::ReserveFloating]
        );
        let mut fresh = network(Some(77), &[], ResourceState::Initial, 1);
        if let Some(s) = fresh.status.as_mut() {
            s.floating_gateway = None;
        }
        let nn = NetworkObservation {
            network_node: Some("net-1".into()),
            ..NetworkObservation::default()
        };
        assert_eq!(
            plan_network(&fresh, &nn, &ctx()),
            vec![Action::ReserveFloating]
        );
        // With it, the network node's create carries it.
        let fresh = network(Some(77), &[], ResourceState::Initial, 1);
        let plan = plan_network(&fresh, &nn, &ctx());
        let payload = plan.iter().find_map(|a| match a {
            Action::EnqueueOperation { payload, .. } => Some(payload.clone()),
            _ => None,
        });
        assert_eq!(
            payload.map(|p| p["floating"].clone()),
            Some(json!(floating_fingerprint(Some("192.168.20.2"), &[]))),
            "{plan:?}"
        );

        // NAT off: released.
        let mut off = net.clone();
        off.spec.provide_nat = false;
        let plan = plan_network(&off, &obs, &ctx());
        assert!(
            plan.contains(&Action::ReleaseFloating {
                address: "192.168.20.2".into()
            }),
            "{plan:?}"
        );

        // Already held: nothing (the steady plan is empty).
        assert_eq!(plan_network(&net, &obs, &ctx()), vec![]);
    }

    #[test]
    fn transitions_follow_shaken_fist() {
        use ResourceState as R;
        assert!(network_transition_ok(&R::Initial, &R::Created));
        assert!(!network_transition_ok(&R::Initial, &R::DeleteWait));
        assert!(network_transition_ok(&R::Created, &R::DeleteWait));
        assert!(network_transition_ok(&R::DeleteWait, &R::Deleted));
        assert!(!network_transition_ok(&R::Deleted, &R::Created));
        assert!(network_transition_ok(&R::Error, &R::Deleted));
    }
}
