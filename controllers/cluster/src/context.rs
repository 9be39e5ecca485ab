//! What every reconcile shares: the sf-api client, the sf-database client, the
//! reflector stores, the plan settings, the metrics and the scheduler's ledger.
//!
//! Contract:
//! - The stores are eventually consistent caches fed by one watch per kind; observe
//!   reads related objects from them, but the reconciled object itself and its own
//!   operations are read fresh from sf-api (see [`crate::observe`]).
//! - [`Context::placements`] serialises scheduling decisions: a reconcile that may
//!   place an instance decides under it and records the placement in the ledger
//!   before releasing it; ledger placements count as committed until the instance
//!   store shows them, so two instances scheduled back to back never both take the
//!   last slot.
//! - [`Context::lock_networks`] serialises the emitters of `network_create_on_node`
//!   per network (see [`crate::observe`]).
//! - Labels on every operation the controllers create: [`OWNER_LABEL`] (the uid of the
//!   object whose controller created it), [`OWNER_KIND_LABEL`], [`OWNER_NAME_LABEL`]
//!   and [`TARGET_LABEL`] (the target's uid).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use sf_database_client::GatewayClient;
use sf_plan::scheduler::Resources;
use sf_plan::{NodeConfig, PlanContext};
use sf_schema::{
    Artifact, Blob, ClusterOperation, IPAMLease, Instance, Network, NetworkInterface, Node,
};

use crate::metrics::ClusterMetrics;

/// The uid of the object whose controller created the operation.
pub const OWNER_LABEL: &str = "shakenfist.io/owner";
/// Its kind (`Instance`, `Network`, `NetworkInterface`, `Artifact`).
pub const OWNER_KIND_LABEL: &str = "shakenfist.io/owner-kind";
/// Its name (same namespace as the operation).
pub const OWNER_NAME_LABEL: &str = "shakenfist.io/owner-name";
/// The uid of the operation's target.
pub const TARGET_LABEL: &str = "shakenfist.io/target";

/// The reflector stores, one per kind.
#[derive(Clone)]
pub struct Stores {
    /// Instances.
    pub instances: Store<Instance>,
    /// Networks.
    pub networks: Store<Network>,
    /// NetworkInterfaces.
    pub interfaces: Store<NetworkInterface>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// ClusterOperations.
    pub operations: Store<ClusterOperation>,
    /// IPAMLeases.
    pub leases: Store<IPAMLease>,
    /// Artifacts.
    pub artifacts: Store<Artifact>,
    /// Blobs (cluster scoped).
    pub blobs: Store<Blob>,
}

/// A placement written by this process, counted until the store shows it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The node.
    pub node: String,
    /// What the instance asked for.
    pub resources: Resources,
    /// When it was written.
    pub at: Instant,
}

/// How long a ledger entry is kept when its instance is not in the store.
pub const LEDGER_GRACE: Duration = Duration::from_secs(60);

/// Shared by every reconcile.
pub struct Context {
    /// sf-api.
    pub client: kube::Client,
    /// sf-database.
    pub gateway: GatewayClient,
    /// The caches.
    pub stores: Stores,
    /// Plan settings (its `now` is replaced at each reconcile).
    pub plan: PlanContext,
    /// The node timeline.
    pub node: NodeConfig,
    /// Metrics.
    pub metrics: ClusterMetrics,
    /// The scheduler's ledger: instance uid → placement written by this process.
    pub placements: tokio::sync::Mutex<HashMap<String, Placement>>,
    /// Consecutive failures per object key, for the error policy's backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Operations this process created, until the operation store shows them.
    pub created: CreatedOps,
    /// The resourceVersion of this process's last write to each object (by uid): a
    /// cached object at least that new needs no fresh read.
    pub written: Mutex<HashMap<String, u64>>,
    /// Set once every store has its first full list.
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// One lock per network uid: held by the network's reconcile and by instance and
    /// interface reconciles that may plumb the network on a node, from observe to the
    /// end of apply, so two emitters never both create it on the same node.
    pub network_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// How long a created operation is remembered (the store shows it long before).
pub const CREATED_GRACE: Duration = Duration::from_secs(120);

/// The ledger of operations this process created: observe merges them with the
/// operation store, so an operation just created is seen by the next reconcile even
/// before its watch event arrives. Only the lease holder creates operations, and a new
/// holder's stores are listed after the previous one stopped, so store + ledger is
/// every operation.
#[derive(Debug, Default)]
pub struct CreatedOps(Mutex<HashMap<String, (Instant, Arc<ClusterOperation>)>>);

impl CreatedOps {
    /// Remembers `op`.
    pub fn record(&self, op: ClusterOperation) {
        let key = format!(
            "{}/{}",
            op.metadata.namespace.clone().unwrap_or_default(),
            op.metadata.name.clone().unwrap_or_default()
        );
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, (Instant::now(), Arc::new(op)));
        }
    }

    /// The remembered operations matching `pred` (forgetting old ones).
    pub fn matching(&self, pred: impl Fn(&ClusterOperation) -> bool) -> Vec<Arc<ClusterOperation>> {
        match self.0.lock() {
            Ok(mut m) => {
                m.retain(|_, (at, _)| at.elapsed() < CREATED_GRACE);
                m.values()
                    .filter(|(_, op)| pred(op))
                    .map(|(_, op)| op.clone())
                    .collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

impl Context {
    /// Notes that this process wrote the object `uid`, giving it `resource_version`.
    pub fn note_written(&self, uid: Option<String>, resource_version: Option<String>) {
        let (Some(uid), Some(rv)) = (uid, resource_version.and_then(|r| r.parse().ok())) else {
            return;
        };
        if let Ok(mut w) = self.written.lock() {
            if w.len() >= 100_000 {
                w.clear();
            }
            let entry = w.entry(uid).or_insert(0);
            *entry = (*entry).max(rv);
        }
    }

    /// Whether a cached copy of `uid` at `resource_version` includes this process's
    /// last write to it.
    pub fn cache_is_current(&self, uid: Option<&str>, resource_version: Option<&str>) -> bool {
        let (Some(uid), Some(rv)) = (uid, resource_version.and_then(|r| r.parse::<u64>().ok()))
        else {
            return false;
        };
        self.written
            .lock()
            .map(|w| w.get(uid).is_none_or(|last| rv >= *last))
            .unwrap_or(false)
    }

    /// Waits until every store has listed once (reconciles before that would plan
    /// from empty caches).
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Takes the locks of the networks `uids` (sorted, so never a deadlock).
    pub async fn lock_networks(
        &self,
        mut uids: Vec<String>,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        uids.sort();
        uids.dedup();
        let locks: Vec<Arc<tokio::sync::Mutex<()>>> = match self.network_locks.lock() {
            Ok(mut m) => uids
                .iter()
                .map(|u| m.entry(u.clone()).or_default().clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        guards
    }

    /// A plan context at the current time.
    pub fn plan_now(&self) -> PlanContext {
        PlanContext {
            now: chrono::Utc::now(),
            ..self.plan.clone()
        }
    }

    /// Records a failure of `key`; returns the backoff before the next try (1 s
    /// doubling to 5 min; `slow` failures start at 10 s).
    pub fn failed(&self, key: &str, slow: bool) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key.to_owned()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let base: u64 = if slow { 10 } else { 1 };
        let secs = base.saturating_mul(1u64 << n.saturating_sub(1).min(16));
        Duration::from_secs(secs.min(300))
    }

    /// Clears the failure count of `key`.
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }
}

/// `ns/name` or `name`.
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}
