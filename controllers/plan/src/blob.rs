//! The blob reconciler's plan: [`plan_blob`], garbage collection of Blob files on
//! the nodes.
//!
//! Contract:
//! - A Blob is collectable when nothing uses it: `status.referenceCount` is 0 (the
//!   artifact controller counts the versions naming it), no artifact version names it
//!   in the cache either ([`BlobObservation::referenced`], a cross-check that does not
//!   trust a stale count), and it has replicas on nodes.
//! - A Blob with no replica on any node and no reference (a screenshot: its bytes
//!   live in MariaDB beside it) is deleted, bytes and all, once it is
//!   [`PlanContext::screenshot_retention_secs`] old ([`Action::DeleteObject`]).
//! - Grace: a collectable Blob gets condition `Unreferenced` True; only when it has
//!   stayed True for [`PlanContext::blob_grace_secs`] does the Blob move to `deleted`
//!   (a reference appearing meanwhile sets it False and starts over). The plan that
//!   moves it emits nothing else: the next reconcile, of a Blob already `deleted`,
//!   removes the files. `deleted` is terminal; the artifact controller never writes a
//!   deleted Blob again.
//! - Removal: for each node in `status.nodes` one `blob_delete` on that node's queue,
//!   named `blob-<name>-<attempt>-rm-<node hash>` ([`delete_operation_name`]: attempt
//!   from 1, one more after each failure, so every retry is a new operation and a
//!   repeated emit is AlreadyExists; the node is named by 8 hex digits of its name's
//!   hash, so the name stays one DNS label whatever the node is called). Its completion
//!   removes the node from `status.nodes`; a node that no longer exists (deleted, or
//!   gone from the cache) is dropped without one. A failed one (the agent refuses to
//!   remove a file an instance still uses as a backing file or CD-ROM) keeps the node
//!   and is tried again after [`PlanContext::blob_retry_secs`], doubling with each
//!   attempt up to a day ([`retry_delay`]), counted from when the last one ended;
//!   condition `Removed` says what is pending and why, in words that do not change
//!   from one attempt to the next.
//! - The Blob object stays, `deleted` with no nodes, as the record of what was there,
//!   for [`PlanContext::blob_record_secs`] after `Removed` became True; then it is
//!   deleted ([`Action::DeleteObject`]). Keep that longer than operations are kept
//!   (`SHAKENFIST_CLEANER_DELAY`): while an artifact's completed fetch of the blob
//!   is still there, the artifact controller would write the Blob anew.
//! - A Blob an `instance_snapshot` still queued or executing writes counts as
//!   referenced ([`snapshot_writes`]): a snapshot of several disks records each disk's
//!   Blob as soon as it is captured, the later disks can take longer than the grace
//!   period, and the version is recorded only once the operation completes.
//! - Nothing changed → empty plan.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sf_schema::ResourceState;
use sf_schema::artifact::Blob;
use sf_schema::common::{ConditionStatus, ObjectRef, find_condition};
use sf_schema::operation::{OperationState, OperationType, Priority};

use crate::PlanContext;
use crate::action::{Action, Plan, StateValue, condition};
use crate::ops::{ObservedOperation, intent_seq_of, operation_name, short_name};

/// The kind name used in operation names and targets.
pub const BLOB_KIND: &str = "Blob";
/// Condition: True while nothing uses the Blob (its transition time starts the grace).
pub const UNREFERENCED: &str = "Unreferenced";
/// Condition of a `deleted` Blob: whether its files are gone from every node.
pub const REMOVED: &str = "Removed";

/// Whether `op` is an `instance_snapshot` still queued or executing that writes
/// `blob`: the Blob's source (`sf://instance/<uid>/<device>`) names the instance the
/// operation targets, and the agent names a snapshot's blob from the operation's uid
/// and the device ([`sf_schema::common::derived_uuid`] of `<op uid>/<device>`).
pub fn snapshot_writes(blob: &Blob, op: &sf_schema::ClusterOperation) -> bool {
    let Some((instance_uid, device)) = blob
        .spec
        .source
        .as_deref()
        .and_then(|s| s.strip_prefix("sf://instance/"))
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    let outstanding = op
        .status
        .as_ref()
        .is_none_or(|s| matches!(s.state, OperationState::Queued | OperationState::Executing));
    op.spec.operation_type == OperationType::InstanceSnapshot
        && op.spec.target.uid == instance_uid
        && outstanding
        && op.metadata.uid.as_deref().is_some_and(|op_uid| {
            blob.metadata.name.as_deref()
                == Some(sf_schema::common::derived_uuid(&format!("{op_uid}/{device}")).as_str())
        })
}

/// What the blob plan needs besides the Blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobObservation {
    /// Some artifact version names the Blob (read from the artifacts themselves; the
    /// observer may skip the scan, leaving false, when the Blob is not collectable
    /// anyway: referenced by count, already deleted, or without replicas).
    pub referenced: bool,
    /// The Blob's own `blob_delete` operations.
    pub operations: Vec<ObservedOperation>,
    /// The Nodes that exist and are not deleted.
    pub nodes: Vec<String>,
}

/// `start` plus `secs` seconds.
fn after(start: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    start + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

fn secs_until(now: DateTime<Utc>, due: DateTime<Utc>) -> u64 {
    u64::try_from((due - now).num_seconds()).unwrap_or(0).max(1)
}

/// The attempt number of a `blob_delete` of `blob` on `node`, when it is one.
fn attempt_of(blob: &str, node: &str, op: &ObservedOperation) -> Option<u64> {
    if op.operation_type != OperationType::BlobDelete || op.node.as_deref() != Some(node) {
        return None;
    }
    intent_seq_of(BLOB_KIND, blob, &op.name)
}

/// The longest wait between two attempts on one node.
const MAX_RETRY_SECS: u64 = 86_400;

/// The name of attempt `attempt` on `node`: `blob-<blob>-<attempt>-rm-<8 hex digits
/// of the node name's FNV-1a hash>` (57 characters for a UUID blob and attempts below
/// 100: one DNS label).
pub fn delete_operation_name(blob: &str, attempt: u64, node: &str) -> String {
    let hash = crate::artifact::fnv1a(node.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let short = format!(
        "{}-{:08x}",
        short_name(&OperationType::BlobDelete),
        hash & 0xffff_ffff
    );
    operation_name(BLOB_KIND, blob, attempt, &short)
}

/// How long after attempt `attempt` failed the next one starts: `base` doubling with
/// each attempt, at most a day.
pub fn retry_delay(base: u64, attempt: u64) -> u64 {
    let doublings = u32::try_from(attempt.saturating_sub(1).min(20)).unwrap_or(20);
    base.max(1)
        .saturating_mul(1u64 << doublings)
        .min(MAX_RETRY_SECS.max(base))
}

/// Plans one reconcile of `blob`.
pub fn plan_blob(blob: &Blob, observed: &BlobObservation, ctx: &PlanContext) -> Vec<Action> {
    let status = blob.status.clone().unwrap_or_default();
    let name = blob.metadata.name.clone().unwrap_or_default();
    let mut plan = Plan::default();
    if status.state == ResourceState::Deleted {
        plan_removal(&mut plan, blob, &name, observed, ctx);
        return plan.finish();
    }
    let unused = status.reference_count == 0 && !observed.referenced;
    if status.nodes.is_empty() && unused {
        let created = blob
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0));
        if let Some(created) = created {
            let due = after(created, ctx.screenshot_retention_secs);
            if ctx.now >= due {
                plan.push(Action::DeleteObject);
            } else {
                plan.requeue_in(secs_until(ctx.now, due));
            }
        }
        return plan.finish();
    }
    let why_kept = if status.nodes.is_empty() {
        Some("the blob has no replica on any node")
    } else if !unused {
        Some("an artifact version uses the blob")
    } else {
        None
    };
    let unreferenced = find_condition(&status.conditions, UNREFERENCED);
    match why_kept {
        Some(why) => {
            // Only a Blob that was on its way out says why it is kept.
            if unreferenced.is_some_and(|c| c.status == ConditionStatus::True) {
                plan.push_opt(condition(
                    &status.conditions,
                    UNREFERENCED,
                    ConditionStatus::False,
                    "Referenced",
                    why,
                ));
            }
        }
        None => match unreferenced.filter(|c| c.status == ConditionStatus::True) {
            Some(since) => {
                let due = after(since.last_transition_time, ctx.blob_grace_secs);
                if ctx.now >= due {
                    plan.push(Action::SetState {
                        state: StateValue::Resource(ResourceState::Deleted),
                        message: None,
                    });
                } else {
                    plan.requeue_in(secs_until(ctx.now, due));
                }
            }
            None => {
                plan.push_opt(condition(
                    &status.conditions,
                    UNREFERENCED,
                    ConditionStatus::True,
                    "NoReferences",
                    format!(
                        "no artifact version uses the blob: its files are removed after {} s unless one does",
                        ctx.blob_grace_secs
                    ),
                ));
                plan.requeue_in(ctx.blob_grace_secs.max(1));
            }
        },
    }
    plan.finish()
}

fn plan_removal(
    plan: &mut Plan,
    blob: &Blob,
    name: &str,
    observed: &BlobObservation,
    ctx: &PlanContext,
) {
    let status = blob.status.clone().unwrap_or_default();
    let target = ObjectRef {
        kind: BLOB_KIND.into(),
        name: name.to_owned(),
        namespace: None,
        uid: blob.metadata.uid.clone().unwrap_or_default(),
    };
    let mut remaining = Vec::new();
    let mut refused = Vec::new();
    for node in &status.nodes {
        if !observed.nodes.contains(node) {
            continue;
        }
        let mut attempts: Vec<(u64, &ObservedOperation)> = observed
            .operations
            .iter()
            .filter_map(|op| attempt_of(name, node, op).map(|n| (n, op)))
            .collect();
        attempts.sort_by_key(|(n, _)| *n);
        // The last refusal stays the reason while the next attempt runs, so the
        // condition does not flap from one attempt to the next.
        let last_refusal = attempts
            .iter()
            .rev()
            .find(|(_, op)| op.failed())
            .map(|(_, op)| {
                format!(
                    "{node}: {}",
                    op.error.clone().unwrap_or_else(|| op.state.to_string())
                )
            });
        let next_attempt = match attempts.last() {
            None => Some(1),
            Some((_, op)) if op.state == OperationState::Complete => continue,
            Some((_, op)) if op.is_outstanding() => {
                refused.extend(last_refusal);
                None
            }
            Some((n, op)) => {
                refused.extend(last_refusal);
                let ended = op.completed_at.unwrap_or(ctx.now);
                let wait = retry_delay(ctx.blob_retry_secs, *n);
                let due = after(ended, wait);
                if ctx.now >= due {
                    Some(*n + 1)
                } else {
                    plan.requeue_in(secs_until(ctx.now, due));
                    None
                }
            }
        };
        if let Some(attempt) = next_attempt {
            plan.push(Action::EnqueueOperation {
                name: delete_operation_name(name, attempt, node),
                operation_type: OperationType::BlobDelete,
                target: target.clone(),
                node: Some(node.clone()),
                depends_on: Vec::new(),
                priority: Priority::Low,
                payload: json!({"blob": name}),
            });
        }
        remaining.push(node.clone());
    }
    if remaining != status.nodes {
        plan.push(Action::SetNodes {
            nodes: remaining.clone(),
        });
    }
    let (state, reason, message) = if remaining.is_empty() {
        (
            ConditionStatus::True,
            "Removed",
            "the blob's files are gone from every node".to_owned(),
        )
    } else if refused.is_empty() {
        (
            ConditionStatus::False,
            "Removing",
            format!("removing the files on {}", remaining.join(", ")),
        )
    } else {
        (
            ConditionStatus::False,
            "Refused",
            format!(
                "kept, and tried again later with growing delays: {}",
                refused.join("; ")
            ),
        )
    };
    let stored = find_condition(&status.conditions, REMOVED);
    if remaining.is_empty()
        && let Some(done) = stored.filter(|c| c.status == ConditionStatus::True)
    {
        let due = after(done.last_transition_time, ctx.blob_record_secs);
        if ctx.now >= due {
            plan.push(Action::DeleteObject);
        } else {
            plan.requeue_in(secs_until(ctx.now, due));
        }
        return;
    }
    plan.push_opt(condition(
        &status.conditions,
        REMOVED,
        state,
        reason,
        message,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{cond, ctx, now, op};
    use sf_schema::artifact::{BlobSpec, BlobStatus};
    use sf_schema::operation::OperationState as S;

    const NAME: &str = "0b0b0b0b-0000-4000-8000-000000000001";

    fn blob(state: ResourceState, nodes: &[&str], refs: u64) -> Blob {
        let mut b = Blob::new(
            NAME,
            BlobSpec {
                owner_namespace: "demo".into(),
                ..BlobSpec::default()
            },
        );
        b.metadata.uid = Some("blob-uid".into());
        b.status = Some(BlobStatus {
            state,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            reference_count: refs,
            ..BlobStatus::default()
        });
        b
    }

    #[test]
    fn a_snapshot_still_running_holds_the_blobs_it_writes() {
        let op_uid = "5a5a5a5a-0000-4000-8000-000000000001";
        let instance_uid = "1a1a1a1a-0000-4000-8000-000000000001";
        let name = sf_schema::common::derived_uuid(&format!("{op_uid}/vda"));
        let mut b = Blob::new(
            &name,
            BlobSpec {
                owner_namespace: "demo".into(),
                source: Some(format!("sf://instance/{instance_uid}/vda")),
                ..BlobSpec::default()
            },
        );
        b.metadata.uid = Some("blob-uid".into());
        let snapshot = |state: Option<S>, uid: &str, target: &str| {
            let spec: sf_schema::operation::ClusterOperationSpec = serde_json::from_value(json!({
                "operationType": "instance_snapshot",
                "target": {"kind": "Instance", "name": "web-1", "namespace": "demo",
                           "uid": target},
                "node": "hv-1",
                "payload": {"all": true},
            }))
            .expect("spec");
            let mut op = sf_schema::ClusterOperation::new("instance-web-1-3-snapshot", spec);
            op.metadata.uid = Some(uid.into());
            op.status = state.map(|state| sf_schema::ClusterOperationStatus {
                state,
                ..Default::default()
            });
            op
        };
        for (what, op, holds) in [
            (
                "queued",
                snapshot(Some(S::Queued), op_uid, instance_uid),
                true,
            ),
            (
                "executing",
                snapshot(Some(S::Executing), op_uid, instance_uid),
                true,
            ),
            (
                "not yet observed",
                snapshot(None, op_uid, instance_uid),
                true,
            ),
            (
                "complete: the version holds it",
                snapshot(Some(S::Complete), op_uid, instance_uid),
                false,
            ),
            (
                "failed",
                snapshot(Some(S::Error), op_uid, instance_uid),
                false,
            ),
            (
                "another operation",
                snapshot(Some(S::Executing), "other-op", instance_uid),
                false,
            ),
            (
                "another instance",
                snapshot(Some(S::Executing), op_uid, "other-instance"),
                false,
            ),
        ] {
            assert_eq!(snapshot_writes(&b, &op), holds, "{what}");
        }
        b.spec.source = Some("https://images.example/x.qcow2".into());
        assert!(!snapshot_writes(
            &b,
            &snapshot(Some(S::Executing), op_uid, instance_uid)
        ));
    }

    fn with_conditions(mut b: Blob, conditions: Vec<sf_schema::Condition>) -> Blob {
        if let Some(s) = b.status.as_mut() {
            s.conditions = conditions;
        }
        b
    }

    fn nodes(names: &[&str]) -> BlobObservation {
        BlobObservation {
            nodes: names.iter().map(|n| n.to_string()).collect(),
            ..BlobObservation::default()
        }
    }

    fn rm(attempt: u64, node: &str, state: S) -> ObservedOperation {
        let mut o = op(
            &delete_operation_name(NAME, attempt, node),
            OperationType::BlobDelete,
            state,
        );
        o.node = Some(node.into());
        o
    }

    fn enqueued(plan: &[Action]) -> Vec<(String, Option<String>)> {
        plan.iter()
            .filter_map(|a| match a {
                Action::EnqueueOperation { name, node, .. } => Some((name.clone(), node.clone())),
                _ => None,
            })
            .collect()
    }

    fn set_nodes(plan: &[Action]) -> Option<Vec<String>> {
        plan.iter().find_map(|a| match a {
            Action::SetNodes { nodes } => Some(nodes.clone()),
            _ => None,
        })
    }

    fn condition_of(plan: &[Action], type_: &str) -> Option<(ConditionStatus, String)> {
        plan.iter().find_map(|a| match a {
            Action::SetCondition {
                type_: t,
                status,
                reason,
                ..
            } if t == type_ => Some((status.clone(), reason.clone())),
            _ => None,
        })
    }

    fn sets_deleted(plan: &[Action]) -> bool {
        plan.iter().any(|a| {
            matches!(
                a,
                Action::SetState {
                    state: StateValue::Resource(ResourceState::Deleted),
                    ..
                }
            )
        })
    }

    fn requeue(plan: &[Action]) -> Option<u64> {
        plan.iter().find_map(|a| match a {
            Action::Requeue { after_secs } => Some(*after_secs),
            _ => None,
        })
    }

    #[test]
    fn a_referenced_blob_is_left_alone() {
        let b = blob(ResourceState::Created, &["hv-1"], 1);
        assert_eq!(plan_blob(&b, &nodes(&["hv-1"]), &ctx()), vec![]);
        // A stale count of 0 is not trusted while a version names the blob.
        let b = blob(ResourceState::Created, &["hv-1"], 0);
        let observed = BlobObservation {
            referenced: true,
            ..nodes(&["hv-1"])
        };
        assert_eq!(plan_blob(&b, &observed, &ctx()), vec![]);
    }

    fn created_at(b: Blob, when: &str) -> Blob {
        let mut value = serde_json::to_value(b).expect("serializes");
        value["metadata"]["creationTimestamp"] = when.into();
        serde_json::from_value(value).expect("deserializes")
    }

    #[test]
    fn a_screenshot_goes_with_its_bytes_once_old_enough() {
        let c = ctx();
        // No replica on any node: its bytes live in MariaDB. An hour old: kept.
        let young = created_at(blob(ResourceState::Created, &[], 0), "2025-06-01T11:00:00Z");
        assert_eq!(
            plan_blob(&young, &nodes(&["hv-1"]), &c),
            vec![Action::Requeue {
                after_secs: c.screenshot_retention_secs - 3600
            }]
        );
        // A day old: deleted (the store deletes its bytes with it).
        let old = created_at(blob(ResourceState::Created, &[], 0), "2025-05-31T12:00:00Z");
        assert_eq!(
            plan_blob(&old, &nodes(&["hv-1"]), &c),
            vec![Action::DeleteObject]
        );
        // Something uses it: kept, whatever its age.
        let used = created_at(blob(ResourceState::Created, &[], 1), "2025-05-01T12:00:00Z");
        assert_eq!(plan_blob(&used, &nodes(&["hv-1"]), &c), vec![]);
    }

    #[test]
    fn an_unreferenced_blob_waits_out_the_grace_then_becomes_deleted() {
        let c = ctx();
        let b = blob(ResourceState::Created, &["hv-1"], 0);
        let plan = plan_blob(&b, &nodes(&["hv-1"]), &c);
        assert_eq!(
            condition_of(&plan, UNREFERENCED),
            Some((ConditionStatus::True, "NoReferences".into()))
        );
        assert!(!sets_deleted(&plan));
        assert_eq!(requeue(&plan), Some(c.blob_grace_secs));
        assert!(enqueued(&plan).is_empty());

        // Marked 10 s ago: wait for the rest of the grace.
        let mut since = cond(UNREFERENCED, "True", "NoReferences", "x");
        since.last_transition_time = now() - chrono::Duration::seconds(10);
        let b = with_conditions(
            blob(ResourceState::Created, &["hv-1"], 0),
            vec![since.clone()],
        );
        let plan = plan_blob(&b, &nodes(&["hv-1"]), &c);
        assert!(!sets_deleted(&plan), "{plan:?}");
        assert_eq!(requeue(&plan), Some(c.blob_grace_secs - 10));

        // Grace over: deleted, and nothing else in the same plan.
        since.last_transition_time =
            now() - chrono::Duration::seconds(i64::try_from(c.blob_grace_secs).unwrap());
        let b = with_conditions(blob(ResourceState::Created, &["hv-1"], 0), vec![since]);
        let plan = plan_blob(&b, &nodes(&["hv-1"]), &c);
        assert!(sets_deleted(&plan), "{plan:?}");
        assert!(
            enqueued(&plan).is_empty(),
            "files go from the next reconcile"
        );
    }

    #[test]
    fn a_reference_appearing_in_the_grace_keeps_the_blob() {
        let since = cond(UNREFERENCED, "True", "NoReferences", "x");
        let b = with_conditions(blob(ResourceState::Created, &["hv-1"], 1), vec![since]);
        let plan = plan_blob(&b, &nodes(&["hv-1"]), &ctx());
        assert_eq!(
            condition_of(&plan, UNREFERENCED),
            Some((ConditionStatus::False, "Referenced".into()))
        );
        assert!(!sets_deleted(&plan));
    }

    #[test]
    fn a_deleted_blob_is_removed_from_each_node_once() {
        let b = blob(ResourceState::Deleted, &["hv-1", "hv-2", "gone"], 0);
        let observed = nodes(&["hv-1", "hv-2"]);
        let plan = plan_blob(&b, &observed, &ctx());
        assert_eq!(
            enqueued(&plan),
            vec![
                (delete_operation_name(NAME, 1, "hv-1"), Some("hv-1".into())),
                (delete_operation_name(NAME, 1, "hv-2"), Some("hv-2".into())),
            ]
        );
        let named = delete_operation_name(NAME, 1, "hv-1");
        assert!(named.starts_with(&format!("blob-{NAME}-1-rm-")), "{named}");
        assert_eq!(named.len(), 5 + 36 + 3 + 3 + 8);
        assert_ne!(named, delete_operation_name(NAME, 1, "hv-2"));
        assert_eq!(
            set_nodes(&plan),
            Some(vec!["hv-1".into(), "hv-2".into()]),
            "a node that is gone is dropped without an operation"
        );
        let target = plan.iter().find_map(|a| match a {
            Action::EnqueueOperation {
                target, payload, ..
            } => Some((target.clone(), payload.clone())),
            _ => None,
        });
        let (target, payload) = target.expect("an operation");
        assert_eq!(
            (target.kind.as_str(), target.uid.as_str()),
            ("Blob", "blob-uid")
        );
        assert_eq!(target.namespace, None);
        assert_eq!(payload, json!({"blob": NAME}));

        // Outstanding: nothing new; completed on hv-1: hv-1 leaves the list.
        let observed = BlobObservation {
            operations: vec![rm(1, "hv-1", S::Complete), rm(1, "hv-2", S::Executing)],
            ..nodes(&["hv-1", "hv-2"])
        };
        let b = blob(ResourceState::Deleted, &["hv-1", "hv-2"], 0);
        let plan = plan_blob(&b, &observed, &ctx());
        assert!(enqueued(&plan).is_empty(), "{plan:?}");
        assert_eq!(set_nodes(&plan), Some(vec!["hv-2".into()]));
        assert_eq!(
            condition_of(&plan, REMOVED),
            Some((ConditionStatus::False, "Removing".into()))
        );

        // Both done: no nodes left, Removed.
        let observed = BlobObservation {
            operations: vec![rm(1, "hv-2", S::Complete)],
            ..nodes(&["hv-1", "hv-2"])
        };
        let b = blob(ResourceState::Deleted, &["hv-2"], 0);
        let plan = plan_blob(&b, &observed, &ctx());
        assert_eq!(set_nodes(&plan), Some(vec![]));
        assert_eq!(
            condition_of(&plan, REMOVED),
            Some((ConditionStatus::True, "Removed".into()))
        );
        // Then the record is kept for a day, and deleted after it.
        let c = ctx();
        let mut removed = cond(
            REMOVED,
            "True",
            "Removed",
            "the blob's files are gone from every node",
        );
        removed.last_transition_time = now() - chrono::Duration::seconds(60);
        let done = with_conditions(blob(ResourceState::Deleted, &[], 0), vec![removed.clone()]);
        assert_eq!(
            plan_blob(&done, &observed, &c),
            vec![Action::Requeue {
                after_secs: c.blob_record_secs - 60
            }]
        );
        removed.last_transition_time =
            now() - chrono::Duration::seconds(i64::try_from(c.blob_record_secs).unwrap());
        let done = with_conditions(blob(ResourceState::Deleted, &[], 0), vec![removed]);
        assert_eq!(plan_blob(&done, &observed, &c), vec![Action::DeleteObject]);
    }

    #[test]
    fn a_refused_removal_is_tried_again_after_the_retry_delay() {
        let c = ctx();
        let b = blob(ResourceState::Deleted, &["hv-1"], 0);
        // Refused just now (an instance still uses the file): wait.
        let mut refused = rm(1, "hv-1", S::Error);
        refused.error = Some("in use by instance web-1".into());
        refused.completed_at = Some(now() - chrono::Duration::seconds(60));
        let observed = BlobObservation {
            operations: vec![refused.clone()],
            ..nodes(&["hv-1"])
        };
        let plan = plan_blob(&b, &observed, &c);
        assert!(enqueued(&plan).is_empty());
        assert_eq!(requeue(&plan), Some(c.blob_retry_secs - 60));
        let (status, reason) = condition_of(&plan, REMOVED).expect("condition");
        assert_eq!(
            (status, reason.as_str()),
            (ConditionStatus::False, "Refused")
        );
        assert!(set_nodes(&plan).is_none(), "the node keeps its file");

        // After the delay: attempt 2.
        refused.completed_at =
            Some(now() - chrono::Duration::seconds(i64::try_from(c.blob_retry_secs).unwrap()));
        let observed = BlobObservation {
            operations: vec![refused],
            ..nodes(&["hv-1"])
        };
        let plan = plan_blob(&b, &observed, &c);
        assert_eq!(
            enqueued(&plan),
            vec![(delete_operation_name(NAME, 2, "hv-1"), Some("hv-1".into()))]
        );
    }

    #[test]
    fn operation_names_are_one_dns_label_whatever_the_node_is_called() {
        let long = "kvm-production-rack-01-unit-07.datacentre-east.example.com";
        for attempt in [1, 9, 10, 99] {
            let name = delete_operation_name(NAME, attempt, long);
            assert!(sf_schema::validation::is_dns_label(&name), "{name}");
            assert_eq!(intent_seq_of(BLOB_KIND, NAME, &name), Some(attempt));
        }
    }

    #[test]
    fn retries_back_off_to_a_day() {
        assert_eq!(retry_delay(600, 1), 600);
        assert_eq!(retry_delay(600, 2), 1200);
        assert_eq!(retry_delay(600, 4), 4800);
        assert_eq!(retry_delay(600, 9), 86_400);
        assert_eq!(retry_delay(600, 10_000), 86_400);
        assert_eq!(retry_delay(3, 1), 3, "short test settings stay short");
    }

    #[test]
    fn the_refusal_stays_the_reason_while_the_next_attempt_runs() {
        let b = with_conditions(
            blob(ResourceState::Deleted, &["hv-1"], 0),
            vec![cond(
                REMOVED,
                "False",
                "Refused",
                "kept, and tried again later with growing delays: hv-1: in use",
            )],
        );
        let mut refused = rm(1, "hv-1", S::Error);
        refused.error = Some("in use".into());
        let observed = BlobObservation {
            operations: vec![refused, rm(2, "hv-1", S::Queued)],
            ..nodes(&["hv-1"])
        };
        assert_eq!(
            plan_blob(&b, &observed, &ctx()),
            vec![],
            "no write, no flap"
        );
    }

    #[test]
    fn other_nodes_operations_and_other_blobs_do_not_count() {
        let b = blob(ResourceState::Deleted, &["hv-1"], 0);
        let mut elsewhere = rm(1, "hv-2", S::Complete);
        elsewhere.name = delete_operation_name(NAME, 1, "hv-2");
        let mut other_blob = rm(1, "hv-1", S::Complete);
        other_blob.name = delete_operation_name("another", 1, "hv-1");
        let observed = BlobObservation {
            operations: vec![elsewhere, other_blob],
            ..nodes(&["hv-1", "hv-2"])
        };
        let plan = plan_blob(&b, &observed, &ctx());
        assert_eq!(
            enqueued(&plan),
            vec![(delete_operation_name(NAME, 1, "hv-1"), Some("hv-1".into()))]
        );
    }
}
