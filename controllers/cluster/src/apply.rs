//! The apply and status stages: execute a plan's actions against sf-api and
//! sf-database, then write `status` once.
//!
//! Contract (controllers/README.md, `sf_plan::action`):
//! - Actions run in order; the first failure stops the apply (the error is returned,
//!   nothing after it runs, and the status stage is skipped): the next reconcile
//!   re-plans from what was really written.
//! - Every run of consecutive `EnqueueOperation`s goes to sf-database in ONE
//!   `CreateOperations` call (one transaction). AlreadyExists is success: it is the
//!   same intent, created before a crash or by an earlier reconcile; the batch is then
//!   retried one operation at a time so the others are still created. Each operation
//!   carries the labels of [`crate::context`] (owner uid, kind and name; target uid).
//! - `ReserveAddress` creates the NetworkInterface (owned by the instance, `float`
//!   as the instance's `spec.networks` entry asks) when it is missing, reserves with the interface's uid as the lease owner and writes the
//!   address and a MAC (spec's, else one derived from the interface uid) to the
//!   interface's status. `ReleaseAddresses` releases into the halo as that owner.
//! - `ReserveFloating` reserves (type `floating`, owner = the reconciled Network or
//!   NetworkInterface) on the floating network ([`crate::floating::uid`]) and writes
//!   `status.floatingGateway` / `status.floatingAddress` at once, so the agent sees
//!   it before any operation of the plan runs; `ReleaseFloating` releases into the
//!   halo as that owner and clears the field (with the status stage).
//! - `ReserveRouted { index }` reserves (type `routed`, owner
//!   `sf_schema::network::routed_owner_uid(network uid, index)`: one owner per address,
//!   as reserve is idempotent per owner) on the floating network and writes
//!   `status.routedAddresses` (its first `index` entries plus the new one) at once;
//!   `ReleaseRouted` releases as that owner and truncates the list to `index` entries.
//! - Status actions are folded into one merge patch of `/status`, holding only the
//!   top-level fields that changed (so fields other writers own, such as the agent's
//!   `powerState` or a Node's `lastSeen`, are never overwritten); `Schedule` is
//!   written at once, before the addresses and operations that follow it. The status
//!   stage adds `observedGeneration` (and each written condition's) and skips the
//!   write when nothing differs, so a re-run with nothing changed writes nothing.
//! - `RemoveFinalizer` of an Instance first deletes its NetworkInterfaces (each then
//!   releases its address and goes); after it the object may be gone and no status
//!   is written.
//! - `WriteBlob` reads the Blob fresh, creates it when missing (cluster scoped, spec
//!   from the action) and merge-patches only the status fields that differ (`nodes`
//!   as a union with the stored list); a Blob already `deleted` (collected) is left
//!   alone.
//! - Operations live in their owner's namespace; those of a cluster-scoped owner (a
//!   Blob's `blob_delete`) in `system`.

use std::time::Duration;

use chrono::Utc;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sf_plan::instance::ReservedAddress;
use sf_plan::{Action, FINALIZER};
use sf_proto::v1 as pb;
use sf_schema::common::{Condition, ObjectRef};
use sf_schema::instance::InstanceState;
use sf_schema::{Blob, BlobSpec, Instance, Network, NetworkInterface, ResourceState};
use tonic::Code;

use crate::context::{Context, OWNER_KIND_LABEL, OWNER_LABEL, OWNER_NAME_LABEL, TARGET_LABEL};
use crate::error::ReconcileError;
use crate::kubeapi;
use crate::observe::find_network;

/// What an apply did that the controller needs to know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The plan's requeue hint.
    pub requeue: Option<Duration>,
    /// The finalizer was removed (the object may be gone).
    pub finalizer_removed: bool,
    /// Operations created (AlreadyExists not counted).
    pub enqueued: u64,
    /// Whether a status write happened.
    pub status_written: bool,
    /// The node a `Schedule` placed the object on.
    pub scheduled: Option<String>,
}

/// One apply of a plan to the object `obj` of kind `K`.
pub struct Apply<'a, K> {
    ctx: &'a Context,
    obj: &'a K,
    controller: &'static str,
    original: Map<String, Value>,
    status: Map<String, Value>,
    conditions: Vec<Condition>,
    conditions_touched: bool,
    batch: Vec<Action>,
    out: Applied,
}

fn status_of<K: Serialize>(obj: &K) -> Map<String, Value> {
    match serde_json::to_value(obj) {
        Ok(Value::Object(mut o)) => match o.remove("status") {
            Some(Value::Object(s)) => s,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

/// The status facts a `WriteBlob` merges into a Blob.
struct BlobFacts {
    size: Option<u64>,
    sha512: Option<String>,
    nodes: Vec<String>,
    reference_count: u64,
}

/// The merge patch that brings `status` to `facts` (nodes are a union: replicas are
/// only added here); empty when nothing differs.
fn blob_status_patch(status: &sf_schema::BlobStatus, facts: &BlobFacts) -> Map<String, Value> {
    let mut patch = Map::new();
    if status.state != ResourceState::Created {
        patch.insert("state".into(), json!(ResourceState::Created.as_str()));
    }
    if let Some(size) = facts.size
        && status.size != Some(size)
    {
        patch.insert("size".into(), json!(size));
    }
    if let Some(sha512) = &facts.sha512
        && status.checksums.get("sha512") != Some(sha512)
    {
        patch.insert("checksums".into(), json!({"sha512": sha512}));
    }
    let mut nodes: Vec<String> = status.nodes.clone();
    nodes.extend(facts.nodes.iter().cloned());
    nodes.sort();
    nodes.dedup();
    if nodes != status.nodes {
        patch.insert("nodes".into(), json!(nodes));
    }
    if status.reference_count != facts.reference_count {
        patch.insert("referenceCount".into(), json!(facts.reference_count));
    }
    patch
}

/// The `-error` state an instance moves to when its node is lost.
fn error_state(state: &InstanceState) -> Option<InstanceState> {
    Some(match state {
        InstanceState::Initial | InstanceState::Preflight => InstanceState::PreflightError,
        InstanceState::Creating => InstanceState::CreatingError,
        InstanceState::Created => InstanceState::CreatedError,
        InstanceState::DeleteWait => InstanceState::DeleteWaitError,
        _ => return None,
    })
}

impl<'a, K> Apply<'a, K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Send + Sync,
{
    /// An apply to `obj` for `controller`.
    pub fn new(ctx: &'a Context, obj: &'a K, controller: &'static str) -> Self {
        let original = status_of(obj);
        let conditions: Vec<Condition> = original
            .get("conditions")
            .cloned()
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        Self {
            ctx,
            obj,
            controller,
            status: original.clone(),
            original,
            conditions,
            conditions_touched: false,
            batch: Vec::new(),
            out: Applied::default(),
        }
    }

    fn ns(&self) -> Option<String> {
        self.obj.namespace()
    }

    fn name(&self) -> String {
        self.obj.name_any()
    }

    fn uid(&self) -> String {
        self.obj.uid().unwrap_or_default()
    }

    fn kind(&self) -> String {
        K::kind(&()).into_owned()
    }

    /// Runs `actions` then the status stage.
    pub async fn run(self, actions: &[Action]) -> Result<Applied, ReconcileError> {
        self.run_with(actions, true).await
    }

    /// Runs `actions`; the status stage only with `stage` (a plan applied in two
    /// parts runs it after the second).
    pub async fn run_with(
        mut self,
        actions: &[Action],
        stage: bool,
    ) -> Result<Applied, ReconcileError> {
        for action in actions {
            if !matches!(action, Action::EnqueueOperation { .. }) {
                self.flush_operations().await?;
            }
            self.one(action).await?;
        }
        self.flush_operations().await?;
        if !self.out.finalizer_removed {
            self.write_status(stage).await?;
        }
        Ok(self.out)
    }

    async fn one(&mut self, action: &Action) -> Result<(), ReconcileError> {
        match action {
            Action::EnsureFinalizer => {
                let mut finalizers = self.obj.finalizers().to_vec();
                if !finalizers.iter().any(|f| f == FINALIZER) {
                    finalizers.push(FINALIZER.to_owned());
                    let patch = json!({"metadata": {"finalizers": finalizers}});
                    let written: K = kubeapi::patch::<K>(
                        &self.ctx.client,
                        self.ns().as_deref(),
                        &self.name(),
                        &patch,
                    )
                    .await?;
                    self.ctx.note_written(
                        written.meta().uid.clone(),
                        written.meta().resource_version.clone(),
                    );
                }
            }
            Action::RemoveFinalizer => {
                self.write_status(false).await?;
                if K::kind(&()) == "Instance" {
                    self.delete_interfaces().await?;
                }
                let finalizers: Vec<String> = self
                    .obj
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"finalizers": finalizers}});
                match kubeapi::patch::<K>(
                    &self.ctx.client,
                    self.ns().as_deref(),
                    &self.name(),
                    &patch,
                )
                .await
                {
                    Ok(_) => {}
                    Err(ReconcileError::Api { source, .. })
                        if crate::error::is_not_found(&source) => {}
                    Err(e) => return Err(e),
                }
                self.out.finalizer_removed = true;
            }
            Action::DeleteObject => {
                self.write_status(false).await?;
                kubeapi::delete::<K>(&self.ctx.client, self.ns().as_deref(), &self.name()).await?;
                self.out.finalizer_removed = true;
            }
            Action::PrepareNetwork => {
                let request = pb::PrepareNetworkRequest {
                    network_uid: self.uid(),
                };
                let reply = self
                    .ctx
                    .gateway
                    .call("prepare_network", |mut g| {
                        let request = request.clone();
                        async move { g.prepare_network(request).await }
                    })
                    .await
                    .map_err(ReconcileError::gateway("PrepareNetwork"))?;
                self.status.insert("vxid".into(), json!(reply.vxid));
            }
            Action::Schedule { node } => {
                self.status.insert("node".into(), json!(node));
                self.write_status(false).await?;
                self.ctx.metrics.scheduled("placed");
                self.out.scheduled = Some(node.clone());
                tracing::info!(kind = %self.kind(), name = %self.name(), %node, "scheduled");
            }
            Action::Unschedulable { reason } => {
                self.ctx.metrics.scheduled("unschedulable");
                tracing::warn!(kind = %self.kind(), name = %self.name(), %reason, "unschedulable");
                self.record_event(&format!("unschedulable: {reason}")).await;
            }
            Action::ReserveAddress {
                interface,
                network,
                address,
            } => self.reserve(interface, network, address.as_deref()).await?,
            Action::ReleaseAddresses { addresses } => {
                for a in addresses {
                    self.release(a).await?;
                }
            }
            Action::ReserveFloating => self.reserve_floating().await?,
            Action::ReleaseFloating { address } => self.release_floating(address).await?,
            Action::ReserveRouted { index } => self.reserve_routed(*index).await?,
            Action::ReleaseRouted { index, address } => {
                self.release_routed(*index, address).await?;
            }
            Action::AbortOperations { reason, .. } => {
                let request = pb::AbortRequest {
                    target_uid: self.uid(),
                    reason: reason.clone(),
                };
                self.ctx
                    .gateway
                    .call("abort", |mut g| {
                        let request = request.clone();
                        async move { g.abort(request).await }
                    })
                    .await
                    .map_err(ReconcileError::gateway("Abort"))?;
            }
            Action::EnqueueOperation { .. } => self.batch.push(action.clone()),
            Action::MarkInstancesError { node, reason } => {
                self.mark_instances_error(node, reason).await?;
            }
            Action::SetState { state, message } => {
                self.status.insert("state".into(), json!(state.as_str()));
                if let (Some(message), "Instance") = (message, K::kind(&()).as_ref()) {
                    self.status.insert("errorMessage".into(), json!(message));
                }
            }
            Action::SetNodes { nodes } => {
                self.status.insert("nodes".into(), json!(nodes));
            }
            Action::SetVersions { versions } => {
                self.status.insert("versions".into(), json!(versions));
            }
            Action::WriteBlob {
                name,
                owner_namespace,
                source,
                mime_type,
                size,
                sha512,
                nodes,
                reference_count,
            } => {
                let spec = BlobSpec {
                    owner_namespace: owner_namespace.clone(),
                    size: *size,
                    mime_type: mime_type.clone(),
                    source: source.clone(),
                };
                let status = BlobFacts {
                    size: *size,
                    sha512: sha512.clone(),
                    nodes: nodes.clone(),
                    reference_count: *reference_count,
                };
                self.write_blob(name, spec, &status).await?;
            }
            Action::SetCondition {
                type_,
                status,
                reason,
                message,
            } => {
                let condition = Condition {
                    type_: type_.clone(),
                    status: status.clone(),
                    reason: reason.clone(),
                    message: message.clone(),
                    last_transition_time: Utc::now(),
                    observed_generation: self.obj.meta().generation,
                };
                sf_schema::set_condition(&mut self.conditions, condition, Utc::now());
                self.conditions_touched = true;
            }
            Action::BumpIntentSeq { to } => {
                self.status.insert("intentSeq".into(), json!(to));
            }
            Action::Requeue { after_secs } => {
                let d = Duration::from_secs(*after_secs);
                self.out.requeue = Some(self.out.requeue.map_or(d, |r| r.min(d)));
            }
        }
        Ok(())
    }

    /// Writes the fields of status that changed; with `stage` also
    /// `observedGeneration`. Skipped when nothing differs.
    async fn write_status(&mut self, stage: bool) -> Result<(), ReconcileError> {
        if self.conditions_touched {
            let conditions = serde_json::to_value(&self.conditions).map_err(|source| {
                ReconcileError::Encode {
                    what: "conditions".into(),
                    source,
                }
            })?;
            self.status.insert("conditions".into(), conditions);
        }
        if stage && let Some(generation) = self.obj.meta().generation {
            self.status
                .insert("observedGeneration".into(), json!(generation));
        }
        let mut patch = Map::new();
        for (k, v) in &self.status {
            if self.original.get(k) != Some(v) {
                patch.insert(k.clone(), v.clone());
            }
        }
        if patch.is_empty() {
            return Ok(());
        }
        tracing::debug!(kind = %self.kind(), name = %self.name(), ?patch, "status patch");
        let written: K = kubeapi::patch_status::<K>(
            &self.ctx.client,
            self.ns().as_deref(),
            &self.name(),
            &Value::Object(patch),
        )
        .await?;
        self.ctx.note_written(
            written.meta().uid.clone(),
            written.meta().resource_version.clone(),
        );
        self.original = self.status.clone();
        self.out.status_written = true;
        Ok(())
    }

    fn operation_object(&self, action: &Action) -> Option<Value> {
        let Action::EnqueueOperation {
            name,
            operation_type,
            target,
            node,
            depends_on,
            priority,
            payload,
        } = action
        else {
            return None;
        };
        let mut metadata = json!({
            "name": name,
            "labels": {
                OWNER_LABEL: self.uid(),
                OWNER_KIND_LABEL: self.kind(),
                OWNER_NAME_LABEL: self.name(),
                TARGET_LABEL: target.uid,
            },
        });
        // A cluster-scoped owner's (a Blob's) operations are cluster housekeeping: they
        // live in the admin namespace, which always exists.
        let ns = self
            .ns()
            .unwrap_or_else(|| sf_schema::namespace::SYSTEM_NAMESPACE.to_owned());
        metadata["namespace"] = json!(ns);
        let mut spec = json!({
            "operationType": operation_type.as_str(),
            "target": target,
            "priority": priority.as_str(),
            "payload": payload,
        });
        if let Some(node) = node {
            spec["node"] = json!(node);
        }
        if !depends_on.is_empty() {
            spec["dependsOn"] = json!(depends_on);
        }
        Some(json!({
            "apiVersion": sf_schema::API_VERSION,
            "kind": "ClusterOperation",
            "metadata": metadata,
            "spec": spec,
        }))
    }

    async fn flush_operations(&mut self) -> Result<(), ReconcileError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let mut requests = Vec::with_capacity(batch.len());
        for action in &batch {
            if let Some(object) = self.operation_object(action) {
                let bytes =
                    serde_json::to_vec(&object).map_err(|source| ReconcileError::Encode {
                        what: "operation".into(),
                        source,
                    })?;
                requests.push(pb::CreateOperationRequest {
                    object: bytes,
                    delay_ms: 0,
                });
            }
        }
        let request = pb::CreateOperationsRequest {
            operations: requests.clone(),
        };
        let result = self
            .ctx
            .gateway
            .call("create_operations", |mut g| {
                let request = request.clone();
                async move { g.create_operations(request).await }
            })
            .await;
        match result {
            Ok(reply) => {
                let n = u64::try_from(reply.operations.len()).unwrap_or(u64::MAX);
                for op in &reply.operations {
                    self.remember(&op.object);
                }
                self.count_enqueued(n);
                Ok(())
            }
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                // Some exist already (the same intents): create the rest one by one, in
                // order, so dependencies within the batch still resolve.
                let mut created = 0;
                for op in requests {
                    let result = self.ctx.gateway.create_operation(op).await;
                    match result {
                        Ok(reply) => {
                            self.remember(&reply.object);
                            created += 1;
                        }
                        Err(e) if e.code() == Some(Code::AlreadyExists) => {}
                        Err(e) => return Err(ReconcileError::gateway("CreateOperation")(e)),
                    }
                }
                self.count_enqueued(created);
                Ok(())
            }
            Err(e) => Err(ReconcileError::gateway("CreateOperations")(e)),
        }
    }

    /// Records a created operation in the ledger ([`Context::created`]).
    fn remember(&self, object: &[u8]) {
        match serde_json::from_slice::<sf_schema::ClusterOperation>(object) {
            Ok(op) => self.ctx.created.record(op),
            Err(e) => tracing::warn!(error = %e, "created operation does not decode"),
        }
    }

    fn count_enqueued(&mut self, n: u64) {
        self.out.enqueued += n;
        self.ctx.metrics.enqueued(self.controller, n);
    }

    async fn network_uid(&self, network: &str) -> Result<Option<String>, ReconcileError> {
        let ns = self.ns();
        if let Some(n) = find_network(self.ctx, ns.as_deref(), network) {
            return Ok(n.uid());
        }
        let fresh: Option<Network> = kubeapi::get(&self.ctx.client, ns.as_deref(), network).await?;
        Ok(fresh.and_then(|n| n.uid()))
    }

    /// `spec.networks[order].float` of the Instance being applied (a boot interface
    /// floats as its instance asked); false for other kinds.
    fn boot_float(&self, order: Option<u32>) -> bool {
        let Some(order) = order.filter(|_| K::kind(&()) == "Instance") else {
            return false;
        };
        serde_json::to_value(self.obj)
            .ok()
            .and_then(|v| {
                v.pointer(&format!("/spec/networks/{order}/float"))
                    .and_then(Value::as_bool)
            })
            .unwrap_or(false)
    }

    /// The NetworkInterface `name`, created (owned by this instance) when missing.
    async fn ensure_interface(
        &self,
        name: &str,
        network: &str,
        address: Option<&str>,
    ) -> Result<NetworkInterface, ReconcileError> {
        if K::kind(&()) == "NetworkInterface" && self.name() == name {
            let me = serde_json::to_value(self.obj)
                .and_then(serde_json::from_value::<NetworkInterface>)
                .map_err(|source| ReconcileError::Encode {
                    what: "NetworkInterface".into(),
                    source,
                })?;
            return Ok(me);
        }
        let ns = self.ns();
        if let Some(existing) =
            kubeapi::get::<NetworkInterface>(&self.ctx.client, ns.as_deref(), name).await?
        {
            return Ok(existing);
        }
        let order = name
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse::<u32>().ok());
        let mut iface = NetworkInterface::new(
            name,
            sf_schema::NetworkInterfaceSpec {
                instance: self.name(),
                network: network.to_owned(),
                address: address.map(str::to_owned),
                macaddr: None,
                model: Default::default(),
                float: self.boot_float(order),
                order,
            },
        );
        iface.metadata.namespace = ns.clone();
        iface.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: sf_schema::API_VERSION.to_owned(),
                kind: self.kind(),
                name: self.name(),
                uid: self.uid(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        if let Some(created) = kubeapi::create(&self.ctx.client, ns.as_deref(), &iface).await? {
            self.ctx.note_written(
                created.metadata.uid.clone(),
                created.metadata.resource_version.clone(),
            );
            return Ok(created);
        }
        kubeapi::get::<NetworkInterface>(&self.ctx.client, ns.as_deref(), name)
            .await?
            .ok_or_else(|| ReconcileError::Missing(format!("interface {name} vanished")))
    }

    async fn reserve(
        &mut self,
        interface: &str,
        network: &str,
        address: Option<&str>,
    ) -> Result<(), ReconcileError> {
        let Some(network_uid) = self.network_uid(network).await? else {
            return Err(ReconcileError::Missing(format!(
                "network {network} not found"
            )));
        };
        let iface = self.ensure_interface(interface, network, address).await?;
        let iface_uid = iface.uid().unwrap_or_default();
        let request = pb::ReserveAddressRequest {
            network_uid,
            address: address.unwrap_or_default().to_owned(),
            reservation_type: "instance".into(),
            owner_kind: "NetworkInterface".into(),
            owner_uid: iface_uid.clone(),
            owner_name: interface.to_owned(),
            comment: String::new(),
        };
        let reply = self
            .reserve_address(request, format!("ReserveAddress for {interface}"))
            .await?;
        let status = iface.status.clone().unwrap_or_default();
        let mac = iface
            .spec
            .macaddr
            .clone()
            .or(status.macaddr.clone())
            .unwrap_or_else(|| sf_schema::interface::derived_mac(&iface_uid));
        if K::kind(&()) == "NetworkInterface" && self.name() == interface {
            self.status.insert("ipv4".into(), json!(reply.address));
            self.status.insert("macaddr".into(), json!(mac));
        } else if status.ipv4.as_deref() != Some(reply.address.as_str())
            || status.macaddr.as_deref() != Some(mac.as_str())
        {
            let patch = json!({"ipv4": reply.address, "macaddr": mac});
            let written = kubeapi::patch_status::<NetworkInterface>(
                &self.ctx.client,
                self.ns().as_deref(),
                interface,
                &patch,
            )
            .await?;
            self.ctx.note_written(
                written.metadata.uid.clone(),
                written.metadata.resource_version.clone(),
            );
        }
        Ok(())
    }

    /// The status field holding this kind's floating address.
    fn floating_field(&self) -> Result<&'static str, ReconcileError> {
        match K::kind(&()).as_ref() {
            "Network" => Ok("floatingGateway"),
            "NetworkInterface" => Ok("floatingAddress"),
            other => Err(ReconcileError::Missing(format!(
                "{other} holds no floating address"
            ))),
        }
    }

    /// `ReserveFloating`: an address on the floating network owned by this object,
    /// written to its status at once (before the plan's operations are created).
    async fn reserve_floating(&mut self) -> Result<(), ReconcileError> {
        let field = self.floating_field()?;
        let address = self
            .reserve_on_floating_network("floating", self.uid(), String::new())
            .await?;
        self.status.insert(field.into(), json!(address));
        self.write_status(false).await
    }

    /// Reserves the next free address of the floating network, of `reservation_type`,
    /// for `owner_uid` (idempotent per owner); returns it.
    async fn reserve_on_floating_network(
        &self,
        reservation_type: &str,
        owner_uid: String,
        comment: String,
    ) -> Result<String, ReconcileError> {
        let Some(network_uid) = crate::floating::uid(&self.ctx.gateway).await? else {
            return Err(ReconcileError::Missing("the floating network".into()));
        };
        let request = pb::ReserveAddressRequest {
            network_uid,
            address: String::new(),
            reservation_type: reservation_type.into(),
            owner_kind: self.kind(),
            owner_uid,
            owner_name: self.name(),
            comment,
        };
        let reply = self
            .reserve_address(
                request,
                format!("ReserveAddress ({reservation_type}) for {}", self.name()),
            )
            .await?;
        Ok(reply.address)
    }

    /// `ReleaseFloating`: into the halo as this object, then the status field goes.
    async fn release_floating(&mut self, address: &str) -> Result<(), ReconcileError> {
        let field = self.floating_field()?;
        self.release_on_floating_network(address, self.uid(), "floating")
            .await?;
        self.status.insert(field.into(), Value::Null);
        Ok(())
    }

    /// Releases `address` of the floating network into the halo as `owner_uid`; an
    /// address (or floating network) already gone is fine.
    async fn release_on_floating_network(
        &self,
        address: &str,
        owner_uid: String,
        what: &str,
    ) -> Result<(), ReconcileError> {
        let Some(network_uid) = crate::floating::uid(&self.ctx.gateway).await? else {
            return Ok(());
        };
        self.release_address(
            network_uid,
            address,
            owner_uid,
            &format!("({what}) {address}"),
        )
        .await
    }

    /// ReleaseAddress of `address` on `network_uid` as `owner_uid` (into the halo); an
    /// address already released is fine. `what` names it in the error.
    /// Reserves an address through the gateway; `what` names the call in errors.
    async fn reserve_address(
        &self,
        request: pb::ReserveAddressRequest,
        what: String,
    ) -> Result<pb::ReserveAddressReply, ReconcileError> {
        self.ctx
            .gateway
            .call("reserve_address", |mut g| {
                let request = request.clone();
                async move { g.reserve_address(request).await }
            })
            .await
            .map_err(ReconcileError::gateway(what))
    }

    async fn release_address(
        &self,
        network_uid: String,
        address: &str,
        owner_uid: String,
        what: &str,
    ) -> Result<(), ReconcileError> {
        let request = pb::ReleaseAddressRequest {
            network_uid,
            address: address.to_owned(),
            owner_uid,
        };
        let result = self
            .ctx
            .gateway
            .call("release_address", |mut g| {
                let request = request.clone();
                async move { g.release_address(request).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(ReconcileError::gateway(format!("ReleaseAddress {what}"))(e)),
        }
    }

    /// `status.routedAddresses` with its first `keep` entries, then `then`, if any.
    fn set_routed(&mut self, keep: u32, then: Option<String>) {
        let mut routed: Vec<Value> = self
            .status
            .get("routedAddresses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        routed.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        routed.extend(then.map(Value::String));
        let value = if routed.is_empty() {
            Value::Null
        } else {
            Value::Array(routed)
        };
        self.status.insert("routedAddresses".into(), value);
    }

    /// `ReserveRouted`: the Network's `index`th routed address on the floating network
    /// (type `routed`, its own owner uid), appended to its status at once.
    async fn reserve_routed(&mut self, index: u32) -> Result<(), ReconcileError> {
        let position = usize::try_from(index).unwrap_or(usize::MAX);
        let owner = sf_schema::network::routed_owner_uid(&self.uid(), position);
        let comment = format!("routed address {index} of {}", self.name());
        let address = self
            .reserve_on_floating_network("routed", owner, comment)
            .await?;
        self.set_routed(index, Some(address));
        self.write_status(false).await
    }

    /// `ReleaseRouted`: into the halo as its owner, then dropped from the status.
    async fn release_routed(&mut self, index: u32, address: &str) -> Result<(), ReconcileError> {
        let position = usize::try_from(index).unwrap_or(usize::MAX);
        let owner = sf_schema::network::routed_owner_uid(&self.uid(), position);
        self.release_on_floating_network(address, owner, "routed")
            .await?;
        self.set_routed(index, None);
        Ok(())
    }

    async fn release(&mut self, a: &ReservedAddress) -> Result<(), ReconcileError> {
        let Some(network_uid) = self.network_uid(&a.network).await? else {
            return Ok(()); // The network and its IPAM are gone.
        };
        let owner_uid = if K::kind(&()) == "NetworkInterface" && self.name() == a.interface {
            self.uid()
        } else {
            kubeapi::get::<NetworkInterface>(&self.ctx.client, self.ns().as_deref(), &a.interface)
                .await?
                .and_then(|i| i.uid())
                .unwrap_or_default()
        };
        self.release_address(network_uid, &a.address, owner_uid, &a.address)
            .await
    }

    /// Records a `status` event on the object (v0.8 object type: the kind in lower
    /// case); best effort: a failure is logged, the apply goes on.
    async fn record_event(&self, message: &str) {
        let timestamp = Utc::now().timestamp_micros() as f64 / 1e6;
        let event = pb::Event {
            event_uuid: uuid::Uuid::new_v4().to_string(),
            event_type: "status".into(),
            timestamp,
            fqdn: "sf-cluster".into(),
            duration: None,
            message: message.to_owned(),
            extra: Vec::new(),
            request_id: None,
            objects: vec![pb::EventObject {
                object_type: self.kind().to_ascii_lowercase(),
                object_uuid: self.uid(),
            }],
        };
        let request = pb::RecordEventBatchRequest {
            events: vec![event],
        };
        let result = self
            .ctx
            .gateway
            .call("record_event_batch", |mut g| {
                let request = request.clone();
                async move { g.record_event_batch(request).await }
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record an event");
        }
    }

    async fn delete_interfaces(&self) -> Result<(), ReconcileError> {
        let ns = self.ns();
        let name = self.name();
        let owned: Vec<String> = self
            .ctx
            .stores
            .interfaces
            .state()
            .iter()
            .filter(|i| i.namespace() == ns && i.spec.instance == name)
            .filter(|i| i.metadata.deletion_timestamp.is_none())
            .map(|i| i.name_any())
            .collect();
        for iface in owned {
            kubeapi::delete::<NetworkInterface>(&self.ctx.client, ns.as_deref(), &iface).await?;
        }
        Ok(())
    }

    /// Creates the Blob `name` when missing, then merges `facts` into its status
    /// (read fresh, so a lagging cache never drops a node or writes twice).
    async fn write_blob(
        &self,
        name: &str,
        spec: BlobSpec,
        facts: &BlobFacts,
    ) -> Result<(), ReconcileError> {
        let client = &self.ctx.client;
        let blob = match kubeapi::get::<Blob>(client, None, name).await? {
            Some(b) => b,
            None => {
                let fresh = Blob::new(name, spec);
                match kubeapi::create(client, None, &fresh).await? {
                    Some(created) => created,
                    None => kubeapi::get::<Blob>(client, None, name)
                        .await?
                        .ok_or_else(|| ReconcileError::Missing(format!("blob {name} vanished")))?,
                }
            }
        };
        let status = blob.status.clone().unwrap_or_default();
        if status.state == ResourceState::Deleted {
            // Collected by the blob controller: its files are going or gone, and a
            // write here would bring it back to `created`.
            return Ok(());
        }
        let patch = blob_status_patch(&status, facts);
        if patch.is_empty() {
            return Ok(());
        }
        tracing::debug!(blob = %name, ?patch, "blob status patch");
        let written =
            kubeapi::patch_status::<Blob>(client, None, name, &Value::Object(patch)).await?;
        self.ctx.note_written(
            written.metadata.uid.clone(),
            written.metadata.resource_version.clone(),
        );
        Ok(())
    }

    async fn mark_instances_error(&self, node: &str, reason: &str) -> Result<(), ReconcileError> {
        for instance in self.ctx.stores.instances.state() {
            let status = instance.status.clone().unwrap_or_default();
            if status.node.as_deref() != Some(node)
                || instance.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let Some(to) = error_state(&status.state) else {
                continue;
            };
            let patch = json!({"state": to.as_str(), "errorMessage": reason});
            let written = kubeapi::patch_status::<Instance>(
                &self.ctx.client,
                instance.namespace().as_deref(),
                &instance.name_any(),
                &patch,
            )
            .await?;
            self.ctx.note_written(
                written.metadata.uid.clone(),
                written.metadata.resource_version.clone(),
            );
            tracing::warn!(instance = %instance.name_any(), %node, "instance to error: its node is lost");
        }
        Ok(())
    }
}

/// The target reference of an object (for tests and callers building operations).
pub fn target_of<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectRef {
    ObjectRef {
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap_or_default(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_status_patches_add_nodes_and_skip_what_is_already_there() {
        let facts = BlobFacts {
            size: Some(10),
            sha512: Some("ab".into()),
            nodes: vec!["hv-2".into()],
            reference_count: 1,
        };
        let patch = blob_status_patch(&sf_schema::BlobStatus::default(), &facts);
        assert_eq!(
            Value::Object(patch),
            json!({"state": "created", "size": 10, "checksums": {"sha512": "ab"},
                   "nodes": ["hv-2"], "referenceCount": 1})
        );
        let stored = sf_schema::BlobStatus {
            state: ResourceState::Created,
            size: Some(10),
            checksums: [("sha512".to_owned(), "ab".to_owned())].into(),
            nodes: vec!["hv-1".into(), "hv-2".into()],
            reference_count: 1,
            ..Default::default()
        };
        assert!(blob_status_patch(&stored, &facts).is_empty());
    }

    #[test]
    fn lost_nodes_move_live_instances_to_their_error_state() {
        assert_eq!(
            error_state(&InstanceState::Created),
            Some(InstanceState::CreatedError)
        );
        assert_eq!(error_state(&InstanceState::Error), None);
        assert_eq!(error_state(&InstanceState::Deleted), None);
    }
}
