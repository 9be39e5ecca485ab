//! The kube-runtime `Controller`s for Instance, Network, NetworkInterface, Artifact,
//! Blob and Node, and the watches that map related objects back to their owners.
//!
//! Contract:
//! - One watch per kind against sf-api feeds a shared reflector store; every
//!   controller subscribes to the stores it needs ([`run`]). Nothing runs until
//!   [`run`] is polled, and everything stops when its future is dropped (the daemon
//!   drops it when the lease is lost).
//! - Each reconcile takes its object from the cache when the cached copy includes
//!   this process's last write to it, else reads it fresh from sf-api (404: done);
//!   it observes
//!   ([`crate::observe`]), plans (`sf_plan`, pure), applies and writes status
//!   ([`crate::apply`]). Unplaced instances are planned under the scheduler's lock
//!   ([`crate::context::Context::placements`]); a placement enters the ledger before
//!   the lock is released and is written after (and leaves the ledger if the write
//!   fails).
//! - Triggers: ClusterOperations map to the controller that owns them (label
//!   `shakenfist.io/owner-kind`/`-name`) and to their target; a Network's
//!   `network_create_on_node` emitted by an instance therefore reaches the network
//!   controller, which records the node in `status.nodes` (`SetNodes`); likewise an
//!   instance's replication `artifact_fetch` reaches the artifact controller, which
//!   adds the node to the Blob. Nodes, Networks, Instances, NetworkInterfaces,
//!   IPAMLeases, Artifacts and Blobs map to the objects whose plans read them (an instance going away retries the unschedulable ones, as does
//!   a node whose state or capacity changes); a mapper that would fire on every heartbeat only fires when the
//!   fields those plans read change.
//! - Error policy: transient failures retry after 1 s doubling to 5 min; permanent
//!   ones (invalid requests) after 10 s doubling; a success resets the count. A plan's
//!   requeue hint is honoured; otherwise objects are re-checked every 5 minutes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sf_plan::scheduler::Resources;
use sf_plan::{
    Action, plan_artifact, plan_blob, plan_instance, plan_interface, plan_network, plan_node,
};
use sf_schema::{
    Artifact, Blob, ClusterOperation, IPAMLease, Instance, Network, NetworkInterface, Node,
};

use crate::apply::Apply;
use crate::context::{Context, OWNER_KIND_LABEL, OWNER_NAME_LABEL, Placement, Stores, object_key};
use crate::error::ReconcileError;
use crate::kubeapi;
use crate::observe;

/// How often an object with nothing pending is re-checked.
pub const RESYNC: Duration = Duration::from_secs(300);

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Remembers a fingerprint per key; says whether it changed.
#[derive(Default)]
struct Changes(Mutex<HashMap<String, String>>);

/// Fingerprints kept before the map is cleared (forgetting only costs one extra
/// trigger per object).
const CHANGES_CAP: usize = 50_000;

impl Changes {
    /// The fingerprint `key` had before, when it differs from `fingerprint` (`Some("")`
    /// for a key not seen yet); `None` when unchanged.
    fn previous(&self, key: String, fingerprint: String) -> Option<String> {
        match self.0.lock() {
            Ok(mut m) => {
                if m.len() >= CHANGES_CAP {
                    m.clear();
                }
                let before = m.insert(key, fingerprint.clone());
                (before.as_ref() != Some(&fingerprint)).then(|| before.unwrap_or_default())
            }
            Err(_) => Some(String::new()),
        }
    }

    fn changed(&self, key: String, fingerprint: String) -> bool {
        self.previous(key, fingerprint).is_some()
    }
}

fn ns_ref<K: Resource<DynamicType = ()>>(name: &str, ns: Option<&str>) -> ObjectRef<K> {
    let r = ObjectRef::new(name);
    match ns {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// The objects of `kind` an operation concerns: its owner (the owner labels apply sets)
/// and, with `by_target`, its target.
fn operation_refs<K: Resource<DynamicType = ()>>(
    op: &ClusterOperation,
    kind: &str,
    by_target: bool,
) -> Vec<ObjectRef<K>> {
    let mut out = Vec::new();
    if op.labels().get(OWNER_KIND_LABEL).map(String::as_str) == Some(kind)
        && let Some(name) = op.labels().get(OWNER_NAME_LABEL)
    {
        out.push(ns_ref(name, op.namespace().as_deref()));
    }
    if by_target && op.spec.target.kind == kind {
        out.push(ns_ref(
            &op.spec.target.name,
            op.spec.target.namespace.as_deref(),
        ));
    }
    out
}

fn requeue_of(after: Option<Duration>) -> Requeue {
    Requeue::requeue(after.unwrap_or(RESYNC).max(Duration::from_millis(100)))
}

async fn timed<K, F>(
    ctx: Arc<Context>,
    controller: &'static str,
    obj: Arc<K>,
    f: F,
) -> Result<Requeue, ReconcileError>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Requeue, ReconcileError>>,
{
    ctx.wait_ready().await;
    let start = Instant::now();
    let key = format!(
        "{controller}:{}",
        object_key(
            obj.meta().namespace.as_deref(),
            obj.meta().name.as_deref().unwrap_or_default()
        )
    );
    let result = f.await;
    ctx.metrics
        .reconciled(controller, start.elapsed().as_secs_f64(), result.is_ok());
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

fn error_policy<K: Resource<DynamicType = ()>>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &ReconcileError, Arc<Context>) -> Requeue {
    move |obj, err, ctx| {
        let key = format!(
            "{controller}:{}",
            object_key(
                obj.meta().namespace.as_deref(),
                obj.meta().name.as_deref().unwrap_or_default()
            )
        );
        let backoff = ctx.failed(&key, !err.transient());
        tracing::warn!(controller, object = %key, error = %err, retry_in = ?backoff, "reconcile failed");
        Requeue::requeue(backoff)
    }
}

/// The object to reconcile: the cached copy when it already includes this process's
/// last write to it (others' changes arrive as watch events and trigger again), else
/// a fresh read from sf-api.
async fn current<K>(ctx: &Context, obj: &K) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    if ctx.cache_is_current(
        obj.meta().uid.as_deref(),
        obj.meta().resource_version.as_deref(),
    ) {
        return Ok(Some(obj.clone()));
    }
    fresh(ctx, obj).await
}

async fn fresh<K>(ctx: &Context, obj: &K) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    kubeapi::get(
        &ctx.client,
        obj.meta().namespace.as_deref(),
        obj.meta().name.as_deref().unwrap_or_default(),
    )
    .await
}

/// One Instance reconcile.
pub async fn reconcile_instance(
    obj: Arc<Instance>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "instance", obj.clone(), async move {
        let Some(instance) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let _networks = c
            .lock_networks(observe::plumbing_networks(&c, &instance))
            .await;
        let mut observation = observe::observe_instance(&c, &instance).await?;
        let unplaced = instance.metadata.deletion_timestamp.is_none()
            && instance.status.as_ref().is_none_or(|s| s.node.is_none());
        let uid = instance.uid().unwrap_or_default();
        let (actions, placed) = if unplaced {
            // Only the decision is made under the lock: the placement goes into the
            // ledger at once (counted by every later decision), and is written after
            // the lock is released.
            let mut ledger = c.placements.lock().await;
            observation.nodes = observe::node_views(&c, &mut ledger);
            let actions = plan_instance(&instance, &observation, &c.plan_now());
            let at = actions
                .iter()
                .position(|a| matches!(a, Action::Schedule { .. }));
            if let Some(Action::Schedule { node }) = at.map(|i| &actions[i]) {
                ledger.insert(
                    uid.clone(),
                    Placement {
                        node: node.clone(),
                        resources: Resources::for_instance(&instance.spec),
                        at: Instant::now(),
                    },
                );
            }
            (actions, at)
        } else {
            (plan_instance(&instance, &observation, &c.plan_now()), None)
        };
        let (actions, instance) = match placed {
            Some(at) => {
                let head = Apply::new(&c, &instance, "instance")
                    .run_with(&actions[..=at], false)
                    .await;
                if let Err(e) = head {
                    c.placements.lock().await.remove(&uid);
                    return Err(e);
                }
                // The placement is in status now: apply the rest to the object as
                // written.
                match fresh(&c, &instance).await? {
                    Some(i) => (actions[at + 1..].to_vec(), i),
                    None => return Ok(Requeue::await_change()),
                }
            }
            None => (actions, instance),
        };
        tracing::debug!(instance = %instance.name_any(), ?actions, "plan");
        let applied = Apply::new(&c, &instance, "instance").run(&actions).await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// One Network reconcile.
pub async fn reconcile_network(
    obj: Arc<Network>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "network", obj.clone(), async move {
        if obj.namespace().is_none() {
            // The floating network has no namespace: nothing on the Kubernetes face
            // can patch it, and it needs no plumbing of its own (the network node's
            // egress carries its addresses). See `floating`.
            return Ok(Requeue::await_change());
        }
        let _lock = c.lock_networks(obj.uid().into_iter().collect()).await;
        let Some(network) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let observation = observe::observe_network(&c, &network).await?;
        let actions = plan_network(&network, &observation, &c.plan_now());
        tracing::debug!(network = %network.name_any(), ?actions, "plan");
        let applied = Apply::new(&c, &network, "network").run(&actions).await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// One NetworkInterface reconcile.
pub async fn reconcile_interface(
    obj: Arc<NetworkInterface>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "interface", obj.clone(), async move {
        let Some(interface) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let _network = c
            .lock_networks(observe::interface_plumbing_network(&c, &interface))
            .await;
        let observation = observe::observe_interface(&c, &interface).await?;
        let actions = plan_interface(&interface, &observation, &c.plan_now());
        let applied = Apply::new(&c, &interface, "interface")
            .run(&actions)
            .await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// One Artifact reconcile.
pub async fn reconcile_artifact(
    obj: Arc<Artifact>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "artifact", obj.clone(), async move {
        let Some(artifact) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let observation = observe::observe_artifact(&c, &artifact).await?;
        let actions = plan_artifact(&artifact, &observation, &c.plan_now());
        tracing::debug!(artifact = %artifact.name_any(), ?actions, "plan");
        let applied = Apply::new(&c, &artifact, "artifact").run(&actions).await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// One Blob reconcile (garbage collection of its files).
pub async fn reconcile_blob(obj: Arc<Blob>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "blob", obj.clone(), async move {
        let Some(blob) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let observation = observe::observe_blob(&c, &blob);
        let actions = plan_blob(&blob, &observation, &c.plan_now());
        tracing::debug!(blob = %blob.name_any(), ?actions, "plan");
        let applied = Apply::new(&c, &blob, "blob").run(&actions).await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// Whether `instance` may still replicate or wait for the artifacts of its disks.
fn awaits_artifacts(instance: &Instance) -> bool {
    instance.metadata.deletion_timestamp.is_none()
        && !instance.spec.disks.iter().all(|d| d.base.is_none())
        && matches!(
            instance.status.as_ref().map(|s| &s.state),
            None | Some(
                sf_schema::instance::InstanceState::Initial
                    | sf_schema::instance::InstanceState::Preflight
            )
        )
}

/// One Node reconcile.
pub async fn reconcile_node(obj: Arc<Node>, ctx: Arc<Context>) -> Result<Requeue, ReconcileError> {
    let c = ctx.clone();
    timed(ctx, "node", obj.clone(), async move {
        let Some(node) = current(&c, obj.as_ref()).await? else {
            return Ok(Requeue::await_change());
        };
        let actions = plan_node(&node, chrono::Utc::now(), &c.node);
        tracing::debug!(node = %node.name_any(), ?actions, "plan");
        let applied = Apply::new(&c, &node, "node").run(&actions).await?;
        Ok(requeue_of(applied.requeue))
    })
    .await
}

/// A store for kind `K` fed by one watch on sf-api, and the trigger streams of the
/// controllers that follow it.
///
/// Not kube-runtime's shared streams: its `ReflectHandle` (kube-runtime 5.0.0,
/// `reflector/dispatcher.rs`) answers `Pending` without arranging a wake-up when the
/// object an event names has left the store before the handle read it (an update
/// followed at once by the object's removal, as an instance's last status write and
/// its finalizer removal are). The stream then never yields again, and every later
/// change of that kind reaches no controller (seen as an instance delete that was
/// never acted on). Here each subscriber gets every object itself, removals
/// included, through its own unbounded channel: nothing is lost and no slow
/// subscriber holds the watch back.
struct Shared<K: Resource<DynamicType = ()> + Clone + 'static> {
    reader: Store<K>,
    writer: reflector::store::Writer<K>,
    subscribers: Arc<Subscribers<K>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    fn new() -> Self {
        let (reader, writer) = reflector::store();
        Self {
            reader,
            writer,
            subscribers: Arc::default(),
        }
    }

    /// A new trigger stream: every object the watch applies or removes (and every
    /// object once the initial list is stored), from now on.
    fn subscribe(&self) -> futures::channel::mpsc::UnboundedReceiver<Arc<K>> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(tx);
        }
        rx
    }

    /// The reflector driving this store from one watch on sf-api; it hands each event's
    /// object to every subscriber after storing it.
    fn drive(self, client: kube::Client) -> BoxFut {
        let api: Api<K> = Api::all(client);
        let kind = K::kind(&()).into_owned();
        let reader = self.reader;
        let subscribers = self.subscribers;
        let mut relisting = Vec::new();
        Box::pin(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(self.writer)
                .for_each(move |event| {
                    match event {
                        Ok(event) => fan_out(&reader, &subscribers, event, &mut relisting),
                        Err(e) => tracing::warn!(kind = %kind, error = %e, "watch"),
                    }
                    std::future::ready(())
                }),
        )
    }
}

/// The subscribers of one [`Shared`] store.
type Subscribers<K> = std::sync::Mutex<Vec<futures::channel::mpsc::UnboundedSender<Arc<K>>>>;

/// Hands the object of a stored watch event to every subscriber: an applied or
/// removed object, or every object once a (re)list is stored, together with every
/// object the relist no longer has (removed while the watch was down: a removal
/// whose own event was never seen). `before` holds the store's objects from the
/// start of a relist to its end. A subscriber whose receiver went away (its
/// controller stopped) is dropped.
fn fan_out<K>(
    reader: &Store<K>,
    subscribers: &Subscribers<K>,
    event: watcher::Event<K>,
    before: &mut Vec<Arc<K>>,
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let objects: Vec<Arc<K>> = match event {
        watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => vec![Arc::new(obj)],
        // The store keeps serving the previous list until the relist is done.
        watcher::Event::Init => {
            *before = reader.state();
            Vec::new()
        }
        watcher::Event::InitApply(_) => Vec::new(),
        watcher::Event::InitDone => {
            // By uid too: a namesake re-created while the watch was down does not
            // hide its predecessor's removal.
            let key = |o: &Arc<K>| (ObjectRef::from_obj(o.as_ref()), o.meta().uid.clone());
            let mut now = reader.state();
            let kept: std::collections::HashSet<_> = now.iter().map(key).collect();
            now.extend(before.drain(..).filter(|o| !kept.contains(&key(o))));
            now
        }
    };
    if objects.is_empty() {
        return;
    }
    if let Ok(mut subscribers) = subscribers.lock() {
        subscribers.retain(|tx| {
            objects
                .iter()
                .all(|obj| tx.unbounded_send(obj.clone()).is_ok())
        });
    }
}

/// Settings the controllers share (besides the clients).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Plan settings.
    pub plan: sf_plan::PlanContext,
    /// Node timeline.
    pub node: sf_plan::NodeConfig,
    /// Reconciles run at once per controller.
    pub concurrency: u16,
}

/// Builds the context and runs every controller until the future is dropped.
/// `context_out` receives the context (tests inspect the stores).
pub async fn run(
    client: kube::Client,
    gateway: sf_database_client::GatewayClient,
    settings: Settings,
    metrics: crate::metrics::ClusterMetrics,
    context_out: Option<tokio::sync::oneshot::Sender<Arc<Context>>>,
) {
    let instances = Shared::<Instance>::new();
    let networks = Shared::<Network>::new();
    let interfaces = Shared::<NetworkInterface>::new();
    let nodes = Shared::<Node>::new();
    let operations = Shared::<ClusterOperation>::new();
    let leases = Shared::<IPAMLease>::new();
    let artifacts = Shared::<Artifact>::new();
    let blobs = Shared::<Blob>::new();
    let stores = Stores {
        instances: instances.reader.clone(),
        networks: networks.reader.clone(),
        interfaces: interfaces.reader.clone(),
        nodes: nodes.reader.clone(),
        operations: operations.reader.clone(),
        leases: leases.reader.clone(),
        artifacts: artifacts.reader.clone(),
        blobs: blobs.reader.clone(),
    };
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let readiness: BoxFut = {
        let stores = stores.clone();
        Box::pin(async move {
            let all = async {
                let _ = stores.instances.wait_until_ready().await;
                let _ = stores.networks.wait_until_ready().await;
                let _ = stores.interfaces.wait_until_ready().await;
                let _ = stores.nodes.wait_until_ready().await;
                let _ = stores.operations.wait_until_ready().await;
                let _ = stores.leases.wait_until_ready().await;
                let _ = stores.artifacts.wait_until_ready().await;
                let _ = stores.blobs.wait_until_ready().await;
            };
            tokio::pin!(all);
            loop {
                match tokio::time::timeout(Duration::from_secs(30), &mut all).await {
                    Ok(()) => break,
                    Err(_) => tracing::warn!(
                        "the caches have not all listed after 30 s; no reconcile runs until they have (see the watch errors)"
                    ),
                }
            }
            ready_tx.send_replace(true);
            tracing::info!("caches listed; reconciling");
            std::future::pending::<()>().await;
        })
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        gateway,
        stores: stores.clone(),
        plan: settings.plan.clone(),
        node: settings.node.clone(),
        metrics,
        placements: tokio::sync::Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        network_locks: Mutex::new(HashMap::new()),
        created: crate::context::CreatedOps::default(),
        written: Mutex::new(HashMap::new()),
        ready: ready_rx,
    });
    if let Some(tx) = context_out {
        let _ = tx.send(ctx.clone());
    }
    let config = ControllerConfig::default().concurrency(settings.concurrency);

    // --- Instance ---------------------------------------------------------------
    let instance_controller = {
        let ops_map = |op: Arc<ClusterOperation>| -> Vec<ObjectRef<Instance>> {
            operation_refs(&op, "Instance", true)
        };
        let node_changes = Arc::new(Changes::default());
        let istore = stores.instances.clone();
        let node_map = move |node: Arc<Node>| -> Vec<ObjectRef<Instance>> {
            let status = node.status.clone().unwrap_or_default();
            let fp = format!(
                "{} {} {:?}",
                status.state, node.spec.schedulable, status.capacity
            );
            if !node_changes.changed(node.name_any(), fp) {
                return Vec::new();
            }
            let name = node.name_any();
            istore
                .state()
                .iter()
                .filter(|i| {
                    let node = i.status.as_ref().and_then(|s| s.node.as_deref());
                    node.is_none_or(|n| n == name)
                })
                .map(|i| ObjectRef::from(i.as_ref()))
                .collect()
        };
        let istore = stores.instances.clone();
        let net_changes = Arc::new(Changes::default());
        let network_map = move |net: Arc<Network>| -> Vec<ObjectRef<Instance>> {
            let status = net.status.clone().unwrap_or_default();
            let fp = format!("{:?} {:?}", status.vxid, status.nodes);
            let key = object_key(net.namespace().as_deref(), &net.name_any());
            if !net_changes.changed(key, fp) {
                return Vec::new();
            }
            let ns = net.namespace();
            let name = net.name_any();
            istore
                .state()
                .iter()
                .filter(|i| {
                    i.namespace() == ns && i.spec.networks.iter().any(|n| n.network == name)
                })
                .map(|i| ObjectRef::from(i.as_ref()))
                .collect()
        };
        let ifstore = stores.interfaces.clone();
        let lease_map = move |lease: Arc<IPAMLease>| -> Vec<ObjectRef<Instance>> {
            let Some(owner) = lease.spec.owner.as_ref() else {
                return Vec::new();
            };
            if owner.kind != "NetworkInterface" {
                return Vec::new();
            }
            let ns = lease.namespace();
            let iface = ifstore.get(&ns_ref(&owner.name, ns.as_deref()));
            let instance = match iface {
                Some(i) => i.spec.instance.clone(),
                None => match owner.name.rsplit_once('-') {
                    Some((instance, _)) => instance.to_owned(),
                    None => return Vec::new(),
                },
            };
            vec![ns_ref(&instance, ns.as_deref())]
        };
        // Capacity freed by an instance going away: retry the unplaced ones.
        let freed_changes = Arc::new(Changes::default());
        let istore = stores.instances.clone();
        let freed_map = move |i: Arc<Instance>| -> Vec<ObjectRef<Instance>> {
            let status = i.status.clone().unwrap_or_default();
            let going = i.metadata.deletion_timestamp.is_some()
                || status.state == sf_schema::instance::InstanceState::Deleted;
            let key = object_key(i.namespace().as_deref(), &i.name_any());
            if !freed_changes.changed(key, format!("{going} {}", status.state)) || !going {
                return Vec::new();
            }
            istore
                .state()
                .iter()
                .filter(|x| {
                    x.metadata.deletion_timestamp.is_none()
                        && x.status.as_ref().is_some_and(|s| {
                            s.node.is_none()
                                && s.conditions
                                    .iter()
                                    .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
                        })
                })
                .map(|x| ObjectRef::from(x.as_ref()))
                .collect()
        };
        // An artifact gaining a version (or its blob becoming known) readies the
        // instances waiting for it.
        let art_changes = Arc::new(Changes::default());
        let istore = stores.instances.clone();
        let artifact_map = move |a: Arc<Artifact>| -> Vec<ObjectRef<Instance>> {
            let latest = a
                .status
                .as_ref()
                .and_then(|s| s.versions.last())
                .map(|v| v.blob.clone());
            let key = object_key(a.namespace().as_deref(), &a.name_any());
            if !art_changes.changed(key, format!("{latest:?} {}", a.spec.shared)) {
                return Vec::new();
            }
            let ns = a.namespace();
            let name = a.name_any();
            let uid = a.uid();
            istore
                .state()
                .iter()
                .filter(|i| awaits_artifacts(i))
                .filter(|i| a.spec.shared || i.namespace() == ns)
                .filter(|i| {
                    i.spec.disks.iter().any(|d| {
                        d.base.as_deref() == Some(name.as_str()) || (uid.is_some() && d.base == uid)
                    })
                })
                .map(|i| ObjectRef::from(i.as_ref()))
                .collect()
        };
        let blob_changes = Arc::new(Changes::default());
        let istore = stores.instances.clone();
        let blob_map = move |b: Arc<Blob>| -> Vec<ObjectRef<Instance>> {
            let status = b.status.clone().unwrap_or_default();
            let fp = format!("{:?} {:?}", status.checksums, status.nodes);
            if !blob_changes.changed(b.name_any(), fp) {
                return Vec::new();
            }
            istore
                .state()
                .iter()
                .filter(|i| awaits_artifacts(i))
                .filter(|i| {
                    i.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == "WaitingForArtifacts")
                    })
                })
                .map(|i| ObjectRef::from(i.as_ref()))
                .collect()
        };
        Controller::for_shared_stream(instances.subscribe(), stores.instances.clone())
            .with_config(config.clone())
            .watches_shared_stream(instances.subscribe(), freed_map)
            .watches_shared_stream(artifacts.subscribe(), artifact_map)
            .watches_shared_stream(blobs.subscribe(), blob_map)
            .watches_shared_stream(operations.subscribe(), ops_map)
            .watches_shared_stream(nodes.subscribe(), node_map)
            .watches_shared_stream(networks.subscribe(), network_map)
            .watches_shared_stream(leases.subscribe(), lease_map)
            .run(
                reconcile_instance,
                error_policy::<Instance>("instance"),
                ctx.clone(),
            )
            .for_each(|_| std::future::ready(()))
    };

    // --- Network ----------------------------------------------------------------
    let network_controller = {
        let ops_map = |op: Arc<ClusterOperation>| -> Vec<ObjectRef<Network>> {
            operation_refs(&op, "Network", true)
        };
        let iface_changes = Arc::new(Changes::default());
        let iface_map = move |i: Arc<NetworkInterface>| -> Vec<ObjectRef<Network>> {
            let status = i.status.clone().unwrap_or_default();
            let fp = format!(
                "{:?} {:?} {:?} {}",
                status.ipv4,
                status.macaddr,
                status.floating_address,
                i.metadata.deletion_timestamp.is_some()
            );
            let key = object_key(i.namespace().as_deref(), &i.name_any());
            if !iface_changes.changed(key, fp) {
                return Vec::new();
            }
            vec![ns_ref(&i.spec.network, i.namespace().as_deref())]
        };
        let inst_changes = Arc::new(Changes::default());
        let instance_map = move |i: Arc<Instance>| -> Vec<ObjectRef<Network>> {
            let status = i.status.clone().unwrap_or_default();
            let fp = format!(
                "{:?} {} {}",
                status.node,
                status.state,
                i.metadata.deletion_timestamp.is_some()
            );
            let key = object_key(i.namespace().as_deref(), &i.name_any());
            if !inst_changes.changed(key, fp) {
                return Vec::new();
            }
            let ns = i.namespace();
            i.spec
                .networks
                .iter()
                .map(|n| ns_ref(&n.network, ns.as_deref()))
                .collect()
        };
        let node_changes = Arc::new(Changes::default());
        let nstore = stores.networks.clone();
        let node_map = move |node: Arc<Node>| -> Vec<ObjectRef<Network>> {
            let status = node.status.clone().unwrap_or_default();
            let fp = format!("{:?} {}", node.spec.roles, status.state);
            if !node_changes.changed(node.name_any(), fp) {
                return Vec::new();
            }
            if !node
                .spec
                .roles
                .contains(&sf_schema::node::NodeRole::Network)
            {
                return Vec::new();
            }
            nstore
                .state()
                .iter()
                .map(|n| ObjectRef::from(n.as_ref()))
                .collect()
        };
        Controller::for_shared_stream(networks.subscribe(), stores.networks.clone())
            .with_config(config.clone())
            .watches_shared_stream(operations.subscribe(), ops_map)
            .watches_shared_stream(interfaces.subscribe(), iface_map)
            .watches_shared_stream(instances.subscribe(), instance_map)
            .watches_shared_stream(nodes.subscribe(), node_map)
            .run(
                reconcile_network,
                error_policy::<Network>("network"),
                ctx.clone(),
            )
            .for_each(|_| std::future::ready(()))
    };

    // --- NetworkInterface -------------------------------------------------------
    let interface_controller = {
        let ops_map = |op: Arc<ClusterOperation>| -> Vec<ObjectRef<NetworkInterface>> {
            operation_refs(&op, "NetworkInterface", false)
        };
        let inst_changes = Arc::new(Changes::default());
        let ifstore = stores.interfaces.clone();
        let instance_map = move |i: Arc<Instance>| -> Vec<ObjectRef<NetworkInterface>> {
            let status = i.status.clone().unwrap_or_default();
            let fp = format!(
                "{:?} {} {}",
                status.node,
                status.state,
                i.metadata.deletion_timestamp.is_some()
            );
            let key = object_key(i.namespace().as_deref(), &i.name_any());
            if !inst_changes.changed(key, fp) {
                return Vec::new();
            }
            let ns = i.namespace();
            let name = i.name_any();
            ifstore
                .state()
                .iter()
                .filter(|x| x.namespace() == ns && x.spec.instance == name)
                .map(|x| ObjectRef::from(x.as_ref()))
                .collect()
        };
        let net_changes = Arc::new(Changes::default());
        let ifstore = stores.interfaces.clone();
        let network_map = move |n: Arc<Network>| -> Vec<ObjectRef<NetworkInterface>> {
            let status = n.status.clone().unwrap_or_default();
            let fp = format!("{:?} {:?}", status.vxid, status.nodes);
            let key = object_key(n.namespace().as_deref(), &n.name_any());
            if !net_changes.changed(key, fp) {
                return Vec::new();
            }
            let ns = n.namespace();
            let name = n.name_any();
            ifstore
                .state()
                .iter()
                .filter(|x| x.namespace() == ns && x.spec.network == name)
                .map(|x| ObjectRef::from(x.as_ref()))
                .collect()
        };
        let lease_map = |lease: Arc<IPAMLease>| -> Vec<ObjectRef<NetworkInterface>> {
            match lease.spec.owner.as_ref() {
                Some(owner) if owner.kind == "NetworkInterface" => {
                    vec![ns_ref(&owner.name, lease.namespace().as_deref())]
                }
                _ => Vec::new(),
            }
        };
        Controller::for_shared_stream(interfaces.subscribe(), stores.interfaces.clone())
            .with_config(config.clone())
            .watches_shared_stream(operations.subscribe(), ops_map)
            .watches_shared_stream(instances.subscribe(), instance_map)
            .watches_shared_stream(networks.subscribe(), network_map)
            .watches_shared_stream(leases.subscribe(), lease_map)
            .run(
                reconcile_interface,
                error_policy::<NetworkInterface>("interface"),
                ctx.clone(),
            )
            .for_each(|_| std::future::ready(()))
    };

    // --- Artifact ---------------------------------------------------------------
    let artifact_controller = {
        // Its own and replication fetches, and the snapshots taken into it.
        let ops_map = |op: Arc<ClusterOperation>| -> Vec<ObjectRef<Artifact>> {
            let mut refs = operation_refs(&op, "Artifact", true);
            if let Some(result) = crate::observe::snapshot_result(&op) {
                let ns = op.namespace();
                refs.extend(
                    result
                        .snapshots
                        .iter()
                        .map(|t| ns_ref(&t.artifact, ns.as_deref())),
                );
            }
            refs
        };
        // A node becoming usable lets an artifact waiting for one fetch.
        let node_changes = Arc::new(Changes::default());
        let astore = stores.artifacts.clone();
        let node_map = move |node: Arc<Node>| -> Vec<ObjectRef<Artifact>> {
            let status = node.status.clone().unwrap_or_default();
            let fp = format!("{} {}", status.state, node.spec.schedulable);
            if !node_changes.changed(node.name_any(), fp) {
                return Vec::new();
            }
            astore
                .state()
                .iter()
                .filter(|a| a.status.as_ref().is_none_or(|s| s.versions.is_empty()))
                .map(|a| ObjectRef::from(a.as_ref()))
                .collect()
        };
        Controller::for_shared_stream(artifacts.subscribe(), stores.artifacts.clone())
            .with_config(config.clone())
            .watches_shared_stream(operations.subscribe(), ops_map)
            .watches_shared_stream(nodes.subscribe(), node_map)
            .run(
                reconcile_artifact,
                error_policy::<Artifact>("artifact"),
                ctx.clone(),
            )
            .for_each(|_| std::future::ready(()))
    };

    // --- Blob -------------------------------------------------------------------
    let blob_controller = {
        // A Blob is cluster scoped: its operations (in `system`) map to it by name
        // alone, so it is one key to the controller.
        let ops_map = |op: Arc<ClusterOperation>| -> Vec<ObjectRef<Blob>> {
            match (
                op.labels().get(OWNER_KIND_LABEL).map(String::as_str),
                op.labels().get(OWNER_NAME_LABEL),
            ) {
                (Some("Blob"), Some(name)) => vec![ObjectRef::new(name)],
                _ => Vec::new(),
            }
        };
        // An artifact's versions changing may make a Blob unused (a pruned version: the
        // blobs it named before count too) or used again.
        let version_changes = Arc::new(Changes::default());
        let artifact_map = move |a: Arc<Artifact>| -> Vec<ObjectRef<Blob>> {
            let blobs: Vec<String> = a
                .status
                .as_ref()
                .map(|s| s.versions.iter().map(|v| v.blob.clone()).collect())
                .unwrap_or_default();
            let key = format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any());
            let before = version_changes.previous(key, blobs.join(","));
            // An artifact being deleted (and its removal, which repeats its last state)
            // always triggers: its blobs may have just lost their last reference.
            if before.is_none() && a.metadata.deletion_timestamp.is_none() {
                return Vec::new();
            }
            let mut names: std::collections::BTreeSet<String> = blobs.into_iter().collect();
            names.extend(
                before
                    .iter()
                    .flat_map(|b| b.split(','))
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned),
            );
            names.iter().map(|b| ObjectRef::new(b)).collect()
        };
        Controller::for_shared_stream(blobs.subscribe(), stores.blobs.clone())
            .with_config(config.clone())
            .watches_shared_stream(operations.subscribe(), ops_map)
            .watches_shared_stream(artifacts.subscribe(), artifact_map)
            .run(reconcile_blob, error_policy::<Blob>("blob"), ctx.clone())
            .for_each(|_| std::future::ready(()))
    };

    // --- Node -------------------------------------------------------------------
    let node_controller = Controller::for_shared_stream(nodes.subscribe(), stores.nodes.clone())
        .with_config(config)
        .run(reconcile_node, error_policy::<Node>("node"), ctx.clone())
        .for_each(|_| std::future::ready(()));

    let futures: Vec<BoxFut> = vec![
        readiness,
        instances.drive(client.clone()),
        networks.drive(client.clone()),
        interfaces.drive(client.clone()),
        nodes.drive(client.clone()),
        operations.drive(client.clone()),
        leases.drive(client.clone()),
        artifacts.drive(client.clone()),
        blobs.drive(client),
        Box::pin(instance_controller),
        Box::pin(network_controller),
        Box::pin(interface_controller),
        Box::pin(artifact_controller),
        Box::pin(blob_controller),
        Box::pin(node_controller),
    ];
    futures::future::join_all(futures).await;
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    use sf_schema::node::NodeSpec;

    use super::*;

    fn node(name: &str) -> Node {
        Node::new(name, NodeSpec::default())
    }

    /// The lost wake-up of kube-runtime's shared streams: an object applied and
    /// removed before a subscriber reads it. Every subscriber still gets both events
    /// and every later one; a subscriber that went away no longer holds anything.
    #[tokio::test]
    async fn every_subscriber_gets_every_change_removals_included() {
        let (reader, mut writer) = reflector::store::<Node>();
        let subscribers: Subscribers<Node> = std::sync::Mutex::default();
        let subscribe = || {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            subscribers.lock().expect("lock").push(tx);
            rx
        };
        let mut a = subscribe();
        let mut b = subscribe();
        let gone = subscribe();
        drop(gone);
        let mut before = Vec::new();
        for event in [Event::Init, Event::InitApply(node("hv-0")), Event::InitDone] {
            writer.apply_watcher_event(&event);
            fan_out(&reader, &subscribers, event, &mut before);
        }
        for event in [
            Event::Apply(node("near")),
            Event::Delete(node("near")),
            Event::Apply(node("far")),
        ] {
            writer.apply_watcher_event(&event);
            fan_out(&reader, &subscribers, event, &mut before);
        }
        for rx in [&mut a, &mut b] {
            let mut names = Vec::new();
            for _ in 0..4 {
                names.push(rx.next().await.expect("an event").name_any());
            }
            assert_eq!(names, ["hv-0", "near", "near", "far"]);
        }
        assert_eq!(
            subscribers.lock().expect("lock").len(),
            2,
            "the dropped one is gone"
        );
        assert!(reader.get(&ObjectRef::new("near")).is_none());
    }

    /// An object removed while the watch was down (no Delete event ever seen) still
    /// reaches the subscribers when the relist ends, beside the listed ones.
    #[test]
    fn a_relist_hands_on_what_it_no_longer_has() {
        let (reader, mut writer) = reflector::store::<Node>();
        let subscribers: Subscribers<Node> = std::sync::Mutex::default();
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        subscribers.lock().expect("lock").push(tx);
        let mut before = Vec::new();
        let list = |names: &[&str]| {
            let mut events = vec![Event::Init];
            events.extend(names.iter().map(|n| Event::InitApply(node(n))));
            events.push(Event::InitDone);
            events
        };
        for event in list(&["hv-0", "hv-1"]).into_iter().chain(list(&["hv-1"])) {
            writer.apply_watcher_event(&event);
            fan_out(&reader, &subscribers, event, &mut before);
        }
        let mut names = Vec::new();
        while let Ok(obj) = rx.try_recv() {
            names.push(obj.name_any());
        }
        names[..2].sort();
        assert_eq!(names, ["hv-0", "hv-1", "hv-1", "hv-0"]);
        assert!(
            reader.get(&ObjectRef::new("hv-0")).is_none(),
            "gone from the store"
        );
        assert!(before.is_empty(), "nothing held between relists");
    }
}
