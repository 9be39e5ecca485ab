//! The agent: node registration and heartbeat, the claim loop, operation handlers,
//! start-up reconciliation and domain state polling.
//!
//! Contract:
//! - [`Agent`] is generic over the [`Hypervisor`] and the `HostNet`, so tests run the
//!   real agent on the libvirt test driver and netlink in a namespace they create.
//! - Identity ([`Agent::register`]): the Node named `node_name` is created when missing
//!   (annotation `shakenfist.io/node-uuid` = this agent's node UUID, roles
//!   `hypervisor` and, when configured, `network`). A Node of that name with another
//!   UUID whose `status.lastSeen` is fresher than `checkin_maximum` (and that is not
//!   stopped or deleted) belongs to a live agent: [`AgentError::NodeNameInUse`], the
//!   agent refuses to start. A stale one is taken over. The heartbeat
//!   ([`Agent::heartbeat`]) merges fqdn, mesh address, capacity, usage, versions and
//!   `lastSeen` into the Node status (and `state: created` while it is `initial`).
//! - Claims ([`Agent::run`]): one long-poll `Claim` at a time for up to the free
//!   concurrency; a claim whose reply was lost is repeated with the same `claim_id`.
//!   Each operation runs in its own task holding a concurrency permit and, for
//!   instance operations, the instance's lock; a per-operation `Heartbeat` runs while
//!   it executes; it ends with `Complete` (the handler's result) or `Fail` with an
//!   error report `{code, message, retryable}`. An operation whose heartbeat says it
//!   was aborted is stopped (handlers are idempotent, so stopping midway is safe) and
//!   its row released; a lease gone stale (aborted, reaped) is logged and dropped. Operations not meant for this node are released
//!   (retryable `WrongNode`).
//! - Shutdown: no new claims; in-flight operations get `drain_timeout` to finish;
//!   what is still running then is released with a retryable `AgentShuttingDown`
//!   failure, so nothing claimed is dropped.
//! - Handlers are idempotent (see [`crate::instance`]); they write only the observed
//!   Instance status fields `powerState`, `interfaces` and `console`, and the
//!   NetworkInterface `status.node` of the instance's interfaces.
//! - Start-up ([`Agent::reconcile_startup`]): an `sf:<uuid>` domain of no Instance
//!   placed here is removed only when its Instance is known to be deleted (placed
//!   here in state `deleted`, or removed with a tombstone); one the database does not
//!   know, or places elsewhere, is left running with its disks and reported
//!   (`orphans_kept`), so a wrong, empty or restored database or a renamed node never
//!   costs a guest; never any other domain. The networks recorded on this node are
//!   re-ensured first (a rebooted host has no bridges), then the domains of `created`
//!   Instances placed here are re-defined when missing and brought to the desired
//!   power state, then stray plumbing is removed: that of networks neither recorded
//!   on this node nor used by an interface of an instance placed here.
//! - Whether this node is the network node is read from its configuration or its
//!   Node; a failed read fails the operation or skips the resync, never counts as
//!   "plain node" (which would tear down every network's router, DHCP and NAT), and
//!   a network_create_on_node reaching the network node plumbs it as such.
//! - Polling ([`Agent::poll_states`]) reports every domain state change (a guest's
//!   own shutdown or crash) into the Instance's `status.powerState`; the networks of
//!   this node are re-ensured every `network_resync_interval` (mesh peers come and go).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use sf_daemon::Shutdown;
use sf_database_client::spool::{EventSpool, new_event};
use sf_hostnet::{DhcpHost, FloatingIp, HostNet, HostNetError, NetworkPlumbing};
use sf_proto::v1 as pb;
use sf_schema::artifact::{Artifact, Blob};
use sf_schema::common::ResourceState;
use sf_schema::instance::{DesiredPowerState, Instance, InstanceState};
use sf_schema::interface::NetworkInterface;
use sf_schema::network::Network;
use sf_schema::node::{Node, NodeRole, NodeState};
use sf_schema::operation::{ClusterOperation, OperationType};
use sf_schema::snapshot::{SnapshotRequest, SnapshotResult, SnapshotTaken};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tracing::Instrument;

use crate::gateway::{Gateway, GatewayError};
use crate::hypervisor::{DomainState, Hypervisor, HypervisorError, HypervisorVersions, uid_of};
use crate::instance::{InstanceContext, Lifecycle, LifecycleError, NicContext};
use crate::metrics::AgentMetrics;
use crate::sysinfo::Sampler;

/// The annotation holding a Node's agent UUID.
pub const NODE_UUID_ANNOTATION: &str = "shakenfist.io/node-uuid";

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The Node name.
    pub node_name: String,
    /// The node UUID.
    pub node_uuid: String,
    /// The mesh address (Node `status.address`).
    pub mesh_address: Ipv4Addr,
    /// Create the Node with the `network` role.
    pub network_node_role: bool,
    /// `STORAGE_PATH` (base images under `blobs/`).
    pub storage_path: PathBuf,
    /// Node heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Domain state polling interval.
    pub poll_interval: Duration,
    /// Operations executed at once.
    pub max_concurrency: u32,
    /// Shutdown waits this long for in-flight operations.
    pub drain_timeout: Duration,
    /// A Node silent for longer is not live.
    pub checkin_maximum: Duration,
    /// The DNS zone.
    pub zone: String,
    /// The MTU of instance NICs.
    pub mtu: u32,
    /// Long-poll of one claim, seconds.
    pub claim_wait_seconds: u32,
    /// Per-operation heartbeat interval.
    pub operation_heartbeat_interval: Duration,
    /// How often the node's networks are re-ensured.
    pub network_resync_interval: Duration,
    /// Fault injection for tests: a pause between claiming and running each
    /// operation (zero in production).
    pub operation_delay: Duration,
    /// The largest artifact an `artifact_fetch` downloads, bytes.
    pub artifact_max_bytes: u64,
    /// Internal blocks a tenant's artifacts may be fetched from.
    pub artifact_tenant_allowed: Vec<sf_schema::addresses::Cidr>,
    /// Blocks a tenant's artifacts are never fetched from.
    pub artifact_tenant_denied: Vec<sf_schema::addresses::Cidr>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            node_name: "localhost".into(),
            node_uuid: String::new(),
            mesh_address: Ipv4Addr::LOCALHOST,
            network_node_role: false,
            storage_path: "/srv/shakenfist".into(),
            heartbeat_interval: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            max_concurrency: 4,
            drain_timeout: Duration::from_secs(60),
            checkin_maximum: Duration::from_secs(120),
            zone: "sf".into(),
            mtu: 7950,
            claim_wait_seconds: 20,
            operation_heartbeat_interval: Duration::from_secs(10),
            network_resync_interval: Duration::from_secs(60),
            operation_delay: Duration::ZERO,
            artifact_max_bytes: crate::config::DEFAULT_ARTIFACT_MAX_BYTES,
            artifact_tenant_allowed: Vec::new(),
            artifact_tenant_denied: Vec::new(),
        }
    }
}

/// The lock the operations on network `name` of `ns` run under (and the resync).
fn network_lock_key(ns: &str, name: &str) -> String {
    format!("network:{ns}/{name}")
}

/// `path` when its file is here.
async fn still_here(path: Option<PathBuf>) -> Option<PathBuf> {
    match path {
        Some(p) if tokio::fs::try_exists(&p).await.unwrap_or(false) => Some(p),
        _ => None,
    }
}

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another live agent holds the node name.
    #[error(
        "node name {name} belongs to a live node (uuid {other_uuid}, last seen {last_seen}); refusing to start (this agent's uuid is {uuid})"
    )]
    NodeNameInUse {
        /// The name.
        name: String,
        /// The other agent's UUID.
        other_uuid: String,
        /// Its last heartbeat.
        last_seen: String,
        /// Ours.
        uuid: String,
    },
    /// Another agent took this node's name over while this one ran (it judged this
    /// one gone): this one stops rather than run the same node twice.
    #[error(
        "node name {name} was taken over by another agent (uuid {other_uuid}; this agent's \
         uuid is {uuid}); stopping so that the node is not run twice"
    )]
    NodeTakenOver {
        /// The name.
        name: String,
        /// The other agent's UUID.
        other_uuid: String,
        /// Ours.
        uuid: String,
    },
    /// A sf-database call failed.
    #[error("{action}: {source}")]
    Gateway {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: GatewayError,
    },
    /// A hypervisor call failed.
    #[error("{action}: {source}")]
    Lifecycle {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: LifecycleError,
    },
    /// A host networking call failed.
    #[error("{action}: {source}")]
    HostNet {
        /// What was being done.
        action: &'static str,
        /// The error.
        #[source]
        source: HostNetError,
    },
}

fn gw(action: &'static str) -> impl FnOnce(GatewayError) -> AgentError {
    move |source| AgentError::Gateway { action, source }
}

/// Why one operation failed; becomes its error report.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The instance lifecycle failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Host networking failed.
    #[error("host networking: {0}")]
    HostNet(#[from] HostNetError),
    /// sf-database failed.
    #[error("sf-database: {0}")]
    Gateway(#[from] GatewayError),
    /// The object the operation needs does not exist.
    #[error("{kind} {name} not found")]
    NotFound {
        /// The kind.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A disk base or NVRAM template names no image the instance may use.
    #[error("{0}")]
    ImageNotFound(String),
    /// Something the operation needs is not ready yet.
    #[error("{0}")]
    NotReady(String),
    /// The payload or target is malformed.
    #[error("bad operation: {0}")]
    BadOperation(String),
    /// The agent does not run this operation type.
    #[error("sf-agent does not run {0} operations")]
    Unsupported(String),
    /// An `artifact_fetch` failed.
    #[error(transparent)]
    Fetch(#[from] crate::artifact::FetchError),
    /// A `blob_delete` did not remove its file.
    #[error(transparent)]
    BlobRemove(#[from] crate::blobs::RemoveError),
    /// An `instance_snapshot` did not capture a disk.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl HandlerError {
    /// The error report code.
    pub fn code(&self) -> String {
        match self {
            Self::Lifecycle(e) => e.code().to_owned(),
            Self::HostNet(_) => "HostNetworkingFailed".into(),
            Self::Gateway(e) if e.unavailable() => "DatabaseUnavailable".into(),
            Self::Gateway(_) => "DatabaseCallFailed".into(),
            Self::NotFound { .. } => "TargetNotFound".into(),
            Self::ImageNotFound(_) => "ImageNotFound".into(),
            Self::NotReady(_) => "NotReady".into(),
            Self::BadOperation(_) => "BadOperation".into(),
            Self::Unsupported(_) => "UnsupportedOperation".into(),
            Self::Fetch(e) => e.code().into(),
            Self::BlobRemove(e) => e.code().into(),
            Self::Snapshot(e) => e.code().into(),
        }
    }

    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Lifecycle(e) => e.retryable(),
            Self::HostNet(e) => !matches!(
                e,
                HostNetError::InvalidConfig(_) | HostNetError::InvalidPlumbing { .. }
            ),
            Self::Gateway(e) => e.unavailable(),
            Self::NotReady(_) => true,
            Self::NotFound { .. }
            | Self::ImageNotFound(_)
            | Self::BadOperation(_)
            | Self::Unsupported(_) => false,
            Self::Fetch(e) => e.retryable(),
            Self::BlobRemove(e) => e.retryable(),
            Self::Snapshot(e) => e.retryable(),
        }
    }
}

/// What the start-up reconciliation did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReconcileReport {
    /// Domains of deleted instances removed (uids).
    pub orphans_removed: Vec<String>,
    /// Domains of no instance placed here that are not known to be deleted, left
    /// alone (uids).
    pub orphans_kept: Vec<String>,
    /// Domains re-defined because they were missing (uids).
    pub redefined: Vec<String>,
    /// Domains started (uids).
    pub started: Vec<String>,
    /// Networks re-ensured (vxids).
    pub networks_ensured: Vec<u32>,
    /// Stray network plumbing removed (vxids).
    pub networks_removed: Vec<u32>,
}

struct Inner<H, N> {
    settings: AgentSettings,
    gateway: Gateway,
    life: Lifecycle<H>,
    net: N,
    metrics: AgentMetrics,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    reported: Mutex<HashMap<String, DomainState>>,
    sampler: Mutex<Sampler>,
    versions: Mutex<Option<HypervisorVersions>>,
    last_network_sync: Mutex<Option<Instant>>,
    /// Set when another agent took this node's name over (see [`AgentError::NodeTakenOver`]).
    taken_over: Mutex<Option<AgentError>>,
    /// Where operation events go (a durable local spool drained to sf-database).
    events: std::sync::OnceLock<Arc<EventSpool>>,
}

/// The agent (see the module contract). Cheap to clone.
pub struct Agent<H, N> {
    inner: Arc<Inner<H, N>>,
}

impl<H, N> Clone for Agent<H, N> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn pb_lease(lease: &Option<pb::Lease>) -> pb::Lease {
    (*lease).unwrap_or_default()
}

/// How an operation's execution ended.
enum Ended {
    /// The handler returned.
    Done(Result<Value, HandlerError>),
    /// Its heartbeat said it was aborted.
    Aborted,
    /// Shutdown's drain time ran out.
    Released,
}

/// A Blob this agent records: bytes it wrote (`size`, `mime` type, where from) for
/// `namespace`.
fn blob_object(name: &str, namespace: &str, size: u64, mime: &str, source: &str) -> Value {
    json!({
        "apiVersion": sf_schema::API_VERSION,
        "kind": "Blob",
        "metadata": {"name": name},
        "spec": {
            "ownerNamespace": namespace,
            "size": size,
            "mimeType": mime,
            "source": source,
        },
    })
}

/// The lock serialising work on one instance.
fn instance_lock_key(namespace: &str, name: &str) -> String {
    format!("instance:{namespace}/{name}")
}

/// The position of a NetworkInterface on its instance: `spec.order`, else the index in
/// a boot interface name `<instance>-<i>`, else after those.
fn interface_order(iface: &NetworkInterface, instance: &str) -> (u32, String) {
    let name = iface.metadata.name.clone().unwrap_or_default();
    if let Some(order) = iface.spec.order {
        return (order, name);
    }
    let boot = name
        .strip_prefix(instance)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|i| i.parse::<u32>().ok());
    (boot.unwrap_or(10_000), name)
}

impl<H: Hypervisor, N: HostNet> Agent<H, N> {
    /// An agent; nothing happens until [`Agent::run`] (or the steps it runs).
    pub fn new(
        settings: AgentSettings,
        gateway: Gateway,
        life: Lifecycle<H>,
        net: N,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                gateway,
                life,
                net,
                metrics,
                locks: Mutex::new(HashMap::new()),
                reported: Mutex::new(HashMap::new()),
                sampler: Mutex::new(Sampler::default()),
                versions: Mutex::new(None),
                last_network_sync: Mutex::new(None),
                taken_over: Mutex::new(None),
                events: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Records an event per finished operation into `spool` from now on (on the
    /// operation's target and on the operation itself). Without a spool the agent
    /// records none. Only the first call takes effect.
    pub fn set_event_spool(&self, spool: Arc<EventSpool>) {
        let _ = self.inner.events.set(spool);
    }

    /// Spools one event about `op` (never waits on the network; a full spool counts a
    /// drop and goes on).
    fn record_operation_event(&self, op: &ClusterOperation, message: String) {
        let Some(spool) = self.inner.events.get() else {
            return;
        };
        let target_type = op.spec.target.kind.to_ascii_lowercase();
        let op_uid = op.metadata.uid.clone().unwrap_or_default();
        let event = new_event(
            "audit",
            message,
            &[
                (target_type.as_str(), op.spec.target.uid.as_str()),
                ("clusteroperation", op_uid.as_str()),
            ],
        );
        if let Err(e) = spool.record(event) {
            tracing::warn!(error = %e, "cannot spool an operation event");
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AgentSettings {
        &self.inner.settings
    }

    /// The instance lifecycle.
    pub fn lifecycle(&self) -> &Lifecycle<H> {
        &self.inner.life
    }

    fn node_name(&self) -> &str {
        &self.inner.settings.node_name
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.inner.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Takes the `blob:<name>` lock of every file among `paths` that is a blob of this
    /// node (the lock a `blob_delete` runs under), in name order; a file gone by then
    /// is `NotReady` (the plan replicates it again).
    async fn hold_blobs(
        &self,
        paths: Vec<PathBuf>,
    ) -> Result<Vec<tokio::sync::OwnedMutexGuard<()>>, HandlerError> {
        let blobs_dir = self.inner.settings.storage_path.join("blobs");
        let mut held: Vec<(String, PathBuf)> = paths
            .into_iter()
            .filter(|p| p.parent() == Some(blobs_dir.as_path()))
            .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
            .collect();
        held.sort();
        held.dedup_by(|a, b| a.0 == b.0);
        let mut guards = Vec::with_capacity(held.len());
        for (name, path) in held {
            guards.push(self.lock_for(&format!("blob:{name}")).lock_owned().await);
            if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Err(HandlerError::NotReady(format!(
                    "blob {name} was removed from this node meanwhile"
                )));
            }
        }
        Ok(guards)
    }

    fn set_reported(&self, uid: &str, state: Option<DomainState>) {
        if let Ok(mut r) = self.inner.reported.lock() {
            match state {
                Some(s) => {
                    r.insert(uid.to_owned(), s);
                }
                None => {
                    r.remove(uid);
                }
            }
        }
    }

    fn reported(&self, uid: &str) -> Option<DomainState> {
        self.inner
            .reported
            .lock()
            .ok()
            .and_then(|r| r.get(uid).copied())
    }

    // --- Identity and heartbeat ---------------------------------------------------

    /// Registers the Node (see the module contract) and sends the first heartbeat.
    pub async fn register(&self) -> Result<(), AgentError> {
        let s = &self.inner.settings;
        let g = &self.inner.gateway;
        let mut node: Option<Value> = g
            .get("Node", None, &s.node_name)
            .await
            .map_err(gw("read the Node"))?;
        if node.is_none() {
            let mut roles = vec![NodeRole::Hypervisor.as_str()];
            if s.network_node_role {
                roles.push(NodeRole::Network.as_str());
            }
            let object = json!({
                "apiVersion": sf_schema::API_VERSION,
                "kind": "Node",
                "metadata": {
                    "name": s.node_name,
                    "annotations": {NODE_UUID_ANNOTATION: s.node_uuid},
                },
                "spec": {"schedulable": true, "roles": roles},
            });
            match g.create(&object).await {
                Ok(created) => node = Some(created),
                Err(e) if e.code() == Some(Code::AlreadyExists) => {
                    node = g
                        .get("Node", None, &s.node_name)
                        .await
                        .map_err(gw("read the Node"))?;
                }
                Err(e) => return Err(gw("create the Node")(e)),
            }
        }
        if let Some(mut node) = node {
            let other = node["metadata"]["annotations"][NODE_UUID_ANNOTATION]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if other != s.node_uuid {
                let typed: Option<Node> = serde_json::from_value(node.clone()).ok();
                let status = typed.and_then(|n| n.status).unwrap_or_default();
                let fresh = status.last_seen.is_some_and(|t| {
                    (Utc::now() - t).to_std().unwrap_or_default() < s.checkin_maximum
                });
                let quiet = matches!(status.state, NodeState::Stopped | NodeState::Deleted);
                if !other.is_empty() && fresh && !quiet {
                    return Err(AgentError::NodeNameInUse {
                        name: s.node_name.clone(),
                        other_uuid: other,
                        last_seen: status.last_seen.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        uuid: s.node_uuid.clone(),
                    });
                }
                tracing::warn!(node = %s.node_name, previous = %other, "taking over a node name whose agent is gone");
                let rv = node["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                node["metadata"]["annotations"][NODE_UUID_ANNOTATION] = json!(s.node_uuid);
                g.update(&node, rv)
                    .await
                    .map_err(gw("take over the Node"))?;
            }
        }
        self.heartbeat().await
    }

    async fn versions(&self) -> Option<HypervisorVersions> {
        if let Ok(v) = self.inner.versions.lock()
            && v.is_some()
        {
            return v.clone();
        }
        let v = self.inner.life.hypervisor().versions().await.ok()?;
        if let Ok(mut cached) = self.inner.versions.lock() {
            *cached = Some(v.clone());
        }
        Some(v)
    }

    /// Merges the node's facts into its Node status.
    pub async fn heartbeat(&self) -> Result<(), AgentError> {
        let s = &self.inner.settings;
        let storage = s.storage_path.clone();
        let mut facts = {
            let mut sampler = match self.inner.sampler.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            sampler.measure(&storage)
        };
        let domains = self
            .inner
            .life
            .hypervisor()
            .list()
            .await
            .unwrap_or_default();
        facts.usage.instances = u32::try_from(
            domains
                .iter()
                .filter(|d| uid_of(&d.name).is_some() && d.state.is_active())
                .count(),
        )
        .unwrap_or(u32::MAX);
        let versions = self.versions().await.unwrap_or_default();
        let qemu = if versions.driver.eq_ignore_ascii_case("qemu") {
            Some(versions.hypervisor.clone())
        } else {
            crate::installed_qemu_version().await
        };
        let mut patch = json!({
            "fqdn": crate::config::hostname(),
            "address": s.mesh_address.to_string(),
            "capacity": facts.capacity,
            "usage": facts.usage,
            "versions": {
                "qemu": qemu,
                "libvirt": versions.libvirt,
                "agent": env!("CARGO_PKG_VERSION"),
            },
            "lastSeen": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        let current: Option<Node> = self
            .inner
            .gateway
            .get("Node", None, &s.node_name)
            .await
            .map_err(gw("read the Node"))?;
        // Still ours? Another agent that judged this one gone owns the name now.
        if let Some(other) = current
            .as_ref()
            .and_then(|n| n.metadata.annotations.as_ref()?.get(NODE_UUID_ANNOTATION))
            .filter(|other| !other.is_empty() && **other != s.node_uuid)
        {
            return Err(AgentError::NodeTakenOver {
                name: s.node_name.clone(),
                other_uuid: other.clone(),
                uuid: s.node_uuid.clone(),
            });
        }
        let state = current
            .and_then(|n| n.status)
            .map(|st| st.state)
            .unwrap_or_default();
        if state == NodeState::Initial {
            patch["state"] = json!("created");
        }
        self.inner
            .gateway
            .merge_status("Node", None, &s.node_name, &patch)
            .await
            .map_err(gw("heartbeat the Node"))
    }

    // --- Instances ---------------------------------------------------------------

    /// The image file of a disk `base`: a path or `file://` URL as is (sf-api lets
    /// only the system namespace write those); an Artifact (this namespace, then
    /// shared in `system`, then by uid in this namespace or shared) its latest version's
    /// blob file, which must be on this node (the instance plan replicates it before
    /// `instance_create`; missing is `NotReady`, retried). With `pin` (the blob the
    /// instance plan replicated here), the version holding that blob while the
    /// artifact still has it, so a version landing meanwhile changes nothing. `None`:
    /// no such artifact or no version.
    async fn resolve_image(
        &self,
        namespace: &str,
        base: &str,
        pin: Option<&str>,
    ) -> Result<Option<PathBuf>, HandlerError> {
        if base.starts_with('/') {
            return Ok(Some(PathBuf::from(base)));
        }
        if let Some(path) = base.strip_prefix("file://") {
            return Ok(Some(PathBuf::from(path)));
        }
        if base.contains("://") {
            return Ok(None);
        }
        let g = &self.inner.gateway;
        let mut artifact: Option<Artifact> = g.get("Artifact", Some(namespace), base).await?;
        if artifact.is_none() && namespace != "system" {
            artifact = g
                .get::<Artifact>("Artifact", Some("system"), base)
                .await?
                .filter(|a| a.spec.shared);
        }
        if artifact.is_none() && uuid::Uuid::parse_str(base).is_ok() {
            // By uid: the instance's own namespace or a shared one of system, never
            // another tenant's (as sf-cluster resolves it).
            artifact = g
                .get_by_uid::<Artifact>("Artifact", base)
                .await?
                .filter(|a| {
                    let ns = a.metadata.namespace.as_deref();
                    ns == Some(namespace) || (ns == Some("system") && a.spec.shared)
                });
        }
        let Some(artifact) = artifact else {
            return Ok(None);
        };
        let versions = artifact.status.map(|s| s.versions).unwrap_or_default();
        let blobs_dir = self.inner.settings.storage_path.join("blobs");
        // A pinned version pruned since the plan replicated it: its file, while this
        // node still holds it, rather than a version the plan did not choose.
        if let Some(blob) = pin
            && !versions.iter().any(|v| v.blob == blob)
            && crate::blobs::check_name(blob).is_ok()
        {
            let path = crate::artifact::blob_path(&blobs_dir, blob);
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                return Ok(Some(path));
            }
        }
        let pinned = pin.and_then(|blob| versions.iter().find(|v| v.blob == blob));
        let Some(version) = pinned.or(versions.last()) else {
            return Ok(None);
        };
        let path = crate::artifact::blob_path(&blobs_dir, &version.blob);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            Ok(Some(path))
        } else {
            Err(HandlerError::NotReady(format!(
                "blob {} (version {} of artifact {base}) is not on this node",
                version.blob, version.index
            )))
        }
    }

    /// [`Self::resolve_image`] of `reference` (at `field` of the instance spec), which
    /// must name an image: a reference that resolves to nothing fails the operation
    /// ([`HandlerError::ImageNotFound`]) rather than giving the guest a blank disk.
    async fn image(
        &self,
        namespace: &str,
        reference: &str,
        field: &str,
        pin: Option<&str>,
    ) -> Result<PathBuf, HandlerError> {
        self.resolve_image(namespace, reference, pin)
            .await?
            .ok_or_else(|| {
                HandlerError::ImageNotFound(format!(
                    "{field} {reference}: no artifact with a version that this instance may use \
                     (one of its namespace, or a shared one of system)"
                ))
            })
    }

    /// [`Self::resolve_image`], where an image not (or no longer) on this node is
    /// `None` rather than an error; sf-database failing is still an error.
    async fn resolve_leniently(
        &self,
        namespace: &str,
        reference: &str,
    ) -> Result<Option<PathBuf>, HandlerError> {
        match self.resolve_image(namespace, reference, None).await {
            Ok(found) => Ok(found),
            Err(HandlerError::NotReady(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn network_of(&self, namespace: &str, name: &str) -> Result<Network, HandlerError> {
        let g = &self.inner.gateway;
        if let Some(n) = g.get::<Network>("Network", Some(namespace), name).await? {
            return Ok(n);
        }
        // By uid only within the namespace: never another tenant's network.
        if uuid::Uuid::parse_str(name).is_ok()
            && let Some(n) = g.get_by_uid::<Network>("Network", name).await?
            && n.metadata.namespace.as_deref() == Some(namespace)
        {
            return Ok(n);
        }
        Err(HandlerError::NotFound {
            kind: "Network",
            name: name.to_owned(),
        })
    }

    async fn nic_context(
        &self,
        namespace: &str,
        iface: &NetworkInterface,
    ) -> Result<NicContext, HandlerError> {
        let name = iface.metadata.name.clone().unwrap_or_default();
        let network = self.network_of(namespace, &iface.spec.network).await?;
        let vxid = network
            .status
            .as_ref()
            .and_then(|s| s.vxid)
            .ok_or_else(|| {
                HandlerError::NotReady(format!(
                    "network {} has no VXLAN id yet",
                    iface.spec.network
                ))
            })?;
        let status = iface.status.clone().unwrap_or_default();
        let mac = iface.mac().to_ascii_lowercase();
        let ipv4 = status
            .ipv4
            .as_deref()
            .or(iface.spec.address.as_deref())
            .and_then(|a| a.parse().ok());
        Ok(NicContext {
            interface: name,
            network: network.metadata.name.clone().unwrap_or_default(),
            network_uid: network.metadata.uid.clone().unwrap_or_default(),
            netblock: network.spec.netblock.clone(),
            vxid,
            mac,
            ipv4,
            model: iface.spec.model.clone(),
            mtu: self.inner.settings.mtu,
            floating_address: status.floating_address.clone(),
        })
    }

    async fn instance_interfaces(
        &self,
        namespace: &str,
        instance: &str,
    ) -> Result<Vec<NetworkInterface>, HandlerError> {
        let all: Vec<NetworkInterface> = self
            .inner
            .gateway
            .list("NetworkInterface", Some(namespace))
            .await?;
        let mut mine: Vec<NetworkInterface> = all
            .into_iter()
            .filter(|i| i.spec.instance == instance && i.metadata.deletion_timestamp.is_none())
            .collect();
        mine.sort_by_key(|i| interface_order(i, instance));
        Ok(mine)
    }

    /// The lifecycle context of `inst`; `required` interfaces must exist with an
    /// address (else [`HandlerError::NotReady`]). Disk bases must resolve only for
    /// `instance_create` ([`Self::create_context`]), the one operation that makes disks
    /// from them: a later operation finds the disks made, and must not fail because a
    /// base artifact moved on to a version this node does not hold, or went away (a
    /// cdrom takes what resolves now). The NVRAM template must resolve until the
    /// instance's first start has copied it.
    pub async fn instance_context(
        &self,
        inst: &Instance,
        required: &[String],
    ) -> Result<InstanceContext, HandlerError> {
        self.context(inst, required, None).await
    }

    /// [`Self::instance_context`] with every image resolved; one that resolves to
    /// nothing fails ([`HandlerError::ImageNotFound`]) rather than giving the guest a
    /// blank disk. `pins` is `instance_create`'s `blobs` (image reference → the blob
    /// replicated to this node for it; see [`Self::resolve_image`]).
    pub async fn create_context(
        &self,
        inst: &Instance,
        required: &[String],
        pins: &Value,
    ) -> Result<InstanceContext, HandlerError> {
        self.context(inst, required, Some(pins)).await
    }

    /// `pins`: `Some` for `instance_create` (every image must resolve), `None` after.
    async fn context(
        &self,
        inst: &Instance,
        required: &[String],
        pins: Option<&Value>,
    ) -> Result<InstanceContext, HandlerError> {
        let images = pins.is_some();
        let pin = |reference: &str| pins.and_then(|p| p.get(reference)).and_then(Value::as_str);
        let namespace = inst.metadata.namespace.clone().unwrap_or_default();
        let name = inst.metadata.name.clone().unwrap_or_default();
        let uid = inst.metadata.uid.clone().unwrap_or_default();
        let ifaces = self.instance_interfaces(&namespace, &name).await?;
        for want in required {
            let found = ifaces
                .iter()
                .find(|i| i.metadata.name.as_deref() == Some(want.as_str()));
            match found {
                None => {
                    return Err(HandlerError::NotReady(format!(
                        "network interface {want} does not exist yet"
                    )));
                }
                Some(i) if i.status.as_ref().and_then(|s| s.ipv4.as_ref()).is_none() => {
                    return Err(HandlerError::NotReady(format!(
                        "network interface {want} has no address yet"
                    )));
                }
                Some(_) => {}
            }
        }
        let mut nics = Vec::with_capacity(ifaces.len());
        for iface in &ifaces {
            nics.push(self.nic_context(&namespace, iface).await?);
        }
        // After the create: the images it was made from, while their files are here.
        let recorded = if images {
            None
        } else {
            self.inner.life.recorded_images(&uid).await
        };
        let mut base_images = Vec::with_capacity(inst.spec.disks.len());
        for (i, disk) in inst.spec.disks.iter().enumerate() {
            base_images.push(match &disk.base {
                Some(b) if images => Some(
                    self.image(&namespace, b, &format!("spec.disks[{i}].base"), pin(b))
                        .await?,
                ),
                // After the create: the recorded image (a cdrom keeps its media), else
                // what resolves here, if anything. A disk exists already (one that is
                // gone is not remade from nothing: `Lifecycle::define` refuses a based
                // disk without its base).
                Some(b) => match still_here(
                    recorded
                        .as_ref()
                        .and_then(|r| r.disk(i, b))
                        .map(Path::to_path_buf),
                )
                .await
                {
                    Some(path) => Some(path),
                    None => self.resolve_leniently(&namespace, b).await?,
                },
                None => None,
            });
        }
        // The template serves the first start (libvirt copies it when the NVRAM file
        // does not exist yet): it must resolve until then, not after.
        let first_start = !tokio::fs::try_exists(self.inner.life.paths(&uid).nvram())
            .await
            .unwrap_or(false);
        let nvram_template = match &inst.spec.nvram_template {
            Some(t) if images => Some(
                self.image(&namespace, t, "spec.nvramTemplate", pin(t))
                    .await?,
            ),
            Some(t) if first_start => {
                match still_here(
                    recorded
                        .as_ref()
                        .and_then(|r| r.nvram(t))
                        .map(Path::to_path_buf),
                )
                .await
                {
                    Some(path) => Some(path),
                    None => Some(
                        self.image(&namespace, t, "spec.nvramTemplate", None)
                            .await?,
                    ),
                }
            }
            Some(t) => self.resolve_leniently(&namespace, t).await?,
            None => None,
        };
        Ok(InstanceContext {
            uid,
            dns_domain: format!("{namespace}.{}", self.inner.settings.zone),
            namespace,
            name,
            spec: inst.spec.clone(),
            nics,
            base_images,
            nvram_template,
        })
    }

    async fn target_instance(&self, op: &ClusterOperation) -> Result<Instance, HandlerError> {
        let t = &op.spec.target;
        let found: Option<Instance> = self
            .inner
            .gateway
            .get("Instance", t.namespace.as_deref(), &t.name)
            .await?;
        match found {
            Some(i) if t.uid.is_empty() || i.metadata.uid.as_deref() == Some(t.uid.as_str()) => {
                Ok(i)
            }
            _ => Err(HandlerError::NotFound {
                kind: "Instance",
                name: t.name.clone(),
            }),
        }
    }

    /// Writes the observed power state (and, when given, interfaces and console).
    async fn report_instance(
        &self,
        namespace: Option<&str>,
        name: &str,
        uid: &str,
        state: Option<DomainState>,
        ctx: Option<&InstanceContext>,
    ) -> Result<(), GatewayError> {
        let mut patch = serde_json::Map::new();
        if let Some(s) = state {
            patch.insert("powerState".into(), json!(s.power_state().as_str()));
        }
        if let Some(ctx) = ctx {
            patch.insert("interfaces".into(), json!(ctx.interface_status()));
            let console = self.inner.life.console(uid).await;
            patch.insert("console".into(), json!(console));
            // The interfaces' own observed fact: the node they are plumbed on.
            let node = json!({"node": self.node_name()});
            for nic in &ctx.nics {
                match self
                    .inner
                    .gateway
                    .merge_status("NetworkInterface", namespace, &nic.interface, &node)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.code() == Some(Code::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if patch.is_empty() {
            return Ok(());
        }
        let result = self
            .inner
            .gateway
            .merge_status("Instance", namespace, name, &Value::Object(patch))
            .await;
        match result {
            Ok(()) => {
                self.set_reported(uid, state);
                Ok(())
            }
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // --- Networks ----------------------------------------------------------------

    async fn plumbing(
        &self,
        network: &Network,
        network_node: bool,
        vxid_hint: Option<u32>,
    ) -> Result<NetworkPlumbing, HandlerError> {
        let g = &self.inner.gateway;
        let s = &self.inner.settings;
        let name = network.metadata.name.clone().unwrap_or_default();
        let namespace = network.metadata.namespace.clone().unwrap_or_default();
        let uid = network.metadata.uid.clone().unwrap_or_default();
        let status = network.status.clone().unwrap_or_default();
        let vxid = status
            .vxid
            .or(vxid_hint)
            .ok_or_else(|| HandlerError::NotReady(format!("network {name} has no VXLAN id yet")))?;
        let nodes: Vec<Node> = g.list("Node", None).await?;
        let members: BTreeSet<&str> = status.nodes.iter().map(String::as_str).collect();
        let mut peers: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for node in &nodes {
            let node_name = node.metadata.name.as_deref().unwrap_or_default();
            if node_name == s.node_name {
                continue;
            }
            let hosts = members.contains(node_name) || node.spec.roles.contains(&NodeRole::Network);
            let address = node
                .status
                .as_ref()
                .and_then(|st| st.address.as_deref())
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            if let (true, Some(a)) = (hosts, address)
                && a != s.mesh_address
            {
                peers.insert(a);
            }
        }
        let ifaces: Vec<NetworkInterface> = g.list("NetworkInterface", Some(&namespace)).await?;
        let mut dhcp_hosts = Vec::new();
        let mut floating_ips = Vec::new();
        for iface in ifaces.iter().filter(|i| {
            (i.spec.network == name || i.spec.network == uid)
                && i.metadata.deletion_timestamp.is_none()
        }) {
            let st = iface.status.clone().unwrap_or_default();
            let Some(ipv4) = st.ipv4.as_deref().and_then(|a| a.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let mac = iface.mac().to_ascii_lowercase();
            dhcp_hosts.push(DhcpHost {
                mac,
                ipv4,
                hostname: iface.spec.instance.clone(),
            });
            if let Some(floating) = st
                .floating_address
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            {
                floating_ips.push(FloatingIp {
                    floating,
                    inner: ipv4,
                });
            }
        }
        dhcp_hosts.sort_by_key(|h| h.ipv4);
        // Routed addresses: those the network holds, up to the count it still wants
        // (an extra one may linger in status until its release is written).
        let wanted = usize::try_from(network.spec.routed_address_count).unwrap_or(usize::MAX);
        let routed_ips: Vec<Ipv4Addr> = status
            .routed_addresses
            .iter()
            .take(wanted)
            .filter_map(|a| a.parse().ok())
            .collect();
        Ok(NetworkPlumbing {
            uid,
            name,
            namespace: namespace.clone(),
            vxid,
            netblock: network.spec.netblock.clone(),
            mtu: s.mtu,
            mesh_peers: peers.into_iter().collect(),
            network_node,
            provide_dhcp: network.spec.provide_dhcp,
            provide_nat: network.spec.provide_nat,
            provide_dns: network.spec.provide_dns,
            dns_domain: format!("{namespace}.{}", s.zone),
            dhcp_hosts,
            floating_gateway: status
                .floating_gateway
                .as_deref()
                .and_then(|a| a.parse().ok()),
            floating_ips,
            routed_ips,
        })
    }

    async fn target_network(&self, op: &ClusterOperation) -> Result<Option<Network>, HandlerError> {
        let t = &op.spec.target;
        let found: Option<Network> = self
            .inner
            .gateway
            .get("Network", t.namespace.as_deref(), &t.name)
            .await?;
        Ok(found.filter(|n| t.uid.is_empty() || n.metadata.uid.as_deref() == Some(t.uid.as_str())))
    }

    /// Whether this node has the network role (configured, or on its Node). A failed
    /// read is an error, never "no": a network node that took itself for a plain one
    /// would tear down every network's router, DHCP and NAT.
    async fn this_node_is_network_node(&self) -> Result<bool, GatewayError> {
        if self.inner.settings.network_node_role {
            return Ok(true);
        }
        Ok(self
            .inner
            .gateway
            .get::<Node>("Node", None, self.node_name())
            .await?
            .is_some_and(|n| n.spec.roles.contains(&NodeRole::Network)))
    }

    /// Re-ensures every network recorded on this node. Returns the vxids ensured.
    pub async fn sync_networks(&self) -> Result<Vec<u32>, AgentError> {
        let networks: Vec<Network> = self
            .inner
            .gateway
            .list("Network", None)
            .await
            .map_err(gw("list networks"))?;
        let network_node = self
            .this_node_is_network_node()
            .await
            .map_err(gw("read this Node's roles"))?;
        let me = self.node_name().to_owned();
        let mut ensured = Vec::new();
        for network in networks.iter().filter(|n| {
            n.metadata.deletion_timestamp.is_none()
                && n.status
                    .as_ref()
                    .is_some_and(|s| s.vxid.is_some() && s.nodes.contains(&me))
        }) {
            let vxid = network
                .status
                .as_ref()
                .and_then(|s| s.vxid)
                .unwrap_or_default();
            // Under the lock a network operation runs under, from a fresh read: a
            // network_delete (or a floating change) that ran since the list must not
            // be undone by plumbing from the older snapshot.
            let ns = network.metadata.namespace.clone().unwrap_or_default();
            let name = network.metadata.name.clone().unwrap_or_default();
            let lock = self.lock_for(&network_lock_key(&ns, &name));
            let _guard = lock.lock().await;
            let fresh: Option<Network> = self
                .inner
                .gateway
                .get("Network", Some(&ns), &name)
                .await
                .map_err(gw("read a network"))?;
            let Some(network) = fresh.filter(|n| {
                n.metadata.uid == network.metadata.uid
                    && n.metadata.deletion_timestamp.is_none()
                    && n.status
                        .as_ref()
                        .is_some_and(|s| s.vxid == Some(vxid) && s.nodes.contains(&me))
            }) else {
                continue;
            };
            match self.plumbing(&network, network_node, None).await {
                Ok(p) => match self.inner.net.ensure_network(&p).await {
                    Ok(()) => ensured.push(vxid),
                    Err(e) => tracing::warn!(vxid, error = %e, "re-ensuring a network failed"),
                },
                Err(e) => tracing::warn!(vxid, error = %e, "cannot build a network's plumbing"),
            }
        }
        if let Ok(mut t) = self.inner.last_network_sync.lock() {
            *t = Some(Instant::now());
        }
        Ok(ensured)
    }

    /// Removes the plumbing of networks neither recorded on this node (deleting ones
    /// keep theirs until their network_delete runs) nor used by an interface of an
    /// instance placed here. Returns the vxids removed.
    pub async fn remove_stray_plumbing(&self) -> Result<Vec<u32>, AgentError> {
        let networks: Vec<Network> = self
            .inner
            .gateway
            .list("Network", None)
            .await
            .map_err(gw("list networks"))?;
        let me = self.node_name().to_owned();
        let mut wanted: HashSet<u32> = networks
            .iter()
            .filter_map(|n| n.status.as_ref())
            .filter(|s| s.nodes.contains(&me))
            .filter_map(|s| s.vxid)
            .collect();
        // Interfaces of instances placed here keep their network's plumbing even
        // before the network records this node (a network_create_on_node that
        // completed just before a restart): their guests' taps are on those bridges.
        wanted.extend(self.vxids_in_use_here(&networks).await?);
        let plumbed =
            self.inner
                .net
                .list_networks()
                .await
                .map_err(|source| AgentError::HostNet {
                    action: "list plumbed networks",
                    source,
                })?;
        let mut removed = Vec::new();
        for vxid in plumbed.into_iter().filter(|v| !wanted.contains(v)) {
            match self.inner.net.delete_network(vxid).await {
                Ok(()) => removed.push(vxid),
                Err(e) => tracing::warn!(vxid, error = %e, "removing stray plumbing failed"),
            }
        }
        Ok(removed)
    }

    // --- Operations --------------------------------------------------------------

    /// Runs one operation's handler; returns the result for `Complete`.
    pub async fn execute(&self, op: &ClusterOperation) -> Result<Value, HandlerError> {
        if !self.inner.settings.operation_delay.is_zero() {
            tokio::time::sleep(self.inner.settings.operation_delay).await;
        }
        let t = &op.spec.target;
        let payload = &op.spec.payload;
        let life = &self.inner.life;
        match &op.spec.operation_type {
            OperationType::InstanceCreate => {
                let inst = self.target_instance(op).await?;
                let required: Vec<String> = payload["interfaces"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let desired = payload["powerState"]
                    .as_str()
                    .map(DesiredPowerState::parse)
                    .unwrap_or_else(|| inst.spec.power_state.clone());
                let ctx = self
                    .create_context(&inst, &required, &payload["blobs"])
                    .await?;
                // Hold the blob files it is made from against a blob_delete until the
                // disks back onto them and images.json names them; one deleted between
                // the resolution and the lock is found missing here.
                let images: Vec<PathBuf> = ctx
                    .base_images
                    .iter()
                    .chain([&ctx.nvram_template])
                    .flatten()
                    .cloned()
                    .collect();
                let _held = self.hold_blobs(images).await?;
                let state = life.create(&ctx, &desired).await?;
                self.report_instance(
                    t.namespace.as_deref(),
                    &ctx.name,
                    &ctx.uid,
                    Some(state),
                    Some(&ctx),
                )
                .await?;
                Ok(
                    json!({"powerState": state.power_state().as_str(), "domain": crate::hypervisor::domain_name(&ctx.uid)}),
                )
            }
            OperationType::InstancePowerOn => {
                let inst = self.target_instance(op).await?;
                let ctx = self.instance_context(&inst, &[]).await?;
                let state = life.power_on(&ctx).await?;
                self.report_instance(
                    t.namespace.as_deref(),
                    &ctx.name,
                    &ctx.uid,
                    Some(state),
                    Some(&ctx),
                )
                .await?;
                Ok(json!({"powerState": state.power_state().as_str()}))
            }
            OperationType::InstancePowerOff
            | OperationType::InstancePause
            | OperationType::InstanceUnpause
            | OperationType::InstanceReboot => {
                let uid = self.target_uid(op).await?;
                let state = match &op.spec.operation_type {
                    OperationType::InstancePowerOff => life.power_off(&uid).await?,
                    OperationType::InstancePause => life.pause(&uid).await?,
                    OperationType::InstanceUnpause => life.unpause(&uid).await?,
                    _ => {
                        let hard = payload["hard"].as_bool().unwrap_or(false);
                        life.reboot(&uid, hard).await?
                    }
                };
                self.report_instance(t.namespace.as_deref(), &t.name, &uid, Some(state), None)
                    .await?;
                Ok(json!({"powerState": state.power_state().as_str()}))
            }
            OperationType::InstanceScreenshot => self.screenshot(op).await,
            OperationType::InstanceSnapshot => self.snapshot(op).await,
            OperationType::InterfaceHotPlug => self.hot_plug(op).await,
            OperationType::InterfaceHotUnplug => self.hot_unplug(op).await,
            OperationType::InstanceDelete => {
                let uid = self.target_uid(op).await?;
                life.delete(&uid).await?;
                self.report_instance(
                    t.namespace.as_deref(),
                    &t.name,
                    &uid,
                    Some(DomainState::Off),
                    None,
                )
                .await?;
                self.set_reported(&uid, None);
                Ok(json!({"deleted": crate::hypervisor::domain_name(&uid)}))
            }
            OperationType::NetworkCreateOnNode | OperationType::NetworkUpdateDhcp => {
                let network =
                    self.target_network(op)
                        .await?
                        .ok_or_else(|| HandlerError::NotFound {
                            kind: "Network",
                            name: t.name.clone(),
                        })?;
                let update = op.spec.operation_type == OperationType::NetworkUpdateDhcp;
                // Never plain plumbing on the network node (an instance's
                // network_create_on_node can reach it before the network records it):
                // that would tear its router, DHCP and NAT down.
                let network_node = update
                    || payload["networkNode"].as_bool().unwrap_or(false)
                    || self.this_node_is_network_node().await?;
                let hint = payload["vxid"].as_u64().and_then(|v| u32::try_from(v).ok());
                let p = self.plumbing(&network, network_node, hint).await?;
                if update {
                    self.inner.net.update_dhcp(&p).await?;
                } else {
                    self.inner.net.ensure_network(&p).await?;
                }
                Ok(
                    json!({"vxid": p.vxid, "node": self.node_name(), "dhcpHosts": p.dhcp_hosts.len()}),
                )
            }
            OperationType::NetworkDelete => {
                let vxid = match payload["vxid"].as_u64().and_then(|v| u32::try_from(v).ok()) {
                    Some(v) => v,
                    None => self
                        .target_network(op)
                        .await?
                        .and_then(|n| n.status.and_then(|s| s.vxid))
                        .ok_or_else(|| {
                            HandlerError::BadOperation("network_delete without a vxid".into())
                        })?,
                };
                self.inner.net.delete_network(vxid).await?;
                Ok(json!({"vxid": vxid, "node": self.node_name()}))
            }
            OperationType::ArtifactFetch => {
                let request = crate::artifact::FetchRequest::from_payload(payload)?;
                let s = &self.inner.settings;
                let mut settings = crate::artifact::FetchSettings::new(
                    s.storage_path.join("blobs"),
                    s.artifact_max_bytes,
                );
                // A tenant's artifact reaches only external addresses, never the
                // operator's denied blocks nor this host's own addresses.
                let mut denied = s.artifact_tenant_denied.clone();
                denied.extend(crate::artifact::host_addresses());
                settings.policy = crate::artifact::AddressPolicy::for_namespace(
                    op.spec.target.namespace.as_deref(),
                    &s.artifact_tenant_allowed,
                    &denied,
                );
                // The blob's own lock (blob_delete runs under it): a removal never
                // unlinks a download in progress.
                let _blob = self
                    .lock_for(&format!("blob:{}", request.blob))
                    .lock_owned()
                    .await;
                let fetched = crate::artifact::fetch(&settings, &request).await?;
                Ok(fetched.to_result(self.node_name()))
            }
            OperationType::BlobDelete => {
                let blob = payload["blob"]
                    .as_str()
                    .ok_or_else(|| HandlerError::BadOperation("payload.blob is required".into()))?;
                let s = &self.inner.settings;
                let blobs_dir = s.storage_path.join("blobs");
                let domains = self.domains_naming(&blobs_dir.join(blob)).await?;
                let removed = crate::blobs::remove(
                    &blobs_dir,
                    &s.storage_path.join("instances"),
                    blob,
                    domains,
                )
                .await
                .inspect_err(|e| {
                    if let crate::blobs::RemoveError::InUse { users, .. } = e {
                        tracing::info!(blob, ?users, "kept a blob file still in use");
                    }
                })?;
                Ok(json!({"blob": blob, "node": self.node_name(), "removed": removed.existed}))
            }
            other => Err(HandlerError::Unsupported(other.as_str().to_owned())),
        }
    }

    /// The defined domains whose XML (live or persistent) names `path`.
    async fn domains_naming(&self, path: &std::path::Path) -> Result<Vec<String>, HandlerError> {
        let hv = self.inner.life.hypervisor();
        let needle = path.to_string_lossy();
        let mut users = Vec::new();
        for domain in hv.list().await.map_err(LifecycleError::from)? {
            for inactive in [false, true] {
                match hv.xml(&domain.name, inactive).await {
                    Ok(xml) if xml.contains(needle.as_ref()) => {
                        users.push(domain.name.clone());
                        break;
                    }
                    Ok(_) => {}
                    // Undefined meanwhile: it uses nothing.
                    Err(HypervisorError::NoDomain { .. }) => break,
                    Err(e) => return Err(LifecycleError::from(e).into()),
                }
            }
        }
        Ok(users)
    }

    async fn target_uid(&self, op: &ClusterOperation) -> Result<String, HandlerError> {
        if !op.spec.target.uid.is_empty() {
            return Ok(op.spec.target.uid.clone());
        }
        let inst = self.target_instance(op).await?;
        Ok(inst.metadata.uid.unwrap_or_default())
    }

    async fn screenshot(&self, op: &ClusterOperation) -> Result<Value, HandlerError> {
        let t = &op.spec.target;
        let uid = self.target_uid(op).await?;
        let (mime, data) = self.inner.life.screenshot(&uid).await?;
        let size = data.len();
        // Named after the operation so a repeated screenshot reuses its Blob.
        let blob_name = op
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let namespace = t.namespace.clone().unwrap_or_default();
        let source = format!("screenshot of instance {namespace}/{}", t.name);
        let object = blob_object(
            &blob_name,
            &namespace,
            u64::try_from(size).unwrap_or(u64::MAX),
            &mime,
            &source,
        );
        let g = &self.inner.gateway;
        let blob = g
            .create_or_get(&object)
            .await?
            .ok_or_else(|| HandlerError::NotFound {
                kind: "Blob",
                name: blob_name.clone(),
            })?;
        let blob_uid = blob["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (stored, sha256) = g.put_blob_data(&blob_uid, data, &mime).await?;
        Ok(json!({"blob": blob_name, "size": stored, "sha256": sha256, "mimeType": mime}))
    }

    /// Takes the snapshots an `instance_snapshot` asks for ([`crate::snapshot`]):
    /// each chosen disk into a blob named from the operation uid and the device (a
    /// re-run names the same blob), recorded at once as a Blob on this node, and by
    /// the artifact controller from the result as a new version of the device's
    /// snapshot Artifact, which this makes when missing.
    async fn snapshot(&self, op: &ClusterOperation) -> Result<Value, HandlerError> {
        let request = SnapshotRequest::parse(&op.spec.payload).map_err(|errors| {
            let messages: Vec<String> = errors.into_iter().map(|e| e.message).collect();
            HandlerError::BadOperation(messages.join("; "))
        })?;
        let inst = self.target_instance(op).await?;
        let uid = inst.metadata.uid.clone().unwrap_or_default();
        let name = inst.metadata.name.clone().unwrap_or_default();
        let namespace = op.spec.target.namespace.clone().unwrap_or_default();
        let paths = self.inner.life.paths(&uid);
        let input = crate::domain_xml::DomainInput {
            uid: &uid,
            namespace: &namespace,
            name: &name,
            spec: &inst.spec,
            nics: &[],
            paths: &paths,
            cdrom_sources: &[],
            nvram_template: None,
        };
        let layout = crate::domain_xml::layout_disks(&input)
            .map_err(|e| HandlerError::BadOperation(e.to_string()))?;
        let chosen = crate::snapshot::choose(&inst.spec, &layout, &request)?;
        let blobs_dir = self.inner.settings.storage_path.join("blobs");
        let op_uid = op.metadata.uid.clone().unwrap_or_default();
        let mut snapshots = Vec::new();
        for disk in chosen {
            let (artifact, artifact_uid) = self
                .snapshot_artifact(&inst, &namespace, &disk.device, request.max_versions)
                .await?;
            let blob = sf_schema::common::derived_uuid(&format!("{op_uid}/{}", disk.device));
            let (size, sha512) =
                crate::snapshot::capture(&disk.device, &disk.path, &blobs_dir, &blob).await?;
            let source = sf_schema::snapshot::source_url(&uid, &disk.device);
            self.record_snapshot_blob(&blob, &namespace, &source, size, &sha512)
                .await?;
            snapshots.push(SnapshotTaken {
                device: disk.device,
                artifact,
                artifact_uid,
                blob,
                size,
                sha512,
            });
        }
        let result = SnapshotResult {
            node: self.node_name().to_owned(),
            snapshots,
        };
        serde_json::to_value(&result).map_err(|e| HandlerError::BadOperation(e.to_string()))
    }

    /// Records the blob file a snapshot wrote as a Blob holding it on this node, with
    /// no references yet (the artifact controller counts the version using it). Every
    /// file thus has a Blob the blob garbage collector sees: one no version ever uses
    /// (a snapshot that failed on a later disk, or whose artifact went meanwhile)
    /// is removed after the grace period. A Blob already collected is left alone.
    async fn record_snapshot_blob(
        &self,
        blob: &str,
        namespace: &str,
        source: &str,
        size: u64,
        sha512: &str,
    ) -> Result<(), HandlerError> {
        let g = &self.inner.gateway;
        let mime = sf_schema::snapshot::SNAPSHOT_MIME_TYPE;
        let object = blob_object(blob, namespace, size, mime, source);
        let stored = g
            .create_or_get(&object)
            .await?
            .ok_or_else(|| HandlerError::NotReady(format!("blob {blob} vanished")))?;
        let stored: Blob = serde_json::from_value(stored)
            .map_err(|e| HandlerError::BadOperation(e.to_string()))?;
        let status = stored.status.unwrap_or_default();
        let node = self.node_name().to_owned();
        if status.state == ResourceState::Deleted
            || (status.nodes.contains(&node)
                && status.size == Some(size)
                && status.checksums.get("sha512").map(String::as_str) == Some(sha512))
        {
            return Ok(());
        }
        let mut nodes = status.nodes;
        nodes.push(node);
        nodes.sort();
        nodes.dedup();
        g.merge_status(
            "Blob",
            None,
            blob,
            &json!({
                "state": "created",
                "size": size,
                "checksums": {"sha512": sha512},
                "nodes": nodes,
            }),
        )
        .await?;
        Ok(())
    }

    /// The snapshot Artifact of `device` of `inst` (name and uid), made when missing.
    async fn snapshot_artifact(
        &self,
        inst: &Instance,
        namespace: &str,
        device: &str,
        max_versions: Option<u32>,
    ) -> Result<(String, String), HandlerError> {
        let uid = inst.metadata.uid.clone().unwrap_or_default();
        let name = sf_schema::snapshot::artifact_name(&uid, device);
        let g = &self.inner.gateway;
        let object = sf_schema::snapshot::artifact_object(
            &uid,
            inst.metadata.name.as_deref().unwrap_or_default(),
            namespace,
            device,
            max_versions,
        );
        let artifact = g
            .create_or_get(&object)
            .await?
            .ok_or_else(|| HandlerError::NotReady(format!("artifact {name} vanished")))?;
        if !sf_schema::snapshot::is_snapshot_artifact_of(&artifact, &uid, device) {
            return Err(HandlerError::BadOperation(format!(
                "artifact {namespace}/{name} exists and does not hold snapshots of {device} of \
                 this instance"
            )));
        }
        if artifact.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(HandlerError::NotReady(format!(
                "artifact {namespace}/{name} is being deleted; the snapshot is retried into a new one"
            )));
        }
        let artifact_uid = artifact
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok((name, artifact_uid))
    }

    async fn hot_plug(&self, op: &ClusterOperation) -> Result<Value, HandlerError> {
        let t = &op.spec.target;
        let namespace = t.namespace.clone().unwrap_or_default();
        let g = &self.inner.gateway;
        let iface: NetworkInterface = g
            .get("NetworkInterface", Some(&namespace), &t.name)
            .await?
            .ok_or_else(|| HandlerError::NotFound {
                kind: "NetworkInterface",
                name: t.name.clone(),
            })?;
        let inst: Instance = g
            .get("Instance", Some(&namespace), &iface.spec.instance)
            .await?
            .ok_or_else(|| HandlerError::NotFound {
                kind: "Instance",
                name: iface.spec.instance.clone(),
            })?;
        let network = self.network_of(&namespace, &iface.spec.network).await?;
        // Shaken Fist ensures the network and its mesh exist here before plugging.
        let network_node = self.this_node_is_network_node().await?;
        let p = self.plumbing(&network, network_node, None).await?;
        self.inner.net.ensure_network(&p).await?;
        let nic = self.nic_context(&namespace, &iface).await?;
        let uid = inst.metadata.uid.clone().unwrap_or_default();
        let plugged = self.inner.life.hot_plug(&uid, &nic.nic_input()).await?;
        let ctx = self.instance_context(&inst, &[]).await?;
        let state = self.inner.life.observe(&uid).await?;
        self.report_instance(Some(&namespace), &ctx.name, &uid, state, Some(&ctx))
            .await?;
        Ok(json!({"interface": t.name, "macaddr": nic.mac, "plugged": plugged}))
    }

    /// Unplugs a deleted interface's NIC (payload `instance`, `macaddr`) from its
    /// instance, then reports the instance's interfaces without it. An instance or NIC
    /// that is already gone is success (`"unplugged": false`).
    async fn hot_unplug(&self, op: &ClusterOperation) -> Result<Value, HandlerError> {
        let t = &op.spec.target;
        let namespace = t.namespace.clone().unwrap_or_default();
        let payload = &op.spec.payload;
        let (Some(instance), Some(mac)) = (
            payload["instance"].as_str(),
            payload["macaddr"].as_str().filter(|m| !m.is_empty()),
        ) else {
            return Err(HandlerError::BadOperation(
                "interface_hot_unplug needs payload.instance and payload.macaddr".into(),
            ));
        };
        let g = &self.inner.gateway;
        let Some(inst) = g
            .get::<Instance>("Instance", Some(&namespace), instance)
            .await?
        else {
            return Ok(json!({"interface": t.name, "macaddr": mac, "unplugged": false}));
        };
        let uid = inst.metadata.uid.clone().unwrap_or_default();
        let unplugged = self.inner.life.hot_unplug(&uid, mac).await?;
        // The NIC is gone: a failed report must not fail the unplug (the next report
        // of the instance brings its interfaces up to date).
        let report = async {
            let ctx = self.instance_context(&inst, &[]).await?;
            let state = self.inner.life.observe(&uid).await?;
            self.report_instance(Some(&namespace), &ctx.name, &uid, state, Some(&ctx))
                .await?;
            Ok::<(), HandlerError>(())
        };
        if let Err(e) = report.await {
            tracing::warn!(instance = instance, error = %e, "unplugged; reporting the instance's interfaces failed");
        }
        Ok(json!({"interface": t.name, "macaddr": mac, "unplugged": unplugged}))
    }

    /// The lock key of an operation: its target's uid (or name).
    fn lock_key(op: &ClusterOperation) -> String {
        let t = &op.spec.target;
        let ns = t.namespace.as_deref().unwrap_or_default();
        match &op.spec.operation_type {
            OperationType::InterfaceHotPlug | OperationType::InterfaceHotUnplug => {
                instance_lock_key(ns, op.spec.payload["instance"].as_str().unwrap_or(&t.name))
            }
            OperationType::NetworkCreateOnNode
            | OperationType::NetworkUpdateDhcp
            | OperationType::NetworkDelete => network_lock_key(ns, &t.name),
            OperationType::ArtifactFetch => format!("artifact:{ns}/{}", t.name),
            OperationType::BlobDelete => format!("blob:{}", t.name),
            _ => instance_lock_key(ns, &t.name),
        }
    }

    /// Executes one claimed operation end to end: lock, heartbeats, handler, Complete
    /// or Fail. `release` makes it a retryable failure without running (shutdown).
    async fn run_claimed(&self, claimed: pb::ClaimedOperation, shutdown: Shutdown) {
        let lease = pb_lease(&claimed.lease);
        let op: ClusterOperation = match serde_json::from_slice(&claimed.object) {
            Ok(op) => op,
            Err(e) => {
                let _ = self
                    .inner
                    .gateway
                    .fail(
                        lease,
                        "BadOperation",
                        &format!("undecodable operation: {e}"),
                        false,
                    )
                    .await;
                return;
            }
        };
        let op_name = op.metadata.name.clone().unwrap_or_default();
        let op_type = op.spec.operation_type.as_str().to_owned();
        let g = self.inner.gateway.clone();
        if op.spec.node.as_deref() != Some(self.node_name()) {
            tracing::warn!(operation = %op_name, node = ?op.spec.node, "claimed an operation for another queue; releasing it");
            let _ = g
                .fail(
                    lease,
                    "WrongNode",
                    &format!(
                        "{} cannot run operations of the cluster queue or another node",
                        self.node_name()
                    ),
                    true,
                )
                .await;
            self.inner
                .metrics
                .finished(&op_type, "released", 0.0, Some("WrongNode"));
            return;
        }
        let span = tracing::info_span!("operation", name = %op_name, r#type = %op_type, target = %op.spec.target.name);
        let started = Instant::now();
        self.inner.metrics.in_flight.inc();
        let lock = self.lock_for(&Self::lock_key(&op));
        let hb_interval = self.inner.settings.operation_heartbeat_interval;
        let hb_gateway = g.clone();
        let hb_lease = lease;
        let (aborted_tx, aborted_rx) = tokio::sync::oneshot::channel::<()>();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(hb_interval).await;
                match hb_gateway.heartbeat(hb_lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = aborted_tx.send(());
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "operation heartbeat failed"),
                }
            }
        });
        let work = async {
            let _guard = lock.lock().await;
            self.execute(&op).await
        }
        .instrument(span);
        let drain = self.inner.settings.drain_timeout;
        let aborted = async {
            if aborted_rx.await.is_err() {
                // The heartbeat task ended without an abort: never fire.
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = work => Ended::Done(r),
            () = aborted => Ended::Aborted,
            () = async { shutdown.wait().await; tokio::time::sleep(drain).await } => Ended::Released,
        };
        heartbeat.abort();
        self.inner.metrics.in_flight.dec();
        let seconds = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ended::Aborted => {
                // Stop working; the Fail only removes the row (the lease is stale).
                tracing::warn!(operation = %op_name, "operation aborted meanwhile; stopped");
                self.inner
                    .metrics
                    .finished(&op_type, "aborted", seconds, None);
                g.fail(lease, "Aborted", "the operation was aborted", false)
                    .await
            }
            Ended::Done(Ok(value)) => {
                tracing::info!(operation = %op_name, seconds, "operation complete");
                self.record_operation_event(
                    &op,
                    format!(
                        "{op_type} {op_name} complete on {} in {seconds:.2} s",
                        self.node_name()
                    ),
                );
                self.inner
                    .metrics
                    .finished(&op_type, "complete", seconds, None);
                g.complete(lease, &value).await
            }
            Ended::Done(Err(e)) => {
                let code = e.code();
                tracing::warn!(operation = %op_name, code = %code, error = %e, "operation failed");
                self.record_operation_event(
                    &op,
                    format!(
                        "{op_type} {op_name} failed on {}: {code}: {e}",
                        self.node_name()
                    ),
                );
                self.inner
                    .metrics
                    .finished(&op_type, "error", seconds, Some(&code));
                g.fail(lease, &code, &e.to_string(), e.retryable()).await
            }
            Ended::Released => {
                tracing::warn!(operation = %op_name, "shutting down: releasing an unfinished operation");
                self.inner.metrics.finished(
                    &op_type,
                    "released",
                    seconds,
                    Some("AgentShuttingDown"),
                );
                g.fail(
                    lease,
                    "AgentShuttingDown",
                    "the agent stopped before the operation finished",
                    true,
                )
                .await
            }
        };
        match outcome {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::FailedPrecondition) => {
                tracing::warn!(operation = %op_name, "lease no longer held (aborted or re-queued); result dropped");
            }
            Err(e) => {
                tracing::error!(operation = %op_name, error = %e, "cannot report an operation's outcome")
            }
        }
    }

    async fn claim_loop(&self, shutdown: Shutdown) {
        let s = &self.inner.settings;
        let semaphore = Arc::new(Semaphore::new(s.max_concurrency as usize));
        let claimer = format!("{}:{}", s.node_name, std::process::id());
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending_claim: Option<String> = None;
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_triggered() {
            // At least one free slot before claiming.
            let first: OwnedSemaphorePermit = tokio::select! {
                p = semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = shutdown.wait() => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = semaphore.clone().try_acquire_owned() {
                permits.push(p);
            }
            let claim_id = pending_claim
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
            pending_claim = Some(claim_id.clone());
            let max = u32::try_from(permits.len()).unwrap_or(1);
            let claim = self.inner.gateway.claim(
                &s.node_name,
                max,
                &claim_id,
                &claimer,
                s.claim_wait_seconds,
            );
            let reply = tokio::select! {
                r = claim => Some(r),
                () = shutdown.wait() => None,
            };
            let reply = match reply {
                Some(r) => r,
                None => {
                    // The claim may have committed: fetch its rows (same claim_id, no
                    // wait) and release them.
                    let rows = self
                        .inner
                        .gateway
                        .claim(&s.node_name, max, &claim_id, &claimer, 0)
                        .await
                        .unwrap_or_default();
                    for row in rows {
                        let _ = self
                            .inner
                            .gateway
                            .fail(
                                pb_lease(&row.lease),
                                "AgentShuttingDown",
                                "claimed while the agent stopped",
                                true,
                            )
                            .await;
                    }
                    break;
                }
            };
            match reply {
                Ok(rows) => {
                    pending_claim = None;
                    backoff = Duration::from_millis(200);
                    self.inner.metrics.claims.inc_by(rows.len() as u64);
                    for row in rows {
                        let Some(permit) = permits.pop() else {
                            // More rows than asked for: run them anyway, bounded by the
                            // drain like the others.
                            let agent = self.clone();
                            let sd = shutdown.clone();
                            tasks.spawn(async move { agent.run_claimed(row, sd).await });
                            continue;
                        };
                        let agent = self.clone();
                        let sd = shutdown.clone();
                        tasks.spawn(async move {
                            agent.run_claimed(row, sd).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    if e.unavailable() {
                        // Keep the claim id: the reply may have been lost after commit.
                        tracing::warn!(error = %e, "claim failed; retrying with the same claim id");
                    } else {
                        pending_claim = None;
                        tracing::error!(error = %e, "claim refused");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.wait() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        // Drain: each task releases itself once drain_timeout has passed.
        let limit = self.inner.settings.drain_timeout + Duration::from_secs(30);
        let _ =
            tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} }).await;
    }

    /// One polling pass: reports domain state changes; returns how many.
    pub async fn poll_states(&self) -> Result<usize, AgentError> {
        let domains =
            self.inner
                .life
                .hypervisor()
                .list()
                .await
                .map_err(|e| AgentError::Lifecycle {
                    action: "list domains",
                    source: e.into(),
                })?;
        let mut changes = 0;
        for d in domains {
            let Some(uid) = uid_of(&d.name) else { continue };
            if self.reported(uid) == Some(d.state) {
                continue;
            }
            let inst: Option<Instance> = self
                .inner
                .gateway
                .get_by_uid("Instance", uid)
                .await
                .map_err(gw("read an instance"))?;
            let Some(inst) = inst else { continue };
            let name = inst.metadata.name.clone().unwrap_or_default();
            // An operation on this instance reports its own outcome.
            let ns = inst.metadata.namespace.as_deref().unwrap_or_default();
            let lock = self.lock_for(&instance_lock_key(ns, &name));
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let state = self.inner.life.observe(uid).await.ok().flatten();
            let Some(state) = state else { continue };
            let current = inst.status.as_ref().and_then(|s| s.power_state.clone());
            if current.as_ref() != Some(&state.power_state()) {
                tracing::info!(instance = %name, state = ?state, "domain state changed");
                self.inner.metrics.state_changes.inc();
                changes += 1;
            }
            self.report_instance(
                inst.metadata.namespace.as_deref(),
                &name,
                uid,
                Some(state),
                None,
            )
            .await
            .map_err(gw("report a domain state"))?;
        }
        Ok(changes)
    }

    /// The VXLAN ids of the networks that interfaces of instances placed on this node
    /// (and not deleted) are on.
    async fn vxids_in_use_here(&self, networks: &[Network]) -> Result<HashSet<u32>, AgentError> {
        let g = &self.inner.gateway;
        let me = self.node_name();
        let instances: Vec<Instance> = g
            .list("Instance", None)
            .await
            .map_err(gw("list instances"))?;
        let placed: HashSet<(String, String)> = instances
            .iter()
            .filter(|i| {
                i.status.as_ref().is_some_and(|s| {
                    s.node.as_deref() == Some(me) && s.state != InstanceState::Deleted
                })
            })
            .map(|i| {
                (
                    i.metadata.namespace.clone().unwrap_or_default(),
                    i.metadata.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let interfaces: Vec<NetworkInterface> = g
            .list("NetworkInterface", None)
            .await
            .map_err(gw("list network interfaces"))?;
        let mut vxids = HashSet::new();
        for iface in &interfaces {
            let ns = iface.metadata.namespace.clone().unwrap_or_default();
            if !placed.contains(&(ns.clone(), iface.spec.instance.clone())) {
                continue;
            }
            let network = networks.iter().find(|n| {
                n.metadata.namespace.as_deref() == Some(ns.as_str())
                    && (n.metadata.name.as_deref() == Some(iface.spec.network.as_str())
                        || n.metadata.uid.as_deref() == Some(iface.spec.network.as_str()))
            });
            if let Some(v) = network.and_then(|n| n.status.as_ref()?.vxid) {
                vxids.insert(v);
            }
        }
        Ok(vxids)
    }

    /// Start-up reconciliation (see the module contract).
    pub async fn reconcile_startup(&self) -> Result<ReconcileReport, AgentError> {
        let mut report = ReconcileReport::default();
        let me = self.node_name().to_owned();
        let instances: Vec<Instance> = self
            .inner
            .gateway
            .list("Instance", None)
            .await
            .map_err(gw("list instances"))?;
        let placed: Vec<&Instance> = instances
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.node.as_deref()) == Some(me.as_str()))
            .collect();
        let keep: HashSet<String> = placed
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .is_some_and(|s| s.state != InstanceState::Deleted)
            })
            .filter_map(|i| i.metadata.uid.clone())
            .collect();
        let life = &self.inner.life;
        let domains = life
            .hypervisor()
            .list()
            .await
            .map_err(|e| AgentError::Lifecycle {
                action: "list domains",
                source: e.into(),
            })?;
        for d in &domains {
            let Some(uid) = uid_of(&d.name) else { continue };
            if keep.contains(uid) {
                continue;
            }
            // Only a domain whose Instance is confirmed gone goes: deleted (placed here,
            // state deleted) or removed with a tombstone. One the database does not
            // know (a wrong or restored database, a renamed node) or places elsewhere
            // is left running, with its disks, for an operator to look at.
            let known = instances
                .iter()
                .find(|i| i.metadata.uid.as_deref() == Some(uid));
            let gone = match known {
                Some(i) => {
                    i.status.as_ref().and_then(|s| s.node.as_deref()) == Some(me.as_str())
                        && i.status
                            .as_ref()
                            .is_some_and(|s| s.state == InstanceState::Deleted)
                }
                None => self
                    .inner
                    .gateway
                    .get_deleted::<Instance>("Instance", uid)
                    .await
                    .map_err(gw("look for a removed instance"))?
                    .is_some(),
            };
            if !gone {
                tracing::warn!(
                    domain = %d.name,
                    placed_elsewhere = known.is_some(),
                    "a domain of no instance placed here, and not known to be deleted: left alone"
                );
                report.orphans_kept.push(uid.to_owned());
                continue;
            }
            tracing::warn!(domain = %d.name, "removing the domain of a deleted instance");
            life.delete(uid)
                .await
                .map_err(|source| AgentError::Lifecycle {
                    action: "remove an orphan domain",
                    source,
                })?;
            report.orphans_removed.push(uid.to_owned());
        }
        // Networks before instances: a rebooted host has no bridges, and every start
        // would fail against them.
        report.networks_ensured = self.sync_networks().await?;
        for inst in placed.iter().filter(|i| {
            i.metadata.deletion_timestamp.is_none()
                && i.status
                    .as_ref()
                    .is_some_and(|s| s.state == InstanceState::Created)
        }) {
            let uid = inst.metadata.uid.clone().unwrap_or_default();
            let name = inst.metadata.name.clone().unwrap_or_default();
            let ns = inst.metadata.namespace.as_deref().unwrap_or_default();
            let lock = self.lock_for(&instance_lock_key(ns, &name));
            let _guard = lock.lock().await;
            let result = self.restore_instance(inst, &mut report).await;
            if let Err(e) = result {
                tracing::error!(instance = %name, uid = %uid, error = %e, "cannot restore an instance at start-up");
            }
        }
        report.networks_removed = self.remove_stray_plumbing().await?;
        Ok(report)
    }

    async fn restore_instance(
        &self,
        inst: &Instance,
        report: &mut ReconcileReport,
    ) -> Result<(), HandlerError> {
        let life = &self.inner.life;
        let ctx = self.instance_context(inst, &[]).await?;
        let mut state = life.observe(&ctx.uid).await?;
        if state.is_none() {
            life.redefine(&ctx).await?;
            report.redefined.push(ctx.uid.clone());
            state = life.observe(&ctx.uid).await?;
        }
        let desired = &inst.spec.power_state;
        let off = matches!(state, None | Some(DomainState::Off | DomainState::Crashed));
        let state = match desired {
            DesiredPowerState::On | DesiredPowerState::Paused if off => {
                let s = life.power_on(&ctx).await?;
                report.started.push(ctx.uid.clone());
                if *desired == DesiredPowerState::Paused {
                    life.pause(&ctx.uid).await?
                } else {
                    s
                }
            }
            _ => state.unwrap_or(DomainState::Off),
        };
        self.report_instance(
            inst.metadata.namespace.as_deref(),
            &ctx.name,
            &ctx.uid,
            Some(state),
            Some(&ctx),
        )
        .await?;
        Ok(())
    }

    async fn background(&self, shutdown: Shutdown) {
        let s = &self.inner.settings;
        let mut heartbeat = tokio::time::interval(s.heartbeat_interval);
        let mut poll = tokio::time::interval(s.poll_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                _ = heartbeat.tick() => {
                    match self.heartbeat().await {
                        Ok(()) => {}
                        Err(e @ AgentError::NodeTakenOver { .. }) => {
                            tracing::error!(error = %e, "stopping: this node runs elsewhere now");
                            if let Ok(mut slot) = self.inner.taken_over.lock() {
                                *slot = Some(e);
                            }
                            shutdown.trigger();
                            return;
                        }
                        Err(e) => {
                            self.inner.metrics.heartbeat_failures.inc();
                            tracing::warn!(error = %e, "node heartbeat failed");
                        }
                    }
                }
                _ = poll.tick() => {
                    if let Err(e) = self.poll_states().await {
                        tracing::warn!(error = %e, "domain state polling failed");
                    }
                    let due = self
                        .inner
                        .last_network_sync
                        .lock()
                        .ok()
                        .and_then(|t| *t)
                        .is_none_or(|t| t.elapsed() >= s.network_resync_interval);
                    if due
                        && let Err(e) = self.sync_networks().await {
                            tracing::warn!(error = %e, "network resync failed");
                        }
                }
            }
        }
    }

    /// Registers and reconciles (retried until sf-database answers; a node name held
    /// by a live node is an error), then claims and polls until `shutdown`; drains
    /// in-flight work before returning.
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), AgentError> {
        // sf-database may come up after the agent: retry until it answers (a name
        // held by a live node is final).
        let mut delay = Duration::from_millis(500);
        loop {
            let step = async {
                self.register().await?;
                self.reconcile_startup().await
            };
            match step.await {
                Ok(report) => {
                    tracing::info!(?report, node = %self.node_name(), "start-up reconciliation done");
                    break;
                }
                Err(e @ AgentError::NodeNameInUse { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "start-up failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.wait() => return Ok(()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        let bg = {
            let agent = self.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move { agent.background(sd).await })
        };
        self.claim_loop(shutdown).await;
        let _ = bg.await;
        match self.inner.taken_over.lock().ok().and_then(|mut t| t.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reports_classify_failures() {
        let e = HandlerError::NotReady("x".into());
        assert_eq!(e.code(), "NotReady");
        assert!(e.retryable());
        let e = HandlerError::Unsupported("instance_migrate".into());
        assert_eq!(e.code(), "UnsupportedOperation");
        assert!(!e.retryable());
        let e = HandlerError::Fetch(crate::artifact::FetchError::Http {
            url: "http://x/y".into(),
            status: 404,
        });
        assert_eq!((e.code().as_str(), e.retryable()), ("HttpError", true));
        let e = HandlerError::Lifecycle(LifecycleError::NotDefined { uid: "u".into() });
        assert_eq!(e.code(), "DomainNotFound");
    }
}
