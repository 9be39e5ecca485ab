//! The artifact reconciler's plan: [`plan_artifact`]; and what an instance plan needs
//! to put an artifact's blob on its node ([`BlobReplica`], [`replica_on_node`]).
//!
//! Contract:
//! - Finalizer first; the first reconcile pins the intent sequence ([`crate::ops`]).
//!   States (shakenfist.md §2): initial → created | error | deleted; created → deleted
//!   | error; error → deleted. An artifact in error stays there (delete and re-create
//!   it), as an instance does.
//! - Fetching: only `image` artifacts whose `sourceUrl` is `http://`, `https://` or
//!   `file://` are fetched ([`fetchable`]). One `artifact_fetch` (name
//!   `artifact-<name>-<seq>-fetch`) is emitted when none of the artifact's own fetches
//!   is outstanding and either the artifact has no version and never fetched, or the
//!   latest fetch was of another URL (the spec changed), or the latest fetch failed
//!   and the spec changed since (`metadata.generation > status.observedGeneration`).
//!   It runs on the created, schedulable hypervisor node with the lowest name; no
//!   such node: condition and a requeue. Its payload ([`fetch_payload`]) carries the
//!   source URL and a new blob UUID derived from the artifact uid and the operation
//!   name ([`blob_uuid`]), no expected checksum.
//! - Recording: when the latest own fetch completed with a result ([`FetchResult`]:
//!   blob, size, sha512, MIME type) whose blob is not a version yet, a version is
//!   appended (index = last + 1, `created` = the operation's completion time) unless
//!   its sha512 equals the latest version's (Shaken Fist dedups: no new version); the
//!   oldest versions beyond `spec.maxVersions` are pruned (at every reconcile, so a
//!   lowered `maxVersions` takes effect at once). Condition `Fetched`
//!   tracks the latest fetch (Fetching, Retrying while the queue retries it,
//!   FetchFailed, Fetched, Unchanged); `Ready` is True once a version exists.
//! - Snapshots (`snapshot` artifacts, [`sf_schema::snapshot`]): every completed
//!   `instance_snapshot` that reports a blob taken into the artifact
//!   ([`SnapshotFact`]) and completed after the newest version becomes a version
//!   (index = last + 1, `created` = its completion time), oldest first, pruned to
//!   `spec.maxVersions` like fetched ones; one completed before the newest version was
//!   recorded or pruned already and never comes back. Its Blob gets the node, size,
//!   sha512, `application/x-qcow2` and the artifact's `sf://` source. Until the first
//!   one, `Ready` is False with reason `NoSnapshot`.
//! - A failed fetch (the operation in error or abort: its retries are exhausted or
//!   the failure was permanent) of an artifact without a version moves it to error;
//!   with versions it stays created (the versions still serve) and `Fetched` says
//!   why.
//! - Blobs: every completed `artifact_fetch` targeting the artifact (its own and the
//!   replication fetches instance plans emit) is a fact about a Blob: its size,
//!   sha512, MIME type and one node holding it. A [`Action::WriteBlob`] brings each
//!   Blob named by a version, by such a fact or by a pruned version up to date
//!   (created when missing, nodes added, `referenceCount` = the versions using it),
//!   only when the stored Blob differs. Blob writes come before the versions' status
//!   write, so a version never names a Blob that does not exist. A Blob already
//!   `deleted` by the blob reconciler ([`crate::blob`]) is never written again.
//! - Delete: while an own fetch is outstanding, abort the fetches targeting the
//!   artifact (sf-database aborts by target, so instances' replications too, and
//!   their `instance_create`s fail with them); drop the versions' blobs' reference
//!   counts to 0, `deleted`, remove the finalizer. The blob reconciler
//!   ([`crate::blob`]) removes the files once nothing uses them.
//! - Nothing changed → empty plan.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_schema::artifact::{Artifact, ArtifactSpec, ArtifactType, ArtifactVersion, Blob};
use sf_schema::common::{ConditionStatus, ObjectRef, ResourceState};
use sf_schema::node::NodeState;
use sf_schema::operation::{OperationState, OperationType, Priority};
use sf_schema::snapshot::{SNAPSHOT_MIME_TYPE, SnapshotTaken};

use crate::PlanContext;
use crate::action::{Action, Plan, StateValue, condition, has_finalizer, pinned};
use crate::ops::{Namer, ObservedOperation, latest, pin_intent_seq, short_name};

/// The kind name used in operation names and targets.
pub const ARTIFACT_KIND: &str = "Artifact";

/// What a completed `artifact_fetch` reports (its `status.result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchResult {
    /// The blob written (or verified) on the node.
    pub blob: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex SHA-512.
    pub sha512: String,
    /// Its MIME type.
    #[serde(default)]
    pub mime_type: Option<String>,
}

impl FetchResult {
    /// The result in an operation's `status.result`, when it is a well-formed one.
    pub fn from_result(value: &serde_json::Value) -> Option<Self> {
        let r: Self = serde_json::from_value(value.clone()).ok()?;
        (!r.blob.is_empty() && is_sha512(&r.sha512)).then_some(r)
    }
}

/// Whether `text` is 128 lower-case hex digits.
pub fn is_sha512(text: &str) -> bool {
    text.len() == 128
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Blob as stored, as the plans read it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobView {
    /// `metadata.name`.
    pub name: String,
    /// `spec.source`.
    #[serde(default)]
    pub source: Option<String>,
    /// `spec.mimeType`.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// `status.size`.
    #[serde(default)]
    pub size: Option<u64>,
    /// `status.checksums.sha512`.
    #[serde(default)]
    pub sha512: Option<String>,
    /// `status.nodes`, sorted.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `status.referenceCount`.
    #[serde(default)]
    pub reference_count: u64,
    /// `status.state`.
    #[serde(default)]
    pub state: ResourceState,
}

impl BlobView {
    /// The view of `blob`.
    pub fn from_blob(blob: &Blob) -> Self {
        let status = blob.status.clone().unwrap_or_default();
        let mut nodes = status.nodes;
        nodes.sort();
        nodes.dedup();
        Self {
            name: blob.metadata.name.clone().unwrap_or_default(),
            source: blob.spec.source.clone(),
            mime_type: blob.spec.mime_type.clone(),
            size: status.size,
            sha512: status.checksums.get("sha512").cloned(),
            nodes,
            reference_count: status.reference_count,
            state: status.state,
        }
    }
}

/// A node as a fetch candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FetchNode {
    /// `metadata.name`.
    pub name: String,
    /// `status.state`.
    pub state: NodeState,
    /// `spec.schedulable`.
    pub schedulable: bool,
    /// It has the `hypervisor` role (runs an agent that takes node work).
    pub hypervisor: bool,
}

/// A snapshot a completed `instance_snapshot` took into an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFact {
    /// The operation's name.
    pub operation: String,
    /// When it completed (the version's `created`).
    pub completed_at: DateTime<Utc>,
    /// Its intent sequence (from its name; orders snapshots ending in one second).
    #[serde(default)]
    pub sequence: u64,
    /// The node holding the blob.
    pub node: String,
    /// What it took.
    pub taken: SnapshotTaken,
}

/// What observe() gathers for an artifact.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactObservation {
    /// The operations the artifact controller created for it, any state, oldest
    /// first ([`crate::ops`]).
    pub operations: Vec<ObservedOperation>,
    /// The `artifact_fetch` operations others (instance plans) created targeting
    /// it: replications of its blobs to more nodes, oldest first.
    #[serde(default)]
    pub replications: Vec<ObservedOperation>,
    /// The results of the completed fetches of both lists, by operation name (only
    /// well-formed ones, [`FetchResult::from_result`]).
    #[serde(default)]
    pub results: BTreeMap<String, FetchResult>,
    /// The completed `instance_snapshot`s that captured a disk into this artifact
    /// (any instance's, as the agent reports them), in any order.
    #[serde(default)]
    pub snapshots: Vec<SnapshotFact>,
    /// The stored Blobs named by the versions, the results and the snapshots
    /// (missing ones absent).
    #[serde(default)]
    pub blobs: Vec<BlobView>,
    /// Every Node.
    #[serde(default)]
    pub nodes: Vec<FetchNode>,
}

/// Whether the artifact's bytes are fetched by `artifact_fetch` (an image from an
/// `http://`, `https://` or `file://` URL); snapshots and labels get their versions
/// from other operations.
pub fn fetchable(spec: &ArtifactSpec) -> bool {
    spec.artifact_type == ArtifactType::Image && copyable(&spec.source_url)
}

/// Whether a blob from `source_url` can be put on another node by an
/// `artifact_fetch` from that URL (`http://`, `https://`, `file://`); a snapshot's
/// `sf://` blob cannot: it stays on the node that took it.
pub fn copyable(source_url: &str) -> bool {
    let scheme = source_url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("http" | "https" | "file"))
}

/// The payload of `artifact_fetch`: download `source_url` into blob `blob`; with
/// `sha512` (and `size`) the download must match them (a replica of an existing
/// blob), without it the blob is new.
pub fn fetch_payload(
    source_url: &str,
    blob: &str,
    sha512: Option<&str>,
    size: Option<u64>,
) -> serde_json::Value {
    let mut payload = json!({"sourceUrl": source_url, "blob": blob});
    if let Some(sha512) = sha512 {
        payload["sha512"] = json!(sha512);
    }
    if let Some(size) = size {
        payload["size"] = json!(size);
    }
    payload
}

pub(crate) use sf_schema::common::fnv1a;

/// The blob a fetch writes: [`sf_schema::common::derived_uuid`] of
/// `<artifact uid>/<operation name>`, so a fetch re-planned after a crash names the
/// same blob.
pub fn blob_uuid(seed: &str) -> String {
    sf_schema::common::derived_uuid(seed)
}

/// Whether `from → to` is a legal artifact state move (shakenfist.md §2).
pub fn artifact_transition_ok(from: &ResourceState, to: &ResourceState) -> bool {
    use ResourceState as S;
    matches!(
        (from, to),
        (S::Initial, S::Created | S::Deleted | S::Error)
            | (S::Created, S::Deleted | S::Error)
            | (S::Error, S::Deleted)
    )
}

/// An outstanding `artifact_fetch` of a blob on a node (any emitter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingFetch {
    /// The node.
    pub node: String,
    /// The operation's name.
    pub operation: String,
}

/// An artifact's latest blob, as an instance plan needs it to put a replica on its
/// node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobReplica {
    /// The Artifact (the target of a replication fetch).
    pub artifact: ObjectRef,
    /// Its `spec.sourceUrl` (replicas are downloaded from it and verified).
    pub source_url: String,
    /// The blob of its latest version.
    pub blob: String,
    /// The blob's SHA-512 (a replica must match it).
    pub sha512: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The nodes holding it: the Blob's `status.nodes` plus the nodes where a fetch of
    /// it completed (the artifact controller records those soon).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Outstanding fetches of it, per node (any emitter).
    #[serde(default)]
    pub pending: Vec<PendingFetch>,
}

/// What an operation on `node` using a blob needs first.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ReplicaOnNode {
    /// The blob is there.
    Present,
    /// Being fetched there by this operation: depend on it.
    After(String),
    /// Not there: enqueue this fetch (named by the caller) and depend on it.
    Fetch(Box<Action>),
}

/// What `replica` needs before an operation on `node` can use it; a new fetch is
/// named `name_if_new`.
pub(crate) fn replica_on_node(
    replica: &BlobReplica,
    node: &str,
    name_if_new: String,
) -> ReplicaOnNode {
    if replica.nodes.iter().any(|n| n == node) {
        return ReplicaOnNode::Present;
    }
    if let Some(p) = replica.pending.iter().find(|p| p.node == node) {
        return ReplicaOnNode::After(p.operation.clone());
    }
    ReplicaOnNode::Fetch(Box::new(Action::EnqueueOperation {
        name: name_if_new,
        operation_type: OperationType::ArtifactFetch,
        target: replica.artifact.clone(),
        node: Some(node.to_owned()),
        depends_on: Vec::new(),
        priority: Priority::Normal,
        payload: fetch_payload(
            &replica.source_url,
            &replica.blob,
            Some(&replica.sha512),
            Some(replica.size),
        ),
    }))
}

/// What the plan found about the latest own fetch, for the `Fetched` condition and
/// (without a version) `Ready`.
struct FetchStatus {
    status: ConditionStatus,
    reason: &'static str,
    message: String,
}

impl FetchStatus {
    fn new(status: ConditionStatus, reason: &'static str, message: String) -> Self {
        Self {
            status,
            reason,
            message,
        }
    }
}

fn is_fetch(op: &ObservedOperation) -> bool {
    op.operation_type == OperationType::ArtifactFetch
}

fn error_of(op: &ObservedOperation) -> String {
    format!(
        "{} {}: {}",
        op.name,
        op.state,
        op.error.as_deref().unwrap_or("no error report")
    )
}

/// The first 16 hex digits of a checksum, for messages.
fn short_sum(sha512: &str) -> &str {
    sha512.get(..16).unwrap_or(sha512)
}

struct Ctx<'a> {
    artifact: &'a Artifact,
    observed: &'a ArtifactObservation,
    ctx: &'a PlanContext,
    status: sf_schema::ArtifactStatus,
    name: String,
    namer: Namer,
    plan: Plan,
    state_set: bool,
}

impl Ctx<'_> {
    fn set_state(&mut self, to: ResourceState) {
        let from = &self.status.state;
        if !self.state_set && *from != to && artifact_transition_ok(from, &to) {
            self.state_set = true;
            self.plan.push(Action::SetState {
                state: StateValue::Resource(to),
                message: None,
            });
        }
    }

    fn condition(&mut self, type_: &str, status: ConditionStatus, reason: &str, message: String) {
        let action = condition(&self.status.conditions, type_, status, reason, message);
        self.plan.push_opt(action);
    }

    fn target(&self) -> ObjectRef {
        ObjectRef {
            kind: ARTIFACT_KIND.to_owned(),
            name: self.name.clone(),
            namespace: self.artifact.metadata.namespace.clone(),
            uid: self.artifact.metadata.uid.clone().unwrap_or_default(),
        }
    }

    fn spec_changed(&self) -> bool {
        self.artifact.metadata.generation > self.status.observed_generation
    }

    fn blob_view(&self, name: &str) -> Option<&BlobView> {
        self.observed.blobs.iter().find(|b| b.name == name)
    }

    /// The SHA-512 of `blob`: the stored Blob's, else a completed fetch's result.
    fn sha512_of(&self, blob: &str) -> Option<String> {
        if let Some(sum) = self.blob_view(blob).and_then(|b| b.sha512.clone()) {
            return Some(sum);
        }
        self.observed
            .results
            .values()
            .find(|r| r.blob == blob)
            .map(|r| r.sha512.clone())
    }

    /// The node a new fetch runs on: created, schedulable hypervisors, lowest name.
    fn fetch_node(&self) -> Option<String> {
        self.observed
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Created && n.schedulable && n.hypervisor)
            .map(|n| n.name.clone())
            .min()
    }

    /// Records the latest own fetch's result into `versions`; returns its status.
    fn record(
        &self,
        op: &ObservedOperation,
        versions: &mut Vec<ArtifactVersion>,
    ) -> Option<FetchStatus> {
        let Some(result) = self.observed.results.get(&op.name) else {
            return Some(FetchStatus::new(
                ConditionStatus::False,
                "NoResult",
                format!("{} completed without a blob, size and sha512", op.name),
            ));
        };
        let fetched = format!(
            "{}: {} bytes, sha512 {}…",
            op.name,
            result.size,
            short_sum(&result.sha512)
        );
        if versions.iter().any(|v| v.blob == result.blob) {
            return Some(FetchStatus::new(ConditionStatus::True, "Fetched", fetched));
        }
        let latest = versions.last().cloned();
        if let Some(latest) = &latest
            && self.sha512_of(&latest.blob).as_deref() == Some(result.sha512.as_str())
        {
            return Some(FetchStatus::new(
                ConditionStatus::True,
                "Unchanged",
                format!(
                    "{fetched}: the same bytes as version {}, no new version",
                    latest.index
                ),
            ));
        }
        versions.push(ArtifactVersion {
            index: latest.map_or(1, |v| v.index.saturating_add(1)),
            blob: result.blob.clone(),
            size: result.size,
            created: op.completed_at.unwrap_or(self.ctx.now),
        });
        self.prune(versions);
        Some(FetchStatus::new(ConditionStatus::True, "Fetched", fetched))
    }

    /// Drops the oldest versions beyond `spec.maxVersions`.
    fn prune(&self, versions: &mut Vec<ArtifactVersion>) {
        let keep = usize::try_from(self.artifact.spec.max_versions.max(1)).unwrap_or(usize::MAX);
        if versions.len() > keep {
            let excess = versions.len() - keep;
            versions.drain(..excess);
        }
    }

    /// Appends a version for every snapshot taken after the newest version, oldest
    /// first (one taken before it was either recorded already or pruned since).
    /// "After" compares (completion time, the operation's intent sequence, its name):
    /// completion times have a resolution of a second, and two snapshots of one disk
    /// can end in the same second.
    fn record_snapshots(&self, versions: &mut Vec<ArtifactVersion>) {
        let key = |f: &SnapshotFact| (f.completed_at, f.sequence, f.operation.clone());
        let mut facts: Vec<&SnapshotFact> = self.observed.snapshots.iter().collect();
        facts.sort_by_key(|f| key(f));
        let mut mark = versions.last().map(|newest| {
            self.observed
                .snapshots
                .iter()
                .find(|f| f.taken.blob == newest.blob)
                .map(key)
                // Its operation was purged (an hour after it ended): anything that
                // ended in its second is older news, recorded or pruned long since.
                .unwrap_or((newest.created, u64::MAX, String::new()))
        });
        for fact in facts {
            if versions.iter().any(|v| v.blob == fact.taken.blob)
                || mark.as_ref().is_some_and(|m| key(fact) <= *m)
            {
                continue;
            }
            let index = versions.last().map_or(1, |v| v.index.saturating_add(1));
            versions.push(ArtifactVersion {
                index,
                blob: fact.taken.blob.clone(),
                size: fact.taken.size,
                created: fact.completed_at,
            });
            self.prune(versions);
            mark = Some(key(fact));
        }
    }

    /// A new fetch of the spec's URL, or why none can run.
    fn fetch(&mut self) -> FetchStatus {
        let url = self.artifact.spec.source_url.clone();
        let Some(node) = self.fetch_node() else {
            self.plan.requeue_in(self.ctx.wait_secs);
            return FetchStatus::new(
                ConditionStatus::False,
                "NoNode",
                "no created, schedulable hypervisor node to fetch on".into(),
            );
        };
        let name = self.namer.next(short_name(&OperationType::ArtifactFetch));
        let uid = self.artifact.metadata.uid.clone().unwrap_or_default();
        let blob = blob_uuid(&format!("{uid}/{name}"));
        self.plan.push(Action::EnqueueOperation {
            name: name.clone(),
            operation_type: OperationType::ArtifactFetch,
            target: self.target(),
            node: Some(node.clone()),
            depends_on: Vec::new(),
            priority: Priority::Normal,
            payload: fetch_payload(&url, &blob, None, None),
        });
        FetchStatus::new(
            ConditionStatus::False,
            "Fetching",
            format!("{name} on {node}: {url}"),
        )
    }

    fn plan_live(&mut self) {
        if !has_finalizer(self.artifact.metadata.finalizers.as_ref()) {
            self.plan.push(Action::EnsureFinalizer);
        }
        let before = self.status.versions.clone();
        let mut versions = before.clone();
        let url = self.artifact.spec.source_url.clone();
        let fetchable = fetchable(&self.artifact.spec);
        let ops = &self.observed.operations;
        let latest_fetch = latest(ARTIFACT_KIND, &self.name, ops, is_fetch).cloned();
        let outstanding = ops.iter().any(|op| is_fetch(op) && op.is_outstanding());

        let mut fetch_status = match &latest_fetch {
            Some(op) if op.state == OperationState::Complete => self.record(op, &mut versions),
            Some(op) if op.is_outstanding() => Some(match &op.error {
                Some(_) => FetchStatus::new(ConditionStatus::False, "Retrying", error_of(op)),
                None => FetchStatus::new(
                    ConditionStatus::False,
                    "Fetching",
                    format!(
                        "{} on {}: {}",
                        op.name,
                        op.node.as_deref().unwrap_or("?"),
                        op.payload["sourceUrl"].as_str().unwrap_or_default()
                    ),
                ),
            }),
            Some(op) if op.failed() => Some(FetchStatus::new(
                ConditionStatus::False,
                "FetchFailed",
                error_of(op),
            )),
            _ => None,
        };

        let needs_fetch = fetchable
            && !outstanding
            && match &latest_fetch {
                None => {
                    versions.is_empty()
                        || versions
                            .last()
                            .and_then(|v| self.blob_view(&v.blob))
                            .and_then(|b| b.source.as_deref())
                            .is_some_and(|source| source != url)
                }
                Some(op) if op.payload["sourceUrl"].as_str() != Some(url.as_str()) => true,
                Some(op) if op.failed() => self.spec_changed(),
                Some(_) => false,
            };
        if needs_fetch {
            fetch_status = Some(self.fetch());
        }
        self.record_snapshots(&mut versions);
        // A lowered `spec.maxVersions` takes effect now, not at the next version.
        self.prune(&mut versions);

        self.write_blobs(&before, &versions);
        if versions != before {
            self.plan.push(Action::SetVersions {
                versions: versions.clone(),
            });
        }

        if let Some(f) = &fetch_status {
            self.condition("Fetched", f.status.clone(), f.reason, f.message.clone());
        }
        if let Some(v) = versions.last() {
            self.set_state(ResourceState::Created);
            let message = format!("version {}: blob {}", v.index, v.blob);
            self.condition("Ready", ConditionStatus::True, "Available", message);
        } else if self.artifact.spec.artifact_type == ArtifactType::Snapshot {
            let message = "no snapshot has completed into this artifact yet".to_owned();
            self.condition("Ready", ConditionStatus::False, "NoSnapshot", message);
        } else if !fetchable {
            let message = format!(
                "sf-cluster fetches only image artifacts from http://, https:// or file:// URLs; \
                 {} artifacts from {url} get their versions from other operations",
                self.artifact.spec.artifact_type
            );
            self.condition("Ready", ConditionStatus::False, "NotFetchable", message);
        } else if let Some(f) = fetch_status {
            if f.reason == "FetchFailed" {
                self.set_state(ResourceState::Error);
            }
            self.condition("Ready", ConditionStatus::False, f.reason, f.message);
        }
    }

    /// A `WriteBlob` for every Blob whose stored state differs from what the
    /// completed fetches and `versions` say (see the module contract).
    fn write_blobs(&mut self, before: &[ArtifactVersion], versions: &[ArtifactVersion]) {
        #[derive(Default)]
        struct Facts {
            size: Option<u64>,
            sha512: Option<String>,
            mime_type: Option<String>,
            source: Option<String>,
            nodes: BTreeSet<String>,
        }
        let mut facts: BTreeMap<String, Facts> = BTreeMap::new();
        for blob in before.iter().chain(versions).map(|v| v.blob.clone()) {
            facts.entry(blob).or_default();
        }
        let completed = self
            .observed
            .operations
            .iter()
            .chain(&self.observed.replications)
            .filter(|op| is_fetch(op) && op.state == OperationState::Complete);
        for op in completed {
            let Some(result) = self.observed.results.get(&op.name) else {
                continue;
            };
            let f = facts.entry(result.blob.clone()).or_default();
            f.size = f.size.or(Some(result.size));
            f.sha512 = f.sha512.clone().or(Some(result.sha512.clone()));
            f.mime_type = f.mime_type.clone().or(result.mime_type.clone());
            f.source = f
                .source
                .clone()
                .or(op.payload["sourceUrl"].as_str().map(str::to_owned));
            f.nodes.extend(op.node.clone());
        }
        for fact in &self.observed.snapshots {
            let f = facts.entry(fact.taken.blob.clone()).or_default();
            f.size = Some(fact.taken.size);
            f.sha512 = Some(fact.taken.sha512.clone());
            f.mime_type = Some(SNAPSHOT_MIME_TYPE.to_owned());
            f.source = Some(self.artifact.spec.source_url.clone());
            f.nodes.insert(fact.node.clone());
        }
        let owner = self.artifact.metadata.namespace.clone().unwrap_or_default();
        for (name, f) in facts {
            let view = self.blob_view(&name).cloned();
            let known = f.sha512.is_some();
            let Some(view) = view.or_else(|| known.then(BlobView::default)) else {
                continue; // Nothing known about it (its fetch was purged, never stored).
            };
            if view.state == ResourceState::Deleted {
                continue; // Collected (crate::blob): its files are going or gone.
            }
            let mut nodes: BTreeSet<String> = view.nodes.iter().cloned().collect();
            nodes.extend(f.nodes);
            let nodes: Vec<String> = nodes.into_iter().collect();
            let size = f.size.or(view.size);
            let sha512 = f.sha512.or(view.sha512.clone());
            let reference_count =
                u64::try_from(versions.iter().filter(|v| v.blob == name).count()).unwrap_or(0);
            let same = !view.name.is_empty()
                && view.size == size
                && view.sha512 == sha512
                && view.nodes == nodes
                && view.reference_count == reference_count
                && view.state == ResourceState::Created;
            if same {
                continue;
            }
            self.plan.push(Action::WriteBlob {
                name,
                owner_namespace: owner.clone(),
                source: f.source.or(view.source),
                mime_type: f.mime_type.or(view.mime_type),
                size,
                sha512,
                nodes,
                reference_count,
            });
        }
    }

    fn plan_delete(&mut self) {
        if !has_finalizer(self.artifact.metadata.finalizers.as_ref()) {
            return;
        }
        if self
            .observed
            .operations
            .iter()
            .any(|op| is_fetch(op) && op.is_outstanding())
        {
            self.plan.push(Action::AbortOperations {
                except_snapshots: true,
                reason: "artifact deleted".into(),
            });
        }
        let owner = self.artifact.metadata.namespace.clone().unwrap_or_default();
        let mut seen = BTreeSet::new();
        for v in &self.status.versions {
            if !seen.insert(v.blob.clone()) {
                continue;
            }
            let Some(view) = self.blob_view(&v.blob).cloned() else {
                continue;
            };
            if view.reference_count == 0 {
                continue;
            }
            self.plan.push(Action::WriteBlob {
                name: view.name.clone(),
                owner_namespace: owner.clone(),
                source: view.source,
                mime_type: view.mime_type,
                size: view.size,
                sha512: view.sha512,
                nodes: view.nodes,
                reference_count: 0,
            });
        }
        self.set_state(ResourceState::Deleted);
        self.plan.push(Action::RemoveFinalizer);
    }
}

/// Plans one reconcile of `artifact` (see the module contract).
pub fn plan_artifact(
    artifact: &Artifact,
    observed: &ArtifactObservation,
    ctx: &PlanContext,
) -> Vec<Action> {
    let status = artifact.status.clone().unwrap_or_default();
    let name = artifact.metadata.name.clone().unwrap_or_default();
    let deleting = artifact.metadata.deletion_timestamp.is_some();
    let finalized = has_finalizer(artifact.metadata.finalizers.as_ref());
    if matches!(status.state, ResourceState::Other(_))
        || (status.state == ResourceState::Deleted && !deleting)
        || (deleting && !finalized)
    {
        return Vec::new();
    }
    if let Some(pin) = pin_intent_seq(
        ARTIFACT_KIND,
        &name,
        status.intent_seq,
        artifact.metadata.resource_version.as_deref(),
        &observed.operations,
    ) {
        return pinned(artifact.metadata.finalizers.as_ref(), pin);
    }
    let namer = Namer::new(
        ARTIFACT_KIND,
        &name,
        status.intent_seq,
        &observed.operations,
    );
    let mut c = Ctx {
        artifact,
        observed,
        ctx,
        status,
        name,
        namer,
        plan: Plan::default(),
        state_set: false,
    };
    if deleting {
        c.plan_delete();
    } else if c.status.state == ResourceState::Error {
        if !finalized {
            c.plan.push(Action::EnsureFinalizer);
        }
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
    use crate::testutil::{cond, ctx, now, op, with_deletion};
    use OperationType as T;
    use sf_schema::ArtifactStatus;
    use sf_schema::operation::OperationState as S;

    const URL: &str = "http://images.example/debian-12.qcow2";
    const BLOB_1: &str = "11111111-1111-4111-8111-111111111111";
    const BLOB_2: &str = "22222222-2222-4222-8222-222222222222";

    fn sum(c: char) -> String {
        std::iter::repeat_n(c, 128).collect()
    }

    fn artifact(state: ResourceState, versions: &[(u32, &str)], seq: u64) -> Artifact {
        let mut a = Artifact::new(
            "debian-12",
            ArtifactSpec {
                source_url: URL.into(),
                artifact_type: ArtifactType::Image,
                shared: false,
                max_versions: 3,
            },
        );
        a.metadata.namespace = Some("demo".into());
        a.metadata.uid = Some("art-uid".into());
        a.metadata.generation = Some(1);
        a.metadata.resource_version = Some("10".into());
        a.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        a.status = Some(ArtifactStatus {
            observed_generation: Some(1),
            state,
            versions: versions
                .iter()
                .map(|(index, blob)| ArtifactVersion {
                    index: *index,
                    blob: (*blob).into(),
                    size: 1024,
                    created: now(),
                })
                .collect(),
            intent_seq: seq,
            ..ArtifactStatus::default()
        });
        a
    }

    fn with_conditions(mut a: Artifact, conditions: Vec<sf_schema::Condition>) -> Artifact {
        if let Some(s) = a.status.as_mut() {
            s.conditions = conditions;
        }
        a
    }

    fn hv(name: &str) -> FetchNode {
        FetchNode {
            name: name.into(),
            state: NodeState::Created,
            schedulable: true,
            hypervisor: true,
        }
    }

    fn fetch(name: &str, state: S, node: &str, blob: &str, url: &str) -> ObservedOperation {
        let mut o = op(name, T::ArtifactFetch, state);
        o.node = Some(node.into());
        o.payload = fetch_payload(url, blob, None, None);
        o
    }

    fn result(blob: &str, sha512: &str) -> FetchResult {
        FetchResult {
            blob: blob.into(),
            size: 1024,
            sha512: sha512.into(),
            mime_type: Some("application/x-qemu-disk".into()),
        }
    }

    fn stored(blob: &str, sha512: &str, nodes: &[&str], refs: u64) -> BlobView {
        BlobView {
            name: blob.into(),
            source: Some(URL.into()),
            mime_type: Some("application/x-qemu-disk".into()),
            size: Some(1024),
            sha512: Some(sha512.into()),
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            reference_count: refs,
            state: ResourceState::Created,
        }
    }

    fn ops_of(plan: &[Action]) -> Vec<(String, OperationType)> {
        plan.iter()
            .filter_map(|a| a.operation().map(|(n, t)| (n.to_owned(), t.clone())))
            .collect()
    }

    fn versions_of(plan: &[Action]) -> Option<Vec<(u32, String)>> {
        plan.iter().find_map(|a| match a {
            Action::SetVersions { versions } => {
                Some(versions.iter().map(|v| (v.index, v.blob.clone())).collect())
            }
            _ => None,
        })
    }

    fn blob_writes(plan: &[Action]) -> Vec<(String, Vec<String>, u64)> {
        let mut writes: Vec<(String, Vec<String>, u64)> = plan
            .iter()
            .filter_map(|a| match a {
                Action::WriteBlob {
                    name,
                    nodes,
                    reference_count,
                    ..
                } => Some((name.clone(), nodes.clone(), *reference_count)),
                _ => None,
            })
            .collect();
        writes.sort();
        writes
    }

    fn state_of(plan: &[Action]) -> Option<String> {
        plan.iter().find_map(|a| match a {
            Action::SetState { state, .. } => Some(state.as_str().to_owned()),
            _ => None,
        })
    }

    fn condition_of(plan: &[Action], type_: &str) -> Option<(String, String)> {
        plan.iter().find_map(|a| match a {
            Action::SetCondition {
                type_: t,
                reason,
                message,
                ..
            } if t == type_ => Some((reason.clone(), message.clone())),
            _ => None,
        })
    }

    /// A created artifact with one version (fetch 11 on hv-1), its Blob stored.
    fn steady() -> (Artifact, ArtifactObservation) {
        let a = with_conditions(
            artifact(ResourceState::Created, &[(1, BLOB_1)], 11),
            vec![
                cond(
                    "Fetched",
                    "True",
                    "Fetched",
                    &format!(
                        "artifact-debian-12-11-fetch: 1024 bytes, sha512 {}…",
                        &sum('a')[..16]
                    ),
                ),
                cond(
                    "Ready",
                    "True",
                    "Available",
                    &format!("version 1: blob {BLOB_1}"),
                ),
            ],
        );
        let name = "artifact-debian-12-11-fetch";
        let obs = ArtifactObservation {
            operations: vec![fetch(name, S::Complete, "hv-1", BLOB_1, URL)],
            results: BTreeMap::from([(name.to_owned(), result(BLOB_1, &sum('a')))]),
            blobs: vec![stored(BLOB_1, &sum('a'), &["hv-1"], 1)],
            nodes: vec![hv("hv-1"), hv("hv-2")],
            ..ArtifactObservation::default()
        };
        (a, obs)
    }

    #[test]
    fn a_deleted_blob_is_never_written_again() {
        // A re-fetch with the same bytes records no version: its blob is unused, and
        // the blob reconciler may have collected it already.
        let (a, mut obs) = steady();
        let again = "artifact-debian-12-12-fetch";
        obs.operations
            .push(fetch(again, S::Complete, "hv-2", BLOB_2, URL));
        obs.results
            .insert(again.to_owned(), result(BLOB_2, &sum('a')));
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(
            blob_writes(&plan),
            vec![(BLOB_2.to_owned(), vec!["hv-2".to_owned()], 0)],
            "an unused blob is recorded with no references"
        );
        let mut collected = stored(BLOB_2, &sum('a'), &[], 0);
        collected.state = ResourceState::Deleted;
        obs.blobs.push(collected);
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(blob_writes(&plan), vec![], "{plan:?}");
    }

    #[test]
    fn blob_uuids_are_deterministic_version_8_uuids() {
        let a = blob_uuid("art-uid/artifact-debian-12-1-fetch");
        assert_eq!(a, blob_uuid("art-uid/artifact-debian-12-1-fetch"));
        assert_ne!(a, blob_uuid("art-uid/artifact-debian-12-2-fetch"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn fetchable_sources_are_images_from_http_https_and_file() {
        let table = [
            (ArtifactType::Image, "http://x/y", true),
            (ArtifactType::Image, "HTTPS://x/y", true),
            (ArtifactType::Image, "file:///srv/y.qcow2", true),
            (ArtifactType::Image, "sf://instance/x/disk0", false),
            (ArtifactType::Snapshot, "http://x/y", false),
            (ArtifactType::Label, "sf://blob/x", false),
        ];
        for (artifact_type, source_url, want) in table {
            let spec = ArtifactSpec {
                source_url: source_url.into(),
                artifact_type,
                shared: false,
                max_versions: 3,
            };
            assert_eq!(fetchable(&spec), want, "{source_url}");
        }
    }

    #[test]
    fn a_new_artifact_gets_its_finalizer_and_pins_its_sequence() {
        let mut a = artifact(ResourceState::Initial, &[], 0);
        a.metadata.finalizers = None;
        a.status = None;
        let plan = plan_artifact(&a, &ArtifactObservation::default(), &ctx());
        assert_eq!(
            plan,
            vec![Action::EnsureFinalizer, Action::BumpIntentSeq { to: 10 }]
        );
    }

    #[test]
    fn nothing_changed_plans_nothing() {
        let (a, obs) = steady();
        assert_eq!(plan_artifact(&a, &obs, &ctx()), vec![]);
    }

    #[test]
    fn the_fetch_lifecycle_table() {
        let blob_new = blob_uuid("art-uid/artifact-debian-12-11-fetch");
        let fetch_10 = "artifact-debian-12-10-fetch";
        let fetch_11 = "artifact-debian-12-11-fetch";
        // (what, artifact, observation, ops emitted, versions written, blob writes
        //  (name, nodes, refs), state written, Ready reason)
        type Row = (
            &'static str,
            Artifact,
            ArtifactObservation,
            Vec<&'static str>,
            Option<Vec<(u32, String)>>,
            Vec<(String, Vec<String>, u64)>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let nodes = vec![hv("hv-2"), hv("hv-1")];
        let mut retrying = fetch(fetch_11, S::Queued, "hv-1", &blob_new, URL);
        retrying.error = Some("HTTP 503 from images.example".into());
        let mut failed = fetch(fetch_11, S::Error, "hv-1", &blob_new, URL);
        failed.error = Some("HTTP 404 (gave up after 5 attempts)".into());
        let mut url_changed = artifact(ResourceState::Created, &[(1, BLOB_1)], 10);
        url_changed.spec.source_url = "http://images.example/debian-12.1.qcow2".into();
        url_changed.metadata.generation = Some(2);
        let mut two_max = artifact(ResourceState::Created, &[(1, BLOB_1), (2, BLOB_2)], 11);
        two_max.spec.max_versions = 2;
        let table: Vec<Row> = vec![
            (
                "no version, nothing fetched: fetch on the lowest created node",
                artifact(ResourceState::Initial, &[], 10),
                ArtifactObservation {
                    nodes: vec![
                        hv("hv-2"),
                        FetchNode {
                            hypervisor: false,
                            ..hv("a-net")
                        },
                        FetchNode {
                            schedulable: false,
                            ..hv("hv-0")
                        },
                        hv("hv-1"),
                    ],
                    ..ArtifactObservation::default()
                },
                vec![fetch_11],
                None,
                vec![],
                None,
                Some("Fetching"),
            ),
            (
                "fetch outstanding: wait",
                artifact(ResourceState::Initial, &[], 11),
                ArtifactObservation {
                    operations: vec![fetch(fetch_11, S::Executing, "hv-1", &blob_new, URL)],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                None,
                vec![],
                None,
                Some("Fetching"),
            ),
            (
                "fetch retrying: say why, wait",
                artifact(ResourceState::Initial, &[], 11),
                ArtifactObservation {
                    operations: vec![retrying],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                None,
                vec![],
                None,
                Some("Retrying"),
            ),
            (
                "fetch failed for good, no version: error",
                artifact(ResourceState::Initial, &[], 11),
                ArtifactObservation {
                    operations: vec![failed.clone()],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                None,
                vec![],
                Some("error"),
                Some("FetchFailed"),
            ),
            (
                "fetch completed: version 1, its Blob first, created",
                artifact(ResourceState::Initial, &[], 11),
                ArtifactObservation {
                    operations: vec![fetch(fetch_11, S::Complete, "hv-1", &blob_new, URL)],
                    results: BTreeMap::from([(fetch_11.to_owned(), result(&blob_new, &sum('a')))]),
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                Some(vec![(1, blob_new.clone())]),
                vec![(blob_new.clone(), vec!["hv-1".to_owned()], 1)],
                Some("created"),
                Some("Available"),
            ),
            (
                "same checksum as the latest version: no new version (the blob is recorded)",
                artifact(ResourceState::Created, &[(1, BLOB_1)], 11),
                ArtifactObservation {
                    operations: vec![fetch(fetch_11, S::Complete, "hv-2", BLOB_2, URL)],
                    results: BTreeMap::from([(fetch_11.to_owned(), result(BLOB_2, &sum('a')))]),
                    blobs: vec![stored(BLOB_1, &sum('a'), &["hv-1"], 1)],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                None,
                vec![(BLOB_2.to_owned(), vec!["hv-2".to_owned()], 0)],
                None,
                Some("Available"),
            ),
            (
                "a third version with maxVersions 2: the oldest is pruned",
                two_max,
                ArtifactObservation {
                    operations: vec![fetch(fetch_11, S::Complete, "hv-1", &blob_new, URL)],
                    results: BTreeMap::from([(fetch_11.to_owned(), result(&blob_new, &sum('c')))]),
                    blobs: vec![
                        stored(BLOB_1, &sum('a'), &["hv-1"], 1),
                        stored(BLOB_2, &sum('b'), &["hv-1"], 1),
                    ],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![],
                Some(vec![(2, BLOB_2.to_owned()), (3, blob_new.clone())]),
                vec![
                    (BLOB_1.to_owned(), vec!["hv-1".to_owned()], 0),
                    (blob_new.clone(), vec!["hv-1".to_owned()], 1),
                ],
                None,
                Some("Available"),
            ),
            (
                "the URL changed: fetch again",
                url_changed,
                ArtifactObservation {
                    operations: vec![fetch(fetch_10, S::Complete, "hv-1", BLOB_1, URL)],
                    results: BTreeMap::from([(fetch_10.to_owned(), result(BLOB_1, &sum('a')))]),
                    blobs: vec![stored(BLOB_1, &sum('a'), &["hv-1"], 1)],
                    nodes: nodes.clone(),
                    ..ArtifactObservation::default()
                },
                vec![fetch_11],
                None,
                vec![],
                None,
                Some("Available"),
            ),
            (
                "a replica completed on hv-2: the Blob lists both nodes",
                artifact(ResourceState::Created, &[(1, BLOB_1)], 11),
                ArtifactObservation {
                    operations: vec![fetch(fetch_11, S::Complete, "hv-1", BLOB_1, URL)],
                    replications: vec![fetch(
                        "instance-web-1-4-fetch-debian-12",
                        S::Complete,
                        "hv-2",
                        BLOB_1,
                        URL,
                    )],
                    results: BTreeMap::from([
                        (fetch_11.to_owned(), result(BLOB_1, &sum('a'))),
                        (
                            "instance-web-1-4-fetch-debian-12".to_owned(),
                            result(BLOB_1, &sum('a')),
                        ),
                    ]),
                    blobs: vec![stored(BLOB_1, &sum('a'), &["hv-1"], 1)],
                    nodes: nodes.clone(),
                    snapshots: Vec::new(),
                },
                vec![],
                None,
                vec![(
                    BLOB_1.to_owned(),
                    vec!["hv-1".to_owned(), "hv-2".to_owned()],
                    1,
                )],
                None,
                Some("Available"),
            ),
        ];
        for (what, a, obs, want_ops, want_versions, mut want_blobs, want_state, ready) in table {
            want_blobs.sort();
            let plan = plan_artifact(&a, &obs, &ctx());
            let names: Vec<String> = ops_of(&plan).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, want_ops, "{what}: {plan:?}");
            assert_eq!(versions_of(&plan), want_versions, "{what}: {plan:?}");
            assert_eq!(blob_writes(&plan), want_blobs, "{what}: {plan:?}");
            assert_eq!(state_of(&plan).as_deref(), want_state, "{what}: {plan:?}");
            assert_eq!(
                condition_of(&plan, "Ready").map(|(r, _)| r).as_deref(),
                ready,
                "{what}: {plan:?}"
            );
            let phases: Vec<u8> = plan.iter().map(Action::phase).collect();
            assert!(
                phases.windows(2).all(|w| w[0] <= w[1]),
                "{what}: {phases:?}"
            );
            if !want_ops.is_empty() {
                assert!(
                    plan.contains(&Action::BumpIntentSeq { to: 11 }),
                    "{what}: {plan:?}"
                );
            }
        }
    }

    #[test]
    fn a_fetch_names_its_blob_deterministically_and_asks_for_no_checksum() {
        let a = artifact(ResourceState::Initial, &[], 4);
        let obs = ArtifactObservation {
            nodes: vec![hv("hv-1")],
            ..ArtifactObservation::default()
        };
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(plan, plan_artifact(&a, &obs, &ctx()));
        let Some(Action::EnqueueOperation {
            name,
            target,
            node,
            payload,
            ..
        }) = plan.iter().find(|a| a.operation().is_some())
        else {
            panic!("{plan:?}")
        };
        assert_eq!(name, "artifact-debian-12-5-fetch");
        assert_eq!(node.as_deref(), Some("hv-1"));
        assert_eq!(target.kind, "Artifact");
        assert_eq!(target.uid, "art-uid");
        assert_eq!(
            payload,
            &json!({"sourceUrl": URL, "blob": blob_uuid("art-uid/artifact-debian-12-5-fetch")})
        );
        assert_eq!(
            condition_of(&plan, "Fetched"),
            Some((
                "Fetching".into(),
                format!("artifact-debian-12-5-fetch on hv-1: {URL}")
            ))
        );
    }

    #[test]
    fn re_planned_with_the_result_recorded_nothing_more_happens() {
        // The completed-fetch row of the table, applied: version, Blob, state and
        // conditions written.
        let fetch_11 = "artifact-debian-12-11-fetch";
        let blob = blob_uuid("art-uid/artifact-debian-12-11-fetch");
        let mut a = artifact(ResourceState::Initial, &[], 11);
        let mut obs = ArtifactObservation {
            operations: vec![fetch(fetch_11, S::Complete, "hv-1", &blob, URL)],
            results: BTreeMap::from([(fetch_11.to_owned(), result(&blob, &sum('a')))]),
            nodes: vec![hv("hv-1")],
            ..ArtifactObservation::default()
        };
        let plan = plan_artifact(&a, &obs, &ctx());
        let created = now() - chrono::Duration::seconds(3600);
        assert!(plan.contains(&Action::SetVersions {
            versions: vec![ArtifactVersion {
                index: 1,
                blob: blob.clone(),
                size: 1024,
                created,
            }]
        }));
        let (fetched, fetched_msg) = condition_of(&plan, "Fetched").expect("Fetched");
        let (ready, ready_msg) = condition_of(&plan, "Ready").expect("Ready");
        a = with_conditions(
            artifact(ResourceState::Created, &[(1, &blob)], 11),
            vec![
                cond("Fetched", "True", &fetched, &fetched_msg),
                cond("Ready", "True", &ready, &ready_msg),
            ],
        );
        if let Some(s) = a.status.as_mut() {
            s.versions[0].created = created;
        }
        obs.blobs = vec![stored(&blob, &sum('a'), &["hv-1"], 1)];
        assert_eq!(plan_artifact(&a, &obs, &ctx()), vec![]);
    }

    #[test]
    fn no_node_to_fetch_on_waits_with_a_condition() {
        let a = artifact(ResourceState::Initial, &[], 3);
        let plan = plan_artifact(&a, &ArtifactObservation::default(), &ctx());
        assert!(ops_of(&plan).is_empty());
        assert_eq!(
            condition_of(&plan, "Ready").map(|(r, _)| r).as_deref(),
            Some("NoNode")
        );
        assert_eq!(plan.last(), Some(&Action::Requeue { after_secs: 30 }));
    }

    #[test]
    fn a_failed_fetch_is_retried_only_after_a_spec_change_and_never_from_error() {
        let mut failed = fetch("artifact-debian-12-11-fetch", S::Error, "hv-1", BLOB_2, URL);
        failed.error = Some("checksum mismatch".into());
        let obs = ArtifactObservation {
            operations: vec![failed],
            blobs: vec![stored(BLOB_1, &sum('a'), &["hv-1"], 1)],
            nodes: vec![hv("hv-1")],
            ..ArtifactObservation::default()
        };
        // With a version: stays created, says why, no retry.
        let a = artifact(ResourceState::Created, &[(1, BLOB_1)], 11);
        let plan = plan_artifact(&a, &obs, &ctx());
        assert!(ops_of(&plan).is_empty(), "{plan:?}");
        assert_eq!(state_of(&plan), None);
        assert_eq!(
            condition_of(&plan, "Fetched").map(|(r, _)| r).as_deref(),
            Some("FetchFailed")
        );
        // A spec change retries it.
        let mut changed = a.clone();
        changed.metadata.generation = Some(2);
        assert_eq!(
            ops_of(&plan_artifact(&changed, &obs, &ctx())),
            [("artifact-debian-12-12-fetch".to_owned(), T::ArtifactFetch)]
        );
        // An artifact in error stays there.
        let mut errored = artifact(ResourceState::Error, &[], 11);
        errored.metadata.generation = Some(2);
        assert_eq!(plan_artifact(&errored, &obs, &ctx()), vec![]);
    }

    #[test]
    fn not_fetchable_artifacts_wait_for_their_versions() {
        let mut a = artifact(ResourceState::Initial, &[], 1);
        a.spec.artifact_type = ArtifactType::Label;
        a.spec.source_url = "sf://label/x".into();
        let obs = ArtifactObservation {
            nodes: vec![hv("hv-1")],
            ..ArtifactObservation::default()
        };
        let plan = plan_artifact(&a, &obs, &ctx());
        assert!(ops_of(&plan).is_empty());
        assert_eq!(
            condition_of(&plan, "Ready").map(|(r, _)| r).as_deref(),
            Some("NotFetchable")
        );
    }

    fn snapshot_fact(operation: &str, secs: i64, blob: &str, c: char) -> SnapshotFact {
        SnapshotFact {
            operation: operation.into(),
            completed_at: now() + chrono::Duration::seconds(secs),
            sequence: crate::ops::intent_seq_of("Instance", "web", operation).unwrap_or(0),
            node: "hv-2".into(),
            taken: SnapshotTaken {
                device: "vda".into(),
                artifact: "u-1-vda".into(),
                artifact_uid: "art-uid".into(),
                blob: blob.into(),
                size: 2048,
                sha512: sum(c),
            },
        }
    }

    #[test]
    fn lowering_max_versions_prunes_at_once_and_releases_the_blobs() {
        let mut a = artifact(ResourceState::Created, &[(1, BLOB_1), (2, BLOB_2)], 11);
        a.spec.max_versions = 1;
        let obs = ArtifactObservation {
            nodes: vec![hv("hv-1")],
            blobs: vec![
                stored(BLOB_1, &sum('a'), &["hv-1"], 1),
                stored(BLOB_2, &sum('b'), &["hv-1"], 1),
            ],
            ..ArtifactObservation::default()
        };
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(versions_of(&plan), Some(vec![(2, BLOB_2.to_owned())]));
        let hv1 = vec!["hv-1".to_owned()];
        assert_eq!(blob_writes(&plan), vec![(BLOB_1.to_owned(), hv1, 0)]);
        assert!(ops_of(&plan).is_empty(), "no fetch for a prune");
        // Within the limit: nothing to do.
        a.spec.max_versions = 2;
        assert_eq!(versions_of(&plan_artifact(&a, &obs, &ctx())), None);
    }

    #[test]
    fn snapshots_become_versions_in_completion_order_and_pruned_ones_stay_out() {
        const BLOB_3: &str = "33333333-3333-4333-8333-333333333333";
        let mut a = artifact(ResourceState::Initial, &[], 1);
        a.spec.artifact_type = ArtifactType::Snapshot;
        a.spec.source_url = "sf://instance/u-1/vda".into();
        a.spec.max_versions = 2;
        let mut obs = ArtifactObservation {
            nodes: vec![hv("hv-1")],
            ..ArtifactObservation::default()
        };
        // Nothing taken yet: no fetch, a condition that says so.
        let plan = plan_artifact(&a, &obs, &ctx());
        assert!(ops_of(&plan).is_empty());
        assert_eq!(
            condition_of(&plan, "Ready").map(|(r, _)| r).as_deref(),
            Some("NoSnapshot")
        );

        // Three snapshots, observed out of order: versions in completion order, the
        // oldest pruned (maxVersions 2), every Blob written with its node.
        obs.snapshots = vec![
            snapshot_fact("instance-web-3-snapshot", 30, BLOB_3, 'c'),
            snapshot_fact("instance-web-1-snapshot", 10, BLOB_1, 'a'),
            snapshot_fact("instance-web-2-snapshot", 20, BLOB_2, 'b'),
        ];
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(
            versions_of(&plan),
            Some(vec![(2, BLOB_2.to_owned()), (3, BLOB_3.to_owned())])
        );
        let hv2 = vec!["hv-2".to_owned()];
        assert_eq!(
            blob_writes(&plan),
            vec![
                (BLOB_1.to_owned(), hv2.clone(), 0),
                (BLOB_2.to_owned(), hv2.clone(), 1),
                (BLOB_3.to_owned(), hv2.clone(), 1),
            ]
        );
        let mime = plan.iter().find_map(|p| match p {
            Action::WriteBlob {
                mime_type, source, ..
            } => Some((mime_type.clone(), source.clone())),
            _ => None,
        });
        assert_eq!(
            mime,
            Some((
                Some(SNAPSHOT_MIME_TYPE.to_owned()),
                Some("sf://instance/u-1/vda".to_owned())
            ))
        );
        assert_eq!(state_of(&plan).as_deref(), Some("created"));

        // Recorded: re-planning adds nothing, and the pruned snapshot (completed
        // before the newest version) never comes back.
        let status = a.status.as_mut().expect("status");
        status.state = ResourceState::Created;
        status.versions = [(2, BLOB_2, 20), (3, BLOB_3, 30)]
            .iter()
            .map(|(index, blob, secs)| ArtifactVersion {
                index: *index,
                blob: (*blob).into(),
                size: 2048,
                created: now() + chrono::Duration::seconds(*secs),
            })
            .collect();
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(versions_of(&plan), None);

        // A fourth snapshot is version 4 and pushes version 2 out.
        obs.snapshots
            .push(snapshot_fact("instance-web-4-snapshot", 40, BLOB_1, 'd'));
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(
            versions_of(&plan),
            Some(vec![(3, BLOB_3.to_owned()), (4, BLOB_1.to_owned())])
        );
    }

    #[test]
    fn snapshots_ending_in_the_same_second_are_all_recorded_in_sequence_order() {
        const BLOB_3: &str = "33333333-3333-4333-8333-333333333333";
        let mut a = artifact(ResourceState::Created, &[], 1);
        a.spec.artifact_type = ArtifactType::Snapshot;
        a.spec.source_url = "sf://instance/u-1/vda".into();
        a.spec.max_versions = 2;
        // Sequences 9, 10 and 11 all completed at +10 s (names sort 10 < 11 < 9).
        let obs = ArtifactObservation {
            snapshots: vec![
                snapshot_fact("instance-web-11-snapshot", 10, BLOB_3, 'c'),
                snapshot_fact("instance-web-9-snapshot", 10, BLOB_1, 'a'),
                snapshot_fact("instance-web-10-snapshot", 10, BLOB_2, 'b'),
            ],
            ..ArtifactObservation::default()
        };
        let plan = plan_artifact(&a, &obs, &ctx());
        let recorded = vec![(2, BLOB_2.to_owned()), (3, BLOB_3.to_owned())];
        assert_eq!(versions_of(&plan), Some(recorded));
        // Recorded (versions 2 and 3; 1 pruned): stable, the pruned one stays out.
        let status = a.status.as_mut().expect("status");
        status.versions = [(2, BLOB_2), (3, BLOB_3)]
            .iter()
            .map(|(index, blob)| ArtifactVersion {
                index: *index,
                blob: (*blob).into(),
                size: 2048,
                created: now() + chrono::Duration::seconds(10),
            })
            .collect();
        assert_eq!(versions_of(&plan_artifact(&a, &obs, &ctx())), None);
        // The same once the newest one's operation is purged (no fact to mark it).
        let mut purged = obs.clone();
        purged.snapshots.retain(|f| f.taken.blob != BLOB_3);
        assert_eq!(versions_of(&plan_artifact(&a, &purged, &ctx())), None);
    }

    #[test]
    fn delete_aborts_fetches_drops_references_and_the_finalizer() {
        let (a, mut obs) = steady();
        let a = with_deletion(a);
        obs.operations.push(fetch(
            "artifact-debian-12-12-fetch",
            S::Queued,
            "hv-1",
            BLOB_2,
            URL,
        ));
        let plan = plan_artifact(&a, &obs, &ctx());
        assert_eq!(
            plan,
            vec![
                Action::AbortOperations {
                    except_snapshots: true,
                    reason: "artifact deleted".into()
                },
                Action::WriteBlob {
                    name: BLOB_1.into(),
                    owner_namespace: "demo".into(),
                    source: Some(URL.into()),
                    mime_type: Some("application/x-qemu-disk".into()),
                    size: Some(1024),
                    sha512: Some(sum('a')),
                    nodes: vec!["hv-1".into()],
                    reference_count: 0,
                },
                Action::BumpIntentSeq { to: 12 },
                Action::SetState {
                    state: StateValue::Resource(ResourceState::Deleted),
                    message: None
                },
                Action::RemoveFinalizer,
            ]
        );
    }

    #[test]
    fn replicas_are_present_pending_or_fetched_with_the_expected_checksum() {
        let replica = BlobReplica {
            artifact: ObjectRef {
                kind: ARTIFACT_KIND.into(),
                name: "debian-12".into(),
                namespace: Some("demo".into()),
                uid: "art-uid".into(),
            },
            source_url: URL.into(),
            blob: BLOB_1.into(),
            sha512: sum('a'),
            size: 1024,
            nodes: vec!["hv-1".into()],
            pending: vec![PendingFetch {
                node: "hv-2".into(),
                operation: "instance-web-2-3-fetch-debian-12".into(),
            }],
        };
        assert_eq!(
            replica_on_node(&replica, "hv-1", "x".into()),
            ReplicaOnNode::Present
        );
        assert_eq!(
            replica_on_node(&replica, "hv-2", "x".into()),
            ReplicaOnNode::After("instance-web-2-3-fetch-debian-12".into())
        );
        let ReplicaOnNode::Fetch(action) = replica_on_node(&replica, "hv-3", "f".into()) else {
            panic!("a fetch");
        };
        let Action::EnqueueOperation {
            name,
            operation_type,
            target,
            node,
            payload,
            ..
        } = *action
        else {
            panic!("an operation");
        };
        assert_eq!(
            (name.as_str(), operation_type, node.as_deref()),
            ("f", T::ArtifactFetch, Some("hv-3"))
        );
        assert_eq!(target, replica.artifact);
        assert_eq!(
            payload,
            json!({"sourceUrl": URL, "blob": BLOB_1, "sha512": sum('a'), "size": 1024})
        );
    }

    #[test]
    fn fetch_results_must_be_well_formed() {
        let good = json!({"blob": BLOB_1, "size": 3, "sha512": sum('f'), "mimeType": "text/plain"});
        assert_eq!(FetchResult::from_result(&good).map(|r| r.size), Some(3));
        for bad in [
            json!({"blob": BLOB_1, "size": 3, "sha512": "abc"}),
            json!({"blob": "", "size": 3, "sha512": sum('f')}),
            json!({"size": 3}),
            json!(null),
        ] {
            assert_eq!(FetchResult::from_result(&bad), None, "{bad}");
        }
    }
}
