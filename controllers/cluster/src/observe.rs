//! The observe stage: fills the plan crate's `*Observation` structs.
//!
//! Contract (controllers/README.md):
//! - The reconciled object is read fresh from sf-api by the caller. Its own
//!   operations (label [`OWNER_LABEL`] = its uid), in any state, oldest first, come
//!   from the operation store plus the ledger of operations this process created
//!   ([`Context::created`]): only the lease holder creates operations and its stores
//!   were listed after the previous holder stopped, so every operation that exists is
//!   in one or the other (a LIST per reconcile would cost O(all operations)). A cached
//!   state may lag (queued when it is complete): plans then wait, the next watch event
//!   re-runs them.
//! - An instance also sees the cached operations targeting it that others created
//!   (one-shot requests such as snapshots), appended after its own.
//! - Everything else comes from the reflector stores: NodeViews with committed
//!   resources summed over placed, undeleted instances (plus the scheduler's ledger),
//!   addresses from held IPAMLeases owned by the instance's interfaces, NetworkViews
//!   with their outstanding `network_create_on_node` operations (any emitter, found by
//!   `shakenfist.io/target` / `spec.target.uid`), network members (interfaces on the network
//!   with their instance's node) and the network node (a Node with role `network`).
//! - While an instance or hot-plugged interface may still plumb a network, its view
//!   is read under the network's lock ([`Context::lock_networks`], also held by the
//!   network's own reconcile): with the ledger, an emitter always sees the other's
//!   create, so the network and instance plans never both create it on one node.
//! - Artifacts (observed for initial and preflight instances only, whose plans read
//!   them): an instance's disk `base` resolves as Shaken Fist does (its namespace,
//!   then a shared artifact of `system`, then by uid); it is ready once its latest
//!   version's sha512 is known (the Blob store, else a completed fetch's result),
//!   and its [`BlobReplica`] lists the nodes holding the blob (Blob `status.nodes`
//!   plus nodes where a fetch of it completed) and the fetches of it under way. An
//!   artifact observes its own operations, every other `artifact_fetch` targeting it
//!   (instances' replications), the results of the completed ones, the snapshots
//!   completed `instance_snapshot`s of its namespace took into it (by its uid), the
//!   Blobs all of these and the versions name, and every Node.
//! - A Blob observes its own `blob_delete` operations, whether any cached Artifact
//!   not being deleted has a version naming it (whatever its `referenceCount` says),
//!   and the Nodes that exist and are not deleted.
//! - A NetworkView's `nodes` is `status.nodes` plus the nodes where a create for it
//!   completed and no delete followed: instance and interface plans then do not
//!   re-plumb while the network controller has yet to record the node (the network
//!   plan itself reads `status.nodes` and writes it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use sf_plan::artifact::{
    ArtifactObservation, BlobReplica, BlobView, FetchNode, FetchResult, PendingFetch, SnapshotFact,
};
use sf_plan::instance::{ArtifactReadiness, ReservedAddress, boot_interface_name};
use sf_plan::interface::InstanceView;
use sf_plan::network::{NetworkMember, NetworkView, PendingCreate};
use sf_plan::scheduler::{NodeView, Resources};
use sf_plan::{
    BlobObservation, InstanceObservation, InterfaceObservation, NetworkObservation,
    ObservedOperation,
};
use sf_schema::instance::InstanceState;
use sf_schema::ipam::LeasePhase;
use sf_schema::node::{NodeRole, NodeState};
use sf_schema::operation::{OperationState, OperationType};
use sf_schema::snapshot::SnapshotResult;
use sf_schema::{Artifact, Blob, ClusterOperation, Instance, Network, NetworkInterface};

use crate::context::{Context, LEDGER_GRACE, OWNER_LABEL, Placement};
use crate::error::ReconcileError;

/// An operation as the plans see it.
pub fn observed_operation(op: &ClusterOperation) -> ObservedOperation {
    let status = op.status.clone().unwrap_or_default();
    ObservedOperation {
        name: op.name_any(),
        operation_type: op.spec.operation_type.clone(),
        state: status.state,
        node: op.spec.node.clone(),
        payload: op.spec.payload.clone(),
        completed_at: status.completed_at,
        error: status.error_report.map(|r| r.message),
    }
}

fn sort_oldest_first(ops: &mut [Arc<ClusterOperation>]) {
    ops.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
}

/// The operations labelled `owner=<uid>`, oldest first: the store plus the ones this
/// process created that the store does not show yet ([`Context::created`]).
pub async fn own_operations(
    ctx: &Context,
    _namespace: Option<&str>,
    uid: &str,
) -> Result<Vec<ObservedOperation>, ReconcileError> {
    Ok(operations_where(ctx, |op| {
        op.labels().get(OWNER_LABEL).map(String::as_str) == Some(uid)
    })
    .iter()
    .map(|op| observed_operation(op))
    .collect())
}

/// Store ∪ ledger operations matching `pred`, oldest first.
fn operations_where(
    ctx: &Context,
    pred: impl Fn(&ClusterOperation) -> bool,
) -> Vec<Arc<ClusterOperation>> {
    let mut ops: Vec<Arc<ClusterOperation>> = ctx
        .stores
        .operations
        .state()
        .into_iter()
        .filter(|op| pred(op))
        .collect();
    for op in ctx.created.matching(&pred) {
        if !ops
            .iter()
            .any(|o| o.name_any() == op.name_any() && o.namespace() == op.namespace())
        {
            ops.push(op);
        }
    }
    sort_oldest_first(&mut ops);
    ops
}

fn outstanding(op: &ClusterOperation) -> bool {
    matches!(
        op.status.as_ref().map(|s| &s.state),
        None | Some(OperationState::Queued | OperationState::Executing)
    )
}

fn op_state(op: &ClusterOperation) -> OperationState {
    op.status
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_default()
}

/// The operations targeting `uid` (store ∪ ledger), oldest first.
fn ops_targeting(ctx: &Context, uid: &str) -> Vec<Arc<ClusterOperation>> {
    operations_where(ctx, |op| op.spec.target.uid == uid)
}

/// The uids of the networks an instance reconcile may plumb (while it is not yet
/// creating): their locks are taken and their views read fresh.
pub fn plumbing_networks(ctx: &Context, instance: &Instance) -> Vec<String> {
    let state = instance
        .status
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_default();
    if !matches!(state, InstanceState::Initial | InstanceState::Preflight)
        || instance.metadata.deletion_timestamp.is_some()
    {
        return Vec::new();
    }
    let ns = instance.namespace();
    instance
        .spec
        .networks
        .iter()
        .filter_map(|n| find_network(ctx, ns.as_deref(), &n.network))
        .filter_map(|n| n.uid())
        .collect()
}

/// The uid of the network a hot-plugged interface may plumb (while it is initial).
pub fn interface_plumbing_network(ctx: &Context, interface: &NetworkInterface) -> Vec<String> {
    let initial = interface
        .status
        .as_ref()
        .is_none_or(|s| s.state == sf_schema::ResourceState::Initial);
    if !initial || interface.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    find_network(
        ctx,
        interface.namespace().as_deref(),
        &interface.spec.network,
    )
    .and_then(|n| n.uid())
    .into_iter()
    .collect()
}

/// The view of `network` under the network's lock: store ∪ ledger, which holds
/// every create this process made (see [`Context::created`]).
pub async fn network_view_fresh(
    ctx: &Context,
    network: &Network,
) -> Result<NetworkView, ReconcileError> {
    Ok(network_view(ctx, network))
}

/// The view of `network` the instance and interface plans read, from the cache.
pub fn network_view(ctx: &Context, network: &Network) -> NetworkView {
    let uid = network.uid().unwrap_or_default();
    network_view_of(network, &ops_targeting(ctx, &uid))
}

fn network_view_of(network: &Network, ops: &[Arc<ClusterOperation>]) -> NetworkView {
    let mut pending = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for op in ops {
        let Some(node) = op.spec.node.clone() else {
            continue;
        };
        match op.spec.operation_type {
            OperationType::NetworkCreateOnNode if outstanding(op) => pending.push(PendingCreate {
                node,
                operation: op.name_any(),
            }),
            OperationType::NetworkCreateOnNode if op_state(op) == OperationState::Complete => {
                done.insert(node);
            }
            OperationType::NetworkDelete => {
                done.remove(&node);
            }
            _ => {}
        }
    }
    let mut view = NetworkView::from_network(network, pending);
    for node in done {
        if !view.nodes.contains(&node) {
            view.nodes.push(node);
        }
    }
    view.nodes.sort();
    view
}

/// The Network `name` in `namespace`, from the store.
pub fn find_network(ctx: &Context, namespace: Option<&str>, name: &str) -> Option<Arc<Network>> {
    let mut key = ObjectRef::<Network>::new(name);
    if let Some(ns) = namespace {
        key = key.within(ns);
    }
    ctx.stores.networks.get(&key)
}

/// The Instance `name` in `namespace`, from the store.
pub fn find_instance(ctx: &Context, namespace: Option<&str>, name: &str) -> Option<Arc<Instance>> {
    let mut key = ObjectRef::<Instance>::new(name);
    if let Some(ns) = namespace {
        key = key.within(ns);
    }
    ctx.stores.instances.get(&key)
}

fn placed(instance: &Instance) -> Option<&str> {
    let status = instance.status.as_ref()?;
    if status.state == InstanceState::Deleted {
        return None;
    }
    status.node.as_deref()
}

/// Every Node with what is committed on it (the store, plus the ledger).
pub fn node_views(ctx: &Context, ledger: &mut HashMap<String, Placement>) -> Vec<NodeView> {
    let mut committed: HashMap<String, (Resources, u32)> = HashMap::new();
    let instances = ctx.stores.instances.state();
    let mut seen_uids = BTreeSet::new();
    for instance in &instances {
        let uid = instance.uid().unwrap_or_default();
        if let Some(node) = placed(instance) {
            seen_uids.insert(uid);
            let entry = committed.entry(node.to_owned()).or_default();
            entry.0 = entry.0.plus(Resources::for_instance(&instance.spec));
            entry.1 += 1;
        }
    }
    let known: BTreeSet<String> = instances.iter().filter_map(|i| i.uid()).collect();
    ledger.retain(|uid, p| {
        !seen_uids.contains(uid) && (known.contains(uid) || p.at.elapsed() < LEDGER_GRACE)
    });
    for p in ledger.values() {
        let entry = committed.entry(p.node.clone()).or_default();
        entry.0 = entry.0.plus(p.resources);
        entry.1 += 1;
    }
    ctx.stores
        .nodes
        .state()
        .iter()
        .map(|node| {
            let (resources, count) = committed.get(&node.name_any()).copied().unwrap_or_default();
            NodeView::from_node(node, resources, count)
        })
        .collect()
}

/// The network node: a Node with role `network` that is not deleted (lowest name).
pub fn network_node(ctx: &Context) -> Option<String> {
    ctx.stores
        .nodes
        .state()
        .iter()
        .filter(|n| n.spec.roles.contains(&NodeRole::Network))
        .filter(|n| {
            n.status
                .as_ref()
                .is_none_or(|s| s.state != NodeState::Deleted)
        })
        .map(|n| n.name_any())
        .min()
}

/// Held addresses owned by NetworkInterfaces named in `names` (or with a uid in `uids`).
fn held_addresses(
    ctx: &Context,
    namespace: Option<&str>,
    names: &BTreeSet<String>,
    uids: &BTreeSet<String>,
) -> Vec<ReservedAddress> {
    let mut out: Vec<ReservedAddress> = ctx
        .stores
        .leases
        .state()
        .iter()
        .filter(|l| l.namespace().as_deref() == namespace)
        .filter(|l| {
            l.status
                .as_ref()
                .is_none_or(|s| s.phase == LeasePhase::Held)
        })
        .filter_map(|l| {
            let owner = l.spec.owner.as_ref()?;
            let ours = owner.kind == "NetworkInterface"
                && (uids.contains(&owner.uid) || names.contains(&owner.name));
            ours.then(|| ReservedAddress {
                interface: owner.name.clone(),
                network: l.spec.network.clone(),
                address: l.spec.address.clone(),
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The NetworkInterfaces of `instance` in the store.
pub fn interfaces_of(ctx: &Context, instance: &Instance) -> Vec<Arc<NetworkInterface>> {
    let ns = instance.namespace();
    let name = instance.name_any();
    ctx.stores
        .interfaces
        .state()
        .into_iter()
        .filter(|i| i.namespace() == ns && i.spec.instance == name)
        .collect()
}

/// Observes `instance` (read fresh by the caller). `nodes` is left empty: the caller
/// fills it with [`node_views`] under the scheduler's lock when the instance is
/// unplaced.
pub async fn observe_instance(
    ctx: &Context,
    instance: &Instance,
) -> Result<InstanceObservation, ReconcileError> {
    let ns = instance.namespace();
    let uid = instance.uid().unwrap_or_default();
    let mut operations = own_operations(ctx, ns.as_deref(), &uid).await?;
    // Plus operations on the instance others created (one-shot requests through
    // sf-api: snapshots, screenshots, reboots), as far as the cache knows them.
    for op in ops_targeting(ctx, &uid) {
        if !operations.iter().any(|o| o.name == op.name_any()) {
            operations.push(observed_operation(&op));
        }
    }
    let name = instance.name_any();
    let mut names: BTreeSet<String> = (0..instance.spec.networks.len())
        .map(|i| boot_interface_name(&name, i))
        .collect();
    let mut uids = BTreeSet::new();
    for iface in interfaces_of(ctx, instance) {
        names.insert(iface.name_any());
        uids.extend(iface.uid());
    }
    let addresses = held_addresses(ctx, ns.as_deref(), &names, &uids);
    let status = instance.status.clone().unwrap_or_default();
    let node_state = status.node.as_ref().and_then(|n| {
        ctx.stores
            .nodes
            .get(&ObjectRef::new(n))
            .map(|node| node.status.clone().unwrap_or_default().state)
    });
    let nodes = Vec::new();
    let mut artifacts = Vec::new();
    // Only a preflight plan reads them (and their replicas cost an operation scan).
    let preflight = instance.metadata.deletion_timestamp.is_none()
        && matches!(
            status.state,
            InstanceState::Initial | InstanceState::Preflight
        );
    let bases = instance.spec.disks.iter().filter_map(|d| d.base.clone());
    for base in bases.filter(|_| preflight) {
        if artifacts.iter().any(|a: &ArtifactReadiness| a.name == base) {
            continue;
        }
        let artifact = resolve_artifact(ctx, ns.as_deref(), &base);
        let copyable = artifact
            .as_ref()
            .is_none_or(|a| sf_plan::artifact::copyable(&a.spec.source_url));
        let replica = artifact.and_then(|artifact| blob_replica(ctx, &artifact));
        artifacts.push(ArtifactReadiness {
            name: base,
            ready: replica.is_some(),
            replica,
            copyable,
        });
    }
    let plumbing = !plumbing_networks(ctx, instance).is_empty();
    let mut networks = Vec::new();
    for net in &instance.spec.networks {
        if networks.iter().any(|v: &NetworkView| v.name == net.network) {
            continue;
        }
        if let Some(network) = find_network(ctx, ns.as_deref(), &net.network) {
            networks.push(if plumbing {
                network_view_fresh(ctx, &network).await?
            } else {
                network_view(ctx, &network)
            });
        }
    }
    Ok(InstanceObservation {
        operations,
        addresses,
        node_state,
        nodes,
        artifacts,
        networks,
    })
}

/// Observes `network` (read fresh by the caller).
pub async fn observe_network(
    ctx: &Context,
    network: &Network,
) -> Result<NetworkObservation, ReconcileError> {
    let ns = network.namespace();
    let uid = network.uid().unwrap_or_default();
    let mut operations = own_operations(ctx, ns.as_deref(), &uid).await?;
    // Plus every network_create_on_node targeting it, whoever emitted it.
    for op in ops_targeting(ctx, &uid) {
        if op.spec.operation_type == OperationType::NetworkCreateOnNode
            && !operations.iter().any(|o| o.name == op.name_any())
        {
            operations.push(observed_operation(&op));
        }
    }
    let name = network.name_any();
    let members = ctx
        .stores
        .interfaces
        .state()
        .iter()
        .filter(|i| i.namespace() == ns && i.spec.network == name)
        .filter(|i| i.metadata.deletion_timestamp.is_none())
        .filter_map(|i| {
            let instance = find_instance(ctx, ns.as_deref(), &i.spec.instance)?;
            let istatus = instance.status.clone().unwrap_or_default();
            if istatus.state == InstanceState::Deleted {
                return None;
            }
            let status = i.status.clone().unwrap_or_default();
            Some(NetworkMember {
                interface: i.name_any(),
                instance: i.spec.instance.clone(),
                node: istatus.node,
                macaddr: status.macaddr,
                ipv4: status.ipv4,
                floating_address: status.floating_address,
            })
        })
        .collect();
    Ok(NetworkObservation {
        operations,
        members,
        network_node: network_node(ctx),
    })
}

/// Observes `interface` (read fresh by the caller).
pub async fn observe_interface(
    ctx: &Context,
    interface: &NetworkInterface,
) -> Result<InterfaceObservation, ReconcileError> {
    let ns = interface.namespace();
    let uid = interface.uid().unwrap_or_default();
    let operations = own_operations(ctx, ns.as_deref(), &uid).await?;
    let name = interface.name_any();
    let instance = find_instance(ctx, ns.as_deref(), &interface.spec.instance);
    let boot_interface = instance.as_ref().is_some_and(|i| {
        (0..i.spec.networks.len()).any(|n| boot_interface_name(&i.name_any(), n) == name)
    });
    let view = instance.as_ref().map(|i| {
        let iuid = i.uid().unwrap_or_default();
        let mut ops: Vec<Arc<ClusterOperation>> = ctx
            .stores
            .operations
            .state()
            .into_iter()
            .filter(|op| op.labels().get(OWNER_LABEL) == Some(&iuid) && outstanding(op))
            .collect();
        sort_oldest_first(&mut ops);
        let status = i.status.clone().unwrap_or_default();
        InstanceView {
            name: i.name_any(),
            state: status.state,
            node: status.node,
            deleting: i.metadata.deletion_timestamp.is_some(),
            last_outstanding_operation: ops.last().map(|op| op.name_any()),
        }
    });
    let names = BTreeSet::from([name]);
    let uids = BTreeSet::from([uid]);
    let address = held_addresses(ctx, ns.as_deref(), &names, &uids)
        .into_iter()
        .next()
        .map(|a| a.address);
    let network = match find_network(ctx, ns.as_deref(), &interface.spec.network) {
        Some(n) if !interface_plumbing_network(ctx, interface).is_empty() => {
            Some(network_view_fresh(ctx, &n).await?)
        }
        Some(n) => Some(network_view(ctx, &n)),
        None => None,
    };
    Ok(InterfaceObservation {
        instance: view,
        boot_interface,
        address,
        network,
        operations,
    })
}

/// The Artifact a disk `base` names, as Shaken Fist resolves it: `namespace` first,
/// then a shared artifact of `system`, then by uid (in `namespace`, or shared by
/// `system`).
pub fn resolve_artifact(
    ctx: &Context,
    namespace: Option<&str>,
    base: &str,
) -> Option<Arc<Artifact>> {
    let store = &ctx.stores.artifacts;
    if let Some(ns) = namespace
        && let Some(a) = store.get(&ObjectRef::new(base).within(ns))
    {
        return Some(a);
    }
    if namespace != Some("system")
        && let Some(a) = store
            .get(&ObjectRef::new(base).within("system"))
            .filter(|a| a.spec.shared)
    {
        return Some(a);
    }
    // By uid: in `namespace`, or a shared artifact of system (only system shares).
    store.state().into_iter().find(|a| {
        let ns = a.namespace();
        a.uid().as_deref() == Some(base)
            && (ns.as_deref() == namespace || (ns.as_deref() == Some("system") && a.spec.shared))
    })
}

/// The well-formed result of a completed `artifact_fetch`.
fn fetch_result(op: &ClusterOperation) -> Option<FetchResult> {
    let status = op.status.as_ref()?;
    if status.state != OperationState::Complete {
        return None;
    }
    FetchResult::from_result(status.result.as_ref()?)
}

/// The `artifact_fetch` operations targeting `uid` (store ∪ ledger), oldest first.
fn fetches_of(ctx: &Context, uid: &str) -> Vec<Arc<ClusterOperation>> {
    operations_where(ctx, |op| {
        op.spec.target.uid == uid && op.spec.operation_type == OperationType::ArtifactFetch
    })
}

/// The latest version's blob of `artifact` as instance plans replicate it; `None`
/// while it has no version or the blob's sha512 is not known yet (its Blob not
/// stored and no completed fetch reporting it in the cache).
pub fn blob_replica(ctx: &Context, artifact: &Artifact) -> Option<BlobReplica> {
    let version = artifact.status.as_ref()?.versions.last()?.clone();
    let uid = artifact.uid().unwrap_or_default();
    let stored = ctx
        .stores
        .blobs
        .get(&ObjectRef::new(&version.blob))
        .map(|b| BlobView::from_blob(&b));
    let fetches = fetches_of(ctx, &uid);
    let reported = fetches
        .iter()
        .filter_map(|op| fetch_result(op))
        .find(|r| r.blob == version.blob);
    let sha512 = stored
        .as_ref()
        .and_then(|b| b.sha512.clone())
        .or_else(|| reported.as_ref().map(|r| r.sha512.clone()))?;
    let mut nodes: BTreeSet<String> = stored
        .as_ref()
        .map(|b| b.nodes.iter().cloned().collect())
        .unwrap_or_default();
    let mut pending = Vec::new();
    for op in &fetches {
        let Some(node) = op.spec.node.clone() else {
            continue;
        };
        if fetch_result(op).is_some_and(|r| r.blob == version.blob) {
            nodes.insert(node);
        } else if outstanding(op) && op.spec.payload["blob"].as_str() == Some(&version.blob) {
            pending.push(PendingFetch {
                node,
                operation: op.name_any(),
            });
        }
    }
    Some(BlobReplica {
        artifact: crate::apply::target_of(artifact),
        source_url: artifact.spec.source_url.clone(),
        blob: version.blob,
        sha512,
        size: version.size,
        nodes: nodes.into_iter().collect(),
        pending,
    })
}

/// What the completed `instance_snapshot` operation `op` took, when it reports a
/// well-formed result ([`SnapshotResult`]).
pub fn snapshot_result(op: &ClusterOperation) -> Option<SnapshotResult> {
    if op.spec.operation_type != OperationType::InstanceSnapshot {
        return None;
    }
    let status = op.status.as_ref()?;
    if status.state != OperationState::Complete {
        return None;
    }
    SnapshotResult::from_result(status.result.as_ref()?)
}

/// The snapshots completed `instance_snapshot`s of `artifact`'s namespace took into
/// it (matched by uid, so a re-created namesake gets none of its predecessor's).
fn snapshot_facts(ctx: &Context, artifact: &Artifact) -> Vec<SnapshotFact> {
    let uid = artifact.uid().unwrap_or_default();
    let namespace = artifact.namespace();
    let mut facts = Vec::new();
    for op in ctx.stores.operations.state() {
        if op.namespace() != namespace {
            continue;
        }
        let (Some(result), Some(completed_at)) = (
            snapshot_result(&op),
            op.status.as_ref().and_then(|s| s.completed_at),
        ) else {
            continue;
        };
        for taken in result.snapshots {
            // A blob collected meanwhile (its bytes are gone) never becomes a version.
            let collected = ctx
                .stores
                .blobs
                .get(&ObjectRef::<Blob>::new(&taken.blob))
                .is_some_and(|b| {
                    b.status
                        .as_ref()
                        .is_some_and(|s| s.state == sf_schema::ResourceState::Deleted)
                });
            if taken.artifact_uid == uid && !collected {
                facts.push(SnapshotFact {
                    operation: op.name_any(),
                    completed_at,
                    sequence: sf_plan::ops::intent_seq_of(
                        "Instance",
                        &op.spec.target.name,
                        &op.name_any(),
                    )
                    .unwrap_or(0),
                    node: result.node.clone(),
                    taken,
                });
            }
        }
    }
    facts
}

/// Whether an `instance_snapshot` still queued or executing writes `blob`
/// ([`sf_plan::blob::snapshot_writes`]).
fn snapshot_in_progress(ctx: &Context, blob: &Blob) -> bool {
    ctx.stores
        .operations
        .state()
        .iter()
        .any(|op| sf_plan::blob::snapshot_writes(blob, op))
}

/// Observes `artifact` (read fresh by the caller).
pub async fn observe_artifact(
    ctx: &Context,
    artifact: &Artifact,
) -> Result<ArtifactObservation, ReconcileError> {
    let uid = artifact.uid().unwrap_or_default();
    let own = operations_where(ctx, |op| {
        op.labels().get(OWNER_LABEL).map(String::as_str) == Some(uid.as_str())
    });
    let replications: Vec<Arc<ClusterOperation>> = fetches_of(ctx, &uid)
        .into_iter()
        .filter(|op| !own.iter().any(|o| o.name_any() == op.name_any()))
        .collect();
    let mut results = std::collections::BTreeMap::new();
    for op in own.iter().chain(&replications) {
        if let Some(r) = fetch_result(op) {
            results.insert(op.name_any(), r);
        }
    }
    let mut names: BTreeSet<String> = artifact
        .status
        .as_ref()
        .map(|s| s.versions.iter().map(|v| v.blob.clone()).collect())
        .unwrap_or_default();
    names.extend(results.values().map(|r| r.blob.clone()));
    let snapshots = snapshot_facts(ctx, artifact);
    names.extend(snapshots.iter().map(|f| f.taken.blob.clone()));
    let blobs = names
        .iter()
        .filter_map(|name| ctx.stores.blobs.get(&ObjectRef::<Blob>::new(name)))
        .map(|b| BlobView::from_blob(&b))
        .collect();
    let nodes = ctx
        .stores
        .nodes
        .state()
        .iter()
        .map(|n| FetchNode {
            name: n.name_any(),
            state: n.status.clone().unwrap_or_default().state,
            schedulable: n.spec.schedulable,
            hypervisor: n.spec.roles.contains(&NodeRole::Hypervisor),
        })
        .collect();
    Ok(ArtifactObservation {
        operations: own.iter().map(|op| observed_operation(op)).collect(),
        replications: replications
            .iter()
            .map(|op| observed_operation(op))
            .collect(),
        results,
        snapshots,
        blobs,
        nodes,
    })
}

/// Observes `blob` (read fresh by the caller).
pub fn observe_blob(ctx: &Context, blob: &Blob) -> BlobObservation {
    let uid = blob.uid().unwrap_or_default();
    let name = blob.name_any();
    let operations = operations_where(ctx, |op| {
        op.labels().get(OWNER_LABEL).map(String::as_str) == Some(uid.as_str())
    });
    // An artifact being deleted drops its references (its plan writes the counts to 0
    // and it is gone once its finalizer is): it keeps nothing alive. The scan over
    // every artifact runs only when the plan reads it: a collectable-looking Blob.
    let status = blob.status.clone().unwrap_or_default();
    let collectable = status.reference_count == 0
        && status.state != sf_schema::ResourceState::Deleted
        && !status.nodes.is_empty();
    let referenced = collectable
        && (ctx.stores.artifacts.state().iter().any(|a| {
            a.metadata.deletion_timestamp.is_none()
                && a.status
                    .as_ref()
                    .is_some_and(|s| s.versions.iter().any(|v| v.blob == name))
        }) || snapshot_in_progress(ctx, blob));
    let nodes = ctx
        .stores
        .nodes
        .state()
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .is_none_or(|s| s.state != NodeState::Deleted)
        })
        .map(|n| n.name_any())
        .collect();
    BlobObservation {
        referenced,
        operations: operations.iter().map(|op| observed_operation(op)).collect(),
        nodes,
    }
}
